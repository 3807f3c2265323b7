#!/usr/bin/env python3
"""A seeded userspace impairment relay for the emulated diode (python3 stdlib only).

Receives UDP datagrams on --listen and forwards each one to --target, applying, in this order:
  loss       Gilbert-Elliott (simple Gilbert: every frame in the Bad state is lost, none in the Good one),
             parameterised by the mean loss rate --loss PCT and the mean burst length --burst FRAMES:
             P(Bad->Good) = 1/burst, P(Good->Bad) = loss*r/(1-loss); --burst 0 gives independent loss
  bit flips  --flip PCT of the frames get one random bit inverted
  reordering --reorder PCT of the frames are held back and sent after 1..--reorder-window later frames
             (or after --reorder-ms if traffic pauses)
  duplicates --dup PCT of the frames are sent twice
Each impairment draws from its own generator seeded from --seed, so a run is reproducible: the same input
sequence and seed give the same decisions and the same counts, whatever the timing.

One way only: the relay sends nothing but datagrams to --target, from a separate socket; a datagram that
comes from the target address itself is dropped (counted as "looped"), never sent back. Nothing is ever
sent towards a source.

On SIGTERM / SIGINT (or after --exit-idle seconds without traffic) it prints one line of counts to stdout;
--stats FILE gets the same counts as JSON every second and at exit (written atomically).

  relay.py --listen 10.231.7.2:47041 --target 127.0.0.1:47042 --loss 3 --burst 30 --seed 1 --stats st.json
"""
import argparse
import json
import os
import random
import signal
import socket
import struct
import sys
import time

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; not exported by the socket module
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)

COUNTS = ("received", "forwarded", "dropped", "duplicated", "reordered", "flipped")


def parse_addr(text):
    """'HOST:PORT' or '[V6]:PORT' -> (family, sockaddr)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        info = socket.getaddrinfo(host or "0.0.0.0", int(port), type=socket.SOCK_DGRAM)
    except socket.gaierror as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None
    return info[0][0], info[0][4]


def percent(text):
    v = float(text)
    if not 0.0 <= v <= 100.0:
        raise argparse.ArgumentTypeError(f"{text}: use a percent 0-100")
    return v / 100.0


def set_buf(sock, force, plain, size):
    """Ask for `size` bytes; SO_*BUFFORCE passes net.core.[rw]mem_max when we hold CAP_NET_ADMIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)


class Stats:
    def __init__(self, args):
        self.c = dict.fromkeys(COUNTS, 0)
        self.c.update(received_bytes=0, forwarded_bytes=0, dropped_bytes=0, loss_bursts=0, max_burst=0,
                      looped=0, send_errors=0)
        self.args = args
        self.t0 = time.monotonic()

    def line(self):
        c = self.c
        mean = c["dropped"] / c["loss_bursts"] if c["loss_bursts"] else 0.0
        return (" ".join(f"{k}={c[k]}" for k in COUNTS)
                + f" received_bytes={c['received_bytes']} forwarded_bytes={c['forwarded_bytes']}"
                + f" dropped_bytes={c['dropped_bytes']} loss_bursts={c['loss_bursts']}"
                + f" mean_burst={mean:.2f} max_burst={c['max_burst']} looped={c['looped']}"
                + f" send_errors={c['send_errors']} seed={self.args.seed}")

    def write(self, path, rcvbuf):
        if not path:
            return
        doc = dict(self.c)
        doc.update(seed=self.args.seed, elapsed_s=round(time.monotonic() - self.t0, 3), rcvbuf=rcvbuf,
                   loss_pct=self.args.loss * 100, burst=self.args.burst, reorder_pct=self.args.reorder * 100,
                   dup_pct=self.args.dup * 100, flip_pct=self.args.flip * 100)
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            with open(tmp, "w") as f:
                json.dump(doc, f, sort_keys=True)
                f.write("\n")
            os.replace(tmp, path)
        except OSError as e:
            print(f"relay: cannot write {path}: {e}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--listen", required=True, type=parse_addr, help="HOST:PORT to receive on")
    ap.add_argument("--target", required=True, type=parse_addr, help="HOST:PORT to forward to")
    ap.add_argument("--bind", type=parse_addr, help="source HOST:PORT for forwarded datagrams (default: any)")
    ap.add_argument("--loss", type=percent, default=0.0, help="mean loss rate, percent (default 0)")
    ap.add_argument("--burst", type=float, default=1.0,
                    help="mean loss burst length in frames, >= 1; 0 = independent losses (default 1)")
    ap.add_argument("--reorder", type=percent, default=0.0, help="percent of frames delivered late")
    ap.add_argument("--reorder-window", type=int, default=8, help="a late frame comes after 1..N later ones")
    ap.add_argument("--reorder-ms", type=float, default=5.0, help="longest hold of a late frame when idle")
    ap.add_argument("--dup", type=percent, default=0.0, help="percent of frames sent twice")
    ap.add_argument("--flip", type=percent, default=0.0, help="percent of frames with one bit inverted")
    ap.add_argument("--seed", type=int, default=0, help="seed of every random decision (default 0)")
    ap.add_argument("--stats", help="write counts as JSON to this file every second and at exit")
    ap.add_argument("--rcvbuf-mb", type=int, default=32, help="receive buffer to ask for (default 32 MiB)")
    ap.add_argument("--exit-idle", type=float, default=0.0,
                    help="exit after this many seconds without a datagram, once one has arrived")
    a = ap.parse_args()
    if a.burst != 0 and a.burst < 1:
        ap.error("--burst: use 0 (independent losses) or a mean burst length >= 1")
    if a.reorder_window < 1:
        ap.error("--reorder-window: use 1 or more")
    if a.listen[1] == a.target[1]:
        ap.error("--listen and --target are the same address")

    # Gilbert parameters: stationary P(Bad) = p / (p + r) = loss, mean sojourn in Bad = 1 / r = burst
    ge_r = ge_p = 0.0
    if 0 < a.loss < 1 and a.burst >= 1:
        ge_r = 1.0 / a.burst
        ge_p = a.loss * ge_r / (1.0 - a.loss)
        if ge_p > 1.0:
            ap.error(f"--loss {a.loss * 100:g} is too high for --burst {a.burst:g} "
                     f"(at most {100 / (1 + ge_r):.1f}%)")

    rx = socket.socket(a.listen[0], socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    set_buf(rx, SO_RCVBUFFORCE, socket.SO_RCVBUF, a.rcvbuf_mb << 20)
    rx.bind(a.listen[1])
    rcvbuf = rx.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    tx = socket.socket(a.target[0], socket.SOCK_DGRAM)
    set_buf(tx, SO_SNDBUFFORCE, socket.SO_SNDBUF, 4 << 20)
    if a.bind:
        tx.bind(a.bind[1])
    if rcvbuf < (a.rcvbuf_mb << 20):
        print(f"relay: receive buffer is {rcvbuf} bytes, asked for {a.rcvbuf_mb} MiB "
              "(run as root or raise net.core.rmem_max)", file=sys.stderr)

    stats = Stats(a)
    c = stats.c
    stop = []

    def on_signal(signum, _frame):
        stop.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    # the socket wakes up on its own (SO_RCVTIMEO) so held frames, stats and signals are seen when idle
    tick_s = min(0.1, a.reorder_ms / 1000.0) if a.reorder > 0 else 0.1
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                  struct.pack("ll", int(tick_s), int((tick_s % 1) * 1e6)))

    rng = {k: random.Random(f"{a.seed}:{k}") for k in ("loss", "flip", "reorder", "dup")}
    loss_rand, flip_rand = rng["loss"].random, rng["flip"].random
    reorder_rand, dup_rand = rng["reorder"].random, rng["dup"].random
    flip_bit, reorder_k = rng["flip"].randrange, rng["reorder"].randint
    loss, burst, flip, reorder, dup = a.loss, a.burst, a.flip, a.reorder, a.dup
    window, hold_s = a.reorder_window, a.reorder_ms / 1000.0
    target = a.target[1]
    send = tx.sendto
    recv_into = rx.recvfrom_into
    buf = bytearray(65536)
    mv = memoryview(buf)

    bad = False          # Gilbert state
    run = 0              # current run of consecutive losses
    sent_seq = 0         # frames sent so far (not counting held ones), clocks the reordering window
    held = []            # [release_at_seq, deadline, data, duplicate]
    last_rx = None
    next_stats = time.monotonic() + 1.0

    def emit(data, twice):
        for _ in range(2 if twice else 1):
            try:
                send(data, target)
                c["forwarded"] += 1
                c["forwarded_bytes"] += len(data)
            except OSError:
                c["send_errors"] += 1

    def release(now, everything):
        keep = []
        for h in held:
            if everything or h[0] <= sent_seq or h[1] <= now:
                emit(h[2], h[3])
            else:
                keep.append(h)
        held[:] = keep

    def tick():
        nonlocal next_stats
        now = time.monotonic()
        if held:
            release(now, False)
        if now >= next_stats:
            stats.write(a.stats, rcvbuf)
            next_stats = now + 1.0

    while not stop:
        try:
            n, src = recv_into(buf)
        except (BlockingIOError, TimeoutError, InterruptedError):
            if held:
                release(0, True)  # traffic paused: nothing more can overtake them
            tick()
            if a.exit_idle and last_rx is not None and time.monotonic() - last_rx >= a.exit_idle:
                break
            continue
        c["received"] += 1
        c["received_bytes"] += n
        if (c["received"] & 255) == 0:
            last_rx = time.monotonic()
            tick()
        elif last_rx is None:
            last_rx = time.monotonic()
        if src == target:
            c["looped"] += 1
            continue

        if loss:
            if burst:
                if bad:
                    if loss_rand() < ge_r:
                        bad = False
                elif loss_rand() < ge_p or loss >= 1.0:
                    bad = True
                lost = bad
            else:
                lost = loss_rand() < loss
            if lost:
                c["dropped"] += 1
                c["dropped_bytes"] += n
                if run == 0:
                    c["loss_bursts"] += 1
                run += 1
                if run > c["max_burst"]:
                    c["max_burst"] = run
                continue
            run = 0

        data = mv[:n]
        if flip and flip_rand() < flip and n:
            data = bytearray(data)
            bit = flip_bit(n * 8)
            data[bit >> 3] ^= 1 << (bit & 7)
            c["flipped"] += 1
        twice = bool(dup) and dup_rand() < dup
        if twice:
            c["duplicated"] += 1
        if reorder and reorder_rand() < reorder:
            c["reordered"] += 1
            held.append([sent_seq + reorder_k(1, window), time.monotonic() + hold_s, bytes(data), twice])
            continue
        emit(data, twice)
        sent_seq += 1
        if held:
            release(0, False)  # deadlines are checked in tick()

    release(0, True)
    stats.write(a.stats, rcvbuf)
    print("relay: " + stats.line(), flush=True)


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:
        sys.exit(1)
