#!/usr/bin/env bash
# Runs every Ordo test on a fresh machine: formatting and lints, the whole Rust workspace
# (unit, property, simulation and multi-process suites), the Helm/emulator checks of the
# operator, and the kind suite (which says it skipped where kind or docker is missing).
# Everything it needs is installed by the scripts it calls. Exit status: 0 only if all passed.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
start=$(date +%s)
step() { printf '\n== %s (%ss)\n' "$1" "$(( $(date +%s) - start ))"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "build binaries (the multi-process suites start the real ordo-sidecar and ordoctl)"
cargo build --workspace --bins --quiet

step "cargo test --workspace"
cargo test --workspace --no-fail-fast

if [ -x scripts/operator-tests.sh ]; then
  step "operator: Helm chart and API emulator checks"
  bash scripts/operator-tests.sh
fi

if [ -x e2e/kind/run.sh ]; then
  step "kind end-to-end suite"
  bash e2e/kind/run.sh
fi

step "all tests passed"
