#!/usr/bin/env bash
# The stocks example on a local Ordo cluster (`ordoctl dev`, no Kubernetes): three app processes
# own 12 stock partitions through the `stocks` divider, a generator routes a trade stream to them,
# and mid-run one app is killed with SIGKILL (then restarted, as Kubernetes would) and another is
# paused with SIGSTOP past its partitions' stop timeout. At the end the checker compares the final
# state of every symbol with a serial replay of the same trades and prints one line.
#
#   bash scripts/stocks-demo.sh                    # one run, seed 1
#   bash scripts/stocks-demo.sh --seeds 1,2,3      # several seeds (each on a fresh cluster)
#   bash scripts/stocks-demo.sh --trades 50000     # a longer stream
#   bash scripts/stocks-demo.sh --bench            # the merge-tick benchmark (see --help)
#   bash scripts/stocks-demo.sh --no-fenced ...    # appends without fencing tokens, for experiments
#     (whether a zombie append lands then depends on timing; e2e/tests/log.rs
#     a_deposed_divider_owner_cannot_append_with_its_old_token shows the refusal deterministically)
#
# Exit status 0 only if every run's checker passed. Logs stay in the run's directory on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

seeds=1
trades=20000
bench=0
profile=debug
keep=0
extra_app=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) seeds=$2; shift 2 ;;
    --trades) trades=$2; shift 2 ;;
    --bench) bench=1; shift ;;
    --release) profile=release; shift ;;
    --keep) keep=1; shift ;;
    --no-fenced) extra_app+=(--no-fence); shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [ "$bench" = 1 ]; then
  exec bash scripts/stocks-bench.sh "$@"
fi

flag=(); [ "$profile" = release ] && flag=(--release)
cargo build --quiet --locked "${flag[@]}" -p ordoctl -p ordo-sidecar -p ordo-stocks --bins
bin="$PWD/target/$profile"

# shellcheck source=scripts/stocks-lib.sh
source scripts/stocks-lib.sh

failed=0
for seed in ${seeds//,/ }; do
  run_dir=$(mktemp -d "${TMPDIR:-/tmp}/ordo-stocks-XXXXXX")
  echo "== seed $seed: $trades trades, 12 partitions, 3 apps (logs: $run_dir)"
  start_cluster "$run_dir" --divider-stop-timeout-ms=2000
  "$bin/stocks" setup --socket "$(sock 0)" --partitions 12 >/dev/null
  start_app "$run_dir" a 0 "${extra_app[@]}"
  start_app "$run_dir" b 1 "${extra_app[@]}"
  start_app "$run_dir" c 2 "${extra_app[@]}"
  wait_owned 12 30
  "$bin/stocks" generate --socket "$(sock 0)" --seed "$seed" --trades "$trades" --partitions 12 \
    --deadline-secs 240 >"$run_dir/generator.json" 2>"$run_dir/generator.log" &
  gen=$!
  # Faults: app a killed (SIGKILL) and restarted as a new process (as Kubernetes would); app b and
  # its sidecar (member 1) paused for 8 s, past the 3 s lease, like a frozen node: the divider
  # expires b and gives its partitions to a and c with higher tokens; when b resumes, it still
  # holds trades it read before the pause, and its appends with the old tokens are fenced.
  sleep 1.5
  echo "   kill -9 app a (pid ${app_pid[a]})"
  kill -9 "${app_pid[a]}"
  sleep 1
  echo "   SIGSTOP app b (pid ${app_pid[b]}) and its sidecar (member 1, pid $(member_pid 1))"
  kill -STOP "${app_pid[b]}" "$(member_pid 1)"
  sleep 1
  echo "   restart app a"
  start_app "$run_dir" a 0 "${extra_app[@]}"
  sleep 7
  echo "   SIGCONT app b and its sidecar"
  kill -CONT "$(member_pid 1)" "${app_pid[b]}"
  if ! wait "$gen"; then
    echo "   the generator failed: $(tail -n 3 "$run_dir/generator.log")"
  fi
  echo "   generator: $(cat "$run_dir/generator.json" 2>/dev/null)"
  fenced=$(grep -c "lost to a newer owner" "$run_dir"/app-*.log || true)
  echo "   fenced appends refused in the apps: $(echo "$fenced" | awk -F: '{s+=$NF} END {print s+0}')"
  if "$bin/stocks" check --socket "$(sock 1)" --seed "$seed" --trades "$trades" --partitions 12 | tee "$run_dir/check.txt"; then
    :
  else
    failed=1
  fi
  stop_all
  if [ "$failed" = 0 ] && [ "$keep" = 0 ]; then rm -rf "$run_dir"; fi
done
exit "$failed"
