#!/usr/bin/env bash
# End-to-end throughput benchmark (not a test): the real daemons move one file (default 1 GiB) from the
# outbox to the inbox over 127.0.0.1. Prints goodput (file bytes / time from the move into the outbox to
# the atomic rename into the inbox, so hashing on both sides counts), the CPU seconds each daemon used for
# it, and the receiver's peak RSS. Usage: benches/loopback.sh [SIZE_MB] [RATE]; SEND_EXTRA / RECV_EXTRA:
# lines added to send.toml / recv.toml (e.g. SEND_EXTRA="seal_threads = 0")
set -euo pipefail
cd "$(dirname "$0")/.."
MB=${1:-1024}; RATE=${2:-5Gbit}
# DIODE_BIN_DIR=<folder>: use the binaries there instead of building
if [ -z "${DIODE_BIN_DIR:-}" ]; then cargo build --release -q --bins; fi
B=${DIODE_BIN_DIR:-$PWD/target/release}

D=$(mktemp -d -t diode-bench.XXXXXX)
cleanup() { kill $RP $SP 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$D"; }
RP=; SP=; trap cleanup EXIT
"$B/diode-recv" keygen --dir "$D/k" >/dev/null; "$B/diode-send" keygen --dir "$D/k" >/dev/null
cat >"$D/recv.toml" <<T
listen = "127.0.0.1:47990"
inbox = "in"
state = "rs"
key = "k/receiver.key"
senders = ["k/sender.pub"]
${RECV_EXTRA:-}
T
cat >"$D/send.toml" <<T
target = "127.0.0.1:47990"
outbox = "out"
state = "ss"
key = "k/sender.key"
receiver = "k/receiver.pub"
rate = "$RATE"
${SEND_EXTRA:-}
T
mkdir -p "$D/out"
head -c $((MB << 20)) /dev/urandom >"$D/file.bin"
"$B/diode-recv" --config "$D/recv.toml" 2>"$D/recv.log" & RP=$!
"$B/diode-send" --config "$D/send.toml" 2>"$D/send.log" & SP=$!
sleep 1.5
cpu() { awk '{print $14 + $15}' /proc/$1/stat; }
tck=$(getconf CLK_TCK)
r0=$(cpu $RP); s0=$(cpu $SP); t0=$(date +%s.%N)
PERF_PIDS=
if [ -n "${PROFILE:-}" ]; then  # PROFILE=DIR: cpu-clock profiles of both daemons into DIR (perf report -i)
  mkdir -p "$PROFILE"
  perf record -q -F 499 -e cpu-clock -g -p $RP -o "$PROFILE/recv.perf" 2>/dev/null & PERF_PIDS="$!"
  perf record -q -F 499 -e cpu-clock -g -p $SP -o "$PROFILE/send.perf" 2>/dev/null & PERF_PIDS="$PERF_PIDS $!"
  sleep 0.5
fi
mv "$D/file.bin" "$D/out/file.bin"
end=$((SECONDS + 60))
until [ -e "$D/in/file.bin" ]; do
  kill -0 $RP 2>/dev/null || { tail "$D/recv.log"; echo "receiver died"; exit 1; }
  [ $SECONDS -lt $end ] || { "$B/diode-recv" status --config "$D/recv.toml"; echo "not complete after 60 s (loss above the FEC budget: lower RATE)"; exit 1; }
  sleep 0.02
done
t1=$(date +%s.%N); r1=$(cpu $RP); s1=$(cpu $SP)
[ -z "$PERF_PIDS" ] || { kill -INT $PERF_PIDS; sleep 1; }
rss=$(awk '/VmHWM/ {print $2}' /proc/$RP/status)
lost=$(grep -o 'loss_percent": [0-9.]*' "$D/rs/status.json" | head -1 || true)
awk -v t0="$t0" -v t1="$t1" -v mb="$MB" -v r="$((r1 - r0))" -v s="$((s1 - s0))" -v tck="$tck" -v rss="$rss" 'BEGIN {
  secs = t1 - t0; bytes = mb * 1048576; gb = bytes / 1e9
  printf "file %d MiB in %.2f s: goodput %.0f MB/s\n", mb, secs, bytes / secs / 1e6
  printf "sender CPU %.2f s (%.2f s/GB), receiver CPU %.2f s (%.2f s/GB), receiver peak RSS %.1f MiB\n", s / tck, s / tck / gb, r / tck, r / tck / gb, rss / 1024
}'
echo "status: $lost"
