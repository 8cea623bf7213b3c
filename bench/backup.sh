#!/usr/bin/env bash
# How long `cairn backup` takes on a larger table, and that it gives back what it took:
# starts 3 release `cairn server` processes on loopback, loads RECORDS records of VALUE_SIZE
# bytes into `cairn bench`'s table of PARTITIONS partitions, then
#   1. saves it (time, keys/s, MB/s of file, the servers' CPU);
#   2. drops it and restores the file (the same figures);
#   3. saves the restored table and checks its rows are the first file's, byte for byte;
#   4. saves it again while CLIENTS clients write for DURATION seconds, and checks the file.
#
#   bench/backup.sh                          # 200,000 records of 256 bytes
#   RECORDS=1000000 bench/backup.sh
#
# The report goes to target/bench/backup-<timestamp>/report.txt, with the servers' logs.
set -euo pipefail
cd "$(dirname "$0")/.."

RECORDS=${RECORDS:-200000}
VALUE_SIZE=${VALUE_SIZE:-256}
PARTITIONS=${PARTITIONS:-3}
CLIENTS=${CLIENTS:-16}
DURATION=${DURATION:-20}

command -v python3 >/dev/null || { echo "error: needs python3 (apt-get install python3)" >&2; exit 1; }
OUT=$PWD/target/bench/backup-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"

# shellcheck source=bench/cluster.sh
. bench/cluster.sh
ensure_bin
start_cluster "$OUT" --split-qps 1000000
load_records
ticks=$(getconf CLK_TCK)

# Runs `cairn backup ARGS`, and prints seconds and server CPU seconds it took.
timed() {
  local c0 t0 c1 t1
  c0=$(cpu_ticks)
  t0=$(date +%s.%N)
  "$BIN" --endpoints "$EP" backup "$@" >>"$OUT/backup.log" 2>&1
  t1=$(date +%s.%N)
  c1=$(cpu_ticks)
  python3 -c "print(f'{$t1 - $t0:.2f} {($c1 - $c0) / $ticks:.2f}')"
}

report() { # what, seconds cpu, file
  local what=$1 secs=$2 cpu=$3 file=$4 keys mb
  [ -n "$secs" ] || { echo "error: $what failed; see $OUT/backup.log" >&2; exit 1; }
  keys=$(grep -c '^\[' "$file")
  mb=$(python3 -c "print(f'{$(stat -c %s "$file") / 1e6:.1f}')")
  python3 -c "print(f'%-28s %9d keys %8.1f MB %7.2f s %9.0f keys/s %7.1f MB/s %7.2f server CPU s' % ('$what', $keys, $mb, $secs, $keys / $secs, $mb / $secs, $cpu))" \
    | tee -a "$OUT/report.txt"
}

echo "$RECORDS records of $VALUE_SIZE bytes, $PARTITIONS partitions ($BIN)" | tee "$OUT/report.txt"
read -r s c < <(timed save "$OUT/1.backup" --table bench)
report "save" "$s" "$c" "$OUT/1.backup"

"$BIN" --endpoints "$EP" table drop bench >/dev/null
read -r s c < <(timed restore "$OUT/1.backup")
report "restore" "$s" "$c" "$OUT/1.backup"

timed save "$OUT/2.backup" --table bench >/dev/null
if cmp -s <(grep '^\[' "$OUT/1.backup") <(grep '^\[' "$OUT/2.backup"); then
  echo "the restored table's rows are the saved ones, byte for byte" | tee -a "$OUT/report.txt"
else
  echo "error: the restored table differs from the saved one (files in $OUT)" | tee -a "$OUT/report.txt" >&2
  exit 1
fi

"$BIN" --endpoints "$EP" bench --workload write --clients "$CLIENTS" --records "$RECORDS" \
  --value-size "$VALUE_SIZE" --duration "$DURATION" --ops 100000000 --no-load \
  --partitions "$PARTITIONS" >"$OUT/writes.txt" 2>&1 &
writer=$!
sleep 2
read -r s c < <(timed save "$OUT/3.backup" --table bench)
wait "$writer"
report "save under $CLIENTS writers" "$s" "$c" "$OUT/3.backup"
"$BIN" backup inspect "$OUT/3.backup" >>"$OUT/backup.log"
echo "writes meanwhile: $(grep '^update' "$OUT/writes.txt" | awk '{print $2 " ops, " $3 " ops/s"}')" | tee -a "$OUT/report.txt"
echo "report: $OUT/report.txt"
