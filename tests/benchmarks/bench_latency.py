"""Latency: a report's last datagram sent -> Sentry (a real Bugsink on loopback) answered 2xx.

    python tests/benchmarks/bench_latency.py

``kpr-omprog udp`` with a DSN; 40 hosts each send the crash part of a real capture,
0.25 s apart (after one warm-up report, not counted). With an end marker (the panic's
``Kernel Offset:``) the report closes after the end grace; without one (the capture cut
before its last lines) after the idle
timeout. The delivery time is the receiver's ``report_delivered`` log line (same clock).
"""

from __future__ import annotations

import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent.parent))
from common import Row, free_port, json_logs, kpr, wait_log
from sender import crash_datagrams

from tests.bugsink import Bugsink
from tests.senders import play


def measure(bugsink: Bugsink, cut: int, hosts: int = 40, idle: float = 2.0) -> list[float]:
    crash = crash_datagrams("sysrq-c_classic")
    if cut:
        crash = crash[:-cut]
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "udp.log"
        p = kpr("udp", "--listen", f"127.0.0.1:{port}", "--state-dir", tmp, "--dsn", bugsink.dsn,
                "--idle-timeout", str(idle), log=log, cpu=None)
        wait_log(log, "udp_started")
        last_sent: dict[str, float] = {}
        # host 0 warms up (Bugsink loads its code on the first event); it is not counted
        for h in range(hosts + 1):
            ip = f"127.0.9.{h + 2}"
            play(("127.0.0.1", port), {ip: [(0.0, d) for d in crash]})
            last_sent[ip] = time.time()
            time.sleep(0.25)
        deadline = time.monotonic() + 60
        delivered: dict[str, float] = {}
        while time.monotonic() < deadline and len(delivered) < hosts + 1:
            time.sleep(0.2)
            delivered = {x["host"]: datetime.fromisoformat(x["timestamp"].replace("Z", "+00:00")).timestamp()
                         for x in json_logs(log) if x.get("event") == "report_delivered"}
        p.send_signal(signal.SIGTERM)
        p.wait(30)
    return [delivered[ip] - last_sent[ip] for ip in list(last_sent)[1:] if ip in delivered]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def run() -> list[Row]:
    with tempfile.TemporaryDirectory() as work:
        bugsink = Bugsink(Path(work))
        try:
            marked = measure(bugsink, cut=0)
            unmarked = measure(bugsink, cut=2)
        finally:
            bugsink.stop()
    rows = []
    for name, vals, budget in (("with end marker", marked, 0.5), ("no end marker (idle 2 s)", unmarked, 2.5)):
        med, p99 = statistics.median(vals), pct(vals, 0.99)
        print(f"  {name}: {len(vals)} reports, median {med:.3f} s, p99 {p99:.3f} s, max {max(vals):.3f} s")
        rows.append(Row(f"4. latency {name}: last line -> Bugsink 2xx, p99 (median {med:.3f} s)", p99, None, "s",
                        f"median and p99 <= {budget} s", med <= budget and p99 <= budget and len(vals) == 40,
                        f"{len(vals)}/40 delivered"))
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
