"""The report rate limit: token buckets, folding, summaries, and the packed datagram."""

from __future__ import annotations

import json
from pathlib import Path

from kpr_omprog.assembler import Assembler
from kpr_omprog.config import Config
from kpr_omprog.hooks import Parsers
from kpr_omprog.journal import Journal
from kpr_omprog.ratelimit import RateLimitConfig, ReportGate, TokenBuckets
from kpr_omprog.runtime import Intake, Pipeline
from kpr_omprog.store import Store

WARNING = [
    b"------------[ cut here ]------------\n",
    b"WARNING: CPU: 1 PID: 77 at drivers/net/foo.c:120 foo_xmit+0x3c/0x90 [foo]\n",
    b"CPU: 1 PID: 77 Comm: kworker/1:1 Not tainted 6.1.0-56-amd64 #1 Debian 6.1.192-2\n",
    b"RIP: 0010:foo_xmit+0x3c/0x90 [foo]\n",
    b"Call Trace:\n",
    b" <TASK>\n",
    b" dev_hard_start_xmit+0x63/0x1d0\n",
    b" </TASK>\n",
    b"---[ end trace 0000000000000000 ]---\n",
]


def intake(tmp: Path, **limits: float) -> Intake:
    store = Store(str(tmp / "kpr-omprog.sqlite3"))
    cfg = Config(rate_limit=RateLimitConfig(**limits))  # type: ignore[arg-type]
    return Intake(Pipeline(cfg, Parsers(), store, None), Assembler(cfg.assembler), Journal(str(tmp / "j.bin")))


def rows(i: Intake) -> list[dict[str, object]]:
    out = []
    for event_json, in i.pipeline.store._db.execute("SELECT event FROM reports ORDER BY created"):
        out.append(json.loads(event_json))
    return out


def test_token_buckets_refill_with_time_and_forget_the_least_recent_key() -> None:
    b: TokenBuckets[str] = TokenBuckets(burst=2, interval=5.0, max_keys=2)
    assert [b.take("a", 0.0) for _ in range(3)] == [True, True, False]
    assert not b.take("a", 4.0) and b.take("a", 9.0)  # one token per 5 s
    b.take("b", 9.0)
    b.take("c", 9.0)  # a third key: "a" is forgotten
    assert b.forgotten == 1 and b.take("a", 9.0) and b.take("a", 9.0)


def test_one_warning_a_thousand_times_gives_a_handful_of_events_that_say_how_many(tmp_path: Path) -> None:
    i = intake(tmp_path)
    t = 1000.0
    for _ in range(1000):
        for line in WARNING:
            i.feed(line, ("10.7.0.1", 6666), t, t)
            t += 0.0001
        t += 0.001  # a thousand a second
    i.expire(t + 10)
    events = rows(i)
    assert len(events) == 3  # crash_burst
    assert all("suppressed_reports" not in e["extra"] for e in events)
    # Each window's end sends one summary: a few events stand for all thousand.
    i.expire(t + 700)
    i.expire(t + 1400)
    events = rows(i)
    assert len(events) <= 6
    summaries = [e for e in events if "suppressed_reports" in e["extra"]]
    assert summaries and all(e["tags"]["rate_limited"] == "yes" for e in summaries)
    assert max(e["extra"]["suppressed_reports"] for e in summaries) > 900
    assert sum(1 + e["extra"].get("suppressed_reports", 0) for e in events) == 1000
    assert i.pipeline.gate.held == 0


def test_distinct_crashes_of_a_crash_loop_all_show(tmp_path: Path) -> None:
    i = intake(tmp_path)
    t = 1000.0
    for n in range(20):  # twenty distinct bugs, one every 30 s
        for line in WARNING:
            i.feed(line.replace(b"foo_xmit", b"foo_xmit%d" % n), ("10.7.0.2", 6666), t, t)
            t += 0.001
        t += 30
        i.expire(t)
    assert len(rows(i)) == 20


def test_a_packed_datagram_is_bounded_in_reports_and_events(tmp_path: Path) -> None:
    # 64,977 bytes of BUG: lines and end markers from one source (1,049 reports before).
    unit = b"BUG: unable to handle page fault for address: 0000000000001234\n---[ end trace 0 ]---\n"
    packed = (unit * (64_977 // len(unit) + 1))[:64_977]
    i = intake(tmp_path)
    for n in range(10):
        i.feed(packed, ("10.7.0.3", 6666), 1000.0 + n * 0.1, 1000.0 + n * 0.1)
    i.expire(1010.0)
    asm = i.assembler.stats
    assert asm.datagrams_cut == 10
    assert asm.reports <= 10 * (4096 // len(unit) + 1)  # the datagram bound
    gate = i.pipeline.gate.stats
    assert gate.admitted == 3 and len(rows(i)) <= 3  # the rate limit: the same bug from one host
    assert gate.folded_by_host + gate.folded_by_crash + gate.admitted == asm.reports


def test_the_gate_holds_a_bounded_number_of_summaries() -> None:
    gate: ReportGate[str] = ReportGate(RateLimitConfig(max_held=2))
    for n in range(5):
        gate.fold(("host", f"10.0.0.{n}"), f"report {n}")
    assert gate.held == 2 and gate.stats.held_dropped == 3
