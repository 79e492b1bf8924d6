"""Latency: a report's last datagram sent -> Sentry (a real Bugsink on loopback) answered 2xx.

    python tests/benchmarks/bench_latency.py

``kpr-omprog udp`` with a DSN; 100 hosts each send the crash part of a real capture,
0.25 s apart (after one warm-up report, not counted), so p99 is the second slowest. With an end marker (the panic's
``Kernel Offset:``) the report closes after the end grace; without one (the capture cut
before its last lines) after the idle
timeout. The delivery time is the receiver's ``report_delivered`` log line (same clock);
its ``report`` line (stored in the outbox) splits each figure into assembly (the end
grace or idle timeout) and delivery (outbox -> Bugsink 2xx).
"""

from __future__ import annotations

import math
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


def measure(bugsink: Bugsink, cut: int, hosts: int = 100, idle: float = 2.0) -> tuple[list[float], list[float]]:
    """(last line sent -> 2xx, outbox -> 2xx) per counted report."""
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
        stored: dict[str, float] = {}
        while time.monotonic() < deadline and len(delivered) < hosts + 1:
            time.sleep(0.2)
            logs = json_logs(log)
            delivered = {x["host"]: _ts(x) for x in logs if x.get("event") == "report_delivered"}
            stored = {x["host"]: _ts(x) for x in logs if x.get("event") == "report"}
        p.send_signal(signal.SIGTERM)
        p.wait(30)
    counted = [ip for ip in list(last_sent)[1:] if ip in delivered]
    return [delivered[ip] - last_sent[ip] for ip in counted], [delivered[ip] - stored[ip] for ip in counted]


def _ts(record: dict[str, str]) -> float:
    return datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile: of 100 values, p99 is the second largest."""
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def run() -> list[Row]:
    with tempfile.TemporaryDirectory() as work:
        bugsink = Bugsink(Path(work))
        try:
            marked = measure(bugsink, cut=0)
            unmarked = measure(bugsink, cut=2)
        finally:
            bugsink.stop()
    rows = []
    for name, (vals, post), budget in (("with end marker", marked, 0.5), ("no end marker (idle 2 s)", unmarked, 2.5)):
        med, p99 = statistics.median(vals), pct(vals, 0.99)
        print(f"  {name}: {len(vals)} reports, median {med:.3f} s, p99 {p99:.3f} s, max {max(vals):.3f} s; "
              f"of which outbox -> 2xx: median {statistics.median(post):.3f} s, max {max(post):.3f} s")
        rows.append(Row(f"4. latency {name}: last line -> Bugsink 2xx, p99 (median {med:.3f} s)", p99, None, "s",
                        f"median and p99 <= {budget} s", med <= budget and p99 <= budget and len(vals) == 100,
                        f"{len(vals)}/100 delivered; outbox -> 2xx median {statistics.median(post):.3f} s, "
                        f"max {max(post):.3f} s"))
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
