"""Paced UDP load from many loopback hosts: real crash reports interleaved with noise.

    python tests/benchmarks/sender.py --port P --rate 50000 --count 150000 [--hosts 1000]

Host h sends from 127.<h>.x.y (its own address), so a receiver sees ``--hosts``
machines. Each host replays the crash part of a real capture (classic format, 60-odd
datagrams: oops, panic), between noise lines (firewall, link, audit), in order.
``--noise`` is the share of noise datagrams. The schedule is paced in 1 ms slices and
bounded by ``--count`` and ``--max-seconds``. Prints one JSON line: sent, seconds, late.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import re
import socket
import struct
import time
from pathlib import Path

DATA = Path(__file__).parent.parent / "data"
_STAMP = re.compile(rb"^\[\s*(\d+\.\d+)\]")
NOISE = (
    b"[%5d.%06d] IN=eth0 OUT= MAC=52:54:00:12:34:56 SRC=203.0.113.%d DST=198.51.100.2 LEN=60 PROTO=TCP "
    b"SPT=51234 DPT=22 WINDOW=64240 SYN\n",
    b"[%5d.%06d] e1000: eth0 NIC Link is Up 1000 Mbps Full Duplex, Flow Control: RX %d\n",
    b"[%5d.%06d] audit: type=1400 audit(1700000000.123:%d): apparmor=\"DENIED\" operation=\"open\"\n",
)


def crash_datagrams(name: str = "lkdtm-BUG_classic_oopspanic") -> list[bytes]:
    """The crash part of a capture with the three lines before it (context)."""
    rows = [base64.b64decode(json.loads(x)["data_b64"]) for x in (DATA / f"{name}.jsonl").read_text().splitlines()]
    start = next(i for i, d in enumerate(rows) if b"cut here" in d or b"Kernel panic" in d)
    return rows[max(0, start - 3):]


def host_addr(h: int) -> str:
    return f"127.{1 + h // 62500}.{(h // 250) % 250}.{2 + h % 250}"


def kernel_time(datagram: bytes) -> float | None:
    m = _STAMP.search(datagram)
    return float(m.group(1)) if m else None


def schedule(hosts: int, count: int, noise: float, seed: int = 1) -> list[tuple[int, bytes]]:
    """Each host: the crash datagrams in order, noise lines between them.

    A noise line carries its host's own kernel clock (the last crash line's stamp), as a
    real host's would: a stamp going back by more than a second is a reboot to the receiver.
    """
    rnd = random.Random(seed)
    crash = crash_datagrams()
    first = next(t for t in map(kernel_time, crash) if t is not None)
    pos = [0] * hosts
    clock = [first] * hosts
    out: list[tuple[int, bytes]] = []
    for i in range(count):
        h = rnd.randrange(hosts)
        if rnd.random() < noise or pos[h] >= len(crash):
            ts = clock[h]
            out.append((h, NOISE[i % 3] % (int(ts), int(ts * 1e6) % 1000000, i % 250)))
        else:
            d = crash[pos[h]]
            clock[h] = kernel_time(d) or clock[h]
            out.append((h, d))
            pos[h] += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--rate", type=float, required=True, help="datagrams per second")
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--noise", type=float, default=0.5)
    ap.add_argument("--max-seconds", type=float, default=60)
    ap.add_argument("--cpu", type=int, default=None)
    ap.add_argument("--write-schedule", metavar="FILE", help="write the schedule for csender.c and exit")
    a = ap.parse_args()
    if a.write_schedule:
        with open(a.write_schedule, "wb") as f:
            for h, d in schedule(a.hosts, a.count, a.noise):
                f.write(struct.pack("<IH", h, len(d)) + d)
        return
    if a.host not in ("127.0.0.1", "::1"):
        raise SystemExit("loopback targets only")
    if a.cpu is not None:
        os.sched_setaffinity(0, {a.cpu})
    plan = schedule(a.hosts, a.count, a.noise)
    socks = []
    for h in range(a.hosts):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((host_addr(h), 0))
        socks.append(s.sendto)
    target = (a.host, a.port)
    start = time.perf_counter()
    sent = 0
    late = 0.0
    n = len(plan)
    while sent < n:
        now = time.perf_counter() - start
        if now > a.max_seconds:
            break
        due = min(n, int(now * a.rate) + 1)
        if due - sent > a.rate * 0.005:
            late = max(late, (due - sent) / a.rate)
        while sent < due:
            h, d = plan[sent]
            socks[h](d, target)
            sent += 1
        if sent < n:
            wait = sent / a.rate - (time.perf_counter() - start)
            if wait > 0.0005:
                time.sleep(wait)
    print(json.dumps({"sent": sent, "seconds": time.perf_counter() - start, "late": late}))


if __name__ == "__main__":
    main()
