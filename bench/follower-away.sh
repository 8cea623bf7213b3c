#!/usr/bin/env bash
# Does a follower away for a few seconds catch up from its leader's log or by a snapshot?
# One partition of RECORDS records of 256 B on a fresh 3-node cluster is written by 64
# clients for DURATION seconds; in the middle its follower is paused (SIGSTOP) for PAUSE
# seconds. The leader holds its log for the follower up to twice --snapshot-log-bytes and
# no more than the partition's measured size, so a large partition is caught up from the
# log and a small one by a snapshot of it (docs/benchmarks.md, twenty-second run).
#
# Prints the partition's size, the leader's holds (`cairn_raft_log_holds_total`) and the
# snapshot bytes the follower received during the write run, each node's log entries after
# it, and the write rate.
#
#   bench/follower-away.sh
#   RECORDS=200000 PAUSE=10 bench/follower-away.sh
#
# The servers' logs and the bench output go to target/bench/away-<timestamp>/.
set -euo pipefail
cd "$(dirname "$0")/.."

RECORDS=${RECORDS:-10000}
PAUSE=${PAUSE:-5}
DURATION=${DURATION:-$((PAUSE + 6))}
CLIENTS=${CLIENTS:-64}
VALUE_SIZE=256
PARTITIONS=1
[ "$DURATION" -gt "$PAUSE" ] || { echo "error: DURATION ($DURATION) must exceed PAUSE ($PAUSE)" >&2; exit 1; }

command -v curl >/dev/null || { echo "error: needs curl (apt-get install curl)" >&2; exit 1; }
OUT=$PWD/target/bench/away-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"

# shellcheck source=bench/cluster.sh
. bench/cluster.sh
ensure_bin
# The load split is off so the table stays one partition.
start_cluster "$OUT" --split-qps 1000000
load_records

# The node leading the partition: the one that reports leading a partition group.
leader=
for _ in $(seq 1 50); do
  for i in 1 2 3; do
    n=$(curl -s "http://${HTTP[i]}/metrics" | awk '/^cairn_leaders\{/ {print $2}' || true)
    [ "${n:-0}" -ge 1 ] 2>/dev/null && leader=$i && break
  done
  [ -n "$leader" ] && break
  sleep 0.2
done
[ -n "$leader" ] || { echo "error: no partition leader found" >&2; exit 1; }
follower=$((leader % 3 + 1))
echo "leader node $leader, follower node $follower; $RECORDS records; paused ${PAUSE}s of ${DURATION}s"

# A counter of node $1 summed over its series (0 if absent).
metric() { curl -s "http://${HTTP[$1]}/metrics" | awk -v m="$2" '$1 ~ "^"m"({|$)" {s += $2} END {print s + 0}' || true; }
holds=$(metric "$leader" cairn_raft_log_holds_total)
received=$(metric "$follower" cairn_snapshot_received_bytes_total)

"$BIN" --endpoints "$EP" bench --workload write --clients "$CLIENTS" --records "$RECORDS" \
  --value-size "$VALUE_SIZE" --duration "$DURATION" --ops 100000000 --no-load \
  --partitions 1 >"$OUT/bench.txt" 2>&1 &
bench=$!
sleep $(((DURATION - PAUSE) / 2))
kill -STOP "${PIDS[follower]}"
sleep "$PAUSE"
kill -CONT "${PIDS[follower]}"
wait "$bench"
# Time for the follower to catch up and the leader to purge what it held.
sleep 3

echo "partition size on the leader: $(metric "$leader" cairn_partition_size_bytes) bytes"
echo "leader's holds in the run: $(($(metric "$leader" cairn_raft_log_holds_total) - holds))"
echo "snapshot bytes the follower received in the run: $(($(metric "$follower" cairn_snapshot_received_bytes_total) - received))"
for i in 1 2 3; do echo "node $i log entries: $(metric "$i" cairn_raft_log_entries)"; done
grep -E '^update|^errors' "$OUT/bench.txt"
echo "results: $OUT"
