#!/usr/bin/env bash
# Scale measurement of the quorum store: three release-built members with 1M registers
# (ORDO_SCALE_REGISTERS to change); one is wiped and catches up, then a fourth joins through a
# joint epoch. Prints and writes bench-out/scale.md: wall times and each sidecar's peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p ordo-sidecar
export ORDO_SIDECAR_BIN="$PWD/target/release/ordo-sidecar"
exec cargo test -p ordo-e2e --test scale -- --ignored --nocapture "$@"
