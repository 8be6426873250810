#!/usr/bin/env bash
# Real-API-server suite: the operator, its chart and its CRDs against a real Kubernetes control
# plane on loopback, built from source by tools.sh (see there for versions): etcd, kube-apiserver
# (RBAC, a static admin token, ServiceAccount tokens, audit log), kube-controller-manager
# (garbage collector, StatefulSet, Deployment/ReplicaSet, disruption, PV binder, service
# accounts), kube-scheduler and kwok (one simulated node; pods turn Running and Ready without a
# container runtime). The SeqCluster's member pods are stood in for by real ordo-sidecar
# processes on 127.x addresses (kubelet_standin.py); the operator reaches them through its
# test-only --test-member-hosts option. Every process is stopped on exit, whatever happens.
#
# Checks, in the order they run (each one fails the script; any 403 for the operator fails at once):
#   1a helm install and upgrade with the real helm: CRDs accepted and established (structural
#      schemas, every CEL rule within the cost budget), Deployment available, RBAC, ServiceAccount
#   2  kubectl apply of every examples/k8s sample after a server-side dry run; every CEL rule
#      (and the schema's own limits) refuses its violating object from
#      operator/tests/fixtures/cel-violations.yaml with its message; schema defaults applied
#   3  the operator binary (two replicas) runs with tokens of the chart's ServiceAccount: the real
#      RBAC authorizer judges every request; the samples become Available
#   4a children applied by field manager ordo-operator with controller owner references; status
#      conditions and printer columns through kubectl get
#   4e an unready SeqCluster (ledger, whose pods never answer /status) polled every 5 s writes
#      only its peer-token Secret, not its unchanged children, from the audit log
#   4b deleting a SeqCluster lets the garbage collector remove every child and its pods
#   4c no hot loop: the operators' writes over an idle window, from the audit log
#   5  SeqCluster 3 -> 5 -> 3 through the joint epochs with real sidecars; IDs keep increasing;
#      PodDisruptionBudget status from the real disruption controller; claims of removed members
#      deleted (whenScaled: Delete)
#   6  leader election on the real Lease API: the standby writes nothing; after the leader is
#      killed it takes over, not before the lease expired and within a lease duration after
#      (normally within one renew period), and reconciles with its own token
#   4d deleting the WorkDivider and the SeqCluster: the garbage collector removes every child
#   1b helm uninstall removes the release and keeps the CRDs
# Env: ORDO_APISERVER_IDLE_SECONDS (idle window, default 30), ORDO_APISERVER_KEEP=1 keeps the
# work directory, ORDO_APISERVER_TIMEOUT (seconds per wait, default 120), ORDO_APISERVER_HOLD=N
# only starts the control plane and holds it for N seconds, ORDO_APISERVER_HOLD_ON_FAILURE=N keeps
# everything up N seconds after a failure (debugging).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
suite_start=$SECONDS
idle_seconds="${ORDO_APISERVER_IDLE_SECONDS:-30}"
wait_timeout="${ORDO_APISERVER_TIMEOUT:-120}"
ns=ordo-e2e
opns=ordo-system
sa_user="system:serviceaccount:$opns:ordo"
lease_seconds=15 # the operator's Lease duration (operator/src/main.rs)
renew_seconds=5  # and its renew period

log() { printf '[apiserver %3ss] %s\n' "$((SECONDS - suite_start))" "$*"; }
fail() {
  log "FAILED: $*"
  exit 1
}

log "building the components (cached after the first run)"
eval "$(bash "$here/tools.sh")"
log "Python tools of the checks (.venv, PyYAML)"
bash "$root/scripts/test-deps.sh"
py() { "$root/.venv/bin/python" "$@"; }
log "building ordo-operator, ordo-sidecar, ordoctl"
(cd "$root" && cargo build --locked --quiet -p ordo-operator -p ordo-sidecar -p ordo-client --bins)
operator_bin="$root/target/debug/ordo-operator"
sidecar_bin="$root/target/debug/ordo-sidecar"
ordoctl_bin="$root/target/debug/ordoctl"

work="$(mktemp -d "${TMPDIR:-/tmp}/ordo-apiserver.XXXXXX")"
mkdir -p "$work/logs" "$work/pki"
declare -A pids=()
started=()
passed=()

# start NAME CMD...: runs CMD in the background with its output in logs/NAME.log.
start() {
  local name="$1"
  shift
  "$@" >"$work/logs/$name.log" 2>&1 &
  pids[$name]=$!
  started+=("$name")
}
# stop NAME [SIGNAL]: signals the process and waits for it (SIGKILL after 15 s).
stop() {
  local name="$1" sig="${2:-TERM}" pid="${pids[$1]:-}"
  [[ -n "$pid" ]] || return 0
  kill -"$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 1 30); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  unset "pids[$name]"
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ $rc -ne 0 ]]; then
    log "failed (exit $rc); state and log tails for debugging:"
    kc get nodes,pods,sts,pvc,pdb,seqc,wdiv -A -o wide 2>/dev/null | head -60 || true
    for f in "$work"/logs/*.log "$work"/members/*.log; do
      [[ -f "$f" ]] || continue
      echo "----- $(basename "$f") (last 25 lines)"
      tail -n 25 "$f"
    done
  fi
  if [[ $rc -ne 0 && -n "${ORDO_APISERVER_HOLD_ON_FAILURE:-}" ]]; then
    log "holding the cluster for ${ORDO_APISERVER_HOLD_ON_FAILURE}s: export KUBECONFIG=$work/admin.kubeconfig"
    trap 'log "hold interrupted"' INT TERM
    sleep "$ORDO_APISERVER_HOLD_ON_FAILURE" &
    wait $! || kill $! 2>/dev/null || true
    trap - INT TERM
  fi
  local i
  for ((i = ${#started[@]} - 1; i >= 0; i--)); do stop "${started[$i]}"; done
  if [[ -n "${ORDO_APISERVER_KEEP:-}" ]]; then log "kept $work"; else rm -rf "$work"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_ports N: N free TCP ports on 127.0.0.1.
free_ports() {
  python3 -c 'import socket,sys
socks=[socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1",0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

# wait_for WHAT CMD...: polls CMD every 0.5 s until it succeeds, at most $wait_timeout seconds.
wait_for() {
  local what="$1" deadline=$((SECONDS + wait_timeout))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "timed out after ${wait_timeout}s waiting for $what"
    all_alive
    sleep 0.5
  done
}
# all_alive: every process started (and not stopped on purpose) still runs, and RBAC has refused
# no operator request (a 403 fails at once, not when some wait times out).
all_alive() {
  local name denied
  for name in "${!pids[@]}"; do
    kill -0 "${pids[$name]}" 2>/dev/null || fail "$name exited; see logs/$name.log"
  done
  if [[ -s "$audit" ]]; then
    denied="$(forbidden_calls)"
    [[ -z "$denied" ]] || fail "RBAC refused operator requests: $denied"
  fi
}

# check NAME FUNCTION: runs one named check; its failure ends the suite.
check() {
  local t0=$SECONDS
  log "CHECK $1"
  "$2"
  passed+=("$1")
  log "PASS  $1 ($((SECONDS - t0))s)"
}

read -r etcd_port etcd_peer_port api_port kcm_port sched_port kwok_port op_a_port op_b_port < <(free_ports 8)
server="https://127.0.0.1:$api_port"
# Member sidecars live on 127.1.<octet>.<ordinal+1>: an octet of our own for this run.
member_prefix="127.1.$((RANDOM % 250 + 1))"

log "PKI: ServiceAccount signing key, static admin token, audit policy"
openssl genrsa -out "$work/pki/sa.key" 2048 2>/dev/null
openssl rsa -in "$work/pki/sa.key" -pubout -out "$work/pki/sa.pub" 2>/dev/null
admin_token="$(openssl rand -hex 24)"
echo "$admin_token,admin,admin,system:masters" >"$work/pki/tokens.csv"
printf '%s' "$admin_token" >"$work/pki/admin.token"
cat >"$work/audit-policy.yaml" <<EOF
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    users: ["$sa_user"]
  - level: None
EOF
audit="$work/logs/audit.jsonl"

log "starting etcd on 127.0.0.1:$etcd_port"
start etcd "$ETCD" --name=ordo --data-dir="$work/etcd" \
  --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
  --listen-peer-urls="http://127.0.0.1:$etcd_peer_port" --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer_port" \
  --initial-cluster="ordo=http://127.0.0.1:$etcd_peer_port" --unsafe-no-fsync --log-level=warn
wait_for "etcd health" curl -sf "http://127.0.0.1:$etcd_port/health"

log "starting kube-apiserver on $server"
start kube-apiserver "$KUBE_APISERVER" \
  --etcd-servers="http://127.0.0.1:$etcd_port" \
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$api_port" \
  --endpoint-reconciler-type=none \
  --cert-dir="$work/pki/apiserver" \
  --authorization-mode=RBAC --token-auth-file="$work/pki/tokens.csv" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$work/pki/sa.pub" --service-account-signing-key-file="$work/pki/sa.key" \
  --service-cluster-ip-range=10.96.0.0/16 \
  --audit-policy-file="$work/audit-policy.yaml" --audit-log-path="$audit" --audit-log-format=json \
  --profiling=false --v=0
ca="$work/pki/apiserver/apiserver.crt"
wait_for "the API server's serving certificate" test -s "$ca"
kubeconfig="$work/admin.kubeconfig"
kubectl_cfg() { "$KUBECTL" --kubeconfig="$1" "${@:2}"; }
kubectl_cfg "$kubeconfig" config set-cluster local --server="$server" --certificate-authority="$ca" --embed-certs >/dev/null
kubectl_cfg "$kubeconfig" config set-credentials admin --token="$admin_token" >/dev/null
kubectl_cfg "$kubeconfig" config set-context local --cluster=local --user=admin >/dev/null
kubectl_cfg "$kubeconfig" config use-context local >/dev/null
export KUBECONFIG="$kubeconfig"
kc() { "$KUBECTL" "$@"; }
wait_for "kube-apiserver /readyz" kc get --raw /readyz

log "starting kube-controller-manager, kube-scheduler, kwok"
start kube-controller-manager "$KUBE_CONTROLLER_MANAGER" --kubeconfig="$kubeconfig" \
  --bind-address=127.0.0.1 --secure-port="$kcm_port" --cert-dir="$work/pki/kcm" --leader-elect=false \
  --service-account-private-key-file="$work/pki/sa.key" --root-ca-file="$ca" \
  --controllers=serviceaccount-controller,garbage-collector-controller,statefulset-controller,deployment-controller,replicaset-controller,disruption-controller,persistentvolume-binder-controller,persistentvolumeclaim-protection-controller,persistentvolume-protection-controller,namespace-controller \
  --v=0
start kube-scheduler "$KUBE_SCHEDULER" --kubeconfig="$kubeconfig" \
  --bind-address=127.0.0.1 --secure-port="$sched_port" --leader-elect=false --v=0
start kwok "$KWOK" --kubeconfig="$kubeconfig" --config="$KWOK_STAGES" \
  --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
  --node-ip=127.0.0.1 --server-address="127.0.0.1:$kwok_port" --cidr=10.0.0.1/16

kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-0
  annotations: {kwok.x-k8s.io/node: fake}
  labels: {kubernetes.io/hostname: kwok-node-0, type: kwok}
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "110"}
  capacity: {cpu: "32", memory: 256Gi, pods: "110"}
EOF
wait_for "node kwok-node-0 Ready" kc wait node/kwok-node-0 --for=condition=Ready --timeout=1s
# Admission taints a new node not-ready; without a node-lifecycle controller (whose heartbeats
# kwok would have to fake too) the script lifts the taint as that controller does on Ready.
kc patch node kwok-node-0 --type=json -p '[{"op":"remove","path":"/spec/taints"}]' >/dev/null
wait_for "ServiceAccount default/default" kc -n default get serviceaccount default
log "control plane up"
if [[ -n "${ORDO_APISERVER_HOLD:-}" ]]; then
  # For debugging: keep the bare control plane up until interrupted (bounded by the value, in s).
  log "holding the control plane for ${ORDO_APISERVER_HOLD}s: export KUBECONFIG=$kubeconfig"
  sleep "$ORDO_APISERVER_HOLD" &
  wait $! || true
  exit 0
fi

# Static volumes for the StatefulSets' claims (no provisioner here): the real PV binder binds them.
for i in $(seq 0 11); do
  for class in "" standard; do
    name="pv-${class:-none}-$i"
    size=1Gi
    [[ -n "$class" ]] && size=5Gi
    cat <<EOF
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: $name}
spec:
  capacity: {storage: $size}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: "$class"
  hostPath: {path: /nonexistent/$name}
EOF
  done
done | kc apply -f - >/dev/null

# ---------------------------------------------------------------------------------------------
check_helm_install() {
  helm() { "$HELM" --kubeconfig="$kubeconfig" "$@"; }
  helm install ordo "$root/charts/ordo" --namespace "$opns" --create-namespace --wait --timeout 120s
  kc wait crd/seqclusters.ordo.dev crd/workdividers.ordo.dev --for=condition=Established --timeout=30s
  local crd
  for crd in seqclusters.ordo.dev workdividers.ordo.dev; do
    # A non-structural schema or a CEL rule over the cost budget is refused at create; a
    # NonStructuralSchema condition would flag a schema accepted but not structural.
    [[ -z "$(kc get crd "$crd" -o jsonpath='{.status.conditions[?(@.type=="NonStructuralSchema")].status}')" ]] ||
      fail "$crd has a NonStructuralSchema condition"
  done
  kc -n "$opns" get serviceaccount ordo >/dev/null
  kc get clusterrole ordo >/dev/null
  kc get clusterrolebinding ordo >/dev/null
  kc -n "$opns" get role ordo-leader-election >/dev/null
  kc -n "$opns" get rolebinding ordo-leader-election >/dev/null
  kc -n "$opns" wait deployment/ordo --for=condition=Available --timeout=60s
  helm upgrade ordo "$root/charts/ordo" --namespace "$opns" --set replicaCount=2 --set logFormat=text --wait --timeout 120s
  [[ "$(kc -n "$opns" get deployment ordo -o jsonpath='{.status.readyReplicas}')" == 2 ]] ||
    fail "helm upgrade to replicaCount=2 did not give 2 ready replicas"
  [[ "$(helm status ordo --namespace "$opns" -o json | jq -r .version)" == 2 ]] || fail "helm upgrade did not make revision 2"
  # helm uninstall is checked at the end of the suite (check 1c).
}

# ---------------------------------------------------------------------------------------------
check_samples() {
  kc create namespace "$ns" >/dev/null
  local f
  for f in "$root"/examples/k8s/*.yaml; do
    kc -n "$ns" apply --dry-run=server -f "$f" >/dev/null || fail "server-side dry run of $f"
  done
  for f in "$root"/examples/k8s/*.yaml; do
    kc -n "$ns" apply -f "$f"
  done
  # Every default of the CRD schemas is filled in where a sample leaves the field out.
  py "$here/checks.py" defaults --kubectl "$KUBECTL" --namespace "$ns" \
    --crd "$root/crds/seqclusters.ordo.dev.yaml" --crd "$root/crds/workdividers.ordo.dev.yaml" \
    --sample-dir "$root/examples/k8s"
  # Each CEL rule rejects its violating object, and the user sees the rule's message.
  py "$here/checks.py" cel --kubectl "$KUBECTL" --namespace "$ns" \
    --cases "$root/operator/tests/fixtures/cel-violations.yaml" \
    --crd "$root/crds/seqclusters.ordo.dev.yaml" --crd "$root/crds/workdividers.ordo.dev.yaml"
}

# ---------------------------------------------------------------------------------------------
op_kubeconfig() { # op_kubeconfig NAME: a kubeconfig holding a fresh token of the chart's ServiceAccount
  local cfg="$work/$1.kubeconfig"
  cp "$kubeconfig" "$cfg"
  kc -n "$opns" create token ordo --duration=2h >"$work/$1.token"
  kubectl_cfg "$cfg" config set-credentials admin --token="$(cat "$work/$1.token")" >/dev/null
  echo "$cfg"
}
now() { date -u +%Y-%m-%dT%H:%M:%S.%6NZ; }
start_operator() { # start_operator NAME ADMIN_PORT
  KUBECONFIG="$(op_kubeconfig "$1")" RUST_LOG="info,kube=warn" \
    start "$1" "$operator_bin" run --admin-listen="127.0.0.1:$2" --lease-name=ordo --lease-namespace="$opns" \
    --identity="$1" --crd-poll-ms=500 --log-format=text --test-member-hosts="$work/member-hosts"
}
lease_holder() { kc -n "$opns" get lease ordo -o jsonpath='{.spec.holderIdentity}' 2>/dev/null; }
holder_is() { [[ "$(lease_holder)" == "$1" ]]; }
# forbidden_calls: the operator's requests that RBAC refused, from the audit log.
# (Lines are parsed one by one: the API server may be writing the last one.)
forbidden_calls() { jq -cR 'fromjson? | select(.responseStatus.code == 403) | [.verb, .requestURI]' "$audit" || true; }

check_operator_rbac() {
  mkdir -p "$work/members"
  for i in $(seq 0 30); do echo "$member_prefix.$((i + 1)) ids-$i.ids-peers.$ns.svc"; done >"$work/member-hosts"
  local cfg
  cfg="$(op_kubeconfig probe)"
  [[ "$(kubectl_cfg "$cfg" auth whoami -o jsonpath='{.status.userInfo.username}')" == "$sa_user" ]] ||
    fail "the ServiceAccount token does not authenticate as $sa_user"
  # Least privilege is real: the chart grants what the operator needs and no list of Secrets.
  kubectl_cfg "$cfg" auth can-i patch statefulsets.apps -n "$ns" >/dev/null || fail "RBAC: cannot patch statefulsets"
  ! kubectl_cfg "$cfg" auth can-i list secrets -n "$ns" >/dev/null || fail "RBAC grants list secrets"
  start kubelet-standin python3 "$here/kubelet_standin.py" --server="$server" \
    --token-file="$work/pki/admin.token" --ca-file="$ca" --namespace="$ns" --seqcluster=ids \
    --sidecar="$sidecar_bin" --ip-prefix="$member_prefix" --dir="$work/members" --epochs-log="$work/epochs.log"
  start_operator operator-a "$op_a_port"
  wait_for "operator-a to lead" holder_is operator-a
  start_operator operator-b "$op_b_port"
  standby_since="$(now)"
  wait_for "operator-b to be up" curl -sf "http://127.0.0.1:$op_b_port/readyz"
  wait_for "SeqCluster ids Available" kc -n "$ns" wait seqc/ids --for=condition=Available --timeout=1s
  wait_for "WorkDivider stocks Available" kc -n "$ns" wait wdiv/stocks --for=condition=Available --timeout=1s
  local denied
  denied="$(forbidden_calls)"
  [[ -z "$denied" ]] || fail "RBAC refused operator requests: $denied"
  [[ -s "$audit" ]] || fail "the audit log recorded no operator request"
}

# ---------------------------------------------------------------------------------------------
check_reconcile() {
  py "$here/checks.py" children --kubectl "$KUBECTL" --namespace "$ns" --field-manager ordo-operator \
    --owner SeqCluster/ids --owner SeqCluster/ledger --owner WorkDivider/stocks
  py "$here/checks.py" columns --kubectl "$KUBECTL" --namespace "$ns" \
    --crd "$root/crds/seqclusters.ordo.dev.yaml" --object ids:REPLICAS=3,READY=3,EPOCH=1,PHASE=Stable,AVAILABLE=True \
    --crd "$root/crds/workdividers.ordo.dev.yaml" --object stocks:SEQCLUSTER=ids,REPLICAS=2,READY=2,KEYS="<none>",UNOWNED="<none>",AVAILABLE=True
  kc -n "$ns" get seqc,wdiv
  py "$here/checks.py" conditions --kubectl "$KUBECTL" --namespace "$ns" --object seqc/ids --object wdiv/stocks
}

check_idle() {
  # Let in-flight polls settle, then count what the operators write while nothing changes.
  sleep "$renew_seconds"
  local from to
  from="$(now)"
  sleep "$idle_seconds"
  to="$(now)"
  all_alive
  py "$here/checks.py" idle --audit "$audit" --from "$from" --to "$to" --seconds "$idle_seconds" \
    --lease-renew-seconds "$renew_seconds" --resync-objects 2
}

# ---------------------------------------------------------------------------------------------
next_id() { "$ordoctl_bin" --socket="http://$member_prefix.$1:7070" -o json seq next orders --strict | jq -r .start; }
members_are() { # members_are N PHASE
  [[ "$(kc -n "$ns" get seqc ids -o jsonpath='{.status.membership.current.members}/{.status.membership.phase}/{.status.readyMembers}')" == "$1/$2/$1" ]]
}
# The conditions are functions so that wait_for evaluates them on every try (an argument like
# "$(kc get ...)" would be evaluated once, before the first try).
sts_replicas_are() { [[ "$(kc -n "$ns" get sts "$1" -o jsonpath='{.status.replicas}')" == "$2" ]]; }
pods_gone() { [[ -z "$(kc -n "$ns" get pod "$@" --ignore-not-found -o name)" ]]; }
claims_gone() { [[ -z "$(kc -n "$ns" get pvc "$@" --ignore-not-found -o name)" ]]; }
sts_spec_replicas_are() { [[ "$(kc -n "$ns" get sts "$1" -o jsonpath='{.spec.replicas}')" == "$2" ]]; }
check_scaling() {
  local before mid after
  before="$(next_id 1)"
  cp "$work/epochs.log" "$work/epochs.before"
  kc -n "$ns" patch seqc ids --type=merge -p '{"spec":{"replicas":5}}'
  wait_for "5 members, Stable, 5 ready" members_are 5 Stable
  py "$here/checks.py" pdb --kubectl "$KUBECTL" --namespace "$ns" --name ids --pods 5 --min-available 3
  mid="$(next_id 5)"
  kc -n "$ns" patch seqc ids --type=merge -p '{"spec":{"replicas":3}}'
  wait_for "3 members, Stable, 3 ready" members_are 3 Stable
  wait_for "StatefulSet ids at 3 replicas" sts_replicas_are ids 3
  wait_for "pods ids-3 and ids-4 gone" pods_gone ids-3 ids-4
  wait_for "claims of ids-3 and ids-4 deleted (whenScaled: Delete)" claims_gone data-ids-3 data-ids-4
  py "$here/checks.py" pdb --kubectl "$KUBECTL" --namespace "$ns" --name ids --pods 3 --min-available 2
  after="$(next_id 2)"
  log "IDs from the quorum: $before before, $mid at 5 members, $after back at 3"
  ((before < mid && mid < after)) || fail "IDs went backwards across the membership changes: $before $mid $after"
  py "$here/checks.py" epochs --before "$work/epochs.before" --log "$work/epochs.log" --path 3,5,3
}

# ---------------------------------------------------------------------------------------------
check_leader_failover() {
  # The standby has written nothing but attempts on the Lease: no reconcile, no status, no event.
  holder_is operator-a || fail "operator-a no longer leads before the failover test"
  local t_kill renewed
  renewed="$(kc -n "$opns" get lease ordo -o jsonpath='{.spec.renewTime}')"
  py "$here/checks.py" standby --audit "$audit" --token-file "$work/operator-b.token" --from "$standby_since" --to "$(now)"
  stop operator-a KILL
  t_kill="$(date -u +%s.%N)"
  log "killed the leader operator-a (last renewal $renewed)"
  wait_for "operator-b to take the lease" holder_is operator-b
  log "operator-b leads $(python3 -c "import sys,time; print(round(time.time()-float(sys.argv[1]),1))" "$t_kill")s after the kill"
  py "$here/checks.py" lease --kubectl "$KUBECTL" --namespace "$opns" --name ordo --holder operator-b \
    --previous-renew "$renewed" \
    --lease-seconds "$lease_seconds" --renew-seconds "$renew_seconds"
  # The new leader reconciles: a WorkDivider change reaches its StatefulSet, through its token.
  local since
  since="$(now)"
  kc -n "$ns" patch wdiv stocks --type=merge -p '{"spec":{"replicas":3}}'
  wait_for "StatefulSet stocks at 3 replicas (applied by operator-b)" sts_spec_replicas_are stocks 3
  py "$here/checks.py" wrote --audit "$audit" --token-file "$work/operator-b.token" --from "$since" --resource statefulsets
  local denied
  denied="$(forbidden_calls)"
  [[ -z "$denied" ]] || fail "RBAC refused operator requests: $denied"
}

# ---------------------------------------------------------------------------------------------
check_unready_quiet() {
  # ledger's pods run under kwok and never answer /status: the operator polls it every 5 s.
  [[ "$(kc -n "$ns" get seqc ledger -o jsonpath='{.status.readyMembers}')" != "5" ]] ||
    fail "SeqCluster ledger is ready: this check needs an unready one"
  local from to
  from="$(now)"
  sleep 20
  to="$(now)"
  py "$here/checks.py" unready --audit "$audit" --from "$from" --to "$to" --seconds 20 --name ledger
}

check_gc_ledger() {
  py "$here/checks.py" gc --kubectl "$KUBECTL" --namespace "$ns" --timeout "$wait_timeout" --delete SeqCluster/ledger
}
check_gc_all() {
  py "$here/checks.py" gc --kubectl "$KUBECTL" --namespace "$ns" --timeout "$wait_timeout" \
    --delete WorkDivider/stocks --delete SeqCluster/ids
}

check_helm_uninstall() {
  stop operator-b
  stop kubelet-standin
  "$HELM" --kubeconfig="$kubeconfig" uninstall ordo --namespace "$opns" --wait --timeout 60s
  [[ -z "$(kc -n "$opns" get deployment,serviceaccount,role,rolebinding -o name 2>/dev/null | grep -v '^serviceaccount/default$' || true)" ]] ||
    fail "helm uninstall left objects in $opns"
  ! kc get clusterrole ordo >/dev/null 2>&1 || fail "helm uninstall left ClusterRole ordo"
  ! kc get clusterrolebinding ordo >/dev/null 2>&1 || fail "helm uninstall left ClusterRoleBinding ordo"
  # Helm never deletes crds/ on uninstall (users' objects survive a reinstall): documented, checked.
  kc get crd seqclusters.ordo.dev workdividers.ordo.dev >/dev/null || fail "helm uninstall removed the CRDs"
}

check "1a helm install and upgrade: CRDs established, Deployment, RBAC, ServiceAccount" check_helm_install
check "2 samples: server-side dry run, apply, defaults, every CEL rule's rejection message" check_samples
check "3 operator with the ServiceAccount token: RBAC allows every request it makes" check_operator_rbac
check "4a reconcile: children by field manager ordo-operator, owner references, conditions, printer columns" check_reconcile
check "4e an unready SeqCluster (ledger) polled every 5 s does not re-send unchanged children" check_unready_quiet
check "4b delete SeqCluster ledger: the garbage collector removes every child (PDB, NetworkPolicy too)" check_gc_ledger
check "4c no hot loop: operator writes over an idle ${idle_seconds}s window" check_idle
check "5 scaling 3 -> 5 -> 3 through the joint epoch with real sidecars; PDB status" check_scaling
check "6 leader election: the standby writes nothing, takes over after the lease expires" check_leader_failover
check "4d delete WorkDivider stocks and SeqCluster ids: the garbage collector removes every child" check_gc_all
check "1b helm uninstall" check_helm_uninstall

denied="$(forbidden_calls)"
[[ -z "$denied" ]] || fail "RBAC refused operator requests: $denied"
log "all checks passed in $((SECONDS - suite_start))s"
echo "apiserver: ${#passed[@]} passed, 0 failed"
