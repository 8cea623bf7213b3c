#!/usr/bin/env bash
# What three Raft groups gain when one node drives all their rounds: the same 3-partition
# table written by 64 clients, once with its leaders where placement put them (one per
# node) and once with all three moved to node 1 (`cairn admin transfer-leader`). Packed, a
# client batch to node 1 carries writes of all three groups, node 1 proposes them together,
# and their appends reach each follower together on the one stream between the two nodes,
# so they share fsyncs and messages. This is an experiment, not a recommended layout: on
# separate machines packing puts all the leader work on one of them, which leader balancing
# exists to prevent. The controller is off in both layouts so that nothing moves leaders.
#
# Runs PAIRS pairs of fresh clusters (spread, then packed), RUNS write runs of DURATION
# seconds each, and prints per run: writes/s, p99 ms, the servers' CPU per write (user +
# system, /proc/<pid>/stat), fsyncs per write and log appends per fsync (from /metrics).
#
#   bench/packed-leaders.sh
#   PAIRS=4 CLIENTS=256 bench/packed-leaders.sh
#
# The report goes to target/bench/packed-<timestamp>/report.txt, with the servers' logs.
set -euo pipefail
cd "$(dirname "$0")/.."

PAIRS=${PAIRS:-2}
RUNS=${RUNS:-3}
DURATION=${DURATION:-8}
CLIENTS=${CLIENTS:-64}
RECORDS=${RECORDS:-10000}
VALUE_SIZE=${VALUE_SIZE:-256}
PARTITIONS=3

command -v python3 >/dev/null || { echo "error: needs python3 (apt-get install python3)" >&2; exit 1; }
command -v curl >/dev/null || { echo "error: needs curl (apt-get install curl)" >&2; exit 1; }
OUT=$PWD/target/bench/packed-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"

# shellcheck source=bench/cluster.sh
. bench/cluster.sh
ensure_bin
ticks=$(getconf CLK_TCK)

# Log appends made durable and fsyncs, summed over the three nodes.
fsyncs() {
  local i
  for i in 1 2 3; do curl -s "http://${HTTP[i]}/metrics"; done |
    awk '/^cairn_fsync_batch_writes_sum/ {s += $2} /^cairn_fsync_batch_writes_count/ {c += $2} END {print s + 0, c + 0}'
}

# One layout on a fresh cluster: MODE is spread or packed.
measure() {
  local mode=$1 pair=$2 dir="$OUT/$1-$2" r
  mkdir -p "$dir"
  # Called in a pipeline, so in a subshell: a cluster of its own, stopped when it exits.
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/cairn-bench.XXXXXX")
  PIDS=()
  trap cleanup_cluster EXIT
  start_cluster "$dir" --controller off >&2
  load_records >&2
  if [ "$mode" = packed ]; then
    for p in $(seq 1 "$PARTITIONS"); do
      "$BIN" --endpoints "$EP" admin transfer-leader "$p" 1 >/dev/null ||
        { echo "error: cannot move partition $p's leader to node 1; logs in $dir" >&2; exit 1; }
    done
  fi
  for r in $(seq 1 "$RUNS"); do
    local c0 c1 s0 n0 s1 n1 line
    c0=$(cpu_ticks)
    read -r s0 n0 < <(fsyncs)
    line=$("$BIN" --endpoints "$EP" bench --workload write --clients "$CLIENTS" --records "$RECORDS" \
      --value-size "$VALUE_SIZE" --duration "$DURATION" --ops 100000000 --no-load \
      --partitions "$PARTITIONS" 2>/dev/null | grep '^update' || true)
    c1=$(cpu_ticks)
    read -r s1 n1 < <(fsyncs)
    [ -n "$line" ] || { echo "error: $mode run $r printed no result; logs in $dir" >&2; exit 1; }
    python3 - "$mode" "$pair" "$r" "$line" "$c0" "$c1" "$ticks" "$s0" "$n0" "$s1" "$n1" <<'PY'
import sys
mode, pair, run, line = sys.argv[1:5]
c0, c1, ticks, s0, n0, s1, n1 = map(float, sys.argv[5:])
f = line.split()
ops, rate, p99 = float(f[1]), float(f[2]), float(f[5])
print(f"{mode:7s} {pair:>4s} {run:>3s} {rate:9.0f} {p99:7.2f} {(c1 - c0) / ticks * 1e6 / ops:9.1f} "
      f"{(n1 - n0) / ops:9.3f} {(s1 - s0) / max(1.0, n1 - n0):9.2f}")
PY
  done
}

{
  echo "$CLIENTS-client writes, $PARTITIONS partitions, $RUNS runs of $DURATION s per cluster ($BIN)"
  printf '%-7s %4s %3s %9s %7s %9s %9s %9s\n' layout pair run "writes/s" "p99 ms" "µs/write" "fsync/w" "app/fsync"
} | tee "$OUT/report.txt"
for pair in $(seq 1 "$PAIRS"); do
  measure spread "$pair" | tee -a "$OUT/report.txt"
  measure packed "$pair" | tee -a "$OUT/report.txt"
done
echo "report: $OUT/report.txt"
