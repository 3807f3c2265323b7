#!/usr/bin/env bash
# Approval latency benchmark (not a test): the real daemons over 127.0.0.1 while a large file (default
# 1 GiB) crosses; `diode-chat sign` drops N approval envelopes (default 200) into the outbox, 40 ms apart,
# and each is timed from the moment it is in the outbox (sign has returned: the file was renamed into
# place) until its JSON is in the receiver's approvals/ folder. Prints p50, p99 and max, and whether the
# large file arrived whole. Usage: benches/envelope-latency.sh [N] [FILE_MB] [RATE]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200}; MB=${2:-1024}; RATE=${3:-2Gbit}
# DIODE_BIN_DIR=<folder>: use the binaries there instead of building
if [ -z "${DIODE_BIN_DIR:-}" ]; then cargo build --release -q --bins; fi
B=${DIODE_BIN_DIR:-$PWD/target/release}
D=$(mktemp -d -t diode-envbench.XXXXXX)
RP=; SP=
cleanup() { kill $RP $SP 2>/dev/null || true; wait 2>/dev/null || true; [ -n "${KEEP:-}" ] && echo "kept $D" || rm -rf "$D"; }
trap cleanup EXIT
for b in recv send chat; do "$B/diode-$b" keygen --dir "$D/k" >/dev/null; done
cat >"$D/recv.toml" <<T
listen = "127.0.0.1:47991"
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
target = "127.0.0.1:47991"
outbox = "out"
state = "ss"
key = "k/sender.key"
receiver = "k/receiver.pub"
rate = "$RATE"
T
mkdir -p "$D/out"
cat >"$D/adapter.toml" <<T
key = "k/adapter.key"
outbox = "out"
audit = "chat-audit.jsonl"
T
head -c $((MB << 20)) /dev/urandom >"$D/big.bin"
"$B/diode-recv" --config "$D/recv.toml" 2>"$D/recv.log" & RP=$!
"$B/diode-send" --config "$D/send.toml" 2>"$D/send.log" & SP=$!
sleep 1.5
mv "$D/big.bin" "$D/out/big.bin"
sleep 0.5  # the large file is under way
python3 - "$B/diode-chat" "$D" "$N" <<'PY'
import os, subprocess, sys, time
chat, d, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
pending, lat = {}, []
def poll():
    for i, t0 in list(pending.items()):
        if os.path.exists(f"{d}/approvals/{i}.json"):
            lat.append(time.monotonic() - t0); del pending[i]
nxt = time.monotonic()
for k in range(n):
    digest = "sha256:" + os.urandom(32).hex()
    out = subprocess.run([chat, "sign", "--config", f"{d}/adapter.toml", "--artifact", "billing", "--version", f"1.{k}",
                          "--digest", digest, "--env", "prod", "--approver", "U1:Ada:release-manager",
                          "--approver", "U2:Bob:security", "--requester", "U9", "--reason", "bench"],
                         check=True, capture_output=True, text=True).stdout
    t0 = time.monotonic()
    pending[out.split()[1]] = t0
    nxt += 0.04
    while time.monotonic() < nxt:
        poll(); time.sleep(0.002)
end = time.monotonic() + 30
while pending and time.monotonic() < end:
    poll(); time.sleep(0.002)
lat.sort()
if pending:
    print(f"{len(pending)} of {n} envelopes not in approvals/ after 30 s"); sys.exit(1)
pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000
print(f"{n} envelopes while a large file crossed: p50 {pct(0.50):.0f} ms, p99 {pct(0.99):.0f} ms, max {lat[-1]*1000:.0f} ms")
PY
end=$((SECONDS + 120))
until [ -e "$D/in/big.bin" ]; do
  [ $SECONDS -lt $end ] || { "$B/diode-recv" status --config "$D/recv.toml"; echo "the large file did not complete"; exit 1; }
  sleep 0.1
done
echo "large file: arrived ($MB MiB); envelopes accepted: $(ls "$D/approvals" | wc -l)"
