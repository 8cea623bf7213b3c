#!/usr/bin/env bash
# Moves one large partition to a new node by streamed snapshot and reports how fast, and how
# much the sending and receiving nodes' memory grew meanwhile.
#
#   bench/move-large.sh                 # a 256 MiB partition (65,536 values of 4 KiB)
#   MIB=64 bench/move-large.sh          # a smaller one
#
# Starts 4 release `cairn server` processes on loopback (free ports, temp data dirs), loads
# one single-partition table through 3 of them (its log is purged by snapshots as it
# grows), then moves the replica of a follower to the fourth node. Memory is the peak
# resident size (VmHWM) of each process during the move, against its resident size before.
set -euo pipefail
cd "$(dirname "$0")/.."

MIB=${MIB:-256}
VALUE=4096
RECORDS=$((MIB * 1024 * 1024 / VALUE))

command -v python3 >/dev/null || { echo "error: needs python3 (apt-get install python3)" >&2; exit 1; }
command -v curl >/dev/null || { echo "error: needs curl (apt-get install curl)" >&2; exit 1; }
echo "building cairn (release) ..."
cargo build --release -q
BIN=$PWD/target/release/cairn

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

declare -a GRPC HTTP
CLUSTER=""
for i in 1 2 3 4; do
  GRPC[$i]=127.0.0.1:$(free_port); HTTP[$i]=127.0.0.1:$(free_port)
done
for i in 1 2 3; do CLUSTER="$CLUSTER${CLUSTER:+,}$i=${GRPC[$i]}"; done
start() {
  local i=$1; shift
  # The controller stays off: it would start filling node 4 on its own.
  "$BIN" server --id "$i" --data-dir "$WORK/n$i" --listen "${GRPC[$i]}" --http "${HTTP[$i]}" --controller off "$@" \
    >"$WORK/n$i.log" 2>&1 &
  PIDS[$i]=$!
}
for i in 1 2 3; do start "$i" --initial-cluster "$CLUSTER"; done
sleep 2
start 4 --join "${GRPC[1]}"
EP="${GRPC[1]},${GRPC[2]},${GRPC[3]}"
for _ in $(seq 1 60); do
  live=$("$BIN" --endpoints "$EP" admin nodes 2>/dev/null | grep -c ' yes ' || true)
  [ "$live" -ge 4 ] && break
  sleep 1
done

# A small table with replicas on every node first, so the receiver is a node like any
# other (its first Raft group pays openraft's one-time tables, about 27 MiB) before the move.
"$BIN" --endpoints "$EP" table create warm --split g,n,t >/dev/null
echo "loading $MIB MiB ($RECORDS values of $VALUE bytes) into one partition ..."
"$BIN" --endpoints "$EP" bench --workload load --table big --partitions 1 \
  --records "$RECORDS" --value-size "$VALUE" --clients 32 --duration 900 | tail -3
sleep 3
desc=$("$BIN" --endpoints "$EP" table describe big | awk 'NR==3')
part=$(echo "$desc" | awk '{print $1}')
replicas=$(echo "$desc" | awk '{print $(NF-1)}')
leader=$(echo "$desc" | awk '{print $NF}')
from=$(echo "$replicas" | tr ',' '\n' | grep -v "^$leader$" | head -1)
echo "partition $part on nodes $replicas (leader $leader); moving node $from's replica to node 4"

rss() { awk '/VmRSS/ {print int($2/1024)}' "/proc/${PIDS[$1]}/status"; }
hwm() { awk '/VmHWM/ {print int($2/1024)}' "/proc/${PIDS[$1]}/status"; }
# Peak resident size is reset by writing 5 to clear_refs (Linux), so VmHWM covers the move.
for i in 1 2 3 4; do echo 5 > "/proc/${PIDS[$i]}/clear_refs" 2>/dev/null || true; done
before_leader=$(rss "$leader"); before_target=$(rss 4)
echo "at rest holding $MIB MiB: nodes 1-3 resident $(rss 1), $(rss 2), $(rss 3) MiB"
t0=$(date +%s.%N)
"$BIN" --endpoints "$EP" admin move "$part" "$from" 4
t1=$(date +%s.%N)
secs=$(python3 -c "print(round($t1 - $t0, 2))")
peak_leader=$(hwm "$leader"); peak_target=$(hwm 4)
echo
echo "moved $MIB MiB in $secs s: $(python3 -c "print(round($MIB / ($t1 - $t0), 1))") MiB/s"
echo "sender   (node $leader): resident $before_leader MiB before, peak $peak_leader MiB during (+$((peak_leader - before_leader)) MiB)"
echo "receiver (node 4): resident $before_target MiB before, peak $peak_target MiB during (+$((peak_target - before_target)) MiB)"
# Nodes hand freed memory back every 10 s; after that, resident size is the live heap.
sleep 12
echo "12 s later: sender resident $(rss "$leader") MiB, receiver $(rss 4) MiB"
"$BIN" --endpoints "$EP" table describe big
