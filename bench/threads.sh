#!/usr/bin/env bash
# Where the servers' CPU goes by thread: starts 3 release `cairn server` processes on
# loopback, loads RECORDS records into a table of PARTITIONS partitions, runs one `cairn
# bench` WORKLOAD for DURATION seconds, and prints each thread name's share of the three
# servers' CPU (user + system, /proc/<pid>/task/<tid>/stat) and each thread's CPU. With
# PERF_THREADS set to a thread name (for example `fjall:worker`), `perf record -t` samples
# those threads for the middle of the run and prints each one's hottest symbols.
#
#   bench/threads.sh                              # writes, 64 clients, 20 s
#   PERF_THREADS=fjall:worker bench/threads.sh
#   BIN=/path/to/other/cairn WORKLOAD=c bench/threads.sh
#
# Output goes to target/bench/threads-<timestamp>/, with the servers' logs.
set -euo pipefail
cd "$(dirname "$0")/.."

WORKLOAD=${WORKLOAD:-write}
CLIENTS=${CLIENTS:-64}
DURATION=${DURATION:-20}
RECORDS=${RECORDS:-10000}
VALUE_SIZE=${VALUE_SIZE:-256}
PARTITIONS=${PARTITIONS:-3}
CAIRN_FLAGS=${CAIRN_FLAGS:---controller off}
PERF_THREADS=${PERF_THREADS:-}

command -v python3 >/dev/null || { echo "error: needs python3 (apt-get install python3)" >&2; exit 1; }
if [ -n "$PERF_THREADS" ] && ! command -v perf >/dev/null; then
  echo "error: PERF_THREADS needs perf (apt-get install linux-perf)" >&2
  exit 1
fi
OUT=$PWD/target/bench/threads-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"

# shellcheck source=bench/cluster.sh
. bench/cluster.sh
ensure_bin
# shellcheck disable=SC2086 # CAIRN_FLAGS is a list of flags
start_cluster "$OUT" $CAIRN_FLAGS

load_records

# One line per thread: node, thread name, tid, CPU ticks so far.
threads() {
  local i t
  for i in 1 2 3; do
    for t in /proc/"${PIDS[i]}"/task/*; do
      echo "$i $(tr ' ' _ <"$t/comm") ${t##*/} $(awk '{print $14 + $15}' "$t/stat")"
    done
  done
}

threads >"$OUT/before"
perf_pid=""
if [ -n "$PERF_THREADS" ]; then
  # The middle of the run: a quarter in, for half of it.
  (
    sleep $((DURATION / 4))
    tids=$(threads | awk -v n="$PERF_THREADS" '$2 == n {print $3}' | paste -sd,)
    [ -n "$tids" ] && perf record -q -F 999 -t "$tids" -o "$OUT/perf.data" -- sleep $((DURATION / 2)) \
      >"$OUT/perf.log" 2>&1
  ) &
  perf_pid=$!
fi
"$BIN" --endpoints "$EP" bench --workload "$WORKLOAD" --clients "$CLIENTS" --records "$RECORDS" \
  --value-size "$VALUE_SIZE" --duration "$DURATION" --ops 100000000 --no-load \
  --partitions "$PARTITIONS" 2>/dev/null | grep -E '^(read|update|scan)' | tee "$OUT/bench.txt"
threads >"$OUT/after"
[ -n "$perf_pid" ] && wait "$perf_pid"

python3 - "$OUT/before" "$OUT/after" "$(getconf CLK_TCK)" <<'PY' | tee "$OUT/report.txt"
import collections, sys
def read(path):
    return {tuple(l.split()[:3]): int(l.split()[3]) for l in open(path)}
before, after, tck = read(sys.argv[1]), read(sys.argv[2]), int(sys.argv[3])
used = {k: v - before.get(k, 0) for k, v in after.items()}
total = sum(used.values()) or 1
by_name = collections.Counter()
for (node, name, tid), t in used.items():
    by_name[name] += t
print(f"servers' CPU: {total / tck:.2f} s")
for name, t in by_name.most_common():
    if t:
        print(f"  {name:<20} {100 * t / total:5.1f}%")
print("threads (node, name, tid: CPU s):")
for (node, name, tid), t in sorted(used.items()):
    if t:
        print(f"  {node} {name:<20} {tid:>8} {t / tck:6.2f}")
PY

if [ -s "$OUT/perf.data" ]; then
  echo "hottest symbols per sampled thread (share of that thread's samples):"
  perf script -i "$OUT/perf.data" -F tid,ip,sym 2>/dev/null | python3 -c '
import collections, sys
per = collections.defaultdict(collections.Counter)
for line in sys.stdin:
    parts = line.split(None, 2)  # tid, address, symbol
    if len(parts) == 3:
        per[parts[0]][parts[2].strip()] += 1
for tid, c in sorted(per.items()):
    n = sum(c.values())
    top = ", ".join(f"{s[:60]} {100 * k / n:.0f}%" for s, k in c.most_common(3))
    print(f"  {tid} ({n} samples): {top}")
' | tee -a "$OUT/report.txt"
fi
echo "report: $OUT/report.txt"
