#!/usr/bin/env bash
# Builds, once per version, the real components the API-server test tier runs, and prints one
# NAME=path line per binary (run.sh evals them). Everything is compiled from source through the Go
# module proxy at pinned versions:
#   kube-apiserver, kube-controller-manager,
#   kube-scheduler, kubectl                           k8s.io/kubernetes (module go/kube)
#   etcd                                              go.etcd.io/etcd/server/v3 (module go/etcd)
#   kwok                                              sigs.k8s.io/kwok/cmd/kwok
#   helm                                              helm.sh/helm/v3/cmd/helm
# Binaries are cached outside the work tree under ${XDG_CACHE_HOME:-$HOME/.cache}/ordo/<name>-<key>/
# (key = version, plus a hash of our module files for the two modules of ours), and so are the Go
# module and build caches, so a warm rerun only checks stamps. Build progress goes to stderr.
# ORDO_GO_BUILD_JOBS (default 2) bounds the compiler's parallelism.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

KUBE_VERSION=v1.37.2
ETCD_VERSION=v3.6.16
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.22.0

cache="${XDG_CACHE_HOME:-$HOME/.cache}/ordo"
export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build"
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
jobs="${ORDO_GO_BUILD_JOBS:-2}"
buildflags=(-p "$jobs" -trimpath "-ldflags=-s -w")

if ! command -v go >/dev/null; then
  echo "tools.sh: the Go toolchain (go) is required to build the API-server tier's components" >&2
  exit 1
fi

log() { printf '[tools %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# key_of DIR BUILD-FUNCTION: short hash of our module's files and of the function that builds
# it, so editing either rebuilds.
key_of() {
  {
    (cd "$1" && find . -type f \( -name '*.go' -o -name 'go.mod' -o -name 'go.sum' \) -print0 | sort -z | xargs -0 cat)
    declare -f "$2"
  } | sha256sum | cut -c1-10
}

# ensure NAME KEY BUILD-FUNCTION BINARIES...: runs BUILD-FUNCTION OUTDIR unless the stamp is there.
ensure() {
  local name="$1" key="$2" fn="$3"
  shift 3
  local dir="$cache/$name-$key"
  if [[ ! -f "$dir/.complete" ]]; then
    local t0=$SECONDS
    log "building $name ($key) into $dir"
    rm -rf "$dir.tmp"
    mkdir -p "$dir.tmp"
    "$fn" "$dir.tmp"
    rm -rf "$dir"
    mv "$dir.tmp" "$dir"
    touch "$dir/.complete"
    log "built $name in $((SECONDS - t0))s"
    # Other builds of this component (other versions or keys) are not needed any more.
    local old
    for old in "$cache/$name"-v*; do
      [[ "$old" == "$dir" || ! -d "$old" ]] || rm -rf "$old"
    done
  fi
  local b
  for b in "$@"; do
    [[ -s "$dir/$b" ]] || { echo "tools.sh: $dir/$b missing" >&2; exit 1; }
    # kube-apiserver -> KUBE_APISERVER; a data file is named after its entry: KWOK_STAGES
    local var="$b"
    [[ -x "$dir/$b" ]] || var="$name"
    printf '%s=%s\n' "$(echo "$var" | tr 'a-z-' 'A-Z_')" "$dir/$b"
  done
}

# The version the binaries report (helm checks the chart's kubeVersion against it), as
# Kubernetes' own release build stamps it.
build_kube() {
  local v=k8s.io/component-base/version minor="${KUBE_VERSION#v1.}"
  local stamp="-X $v.gitVersion=$KUBE_VERSION -X $v.gitMajor=1 -X $v.gitMinor=${minor%%.*} -X $v.gitTreeState=clean"
  stamp="$stamp ${stamp//component-base\/version/client-go\/pkg\/version}"
  (cd "$here/go/kube" && go build -p "$jobs" -trimpath "-ldflags=-s -w $stamp" -o "$1/" ./cmd/...)
}
build_etcd() { (cd "$here/go/etcd" && go build "${buildflags[@]}" -o "$1/etcd" .); }
build_kwok() { GOBIN="$1" go install "${buildflags[@]}" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"; }
# kwok's own node and pod stages (node-initialize; pod ready, complete, delete) from its module.
build_kwok_stages() {
  local src f
  src="$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
  for f in node/fast/node-initialize pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
    cat "$src/kustomize/stage/$f.yaml"
    echo "---"
  done >"$1/stages.yaml"
}
build_helm() { GOBIN="$1" go install "${buildflags[@]}" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"; }

ensure etcd "$ETCD_VERSION-$(key_of "$here/go/etcd" build_etcd)" build_etcd etcd
ensure kwok "$KWOK_VERSION" build_kwok kwok
ensure kwok-stages "$KWOK_VERSION" build_kwok_stages stages.yaml
ensure helm "$HELM_VERSION" build_helm helm
ensure kube "$KUBE_VERSION-$(key_of "$here/go/kube" build_kube)" build_kube kube-apiserver kube-controller-manager kube-scheduler kubectl
