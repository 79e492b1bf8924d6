"""Ceiling B: rsyslogd -> omprog -> a program that only answers OK; then the same rsyslogd
(shipped drop-in) -> ``kpr-omprog omprog`` with journaling on.

    python tests/benchmarks/bench_rsyslog.py

A burst of crash+noise datagrams from 1,000 loopback hosts lands in rsyslog's queue; the
figure is the rate at which the program took the lines (lines / time from its first line
to its last OK, both reported by the program itself). Loss: datagrams sent minus lines
the program got, cross-checked with rsyslog's own action counter (impstats).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent.parent))
from common import HERE, PY, Row, json_logs, send

from tests.rsyslogd import Rsyslogd


def trial(program: list[str], count: int, rate: float) -> tuple[int, int, int, float]:
    """(sent, lines the program got, rsyslog's processed count, busy seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        rs = Rsyslogd(Path(tmp), program, stats=True, program_stderr=True)
        rs.start()
        try:
            sent = send(rs.port, rate, count)["sent"]
            deadline = time.monotonic() + 180
            time.sleep(2)
            while time.monotonic() < deadline and (rs.stats("kpr_omprog queue").get("size", 1) > 0
                                                   or rs.stats().get("processed", 0) < sent):
                time.sleep(0.2)
            processed = rs.stats().get("processed", 0)
        finally:
            rs.stop()
        stop = next((x for x in json_logs(rs.program_log) if x.get("event") == "omprog_stopped"), {})
        return sent, int(stop.get("lines", 0)), int(processed), float(stop.get("busy_seconds", 0.0))


def run(count: int = 60_000, rate: float = 150_000) -> list[Row]:
    sink = [PY, str(HERE / "ok_sink.py")]
    with tempfile.TemporaryDirectory() as state:
        ours_cmd = [PY, "-m", "kpr_omprog.cli", "omprog", "--state-dir", state, "--log-format", "json"]
        results = {}
        for name, cmd in (("ok-sink", sink), ("kpr-omprog", ours_cmd)):
            sent, got, processed, busy = trial(cmd, count, rate)
            results[name] = (sent, got, processed, busy)
            print(f"  {name}: sent {sent}, program got {got}, rsyslog processed {processed}, "
                  f"{got / busy if busy else 0:,.0f} lines/s")
    s_sent, s_got, _, s_busy = results["ok-sink"]
    o_sent, o_got, _, o_busy = results["kpr-omprog"]
    ceiling = s_got / s_busy if s_busy else 0.0
    ours = o_got / o_busy if o_busy else 0.0
    lost = o_sent - o_got
    return [Row("2. rsyslog -> omprog: lines/s taken, journaling on (vs OK-only program = ceiling B)",
                ours, ceiling, "lines/s", ">= 80% of ceiling B, zero loss", ours >= 0.8 * ceiling and lost == 0,
                f"lost {lost} of {o_sent} (ceiling run lost {s_sent - s_got})")]


if __name__ == "__main__":
    for row in run():
        print(row)
