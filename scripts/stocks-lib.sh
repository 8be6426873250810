# Shared by scripts/stocks-demo.sh and scripts/stocks-bench.sh: a dev cluster and app processes.
# Expects $bin (the directory of ordoctl, ordo-sidecar and stocks). Sourced, not run.

declare -A app_pid=()
dev_pid=
dev_dir=
# Below the kernel's ephemeral range (32768+), so a port in use by an outgoing connection never collides.
base_port=$(( 20000 + ($$ % 1000) * 10 ))

sock() { echo "$dev_dir/dev-$1/ordo.sock"; }
# member_pid I: the pid of dev member i's sidecar (from the dev cluster's cluster.json).
member_pid() {
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["members"][int(sys.argv[2])]["pid"])' "$dev_dir/cluster.json" "$1"
}

# start_cluster RUN_DIR [SIDECAR_ARGS...]: a 3-member dev cluster, ready.
start_cluster() {
  dev_dir="$1/dev"; shift
  "$bin/ordoctl" dev --dir "$dev_dir" --fresh --base-port "$base_port" -- "$@" >"$dev_dir.out" 2>&1 &
  dev_pid=$!
  local i
  for i in $(seq 1 120); do
    if grep -q '^ready' "$dev_dir.out" 2>/dev/null; then return 0; fi
    if ! kill -0 "$dev_pid" 2>/dev/null; then break; fi
    sleep 0.5
  done
  echo "the dev cluster did not get ready:" >&2
  tail -n 20 "$dev_dir.out" >&2
  return 1
}

# start_app RUN_DIR NAME MEMBER_INDEX [APP_ARGS...]: an app process on member i's sidecar.
start_app() {
  local run_dir=$1 name=$2 i=$3; shift 3
  "$bin/stocks" app --socket "$(sock "$i")" --member "app-$name" "$@" >>"$run_dir/app-$name.log" 2>&1 &
  app_pid[$name]=$!
}

# wait_owned KEYS SECS: until the divider has KEYS keys and none unowned.
wait_owned() {
  local want=$1 secs=$2 i s
  for i in $(seq 1 $(( secs * 4 ))); do
    s=$("$bin/ordoctl" --socket "$(sock 0)" divider --name stocks status -o json 2>/dev/null || true)
    if [[ "$s" == *"\"keys\":$want"* && "$s" == *'"unowned":0'* ]]; then return 0; fi
    sleep 0.25
  done
  echo "the divider did not own its $want keys within $secs s: $s" >&2
  return 1
}

# stop_all: every app (SIGTERM, then SIGKILL), then the cluster.
stop_all() {
  local p
  for p in "${app_pid[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
  if [ -n "$dev_dir" ] && [ -f "$dev_dir/cluster.json" ]; then
    for i in 0 1 2; do kill -CONT "$(member_pid "$i" 2>/dev/null)" 2>/dev/null || true; done
  fi
  for p in "${app_pid[@]}"; do
    for _ in $(seq 1 20); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  app_pid=()
  if [ -n "$dev_pid" ]; then
    kill "$dev_pid" 2>/dev/null || true
    wait "$dev_pid" 2>/dev/null || true
    dev_pid=
  fi
}
trap stop_all EXIT
