#!/usr/bin/env python3
"""A stand-in for Slack in tests/demo-loop.sh: answers diode-chat's Web API calls (chat.postMessage,
chat.update, chat.postEphemeral) as Slack does, and when a request with Approve buttons is posted, clicks
Approve as Ada (release-manager) and then Bob (security), each click signed as Slack signs it (v0,
HMAC-SHA256 of "v0:<timestamp>:<body>" with the signing secret).

    demo-slack.py SLACK_PORT ADAPTER_PORT SIGNING_SECRET
"""
import hashlib
import hmac
import json
import os
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

slack_port, adapter_port, secret = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode()
n = [0]


def say(text):
    print(text, file=sys.stderr, flush=True)


def click(user, request):
    payload = json.dumps({
        "type": "block_actions",
        # a fresh trigger_id per delivery, as Slack sends: the adapter takes each delivery once
        "trigger_id": "%d.%d.%s" % (time.time(), os.getpid(), os.urandom(16).hex()),
        "user": {"id": user, "username": user.lower()},
        "channel": {"id": "C0PROD"},
        "actions": [{"action_id": "approve", "block_id": "decision", "value": request, "type": "button"}],
    })
    body = urllib.parse.urlencode({"payload": payload}).encode()
    ts = str(int(time.time()))
    sig = "v0=" + hmac.new(secret, b"v0:" + ts.encode() + b":" + body, hashlib.sha256).hexdigest()
    req = urllib.request.Request(f"http://127.0.0.1:{adapter_port}/slack/interactions", data=body, headers={
        "content-type": "application/x-www-form-urlencoded",
        "x-slack-request-timestamp": ts, "x-slack-signature": sig})
    with urllib.request.urlopen(req, timeout=10) as r:
        say(f"{user} clicked Approve: HTTP {r.status}")


def clicks(request):
    time.sleep(0.5)
    click("U0ADA", request)
    time.sleep(0.5)
    click("U0BOB", request)


class Slack(BaseHTTPRequestHandler):
    def do_POST(self):
        method = self.path.rsplit("/", 1)[-1]
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        n[0] += 1
        text = body.get("text", "")
        say(f"Slack {method} in {body.get('channel', '?')}: {text[:220]}")
        for block in body.get("blocks", []):
            if method == "chat.postMessage" and block.get("type") == "actions":
                threading.Thread(target=clicks, args=(block["elements"][0]["value"],)).start()
        ts = body.get("ts") if method == "chat.update" else f"1700000000.{n[0]:06d}"
        out = json.dumps({"ok": True, "channel": body.get("channel"), "ts": ts}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *_):
        pass


ThreadingHTTPServer(("127.0.0.1", slack_port), Slack).serve_forever()
