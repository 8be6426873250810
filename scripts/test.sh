#!/usr/bin/env bash
# Runs every Ordo test on a fresh machine: formatting and lints, the whole Rust workspace
# (unit, property, simulation, multi-process, mocked-API and API-emulator suites, the Helm chart
# checks), the operator's render smoke test, the real-API-server suite (e2e/apiserver: needs Go;
# its components are built from source on the first run and cached under ~/.cache/ordo) and the
# kind suite (which says it skipped where kind or docker is missing). What the tests need (a
# Python venv with helm-python-sdk and kmock) is installed by scripts/test-deps.sh. Exit status: 0 only if everything passed.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# A one-shot run gains nothing from incremental state, which would cost gigabytes of disk (a CI
# run once failed with the linker's bus error on a full disk); line tables keep backtraces useful.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
start=$(date +%s)
step() { printf '\n== %s (%ss)\n' "$1" "$(( $(date +%s) - start ))"; }

df -h . 2>/dev/null | awk 'NR==2 {print "disk free at start: " $4}' || true
step "test dependencies (pinned Python tools in .venv)"
bash scripts/test-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked --quiet -- -D warnings

step "lean crates: apps linking ordo-client, and the operator, do not compile the sidecar"
# `cargo tree` lists each package once per line with --prefix none; a match is a dependency.
no_deps() { # package, then the crates it must not depend on
  local pkg=$1; shift
  local tree found
  tree=$(cargo tree -p "$pkg" -e normal --prefix none --locked) # fails the script if cargo fails
  found=$(awk '{print $1}' <<<"$tree" | sort -u | grep -Fx -f <(printf '%s\n' "$@") || true)
  if [ -n "$found" ]; then
    echo "$pkg depends on: $(echo $found) (see: cargo tree -p $pkg -e normal -i <crate>)" >&2
    return 1
  fi
}
no_deps ordo-client redb axum ordo-sidecar
no_deps ordo-operator redb ordo-sidecar

step "build binaries (the multi-process suites start the real ordo-sidecar, ordoctl, ordo-operator)"
cargo build --workspace --bins --locked --quiet

step "cargo test --workspace (chart and emulator tests required, not skipped)"
ORDO_REQUIRE_PY_TESTS=1 cargo test --workspace --locked --no-fail-fast

step "ordo-operator render smoke test"
target/debug/ordo-operator render -f examples/k8s/seqcluster.yaml -f examples/k8s/workdivider.yaml >/dev/null
target/debug/ordo-operator render -f examples/k8s/stocks.yaml >/dev/null

step "stocks example: demo with kill -9 and SIGSTOP, checked against a serial replay (seeds 1 and 2)"
bash scripts/stocks-demo.sh --seeds 1,2

step "real API server suite (etcd, kube-apiserver, controller manager, scheduler, kwok, helm; built from source once, cached)"
bash e2e/apiserver/run.sh

step "kind end-to-end suite"
bash e2e/kind/run.sh

step "all tests passed"
du -sh target 2>/dev/null | sed 's/^/disk used by target: /' || true
