#!/usr/bin/env bash
# How each side scales with worker threads (issue 18), measured on its own: the other side is replaced by
# the cheapest stand-in that still consumes or produces real datagrams over 127.0.0.1.
#  - sender: `diode-send file` sends SIZE_MB unpaced to `diode-blast --sink`, which takes the datagrams off
#    its socket in GRO batches, discards them and reports each burst (the pass is the largest; the
#    sender's pauses before the first frame and for its repeats after the pass are not counted);
#    `seal_threads` = each count. Prints the file's MB/s over the pass (file bytes / the pass's time at
#    the sink) and CPU-s/GB (user + system of the diode-send process, all of its run).
#  - receiver: diode-blast (tests/src/bin/diode-blast.rs) encodes and seals SIZE_MB in memory first, then
#    sends the frames from memory at RATE; `open_threads` = each count. Prints the goodput from the first
#    frame sent to the file's rename into the inbox, the receiver's CPU-s/GB, and the datagrams the
#    kernel dropped at its socket (the receiver fell behind; FEC covers a little).
# Not a test. Written to run unchanged on a larger machine: benches/scaling.sh 1024 "0 1 2 4 8 16" 8Gbit
# Usage: benches/scaling.sh [SIZE_MB] [THREADS] [RATE]   (defaults: 1024, "0 1 2", 5Gbit)
set -euo pipefail
cd "$(dirname "$0")/.."
MB=${1:-1024}; THREADS=${2:-0 1 2}; RATE=${3:-5Gbit}
if [ -z "${DIODE_BIN_DIR:-}" ]; then cargo build --release -q --bins; fi
B=${DIODE_BIN_DIR:-$PWD/target/release}

D=$(mktemp -d -t diode-scaling.XXXXXX)
PIDS=
cleanup() { kill $PIDS 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT
"$B/diode-recv" keygen --dir "$D/k" >/dev/null; "$B/diode-send" keygen --dir "$D/k" >/dev/null
head -c $((MB << 20)) /dev/urandom >"$D/file.bin"
cpu() { awk '{print $14 + $15}' /proc/$1/stat; }
tck=$(getconf CLK_TCK)

echo "== sender alone: diode-send file, $MB MiB unpaced, to diode-blast --sink (threads: $THREADS)"
for t in $THREADS; do
  cat >"$D/send.toml" <<T
target = "127.0.0.1:47991"
outbox = "out"
state = "ss-$t"
key = "k/sender.key"
receiver = "k/receiver.pub"
rate = "100Gbit"
seal_threads = $t
T
  "$B/diode-blast" --sink 127.0.0.1:47991 >"$D/sink.out" & SOC=$!; PIDS="$PIDS $SOC"
  sleep 0.3
  TIMEFORMAT="%U %S"
  { time "$B/diode-send" --config "$D/send.toml" file "$D/file.bin" >"$D/send.out" 2>"$D/send.err"; } 2>"$D/time"
  sleep 0.3; kill $SOC 2>/dev/null || true; wait $SOC 2>/dev/null || true
  read -r u s <"$D/time"
  # the pass: the largest burst the sink saw
  pass=$(awk '/^sink: burst/ {if ($6 > b) {b = $6; t = $9}} END {print t}' "$D/sink.out")
  mbs=$(awk -v t="$pass" -v mb="$MB" 'BEGIN {print (t > 0 ? mb * 1048576 / t / 1e6 : 0)}')
  awk -v t="$t" -v u="$u" -v s="$s" -v mb="$MB" -v mbs="$mbs" 'BEGIN {
    gb = mb * 1048576 / 1e9
    printf "sender   seal_threads=%-2d  %5.0f MB/s  %.2f CPU-s/GB (user %.2f s, system %.2f s)\n", t, mbs, (u + s) / gb, u, s }'
done

echo "== receiver alone: diode-blast sends $MB MiB at $RATE from memory (threads: $THREADS)"
for t in $THREADS; do
  cat >"$D/recv.toml" <<T
listen = "127.0.0.1:47992"
inbox = "in-$t"
state = "rs-$t"
key = "k/receiver.key"
senders = ["k/sender.pub"]
open_threads = $t
T
  "$B/diode-recv" --config "$D/recv.toml" 2>"$D/recv-$t.log" & RP=$!; PIDS="$PIDS $RP"
  sleep 1
  r0=$(cpu $RP)
  "$B/diode-blast" --key "$D/k/sender.key" --receiver "$D/k/receiver.pub" --target 127.0.0.1:47992 \
    --mb "$MB" --rate "$RATE" 2>"$D/blast.err" & BP=$!; PIDS="$PIDS $BP"
  until grep -q "encoded and sealed" "$D/blast.err" 2>/dev/null; do sleep 0.05; done
  t0=$(date +%s.%N)
  end=$((SECONDS + 60)); ok=1
  until [ -e "$D/in-$t/blast.bin" ]; do
    [ $SECONDS -lt $end ] || { ok=0; break; }
    sleep 0.02
  done
  t1=$(date +%s.%N); r1=$(cpu $RP)
  wait $BP 2>/dev/null || true
  sleep 1.2  # the next status write carries the kernel's drops
  kd=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["kernel"]["total"])' "$D/rs-$t/status.json" 2>/dev/null || echo "?")
  kill $RP 2>/dev/null || true; wait $RP 2>/dev/null || true
  awk -v t="$t" -v t0="$t0" -v t1="$t1" -v mb="$MB" -v r="$((r1 - r0))" -v tck="$tck" -v kd="${kd:-?}" -v ok="$ok" 'BEGIN {
    gb = mb * 1048576 / 1e9
    if (!ok) { printf "receiver open_threads=%-2d  not complete after 60 s: it fell behind, kernel dropped %s datagrams (lower RATE)\n", t, kd; exit }
    printf "receiver open_threads=%-2d  %5.0f MB/s  %.2f CPU-s/GB, kernel dropped %s datagrams\n", t, mb * 1048576 / (t1 - t0) / 1e6, r / tck / gb, kd }'
done
