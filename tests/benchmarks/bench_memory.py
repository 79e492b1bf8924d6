"""Memory: resident size of ``kpr-omprog udp`` with 10,000 hosts each in the middle of a
report, then under a flood of random datagrams from 100,000 source addresses.

    python tests/benchmarks/bench_memory.py

RSS is read from /proc at checkpoints; "flat" means the checkpoints after the first quarter
(the cap on hosts heard once is reached in it) differ by less than 5 %. Each flooding source
sends one datagram, so the flood fills assembler.new_hosts (10,000 by default) and churns
it: the hosts heard more than once (the 10,000 mid-report, under assembler.max_hosts) are
not touched, and no open report is closed by the flood.
"""

from __future__ import annotations

import random
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import Row, free_port, json_logs, kpr, rss_mb, wait_drained, wait_log
from sender import crash_datagrams


def addr(i: int) -> str:
    return f"127.{10 + i // 62500}.{(i // 250) % 250}.{2 + i % 250}"


def blast(port: int, items: list[tuple[str, bytes]], rate: float = 25_000) -> None:
    start = time.perf_counter()
    for n, (src, data) in enumerate(items):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((src, 0))
            s.sendto(data, ("127.0.0.1", port))
        ahead = n / rate - (time.perf_counter() - start)
        if ahead > 0.002:
            time.sleep(ahead)


def run(hosts: int = 10_000, flood_sources: int = 100_000) -> list[Row]:
    crash = crash_datagrams("lkdtm-BUG_classic_oopspanic")[:20]  # an oops half way through
    rnd = random.Random(7)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "udp.log"
        # 10,000 reports open at once: above the default max_open_reports (5,000), which
        # would close half of them; this row measures what 10,000 open reports cost.
        conf = Path(tmp) / "config.toml"
        conf.write_text(f"[assembler]\nmax_open_reports = {hosts}\n")
        p = kpr("udp", "--listen", f"127.0.0.1:{port}", "--state-dir", tmp, "--idle-timeout", "600",
                "--config", str(conf), log=log)
        wait_log(log, "udp_started")
        base = rss_mb(p.pid)
        # 10,000 hosts, each 20 datagrams into an oops, interleaved round by round
        for i in range(len(crash)):
            blast(port, [(addr(h), crash[i]) for h in range(hosts)])
        wait_drained(port)
        in_reports = rss_mb(p.pid)
        print(f"  start {base:.1f} MB; {hosts:,} hosts mid-report: {in_reports:.1f} MB")
        marks = []
        step = flood_sources // 4
        for k in range(4):
            blast(port, [(addr(hosts + k * step + j), rnd.randbytes(rnd.randrange(1, 1000)))
                         for j in range(step)])
            wait_drained(port)
            marks.append(rss_mb(p.pid))
        print("  flood from 100,000 sources, RSS after each quarter: " + ", ".join(f"{m:.1f} MB" for m in marks))
        p.send_signal(signal.SIGTERM)
        p.wait(60)
        stop = next(x for x in json_logs(log) if x["event"] == "udp_stopped")
        evicted = sum(1 for x in json_logs(log) if x.get("event") == "report")
    peak = max([in_reports, *marks])
    flat = max(marks[1:]) - min(marks[1:]) < 0.05 * min(marks[1:])  # once the host cap is reached
    return [Row("5. memory: RSS peak, 10,000 hosts mid-report then 100,000-source flood", peak, None, "MB",
                "<= 150 MB and flat", peak <= 150 and flat,
                f"flat={flat}; {stop['datagrams']:,} datagrams received; {evicted:,} reports closed during the flood")]


if __name__ == "__main__":
    for row in run():
        print(row)
