#!/usr/bin/env bash
# Creates /work/main/.venv (gitignored) with the pinned Python tools the operator tests use:
# helm-python-sdk (Helm's Go SDK: render and lint the chart) and kmock (HTTP Kubernetes API
# emulator for the controller wiring test). Idempotent: does nothing when the pins are there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv"
pins=(helm-python-sdk==0.2.2 kmock==0.8 aiohttp==3.13.2 attrs==25.4.0 yarl==1.22.0 jsonpatch==1.33 PyYAML==6.0.3)
stamp="$venv/.ordo-pins"
if [[ -f "$stamp" && "$(cat "$stamp")" == "${pins[*]}" ]]; then
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}"
echo "${pins[*]}" > "$stamp"
echo "installed ${pins[*]} into $venv"
