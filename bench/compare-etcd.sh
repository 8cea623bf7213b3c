#!/usr/bin/env bash
# Cairn and etcd side by side on this machine: a 3-member etcd cluster and a 3-node Cairn
# cluster on loopback, both fsyncing before they acknowledge, driven in turn by the same
# `cairn bench` workloads at several client concurrencies. Prints one table with
# throughput, p99 latency and the Cairn/etcd ratios, and keeps every JSON result.
#
#   bench/compare-etcd.sh                       # write a b c e at 1 16 64 256 clients, 10 s each
#   DURATION=30 CLIENTS="16 64" WORKLOADS="a c" bench/compare-etcd.sh
#   WORKLOADS=c CLIENTS=1 EXTRA="--consistency stale" bench/compare-etcd.sh   # stale reads
#
# Installs etcd-server, protobuf-compiler (for the etcd driver) and python3 from Debian's
# packages when missing (needs root for that). Results go to target/bench/<timestamp>/.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-"1 16 64 256"}
WORKLOADS=${WORKLOADS:-"write a b c e"}
RECORDS=${RECORDS:-10000}
VALUE_SIZE=${VALUE_SIZE:-256}
EXTRA=${EXTRA:-}   # more `cairn bench` flags for both stores, e.g. "--consistency stale"

missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
command -v python3 >/dev/null || missing+=(python3)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "error: missing ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root" >&2
    exit 1
  fi
  echo "installing ${missing[*]} ..."
  # A fresh machine has no package lists yet.
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
  # The package may start a system etcd on the default ports; ours use their own ports.
  service etcd stop >/dev/null 2>&1 || true
fi

echo "building cairn with the etcd driver (release) ..."
cargo build --release --features etcd -q
BIN=$PWD/target/release/cairn

OUT=$PWD/target/bench/$(date -u +%Y%m%dT%H%M%SZ)
WORK=$(mktemp -d)
mkdir -p "$OUT"
PIDS=()
ETCD_PIDS=()
CAIRN_PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# etcd: 3 members.
ETCD_CLUSTER=""; ETCD_EP=""
declare -a EC EP
for i in 1 2 3; do EC[$i]=$(free_port); EP[$i]=$(free_port); done
for i in 1 2 3; do ETCD_CLUSTER+="${ETCD_CLUSTER:+,}e$i=http://127.0.0.1:${EP[$i]}"; ETCD_EP+="${ETCD_EP:+,}127.0.0.1:${EC[$i]}"; done
for i in 1 2 3; do
  mkdir -m 700 "$WORK/e$i"
  etcd --name "e$i" --data-dir "$WORK/e$i" \
    --listen-client-urls "http://127.0.0.1:${EC[$i]}" --advertise-client-urls "http://127.0.0.1:${EC[$i]}" \
    --listen-peer-urls "http://127.0.0.1:${EP[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${EP[$i]}" \
    --initial-cluster "$ETCD_CLUSTER" --initial-cluster-state new --initial-cluster-token cairn-bench \
    --logger=zap --log-level=error --log-outputs=stderr >"$OUT/etcd-$i.log" 2>&1 &
  PIDS+=($!); ETCD_PIDS+=($!)
done

# Cairn: 3 nodes.
CAIRN_CLUSTER=""; CAIRN_EP=""
declare -a CG CH
for i in 1 2 3; do CG[$i]=$(free_port); CH[$i]=$(free_port); done
for i in 1 2 3; do CAIRN_CLUSTER+="${CAIRN_CLUSTER:+,}$i=127.0.0.1:${CG[$i]}"; done
CAIRN_EP=$(echo "$CAIRN_CLUSTER" | sed 's/[0-9]*=//g')
for i in 1 2 3; do
  "$BIN" server --id "$i" --data-dir "$WORK/c$i" --listen "127.0.0.1:${CG[$i]}" \
    --http "127.0.0.1:${CH[$i]}" --initial-cluster "$CAIRN_CLUSTER" >"$OUT/cairn-$i.log" 2>&1 &
  PIDS+=($!); CAIRN_PIDS+=($!)
done

echo "waiting for both clusters ..."
for _ in $(seq 1 120); do
  ok=0
  curl -sf "http://127.0.0.1:${EC[1]}/health" | grep -q '"health":"true"' && ok=$((ok+1))
  [ "$("$BIN" --endpoints "$CAIRN_EP" admin nodes 2>/dev/null | grep -c ' yes ')" = 3 ] && ok=$((ok+1))
  [ $ok = 2 ] && break
  sleep 0.5
done
[ $ok = 2 ] || { echo "error: the clusters did not come up; logs in $OUT" >&2; exit 1; }

# CPU time (clock ticks) the servers of a store have used so far.
cpu_ticks() {
  local pids t=0
  if [ "$1" = etcd ]; then pids=("${ETCD_PIDS[@]}"); else pids=("${CAIRN_PIDS[@]}"); fi
  for p in "${pids[@]}"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  echo $t
}

run() { # store endpoints workload clients extra...
  local store=$1 ep=$2 w=$3 c=$4; shift 4
  local before; before=$(cpu_ticks "$store")
  "$BIN" --endpoints "$ep" bench --driver "$store" --workload "$w" --clients "$c" \
    --records "$RECORDS" --value-size "$VALUE_SIZE" --duration "$DURATION" --ops 100000000 \
    --json "$OUT/$store-$w-$c.json" $EXTRA "$@" >"$OUT/$store-$w-$c.txt" 2>"$OUT/$store-$w-$c.progress"
  echo $(( $(cpu_ticks "$store") - before )) >"$OUT/$store-$w-$c.cpu"
}

echo "loading $RECORDS records of $VALUE_SIZE B into each ..."
run cairn "$CAIRN_EP" load 64
run etcd "$ETCD_EP" load 64
for w in $WORKLOADS; do
  for c in $CLIENTS; do
    for store in cairn etcd; do
      ep=$CAIRN_EP; [ $store = etcd ] && ep=$ETCD_EP
      echo "  $store workload $w, $c clients, ${DURATION} s"
      run "$store" "$ep" "$w" "$c" --no-load
    done
  done
done

{
  echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM, $(uname -r); etcd $(etcd --version | head -1 | awk '{print $3}')"
  echo "command: DURATION=$DURATION CLIENTS=\"$CLIENTS\" WORKLOADS=\"$WORKLOADS\" RECORDS=$RECORDS EXTRA=\"$EXTRA\" bench/compare-etcd.sh"
  python3 - "$OUT" "$WORKLOADS" "$CLIENTS" "$(getconf CLK_TCK)" <<'PY'
import json, sys
out, workloads, clients, tck = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), int(sys.argv[4])
print()
print("Ratios are Cairn/etcd: above 1 Cairn has more throughput, below 1 a lower p99.")
print("CPU is the servers' user+system time per successful operation (the three nodes together).")
print()
print("| workload | clients | Cairn ops/s | etcd ops/s | ratio | Cairn p99 ms | etcd p99 ms | ratio | Cairn CPU µs/op | etcd CPU µs/op |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for w in workloads:
    for c in clients:
        r = {s: json.load(open(f"{out}/{s}-{w}-{c}.json")) for s in ("cairn", "etcd")}
        p99 = {s: max([o["p99_us"] for o in r[s]["ops"]] or [0]) / 1000 for s in r}
        ops = {s: r[s]["ops_per_sec"] for s in r}
        errs = {s: sum(r[s]["errors"].values()) for s in r}
        note = "" if not any(errs.values()) else f" (errors: cairn {errs['cairn']}, etcd {errs['etcd']})"
        cpu = {s: int(open(f"{out}/{s}-{w}-{c}.cpu").read()) / tck * 1e6 / max(r[s]["total_ops"], 1) for s in r}
        print(f"| {w} | {c} | {ops['cairn']:.0f} | {ops['etcd']:.0f} | {ops['cairn']/max(ops['etcd'],1e-9):.2f} "
              f"| {p99['cairn']:.2f} | {p99['etcd']:.2f} | {p99['cairn']/max(p99['etcd'],1e-9):.2f} "
              f"| {cpu['cairn']:.0f} | {cpu['etcd']:.0f} |{note}")
PY
} | tee "$OUT/summary.md"
echo "results: $OUT"
