"""Assembler throughput on one core: real crash traffic and noise from many hosts.

    python tests/benchmarks/bench_assembler.py

Crash traffic: every datagram of the real captures under tests/data/ (boot-log replay
and crash), replayed from 1,000 hosts interleaved. Noise: typical non-crash kernel lines
(firewall, link, audit) from 10,000 hosts. Prints lines per second beside the targets
(300,000 noise lines/s, 150,000 crash lines/s) and, as the ceiling measured in the same
run, a bare loop that only splits each datagram into lines.
"""

from __future__ import annotations

import glob
import os
import time

from kpr_omprog.assembler import Assembler
from kpr_omprog.capture import parse_line

HERE = os.path.dirname(os.path.abspath(__file__))


def load_crash(hosts: int = 1000) -> list[tuple[bytes, tuple[str, int], float]]:
    per_host = []
    for path in sorted(glob.glob(os.path.join(HERE, "..", "data", "*.jsonl"))):
        with open(path) as f:
            per_host.append([parse_line(x, path).data for x in f if x.strip()])
    items = []
    t = 1000.0
    streams = [per_host[h % len(per_host)] for h in range(hosts)]
    for i in range(max(len(s) for s in streams)):
        for h, s in enumerate(streams):
            if i < len(s):
                t += 1e-6
                items.append((s[i], (f"10.{h >> 8}.{h & 255}.1", 6665), t))
    return items


def load_noise(n: int = 400_000, hosts: int = 10_000) -> list[tuple[bytes, tuple[str, int], float]]:
    samples = [
        b"[%5d.%06d] IN=eth0 OUT= MAC=52:54:00:12:34:56 SRC=203.0.113.7 DST=198.51.100.2 LEN=60 PROTO=TCP "
        b"SPT=51234 DPT=22 WINDOW=64240 SYN\n",
        b"[%5d.%06d] e1000: eth0 NIC Link is Up 1000 Mbps Full Duplex, Flow Control: RX\n",
        b"[%5d.%06d] audit: type=1400 audit(1700000000.123:42): apparmor=\"DENIED\" operation=\"open\"\n",
        b"6,%d,%d,-;systemd-journald[312]: Received client request to flush runtime journal.\n",
    ]
    out = []
    for i in range(n):
        s = samples[i % len(samples)]
        h = i % hosts
        # a host's extended records are numbered one after another, as the kernel numbers them
        stamp = (i // hosts, i) if s[:1] == b"6" else (i // 1000, i % 1000000)
        out.append((s % stamp, (f"10.{h >> 8}.{h & 255}.2", 6665), 1000 + i * 1e-5))
    return out


def lines_in(items: list[tuple[bytes, tuple[str, int], float]]) -> int:
    return sum(max(1, d.count(b"\n")) for d, _, _ in items)


def run(items: list[tuple[bytes, tuple[str, int], float]]) -> tuple[float, int]:
    asm = Assembler()
    feed = asm.feed
    t0 = time.perf_counter()
    reports = 0
    for d, src, at in items:
        reports += len(feed(d, src, at))
    reports += len(asm.close_all())
    return time.perf_counter() - t0, reports


def ceiling(items: list[tuple[bytes, tuple[str, int], float]]) -> float:
    t0 = time.perf_counter()
    per_host: dict[str, int] = {}
    for d, src, _ in items:
        for _line in d.split(b"\n"):
            per_host[src[0]] = per_host.get(src[0], 0) + 1
    return time.perf_counter() - t0


def essentials(items: list[tuple[bytes, tuple[str, int], float]]) -> float:
    """Seconds for only the steps a classic noise line cannot skip (host lookup and LRU move,
    the prefix regex, decoding, classifying, the context ring), inline: what is left of the
    assembler's time beyond this is structure (calls, the Line object, format and bound checks)."""
    from collections import OrderedDict, deque

    from kpr_omprog.crash import classify
    from kpr_omprog.netconsole import _CLASSIC_PREFIX

    hosts: OrderedDict[str, deque[tuple[str, float, float | None]]] = OrderedDict()
    t0 = time.perf_counter()
    for d, src, at in items:
        ring = hosts.get(src[0])
        if ring is None:
            ring = hosts[src[0]] = deque(maxlen=10)
        else:
            hosts.move_to_end(src[0])
        raw = d[:-1]
        ts = None
        m = _CLASSIC_PREFIX.match(raw)
        if m is not None:
            stamp = m.group(2)
            ts = float(stamp) if stamp else None
            raw = raw[m.end():]
        text = raw.decode()
        classify(text)
        ring.append((text, at, ts))
    return time.perf_counter() - t0


def rows() -> list[object]:
    """The two assembler rows of the benchmark table (see run_all.py)."""
    from common import Row

    out = []
    for name, items, target in (("crash traffic, 1,000 hosts", load_crash(), 150_000),
                                ("noise, 10,000 hosts", load_noise(), 300_000)):
        n = lines_in(items)
        best = min(run(items)[0] for _ in range(3))
        ceil = min(ceiling(items) for _ in range(3))
        out.append(Row(f"3. assembler alone, {name} (vs split-into-lines loop)", n / best, n / ceil, "lines/s",
                       f">= {target:,} lines/s", n / best >= target))
    return out


def main() -> None:
    for name, items, target in (("crash traffic (1,000 hosts)", load_crash(), 150_000),
                                ("noise (10,000 hosts)", load_noise(), 300_000)):
        n = lines_in(items)
        best = min(run(items)[0] for _ in range(3))
        _, reports = run(items)
        ceil = min(ceiling(items) for _ in range(3))
        print(f"{name:30s} {n:>9,} lines  {n / best:>11,.0f} lines/s  target {target:>9,}  "
              f"{'MET' if n / best >= target else 'NOT MET'}  ceiling (split only) {n / ceil:>12,.0f} lines/s "
              f"({100 * ceil / best:.0f}%)  reports {reports}")
    noise = [x for x in load_noise() if x[0][:1] == b"["]  # classic lines: what essentials() handles
    n = lines_in(noise)
    ours = min(run(noise)[0] for _ in range(3))
    floor = min(essentials(noise) for _ in range(3))
    print(f"classic noise only: assembler {n / ours:,.0f} lines/s ({ours / n * 1e6:.2f} us a line); its essential "
          f"steps inline {n / floor:,.0f} lines/s ({floor / n * 1e6:.2f} us)")


if __name__ == "__main__":
    main()
