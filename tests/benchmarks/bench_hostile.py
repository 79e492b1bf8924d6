"""Hostile input: what the worst datagrams cost, how many events a packed datagram makes,
and the receiver's memory while 200 hosts pour text into open reports.

    python tests/benchmarks/bench_hostile.py

1. Cost per datagram through the receiver's own path (``Intake.feed``: journal rows,
   assembler, rate limit, outbox), in one process on one core, for a noise line (the
   ceiling is this figure: the worst is compared with it) and for the worst kinds: 64 KB
   of newlines, 64 KB of random bytes, 64 KB packed with ``BUG:`` lines and end markers,
   an escape flood. Each is the median of repeated runs.
2. Ten packed 64,977-byte datagrams from one source: reports assembled, events stored.
3. ``kpr-omprog udp`` while 200 hosts each stream 0.9 MiB into an open report (idle
   timeout 600 s): RSS before and after, beside assembler.open_bytes_budget (32 MiB).
"""

from __future__ import annotations

import random
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import Row, free_port, json_logs, kpr, rss_mb, wait_drained, wait_log

from kpr_omprog import logs
from kpr_omprog.assembler import Assembler
from kpr_omprog.config import Config
from kpr_omprog.hooks import Parsers
from kpr_omprog.journal import Journal
from kpr_omprog.runtime import Intake, Pipeline
from kpr_omprog.store import Store

UNIT = b"BUG: unable to handle page fault for address: 0000000000001234\n---[ end trace 0 ]---\n"
PACKED = (UNIT * (64_977 // len(UNIT) + 1))[:64_977]


def worst_kinds() -> dict[str, bytes]:
    rnd = random.Random(5)
    return {
        "noise line (100 B)": b"[ 5.000001] IN=eth0 OUT= SRC=203.0.113.7 DST=198.51.100.2 PROTO=TCP DPT=22 SYN\n",
        "64 KB of newlines": b"\n" * 65_507,
        "64 KB random bytes": rnd.randbytes(65_507),
        "64 KB packed BUG: lines": PACKED,
        "escape flood (extended)": b"6,1,1,-;" + b"\\x41" * 16_000,
        "1000 B random bytes": rnd.randbytes(1000),
    }


def per_datagram_us(data: bytes, tmp: Path, n: int = 300) -> float:
    """Median µs per datagram through Intake.feed + flush, each from a new source."""
    store = Store(str(tmp / f"s{len(data)}-{data[:4].hex()}.sqlite3"))
    intake = Intake(Pipeline(Config(), Parsers(), store, None), Assembler(),
                    Journal(str(tmp / f"j{len(data)}-{data[:4].hex()}.bin")))
    samples = []
    t = 1000.0
    for i in range(n):
        t += 0.001
        src = (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 6666)
        t0 = time.perf_counter()
        intake.feed(data, src, t, t)
        intake.flush()
        samples.append(time.perf_counter() - t0)
    store.close()
    return statistics.median(samples) * 1e6


def packed(tmp: Path) -> tuple[int, int]:
    store = Store(str(tmp / "packed.sqlite3"))
    intake = Intake(Pipeline(Config(), Parsers(), store, None), Assembler(), Journal(str(tmp / "packed.bin")))
    for n in range(10):
        intake.feed(PACKED, ("10.7.0.3", 6666), 1000.0 + n * 0.1, 1000.0 + n * 0.1)
        intake.flush()
    intake.expire(1010.0)
    events = store.counts().get("local", 0)
    store.close()
    return intake.assembler.stats.reports, events


def big_open_reports(hosts: int = 200, per_host: int = 900) -> tuple[float, float, float, int]:
    """(RSS at start, RSS after, peak, reports closed by the budget) of kpr-omprog udp."""
    port = free_port()
    filler = b"".join(b"[    2.%06d] filler %s\n" % (i, b"y" * 220) for i in range(4))  # ~1 KB
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "udp.log"
        p = kpr("udp", "--listen", f"127.0.0.1:{port}", "--state-dir", tmp, "--idle-timeout", "600", log=log)
        try:
            wait_log(log, "udp_started")
            base = rss_mb(p.pid)
            socks = []
            for h in range(hosts):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind((f"127.0.47.{h + 2}", 0))
                s.sendto(b"[    1.000000] BUG: kernel NULL pointer dereference, address: 0000000000000000\n",
                         ("127.0.0.1", port))
                socks.append(s)
            peak = base
            started = time.monotonic()
            for k in range(per_host):  # bounded: hosts x per_host datagrams, at most 120 s
                for s in socks:
                    s.sendto(filler, ("127.0.0.1", port))
                if k % 50 == 0:
                    wait_drained(port)
                    peak = max(peak, rss_mb(p.pid))
                if time.monotonic() - started > 120:
                    break
            wait_drained(port)
            after = rss_mb(p.pid)
            for s in socks:
                s.close()
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(60)
        closed = sum(1 for x in json_logs(log) if x.get("event") == "report" and x.get("closed_by") ==
                     "open_bytes_budget")
    return base, after, max(peak, after), closed


def run() -> list[Row]:
    logs.configure("json", "error")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        costs = {name: per_datagram_us(d, Path(tmp)) for name, d in worst_kinds().items()}
        noise = costs["noise line (100 B)"]
        sizes = {name: len(d) for name, d in worst_kinds().items()}
        for name, us in costs.items():
            print(f"  {name}: {us:,.1f} us per datagram ({us / noise:,.1f} x a noise line; "
                  f"{1000 * us / sizes[name]:,.1f} ns per byte sent)")
        worst_name = max(costs, key=lambda k: costs[k])
        rows.append(Row(f"7. hostile: worst datagram ({worst_name}), us through Intake.feed (ceiling: a noise line)",
                        costs[worst_name], noise, "us", "bounded (datagram cut at 4096 B)", None,
                        f"{costs[worst_name] / noise:,.0f} x a noise line; per byte sent "
                        f"{1000 * costs[worst_name] / sizes[worst_name]:,.0f} ns vs "
                        f"{1000 * noise / sizes['noise line (100 B)']:,.0f} ns"))
        reports, events = packed(Path(tmp))
        print(f"  10 packed 64,977-byte datagrams: {reports} reports assembled, {events} events stored")
        rows.append(Row("8. hostile: events from 10 packed 64 KB datagrams of BUG: lines", events, None, "events",
                        "a handful (was 10,490)", events <= 5, f"{reports} reports assembled, the rest folded"))
    base, after, peak, closed = big_open_reports()
    print(f"  200 hosts x 0.9 MiB into open reports: RSS {base:.1f} -> {after:.1f} MB (peak {peak:.1f}); "
          f"{closed} reports closed by open_bytes_budget")
    rows.append(Row("9. hostile: RSS peak, 200 hosts each pouring 0.9 MiB into an open report", peak, None, "MB",
                    "<= 150 MB", peak <= 150, f"from {base:.0f} MB; {closed} reports closed by the 32 MiB budget"))
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
