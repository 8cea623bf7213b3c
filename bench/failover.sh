#!/usr/bin/env bash
# Leader failover as clients see it, Cairn beside etcd on this machine: under a steady write
# load (16 closed-loop clients, `cairn bench --workload write`), kill -9 the process leading
# the written group (Cairn: the node leading the table's one partition; etcd: the leader
# member) and report the time from the kill to the first write acknowledged after it (the
# bench lists every pause of 100 ms or more in wall-clock time; the one spanning the kill is
# the failover). Each store runs RUNS rounds, alternating which goes first; after each round
# the killed process restarts and rejoins. Cairn's controller is off, so that no load split
# or leader rebalancing lands inside the measured window. Prints each round and the
# medians; keeps the JSON under target/bench/.
#
#   bench/failover.sh                 # 3 rounds each
#   RUNS=5 bench/failover.sh
#   CAIRN_FLAGS="--quiesce false" bench/failover.sh  # with openraft's per-group timers
#   SIGNAL=TERM bench/failover.sh     # a graceful stop (a rolling restart) instead of kill -9:
#                                     # reports the longest pause within 5 s of the signal
#   SIGNAL=STOP bench/failover.sh     # no failover: every process of the store is frozen
#                                     # (SIGSTOP) for PAUSE_MS, as in a stall of the whole
#                                     # machine, then resumed; reports the write pause around it
#
# Installs etcd-server, protobuf-compiler and python3 from Debian's packages when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/threads.inc.sh
. bench/threads.inc.sh

RUNS=${RUNS:-3}
DURATION=${DURATION:-12}
KILL_AFTER=${KILL_AFTER:-5}
CLIENTS=${CLIENTS:-16}
CAIRN_FLAGS=${CAIRN_FLAGS:-}   # e.g. "--quiesce false"
SIGNAL=${SIGNAL:-KILL}         # KILL (a crash), TERM (a graceful stop) or STOP (a frozen machine)
PAUSE_MS=${PAUSE_MS:-250}      # how long SIGNAL=STOP freezes the store
case "$SIGNAL" in KILL|TERM|STOP) ;; *) echo "error: SIGNAL must be KILL, TERM or STOP, not $SIGNAL" >&2; exit 2 ;; esac

missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
command -v python3 >/dev/null || missing+=(python3)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "error: missing ${missing[*]}; apt-get install them or run as root" >&2; exit 1; }
  echo "installing ${missing[*]} ..."
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
  service etcd stop >/dev/null 2>&1 || true
fi
if [ -z "${BIN:-}" ]; then
  echo "building cairn with the etcd driver (release) ..."
  cargo build --release --features etcd -q
  BIN=$PWD/target/release/cairn
fi

OUT=$PWD/target/bench/failover-$(date -u +%Y%m%dT%H%M%SZ)
WORK=$(mktemp -d)
mkdir -p "$OUT"
declare -A PID
cleanup() {
  for p in "${PID[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

declare -a EC EP CG CH
ETCD_CLUSTER=""; ETCD_EP=""; CAIRN_CLUSTER=""
for i in 1 2 3; do EC[$i]=$(free_port); EP[$i]=$(free_port); CG[$i]=$(free_port); CH[$i]=$(free_port); done
for i in 1 2 3; do
  ETCD_CLUSTER+="${ETCD_CLUSTER:+,}e$i=http://127.0.0.1:${EP[$i]}"
  ETCD_EP+="${ETCD_EP:+,}127.0.0.1:${EC[$i]}"
  CAIRN_CLUSTER+="${CAIRN_CLUSTER:+,}$i=127.0.0.1:${CG[$i]}"
done
CAIRN_EP=$(echo "$CAIRN_CLUSTER" | sed 's/[0-9]*=//g')

start_etcd() {
  local i=$1 state=new
  [ -d "$WORK/e$i/member" ] && state=existing
  mkdir -p -m 700 "$WORK/e$i"
  etcd --name "e$i" --data-dir "$WORK/e$i" \
    --listen-client-urls "http://127.0.0.1:${EC[$i]}" --advertise-client-urls "http://127.0.0.1:${EC[$i]}" \
    --listen-peer-urls "http://127.0.0.1:${EP[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${EP[$i]}" \
    --initial-cluster "$ETCD_CLUSTER" --initial-cluster-state "$state" --initial-cluster-token cairn-failover \
    --logger=zap --log-level=error --log-outputs=stderr >>"$OUT/etcd-$i.log" 2>&1 &
  PID[e$i]=$!
}
start_cairn() {
  local i=$1
  "$BIN" server --id "$i" --data-dir "$WORK/c$i" --listen "127.0.0.1:${CG[$i]}" \
    --http "127.0.0.1:${CH[$i]}" --initial-cluster "$CAIRN_CLUSTER" --controller off $CAIRN_FLAGS >>"$OUT/cairn-$i.log" 2>&1 &
  PID[c$i]=$!
}
for i in 1 2 3; do start_etcd "$i"; start_cairn "$i"; done

etcd_healthy() { local n=0; for i in 1 2 3; do curl -sf "http://127.0.0.1:${EC[$i]}/health" | grep -q '"health":"true"' && n=$((n+1)); done; [ $n = 3 ]; }
cairn_healthy() { [ "$("$BIN" --endpoints "$CAIRN_EP" admin nodes 2>/dev/null | grep -c ' yes ')" = 3 ]; }
wait_healthy() { for _ in $(seq 1 240); do "$1" && return 0; sleep 0.5; done; echo "error: $2 did not become healthy; logs in $OUT" >&2; exit 1; }
wait_healthy etcd_healthy etcd
wait_healthy cairn_healthy Cairn

# The etcd member that leads: the one whose status names itself as leader.
etcd_leader() {
  for i in 1 2 3; do
    curl -sf -X POST -d '{}' "http://127.0.0.1:${EC[$i]}/v3/maintenance/status" 2>/dev/null |
      python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if s["header"]["member_id"]==s["leader"] else 1)' &&
      { echo "$i"; return; }
  done
}
# The Cairn node leading table `failover`'s only partition (no other table leads anything).
cairn_leader() {
  for i in 1 2 3; do
    n=$(curl -s "http://127.0.0.1:${CH[$i]}/metrics" | awk '/^cairn_leaders\{/ {print $2}')
    [ "${n:-0}" -ge 1 ] && { echo "$i"; return; }
  done
}

round() { # store round
  local store=$1 r=$2 ep leader
  ep=$CAIRN_EP; [ "$store" = etcd ] && ep=$ETCD_EP
  "$BIN" --endpoints "$ep" bench --driver "$store" --workload write --clients "$CLIENTS" \
    --records 1000 --partitions 1 --table failover --duration "$DURATION" --ops 100000000 \
    --op-timeout-ms 10000 --json "$OUT/$store-$r.json" >"$OUT/$store-$r.txt" 2>"$OUT/$store-$r.progress" &
  local bench=$!
  sleep "$KILL_AFTER"
  if [ "$store" = etcd ]; then leader=$(etcd_leader); else leader=$(cairn_leader); fi
  [ -n "$leader" ] || { echo "error: no $store leader found" >&2; exit 1; }
  local key=c$leader; [ "$store" = etcd ] && key=e$leader
  if [ "$SIGNAL" = STOP ]; then
    local all=("${PID[${key:0:1}1]}" "${PID[${key:0:1}2]}" "${PID[${key:0:1}3]}")
    date +%s%3N >"$OUT/$store-$r.killed"
    kill -STOP "${all[@]}"
    sleep "$(awk -v ms="$PAUSE_MS" 'BEGIN { print ms / 1000 }')"
    kill -CONT "${all[@]}"
    echo "  $store round $r: every process frozen for ${PAUSE_MS} ms at ${KILL_AFTER} s"
    wait "$bench" || { echo "error: the $store bench failed; see $OUT/$store-$r.progress" >&2; exit 1; }
    return
  fi
  date +%s%3N >"$OUT/$store-$r.killed"
  kill -s "$SIGNAL" "${PID[$key]}"
  wait "${PID[$key]}" 2>/dev/null || true
  echo "  $store round $r: SIG$SIGNAL to the leader ($key) at ${KILL_AFTER} s"
  wait "$bench" || { echo "error: the $store bench failed; see $OUT/$store-$r.progress" >&2; exit 1; }
  if [ "$store" = etcd ]; then start_etcd "$leader"; wait_healthy etcd_healthy etcd
  else start_cairn "$leader"; wait_healthy cairn_healthy Cairn; fi
}

for r in $(seq 1 "$RUNS"); do
  if [ $((r % 2)) = 1 ]; then round cairn "$r"; round etcd "$r"; else round etcd "$r"; round cairn "$r"; fi
done

{
  what="SIG$SIGNAL to the leader"; [ "$SIGNAL" = STOP ] && what="every process frozen for $PAUSE_MS ms"
  echo "machine: $(nproc) cores, $(uname -r); etcd $(etcd --version | head -1 | awk '{print $3}'); $CLIENTS writers, $what ${KILL_AFTER} s into each ${DURATION} s round"
  python3 - "$OUT" "$RUNS" "$SIGNAL" "$PAUSE_MS" <<'PY'
import json, statistics, sys
out, runs, signal, pause_ms = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
print()
print("| store | " + " | ".join(f"round {r}" for r in range(1, runs + 1)) + " | median |")
print("|---|" + "---:|" * (runs + 1))
med = {}
def failover(s, r):
    killed = int(open(f"{out}/{s}-{r}.killed").read())
    gaps = json.load(open(f"{out}/{s}-{r}.json"))["gaps"]
    # The pause spanning the kill ends with the first acknowledged write after it; with
    # none listed, a write was acknowledged within 100 ms.
    # (The last acknowledgement before it may land a few ms after `date` ran.)
    if signal == "STOP":
        # The pause that spans the freeze, whole: at least the freeze itself.
        within = [g for g in gaps if g["start_unix_ms"] <= killed + 50 and killed < g["end_unix_ms"]]
        return max((g["end_unix_ms"] - g["start_unix_ms"]) / 1000 for g in within) if within else 0.0
    if signal == "TERM":
        # A graceful stop hands leadership over while writes go on: the longest pause
        # that overlaps the 5 s after the signal.
        within = [g for g in gaps if g["start_unix_ms"] < killed + 5000 and killed < g["end_unix_ms"]]
        return max((g["end_unix_ms"] - max(g["start_unix_ms"], killed)) / 1000 for g in within) if within else 0.1
    ends = [g["end_unix_ms"] for g in gaps if g["start_unix_ms"] <= killed + 50 and killed < g["end_unix_ms"]]
    return (ends[0] - killed) / 1000 if ends else 0.1
for s in ("cairn", "etcd"):
    gaps = [failover(s, r) for r in range(1, runs + 1)]
    med[s] = statistics.median(gaps)
    print(f"| {s} | " + " | ".join(f"{g:.2f} s" for g in gaps) + f" | {med[s]:.2f} s |")
print()
what = {
    "TERM": "The longest write pause within 5 s of the leader's SIGTERM (0.10 s: none of 100 ms or more)",
    "STOP": f"The write pause around a {pause_ms} ms freeze of every process, whole",
}.get(signal, "From the leader's kill -9 to the first acknowledged write")
# A freeze shorter than the bench's 100 ms gap threshold may leave no pause at all (0 s).
ratio = f"{med['cairn'] / med['etcd']:.2f}" if med["etcd"] else "n/a"
print(f"{what}; Cairn/etcd = {ratio}")
PY
} | tee "$OUT/summary.md"
echo "results: $OUT"
