"""Reports through parsers, the SQLite outbox and delivery into a real Bugsink."""

from __future__ import annotations

import http.server
import resource
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import pytest

from kpr_omprog import journal as journal_mod
from kpr_omprog.assembler import Assembler, Report
from kpr_omprog.config import Config, DeliveryConfig
from kpr_omprog.delivery import Delivery
from kpr_omprog.hooks import Parsers
from kpr_omprog.journal import Journal
from kpr_omprog.runtime import Intake, Pipeline
from kpr_omprog.sources.replay import read_captures, replay
from kpr_omprog.store import Store
from tests.bugsink import Bugsink

DATA = Path(__file__).parent / "data"


def reports(name: str, host: str = "127.0.0.1") -> list[Report]:
    from dataclasses import replace
    return [replace(r, host=host) for r in replay(read_captures([str(DATA / f"{name}.jsonl")]), Assembler())]


def pipeline(tmp: Path, dsn: str, parsers: Parsers | None = None, **delivery: Any) -> tuple[Pipeline, Delivery]:
    store = Store(str(tmp / "state.sqlite3"))
    d = Delivery(store, dsn, DeliveryConfig(**delivery))
    return Pipeline(Config(dsn=dsn), parsers or Parsers(), store, None), d


def parse_kernel_version(addr, klogs):  # type: ignore[no-untyped-def]  # the seed's example, verbatim
    start_idx = klogs.find('.el')
    end_idx = start_idx

    if start_idx == -1:
        return ['kernel_version', "unknown"]

    while klogs[start_idx - 1] != ' ' or klogs[end_idx] != ' ':
        if (klogs[start_idx - 1] != ' '):
            start_idx -= 1
        if (klogs[end_idx] != ' '):
            end_idx += 1

    return ['kernel_version', klogs[start_idx:end_idx]]


def test_real_crashes_become_titled_grouped_events(bugsink: Bugsink, tmp_path: Path) -> None:
    parsers = Parsers()
    parsers.register_parser_tag(parse_kernel_version)
    pipe, delivery = pipeline(tmp_path, bugsink.dsn, parsers)
    now = time.time()
    for r in reports("lkdtm-BUG_ext_oopspanic", "10.1.0.1") + reports("lkdtm-BUG_classic_oopspanic", "10.1.0.2") \
            + reports("sysrq-c_classic", "10.1.0.3"):
        pipe.handle(r, now)
    assert delivery.send_due() == 3
    events = bugsink.wait_events(3)
    by_host = {e["data"]["server_name"]: e for e in events}
    assert set(by_host) == {"10.1.0.1", "10.1.0.2", "10.1.0.3"}
    bug = by_host["10.1.0.1"]["data"]
    assert bug["exception"]["values"][0]["type"] == "kernel BUG"
    assert bug["exception"]["values"][0]["value"] == "in lkdtm_BUG"
    assert bug["fingerprint"] == ["linux-kernel", "kernel BUG", "lkdtm_BUG"]
    assert bug["level"] == "fatal"
    assert bug["user"]["ip_address"] == "10.1.0.1"
    assert bug["tags"]["kernel_release"] == "6.1.0-56-amd64"
    assert bug["tags"]["kernel_version"] == "unknown"  # the seed's hook ran (no '.el' in a Debian kernel)
    assert {"crash_kind", "host", "tainted", "hardware", "comm"} <= set(bug["tags"])
    assert bug["contexts"]["os"]["version"] == "6.1.0-56-amd64"
    frames = bug["exception"]["values"][0]["stacktrace"]["frames"]
    assert frames[-1]["function"] == "lkdtm_BUG" or any(f["function"] == "direct_entry" for f in frames)
    # two boots of the same crash: one issue; a different crash: another
    issues = {e["issue"] for e in events}
    assert len(issues) == 2
    assert by_host["10.1.0.1"]["issue"] == by_host["10.1.0.2"]["issue"]
    assert by_host["10.1.0.3"]["issue"] != by_host["10.1.0.1"]["issue"]
    titles = {e["issue_title"] for e in events}
    assert ("kernel BUG", "in lkdtm_BUG") in titles
    # the log's key lines are in the event itself (Bugsink keeps no text attachment)
    shown = bug["logentry"]["formatted"]
    assert "kernel BUG at" in shown and "Call Trace:" in shown and "lkdtm_BUG" in shown
    # the full log is attached
    att = bugsink.attachments()
    assert b"kernel BUG at" in att[bug["event_id"].replace("-", "")]
    assert pipe.store.counts() == {"delivered": 3}


def sentry_culprit(frames: list[dict[str, Any]]) -> str | None:
    """What Sentry shows as an issue's culprit for a native event without a transaction
    (src/sentry/culprit.py): the function of the innermost in-app frame."""
    return next((f.get("function") or "?" for f in reversed(frames) if f.get("in_app")), None)


def test_the_fault_line_function_is_the_innermost_frame_and_the_culprit(bugsink: Bugsink, tmp_path: Path) -> None:
    pipe, delivery = pipeline(tmp_path, bugsink.dsn)
    cases = {"10.1.1.1": "lkdtm-BUG_ext_oopspanic", "10.1.1.2": "lkdtm-FORTIFY_STR_OBJECT_ext_oopspanic",
             "10.1.1.3": "lkdtm-HARDLOCKUP_ext_rcupanic", "10.1.1.4": "lkdtm-CORRUPT_STACK_classic"}
    for host, name in cases.items():
        pipe.handle(reports(name, host)[0], time.time())
    assert delivery.send_due() == 4
    stored = {e["data"]["server_name"]: e["data"] for e in bugsink.events() if e["data"]["server_name"] in cases}
    assert set(stored) == set(cases)
    for host, data in stored.items():
        exc = data["exception"]["values"][0]
        frames = exc["stacktrace"]["frames"]
        # the culprit a server shows is the title's function, whatever the title blames
        assert f"in {sentry_culprit(frames)}" == exc["value"], (cases[host], exc["value"], frames[-3:])
    # kernel BUG in lkdtm_BUG: RIP names lkdtm_BUG, which the call trace (from direct_entry) lacks
    bug = stored["10.1.1.1"]["exception"]["values"][0]["stacktrace"]["frames"]
    assert bug[-1] == {"function": "lkdtm_BUG", "raw_function": "lkdtm_BUG", "package": "lkdtm", "in_app": True,
                       "trust": "context"}
    assert bug[-2]["function"] == "direct_entry"
    # fortify_panic (the RIP) is inside the blamed function: shown innermost, not in-app
    fortify = stored["10.1.1.2"]["exception"]["values"][0]["stacktrace"]["frames"]
    assert [(f["function"], f["in_app"]) for f in fortify[-2:]] == [("lkdtm_FORTIFY_STR_OBJECT", True),
                                                                     ("fortify_panic", False)]
    # a stall blames the frame the dispatcher called; the CPU was spinning in lkdtm_HARDLOCKUP
    stall = stored["10.1.1.3"]["exception"]["values"][0]["stacktrace"]["frames"]
    assert [(f["function"], f["in_app"]) for f in stall[-2:]] == [("direct_entry", True), ("lkdtm_HARDLOCKUP", False)]


def test_frames_show_the_symbols_the_kernel_printed(bugsink: Bugsink, tmp_path: Path) -> None:
    pipe, delivery = pipeline(tmp_path, bugsink.dsn)
    pipe.handle(reports("lkdtm-BUG_classic_oopspanic", "10.1.2.1")[0], time.time())
    assert delivery.send_due() == 1
    [data] = [e["data"] for e in bugsink.events() if e["data"]["server_name"] == "10.1.2.1"]
    frames = data["exception"]["values"][0]["stacktrace"]["frames"]
    shown = [f["function"] for f in frames]
    # ksys_write as printed, not the canonical "write" our fingerprints use
    assert "ksys_write" in shown and "write" not in shown and "vfs_write" in shown
    # a compiler clone's suffix goes (the source has direct_entry); raw_function keeps it
    entry = next(f for f in frames if f["function"] == "direct_entry")
    assert entry["raw_function"] == "direct_entry.cold" and entry["package"] == "lkdtm"
    assert all(f["raw_function"].startswith(f["function"]) for f in frames)
    assert data["fingerprint"] == ["linux-kernel", "kernel BUG", "lkdtm_BUG"]


def test_the_event_carries_what_sentry_native_sends_for_a_crash(bugsink: Bugsink, tmp_path: Path) -> None:
    pipe, delivery = pipeline(tmp_path, bugsink.dsn)
    cases = {"10.1.4.1": "lkdtm-ACCESS_NULL_ext_oopspanic", "10.1.4.2": "lkdtm-WARNING_ext_then-sysrq-c",
             "10.1.4.3": "lkdtm-HUNG_TASK_classic"}
    for host, name in cases.items():
        pipe.handle(reports(name, host)[0], time.time())
    assert delivery.send_due() == 3
    got = {e["data"]["server_name"]: e["data"] for e in bugsink.events() if e["data"]["server_name"] in cases}
    oops, warning, hung = got["10.1.4.1"], got["10.1.4.2"], got["10.1.4.3"]
    exc = oops["exception"]["values"][0]
    assert oops["platform"] == "native" and oops["sdk"]["name"] == "kpr-omprog"
    # the crashing task as sentry-native's crashed thread, linked from the exception
    assert oops["threads"] == {"values": [{"id": 140, "name": "sh", "crashed": True, "current": True}]}
    assert exc["thread_id"] == 140 and exc["mechanism"]["data"]["cpu"] == 0
    assert exc["mechanism"]["handled"] is False and exc["mechanism"]["synthetic"] is False
    # the register dump with the top frame: CR2 is the NULL address the oops read
    regs = exc["stacktrace"]["registers"]
    assert regs["cr2"] == "0x0000000000000000" and regs["rsp"].startswith("0x") and len(regs) >= 20
    # uname as sentry-native reports it: name, the release as the version, the build
    assert oops["contexts"]["os"] == {"name": "Linux", "version": "6.1.0-56-amd64",
                                      "kernel_version": "6.1.0-56-amd64", "build": "#1  Debian 6.1.192-2"}
    assert oops["contexts"]["device"]["model"] == "QEMU Standard PC (Q35 + ICH9, 2009)"
    assert oops["modules"] == {"lkdtm": "OE", "netconsole": "-", "configfs": "-", "e1000": "-"}
    # a WARNING is handled: the kernel went on
    assert warning["exception"]["values"][0]["mechanism"]["handled"] is True
    # a hung task's stack is the blocked task's (sh, state D), not khungtaskd's who reported it
    assert hung["threads"]["values"] == [{"id": 147, "name": "sh", "crashed": True, "current": True, "state": "D"}]


def test_the_log_attachment_is_a_plain_attachment_and_what_bugsink_keeps_of_it(fresh_bugsink: Bugsink,
                                                                              tmp_path: Path) -> None:
    pipe, delivery = pipeline(tmp_path, fresh_bugsink.dsn)
    pipe.handle(reports("sysrq-c_classic", "10.1.3.1")[0], time.time())
    assert delivery.send_due() == 1
    [event] = fresh_bugsink.wait_events(1)
    header, payload = fresh_bugsink.attachment_items()[event["data"]["event_id"].replace("-", "")]
    # the item as Sentry documents a plain attachment (the envelope as Bugsink received it)
    assert {k: header.get(k) for k in ("type", "attachment_type", "content_type", "filename")} == {
        "type": "attachment", "attachment_type": "event.attachment", "content_type": "text/plain",
        "filename": "kernel.log"}
    assert header["length"] == len(payload) and b"sysrq: Trigger a crash" in payload
    # Bugsink 2.6 stores minidumps only: it reads the type now, and says it skips a text log
    # (the README says so; the event's message carries the header and call trace instead)
    log = fresh_bugsink.log()
    assert "skipping non-supported attachment type: event.attachment" in log
    assert "attachment type: None" not in log


def test_same_report_twice_is_one_event_and_hook_failure_keeps_report(bugsink: Bugsink, tmp_path: Path) -> None:
    def broken_title(addr, klogs):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")

    def bad_tag(addr, klogs):  # type: ignore[no-untyped-def]
        return 42

    parsers = Parsers()
    parsers.register_parser_title(broken_title)
    parsers.register_parser_tag(bad_tag)
    before = len(bugsink.events())
    [r] = reports("lkdtm-CORRUPT_STACK_classic", "10.2.0.1")
    for attempt in range(2):
        pipe, delivery = pipeline(tmp_path / str(attempt), bugsink.dsn, parsers)
        pipe.handle(r, time.time())
        delivery.send_due()
    events = bugsink.wait_events(before + 1)
    time.sleep(0.5)
    mine = [e for e in bugsink.events() if e["data"]["server_name"] == "10.2.0.1"]
    assert len(mine) == 1
    data = mine[0]["data"]
    assert data["exception"]["values"][0]["type"] == "kernel panic: stack is corrupted"
    assert "broken_title" in data["extra"]["failed_hooks"] and "bad_tag" in data["extra"]["failed_hooks"]
    assert len(events) >= before + 1


def test_sentry_down_then_up_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    server = Bugsink(tmp_path / "bugsink")
    try:
        server.stop()
        pipe, delivery = pipeline(tmp_path, server.dsn)
        rs = reports("lkdtm-WARNING_ext_then-sysrq-c", "10.3.0.1") + reports("sysrq-c_ext", "10.3.0.2")
        for r in rs:
            pipe.handle(r, time.time())
        delivery.send_due()
        assert pipe.store.counts() == {"pending": 3}
        # one probe: a refused connection backs the whole DSN off, not one row at a time
        tried = [row for row in pipe.store.reports() if row["attempts"]]
        assert len(tried) == 1 and tried[0]["attempts"] == 1 and "Connection refused" in (tried[0]["last_error"] or "")
        assert delivery.send_due() == 0
        # a restarted receiver finds the outbox and sends when the server is back
        pipe.store.close()
        server.start()
        store = Store(str(tmp_path / "state.sqlite3"))
        d2 = Delivery(store, server.dsn, DeliveryConfig(), clock=lambda: time.time() + 10)
        assert d2.send_due() == 3
        assert store.counts() == {"delivered": 3}
        events = server.wait_events(3)
        assert len(events) == 3
        assert sorted(e["data"]["level"] for e in events) == ["fatal", "fatal", "warning"]
    finally:
        server.stop()


def test_rate_limited_by_real_bugsink_is_retried_later(tmp_path: Path) -> None:
    server = Bugsink(tmp_path / "bugsink", quota=1)
    try:
        pipe, delivery = pipeline(tmp_path, server.dsn)
        rs = reports("sysrq-c_classic") + reports("sysrq-c_ext") + reports("lkdtm-CORRUPT_STACK_classic")
        for i, r in enumerate(rs):
            pipe.handle(r, time.time() - i)
        delivery.send_due()
        counts = pipe.store.counts()
        assert counts.get("delivered", 0) >= 1 and counts.get("pending", 0) >= 1
        pending = [r for r in pipe.store.reports() if r["state"] == "pending"]
        assert any("HTTP 429" in (r["last_error"] or "") for r in pending)
        assert delivery.send_due() == 0  # everything waits for the rate limit
    finally:
        server.stop()


class _Fake(http.server.BaseHTTPRequestHandler):
    answers: ClassVar[list[tuple[int, dict[str, str]]]] = []
    bodies: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).bodies.append(body)
        status, headers = type(self).answers.pop(0) if type(self).answers else (200, {})
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_sentry() -> Iterator[tuple[str, type[_Fake]]]:
    class Handler(_Fake):
        answers: ClassVar[list[tuple[int, dict[str, str]]]] = []
        bodies: ClassVar[list[bytes]] = []

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://key@127.0.0.1:{srv.server_address[1]}/7", Handler
    srv.shutdown()


def test_413_trims_and_resends_keeping_title_fingerprint_tags(tmp_path: Path, fake_sentry: Any) -> None:
    import gzip
    import json

    dsn, handler = fake_sentry
    handler.answers = [(413, {}), (413, {}), (200, {})]
    pipe, delivery = pipeline(tmp_path, dsn)
    [r] = reports("sysrq-c_classic")
    pipe.handle(r, time.time())
    for _ in range(3):
        delivery.send_due()
    assert pipe.store.counts() == {"delivered": 1}
    first, last = (gzip.decompress(b).split(b"\n") for b in (handler.bodies[0], handler.bodies[-1]))
    assert b'"type": "attachment"' in b"\n".join(first)
    assert b'"type": "attachment"' not in b"\n".join(last)
    ev0, ev2 = json.loads(first[2]), json.loads(last[2])
    assert ev0["fingerprint"] == ev2["fingerprint"] and ev0["tags"] == ev2["tags"]
    assert ev0["exception"]["values"][0]["type"] == ev2["exception"]["values"][0]["type"]


def test_other_4xx_is_dead_lettered_and_listed(tmp_path: Path, fake_sentry: Any) -> None:
    dsn, handler = fake_sentry
    handler.answers = [(400, {})]
    pipe, delivery = pipeline(tmp_path, dsn)
    [r] = reports("sysrq-c_classic")
    pipe.handle(r, time.time())
    delivery.send_due()
    [row] = pipe.store.reports()
    assert row["state"] == "dead" and row["status"] == 400


def test_429_retry_after_is_honoured(tmp_path: Path, fake_sentry: Any) -> None:
    dsn, handler = fake_sentry
    handler.answers = [(429, {"Retry-After": "120"})]
    pipe, delivery = pipeline(tmp_path, dsn)
    [r] = reports("sysrq-c_classic")
    pipe.handle(r, time.time())
    delivery.send_due()
    assert delivery.send_due() == 0  # paused
    nxt = pipe.store.next_due()
    assert nxt is not None and nxt > time.time() + 100


def test_hanging_server_times_out_and_backs_off(tmp_path: Path) -> None:
    import socket
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(5)  # accepts, never answers
    try:
        pipe, delivery = pipeline(tmp_path, f"http://k@127.0.0.1:{sock.getsockname()[1]}/1", timeout=0.5)
        [r] = reports("sysrq-c_classic")
        pipe.handle(r, time.time())
        t0 = time.monotonic()
        delivery.send_due()
        assert time.monotonic() - t0 < 5
        [row] = pipe.store.reports()
        assert row["state"] == "pending" and row["attempts"] == 1
    finally:
        sock.close()


def test_full_disk_is_reported_and_report_kept_in_memory(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s.sqlite3"), disk_cap_bytes=1 << 20)
    pipe = Pipeline(Config(), Parsers(), store, None)
    # SQLite's own "database or disk is full", produced on demand by capping its pages
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")
    rs = reports("lkdtm-BUG_ext_oopspanic")
    pipe.handle(rs[0], time.time())
    assert len(pipe.overflow) == 1
    store._db.execute("PRAGMA max_page_count = 100000")
    pipe.retry_overflow(time.time())
    assert len(pipe.overflow) == 0 and store.counts() == {"local": 1}


def test_disk_cap_refuses_loudly(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s.sqlite3"), disk_cap_bytes=1 << 20)
    pipe = Pipeline(Config(), Parsers(), store, None)
    store.put({"event_id": "f" * 32}, b"x" * ((1 << 20) - 100), host="203.0.113.9", title="filler",
              level="error", created=1.0, now=1.0, local=True)  # the cap, nearly reached
    pipe.handle(reports("sysrq-c_classic")[0], time.time())
    assert store.counts() == {"local": 1} and len(pipe.overflow) == 1


def test_full_disk_while_journaling_never_blocks_input_nor_loses_the_report(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # the journal file grows 512 bytes at a time here (a mebibyte in use)
    monkeypatch.setattr(journal_mod, "_CHUNK", 512)
    store = Store(str(tmp_path / "s.sqlite3"))
    pipe = Pipeline(Config(), Parsers(), store, None)
    journal = Journal(str(tmp_path / "journal.bin"))
    intake = Intake(pipe, Assembler(), journal)
    # The kernel's own refusal stands in for a full disk: past RLIMIT_FSIZE the journal's
    # room cannot grow (EFBIG), as on a disk that fills while a crash is being journaled.
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    xfsz = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (700, limit[1]))
    try:
        for d in read_captures([str(DATA / "lkdtm-BUG_ext_oopspanic.jsonl")]):
            intake.feed(d.data, ("10.9.0.1", 6666), d.at, d.at)
            intake.flush()  # what omprog does before each OK: must not raise
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        signal.signal(signal.SIGXFSZ, xfsz)
    assert intake.journal_failures > 0
    kept = Journal(str(tmp_path / "journal.bin")).load()
    assert len(kept) > 0 and all(row[0] == "10.9.0.1" for row in kept)  # whole records only, no torn one
    intake.shutdown(time.time() + 60)
    pipe.retry_overflow(time.time())
    [r] = store.reports()
    assert r["title"] == "kernel BUG in lkdtm_BUG"


@pytest.mark.parametrize("answer", [b"SSH-2.0-OpenSSH_9.2\r\n", b"", b"HTTP/1.1 20",
                                    b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000 + b"\r\n\r\n"],
                         ids=["not-http", "closed", "cut-status-line", "header-too-long"])
def test_an_answer_that_is_not_http_is_retried_with_backoff(tmp_path: Path, answer: bytes) -> None:
    import socket
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)
    served = 0

    def serve() -> None:
        nonlocal served
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.recv(65536)
            served += 1  # counted before answering: the client cannot have the answer before the count
            try:
                conn.sendall(answer)
            except OSError:  # the client gave up mid-answer (a header past its limit): as a real server sees it
                pass
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        pipe, delivery = pipeline(tmp_path, f"http://k@127.0.0.1:{srv.getsockname()[1]}/1", timeout=5)
        [r] = reports("sysrq-c_classic")
        pipe.handle(r, time.time())
        assert delivery.send_due() == 1
        [row] = pipe.store.reports()
        assert row["state"] == "pending" and row["attempts"] == 1 and row["last_error"]
        nxt = pipe.store.next_due()
        assert nxt is not None and nxt >= time.time() + 0.5  # backed off: no busy loop
        assert delivery.send_due() == 0 and served == 1
    finally:
        srv.close()


def test_dead_letters_count_toward_the_cap_and_are_pruned_after_their_retention(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s.sqlite3"), disk_cap_bytes=1 << 20, dead_retention=3600)
    pipe = Pipeline(Config(), Parsers(), store, None)
    [r] = reports("sysrq-c_classic")
    now = time.time()
    pipe.handle(r, now)
    [row] = store.reports()
    held = store.pending_bytes
    store.dead(row["event_id"], 400, "HTTP 400", now)
    assert store.pending_bytes == held > 0  # a dead row still holds its event and attachment
    assert store.prune_dead(now + 60) == 0 and store.counts() == {"dead": 1}
    assert store.prune_dead(now + 3601) == 1 and store.counts() == {} and store.pending_bytes == 0


def test_two_kernel_builds_of_one_crash_are_one_issue_with_two_releases(fresh_bugsink: Bugsink,
                                                                         tmp_path: Path) -> None:
    from dataclasses import replace

    from kpr_omprog.capture import CapturedDatagram

    def build(release: bytes, version: bytes, host: str) -> list[Report]:
        """The captured crash as another build of the kernel would print it."""
        datagrams = [CapturedDatagram(d.data.replace(b"6.1.0-56-amd64", release).replace(b"6.1.192-2", version),
                                      (host, 6666), d.at)
                     for d in read_captures([str(DATA / "lkdtm-BUG_ext_oopspanic.jsonl")])]
        return [replace(r, host=host) for r in replay(datagrams, Assembler())]

    pipe, delivery = pipeline(tmp_path, fresh_bugsink.dsn)
    now = time.time()
    for r in build(b"6.1.0-56-amd64", b"6.1.192-2", "10.4.0.1") + build(b"6.1.0-57-amd64", b"6.1.193-1", "10.4.0.2"):
        pipe.handle(r, now)
    assert delivery.send_due() == 2
    events = fresh_bugsink.wait_events(2)
    got = sorted((e["data"].get("release"), e["data"].get("dist")) for e in events)
    assert got == [("linux@6.1.0-56-amd64", "#1  Debian 6.1.192-2"), ("linux@6.1.0-57-amd64", "#1  Debian 6.1.193-1")]
    assert len({e["issue"] for e in events}) == 1  # one bug, two builds: one issue


def test_a_report_without_a_kernel_release_gets_no_release(tmp_path: Path) -> None:
    from kpr_omprog.event import build_event
    from kpr_omprog.hooks import Parsers as P

    asm = Assembler()
    asm.feed(b"BUG: unable to handle page fault for address: 0000000000001234\n", ("10.4.0.3", 6666), 1.0)
    [r] = asm.close_all()
    parsed = P().run(["10.4.0.3", 6666], r.text)
    event, _ = build_event(r, parsed)
    assert "release" not in event and "dist" not in event


def test_a_rate_limit_announced_on_a_2xx_pauses_delivery(tmp_path: Path, fake_sentry: Any) -> None:
    dsn, handler = fake_sentry
    handler.answers = [(200, {"X-Sentry-Rate-Limits": "120:error;attachment:organization, 5:transaction"})]
    pipe, delivery = pipeline(tmp_path, dsn)
    for name in ("sysrq-c_classic", "lkdtm-CORRUPT_STACK_classic"):
        [r] = reports(name, "10.5.5.1")
        pipe.handle(r, time.time())
    assert delivery.send_due() == 1  # the first is delivered, then the limit holds the second
    assert sorted(r["state"] for r in pipe.store.reports()) == ["delivered", "pending"]
    assert len(handler.bodies) == 1


def test_a_long_log_keeps_its_header_and_call_trace_in_the_message() -> None:
    from kpr_omprog.hooks import MESSAGE_LIMIT, default_message

    [r] = reports("lkdtm-BUG_ext_oopspanic")
    lines = r.text.split("\n")
    at = next(i for i, x in enumerate(lines) if "Call Trace:" in x)
    # 300 lines of register and memory dump between the header and the call trace
    long = "\n".join(lines[:at] + [f"R{i:03d}: " + "0123456789abcdef " * 6 for i in range(300)] + lines[at:])
    shown = default_message(["10.1.0.9", 6666], long)
    assert len(shown) <= MESSAGE_LIMIT
    assert "kernel BUG at" in shown and "Call Trace:" in shown and "direct_entry.cold+0x18/0x24 [lkdtm]" in shown
    assert "lines, in the full log ...]" in shown


def test_events_we_drop_ourselves_are_told_to_the_server_in_a_client_report(tmp_path: Path,
                                                                             fake_sentry: Any) -> None:
    import gzip
    import json

    from kpr_omprog.ratelimit import RateLimitConfig

    dsn, handler = fake_sentry
    handler.answers = [(400, {}), (200, {})]
    store = Store(str(tmp_path / "s.sqlite3"))
    delivery = Delivery(store, dsn, DeliveryConfig())
    pipe = Pipeline(Config(dsn=dsn, rate_limit=RateLimitConfig(crash_burst=1)), Parsers(), store, delivery)
    [r] = reports("sysrq-c_classic", "10.5.6.1")
    for n in range(4):  # the same bug four times: one event, three folded
        pipe.handle(replace(r, first_seen=r.first_seen + n), time.time())
    [other] = reports("lkdtm-CORRUPT_STACK_classic", "10.5.6.2")
    pipe.handle(other, time.time())
    delivery.send_due()  # the first answer is a 400: dead-lettered
    delivery.send_due()
    reports_sent = []
    for body in handler.bodies:
        items = gzip.decompress(body).split(b"\n")
        for i, line in enumerate(items):
            if line.startswith(b'{"type": "client_report"'):
                reports_sent.append(json.loads(items[i + 1]))
    # the 400'd envelope carried the first count; it was given back and told again with the 2xx one
    assert len(reports_sent) == 2
    assert {d["reason"]: d["quantity"] for d in reports_sent[-1]["discarded_events"]} == {
        "event_processor": 3, "send_error": 1}


def test_userdata_becomes_bounded_tags_and_lost_lines_an_extra() -> None:
    from kpr_omprog.event import USERDATA_TAGS, build_event
    from kpr_omprog.hooks import Parsers as P

    asm = Assembler()
    labels = b"".join(b" %s=%s\n" % (k, v) for k, v in
                      [(b"dc", b"ams1"), (b"host", b"spoofed"), (b"weird key!", b"x" * 300)]
                      + [(b"k%d" % i, b"v") for i in range(40)])
    asm.feed(b"4,1,1000,-;BUG: kernel NULL pointer dereference, address: 0000000000000000\n" + labels
             + b" msgid=1\n", ("10.4.0.9", 6666), 1.0)
    asm.feed(b"4,2,1001,-;Oops: 0002 [#1] SMP\n" + labels + b" msgid=4\n", ("10.4.0.9", 6666), 1.0)
    [r] = asm.close_all()
    event, _ = build_event(r, P().run(["10.4.0.9", 6666], r.text))
    tags = event["tags"]
    assert tags["dc"] == "ams1" and tags["host"] == "10.4.0.9" and tags["userdata.host"] == "spoofed"
    assert tags["weird_key_"] == "x" * 200
    assert len([k for k in tags if k[0] == "k" and k[1:].isdigit()]) == USERDATA_TAGS - 3
    assert event["extra"]["lost_lines"] == 2


# The fault line of each architecture, as the kernel prints it (arm64's __show_regs, arm's
# "PC is at", powerpc's NIP), with the trace that follows: the frame it names is the
# innermost, with its module, once (arm64 and arm unwind from it, so their trace repeats it).
ARCH_REPORTS = {
    "arm64": ["Internal error: Oops - BUG: 00000000f2000800 [#1] PREEMPT SMP",
              "CPU: 1 PID: 187 Comm: sh Tainted: G           O       6.1.0-26-arm64 #1  Debian 6.1.112-1",
              "pc : lkdtm_BUG+0x4/0x8 [lkdtm]", "lr : lkdtm_do_action+0x24/0x40 [lkdtm]",
              "sp : ffff80000a3b3c50", "x29: ffff80000a3b3c50 x28: ffff0000c1f1c000 x27: 0000000000000000",
              "Call trace:", " lkdtm_BUG+0x4/0x8 [lkdtm]", " direct_entry+0x13c/0x1b0 [lkdtm]",
              " full_proxy_write+0x68/0xc0", " vfs_write+0xcc/0x2b0", " ksys_write+0x70/0x104"],
    "arm": ["Internal error: Oops - BUG: 0 [#1] SMP ARM",
            "CPU: 0 PID: 93 Comm: sh Not tainted 6.1.0 #1",
            "PC is at lkdtm_BUG+0x4/0x8 [lkdtm]", "LR is at direct_entry+0x120/0x1a0 [lkdtm]",
            "Backtrace:", "[<bf000004>] (lkdtm_BUG [lkdtm]) from [<bf000120>] (direct_entry+0x120/0x1a0 [lkdtm])",
            "[<bf000120>] (direct_entry [lkdtm]) from [<c02f1a2c>] (full_proxy_write+0x5c/0x7c)"],
    "ppc64": ["kernel BUG at drivers/misc/lkdtm/bugs.c:76!",
              "Oops: Exception in kernel mode, sig: 5 [#1]",
              "CPU: 0 PID: 120 Comm: sh Not tainted 6.1.0-26-powerpc64le #1 Debian 6.1.112-1",
              "NIP [c008000000f20f9c] lkdtm_BUG+0x1c/0x30 [lkdtm]",
              "LR [c008000000f21234] direct_entry+0x13c/0x1b0 [lkdtm]",
              "Call Trace:", "[c00000000a4bfb80] [c008000000f21234] direct_entry+0x13c/0x1b0 [lkdtm] (unreliable)",
              "[c00000000a4bfc10] [c0000000006a51f0] full_proxy_write+0x90/0xe0"],
}


@pytest.mark.parametrize("arch", sorted(ARCH_REPORTS))
def test_each_architectures_fault_line_is_the_innermost_frame(arch: str) -> None:
    from kpr_omprog.event import build_event

    asm = Assembler()
    asm.feed(("\n".join(ARCH_REPORTS[arch]) + "\n").encode(), ("10.7.0.1", 6666), 1.0)
    [r] = asm.close_all()
    event, _ = build_event(r, Parsers().run([r.host, r.port], r.text))
    exc = event["exception"]["values"][0]
    frames = exc["stacktrace"]["frames"]
    assert exc["value"] == "in lkdtm_BUG", arch
    assert (frames[-1]["function"], frames[-1]["package"], frames[-1]["in_app"]) == ("lkdtm_BUG", "lkdtm", True)
    assert [f["function"] for f in frames].count("lkdtm_BUG") == 1
    assert sentry_culprit(frames) == "lkdtm_BUG"
