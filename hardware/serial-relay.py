#!/usr/bin/env python3
"""A one-way serial line between two pseudo-terminal pairs, for tests and benchmarks.

    serial-relay.py --dir DIR [--baud 115200] [--bits 10] [--drop P] [--flip P] [--insert P]
                    [--seed N] [--stats FILE]

Creates DIR/tx (the sender opens it as its serial device) and DIR/rx (the receiver's), each a symlink to
the slave side of a pty pair whose master the relay holds. Bytes written to DIR/tx come out of DIR/rx, one
way only: nothing is ever carried back from rx to tx. Like a real line it:

- runs at a fixed speed when --baud is given (baud / bits bytes per second; 10 bits = 8N1),
- drops, flips a bit of, or inserts a random byte with the given per-byte probabilities (seeded),
- loses what nobody reads: when the receiver is not running or not keeping up, bytes are discarded.

Both slave ends are kept open and set raw by the relay, so a sender or receiver may stop and start at any
time. Prints one JSON line with both paths once ready; on SIGTERM or SIGINT writes its counters as JSON to
--stats (and stderr).
"""
import argparse
import errno
import json
import math
import os
import random
import select
import signal
import sys
import time
import tty


def pty_pair(link):
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(os.ttyname(slave), link)
    return master, slave


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--baud", type=int, default=0, help="line speed; 0 = as fast as the ptys go")
    ap.add_argument("--bits", type=int, default=10, help="bits per byte on the line (8N1 = 10)")
    ap.add_argument("--drop", type=float, default=0.0)
    ap.add_argument("--flip", type=float, default=0.0)
    ap.add_argument("--insert", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--stats")
    a = ap.parse_args()

    rng = random.Random(a.seed)
    tx_master, _tx_slave = pty_pair(os.path.join(a.dir, "tx"))
    rx_master, _rx_slave = pty_pair(os.path.join(a.dir, "rx"))
    stats = {"bytes_in": 0, "bytes_out": 0, "dropped": 0, "flipped": 0, "inserted": 0,
             "discarded_unread": 0, "seed": a.seed}
    fault = a.drop + a.flip + a.insert

    def next_gap():
        # bytes until the next fault: geometric with the summed probability (no per-byte draw)
        if fault <= 0:
            return float("inf")
        u = rng.random()
        return int(math.log(1.0 - u) / math.log(1.0 - fault)) if fault < 1 else 0

    gap = next_gap()

    def finish(*_):
        text = json.dumps(stats)
        if a.stats:
            with open(a.stats, "w") as f:
                f.write(text + "\n")
        print("relay: " + text, file=sys.stderr, flush=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, finish)
    signal.signal(signal.SIGINT, finish)
    print(json.dumps({"tx": os.path.join(a.dir, "tx"), "rx": os.path.join(a.dir, "rx")}), flush=True)

    byte_time = a.bits / a.baud if a.baud else 0.0
    next_free = time.monotonic()
    chunk = max(16, a.baud // a.bits // 100) if a.baud else 65536  # about 10 ms of line time
    while True:
        r, _, _ = select.select([tx_master], [], [], 0.5)
        if not r:
            continue
        try:
            data = os.read(tx_master, chunk)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EIO):
                time.sleep(0.01)
                continue
            raise
        stats["bytes_in"] += len(data)
        if fault > 0:
            out = bytearray()
            i = 0
            while i < len(data):
                if gap > 0:
                    take = min(gap, len(data) - i)
                    out += data[i:i + take]
                    i += take
                    gap -= take
                    continue
                kind = rng.random() * fault
                if kind < a.drop:
                    stats["dropped"] += 1
                    i += 1
                elif kind < a.drop + a.flip:
                    out.append(data[i] ^ (1 << rng.randrange(8)))
                    stats["flipped"] += 1
                    i += 1
                else:
                    out.append(rng.randrange(256))
                    stats["inserted"] += 1
                gap = next_gap()
            data = bytes(out)
        if byte_time:
            # the line's speed: these bytes leave no sooner than the previous ones have gone
            now = time.monotonic()
            next_free = max(next_free, now) + len(data) * byte_time
            if next_free - now > 0.001:
                time.sleep(next_free - now)
        try:
            n = os.write(rx_master, data)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EIO):
                raise
            n = 0
        stats["bytes_out"] += n
        stats["discarded_unread"] += len(data) - n


if __name__ == "__main__":
    main()
