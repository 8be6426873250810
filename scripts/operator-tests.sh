#!/usr/bin/env bash
# Everything CI runs for the operator (issue 3): Python test deps (pinned, into .venv), format
# and lint, all ordo-operator tests (the chart and kmock tests are required here, not skipped),
# the render smoke test, then the kind e2e suite (which skips cleanly without kind/docker).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/test-deps.sh
cargo fmt -p ordo-operator -- --check
cargo clippy -p ordo-operator --all-targets --no-deps --locked -- -D warnings
ORDO_REQUIRE_PY_TESTS=1 cargo test -p ordo-operator --locked
cargo run -q -p ordo-operator --locked -- render -f examples/k8s/seqcluster.yaml -f examples/k8s/workdivider.yaml >/dev/null
bash e2e/kind/run.sh
