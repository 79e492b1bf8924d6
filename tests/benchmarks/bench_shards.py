"""Shards under rsyslog: lines/s through rsyslogd with 1, 2 and 4 ``kpr-omprog omprog
--shard K`` processes (the sharded drop-in, hash64mod of the sender), each beside the
OK-only ceiling with the same shard count, measured in the same run.

    python tests/benchmarks/bench_shards.py [--count 60000] [--shards 1,2,4]

A burst of crash+noise datagrams from 1,000 loopback hosts lands in rsyslog's queues;
the figure is the lines all programs took over the span from the first program's first
line to the last program's last OK (each program logs both). Loss: datagrams sent minus
lines the programs got, cross-checked with rsyslog's action counters (impstats). rsyslog,
the sender and every shard share the machine's cores: the scaling is what they allow.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent.parent))
from common import HERE, PY, Row, json_logs, send, udp_queue

from tests.rsyslogd import Rsyslogd


def trial(program: list[str], shards: int, count: int, rate: float) -> tuple[int, int, int, float, int]:
    """(sent, lines the programs got, rsyslog's processed count, span in seconds, datagrams the
    kernel dropped at rsyslog's socket: lost before rsyslog, which a busy machine causes)."""
    with tempfile.TemporaryDirectory() as tmp:
        rs = Rsyslogd(Path(tmp), program, stats=True, program_stderr=True, shards=shards)
        names = ["kpr_omprog"] if shards == 1 else [f"kpr_omprog_{k}" for k in range(shards)]
        rs.start()
        try:
            sent = send(rs.port, rate, count)["sent"]
            deadline = time.monotonic() + 180

            def processed() -> int:
                return sum(rs.stats(n).get("processed", 0) for n in names)

            while time.monotonic() < deadline and (processed() < sent or any(
                    rs.stats(f"{n} queue").get("size", 1) > 0 for n in names)):
                time.sleep(0.2)
            done = processed()
            drops = udp_queue(rs.port)[1]
        finally:
            rs.stop()
        stops = [x for x in json_logs(rs.program_log) if x.get("event") == "omprog_stopped" and x.get("lines")]
        got = sum(int(x["lines"]) for x in stops)
        span = (max(float(x["last_line_at"]) for x in stops) - min(float(x["first_line_at"]) for x in stops)
                if stops else 0.0)
        return sent, got, done, span, drops


def run(count: int = 60_000, rate: float = 150_000, shard_counts: tuple[int, ...] = (1, 2, 4)) -> list[Row]:
    sink = [PY, str(HERE / "ok_sink.py")]
    rows = []
    print(f"  cores: {os.cpu_count()} (rsyslogd, the sender and every shard share them)")
    for n in shard_counts:
        with tempfile.TemporaryDirectory() as state:
            ours_cmd = [PY, "-m", "kpr_omprog.cli", "omprog", "--state-dir", state, "--log-format", "json"]
            results = {}
            for name, cmd in (("ok-sink", sink), ("kpr-omprog", ours_cmd)):
                results[name] = trial(cmd, n, count, rate)
                sent, got, processed, span, drops = results[name]
                print(f"  {n} shard(s), {name}: sent {sent}, programs got {got}, rsyslog processed {processed}, "
                      f"kernel dropped {drops} before rsyslog, {got / span if span else 0:,.0f} lines/s", flush=True)
        s_sent, s_got, _, s_span, _ = results["ok-sink"]
        o_sent, o_got, o_done, o_span, o_drops = results["kpr-omprog"]
        ceiling = s_got / s_span if s_span else 0.0
        ours = o_got / o_span if o_span else 0.0
        lost = o_sent - o_got
        rows.append(Row(f"shards: rsyslog -> {n} x kpr-omprog omprog --shard K, lines/s (vs {n} x OK-only)",
                        ours, ceiling, "lines/s", "zero loss", lost == 0 and s_sent == s_got,
                        f"lost {lost} of {o_sent} ({o_drops} dropped by the kernel before rsyslog; "
                        f"{o_done - o_got} between rsyslog and the programs); ceiling run lost {s_sent - s_got}; "
                        f"{os.cpu_count()} cores"))
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=60_000)
    ap.add_argument("--shards", default="1,2,4")
    a = ap.parse_args()
    for row in run(a.count, shard_counts=tuple(int(x) for x in a.shards.split(","))):
        print(row)
