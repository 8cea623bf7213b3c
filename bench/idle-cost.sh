#!/usr/bin/env bash
# What an idle cluster costs: starts 3 release `cairn server` processes on loopback, creates
# one table of PARTITIONS partitions × 3 replicas, waits until every partition has a leader
# and SETTLE seconds more, then reports the CPU the three processes use over MEASURE seconds
# with no traffic, as a fraction of one core (user + system, from /proc/<pid>/stat).
#
#   bench/idle-cost.sh                        # 1,000 partitions
#   PARTITIONS=300 MEASURE=30 bench/idle-cost.sh
#   CAIRN_FLAGS="--quiesce false" bench/idle-cost.sh  # with openraft's per-group timers
#   BIN=/path/to/other/cairn bench/idle-cost.sh   # the same for another build
set -euo pipefail
cd "$(dirname "$0")/.."

PARTITIONS=${PARTITIONS:-1000}
SETTLE=${SETTLE:-10}
MEASURE=${MEASURE:-20}
CAIRN_FLAGS=${CAIRN_FLAGS:-}   # e.g. "--quiesce false"

command -v python3 >/dev/null || { echo "error: needs python3 (apt-get install python3)" >&2; exit 1; }

LOGS=$(mktemp -d)
# shellcheck source=bench/cluster.sh
. bench/cluster.sh
ensure_bin
trap 'cleanup_cluster; rm -rf "$LOGS"' EXIT
# shellcheck disable=SC2086 # CAIRN_FLAGS is a list of flags
start_cluster "$LOGS" $CAIRN_FLAGS
SPLITS=$(python3 -c "print(','.join('k%06d' % (i * 1000000 // $PARTITIONS) for i in range(1, $PARTITIONS)))")
echo "creating a table of $PARTITIONS partitions ..."
if ! "$BIN" --endpoints "$EP" table create idle --split "$SPLITS" >/dev/null; then
  keep=target/bench/idle-failed-$(date -u +%Y%m%dT%H%M%SZ)
  mkdir -p "$keep" && cp "$LOGS"/node-*.log "$keep"/
  echo "the table was not created; node logs kept in $keep" >&2
  exit 1
fi
leaders() { local t=0 n; for i in 1 2 3; do
  n=$(curl -s "http://${HTTP[$i]}/metrics" | awk '/^cairn_leaders\{/ {print $2}'); t=$((t + ${n:-0})); done; echo $t; }
for _ in $(seq 1 300); do
  total=$(leaders)
  [ "$total" -ge "$PARTITIONS" ] && break
  sleep 1
done
echo "leaders: $total of $PARTITIONS partitions; settling ${SETTLE} s ..."
sleep "$SETTLE"

# Campaigns in the window show whether leadership was still moving while it was measured.
campaigns() { local c=0; for i in 1 2 3; do c=$((c + $(curl -s "http://${HTTP[$i]}/metrics" | awk '/^cairn_raft_campaigns_total/ {print $2}'))); done; echo $c; }
c_before=$(campaigns)
before=$(cpu_ticks); sleep "$MEASURE"; after=$(cpu_ticks)
echo "campaigns during the window: $(( $(campaigns) - c_before ))"
python3 - "$before" "$after" "$MEASURE" "$(getconf CLK_TCK)" "$PARTITIONS" <<'PY'
import sys
b, a, secs, tck, parts = map(int, sys.argv[1:])
cores = (a - b) / tck / secs
print(f"idle: {parts} partitions x 3 replicas on 3 nodes use {cores:.3f} cores "
      f"({cores * 100:.1f}% of one core) over {secs} s")
PY
for i in 1 2 3; do
  curl -s "http://${HTTP[$i]}/metrics" 2>/dev/null | grep -E '^cairn_(leaders|raft_groups_ticking|raft_campaigns_total|peers_down)' | tr '\n' ' '; echo
done
