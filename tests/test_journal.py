"""The journal file: what survives a restart, torn tails, reclaiming dead rows, the cap."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kpr_omprog import journal as journal_mod
from kpr_omprog.assembler import Assembler
from kpr_omprog.config import Config
from kpr_omprog.hooks import Parsers
from kpr_omprog.journal import Context, Journal, JournalFull
from kpr_omprog.runtime import Intake, Pipeline
from kpr_omprog.store import Store


def row(key: str, i: int, data: bytes = b"") -> tuple[str, float, str, int, bytes]:
    return (key, 1000.0 + i, key.split(":")[0], 6666, data or f"line {i} of {key}\n".encode())


def test_rows_survive_reopen_in_order_and_dropped_keys_do_not(tmp_path: Path) -> None:
    path = str(tmp_path / "j.bin")
    j = Journal(path)
    j.add_many([row("10.0.0.1", 0), row("10.0.0.2", 1)])
    j.add_many([row("10.0.0.1", 2, b"\xff\xfe not utf-8\n")])
    j.drop("10.0.0.2")
    j.add_many([row("10.0.0.2", 3)])  # a new report of the same host after the drop: live
    j.close()  # what kill -9 leaves is the same bytes: nothing is buffered in the process
    rows = Journal(path).load()
    assert rows == [row("10.0.0.1", 0), row("10.0.0.1", 2, b"\xff\xfe not utf-8\n"), row("10.0.0.2", 3)]


def test_the_file_is_emptied_when_no_report_is_open(tmp_path: Path) -> None:
    j = Journal(str(tmp_path / "j.bin"))
    j.add_many([row("a", i) for i in range(100)] + [row("b", 0)])
    j.drop("a")
    assert j.size > 0
    j.drop("b")
    assert j.size == 0 == journal_mod.used_bytes(str(tmp_path / "j.bin"))
    j.add_many([row("c", 0)])  # appends at the new end; the old rows behind it are never read
    assert Journal(str(tmp_path / "j.bin")).load() == [row("c", 0)]


def test_a_grown_file_gives_its_room_back_and_stale_frames_stay_dead(tmp_path: Path) -> None:
    path = tmp_path / "j.bin"
    j = Journal(str(path))
    big = [row("a", i, b"x" * 1000) for i in range(3000)]  # 3 MB: the file grows past one chunk
    for i in range(0, len(big), 100):
        j.add_many(big[i:i + 100])
    assert path.stat().st_size > 2 * journal_mod._CHUNK
    assert journal_mod.used_bytes(str(path)) == j.size > 3_000_000
    j.drop("a")
    assert path.stat().st_size <= journal_mod._CHUNK and j.size == 0
    # a short frame where a long one was, and a hostile datagram shaped like a whole frame
    # (head, checksum, a row) in the bytes after it: the zero head in between ends the file
    body = journal_mod._encode([row("evil", 0)])[0]
    fake = journal_mod._FRAME.pack(len(body), __import__("zlib").crc32(body)) + body
    j.add_many([row("b", 0, b"y" * 200 + fake)])
    j.drop("b")
    j.add_many([row("c", 0)])
    j.close()
    assert Journal(str(path)).load() == [row("c", 0)]


@pytest.mark.parametrize("damage", ["half a record", "bit flip", "garbage"])
def test_a_torn_tail_is_cut_and_logged_and_the_rows_before_it_kept(tmp_path: Path, damage: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "j.bin"
    j = Journal(str(path))
    j.add_many([row("h", 0), row("h", 1)])
    whole = j.size
    j.add_many([row("h", 2)])
    end = j.size
    j.close()
    raw = path.read_bytes()[:end]  # the frames (the file's length counts room allocated ahead)
    if damage == "half a record":
        path.write_bytes(raw[: whole + (len(raw) - whole) // 2])
    elif damage == "bit flip":
        path.write_bytes(raw[:-3] + bytes([raw[-3] ^ 1]) + raw[-2:])
    else:
        path.write_bytes(raw[:whole] + b"\x00\x10\x00\x00garbage")
    j2 = Journal(str(path))
    assert j2.load() == [row("h", 0), row("h", 1)]
    assert j2.size == whole == journal_mod.used_bytes(str(path))  # cut, so later appends are readable
    captured = capsys.readouterr()
    assert "journal_torn_tail" in captured.out + captured.err
    j2.add_many([row("h", 3)])
    assert Journal(str(path)).load() == [row("h", 0), row("h", 1), row("h", 3)]


def test_a_mostly_dead_file_is_compacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_mod, "_COMPACT_MIN_BYTES", 4096)
    path = tmp_path / "j.bin"
    j = Journal(str(path))
    j.add_many([row("long-lived", 0)])
    most = 0
    for h in range(200):
        j.add_many([row(f"10.1.0.{h}", i) for i in range(5)])
        most = max(most, j.size)
        j.drop(f"10.1.0.{h}")
    assert most < 4 * 4096  # compacted along the way, never grew to 200 reports' worth
    assert path.stat().st_size <= journal_mod._CHUNK
    j.add_many([row("long-lived", 1)])
    assert Journal(str(path)).load() == [row("long-lived", 0), row("long-lived", 1)]


def test_the_cap_refuses_a_batch_whole_and_says_which_setting(tmp_path: Path) -> None:
    j = Journal(str(tmp_path / "j.bin"), cap_bytes=2000)
    j.add_many([row("a", 0)])
    size = j.size
    with pytest.raises(JournalFull, match="journal_cap_bytes"):
        j.add_many([row("a", i, b"x" * 500) for i in range(1, 5)])
    assert j.size == size == journal_mod.used_bytes(str(tmp_path / "j.bin"))
    j.drop("b")  # unknown key: nothing to do
    assert Journal(str(tmp_path / "j.bin")).load() == [row("a", 0)]


def test_rows_journaled_in_sqlite_by_an_older_version_are_moved_and_rebuilt(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "kpr-omprog.sqlite3"))
    with store._tx() as db:  # what 0.1 wrote for an open report
        db.executemany("INSERT INTO journal (key, at, ip, port, data) VALUES (?,?,?,?,?)",
                       [("10.9.0.1", 5.0, "10.9.0.1", 6666, b"BUG: kernel NULL pointer dereference\n"),
                        ("10.9.0.1", 5.1, "10.9.0.1", 6666, b"Oops: 0000 [#1] SMP\n")])
    journal = Journal(str(tmp_path / "journal.bin"))
    intake = Intake(Pipeline(Config(), Parsers(), store, None), Assembler(), journal)
    assert intake.recover(6.0) == 2
    assert intake.assembler.open_reports == 1
    assert store.legacy_journal_take() == []  # moved, not copied
    assert [r[4] for r in Journal(str(tmp_path / "journal.bin")).load()] == [
        b"BUG: kernel NULL pointer dereference\n", b"Oops: 0000 [#1] SMP\n"]


def test_a_datagram_past_the_bound_is_journaled_as_the_assembler_keeps_it(tmp_path: Path) -> None:
    # A hostile 64 KiB datagram opening a report: the journal row is the max_datagram_bytes the
    # assembler kept, not the 64 KiB sent, and a restart rebuilds the same report from it.
    unit = b"[   10.000000] BUG: unable to handle page fault for address: 0000000000001234\n"
    data = unit * (65_000 // len(unit))
    store = Store(str(tmp_path / "s.sqlite3"))
    journal = Journal(str(tmp_path / "j.bin"))
    intake = Intake(Pipeline(Config(), Parsers(), store, None), Assembler(), journal)
    bound = intake.assembler.config.max_datagram_bytes
    intake.feed(data, ("10.0.0.9", 6666), 100.0, 100.0)
    intake.flush()
    [(key, at, ip, port, kept)] = Journal(str(tmp_path / "j.bin")).load()
    assert kept == data[:bound] and (key, at, ip, port) == ("10.0.0.9", 100.0, "10.0.0.9", 6666)
    assert journal_mod.used_bytes(str(tmp_path / "j.bin")) < bound + 200
    before = intake.assembler.close_all()
    journal.close()
    again = Intake(Pipeline(Config(), Parsers(), store, None), Assembler(), Journal(str(tmp_path / "j.bin")))
    again.recover(200.0)
    after = again.assembler.close_all()
    assert [r.lines for r in before] == [r.lines for r in after] and len(after) == 1


def test_a_full_disk_at_start_does_not_stop_the_receiver_and_room_is_tried_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    def no_room(fd: int, offset: int, length: int) -> None:
        # ENOSPC on demand (a real full disk would also fill the test's own output files)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(journal_mod.os, "posix_fallocate", no_room)
    j = Journal(str(tmp_path / "j.bin"))  # starts all the same
    with pytest.raises(JournalFull, match="No space left"):
        j.add_many([row("a", 0)])
    monkeypatch.undo()
    j.add_many([row("a", 1)])  # room again
    j.close()
    assert Journal(str(tmp_path / "j.bin")).load() == [row("a", 1)]


WARN = ["------------[ cut here ]------------",
        "WARNING: CPU: 1 PID: 77 at drivers/foo/bar.c:12 foo_probe+0x1d/0x30 [foo]",
        "Modules linked in: foo", "CPU: 1 PID: 77 Comm: modprobe Not tainted 6.1.0-56-amd64 #1 Debian 6.1.192-2",
        "RIP: 0010:foo_probe+0x1d/0x30 [foo]", "Call Trace:", " <TASK>", " do_one_initcall+0x41/0x200",
        " </TASK>", "---[ end trace 0000000000000000 ]---"]
BUG = ["BUG: kernel NULL pointer dereference, address: 0000000000000008", "#PF: supervisor read access in kernel mode",
       "Oops: 0000 [#1] PREEMPT SMP NOPTI", "CPU: 0 PID: 9 Comm: kworker/0:1 Not tainted 6.1.0-56-amd64 #1",
       "RIP: 0010:bar_work+0x12/0x40 [bar]", "Call Trace:", " <TASK>", " process_one_work+0x1c4/0x380",
       " </TASK>"]


def test_a_crash_line_kept_as_context_stays_context_after_a_restart(tmp_path: Path) -> None:
    # A warning the host reported, then its first lines again at the same kernel times (the
    # log buffer sent again by a reloaded netconsole: context, not a report), then a real
    # crash. A receiver restarted while that crash is open rebuilds it from the journal: the
    # replayed warning lines are its context again, not a second report (they were journaled
    # as ordinary rows before, and opened one).
    def stamp(ts: float, text: str) -> bytes:
        return b"[%5d.%06d] %s\n" % (int(ts), round(ts % 1 * 1e6), text.encode())

    src = ("10.7.0.1", 6666)
    datagrams = [stamp(50.0 + i / 1000, x) for i, x in enumerate(WARN)]
    datagrams += [stamp(50.0 + i / 1000, x) for i, x in enumerate(WARN[:2])]  # sent again
    datagrams += [stamp(70.0 + i / 1000, x) for i, x in enumerate(BUG)]

    def intake(state: Path) -> tuple[Intake, Store]:
        store = Store(str(state / "s.sqlite3"))
        return Intake(Pipeline(Config(), Parsers(), store, None), Assembler(), Journal(str(state / "j.bin"))), store

    def titles(store: Store) -> list[tuple[str, str]]:
        return sorted((str(r["title"]), str(r["event_id"])) for r in store.reports())

    (tmp_path / "clean").mkdir()
    (tmp_path / "restarted").mkdir()
    clean, clean_store = intake(tmp_path / "clean")
    first, store = intake(tmp_path / "restarted")
    for i, d in enumerate(datagrams):
        for run in (clean, first):
            run.feed(d, src, 1000 + i * 0.01, 1000 + i * 0.01)
            run.flush()
    assert first.assembler.stats.crash_replays >= 1 and first.assembler.open_reports == 1
    assert first.journal is not None
    first.journal.close()  # what a kill -9 leaves (the journal holds nothing in memory)
    again, _ = intake(tmp_path / "restarted")
    again.recover(1100.0)
    assert again.assembler.open_reports == 1
    for run in (clean, again):
        run.shutdown(1200.0)
        run.expire(1300.0)
    assert [t for t, _ in titles(clean_store)] == ["BUG: unable to handle kernel NULL pointer dereference in bar_work",
                                                   "WARNING in foo_probe"]
    assert titles(store) == titles(clean_store)


def test_context_rows_keep_their_kind_through_reopen_and_compaction(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "j.bin")
    j = Journal(path)
    j.add_many([("a", 1.0, "a", 0, Context(b"[ 1.0] kept\n"))])  # the one-row path
    j.add_many([("a", 2.0, "a", 0, Context(b"[ 1.5] kept too\n")), row("a", 3)])
    loaded = Journal(path).load()
    assert [type(r[4]).__name__ for r in loaded] == ["Context", "Context", "bytes"]
    assert loaded[0][4] == b"[ 1.0] kept\n"
    monkeypatch.setattr(journal_mod, "_COMPACT_MIN_BYTES", 0)
    for h in range(20):
        j.add_many([row(f"b{h}", i) for i in range(5)])
        j.drop(f"b{h}")  # the file is mostly dead: rewritten with a's rows only
    assert [type(r[4]).__name__ for r in Journal(path).load()] == ["Context", "Context", "bytes"]


def test_crash_marks_outlive_a_restart_in_the_hosts_table(tmp_path: Path) -> None:
    # A warning reported, the receiver stopped and started again, then the host's log buffer
    # sent again (a reloaded netconsole): its warning is known still, kept as context, not
    # reported twice. A new crash after it is a report. A store from before the marks (no
    # column) is given the column.
    def stamp(ts: float, text: str) -> bytes:
        return b"[%5d.%06d] %s\n" % (int(ts), round(ts % 1 * 1e6), text.encode())

    src = ("10.7.0.2", 6666)
    warn = [stamp(50.0 + i / 1000, x) for i, x in enumerate(WARN)]
    bug = [stamp(70.0 + i / 1000, x) for i, x in enumerate(BUG)] + [stamp(70.5, "---[ end trace 0 ]---")]
    path = str(tmp_path / "s.sqlite3")
    old = Store(path)
    with old._tx() as db:
        db.execute("DROP INDEX hosts_crash_marks")  # what an older version created: neither
        db.execute("ALTER TABLE hosts DROP COLUMN crash_marks")
    old.close()

    def intake() -> Intake:
        return Intake(Pipeline(Config(), Parsers(), Store(path), None), Assembler(), Journal(str(tmp_path / "j.bin")))

    first = intake()
    for i, d in enumerate([stamp(1.0, "Linux version 6.1.0-56-amd64"), *warn]):
        first.feed(d, src, 1000 + i * 0.01, 1000 + i * 0.01)
        first.flush()
    first.shutdown(1010.0)  # the hosts table written, as at every stop (and every hosts.flush_interval)
    first.pipeline.store.close()
    again = intake()
    again.recover(1100.0)
    for i, d in enumerate([*warn, *bug]):
        again.feed(d, src, 1100 + i * 0.01, 1100 + i * 0.01)
        again.flush()
    again.shutdown(1200.0)
    assert again.assembler.stats.crash_replays >= 1
    assert sorted(str(r["title"]) for r in again.pipeline.store.reports()) == [
        "BUG: unable to handle kernel NULL pointer dereference in bar_work", "WARNING in foo_probe"]
