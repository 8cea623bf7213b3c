#!/usr/bin/env bash
# Where a Cairn workload spends its CPU: starts a 3-node cluster on loopback, loads it, runs
# one `cairn bench` workload while `perf record` samples the three servers and the load
# generator, and prints the hottest symbols and the split by thread and by library.
#
#   bench/profile.sh                                  # write, 64 clients, 10 s
#   WORKLOAD=c CLIENTS=64 DURATION=10 bench/profile.sh
#   CAIRN_FLAGS="--controller off" bench/profile.sh
#   CALLGRAPH=dwarf FREQ=99 bench/profile.sh       # inclusive time per function
#   PARTITIONS=1 CAIRN_FLAGS="--controller off" bench/profile.sh   # one Raft group
#   EXTRA="--rate 2000" bench/profile.sh             # open loop: at 2,000 ops/s, below saturation
#
# Installs linux-perf, protobuf-compiler and python3 from Debian's packages when missing (needs root). The raw
# profile and the reports go to target/bench/profile-<timestamp>/.
set -euo pipefail
cd "$(dirname "$0")/.."

WORKLOAD=${WORKLOAD:-write}
CLIENTS=${CLIENTS:-64}
DURATION=${DURATION:-10}
RECORDS=${RECORDS:-10000}
VALUE_SIZE=${VALUE_SIZE:-256}
FREQ=${FREQ:-499}
# fp (frame pointers; cheap, but Rust frames without them show no callers) or dwarf
# (callers of everything; large files, so use a lower FREQ).
CALLGRAPH=${CALLGRAPH:-fp}
CAIRN_FLAGS=${CAIRN_FLAGS:-}
EXTRA=${EXTRA:-}   # more `cairn bench` flags for the profiled run, e.g. "--rate 2000"
# shellcheck source=bench/threads.inc.sh
. bench/threads.inc.sh
PARTITIONS=${PARTITIONS:-3}   # of the table; with 1, add --controller off or a high --split-qps

missing=()
command -v perf >/dev/null || missing+=(linux-perf)
command -v python3 >/dev/null || missing+=(python3)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "error: missing ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root" >&2
    exit 1
  fi
  echo "installing ${missing[*]} ..."
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi

echo "building cairn (release) ..."
# The same features as bench/compare-etcd.sh, so the two share one build.
cargo build --release --features etcd -q
BIN=$PWD/target/release/cairn
OUT=$PWD/target/bench/profile-$(date -u +%Y%m%dT%H%M%SZ)
WORK=$(mktemp -d)
mkdir -p "$OUT"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

CLUSTER=""
declare -a G H
for i in 1 2 3; do G[$i]=$(free_port); H[$i]=$(free_port); done
for i in 1 2 3; do CLUSTER+="${CLUSTER:+,}$i=127.0.0.1:${G[$i]}"; done
EP=$(echo "$CLUSTER" | sed 's/[0-9]*=//g')
for i in 1 2 3; do
  # shellcheck disable=SC2086 # CAIRN_FLAGS is a list of flags
  "$BIN" server --id "$i" --data-dir "$WORK/c$i" --listen "127.0.0.1:${G[$i]}" \
    --http "127.0.0.1:${H[$i]}" --initial-cluster "$CLUSTER" $CAIRN_FLAGS >"$OUT/cairn-$i.log" 2>&1 &
  PIDS+=($!)
done
SERVERS="${PIDS[*]}"

echo "waiting for the cluster ..."
up=0
for _ in $(seq 1 120); do
  [ "$("$BIN" --endpoints "$EP" admin nodes 2>/dev/null | grep -c ' yes ')" = 3 ] && { up=1; break; }
  sleep 0.5
done
[ $up = 1 ] || { echo "error: the cluster did not come up; logs in $OUT" >&2; exit 1; }

echo "loading $RECORDS records ..."
"$BIN" --endpoints "$EP" bench --workload load --clients 64 --records "$RECORDS" \
  --value-size "$VALUE_SIZE" --ops 100000000 --partitions "$PARTITIONS" >"$OUT/load.txt" 2>/dev/null

echo "profiling workload $WORKLOAD, $CLIENTS clients, $DURATION s $EXTRA ..."
# shellcheck disable=SC2086 # EXTRA is a list of flags
"$BIN" --endpoints "$EP" bench --workload "$WORKLOAD" --clients "$CLIENTS" --records "$RECORDS" \
  --value-size "$VALUE_SIZE" --duration "$DURATION" --ops 100000000 --no-load \
  --partitions "$PARTITIONS" $EXTRA >"$OUT/bench.txt" 2>/dev/null &
GEN=$!
PIDS+=($GEN)
# Skip the first second (connections, leader discovery) and stop a second before the end.
sleep 1
perf record -q -F "$FREQ" --call-graph "$CALLGRAPH" -o "$OUT/perf.data" -p "$(echo "$SERVERS $GEN" | tr ' ' ,)" \
  -- sleep $((DURATION - 2)) 2>"$OUT/perf-record.log" || true
wait "$GEN" || true
cat "$OUT/bench.txt"

perf report -i "$OUT/perf.data" --no-children --sort symbol --stdio 2>/dev/null \
  | grep -v '^#' | grep -v '^$' | grep '%' | head -40 >"$OUT/symbols.txt" || true
perf report -i "$OUT/perf.data" --no-children --sort comm --stdio 2>/dev/null \
  | grep -v '^#' | grep '%' | head -20 >"$OUT/threads.txt" || true
perf report -i "$OUT/perf.data" --no-children --sort dso --stdio 2>/dev/null \
  | grep -v '^#' | grep '%' | head -12 >"$OUT/libraries.txt" || true
echo "== by library";  cat "$OUT/libraries.txt"
echo "== by thread";   cat "$OUT/threads.txt"
echo "== hottest symbols (self time)"; head -30 "$OUT/symbols.txt"
echo "full profile: perf report -i $OUT/perf.data"
