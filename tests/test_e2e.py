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
from tests.rsyslogd import Rsyslogd, free_udp_port
from tests.senders import capture, play
from tests.test_omprog import stored


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


def _restarted(rs: Rsyslogd, old: int) -> bool:
    # one snapshot: the killed program can vanish between two looks
    pids = rs.program_pids()
    return bool(pids) and old not in pids


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_kill_receiver_and_restart_rsyslog_with_lines_queued(fresh_bugsink: Bugsink, tmp_path: Path) -> None:
    state = tmp_path / "state"
    rs = Rsyslogd(tmp_path / "rs", omprog_cmd(state, fresh_bugsink.dsn))
    rs.start()
    target = ("127.0.0.1", rs.port)
    # Host A: an oops streams at a steady pace (a slow serial-speed console: 80 ms a line)
    # while the receiver is SIGKILLed three times; rsyslog queues what arrives meanwhile.
    a = capture("lkdtm-BUG_ext_oopspanic")
    start = next(i for i, (_, d) in enumerate(a) if b"cut here" in d)
    stream = [(i * 0.08, d) for i, (_, d) in enumerate(a[start - 3:])]
    sender = threading.Thread(target=play, args=(target, {"127.0.0.5": a[:start - 3]}))
    sender.start()
    sender.join()
    sender = threading.Thread(target=play, args=(target, {"127.0.0.5": stream}))
    sender.start()
    kills = 0
    time.sleep(0.3)
    while sender.is_alive() and kills < 3:
        old = rs.kill_program()
        kills += 1
        _wait(lambda old=old: _restarted(rs, old), 10, "rsyslog to restart it")
        time.sleep(0.2)
    sender.join()
    assert kills == 3, "the stream ended before three kills: slow it down"
    fresh_bugsink.wait_events(1, timeout=20)
    # Host B: half a panic, then the receiver dies and the rest arrives while rsyslog has
    # no program to give it to; rsyslog is stopped with those lines queued, then started.
    b = capture("sysrq-c_classic")
    half = next(i for i, (_, d) in enumerate(b) if b"Kernel panic" in d) + 3
    play(target, {"127.0.0.6": [(i * 0.002, d) for i, (_, d) in enumerate(b[:half])]})
    time.sleep(0.3)
    rs.kill_program()
    play(target, {"127.0.0.6": [(i * 0.001, d) for i, (_, d) in enumerate(b[half:])]})
    rs.stop()
    queued = rs.queued_files()
    rs.start()
    try:
        events = fresh_bugsink.wait_events(2, timeout=30)
        time.sleep(3)  # anything duplicated would arrive now
        events = fresh_bugsink.events()
    finally:
        rs.stop()
    assert queued, "rsyslog saved no queue: the restart did not happen with lines queued"
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
        time.sleep(1.5)
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
        time.sleep(1.5)
        t = threading.Thread(target=flood)
        t.start()
        time.sleep(0.5)
        play(("127.0.0.1", port), {"127.0.0.7": capture("lkdtm-BUG_classic_oopspanic")})
        t.join()
        time.sleep(3)  # the idle timeout closes what is open
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
