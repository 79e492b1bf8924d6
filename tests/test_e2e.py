"""End to end with real parts: netconsole captures over UDP -> rsyslogd (shipped drop-in) ->
``kpr-omprog omprog`` -> a real Bugsink; the same without rsyslog (``kpr-omprog udp``);
and the receiver killed, rsyslog restarted with lines queued, without losing or
duplicating a report.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from kpr_omprog.assembler import Assembler
from kpr_omprog.capture import CapturedDatagram
from kpr_omprog.sources.replay import replay
from kpr_omprog.store import Store
from tests.bugsink import Bugsink
from tests.rsyslogd import Rsyslogd, free_udp_port, udp_bound
from tests.senders import capture, play
from tests.test_omprog import stored
from tests.waiting import wait_for as _wait


def omprog_cmd(state: Path, dsn: str) -> list[str]:
    return [sys.executable, "-m", "kpr_omprog.cli", "omprog", "--state-dir", str(state), "--dsn", dsn,
            "--log-format", "json"]


def title(event: dict[str, Any]) -> str:
    """The title Sentry shows: the exception's type and value."""
    exc = event["data"]["exception"]["values"][0]
    return f"{exc['type']} {exc['value']}".strip()


def by_ip(events: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in events:
        out.setdefault(e["data"]["user"]["ip_address"], []).append(title(e))
    return {k: sorted(v) for k, v in out.items()}


def test_rsyslog_to_bugsink_three_hosts_at_once(fresh_bugsink: Bugsink, tmp_path: Path) -> None:
    rs = Rsyslogd(tmp_path / "rs", omprog_cmd(tmp_path / "state", fresh_bugsink.dsn))
    rs.check()
    rs.start()
    try:
        play(("127.0.0.1", rs.port), {"127.0.0.2": capture("lkdtm-BUG_classic_oopspanic"),
                                      "127.0.0.3": capture("sysrq-c_ext"),
                                      "127.0.0.4": capture("lkdtm-WARNING_ext_then-sysrq-c")})
        events = fresh_bugsink.wait_events(4, timeout=30)
    finally:
        rs.stop()
    assert by_ip(events) == {
        "127.0.0.2": ["kernel BUG in lkdtm_BUG"],
        "127.0.0.3": ["kernel panic: sysrq triggered crash"],
        "127.0.0.4": ["WARNING in lkdtm_WARNING", "kernel panic: sysrq triggered crash"],
    }
    levels = {e["data"]["exception"]["values"][0]["type"] + "@" + e["data"]["user"]["ip_address"]: e["data"]["level"]
              for e in events}
    assert levels["kernel BUG@127.0.0.2"] == "fatal" and levels["WARNING@127.0.0.4"] == "warning"
    # two hosts with the same panic are one issue; three issues in all
    assert len(fresh_bugsink.issues()) == 3
    attachments = fresh_bugsink.attachments()
    bug = next(e for e in events if e["data"]["user"]["ip_address"] == "127.0.0.2")
    log = attachments[bug["event_id"].replace("-", "")].decode()
    assert "lkdtm: Performing direct entry BUG" in log and "Kernel panic - not syncing: Fatal exception" in log


def test_kill_receiver_and_restart_rsyslog_with_lines_queued(fresh_bugsink: Bugsink, tmp_path: Path) -> None:
    state = tmp_path / "state"
    # The kills below leave gaps of a restart or more between lines that a kernel sent
    # back to back: a long idle timeout keeps them from closing the report early.
    conf = tmp_path / "config.toml"
    conf.write_text("[assembler]\nidle_timeout = 120.0\nmax_age = 300.0\n")
    rs = Rsyslogd(tmp_path / "rs", [*omprog_cmd(state, fresh_bugsink.dsn), "--config", str(conf)], stats=True)
    rs.start()
    try:
        target = ("127.0.0.1", rs.port)
        # Host A: an oops arrives in four parts; after each of the first three the running
        # receiver is SIGKILLed, and the next part arrives while rsyslog has no program
        # (it queues it, and restarts the program about a second later). The kills all
        # fall before the oops's end marker, whose short grace a gap would cut.
        a = capture("lkdtm-BUG_ext_oopspanic")
        start = next(i for i, (_, d) in enumerate(a) if b"cut here" in d)
        end = next(i for i, (_, d) in enumerate(a) if b"---[ end trace" in d)
        play(target, {"127.0.0.5": a[:start - 3]})
        body = [d for _, d in a[start - 3:end]]
        parts = [body[i * len(body) // 3:(i + 1) * len(body) // 3] for i in range(3)] + [[d for _, d in a[end:]]]
        killed: int | None = None
        for n, part in enumerate(parts):
            play(target, {"127.0.0.5": [(i * 0.002, d) for i, d in enumerate(part)]})
            if n < 3:
                # only a receiver that has started: one killed while starting suspends the
                # action for action.resumeInterval, which is not what this test is about
                rs.wait_program(not_pid=killed)
                killed = rs.kill_program()
        assert fresh_bugsink.wait_events(1, timeout=30), "host A's report never reached Bugsink"
        # Host B: half a panic is taken and journaled; the receiver dies, the rest arrives
        # while no program can start, and rsyslog is stopped with those lines queued.
        b = capture("sysrq-c_classic")
        half = next(i for i, (_, d) in enumerate(b) if b"Kernel panic" in d) + 3
        rs.wait_program(not_pid=killed)
        play(target, {"127.0.0.6": [(i * 0.002, d) for i, (_, d) in enumerate(b[:half])]})
        _wait(lambda: b"127.0.0.6" in (state / "journal.bin").read_bytes(), 20, "host B's lines in the journal")
        rs.hold_program()
        killed = rs.kill_program()
        play(target, {"127.0.0.6": [(i * 0.001, d) for i, (_, d) in enumerate(b[half:])]})
        _wait(lambda: rs.stats("kpr_omprog queue").get("size", 0) >= len(b) - half, 20,
              "rsyslog to queue the rest of host B's panic")
        rs.stop()
        queued = rs.queued_files()
        assert queued, "rsyslog saved no queue: the restart did not happen with lines queued"
        rs.release_program()
        rs.start()
        # Whole once rsyslog's queue is empty and both reports are delivered; a duplicate
        # would be a third row in the outbox.
        _wait(lambda: rs.stats("kpr_omprog queue").get("size", 1) == 0, 30, "rsyslog's queue to drain")
        _wait(lambda: [r["state"] for r in stored(state)] == ["delivered", "delivered"], 30,
              "both reports delivered", show=lambda: (stored(state), rs.log.read_text()[-3000:]))
        events = fresh_bugsink.wait_events(2, timeout=30)
    finally:
        rs.stop()
    assert by_ip(events) == {"127.0.0.5": ["kernel BUG in lkdtm_BUG"],
                             "127.0.0.6": ["kernel panic: sysrq triggered crash"]}
    reports = stored(state)
    assert sorted((r["host"], r["state"]) for r in reports) == [("127.0.0.5", "delivered"), ("127.0.0.6", "delivered")]
    whole = fresh_bugsink.attachments()
    for e in events:
        log = whole[e["event_id"].replace("-", "")].decode()
        end = "Kernel Offset:" if e["data"]["user"]["ip_address"] == "127.0.0.6" else "Fatal exception"
        assert end in log, f"report from {e['data']['user']['ip_address']} is not whole"


def test_standalone_udp_ipv4_and_ipv6_to_bugsink(fresh_bugsink: Bugsink, tmp_path: Path) -> None:
    p4, p6 = free_udp_port(), free_udp_port("::1")
    proc = subprocess.Popen([sys.executable, "-m", "kpr_omprog.cli", "udp", "--listen", f"127.0.0.1:{p4}",
                             "--listen", f"[::1]:{p6}", "--state-dir", str(tmp_path / "state"),
                             "--dsn", fresh_bugsink.dsn, "--log-format", "json"],
                            stderr=open(tmp_path / "udp.log", "wb"))  # noqa: SIM115
    try:
        _wait(lambda: udp_bound(p4) and udp_bound(p6), 20, "kpr-omprog udp to bind its ports")
        t4 = threading.Thread(target=play, args=(("127.0.0.1", p4), {"127.0.0.7": capture("lkdtm-BUG_ext_oopspanic")}))
        t4.start()
        play(("::1", p6), {"::1": capture("lkdtm-ACCESS_NULL_ext_oopspanic")})
        t4.join()
        events = fresh_bugsink.wait_events(2, timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(15)
    assert rc == 0, (tmp_path / "udp.log").read_text()[-2000:]
    assert by_ip(events) == {
        "127.0.0.7": ["kernel BUG in lkdtm_BUG"],
        "::1": ["BUG: unable to handle kernel NULL pointer dereference in lkdtm_ACCESS_NULL"],
    }


def test_a_flooding_host_does_not_starve_another_hosts_crash(tmp_path: Path) -> None:
    """One host floods noise (60,000 datagrams in 3 s) while another crashes: the crash
    report is stored whole, the same bytes as the capture gives through the assembler alone."""
    port = free_udp_port()
    state = tmp_path / "state"
    proc = subprocess.Popen([sys.executable, "-m", "kpr_omprog.cli", "udp", "--listen", f"127.0.0.1:{port}",
                             "--state-dir", str(state), "--log-format", "json"],
                            stderr=open(tmp_path / "udp.log", "wb"))  # noqa: SIM115
    flood_sent = 0

    def flood(count: int = 60_000, seconds: float = 3.0) -> None:
        nonlocal flood_sent
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.9", 0))
        start = time.monotonic()
        while flood_sent < count and time.monotonic() - start < seconds + 5:
            due = min(count, int((time.monotonic() - start) / seconds * count) + 1)
            while flood_sent < due:
                s.sendto(b"[ 5.%06d] IN=eth0 OUT= SRC=203.0.113.7 DST=198.51.100.2 PROTO=TCP DPT=22 SYN\n"
                         % flood_sent, ("127.0.0.1", port))
                flood_sent += 1
            time.sleep(0.001)
        s.close()

    try:
        _wait(lambda: udp_bound(port), 20, "kpr-omprog udp to bind its port")
        t = threading.Thread(target=flood)
        t.start()
        _wait(lambda: flood_sent >= 10_000, 20, "the flood to be under way")
        play(("127.0.0.1", port), {"127.0.0.7": capture("lkdtm-BUG_classic_oopspanic")})
        t.join()
        # the crash's report is stored once its end marker's grace is over
        _wait(lambda: (state / "kpr-omprog.sqlite3").exists() and len(stored(state)) >= 1, 30, "the report")
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(15)
    assert rc == 0, (tmp_path / "udp.log").read_text()[-2000:]
    assert flood_sent == 60_000
    store = Store(str(state / "kpr-omprog.sqlite3"))
    try:
        rows = store._db.execute("SELECT host, title, attachment FROM reports").fetchall()
    finally:
        store.close()
    [(host, got_title, attachment)] = rows
    expected = list(replay((CapturedDatagram(d, ("127.0.0.7", 6666), at) for at, d in
                            capture("lkdtm-BUG_classic_oopspanic")), Assembler()))
    assert (host, got_title) == ("127.0.0.7", "kernel BUG in lkdtm_BUG")
    assert bytes(attachment).decode() == expected[0].render_log()


def test_a_receiver_that_cannot_start_leaves_rsyslog_up_and_loses_nothing(tmp_path: Path) -> None:
    # rsyslogd 8.2302 crashed (SIGSEGV) when its omprog program exited before its first OK.
    conf = tmp_path / "config.toml"
    conf.write_text("dsn = 5\n")  # a config mistake: the receiver cannot start
    state = tmp_path / "state"
    rs = Rsyslogd(tmp_path / "rs", [sys.executable, "-m", "kpr_omprog.cli", "omprog", "--omprog", "--config",
                                    str(conf), "--state-dir", str(state), "--log-format", "json"],
                  program_stderr=True, stats=True)
    rs.start()
    try:
        sent = play(("127.0.0.1", rs.port), {"127.0.0.2": capture("sysrq-c_classic")}, speed=50)
        failures = lambda: rs.program_log.read_text().count("dsn: expected a string") if rs.program_log.exists() else 0  # noqa: E731
        _wait(lambda: failures() >= 3, 30, "three failed starts of the receiver")
        assert rs.proc.poll() is None, "rsyslogd died"
        assert rs.stats("kpr_omprog queue").get("size", 0) >= sent - 16  # the lines wait in rsyslog's queue
        conf.write_text("")  # fixed: the next start runs
        _wait(lambda: state.exists() and len(stored(state)) == 1, 60, "the crash once the receiver starts")
        assert rs.proc.poll() is None
        assert stored(state)[0]["host"] == "127.0.0.2"
    finally:
        rs.stop()
