#!/usr/bin/env bash
# Two builds of cairn, back to back: for each pair of runs, a fresh 3-node cluster on
# loopback per build (the order alternates), loaded with RECORDS records, then one
# `cairn bench` workload. Prints ops/s and the three servers' CPU (user+system) per
# operation of every run and the median of each build. The load generator is the build's
# own binary.
#
#   cp target/release/cairn /tmp/cairn-before; <change>; cargo build --release
#   bench/ab.sh /tmp/cairn-before target/release/cairn
#   WORKLOAD=c CLIENTS=64 PAIRS=3 DURATION=8 CAIRN_FLAGS="--controller off" bench/ab.sh A B
#   FLAGS_A="--controller off" FLAGS_B="--controller on" bench/ab.sh B B   # one build, two settings
#
# The controller is off by default (CAIRN_FLAGS) so that no split changes the layout mid-run.
set -euo pipefail
cd "$(dirname "$0")/.."

[ $# = 2 ] || { echo "usage: bench/ab.sh BINARY_A BINARY_B" >&2; exit 2; }
A=$(realpath "$1")
B=$(realpath "$2")
WORKLOAD=${WORKLOAD:-write}
CLIENTS=${CLIENTS:-64}
DURATION=${DURATION:-8}
PAIRS=${PAIRS:-3}
RECORDS=${RECORDS:-10000}
VALUE_SIZE=${VALUE_SIZE:-256}
CAIRN_FLAGS=${CAIRN_FLAGS:---controller off}
FLAGS_A=${FLAGS_A:-$CAIRN_FLAGS}   # server flags of A's runs and of B's
FLAGS_B=${FLAGS_B:-$CAIRN_FLAGS}
BENCH_A=${BENCH_A:-}   # more `cairn bench` flags of A's runs and of B's, e.g. "--partitions 1"
BENCH_B=${BENCH_B:-}
# shellcheck source=bench/threads.inc.sh
. bench/threads.inc.sh
command -v python3 >/dev/null || { echo "error: needs python3 (apt-get install python3)" >&2; exit 1; }
command -v curl >/dev/null || { echo "error: needs curl (apt-get install curl)" >&2; exit 1; }

OUT=$PWD/target/bench/ab-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
PIDS=()
WORK=""
stop_cluster() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
  [ -n "$WORK" ] && rm -rf "$WORK"
  WORK=""
}
trap stop_cluster EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# CPU seconds (user+system) of the given processes.
cpu() { for p in "$@"; do awk '{print $14+$15}' "/proc/$p/stat"; done | awk -v hz="$(getconf CLK_TCK)" '{s+=$1} END {printf "%.3f", s/hz}'; }

# The sums over the three nodes of the named series (labelled by node only), from /metrics.
# Called from run(), whose H holds the nodes' HTTP ports.
metric_sums() {
  local port
  for port in "${H[@]}"; do curl -s "http://127.0.0.1:$port/metrics"; done |
    awk -v names="$*" 'BEGIN { n = split(names, want, " ") }
      { name = $1; sub(/\{.*/, "", name); for (i = 1; i <= n; i++) if (name == want[i]) s[i] += $2 }
      END { for (i = 1; i <= n; i++) printf "%s ", s[i] + 0 }'
}
SIZES=(cairn_proposal_writes_sum cairn_proposal_writes_count cairn_batch_operations_sum cairn_batch_operations_count
  cairn_fsync_batch_writes_count cairn_raft_heartbeats_sent_total cairn_raft_commit_notices_folded_total)

# run BIN LABEL: one cluster, one workload; appends "label ops/s µs/op writes/proposal
# ops/batch fsyncs/proposal empty/proposal folded/proposal" to $OUT/runs.txt (fsyncs of all
# three nodes' syncers; AppendEntries sent without entries, heartbeats and commit notices;
# commit notices folded into the next append instead)
run() {
  local bin=$1 label=$2 flags=$3 bflags=$4 cluster="" ep i
  WORK=$(mktemp -d)
  declare -a G H
  for i in 1 2 3; do G[$i]=$(free_port); H[$i]=$(free_port); done
  for i in 1 2 3; do cluster+="${cluster:+,}$i=127.0.0.1:${G[$i]}"; done
  ep=$(echo "$cluster" | sed 's/[0-9]*=//g')
  for i in 1 2 3; do
    # shellcheck disable=SC2086 # flags is a list of flags
    "$bin" server --id "$i" --data-dir "$WORK/c$i" --listen "127.0.0.1:${G[$i]}" \
      --http "127.0.0.1:${H[$i]}" --initial-cluster "$cluster" $flags >"$OUT/$label-$i.log" 2>&1 &
    PIDS+=($!)
  done
  local up=0
  for _ in $(seq 1 120); do
    [ "$("$bin" --endpoints "$ep" admin nodes 2>/dev/null | grep -c ' yes ')" = 3 ] && { up=1; break; }
    sleep 0.5
  done
  [ $up = 1 ] || { echo "error: the cluster of $label did not come up; logs in $OUT" >&2; exit 1; }
  # shellcheck disable=SC2086 # bflags is a list of flags
  "$bin" --endpoints "$ep" bench --workload load --clients 64 --records "$RECORDS" \
    --value-size "$VALUE_SIZE" --ops 100000000 $bflags >/dev/null 2>&1
  local c0 c1 m0 m1
  m0=$(metric_sums "${SIZES[@]}")
  c0=$(cpu "${PIDS[@]}")
  "$bin" --endpoints "$ep" bench --workload "$WORKLOAD" --clients "$CLIENTS" --records "$RECORDS" \
    --value-size "$VALUE_SIZE" --duration "$DURATION" --ops 100000000 --no-load $bflags >"$OUT/$label.txt" 2>&1
  c1=$(cpu "${PIDS[@]}")
  m1=$(metric_sums "${SIZES[@]}")
  local ops
  ops=$(awk '/operations in/ {print $1}' "$OUT/$label.txt")
  local rate
  rate=$(awk '/operations in/ {print $NF=="ops/s" ? $(NF-1) : $NF}' "$OUT/$label.txt" | tr -d ',')
  python3 - "$label" "$ops" "$rate" "$c0" "$c1" "$m0" "$m1" <<'EOF' | tee -a "$OUT/runs.txt"
import sys
label, ops, rate, c0, c1 = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
d = [b - a for a, b in zip(map(float, sys.argv[6].split()), map(float, sys.argv[7].split()))]
per = lambda s, n: f"{s / n:.1f}" if n else "-"
print(f"{label} {rate:.0f} {(c1 - c0) / ops * 1e6:.1f} {per(d[0], d[1])} {per(d[2], d[3])} {per(d[4], d[1])} "
      f"{per(d[5], d[1])} {per(d[6], d[1])}")
EOF
  stop_cluster
}

echo "A = $A $FLAGS_A; bench $BENCH_A"; echo "B = $B $FLAGS_B; bench $BENCH_B"; echo "CAIRN_THREADS=$CAIRN_THREADS"
echo "$WORKLOAD, $CLIENTS clients, $DURATION s, $PAIRS pairs; label ops/s µs/op (servers) writes/proposal ops/batch fsyncs/proposal empty-appends/proposal folded/proposal"
for n in $(seq 1 "$PAIRS"); do
  if [ $((n % 2)) = 1 ]; then run "$A" "a$n" "$FLAGS_A" "$BENCH_A"; run "$B" "b$n" "$FLAGS_B" "$BENCH_B"
  else run "$B" "b$n" "$FLAGS_B" "$BENCH_B"; run "$A" "a$n" "$FLAGS_A" "$BENCH_A"; fi
done
python3 - "$OUT/runs.txt" <<'EOF'
import statistics, sys
runs = [l.split() for l in open(sys.argv[1])]
for side in "ab":
    r = [l[1:] for l in runs if l[0][0] == side]
    med = lambda i: statistics.median(float(x[i]) for x in r if x[i] != "-") if any(x[i] != "-" for x in r) else float("nan")
    print(f"median {side.upper()}: {med(0):.0f} ops/s, {med(1):.1f} µs/op, "
          f"{med(2):.1f} writes/proposal, {med(3):.1f} ops/batch, {med(4):.1f} fsyncs/proposal, "
          f"{med(5):.1f} empty appends/proposal, {med(6):.1f} folded/proposal")
EOF
echo "runs in $OUT"
