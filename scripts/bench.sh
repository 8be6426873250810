#!/usr/bin/env bash
# Benchmarks. Without a mode: the sequencer (rr_seq's matrix on a local 3-member Ordo cluster, side
# by side with an in-process baseline and a 3-member etcd cluster; bench-out/sequencer.*).
# `bash scripts/bench.sh log ...`: log streams vs NATS JetStream R3 and Redis (bench-out/log.*).
# `bash scripts/bench.sh divider ...`: the divider's assignment function; `... ownership ...`: the
# divider's ownership (all owned from scratch, recovery after kill -9, the unowned gap of a planned
# scale-down by SIGTERM, idle quorum writes; --keys 100,10000,100000) vs the etcd recipe. Arguments go to
# ordo-bench (e.g. --secs 3 --repeat 3 --no-etcd).
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
if [ "${1:-}" = "log" ]; then
  shift
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo -n"; fi
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "installing redis-server (Debian) for the log comparison..." >&2
    { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server; } >&2 ||
      echo "redis-server could not be installed; the table will say so" >&2
    # Debian starts a redis service on 6379; the benchmark runs its own on another port.
  fi
  # JetStream's sync_interval (fsync before every ack) needs nats-server >= 2.10; Debian ships
  # 2.9, so build a pinned release from source with Go once, cached outside the tree.
  NATS_VERSION=v2.15.2
  NATS_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/ordo/nats-server-$NATS_VERSION"
  if [ ! -x "$NATS_DIR/nats-server" ]; then
    echo "building nats-server $NATS_VERSION with Go (once) for the JetStream comparison..." >&2
    mkdir -p "$NATS_DIR"
    (cd "$NATS_DIR" && GOBIN="$NATS_DIR" GOFLAGS=-mod=mod go install "github.com/nats-io/nats-server/v2@$NATS_VERSION") >&2 ||
      echo "nats-server could not be built; the table will say JetStream was not run" >&2
  fi
  NATS_ARGS=()
  [ -x "$NATS_DIR/nats-server" ] && NATS_ARGS=(--nats-server "$NATS_DIR/nats-server")
  exec target/release/ordo-bench log --sidecar "$ORDO_SIDECAR_BIN" "${NATS_ARGS[@]}" "$@"
fi
if [ "${1:-}" = "divider" ]; then
  exec target/release/ordo-bench "$@"
fi
if [ "${1:-}" = "ownership" ]; then
  shift
  exec target/release/ordo-bench ownership --sidecar "$ORDO_SIDECAR_BIN" "$@"
fi
exec target/release/ordo-bench --sidecar "$ORDO_SIDECAR_BIN" "$@"
