#!/usr/bin/env bash
# Cairn and etcd side by side on this machine: a 3-member etcd cluster and a 3-node Cairn
# cluster on loopback, both fsyncing before they acknowledge, driven in turn by the same
# `cairn bench` workloads at several client concurrencies. Each case runs RUNS times, the
# store that goes first alternating between runs; the table gives medians: throughput, p99
# latency, the Cairn/etcd ratios, and CPU per operation of the servers (all three, and the
# busiest one) and of the load generator; below it, the servers' disk writes per operation.
# Every JSON result is kept, with summary.json.
#
#   bench/compare-etcd.sh                       # write a b c e at 1 16 64 256 clients, 10 s, 3 runs
#   DURATION=30 CLIENTS="16 64" WORKLOADS="a c" RUNS=5 bench/compare-etcd.sh
#   WORKLOADS=c CLIENTS=1 EXTRA="--consistency stale" bench/compare-etcd.sh   # stale reads
#   CLIENTS=64 WORKLOADS="write c" EXTRA="--rate 4000" bench/compare-etcd.sh
#       # open loop: both stores at 4,000 ops/s, to compare CPU per operation and latency
#       # below saturation (the ops/s ratio is then about 1 by design)
#   PARTITIONS=1 bench/compare-etcd.sh          # one Raft group, as etcd
#   CAIRN_FLAGS="" bench/compare-etcd.sh        # let the controller split hot partitions mid-run
#   CAIRN_THREADS=2 ETCD_GOMAXPROCS=1 bench/compare-etcd.sh   # threads of each server
#
# Installs etcd-server, protobuf-compiler (for the etcd driver) and python3 from Debian's
# packages when missing (needs root for that). Results go to target/bench/<timestamp>/.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-"1 16 64 256"}
WORKLOADS=${WORKLOADS:-"write a b c e"}
RECORDS=${RECORDS:-10000}
RUNS=${RUNS:-3}
VALUE_SIZE=${VALUE_SIZE:-256}
EXTRA=${EXTRA:-}   # more `cairn bench` flags for both stores, e.g. "--consistency stale"
# More `cairn server` flags. By default the controller keeps balancing leaders but splits
# no partition for load: above 2,500 ops/s it would split the table during the first run,
# and the later runs would measure another layout (on one machine, more Raft groups only
# add proposals). The summary says how many partitions each run found.
CAIRN_FLAGS=${CAIRN_FLAGS---split-qps 1000000}
# Partitions of Cairn's table: 3 (one leader per node) or 1 (one Raft group, like etcd's).
PARTITIONS=${PARTITIONS:-3}
# Worker threads of each Cairn node: a third of the cores (bench/threads.inc.sh). etcd keeps
# Go's default; its members measured no faster at one core each (GOMAXPROCS=1,
# docs/benchmarks.md). ETCD_GOMAXPROCS sets it.
# shellcheck source=bench/threads.inc.sh
. bench/threads.inc.sh
ETCD_GOMAXPROCS=${ETCD_GOMAXPROCS:-}

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
  GOMAXPROCS=${ETCD_GOMAXPROCS:-$(nproc)} etcd --name "e$i" --data-dir "$WORK/e$i" \
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
    --http "127.0.0.1:${CH[$i]}" --initial-cluster "$CAIRN_CLUSTER" --threads "$CAIRN_THREADS" \
    $CAIRN_FLAGS >"$OUT/cairn-$i.log" 2>&1 &
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

# CPU time (clock ticks) each server of a store has used so far, space-separated.
cpu_ticks() {
  local pids p out=""
  if [ "$1" = etcd ]; then pids=("${ETCD_PIDS[@]}"); else pids=("${CAIRN_PIDS[@]}"); fi
  for p in "${pids[@]}"; do out+="$(awk '{print $14 + $15}' "/proc/$p/stat") "; done
  echo $out
}

# Bytes the servers of a store have sent to the disk so far (`write_bytes` of /proc/PID/io:
# pages dirtied, so an fsynced 300-byte append that dirties a page again counts 4 KiB).
disk_bytes() {
  local pids p sum=0
  if [ "$1" = etcd ]; then pids=("${ETCD_PIDS[@]}"); else pids=("${CAIRN_PIDS[@]}"); fi
  for p in "${pids[@]}"; do sum=$((sum + $(awk '/^write_bytes/ {print $2}' "/proc/$p/io"))); done
  echo $sum
}

run() { # store endpoints workload clients tag extra...
  local store=$1 ep=$2 w=$3 c=$4 tag=$5; shift 5
  local before after disk_before name=$store-$w-$c$tag
  disk_before=$(disk_bytes "$store")
  before=$(cpu_ticks "$store")
  # bash's `time` gives the load generator's own CPU (user and system seconds).
  { TIMEFORMAT='%U %S'; time "$BIN" --endpoints "$ep" bench --driver "$store" --workload "$w" --clients "$c" \
    --records "$RECORDS" --value-size "$VALUE_SIZE" --duration "$DURATION" --ops 100000000 \
    --json "$OUT/$name.json" --partitions "$PARTITIONS" $EXTRA "$@" >"$OUT/$name.txt" 2>"$OUT/$name.progress"; } 2>"$OUT/$name.loadgen"
  after=$(cpu_ticks "$store")
  echo $(( $(disk_bytes "$store") - disk_before )) >"$OUT/$name.disk"
  if [ "$store" = cairn ]; then
    "$BIN" --endpoints "$ep" admin partitions bench 2>/dev/null | grep -c '^[0-9]' >"$OUT/$name.partitions" || true
  fi
  python3 -c 'import sys; b, a = sys.argv[1].split(), sys.argv[2].split(); print(" ".join(str(int(y) - int(x)) for x, y in zip(b, a)))' \
    "$before" "$after" >"$OUT/$name.cpu"
}

echo "loading $RECORDS records of $VALUE_SIZE B into each ..."
run cairn "$CAIRN_EP" load 64 ""
run etcd "$ETCD_EP" load 64 ""
for r in $(seq 1 "$RUNS"); do
  order="cairn etcd"; [ $((r % 2)) = 0 ] && order="etcd cairn"
  for w in $WORKLOADS; do
    for c in $CLIENTS; do
      for store in $order; do
        ep=$CAIRN_EP; [ $store = etcd ] && ep=$ETCD_EP
        echo "  run $r/$RUNS: $store workload $w, $c clients, ${DURATION} s"
        run "$store" "$ep" "$w" "$c" "-r$r" --no-load
      done
    done
  done
done

{
  echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM, $(uname -r); etcd $(etcd --version | head -1 | awk '{print $3}')"
  echo "command: DURATION=$DURATION CLIENTS=\"$CLIENTS\" WORKLOADS=\"$WORKLOADS\" RECORDS=$RECORDS RUNS=$RUNS PARTITIONS=$PARTITIONS EXTRA=\"$EXTRA\" CAIRN_FLAGS=\"$CAIRN_FLAGS\" CAIRN_THREADS=$CAIRN_THREADS ETCD_GOMAXPROCS=${ETCD_GOMAXPROCS:-$(nproc)} bench/compare-etcd.sh"
  python3 - "$OUT" "$WORKLOADS" "$CLIENTS" "$(getconf CLK_TCK)" "$RUNS" <<'PY'
import json, statistics, sys
out, workloads, clients, tck, runs = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), int(sys.argv[4]), int(sys.argv[5])
med = statistics.median
print()
print(f"Medians of {runs} runs. Ratios are Cairn/etcd: above 1 Cairn has more throughput, below 1 a lower p99.")
print("CPU is user+system time per successful operation: `servers` of the three nodes together,")
print("`busiest` of the busiest node, `loadgen` of the `cairn bench` process driving them.")
print()
print("| workload | clients | Cairn ops/s | etcd ops/s | ratio | Cairn p99 ms | etcd p99 ms | ratio "
      "| Cairn CPU µs/op servers / busiest / loadgen | etcd CPU µs/op servers / busiest / loadgen |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
summary = []
for w in workloads:
    for c in clients:
        row = {"workload": w, "clients": int(c)}
        note = []
        for s in ("cairn", "etcd"):
            ops, p99, srv, busy, gen, errs, slow, late, disk = [], [], [], [], [], 0, [], 0, []
            for r in range(1, runs + 1):
                name = f"{out}/{s}-{w}-{c}-r{r}"
                j = json.load(open(name + ".json"))
                n = max(j["total_ops"], 1)
                ticks = [int(t) for t in open(name + ".cpu").read().split()]
                user, system = map(float, open(name + ".loadgen").read().split()[-2:])
                ops.append(j["ops_per_sec"])
                p99.append(max([o["p99_us"] for o in j["ops"]] or [0]) / 1000)
                srv.append(sum(ticks) / tck * 1e6 / n)
                busy.append(max(ticks) / tck * 1e6 / n)
                gen.append((user + system) * 1e6 / n)
                errs += sum(j["errors"].values())
                win = j.get("windows")
                if win:
                    slow.append(f'{win["slow"]} of {win["count"]}')
                late += j.get("late_ops", 0)
                try:
                    disk.append(int(open(name + ".disk").read()) / 1024 / n)
                except (OSError, ValueError):
                    pass
            row[s] = {"ops_per_sec": med(ops), "p99_ms": med(p99), "cpu_us_per_op_servers": med(srv),
                      "cpu_us_per_op_busiest_node": med(busy), "cpu_us_per_op_loadgen": med(gen),
                      "runs_ops_per_sec": ops, "errors": errs, "runs_slow_windows": slow,
                      "disk_kib_per_op": med(disk) if disk else None}
            if errs:
                note.append(f"{s} errors: {errs}")
            # Open loop (EXTRA="--rate N"): operations overdue because the clients fell behind.
            if late:
                note.append(f"{s} overdue operations: {late}")
        a, b = row["cairn"], row["etcd"]
        row["throughput_ratio"] = a["ops_per_sec"] / max(b["ops_per_sec"], 1e-9)
        row["p99_ratio"] = a["p99_ms"] / max(b["p99_ms"], 1e-9)
        summary.append(row)
        cpu = lambda x: f'{x["cpu_us_per_op_servers"]:.0f} / {x["cpu_us_per_op_busiest_node"]:.0f} / {x["cpu_us_per_op_loadgen"]:.0f}'
        print(f"| {w} | {c} | {a['ops_per_sec']:.0f} | {b['ops_per_sec']:.0f} | {row['throughput_ratio']:.2f} "
              f"| {a['p99_ms']:.2f} | {b['p99_ms']:.2f} | {row['p99_ratio']:.2f} | {cpu(a)} | {cpu(b)} |"
              + (f" ({'; '.join(note)})" if note else ""))
# Stalls: a run's 100 ms windows that acknowledged under 3/4 of its median window.
print()
print("100 ms windows below 3/4 of the run's median, each run (stalls, which a p99 does not place):")
for row in summary:
    print(f'- {row["workload"]}, {row["clients"]} clients: Cairn '
          + ", ".join(row["cairn"]["runs_slow_windows"] or ["not recorded"])
          + "; etcd " + ", ".join(row["etcd"]["runs_slow_windows"] or ["not recorded"]))
print()
print("Disk writes of the servers per operation (KiB, `write_bytes` of /proc/PID/io, median of the runs):")
for row in summary:
    kib = lambda x: "not recorded" if x["disk_kib_per_op"] is None else f'{x["disk_kib_per_op"]:.1f}'
    print(f'- {row["workload"]}, {row["clients"]} clients: Cairn {kib(row["cairn"])}; etcd {kib(row["etcd"])}')
layouts = {}
for w in workloads:
    for c in clients:
        for r in range(1, runs + 1):
            try:
                n = open(f"{out}/cairn-{w}-{c}-r{r}.partitions").read().strip()
            except OSError:
                n = "?"
            layouts.setdefault(n, []).append(f"{w}/{c}/r{r}")
print()
print("Partitions of Cairn's table after each run: " + "; ".join(
    f"{n} after {len(v)} run(s)" + ("" if len(layouts) == 1 else f" ({', '.join(v)})") for n, v in layouts.items()))
for row in summary:
    row["cairn"]["partitions_after_runs"] = sorted(layouts)
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
PY
} | tee "$OUT/summary.md"
echo "results: $OUT"
