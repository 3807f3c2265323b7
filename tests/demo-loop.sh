#!/usr/bin/env bash
# The request loop on one machine, over loopback: a pipeline "inside the air gap" asks for a deployment
# with `diode-send request`; the request crosses a reverse link (a diode-send in envelope_only mode and a
# diode-recv) to the low side, where diode-chat verifies the pipeline's signature and posts it to a local
# stand-in for Slack (hardware-free: tests/demo-slack.py speaks Slack's Web API and clicks Approve as two
# people, signing each click as Slack does); the signed approval crosses the forward link and
# `diode-recv approvals wait` returns 0 with it and consumes it as the pipeline ci-runner-3; the high side's
# signed outcome ("deployed by ci-runner-3") crosses the reverse link back and diode-chat updates the
# Slack message with it. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
# DIODE_BIN_DIR=<folder>: use the binaries there instead of building
if [ -z "${DIODE_BIN_DIR:-}" ]; then echo "== building (release)"; cargo build --release -q --bins; fi
B=$(cd "${DIODE_BIN_DIR:-target/release}" && pwd)
D=$(mktemp -d -t diode-loop.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT
P=${DEMO_PORT:-47920}  # P forward link, P+1 reverse link, P+2 diode-chat, P+3 the Slack stand-in
cd "$D"
echo "== keys: forward link (f/), reverse link (r/), adapter and pipeline signing keys"
"$B/diode-recv" keygen --dir f >/dev/null && "$B/diode-send" keygen --dir f >/dev/null
"$B/diode-recv" keygen --dir r >/dev/null && "$B/diode-send" keygen --dir r >/dev/null
"$B/diode-chat" keygen --dir f >/dev/null
"$B/diode-recv" keygen --outcome --dir f >/dev/null
"$B/diode-send" keygen --pipeline --dir r >/dev/null
cat >fwd-recv.toml <<T
listen = "127.0.0.1:$P"
inbox = "high/inbox"
state = "high/state"
key = "f/receiver.key"
senders = ["f/sender.pub"]
[approvals]
adapters = ["f/adapter.pub"]
folder = "high/approvals"
quarantine = "high/quarantine"
[approvals.rules.prod]
min_approvals = 2
required_roles = ["release-manager", "security"]
max_validity_secs = 86400
[approvals.outcomes]
outbox = "high/requests"
key = "f/outcome.key"
name = "the high side"
T
cat >fwd-send.toml <<T
target = "127.0.0.1:$P"
outbox = "low/outbox"
state = "low/send-state"
key = "f/sender.key"
receiver = "f/receiver.pub"
rate = "200Mbit"
T
cat >rev-send.toml <<T
target = "127.0.0.1:$((P + 1))"
outbox = "high/requests"
state = "high/send-state"
key = "r/sender.key"
receiver = "r/receiver.pub"
rate = "10Mbit"
envelope_only = true
pipeline_key = "r/pipeline.key"
T
cat >rev-recv.toml <<T
listen = "127.0.0.1:$((P + 1))"
inbox = "low/requests"
state = "low/recv-state"
key = "r/receiver.key"
senders = ["r/sender.pub"]
T
cat >adapter.toml <<T
key = "f/adapter.key"
outbox = "low/outbox"
audit = "low/chat/audit.jsonl"
state = "low/chat/chat.sqlite"
[audit_shipping]
enabled = false
[http]
listen = "127.0.0.1:$((P + 2))"
tick = "500ms"
[slack]
api_base = "http://127.0.0.1:$((P + 3))/api"
bot_token = "env:DEMO_SLACK_BOT_TOKEN"
signing_secret = "env:DEMO_SLACK_SIGNING_SECRET"
[reverse]
inbox = "low/requests"
pipeline_keys = ["r/pipeline.pub"]
outcome_keys = ["f/outcome.pub"]
[people.ada]
name = "Ada Lovelace"
slack = "U0ADA"
roles = ["release-manager"]
[people.bob]
name = "Bob Kahn"
slack = "U0BOB"
roles = ["security"]
[environments.prod]
channel = "C0PROD"
approvers = ["release-manager", "security"]
approvals = 2
required_roles = ["release-manager", "security"]
rejecters = ["release-manager", "security"]
deadline = "1h"
remind_every = "30m"
T
mkdir -p low/outbox high/requests
export DEMO_SLACK_BOT_TOKEN=xoxb-demo DEMO_SLACK_SIGNING_SECRET=demo-signing-secret
echo "== starting both links, diode-chat and the Slack stand-in (logs in $D/*.log)"
"$B/diode-recv" --config fwd-recv.toml 2>fwd-recv.log & PIDS+=($!)
"$B/diode-send" --config fwd-send.toml 2>fwd-send.log & PIDS+=($!)
"$B/diode-recv" --config rev-recv.toml 2>rev-recv.log & PIDS+=($!)
"$B/diode-send" --config rev-send.toml 2>rev-send.log & PIDS+=($!)
python3 "$OLDPWD/tests/demo-slack.py" $((P + 3)) $((P + 2)) "$DEMO_SLACK_SIGNING_SECRET" 2>slack.log & PIDS+=($!)
"$B/diode-chat" --config adapter.toml serve 2>chat.log & PIDS+=($!)
sleep 1.5
echo "== high side, the pipeline asks: diode-send request"
DIGEST="sha256:$(head -c 1000000 /dev/urandom | sha256sum | cut -d' ' -f1)"
ID=$("$B/diode-send" --config rev-send.toml request --artifact billing --version 2.0.0 --digest "$DIGEST" \
  --env prod --reason "release train 48" --requester pipeline:release)
echo "   request id $ID"
echo "== high side, the pipeline waits: diode-recv approvals wait --request $ID --consume --by ci-runner-3"
set +e
ENV_ID=$("$B/diode-recv" --config fwd-recv.toml approvals wait --request "$ID" --timeout 60s --consume --by ci-runner-3)
code=$?
set -e
echo "== what happened on the low side:"
sed 's/^/   /' slack.log
if [ $code != 0 ]; then
  echo "approvals wait exited $code"; tail -5 chat.log rev-recv.log fwd-recv.log; exit 1
fi
echo "== approvals wait exited 0: approval $ENV_ID for request $ID, consumed"
python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["envelope"]; print("   request_id", e["request_id"], "digest", e["artifact"]["digest"][:23] + "...", "approved by", ", ".join(a["name"] for a in e["approvers"]))' "high/approvals/$ENV_ID.json"
echo "== the outcome comes back: the high side signs each audit record, the reverse link carries it, diode-chat updates the message"
for _ in $(seq 1 150); do grep -q "Deployed to" slack.log && break; sleep 0.2; done
if ! grep -q "Deployed to" slack.log; then echo "no outcome came back"; tail -5 chat.log rev-recv.log fwd-recv.log; exit 1; fi
grep "Deployed to" slack.log | tail -1 | sed 's/^/   /'
echo "== diode-chat audit verify (its own chain, and the high side's records that came back):"
"$B/diode-chat" --config adapter.toml audit verify | sed 's/^/   /'
echo "== loop demo ok"
