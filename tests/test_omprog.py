"""`kpr-omprog omprog`: the protocol, kill -9 mid-report, and a real rsyslogd with the shipped drop-in."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kpr_omprog.config import OmprogConfig
from kpr_omprog.sources.line_ring import LineRing
from kpr_omprog.store import Store
from tests.rsyslogd import Rsyslogd
from tests.senders import capture, play

DATA = Path(__file__).parent / "data"


def omprog_lines(name: str, ip: str = "10.5.0.1") -> list[bytes]:
    out = []
    for line in (DATA / f"{name}.jsonl").read_text().splitlines():
        o = json.loads(line)
        raw = base64.b64decode(o["data_b64"])
        received = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(o["t"])) + f".{int(o['t'] % 1 * 1e6):06d}+00:00"
        out.append(json.dumps({"ip": ip, "received": received, "raw": raw.decode("utf-8", "surrogateescape")},
                              ensure_ascii=False).encode("utf-8", "surrogateescape") + b"\n")
    return out


def start(state: Path) -> subprocess.Popen[bytes]:
    p = subprocess.Popen([sys.executable, "-m", "kpr_omprog.cli", "omprog", "--state-dir", str(state),
                          "--log-format", "json"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    assert p.stdout is not None and p.stdout.readline() == b"OK\n"
    return p


def send(p: subprocess.Popen[bytes], lines: list[bytes]) -> None:
    assert p.stdin is not None and p.stdout is not None
    for line in lines:
        p.stdin.write(line)
        p.stdin.flush()
        assert p.stdout.readline() == b"OK\n"


def stored(state: Path) -> list[dict[str, object]]:
    s = Store(str(state / "kpr-omprog.sqlite3"))
    try:
        return s.reports()
    finally:
        s.close()


def test_protocol_and_malformed_lines(tmp_path: Path) -> None:
    p = start(tmp_path)
    send(p, [b"not json\n", b'{"ip": 1}\n', b"\xff\xfe\n"] + omprog_lines("sysrq-c_classic"))
    assert p.stdin is not None
    p.stdin.close()
    assert p.wait(15) == 0
    [r] = stored(tmp_path)
    assert r["title"] == "kernel panic: sysrq triggered crash" and r["state"] == "local"


def test_kill_9_mid_report_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    lines = omprog_lines("lkdtm-BUG_ext_oopspanic")
    start_at = next(i for i, x in enumerate(lines) if b"cut here" in x)
    cuts = [start_at + 5, start_at + 20, start_at + 40]
    pos = 0
    for cut in cuts:
        p = start(tmp_path)
        send(p, lines[pos:cut])
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        pos = cut - 1  # rsyslog re-sends the line in flight: a duplicate must not duplicate anything
    p = start(tmp_path)
    send(p, lines[pos:])
    assert p.stdin is not None
    p.stdin.close()
    assert p.wait(15) == 0
    [r] = stored(tmp_path)
    assert r["title"] == "kernel BUG in lkdtm_BUG"
    # the report is whole: compare with a clean run
    clean = tmp_path / "clean"
    p = start(clean)
    send(p, lines)
    p.stdin.close()  # type: ignore[union-attr]
    p.wait(15)
    [c] = stored(clean)
    assert c["event_id"] == r["event_id"]


STALLED = """
import os, sys, time
from kpr_omprog import runtime
feed = runtime.Intake.feed
target = os.environb[b"KPR_TEST_STALL_ON"]
def stalled(self, data, *args):  # stands still on one line, after its OK, before processing it
    if data == target:
        open(os.environ["KPR_TEST_STALLED"], "w").close()
        time.sleep(600)
    return feed(self, data, *args)
runtime.Intake.feed = stalled
from kpr_omprog.cli import main
sys.exit(main())
"""


def clean_event_id(lines: list[bytes], state: Path) -> str:
    p = start(state)
    send(p, lines)
    assert p.stdin is not None
    p.stdin.close()
    assert p.wait(15) == 0
    [c] = stored(state)
    return str(c["event_id"])


def test_a_line_answered_but_not_processed_is_processed_at_the_next_start(tmp_path: Path) -> None:
    # OK goes out before processing (the rate is bound by the time to OK), so a kill can fall
    # between the two: rsyslog will not resend that line, and the in-flight file must hold it.
    # The receiver is held still inside that window (a real process, its real in-flight file).
    lines = omprog_lines("lkdtm-BUG_ext_oopspanic")
    cut = next(i for i, x in enumerate(lines) if b"cut here" in x) + 10
    target = json.loads(lines[cut])["raw"].encode("utf-8", "surrogateescape")
    stalled = tmp_path / "stalled"
    p = subprocess.Popen([sys.executable, "-c", STALLED, "omprog", "--state-dir", str(tmp_path), "--log-format",
                          "json"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         env=dict(os.environ, KPR_TEST_STALL_ON=target, KPR_TEST_STALLED=str(stalled)))
    try:
        assert p.stdout is not None and p.stdout.readline() == b"OK\n"
        # The reader answers while the processor stands still: five lines after the stalled one are answered too.
        send(p, lines[:cut + 6])
        deadline = time.monotonic() + 15
        while not stalled.exists():
            assert time.monotonic() < deadline and p.poll() is None, "the receiver never reached the stalled line"
            time.sleep(0.01)
        assert ring_entries(tmp_path) == [x.rstrip(b"\n") for x in lines[cut:cut + 6]]
    finally:
        p.kill()
        p.wait()
    p = start(tmp_path)
    send(p, lines[cut + 6:])
    assert p.stdin is not None
    p.stdin.close()
    assert p.wait(15) == 0
    [r] = stored(tmp_path)
    assert r["title"] == "kernel BUG in lkdtm_BUG"
    assert r["event_id"] == clean_event_id(lines, tmp_path / "clean")
    assert ring_entries(tmp_path) == []


def ring_entries(state: Path) -> list[bytes]:
    """The lines answered and not processed (the ring's entries past its consumed mark)."""
    ring = LineRing(str(state / "omprog-ring"), OmprogConfig().ring_bytes)
    try:
        out = []
        while (entry := ring.get()) is not None:
            out.append(entry[1])
        return out
    finally:
        ring.close()


def test_a_kill_after_any_ok_changes_no_event_id(tmp_path: Path) -> None:
    # A receiver is SIGKILLed right after each OK in turn, from the line before the crash to
    # its last line: wherever the kill lands (before, during or after processing the line,
    # before or after its journal write), the next start must give the same single report.
    lines = omprog_lines("lkdtm-BUG_ext_oopspanic")
    first = next(i for i, x in enumerate(lines) if b"cut here" in x) - 1
    clean = clean_event_id(lines, tmp_path / "clean")
    state = tmp_path / "killed"
    p = start(state)
    try:
        send(p, lines[:first])
        for i in range(first, len(lines)):
            send(p, [lines[i]])
            p.kill()
            p.wait()
            p = start(state)
        assert p.stdin is not None
        p.stdin.close()
        assert p.wait(15) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    reports = stored(state)
    assert [(r["title"], r["event_id"]) for r in reports] == [("kernel BUG in lkdtm_BUG", clean)]


POISONED = """
import sys
from kpr_omprog import runtime
feed = runtime.Intake.feed
def poisoned(self, data, *args):  # a bug that kills the receiver on one datagram
    if b"POISON" in data:
        raise RuntimeError("poison")
    return feed(self, data, *args)
runtime.Intake.feed = poisoned
from kpr_omprog.cli import main
sys.exit(main())
"""


@pytest.mark.parametrize("where", ["ring", "older version's in-flight file"])
def test_a_line_that_killed_the_receiver_is_dropped_not_retried_forever(tmp_path: Path, where: str) -> None:
    poison = json.dumps({"ip": "10.5.0.9", "received": "2026-11-24T10:00:00+00:00", "raw": "POISON\n"}).encode()
    if where == "ring":
        ring = LineRing(str(tmp_path / "omprog-ring"), OmprogConfig().ring_bytes)
        assert ring.put(poison)
        ring.close()
    else:
        (tmp_path / "omprog-inflight").write_bytes(b"P" + poison + b"\n")
    p = subprocess.Popen([sys.executable, "-c", POISONED, "omprog", "--state-dir", str(tmp_path), "--log-format",
                          "json"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline() == b"OK\n"
    send(p, omprog_lines("sysrq-c_classic"))
    p.stdin.close()  # type: ignore[union-attr]
    assert p.wait(15) == 0
    assert b"omprog_inflight_failed" in p.stderr.read()  # type: ignore[union-attr]
    assert [r["title"] for r in stored(tmp_path)] == ["kernel panic: sysrq triggered crash"]
    assert ring_entries(tmp_path) == [] and not (tmp_path / "omprog-inflight").exists()


def test_real_rsyslogd_with_shipped_dropin(tmp_path: Path) -> None:
    state = tmp_path / "state"
    rs = Rsyslogd(tmp_path / "rs", [sys.executable, "-m", "kpr_omprog.cli", "omprog", "--state-dir", str(state)])
    rs.check()
    rs.start()
    try:
        titles: list[object] = []
        for n, name in enumerate(("lkdtm-BUG_classic_oopspanic", "sysrq-c_ext"), 1):
            play(("127.0.0.1", rs.port), {"127.0.0.1": capture(name)}, speed=20)
            # one report stored before the next capture: from one host, they would be one
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if (state / "kpr-omprog.sqlite3").exists():
                    titles = sorted(r["title"] for r in stored(state))
                    if len(titles) >= n:
                        break
                time.sleep(0.1)
        assert titles == ["kernel BUG in lkdtm_BUG", "kernel panic: sysrq triggered crash"]
    finally:
        rs.stop()


def test_sighup_reloads_config_and_is_never_fatal(tmp_path: Path) -> None:
    conf = tmp_path / "config.toml"
    conf.write_text(f'state_dir = "{tmp_path}"\nlog_level = "info"\n')
    p = subprocess.Popen([sys.executable, "-m", "kpr_omprog.cli", "omprog", "--config", str(conf),
                          "--log-format", "json"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=open(tmp_path / "err.log", "wb"))  # noqa: SIM115
    assert p.stdout is not None and p.stdout.readline() == b"OK\n"
    lines = omprog_lines("sysrq-c_classic")
    send(p, lines[:100])
    p.send_signal(signal.SIGHUP)
    send(p, lines[100:200])
    deadline = time.monotonic() + 15  # the processor takes the signal between lines, after the reader's OKs
    while b"config_reloaded" not in (tmp_path / "err.log").read_bytes():
        assert time.monotonic() < deadline and p.poll() is None, "SIGHUP never reloaded the config"
        time.sleep(0.01)
    conf.write_text("log_level = \"loud\"\n")  # broken: the running config stays
    p.send_signal(signal.SIGHUP)
    send(p, lines[200:])
    assert p.stdin is not None
    p.stdin.close()
    assert p.wait(15) == 0
    log = [json.loads(x) for x in (tmp_path / "err.log").read_text().splitlines() if x.startswith("{")]
    events = [x["event"] for x in log]
    assert "config_reloaded" in events
    failed = next(x for x in log if x["event"] == "config_reload_failed")
    assert "log_level" in failed["error"]
    [r] = stored(tmp_path)
    assert r["title"] == "kernel panic: sysrq triggered crash"


def reader_pid(p: subprocess.Popen[bytes]) -> int:
    """The reader the receiver forked (its one child)."""
    [child] = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
    return int(child)


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] in "ZX"
    except FileNotFoundError:
        return True


def test_the_reader_dies_with_the_processor_and_the_processor_with_the_reader(tmp_path: Path) -> None:
    lines = omprog_lines("lkdtm-BUG_ext_oopspanic")
    cut = next(i for i, x in enumerate(lines) if b"cut here" in x) + 10
    # The processor killed: the reader must not go on answering lines nobody processes.
    p = start(tmp_path)
    send(p, lines[:cut])
    reader = reader_pid(p)
    p.kill()
    p.wait()
    deadline = time.monotonic() + 15
    while not gone(reader):
        assert time.monotonic() < deadline, "the reader outlived the processor"
        time.sleep(0.01)
    # The reader killed: the processor processes what it answered, then exits for rsyslog to start it again.
    err = tmp_path / "err.log"
    with open(err, "wb") as f:
        p = subprocess.Popen([sys.executable, "-m", "kpr_omprog.cli", "omprog", "--state-dir", str(tmp_path),
                              "--log-format", "json"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=f)
    assert p.stdout is not None and p.stdout.readline() == b"OK\n"
    send(p, lines[cut:cut + 10])
    os.kill(reader_pid(p), signal.SIGKILL)
    try:
        assert p.wait(15) == 1
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert b'"omprog_reader_died"' in err.read_bytes(), err.read_text()
    p = start(tmp_path)
    send(p, lines[cut + 10:])
    p.stdin.close()  # type: ignore[union-attr]
    assert p.wait(15) == 0
    [r] = stored(tmp_path)
    assert r["event_id"] == clean_event_id(lines, tmp_path / "clean")


HELD = """
import os, sys, time
from kpr_omprog import runtime
feed = runtime.Intake.feed
def held(self, data, *args):  # the processor stands still while a file exists (a slow disk, a slow hook)
    while os.path.exists(os.environ["KPR_TEST_HOLD"]):
        time.sleep(0.01)
    return feed(self, data, *args)
runtime.Intake.feed = held
from kpr_omprog.cli import main
sys.exit(main())
"""


def test_a_full_ring_makes_the_reader_wait_and_loses_nothing(tmp_path: Path) -> None:
    # omprog.ring_bytes is the bound: with the processor held, the reader answers until the
    # ring is full, then waits (rsyslog keeps the rest queued), says so, and counts it.
    conf = tmp_path / "config.toml"
    conf.write_text(f'state_dir = "{tmp_path}"\n[omprog]\nmax_line_bytes = 65536\nring_bytes = 131136\n')
    hold = tmp_path / "hold"
    hold.touch()
    lines = omprog_lines("lkdtm-BUG_ext_oopspanic")
    lines += [json.dumps({"ip": "10.5.0.7", "received": "2026-11-24T10:00:00+00:00",
                          "raw": f"[ 1.{i:06d}] noise line {i} " + "x" * 400 + "\n"}).encode() + b"\n"
              for i in range(400)]
    p = subprocess.Popen([sys.executable, "-c", HELD, "omprog", "--config", str(conf), "--log-format", "json"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=dict(os.environ, KPR_TEST_HOLD=str(hold)))
    try:
        assert p.stdin is not None and p.stdout is not None and p.stdout.readline() == b"OK\n"
        answered = 0
        os.set_blocking(p.stdout.fileno(), False)
        for line in lines:
            p.stdin.write(line)
            p.stdin.flush()
            deadline = time.monotonic() + 2  # a wait for an OK that must not come: the ring is full
            while (got := p.stdout.read(3)) is None and time.monotonic() < deadline:
                time.sleep(0.005)
            if got is None:
                break
            assert got == b"OK\n"
            answered += 1
        assert 100 < answered < len(lines), f"{answered} lines answered into a ring of 128 KiB"
        hold.unlink()  # the processor moves: room, the OK comes, the rest follows
        os.set_blocking(p.stdout.fileno(), True)
        assert p.stdout.readline() == b"OK\n"
        send(p, lines[answered + 1:])
        p.stdin.close()
        assert p.wait(15) == 0
        err = p.stderr.read()  # type: ignore[union-attr]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    stop = next(json.loads(x) for x in err.splitlines() if b'"omprog_stopped"' in x)
    assert stop["lines"] == len(lines)
    assert b'"omprog_ring_full"' in err
    [waits] = re.findall(r"\nkpr_omprog_ring_waits_total (\S+)\n", (tmp_path / "metrics.prom").read_text())
    assert float(waits) >= 1  # the line that found no room, and any after it while the processor caught up
    assert [r["title"] for r in stored(tmp_path)] == ["kernel BUG in lkdtm_BUG"]


def test_sigterm_stops_the_receiver_while_lines_keep_coming(tmp_path: Path) -> None:
    # Lines are written without waiting for their OKs (as fast as the reader takes them), so
    # the ring is never empty: the stop must not wait for a pause in the input.
    err = tmp_path / "err.log"
    block = b"".join(json.dumps({"ip": f"10.5.{i % 200}.8", "received": "2026-11-24T10:00:00+00:00",
                                 "raw": f"[ 2.{i:06d}] noise line {i}\n"}).encode() + b"\n" for i in range(1000))
    with open(err, "wb") as f:
        p = subprocess.Popen([sys.executable, "-m", "kpr_omprog.cli", "omprog", "--state-dir", str(tmp_path),
                              "--log-format", "json"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=f)
    assert p.stdin is not None and p.stdout is not None
    stdin, stopping = p.stdin, threading.Event()

    def pump() -> None:  # for 20 s at most, then the end of input (which stops any receiver)
        deadline = time.monotonic() + 20
        try:
            while time.monotonic() < deadline and not (stopping.is_set() and p.poll() is not None):
                stdin.write(block)
                stdin.flush()
            stdin.close()
        except (BrokenPipeError, ValueError):
            pass

    writer = threading.Thread(target=pump)
    writer.start()
    oks = 0
    try:
        while oks < 20_000:
            chunk = os.read(p.stdout.fileno(), 65536)
            assert chunk, "the receiver stopped answering"
            oks += chunk.count(b"OK\n")
        p.send_signal(signal.SIGTERM)
        stopping.set()
        sent = time.monotonic()
        while chunk := os.read(p.stdout.fileno(), 65536):
            oks += chunk.count(b"OK\n")
        assert p.wait(15) == 0
        assert time.monotonic() - sent < 10, "SIGTERM waited for the input to end"
    finally:
        stopping.set()
        if p.poll() is None:
            p.kill()
            p.wait()
        writer.join()
        if not stdin.closed:
            stdin.close()
    stop = next(json.loads(x) for x in err.read_bytes().splitlines() if b'"omprog_stopped"' in x)
    # every line answered before the stop was processed (one more if the reader was stopped between the two)
    assert oks - 1 <= stop["lines"] <= oks


def test_lines_that_wait_on_stdin_at_the_start_are_new_lines_not_recovered_ones(tmp_path: Path) -> None:
    lines = omprog_lines("sysrq-c_classic")
    err = tmp_path / "err.log"
    with open(err, "wb") as f:
        p = subprocess.Popen([sys.executable, "-m", "kpr_omprog.cli", "omprog", "--state-dir", str(tmp_path),
                              "--log-format", "json"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=f)
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write(b"".join(lines))  # there before the receiver reads anything (rsyslog's queue after a restart)
    p.stdin.close()
    assert p.stdout.read().count(b"OK\n") == len(lines) + 1
    assert p.wait(15) == 0
    log = [json.loads(x) for x in err.read_bytes().splitlines() if x.startswith(b"{")]
    started = next(x for x in log if x["event"] == "omprog_started")
    assert started["recovered_bytes"] == 0
    assert not [x for x in log if x["event"].startswith("omprog_inflight")]
    assert [r["title"] for r in stored(tmp_path)] == ["kernel panic: sysrq triggered crash"]
