"""The journaled intake when the outbox refuses reports: which journal rows stay, across
retries and restarts, and rate-limit summaries at shutdown (in-process, real files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kpr_omprog.assembler import Assembler
from kpr_omprog.config import Config
from kpr_omprog.hooks import Parsers
from kpr_omprog.journal import Journal
from kpr_omprog.ratelimit import RateLimitConfig
from kpr_omprog.runtime import Intake, Pipeline
from kpr_omprog.store import Store, StoreFull


def warning(function: bytes) -> list[bytes]:
    return [b"------------[ cut here ]------------\n",
            b"WARNING: CPU: 1 PID: 77 at drivers/net/foo.c:120 " + function + b"+0x3c/0x90 [foo]\n",
            b"RIP: 0010:" + function + b"+0x3c/0x90 [foo]\n",
            b"---[ end trace 0000000000000000 ]---\n"]


PANIC = b"Kernel panic - not syncing: Fatal exception\n---[ end Kernel panic - not syncing: Fatal exception ]---\n"


class Door:
    """The outbox's put, opened and closed on demand: a full outbox a real store cannot
    produce one report at a time."""

    def __init__(self, store: Store) -> None:
        self.store, self.room, self._put = store, 0, store.put
        store.put = self.put  # type: ignore[method-assign]

    def put(self, *args: Any, **kw: Any) -> bool:
        if self.room <= 0:
            raise StoreFull("closed by the test")
        self.room -= 1
        return self._put(*args, **kw)


def intake(tmp: Path, room: int = 0, now: float = 0.0, **limits: Any) -> tuple[Intake, Door]:
    """A started receiver's intake (journal recovered at ``now``), the outbox open for ``room``."""
    store = Store(str(tmp / "kpr-omprog.sqlite3"))
    door = Door(store)
    door.room = room
    cfg = Config(rate_limit=RateLimitConfig(**limits))
    i = Intake(Pipeline(cfg, Parsers(), store, None), Assembler(cfg.assembler), Journal(str(tmp / "journal.bin")))
    i.recover(now)
    return i, door


def feed(i: Intake, host: str, datagrams: list[bytes], t: float) -> float:
    for d in datagrams:
        i.feed(d, (host, 6666), t, t)
        i.flush()
        t += 0.01
    return t


def journal_keys(tmp: Path) -> set[str]:
    return {row[0] for row in Journal(str(tmp / "journal.bin")).load()}


def titles(tmp: Path) -> list[str]:
    s = Store(str(tmp / "kpr-omprog.sqlite3"))
    try:
        return sorted(str(r["title"]) for r in s.reports())
    finally:
        s.close()


def test_a_summary_stored_first_does_not_release_the_rows_of_a_report_still_waiting(tmp_path: Path) -> None:
    i, door = intake(tmp_path, crash_burst=1, crash_interval=600.0)
    door.room = 1
    t = feed(i, "10.3.0.1", warning(b"foo_xmit") * 3, 100.0)  # one event, two folded
    i.expire(t + 1)
    i.expire(t + 700)  # the summary of foo_xmit is due: refused, waits
    t = feed(i, "10.3.0.1", warning(b"bar_recv"), t + 701)
    i.expire(t + 1)  # closed after its end marker's grace: refused too, waits, journaled
    assert len(i.pipeline.overflow) == 2 and i.waiting_for_outbox == 1
    door.room = 1  # room for one: the summary, the older
    i.expire(t + 3)
    assert i.waiting_for_outbox == 1 and "10.3.0.1" in journal_keys(tmp_path)
    door.room = 1
    i.expire(t + 5)
    assert i.waiting_for_outbox == 0 and "10.3.0.1" not in journal_keys(tmp_path)
    assert titles(tmp_path) == ["WARNING in bar_recv", "WARNING in foo_xmit", "WARNING in foo_xmit"]


def test_a_refused_report_that_opened_and_closed_in_one_datagram_survives_a_restart(tmp_path: Path) -> None:
    i, _ = intake(tmp_path)
    feed(i, "10.3.0.2", [b"[ 1.0] the line before\n", PANIC], 100.0)
    assert i.waiting_for_outbox == 1 and "10.3.0.2" in journal_keys(tmp_path)
    i.pipeline.store.close()
    intake(tmp_path, room=5, now=200.0)  # restarted, with room
    assert titles(tmp_path) == ["kernel panic: Fatal exception"]
    assert journal_keys(tmp_path) == set()


def test_recovery_keeps_the_rows_of_a_report_still_open_on_the_same_host(tmp_path: Path) -> None:
    i, _ = intake(tmp_path)
    t = feed(i, "10.3.0.3", warning(b"foo_xmit"), 100.0)  # refused, held
    t = feed(i, "10.3.0.3", warning(b"bar_recv")[:2], t + 0.5)  # a second report opens, no end yet
    i.pipeline.store.close()
    for _ in range(2):  # restarted twice with room: the open report must survive both
        j, _ = intake(tmp_path, room=5, now=t + 0.1)
        assert j.assembler.open_reports == 1
        j.pipeline.store.close()
    assert titles(tmp_path) == ["WARNING in foo_xmit"]


def test_held_summaries_go_out_at_shutdown(tmp_path: Path) -> None:
    i, door = intake(tmp_path, crash_burst=1, crash_interval=600.0)
    door.room = 10
    t = feed(i, "10.3.0.4", warning(b"foo_xmit") * 5, 100.0)
    i.expire(t + 1)
    assert titles(tmp_path) == ["WARNING in foo_xmit"] and i.pipeline.gate.held == 1
    i.shutdown(t + 2)
    assert i.pipeline.gate.held == 0 and i.pipeline.gate.stats.summaries == 1
    s = i.pipeline.store
    import json
    events = [json.loads(e) for (e,) in s._db.execute("SELECT event FROM reports ORDER BY created")]
    assert [e["extra"].get("suppressed_reports", 0) for e in events] == [0, 3]


@pytest.mark.parametrize("resends", [False, True])
def test_identical_datagrams_at_one_time_are_kept_unless_the_front_end_resends(tmp_path: Path, resends: bool) -> None:
    # UDP reads the clock once a batch: one host's identical datagrams in a batch share a time
    # and are all real. Only omprog's front end (rsyslog re-sends its line in flight) drops a repeat.
    store = Store(str(tmp_path / "s.sqlite3"))
    i = Intake(Pipeline(Config(), Parsers(), store, None), Assembler(), Journal(str(tmp_path / "j.bin")),
               resends=resends)
    src = ("10.9.0.1", 6666)
    i.feed(b"BUG: kernel NULL pointer dereference, address: 0000000000000000\n", src, 5.0, 5.0)
    for _ in range(3):
        i.feed(b"filler line without a timestamp\n", src, 6.0, 6.0)
    i.flush()
    [r] = i.assembler.close_all()
    assert r.lines.count("filler line without a timestamp") == (1 if resends else 3)
    assert i.duplicates == (2 if resends else 0)
    store.close()
