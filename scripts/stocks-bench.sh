#!/usr/bin/env bash
# The stocks example's benchmark (issue 10, part 4): the same trade stream through
#  (a) a serial baseline, (b) worker threads sharing state behind a mutex, (c) the "bad"
#  per-worker state that is never merged, (d) per-worker state merged every 4, 10 and 30 ticks
#  (all in one process: `stocks local`), and (e) 1, 2 and 4 app processes on Ordo (`ordoctl dev`,
#  release build; merge ticks 10, plus 4 and 30 with 2 processes).
# For each: trades/s, speedup over (a), and the staleness of the state (trades applied but not
# yet visible in the shared/merged state or the log, sampled at random moments).
#
#   bash scripts/stocks-bench.sh [--trades N] [--out DIR]
# Writes DIR/stocks-bench.md (table) and DIR/stocks-bench.svg (plot); DIR defaults to
# bench-out/stocks-<date>.
set -euo pipefail
cd "$(dirname "$0")/.."
trades=40000
out="bench-out/stocks-$(date -u +%Y%m%dT%H%M%SZ)"
while [ $# -gt 0 ]; do
  case "$1" in
    --trades) trades=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --bench) shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
cargo build --quiet --locked --release -p ordoctl -p ordo-sidecar -p ordo-stocks --bins
bin="$PWD/target/release"
# shellcheck source=scripts/stocks-lib.sh
source scripts/stocks-lib.sh

echo "== (a)-(d) in one process: 300000 trades, 2 workers"
"$bin/stocks" local --trades 300000 --partitions 16 --workers 2 >"$out/local.json"

run_ordo() { # PROCESSES MERGE_TICKS
  local n=$1 m=$2 run_dir stats=() i ok=false
  run_dir="$out/ordo-$n-$m"; mkdir -p "$run_dir"
  echo "== (e) Ordo: $n app processes, merge ticks $m, $trades trades"
  start_cluster "$run_dir"
  "$bin/stocks" setup --socket "$(sock 0)" --partitions 12 >/dev/null
  for i in $(seq 1 "$n"); do
    start_app "$run_dir" "$i" $(( (i - 1) % 3 )) --merge-ticks "$m" --stats "$run_dir/stats-$i.json"
    stats+=("$run_dir/stats-$i.json")
  done
  wait_owned 12 60
  "$bin/stocks" generate --socket "$(sock 0)" --trades "$trades" --partitions 12 --deadline-secs 300 \
    >"$run_dir/generator.json" 2>"$run_dir/generator.log"
  if "$bin/stocks" check --socket "$(sock 0)" --trades "$trades" --partitions 12 >"$run_dir/check.txt"; then ok=true; fi
  cat "$run_dir/check.txt"
  stop_all
  local IFS=,
  if [ "$ok" = true ]; then
    "$bin/stocks" ordo-row --generator "$run_dir/generator.json" --stats "${stats[*]}" --processes "$n" --merge-ticks "$m" --correct >>"$out/ordo.jsonl"
  else
    "$bin/stocks" ordo-row --generator "$run_dir/generator.json" --stats "${stats[*]}" --processes "$n" --merge-ticks "$m" >>"$out/ordo.jsonl"
  fi
  rm -rf "$run_dir/dev"
}
run_ordo 1 10
run_ordo 2 10
run_ordo 4 10
run_ordo 2 4
run_ordo 2 30

"$bin/stocks" report --out "$out" "$out/local.json" "$out/ordo.jsonl"
echo "table: $out/stocks-bench.md   plot: $out/stocks-bench.svg"
