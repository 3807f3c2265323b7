#!/usr/bin/env python3
"""Draw the Teams app icons (Python standard library only; run again to regenerate them):
color.png, 192x192: a white diode symbol (a triangle pointing at a bar: one way only) on the accent
colour; outline.png, 32x32: the same symbol in white on a transparent background, as Teams requires
of an outline icon."""
import struct
import sys
import zlib
from pathlib import Path

ACCENT = (0x1F, 0x3A, 0x5F, 0xFF)
WHITE = (0xFF, 0xFF, 0xFF, 0xFF)
CLEAR = (0, 0, 0, 0)


def png(path, size, background, ink):
    def inside(x, y):
        # in units of the icon's side: triangle from x=0.25 to 0.62 pointing right, bar at 0.64-0.72
        u, v = (x + 0.5) / size, (y + 0.5) / size
        triangle = 0.25 <= u <= 0.62 and abs(v - 0.5) <= 0.25 * (0.62 - u) / 0.37
        bar = 0.64 <= u <= 0.72 and 0.25 <= v <= 0.75
        return triangle or bar

    rows = b"".join(
        b"\x00" + b"".join(bytes(ink if inside(x, y) else background) for x in range(size))
        for y in range(size)
    )

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # 8-bit RGBA (colour type 6), no interlace
    ihdr = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)
    Path(path).write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")
    )


here = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent)
png(here / "color.png", 192, ACCENT, WHITE)
png(here / "outline.png", 32, CLEAR, WHITE)
