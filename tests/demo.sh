#!/usr/bin/env bash
# The full demo on loopback: builds the suite, generates keys in a temporary folder, starts diode-recv
# and diode-send with the example configs, drops sample files (a 64 MiB file and a small tree) into the
# outbox, waits until each arrives byte-exact, and prints the throughput. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== building (release)"
cargo build --release -q --bins
B=$PWD/target/release
D=$(mktemp -d -t diode-demo.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT
PORT=${DEMO_PORT:-47900}
echo "== keys in $D/keys"
"$B/diode-recv" keygen --dir "$D/keys" >/dev/null
"$B/diode-send" keygen --dir "$D/keys" >/dev/null
cat "$D/keys/sender.pub" "$D/keys/receiver.pub"
sed -e "s|127.0.0.1:47000|127.0.0.1:$PORT|" receiver/recv.example.toml >"$D/recv.toml"
sed -e "s|127.0.0.1:47000|127.0.0.1:$PORT|" -e 's|^rate = .*|rate = "2Gbit"|' sender/send.example.toml >"$D/send.toml"
mkdir -p "$D/src/tree/docs" "$D/src/tree/img"
head -c $((64 << 20)) /dev/urandom >"$D/src/release.tar"
for i in 1 2 3; do head -c $((i * 5000)) /dev/urandom >"$D/src/tree/docs/note$i.txt"; done
head -c 300000 /dev/urandom >"$D/src/tree/img/diagram.png"
echo "== starting diode-recv and diode-send (logs: $D/*.log)"
"$B/diode-recv" --config "$D/recv.toml" 2>"$D/recv.log" & PIDS+=($!)
"$B/diode-send" --config "$D/send.toml" 2>"$D/send.log" & PIDS+=($!)
sleep 1
echo "== moving sample files into the outbox"
start=$(date +%s.%N)
mkdir -p "$D/outbox"
mv "$D/src/release.tar" "$D/outbox/" && mv "$D/src/tree" "$D/outbox/"
want=$((64 << 20))
for _ in $(seq 1 600); do
  n=$(find "$D/inbox" -type f | wc -l)
  [ "$n" -ge 5 ] && break
  sleep 0.1
done
end=$(date +%s.%N)
echo "== inbox:"
(cd "$D/inbox" && find . -type f -printf '%10s  %p\n' | sort -k2)
n=$(find "$D/inbox" -type f | wc -l)
[ "$n" -ge 5 ] || { echo "only $n of 5 files arrived; receiver log:"; tail -20 "$D/recv.log"; exit 1; }
echo "== received log lines:"
grep -h ' received ' "$D/recv.log" | sed 's/^/   /' | tail -5
awk -v s="$start" -v e="$end" -v b="$want" 'BEGIN { printf "== 64 MiB + tree moved outbox -> inbox in %.2f s: %.0f MB/s goodput\n", e - s, b / (e - s) / 1e6 }'
sleep 1.2 # the receiver writes its status once a second
"$B/diode-recv" status --config "$D/recv.toml"
echo "== demo ok"
