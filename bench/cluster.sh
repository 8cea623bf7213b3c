# Sourced by the bench scripts: a 3-node Cairn cluster of release processes on loopback.
#
#   ensure_bin; start_cluster LOG_DIR [SERVER_FLAGS...]; load_records; cpu_ticks
#
# starts `$BIN server` three times on free ports with data dirs under WORK (a temporary
# folder under TMPDIR, removed on exit with the processes), logs to LOG_DIR/node-N.log, and
# waits until all three are live. It sets GRPC[1..3] and HTTP[1..3] (host:port), CLUSTER
# (the --initial-cluster value), EP (the client --endpoints) and PIDS[1..3]; on a cluster
# that does not come up it exits the script with an error. Each node gets the worker
# threads of bench/threads.inc.sh (CAIRN_THREADS).

# Builds the release binary into BIN unless BIN already names one.
ensure_bin() {
  if [ -z "${BIN:-}" ]; then
    echo "building cairn (release) ..."
    cargo build --release -q
    BIN=$PWD/target/release/cairn
  fi
}

# Loads RECORDS records of VALUE_SIZE bytes into `cairn bench`'s table of PARTITIONS
# partitions on the cluster at EP.
load_records() {
  echo "loading $RECORDS records ..."
  "$BIN" --endpoints "$EP" bench --workload load --clients 64 --records "$RECORDS" \
    --value-size "$VALUE_SIZE" --ops 100000000 --duration 3600 --partitions "$PARTITIONS" >/dev/null 2>&1
}

# shellcheck source=bench/threads.inc.sh
. bench/threads.inc.sh

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The data dirs go under TMPDIR: a disk, not tmpfs, or fsync costs nothing.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cairn-bench.XXXXXX")
PIDS=()
cleanup_cluster() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup_cluster EXIT

# CPU time (clock ticks, user + system) the three nodes have used so far, summed.
cpu_ticks() {
  local t=0
  for p in "${PIDS[@]}"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  echo "$t"
}

start_cluster() {
  local logs=$1
  shift
  declare -ga GRPC HTTP
  CLUSTER=""
  local i
  for i in 1 2 3; do GRPC[i]=127.0.0.1:$(free_port); HTTP[i]=127.0.0.1:$(free_port); done
  for i in 1 2 3; do CLUSTER="$CLUSTER${CLUSTER:+,}$i=${GRPC[i]}"; done
  EP="${GRPC[1]},${GRPC[2]},${GRPC[3]}"
  for i in 1 2 3; do
    "$BIN" server --id "$i" --data-dir "$WORK/n$i" --listen "${GRPC[i]}" --http "${HTTP[i]}" \
      --initial-cluster "$CLUSTER" "$@" >"$logs/node-$i.log" 2>&1 &
    PIDS[i]=$!
  done
  echo "waiting for the cluster ..."
  for _ in $(seq 1 120); do
    [ "$("$BIN" --endpoints "$EP" admin nodes 2>/dev/null | grep -c ' yes ')" = 3 ] && return 0
    sleep 0.5
  done
  echo "error: the cluster did not come up; logs in $logs" >&2
  exit 1
}
