#!/usr/bin/env bash
# Kind end-to-end suite: create a cluster, build and load the images, helm install the
# operator, apply a SeqCluster and a WorkDivider, wait for Available, call the sidecar from an
# app container, delete a member pod and check the cluster heals, uninstall.
# Where kind, docker (with a running engine), kubectl or helm is missing it says so and exits 0.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cluster="${ORDO_KIND_CLUSTER:-ordo-e2e}"
ns=ordo-e2e
timeout="${ORDO_E2E_TIMEOUT:-300s}"

skip() { echo "SKIPPED kind e2e: $*"; exit 0; }
for tool in kind docker kubectl helm; do
  command -v "$tool" >/dev/null 2>&1 || skip "'$tool' is not installed"
done
docker info >/dev/null 2>&1 || skip "docker is installed but no engine is reachable (docker info failed)"

log() { echo "==> $*"; }
cleanup() {
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    log "failed (exit $rc); state for debugging:"
    kubectl get seqc,wdiv,sts,pods -A -o wide || true
    kubectl -n ordo-system logs deploy/ordo --tail=100 || true
    kubectl -n "$ns" describe seqc ids || true
  fi
  if [[ -z "${ORDO_KEEP_CLUSTER:-}" ]]; then kind delete cluster --name "$cluster" >/dev/null 2>&1 || true; fi
  exit $rc
}
trap cleanup EXIT

log "creating kind cluster $cluster"
kind create cluster --name "$cluster" --wait 120s

log "building images"
docker build -f "$root/docker/operator.Dockerfile" -t ordo-operator:dev "$root"
docker build -f "$root/docker/sidecar.Dockerfile" -t ordo-sidecar:dev "$root"
docker build -f "$root/docker/sidecar.Dockerfile" --target tools -t ordo-tools:dev "$root"
docker build -f "$root/docker/stocks.Dockerfile" -t ordo-stocks:dev "$root"
for image in ordo-operator:dev ordo-sidecar:dev ordo-tools:dev ordo-stocks:dev; do
  kind load docker-image "$image" --name "$cluster"
done

log "installing the chart"
helm install ordo "$root/charts/ordo" --namespace ordo-system --create-namespace \
  --set image.repository=ordo-operator --set image.tag=dev --set image.pullPolicy=Never \
  --set logFormat=text --wait --timeout "$timeout"
kubectl wait crd/seqclusters.ordo.dev crd/workdividers.ordo.dev --for=condition=Established --timeout=60s

log "applying samples"
kubectl create namespace "$ns"
kubectl -n "$ns" apply -f "$root/e2e/kind/manifests/seqcluster.yaml"
kubectl -n "$ns" wait seqc/ids --for=condition=Available --timeout="$timeout"
kubectl -n "$ns" apply -f "$root/e2e/kind/manifests/workdivider.yaml"
kubectl -n "$ns" wait wdiv/stocks --for=condition=Available --timeout="$timeout"
kubectl -n "$ns" get seqc,wdiv

next_id() {
  kubectl -n "$ns" exec "$1" -c app -- ordoctl -o json seq next orders --count 1
}
log "calling the sidecar from app containers"
first=$(next_id ids-0)
from_divider=$(next_id stocks-0)
echo "member app got $first; divider app got $from_divider"

log "deleting member pod ids-1; the cluster must heal"
kubectl -n "$ns" delete pod ids-1 --wait=true
kubectl -n "$ns" wait pod/ids-1 --for=condition=Ready --timeout="$timeout"
kubectl -n "$ns" wait seqc/ids --for=condition=Available --timeout="$timeout"
ready=$(kubectl -n "$ns" get seqc ids -o jsonpath='{.status.readyMembers}')
[[ "$ready" == "3" ]] || { echo "expected 3 ready members after healing, got $ready"; exit 1; }
after=$(next_id ids-2)
echo "after healing: $after"

log "scaling to 5 members and back to 3 (joint consensus through the operator)"
kubectl -n "$ns" patch seqc ids --type=merge -p '{"spec":{"replicas":5}}'
kubectl -n "$ns" wait seqc/ids --for=jsonpath='{.status.readyMembers}'=5 --timeout="$timeout"
kubectl -n "$ns" wait seqc/ids --for=jsonpath='{.status.membership.phase}'=Stable --timeout="$timeout"
kubectl -n "$ns" patch seqc ids --type=merge -p '{"spec":{"replicas":3}}'
kubectl -n "$ns" wait seqc/ids --for=jsonpath='{.status.membership.current.members}'=3 --timeout="$timeout"
kubectl -n "$ns" wait seqc/ids --for=jsonpath='{.status.membership.phase}'=Stable --timeout="$timeout"
next_id ids-0

log "the stocks example: 3 app pods, a trade stream, one app pod deleted mid-run, then the checker"
kubectl create namespace "$ns-stocks"
kubectl -n "$ns-stocks" apply -f "$root/examples/k8s/stocks.yaml"
kubectl -n "$ns-stocks" wait seqc/ids --for=condition=Available --timeout="$timeout"
kubectl -n "$ns-stocks" wait wdiv/stocks --for=condition=Available --timeout="$timeout"
kubectl -n "$ns-stocks" exec stocks-0 -c app -- stocks generate --trades 20000 --partitions 12 --deadline-secs 240 &
gen=$!
sleep 3
kubectl -n "$ns-stocks" delete pod stocks-2 --wait=false
wait "$gen"
kubectl -n "$ns-stocks" exec stocks-1 -c app -- stocks check --trades 20000 --partitions 12
kubectl -n "$ns-stocks" delete wdiv/stocks seqc/ids --wait=true

log "uninstalling"
kubectl -n "$ns" delete wdiv/stocks seqc/ids --wait=true
helm uninstall ordo --namespace ordo-system --wait
log "kind e2e passed"
