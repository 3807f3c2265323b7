#!/usr/bin/env bash
# Throughput over the emulated one-way link (not a test): two network namespaces joined by a veth pair
# that segments GSO batches like a NIC (hardware/diode-link.sh), random per-datagram loss in nftables.
# For each loss rate the real daemons, one in each namespace, move one file (default 1 GiB) from the
# outbox to the inbox with the default config but `rate`; one line per loss rate: goodput, CPU seconds
# per GB of each daemon, the receiver's peak RSS, frames the kernel dropped at the receiver's socket
# (the receiver fell behind), and whether the file arrived whole without a replay.
# Usage (root): benches/link.sh [SIZE_MB] [RATE] [LOSS_PCT...]   e.g. benches/link.sh 1024 10Gbit 0 1 5
# Environment: DIODE_MTU (default 1500; 9000 for jumbo frames), DIODE_BIN_DIR (binaries to use),
# SEND_EXTRA / RECV_EXTRA (lines added to send.toml / recv.toml, e.g. RECV_EXTRA="open_threads = 1"),
# PROFILE=DIR (cpu-clock profiles of both daemons per loss rate into DIR, for `perf report -i`).
set -euo pipefail
cd "$(dirname "$0")/.."
MB=${1:-1024}; RATE=${2:-10Gbit}; shift $(( $# > 2 ? 2 : $# )) || true
LOSSES=("$@"); [ ${#LOSSES[@]} -gt 0 ] || LOSSES=(0 1 5)
MTU=${DIODE_MTU:-1500}
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)"; exit 1; }
if [ -z "${DIODE_BIN_DIR:-}" ]; then cargo build --release -q --bins; fi
B=$(cd "${DIODE_BIN_DIR:-target/release}" && pwd)
ROOT=$PWD
D=$(mktemp -d -t diode-linkbench.XXXXXX)
export DIODE_NS=lb$$ DIODE_MTU=$MTU
. hardware/diode-link.sh
RP=; SP=
cleanup() { kill $RP $SP 2>/dev/null || true; wait 2>/dev/null || true; link_down >/dev/null 2>&1 || true; rm -rf "$D"; }
trap cleanup EXIT
head -c $((MB << 20)) /dev/urandom >"$D/file.bin"
cpu() { awk '{print $14 + $15}' /proc/$1/stat; }
tck=$(getconf CLK_TCK)
echo "# $(date -u +%FT%TZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); file $MB MiB, rate $RATE, MTU $MTU"
for loss in "${LOSSES[@]}"; do
  link_up "$loss" >/dev/null
  W="$D/run-$loss"; mkdir -p "$W/out"
  "$B/diode-recv" keygen --dir "$W/k" >/dev/null; "$B/diode-send" keygen --dir "$W/k" >/dev/null
  cat >"$W/recv.toml" <<T
listen = "$DIODE_IP_R:47990"
inbox = "in"
state = "rs"
key = "k/receiver.key"
senders = ["k/sender.pub"]
${RECV_EXTRA:-}
T
  cat >"$W/send.toml" <<T
target = "$DIODE_IP_R:47990"
outbox = "out"
state = "ss"
key = "k/sender.key"
receiver = "k/receiver.pub"
rate = "$RATE"
mtu = $MTU
${SEND_EXTRA:-}
T
  ip netns exec "$DIODE_NS_R" "$B/diode-recv" --config "$W/recv.toml" 2>"$W/recv.log" & RP=$!
  ip netns exec "$DIODE_NS_S" "$B/diode-send" --config "$W/send.toml" 2>"$W/send.log" & SP=$!
  sleep 1.5
  PERF_PIDS=
  if [ -n "${PROFILE:-}" ]; then
    mkdir -p "$PROFILE"
    perf record -q -F 499 -e cpu-clock -g -p $RP -o "$PROFILE/recv-$loss.perf" 2>/dev/null & PERF_PIDS="$!"
    perf record -q -F 499 -e cpu-clock -g -p $SP -o "$PROFILE/send-$loss.perf" 2>/dev/null & PERF_PIDS="$PERF_PIDS $!"
    sleep 0.5
  fi
  # the copy into the outbox (a dot-name the sender ignores) before the clock starts, as
  # benches/loopback.sh moves its file in: the time is the transfer's, not the page cache's
  cp "$D/file.bin" "$W/out/.file.bin"
  r0=$(cpu $RP); s0=$(cpu $SP); t0=$(date +%s.%N)
  mv "$W/out/.file.bin" "$W/out/file.bin"
  end=$((SECONDS + 120)); ok=whole
  until [ -e "$W/in/file.bin" ]; do
    kill -0 $RP 2>/dev/null || { tail -3 "$W/recv.log"; ok="receiver died"; break; }
    [ $SECONDS -lt $end ] || { ok="INCOMPLETE after 120 s (a group lost: replay needed)"; break; }
    sleep 0.02
  done
  t1=$(date +%s.%N); r1=$(cpu $RP); s1=$(cpu $SP)
  [ -z "$PERF_PIDS" ] || { kill -INT $PERF_PIDS 2>/dev/null || true; wait $PERF_PIDS 2>/dev/null || true; }
  rss=$(awk '/VmHWM/ {print $2}' /proc/$RP/status)
  sleep 1.2  # one more status write, with the kernel's drop count
  kdrops=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("kernel",{}).get("total","?"))' "$W/rs/status.json" 2>/dev/null || echo "?")
  if [ "$ok" = whole ] && ! cmp -s "$D/file.bin" "$W/in/file.bin"; then ok="CORRUPT"; fi
  batching=$(grep -o 'batching=[a-z]*' "$W/send.log" | head -1 || true)
  awk -v t0="$t0" -v t1="$t1" -v mb="$MB" -v r="$((r1 - r0))" -v s="$((s1 - s0))" -v tck="$tck" -v rss="$rss" \
      -v loss="$loss" -v ok="$ok" -v kd="$kdrops" -v b="$batching" 'BEGIN {
    secs = t1 - t0; bytes = mb * 1048576; gb = bytes / 1e9
    printf "loss %4s%%: %6.0f MB/s, sender %.2f CPU-s/GB, receiver %.2f CPU-s/GB, receiver peak RSS %.0f MiB, kernel drops %s, %s, %s\n",
      loss, bytes / secs / 1e6, s / tck / gb, r / tck / gb, rss / 1024, kd, b, ok
  }'
  kill $RP $SP 2>/dev/null || true; wait $RP $SP 2>/dev/null || true; RP=; SP=
  link_down >/dev/null 2>&1 || true
done
