"""Playing real netconsole captures (tests/data/*.jsonl) over UDP from several loopback sources.

Each capture keeps its own timing (scaled by ``speed``); several captures play at once,
interleaved by time, each from its own source address (127.0.0.x or ::1), which is how
several crashing machines look to a receiver.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import time
from pathlib import Path

DATA = Path(__file__).parent / "data"


def capture(name: str) -> list[tuple[float, bytes]]:
    """(seconds since the capture's first datagram, datagram) for a capture in tests/data."""
    rows = [json.loads(line) for line in (DATA / f"{name}.jsonl").read_text().splitlines() if line.strip()]
    t0 = rows[0]["t"]
    return [(r["t"] - t0, base64.b64decode(r["data_b64"])) for r in rows]



_CLASSIC_STAMP = re.compile(rb"(?m)^\[ *(\d+)\.(\d{6})\]")
_EXTENDED_HEAD = re.compile(rb"^(\d+),(\d+),(\d+),")


def later(rows: list[tuple[float, bytes]], seconds: int) -> list[tuple[float, bytes]]:
    """The same capture as the machine would send it ``seconds`` later in the same boot (its
    kernel times moved on): a second crash, not the log buffer sent again (whose kernel times
    repeat, and which the receiver does not report twice)."""
    def classic(m: re.Match[bytes]) -> bytes:
        return b"[%5d.%s]" % (int(m.group(1)) + seconds, m.group(2))

    def extended(m: re.Match[bytes]) -> bytes:
        return b"%s,%s,%d," % (m.group(1), m.group(2), int(m.group(3)) + seconds * 1_000_000)

    return [(at, _EXTENDED_HEAD.sub(extended, _CLASSIC_STAMP.sub(classic, data), count=1)) for at, data in rows]


def play(target: tuple[str, int], plays: dict[str, list[tuple[float, bytes]]], speed: float = 1.0,
         timeout: float = 60.0, sport: int = 0) -> int:
    """Send every stream in ``plays`` (source ip -> timed datagrams) to ``target``; datagrams sent.
    ``sport``: the source port (netconsole sends from a fixed one, 6665 by default)."""
    family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    socks = {}
    for src in plays:
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.bind((src, sport))
        socks[src] = s
    merged = sorted((at / speed, n, src, data) for src, rows in plays.items() for n, (at, data) in enumerate(rows))
    start = time.monotonic()
    sent = 0
    try:
        for at, _, src, data in merged:
            delay = start + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"sending took more than {timeout} s")
            socks[src].sendto(data, target)
            sent += 1
    finally:
        for s in socks.values():
            s.close()
    return sent
