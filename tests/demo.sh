#!/usr/bin/env bash
# The full demo on loopback: builds the suite, generates keys in a temporary folder, starts diode-recv
# and diode-send with the example configs, drops sample files (a 64 MiB file and a small tree) into the
# outbox, waits until each arrives byte-exact, and prints the throughput; then signs an approval envelope
# with `diode-chat sign` (break-glass) and shows the high side accepting it and a deploy pipeline checking
# and consuming it. Cleans up after itself.
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
"$B/diode-chat" keygen --dir "$D/keys" >/dev/null
cat "$D/keys/sender.pub" "$D/keys/receiver.pub" "$D/keys/adapter.pub"
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
echo "== an approval envelope: signed on the low side (break-glass), verified on the high side"
printf 'key = "keys/adapter.key"\noutbox = "outbox"\naudit = "chat-audit.jsonl"\n' >"$D/adapter.toml"
DIGEST="sha256:$(sha256sum "$D/inbox/release.tar" | cut -d' ' -f1)"
"$B/diode-chat" sign --config "$D/adapter.toml" --artifact release --version 1.0.0 --digest "$DIGEST" \
  --env prod --approver "U1:Ada:release-manager" --approver "U2:Bob:security" --requester U9 --reason "demo"
for _ in $(seq 1 100); do
  [ -n "$(ls "$D/approvals" 2>/dev/null)" ] && break
  sleep 0.05
done
"$B/diode-recv" approvals list --config "$D/recv.toml"
echo "== the deploy pipeline checks and consumes it (exactly once)"
"$B/diode-recv" approvals check --config "$D/recv.toml" --artifact "$DIGEST" --env prod
"$B/diode-recv" approvals consume --config "$D/recv.toml" --artifact "$DIGEST" --env prod
if "$B/diode-recv" approvals check --config "$D/recv.toml" --artifact "$DIGEST" --env prod 2>/dev/null; then
  echo "a consumed approval must not pass check"; exit 1
fi
"$B/diode-recv" audit verify --config "$D/recv.toml"
echo "== demo ok"
