#!/usr/bin/env bash
# Sequencer benchmark: rr_seq's matrix on a local 3-member Ordo cluster, side by side with an
# in-process baseline and a 3-member etcd cluster. Arguments go to ordo-bench
# (e.g. --secs 3 --repeat 3 --no-etcd); results land in bench-out/sequencer.{md,json,svg}.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p ordo-sidecar -p ordo-e2e

if ! command -v etcd >/dev/null 2>&1; then
  echo "installing etcd-server (Debian) for the etcd comparison..." >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo -n"; fi
  if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq etcd-server etcd-client; } >&2; then
    echo "etcd could not be installed; the table will say \"etcd: not available\"" >&2
  fi
fi
# Debian's package may start an etcd service on the default ports; the benchmark uses its own.

export ORDO_SIDECAR_BIN="$PWD/target/release/ordo-sidecar"
exec target/release/ordo-bench --sidecar "$ORDO_SIDECAR_BIN" "$@"
