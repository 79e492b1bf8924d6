"""A fleet with real rsyslogd: the sharded receiver drop-in (N kpr-omprog processes behind
``hash64mod``), and the relay drop-in in front of two receivers, into a real Bugsink.

What must hold: every host's crash arrives exactly once and whole, a host's lines always
reach the same shard (or receiver), and a receiver that is down while crashes arrive
loses nothing (the relay's queue holds its hosts' frames until it is back).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kpr_omprog.assembler import Assembler
from kpr_omprog.capture import CapturedDatagram
from kpr_omprog.dropin import DropinError, receiver_dropin, relay_dropin
from kpr_omprog.sources.replay import replay
from kpr_omprog.store import Store
from tests.bugsink import Bugsink
from tests.rsyslogd import ROOT, RSYSLOGD, RelayRsyslogd, Rsyslogd, free_tcp_port, free_udp_port
from tests.senders import capture, later, play
from tests.test_e2e import omprog_cmd
from tests.waiting import wait_for

#: six crashing hosts and what each sends
CRASHES = {"127.0.0.2": "lkdtm-BUG_classic_oopspanic", "127.0.0.3": "sysrq-c_ext",
           "127.0.0.4": "lkdtm-WARNING_ext_then-sysrq-c", "127.0.0.5": "lkdtm-ACCESS_NULL_ext_oopspanic",
           "127.0.0.6": "sysrq-c_classic", "127.0.0.7": "lkdtm-BUG_ext_oopspanic"}


#: round k of a test sends each host's capture this many seconds of kernel time later
ROUND = 10_000


def expected_logs(host: str, name: str, rounds: int = 1) -> list[str]:
    """The logs of the reports a host's capture makes, as the assembler makes them, sent
    ``rounds`` times (each round a crash of its own: see :func:`tests.senders.later`)."""
    logs = []
    for k in range(rounds):
        rows = (CapturedDatagram(d, (host, 6666), at) for at, d in later(capture(name), k * ROUND))
        logs += [r.render_log() for r in replay(rows, Assembler())]
    return sorted(logs)


def delivered_hosts(state: Path) -> dict[str, int]:
    """host -> reports in the outbox of ``state`` (one shard or one receiver)."""
    path = state / "kpr-omprog.sqlite3"
    if not path.exists():
        return {}
    s = Store(str(path))
    try:
        out: dict[str, int] = {}
        for r in s.reports(1000):
            out[str(r["host"])] = out.get(str(r["host"]), 0) + 1
        return out
    finally:
        s.close()


def check_exactly_once_and_whole(bugsink: Bugsink, crashes: dict[str, str], rounds: int = 1) -> None:
    want = {host: expected_logs(host, name, rounds) for host, name in crashes.items()}
    n = sum(len(v) for v in want.values())
    events = bugsink.wait_events(n, timeout=60)
    attachments = bugsink.attachments()
    got: dict[str, list[str]] = {}
    for e in events:
        got.setdefault(e["data"]["user"]["ip_address"], []).append(
            attachments[e["event_id"].replace("-", "")].decode())
    assert {h: sorted(v) for h, v in got.items()} == {h: sorted(v) for h, v in want.items()}


def rsyslogd_check(conf: Path) -> None:
    r = subprocess.run([RSYSLOGD, "-N1", "-f", str(conf)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_every_fleet_dropin_passes_rsyslogd_n1(tmp_path: Path) -> None:
    shipped = (ROOT / "rsyslog.d" / "30-kpr-omprog.conf").read_text()
    head = f'global(workDirectory="{tmp_path}")\nmodule(load="imuxsock" SysSock.Use="off")\n'
    assert receiver_dropin(shipped) == shipped  # the default install is the shipped file
    for shards, port in ((1, 10514), (2, None), (4, 10514), (16, None)):
        text = receiver_dropin(shipped, shards, port)
        assert text.count('action(type="omprog"') == shards
        assert all(f"--shard {k}\"" in text for k in range(shards)) or shards == 1
        (tmp_path / "r.conf").write_text(head + text)
        rsyslogd_check(tmp_path / "r.conf")
    relay = (ROOT / "rsyslog.d" / "40-kpr-omprog-relay.conf").read_text()
    rsyslogd_check(_write(tmp_path / "shipped-relay.conf", head + relay))
    for receivers in ([("192.0.2.11", 10514)], [("192.0.2.11", 10514), ("2001:db8::1", 10514), ("r3", 6514)]):
        text = relay_dropin(relay, receivers)
        assert text.count('action(type="omfwd"') == len(receivers)
        rsyslogd_check(_write(tmp_path / "relay.conf", head + text))
    with pytest.raises(DropinError):
        receiver_dropin(shipped.replace('action(type="omprog"', 'action(type="omfile"'), 2)
    bad = subprocess.run([sys.executable, str(ROOT / "kpr_omprog" / "dropin.py"), "relay", "--receivers", "x"],
                         input="", capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "HOST:PORT" in bad.stderr


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_shards_each_host_on_one_shard_exactly_once_and_whole(fresh_bugsink: Bugsink, tmp_path: Path) -> None:
    state = tmp_path / "state"
    rs = Rsyslogd(tmp_path / "rs", omprog_cmd(state, fresh_bugsink.dsn), shards=2)
    rs.check()
    rs.start()
    try:
        # twice: a host's second crash must reach the shard its first one did
        for k in range(2):
            play(("127.0.0.1", rs.port), {h: later(capture(name), k * ROUND) for h, name in CRASHES.items()})
        check_exactly_once_and_whole(fresh_bugsink, CRASHES, rounds=2)
        # each shard's metrics carry its label: node_exporter reads both files from one directory
        for k in range(2):
            prom = state / f"shard-{k}" / "metrics.prom"
            wait_for(lambda prom=prom, k=k: prom.exists() and f'kpr_omprog_datagrams_total{{shard="{k}"}}'
                     in prom.read_text(), 30, f"shard {k}'s metrics file")
    finally:
        rs.stop()
    shards = [delivered_hosts(state / f"shard-{k}") for k in range(2)]
    assert all(shards), f"a shard took no host: {shards}"
    assert not set(shards[0]) & set(shards[1]), f"a host reached both shards: {shards}"
    assert set(shards[0]) | set(shards[1]) == set(CRASHES)
    assert not (state / "kpr-omprog.sqlite3").exists()  # nothing outside the shards' directories
    # the store commands read every shard
    env = {"PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "kpr_omprog.cli", "reports", "--json", "--state-dir", str(state)],
                         capture_output=True, text=True, env=env, check=True).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert {r["host"] for r in rows} == set(CRASHES) and {r["state"] for r in rows} == {"delivered"}
    status = subprocess.run([sys.executable, "-m", "kpr_omprog.cli", "status", "--state-dir", str(state)],
                            capture_output=True, text=True, env=env)
    # both shards read; rsyslogd is stopped by now, so nothing receives and status says so
    assert status.returncode == 1, status.stdout + status.stderr
    assert status.stdout.count("state_dir ") == 2 and "NEEDS A HUMAN: nothing receives" in status.stdout


def test_relay_to_two_receivers_one_down_while_crashes_arrive(fresh_bugsink: Bugsink, tmp_path: Path) -> None:
    ports = [free_tcp_port(), free_tcp_port()]
    states = [tmp_path / f"state-{k}" for k in range(2)]
    receivers = [Rsyslogd(tmp_path / f"receiver-{k}", omprog_cmd(states[k], fresh_bugsink.dsn),
                          relayed_port=ports[k]) for k in range(2)]
    relay = RelayRsyslogd(tmp_path / "relay", ports)
    started: list[Rsyslogd] = []
    try:
        for r in [*receivers, relay]:
            r.check()
            r.start()
            started.append(r)
        target = ("127.0.0.1", relay.port)
        play(target, {h: capture(name) for h, name in CRASHES.items()})
        check_exactly_once_and_whole(fresh_bugsink, CRASHES)
        first = [delivered_hosts(s) for s in states]
        assert all(first), f"a receiver took no host: {first}"
        assert not set(first[0]) & set(first[1]) and set(first[0]) | set(first[1]) == set(CRASHES)
        # Receiver 1 goes down; every host crashes again meanwhile.
        receivers[1].stop()
        down = {h: capture(name) for h, name in CRASHES.items() if h in first[1]}
        play(target, {h: later(capture(name), ROUND) for h, name in CRASHES.items()})
        wait_for(lambda: relay.stats("kpr_relay_1 queue").get("size", 0) >= sum(len(v) for v in down.values()),
                 30, "the relay to hold the down receiver's hosts' frames",
                 show=lambda: relay.stats("kpr_relay_1 queue"))
        receivers[1].start()
        check_exactly_once_and_whole(fresh_bugsink, CRASHES, rounds=2)
        second = [delivered_hosts(s) for s in states]
        assert {h: 2 * n for h, n in first[0].items()} == second[0]
        assert {h: 2 * n for h, n in first[1].items()} == second[1]
        # the relay's ip never stands in for a sender's
        assert set(second[0]) | set(second[1]) == set(CRASHES)
    finally:
        for r in reversed(started):
            r.stop()


def test_shards_queues_saved_on_shutdown_keep_every_line(tmp_path: Path) -> None:
    """The shards' action queues hold the line made in the UDP ruleset ($.kpr_line): saved
    to disk at shutdown and replayed at the next start, it must still be there."""
    state = tmp_path / "state"
    rs = Rsyslogd(tmp_path / "rs", [sys.executable, "-m", "kpr_omprog.cli", "omprog", "--state-dir", str(state),
                                    "--log-format", "json"], shards=2, stats=True)
    crashes = {h: CRASHES[h] for h in ("127.0.0.2", "127.0.0.3", "127.0.0.6")}
    rs.start()
    try:
        # Both shards' programs run and have journaled the first lines; then they are killed
        # and cannot start again. (Held before their first start, rsyslogd 8.2302 crashed
        # with SIGSEGV here, the shipped unsharded drop-in too.)
        play(("127.0.0.1", rs.port), {h: capture(name)[:5] for h, name in crashes.items()})
        wait_for(lambda: len([p for p in rs.program_pids() if rs.started_pid(p)]) == 2, 30,
                 "both shards' programs to start")
        rs.hold_program()
        rs.kill_program()
        sent = play(("127.0.0.1", rs.port), {h: capture(name)[5:] for h, name in crashes.items()})
        # each shard's action worker holds one batch (queue.dequeueBatchSize) out of its queue
        wait_for(lambda: sum(rs.stats(f"kpr_omprog_{k} queue").get("size", 0) for k in range(2)) >= sent - 2 * 16,
                 30, "rsyslog to queue every line while no program runs",
                 show=lambda: (sent, [rs.stats(f"kpr_omprog_{k} queue") for k in range(2)]))
        rs.stop()
        assert rs.queued_files(), "rsyslog saved no queue"
        rs.release_program()
        rs.start()
        want = {h: expected_logs(h, name) for h, name in crashes.items()}
        wait_for(lambda: _stored_logs(state, 2) == want, 60, "every report whole in the shards' outboxes",
                 show=lambda: {h: len(v) for h, v in _stored_logs(state, 2).items()})
    finally:
        rs.stop()


def test_a_shard_takes_over_the_unsharded_outbox(tmp_path: Path) -> None:
    """Going from one receiver to shards: its undelivered reports are delivered by a shard."""
    state = tmp_path / "state"
    old = Store(str(state / "kpr-omprog.sqlite3"))
    for n in range(2):
        old.put({"event_id": f"{n:032x}"}, b"log", host=f"10.0.0.{n}", title="t", level="fatal", created=1.0,
                now=1.0, local=True)
    old.close()
    r = subprocess.run([sys.executable, "-m", "kpr_omprog.cli", "omprog", "--shard", "1", "--state-dir", str(state),
                        "--log-format", "json"], input=b"", capture_output=True, env={"PYTHONPATH": str(ROOT)},
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert b'"unsharded_reports_adopted"' in r.stderr
    assert delivered_hosts(state / "shard-1") == {"10.0.0.0": 1, "10.0.0.1": 1}
    assert delivered_hosts(state) == {}
    r = subprocess.run([sys.executable, "-m", "kpr_omprog.cli", "omprog", "--shard", "64", "--state-dir", str(state)],
                       capture_output=True, text=True, env={"PYTHONPATH": str(ROOT)}, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--shard 64" in r.stderr


def test_udp_workers_keep_each_host_on_one_worker_and_stop_cleanly(tmp_path: Path) -> None:
    """``kpr-omprog udp --workers 2``: SO_REUSEPORT, a state directory per worker, every
    report once and whole, a killed worker started again, SIGTERM stops them all."""
    state = tmp_path / "state"
    port = free_udp_port()
    names = list(CRASHES.values())
    # 12 hosts: the kernel's hash puts them all on one worker with a chance of 2 in 4096
    crashes = {f"127.0.0.{10 + i}": names[i % len(names)] for i in range(12)}
    sport = free_udp_port("127.0.0.10")  # one fixed source port per host, as netconsole has
    log = tmp_path / "udp.log"
    with open(log, "wb") as err:
        sup = subprocess.Popen([sys.executable, "-m", "kpr_omprog.cli", "udp", "--workers", "2", "--listen",
                                f"127.0.0.1:{port}", "--state-dir", str(state), "--log-format", "json"],
                               stderr=err, env={"PYTHONPATH": str(ROOT)})
    try:
        def events(name: str) -> list[dict[str, Any]]:
            return [x for x in map(_json, log.read_text().splitlines()) if x.get("event") == name]

        wait_for(lambda: len(events("udp_started")) == 2, 30, "both workers to listen", proc=sup)
        play(("127.0.0.1", port), {h: capture(name) for h, name in crashes.items()}, sport=sport)
        want = {h: expected_logs(h, name) for h, name in crashes.items()}
        wait_for(lambda: _stored_logs(state, 2) == want, 60, "every report whole in the workers' outboxes",
                 proc=sup, show=lambda: {h: len(v) for h, v in _stored_logs(state, 2).items()})
        shards = [delivered_hosts(state / f"shard-{k}") for k in range(2)]
        assert all(shards) and not set(shards[0]) & set(shards[1]), shards
        # a worker killed is started again
        victim = events("udp_started")[0]["pid"]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(events("udp_started")) == 3, 30, "the killed worker to be started again", proc=sup)
        assert events("udp_worker_died")[0]["exit_code"] == -signal.SIGKILL
        pids = [x["pid"] for x in events("udp_started")[1:]]
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(60) == 0
        assert len(events("udp_stopped")) == 2 and events("udp_workers_stopped")
        for pid in pids:
            assert not os.path.exists(f"/proc/{pid}") or "zombie" in Path(f"/proc/{pid}/status").read_text()
    finally:
        if sup.poll() is None:
            sup.send_signal(signal.SIGTERM)
            try:
                sup.wait(60)
            except subprocess.TimeoutExpired:
                sup.kill()
                sup.wait()


def test_udp_workers_die_with_their_supervisor(tmp_path: Path) -> None:
    """A supervisor killed outright leaves no worker holding the port and the state."""
    log = tmp_path / "udp.log"
    with open(log, "wb") as err:
        sup = subprocess.Popen([sys.executable, "-m", "kpr_omprog.cli", "udp", "--workers", "2", "--listen",
                                f"127.0.0.1:{free_udp_port()}", "--state-dir", str(tmp_path / "state"),
                                "--log-format", "json"], stderr=err, env={"PYTHONPATH": str(ROOT)})
    pids: list[int] = []
    try:
        def started() -> list[int]:
            return [x["pid"] for x in map(_json, log.read_text().splitlines()) if x.get("event") == "udp_started"]

        wait_for(lambda: len(started()) == 2, 30, "both workers to listen", proc=sup)
        pids = started()
    finally:
        sup.kill()
        sup.wait()

    def gone(pid: int) -> bool:
        try:
            return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return True

    try:
        wait_for(lambda: all(gone(p) for p in pids), 30, "the workers to stop with their supervisor")
    finally:
        for p in pids:
            if not gone(p):
                os.kill(p, signal.SIGKILL)


def test_udp_workers_a_port_in_use_stops_them_all_in_one_line(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "kpr_omprog.cli", "udp", "--workers", "2", "--listen",
                            f"127.0.0.1:{port}", "--state-dir", str(tmp_path), "--log-format", "json"],
                           capture_output=True, text=True, env={"PYTHONPATH": str(ROOT)}, timeout=60)
    assert r.returncode == 1
    assert "cannot listen on UDP" in r.stderr and "udp_worker_failed_at_start" in r.stderr
    assert "Traceback" not in r.stderr


def _json(line: str) -> dict[str, Any]:
    try:
        out = json.loads(line)
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


def _stored_logs(state: Path, shards: int) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k in range(shards):
        path = state / f"shard-{k}" / "kpr-omprog.sqlite3"
        if not path.exists():
            continue
        s = Store(str(path))
        try:
            for r in s.reports(1000):
                full = s.report(str(r["event_id"]))
                assert full is not None
                out.setdefault(str(r["host"]), []).append(str(full["log"]))
        finally:
            s.close()
    return {h: sorted(v) for h, v in out.items()}
