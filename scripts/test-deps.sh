#!/usr/bin/env bash
# Installs what the tests need, pinned, into gitignored folders of this tree. Idempotent: each
# part does nothing when its pins are already there.
# - .venv: helm-python-sdk (Helm's Go SDK: render and lint the chart), kmock (HTTP Kubernetes
#   API emulator for the controller wiring test), and grpcio with its tools, health and
#   reflection packages (the stock Python gRPC client that e2e/tests/foreign_clients.rs runs
#   against the sidecar's Unix socket).
# - e2e/foreign/node_modules: @grpc/grpc-js, @grpc/proto-loader and grpc-health-check from
#   e2e/foreign/package-lock.json (the stock Node gRPC client of the same test).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

venv="$root/.venv"
pins=(helm-python-sdk==0.2.2 kmock==0.8 aiohttp==3.13.2 attrs==25.4.0 yarl==1.22.0 jsonpatch==1.33 PyYAML==6.0.3
  grpcio==1.85.1 grpcio-tools==1.85.1 grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1 protobuf==7.36.2)
stamp="$venv/.ordo-pins"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "${pins[*]}" ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}"
  echo "${pins[*]}" > "$stamp"
  echo "installed ${pins[*]} into $venv"
fi

foreign="$root/e2e/foreign"
lock_sum="$(sha256sum "$foreign/package-lock.json" | cut -d' ' -f1)"
node_stamp="$foreign/node_modules/.ordo-lock"
if [[ ! -f "$node_stamp" || "$(cat "$node_stamp")" != "$lock_sum" ]]; then
  # No install scripts: the packages are pure JavaScript.
  (cd "$foreign" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  echo "$lock_sum" > "$node_stamp"
  echo "installed e2e/foreign's Node packages"
fi
