#!/usr/bin/env bash
# What sustained writes do to one cluster over minutes: starts 3 release `cairn server`
# processes on loopback, loads RECORDS records into a table of PARTITIONS partitions, then
# runs RUNS write workloads of DURATION seconds back to back on the same cluster and reports,
# after each: ops/s, p99, the three servers' CPU per write (user + system, /proc/<pid>/stat),
# node 1's data dir size (MiB) and journal count, and the servers' resident memory. The controller
# splits nothing for load (--split-qps 1000000) so that the layout stays the same.
#
#   bench/sustained.sh                          # 10 runs of 30 s, 64 clients
#   RUNS=20 DURATION=8 bench/sustained.sh
#   BIN=/path/to/other/cairn bench/sustained.sh # the same for another build
#
# The report goes to target/bench/sustained-<timestamp>/report.txt, with the servers' logs.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-10}
DURATION=${DURATION:-30}
CLIENTS=${CLIENTS:-64}
RECORDS=${RECORDS:-10000}
VALUE_SIZE=${VALUE_SIZE:-256}
PARTITIONS=${PARTITIONS:-3}
CAIRN_FLAGS=${CAIRN_FLAGS:---split-qps 1000000}

command -v python3 >/dev/null || { echo "error: needs python3 (apt-get install python3)" >&2; exit 1; }
OUT=$PWD/target/bench/sustained-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"

# shellcheck source=bench/cluster.sh
. bench/cluster.sh
ensure_bin
# shellcheck disable=SC2086 # CAIRN_FLAGS is a list of flags
start_cluster "$OUT" $CAIRN_FLAGS

load_records

ticks=$(getconf CLK_TCK)
rss_mb() {
  for p in "${PIDS[@]}"; do awk '/VmRSS/ {printf "%d ", $2 / 1024}' "/proc/$p/status"; done
}

{
  echo "$RUNS write runs of $DURATION s, $CLIENTS clients, $PARTITIONS partitions, one cluster ($BIN $CAIRN_FLAGS)"
  printf '%4s %9s %8s %12s %9s %9s %s\n' run "ops/s" "p99 ms" "server µs/op" "dir MiB" journals "rss MiB (3 nodes)"
} | tee "$OUT/report.txt"
for r in $(seq 1 "$RUNS"); do
  c0=$(cpu_ticks)
  line=$("$BIN" --endpoints "$EP" bench --workload write --clients "$CLIENTS" --records "$RECORDS" \
    --value-size "$VALUE_SIZE" --duration "$DURATION" --ops 100000000 --no-load \
    --partitions "$PARTITIONS" 2>/dev/null | grep '^update' || true)
  c1=$(cpu_ticks)
  [ -n "$line" ] || { echo "error: run $r printed no result; logs in $OUT" >&2; exit 1; }
  n=$(echo "$line" | awk '{print $2}')
  us=$(python3 -c "print(f'{($c1 - $c0) / $ticks * 1e6 / $n:.1f}')")
  dir=$(du -sm "$WORK/n1" | cut -f1)
  journals=$(find "$WORK/n1" -maxdepth 1 -name '*.jnl' | wc -l)
  printf '%4s %9s %8s %12s %9s %9s %s\n' "$r" "$(echo "$line" | awk '{print $3}')" \
    "$(echo "$line" | awk '{print $6}')" "$us" "$dir" "$journals" "$(rss_mb)" | tee -a "$OUT/report.txt"
done
grep -h 'compacted the Raft logs' "$OUT"/node-*.log | sed 's/^/  /' | tee -a "$OUT/report.txt" || true
echo "report: $OUT/report.txt"
