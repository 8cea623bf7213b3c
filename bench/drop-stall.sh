#!/usr/bin/env bash
# What deleting a large replica costs the rest of its node: starts 3 release `cairn server`
# processes on loopback (controller off, so the table stays one partition), loads RECORDS
# records of 256 bytes into table `big`, then drops it while 2 clients write to another
# table, and reports the longest time the other table went without an acknowledged write,
# its max and p99 latency, and how long the nodes took to delete their replicas. RUNS fresh
# clusters, one after another.
#
#   bench/drop-stall.sh                       # 3 runs, 300,000 records (about 85 MiB)
#   RUNS=1 RECORDS=100000 bench/drop-stall.sh
#   BIN=/path/to/other/cairn bench/drop-stall.sh
#
# The report goes to target/bench/drop-stall-<timestamp>/report.txt, with each run's logs.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
RECORDS=${RECORDS:-300000}
OUT=$PWD/target/bench/drop-stall-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
ensure() { [ -n "${BIN:-}" ] || { cargo build --release -q -p cairn-cli; BIN=$PWD/target/release/cairn; }; }
ensure

for run in $(seq 1 "$RUNS"); do
  (
    LOGS=$OUT/run-$run
    mkdir -p "$LOGS"
    # shellcheck source=bench/cluster.sh
    . bench/cluster.sh
    start_cluster "$LOGS" --controller off
    "$BIN" --endpoints "$EP" bench --workload load --clients 64 --records "$RECORDS" \
      --value-size 256 --ops 100000000 --duration 600 --partitions 1 --table big >"$LOGS/load.out" 2>&1
    "$BIN" --endpoints "$EP" table create other >/dev/null
    "$BIN" --endpoints "$EP" bench --workload write --clients 2 --records 100 --value-size 16 \
      --duration 12 --table other --json "$LOGS/probe.json" >"$LOGS/probe.out" 2>&1 &
    probe=$!
    sleep 4
    dropped=$(date +%s.%N)
    "$BIN" --endpoints "$EP" table drop big >/dev/null
    wait "$probe"
    python3 - "$LOGS" "$dropped" "$run" <<'PY'
import json, re, sys, datetime
logs, dropped, run = sys.argv[1], float(sys.argv[2]), sys.argv[3]
out = open(f"{logs}/probe.out").read()
gap = re.search(r"longest time without an acknowledged operation: (\d+) ms", out).group(1)
row = re.search(r"^update\s+(.*)$", out, re.M).group(1).split()
done = []
for n in (1, 2, 3):
    for line in open(f"{logs}/node-{n}.log"):
        if "destroyed replica" in line and "keys=" in line:
            t = datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
            keys = line.rsplit("keys=", 1)[1].strip()
            done.append(f"node {n} {t - dropped:.1f} s ({keys} keys)")
print(f"run {run}: other table: longest gap {gap} ms, p99 {row[4]} ms, max {row[6]} ms; deleted: {', '.join(done)}")
PY
  ) | tee -a "$OUT/report.txt"
done
echo "report: $OUT/report.txt"
