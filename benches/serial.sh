#!/usr/bin/env bash
# Serial benchmark (not a test): the real daemons with link = "serial" on the two ends of
# hardware/serial-relay.py, which carries bytes one way at BAUD (default 115200, 8N1: 11520 bytes/s) like
# a real line. Measures:
#   1. goodput: a FILE_KB (default 512) file from outbox to inbox, in bytes/s and as a share of the line's
#      byte rate;
#   2. approval latency on an idle line: 5 signed envelopes (~1 KiB each), each from the moment it is in
#      the outbox to its JSON in approvals/;
#   3. the same for an envelope dropped while a file is crossing.
# Usage: benches/serial.sh [BAUD] [FILE_KB] [PARITY]   (PARITY: parity shards per 128, default 8)
set -euo pipefail
cd "$(dirname "$0")/.."
BAUD=${1:-115200}; KB=${2:-512}; PARITY=${3:-8}
if [ -z "${DIODE_BIN_DIR:-}" ]; then cargo build --release -q --bins; fi
B=${DIODE_BIN_DIR:-$PWD/target/release}
D=$(mktemp -d -t diode-serialbench.XXXXXX)
RELAY=; RP=; SP=
cleanup() { kill $RP $SP $RELAY 2>/dev/null || true; wait 2>/dev/null || true; [ -n "${KEEP:-}" ] && echo "kept $D" || rm -rf "$D"; }
trap cleanup EXIT
for b in recv send chat; do "$B/diode-$b" keygen --dir "$D/k" >/dev/null; done
python3 hardware/serial-relay.py --dir "$D" --baud "$BAUD" --stats "$D/relay.json" >"$D/relay.ready" 2>"$D/relay.log" & RELAY=$!
until [ -s "$D/relay.ready" ]; do sleep 0.05; done
cat >"$D/recv.toml" <<T
link = "serial"
device = "rx"
baud = $BAUD
inbox = "in"
state = "rs"
key = "k/receiver.key"
senders = ["k/sender.pub"]
[approvals]
adapters = ["k/adapter.pub"]
[approvals.rules.prod]
min_approvals = 2
required_roles = ["release-manager", "security"]
max_validity_secs = 86400
T
cat >"$D/send.toml" <<T
link = "serial"
device = "tx"
baud = $BAUD
outbox = "out"
state = "ss"
key = "k/sender.key"
receiver = "k/receiver.pub"
parity_shards = $PARITY
T
mkdir -p "$D/out"
printf 'key = "k/adapter.key"\noutbox = "out"\naudit = "chat-audit.jsonl"\n' >"$D/adapter.toml"
"$B/diode-recv" --config "$D/recv.toml" 2>"$D/recv.log" & RP=$!
"$B/diode-send" --config "$D/send.toml" 2>"$D/send.log" & SP=$!
until grep -q '"link":"up"\|"link": "up"' "$D/rs/status.json" 2>/dev/null; do sleep 0.1; done
head -c $((KB << 10)) /dev/urandom >"$D/file.bin"
python3 - "$B/diode-chat" "$D" "$BAUD" "$KB" <<'PY'
import os, subprocess, sys, time
chat, d, baud, kb = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
line = baud / 10  # bytes per second, 8N1

def wait(path, limit):
    t0 = time.monotonic()
    while not os.path.exists(path):
        if time.monotonic() - t0 > limit:
            sys.exit(f"{path} did not arrive in {limit} s")
        time.sleep(0.005)

def sign(k):
    out = subprocess.run([chat, "sign", "--config", f"{d}/adapter.toml", "--artifact", "billing",
                          "--version", f"1.{k}", "--digest", "sha256:" + os.urandom(32).hex(),
                          "--env", "prod", "--approver", "U1:Ada Lovelace:release-manager",
                          "--approver", "U2:Bob Kahn:security", "--requester", "U9",
                          "--reason", "serial bench"], check=True, capture_output=True, text=True).stdout
    eid = out.split()[1]
    try:
        return eid, os.path.getsize(f"{d}/out/{eid}.envelope")
    except OSError:  # already taken by the sender
        return eid, 0

size = os.path.getsize(f"{d}/file.bin")
t0 = time.monotonic()
os.rename(f"{d}/file.bin", f"{d}/out/file.bin")
wait(f"{d}/in/file.bin", size / line * 3 + 30)
secs = time.monotonic() - t0
good = size / secs
print(f"goodput: {size} bytes in {secs:.1f} s = {good:.0f} B/s = {100 * good / line:.1f}% of the line's {line:.0f} B/s ({baud} baud 8N1)")
time.sleep(2)
lat, sizes = [], []
for k in range(5):
    t0 = time.monotonic()
    eid, n = sign(k)
    wait(f"{d}/approvals/{eid}.json", 30)
    lat.append(time.monotonic() - t0); sizes.append(n)
    time.sleep(1.5)
print(f"envelope on an idle line ({min(sizes)}-{max(sizes)} bytes): " + ", ".join(f"{x*1000:.0f}" for x in lat) + f" ms (max {max(lat)*1000:.0f} ms)")
with open(f"{d}/busy.bin", "wb") as f:
    f.write(os.urandom(64 << 10))
os.rename(f"{d}/busy.bin", f"{d}/out/busy.bin")
time.sleep(1.5)
t0 = time.monotonic()
eid, n = sign(99)
wait(f"{d}/approvals/{eid}.json", 30)
print(f"envelope while a file crosses: {(time.monotonic() - t0) * 1000:.0f} ms")
PY
kill $SP 2>/dev/null; SP=
kill -TERM $RELAY; wait $RELAY 2>/dev/null || true; RELAY=
echo "relay: $(cat "$D/relay.json")"
