"""Every sender's coverage (issue 23, the server side): the assembler's per-host record,
written to the store's hosts table in batches, bounded, and what a spoofed flood does to it;
``kpr-omprog hosts`` and ``status`` on a real receiver."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kpr_omprog.assembler import Assembler, AssemblerConfig
from kpr_omprog.coverage import format_heartbeat_line, format_test_line, special
from kpr_omprog.store import Store
from tests.senders import play
from tests.test_hostile import stop, udp


def _addr(n: int, net: int = 10) -> tuple[str, int]:
    return (f"127.{net + n // 62500}.{(n // 250) % 250}.{2 + n % 250}", 6666)


def _hear(asm: Assembler, hosts: range, at: float, net: int = 10, times: int = 2) -> None:
    for r in range(times):
        for n in hosts:
            asm.feed(b"[%5d.%06d] line %d\n" % (int(at) + r, n % 1_000_000, r), _addr(n, net), at + r + n * 1e-7)


def test_lines_of_ours_are_recognised_exactly() -> None:
    import re

    from kpr_omprog.coverage import HEARTBEAT_RE, TEST_RE
    from kpr_omprog.netconsole_script import HEARTBEAT_LINE, TEST_LINE

    ours = [format_test_line("web1.example.com", "3f9a"), TEST_LINE.format(hostname="web_1", nonce="a1b2c3d4e5f6")]
    beats = [format_heartbeat_line("web1"), HEARTBEAT_LINE.format(hostname="web1")]
    for text in ours:
        assert special(text) == "test" and re.match(TEST_RE, text)
    for text in beats:
        assert special(text) == "heartbeat" and re.match(HEARTBEAT_RE, text)
    for text in ("kpr-omprog: netconsole test from web1", "kpr-omprog: netconsole test from a b c",
                 "kpr-omprog: netconsole heartbeat from ", "kpr-omprog: netconsole heartbeat from a b"):
        assert special(text) is None and not re.match(TEST_RE, text) and not re.match(HEARTBEAT_RE, text)


def test_hosts_heard_once_never_reach_the_store_and_a_spoofed_flood_replaces_at_most_new_per_flush(
        tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s.sqlite3"))
    asm = Assembler(AssemblerConfig(new_hosts=1000))
    now = time.time()
    _hear(asm, range(300), now - 7200)  # 300 real hosts, two hours ago
    assert store.put_hosts(asm.take_dirty(10_000), now, max_rows=400, new_cap=50) == (300, 0, 0)
    # 20,000 spoofed sources, one datagram each: none is even queued for the store.
    _hear(asm, range(20_000), now, net=100, times=1)
    assert asm.take_dirty(100_000) == [] and asm.stats.new_hosts_forgotten == 19_000
    # 2,000 spoofed sources heard twice each (admitted, the worst a spoofer can do): the
    # table fills its 100 free rows, then only new_cap (50) real hosts are pushed out, the
    # least recently heard first; the other 1,850 wait (counted) for their next line. (A few
    # of the 2,000 may stay unadmitted: their slot in the table of forgotten hosts was taken.)
    _hear(asm, range(2000), now, net=200)
    batch = asm.take_dirty(100_000)
    assert len(batch) >= 1990
    assert store.put_hosts(batch, now, max_rows=400, new_cap=50) == (150, len(batch) - 150, 50)
    rows = store.hosts(limit=1000)
    real = [r for r in rows if r["ip"].startswith("127.10.")]
    assert len(rows) == 400 and len(real) == 250
    counts = store.host_counts(now, silent_after=3600)
    assert counts == {"hosts_stored": 400, "hosts_heard_hour": 150, "hosts_heard_day": 400, "hosts_heard_week": 400,
                      "hosts_silent": 250}
    store.close()


def test_the_record_carries_release_formats_tags_loss_test_line_reports_and_title(tmp_path: Path) -> None:
    asm = Assembler()
    a = ("10.3.0.1", 6666)
    asm.feed(b"[    1.000000] classic line\n", a, 1.0)
    asm.feed(b"6.1.0-56-amd64,6,10,1000000,-;" + format_test_line("web1", "n0nce").encode()
             + b"\n dc=ams1\n rack=r7\n msgid=5\n", a, 2.0)
    asm.feed(b"6.1.0-56-amd64,6,11,1100000,-;later\n dc=ams1\n rack=r7\n msgid=9\n", a, 3.0)
    asm.feed(b"6.1.0-56-amd64,4,12,1200000,-;BUG: kernel NULL pointer dereference, address: 0\n"
             b" dc=ams1\n rack=r7\n msgid=10\n", a, 4.0)
    [rep] = asm.close_all()
    asm.note_title(a, "BUG: kernel NULL pointer dereference")
    [rec] = asm.take_dirty(10)
    assert (rec.release, rec.formats, rec.tags, rec.lost, rec.special, rec.special_at, rec.reports, rec.title,
            rec.datagrams, rec.first_heard, rec.last_heard) == (
        "6.1.0-56-amd64", 3, (("dc", "ams1"), ("rack", "r7")), 3, format_test_line("web1", "n0nce"), 2.0, 1,
        "BUG: kernel NULL pointer dereference", 4, 1.0, 4.0)
    assert "later" in rep.context and format_test_line("web1", "n0nce") not in rep.context
    store = Store(str(tmp_path / "s.sqlite3"))
    store.put_hosts([rec], 10.0, 100, 10)
    # heard again within heard_resolution: not queued (the table's last-heard time is that coarse)
    asm.feed(b"6.1.0-56-amd64,6,13,1300000,-;x\n", a, 60.0)
    assert asm.take_dirty(10) == []
    asm.feed(b"6.1.0-56-amd64,6,14,1400000,-;y\n", a, 400.0)
    [again] = asm.take_dirty(10)
    store.put_hosts([again], 400.0, 100, 10)
    [row] = store.hosts(now=400.0)
    assert (row["datagrams"], row["reports"], row["lost"], row["first_heard"], row["last_heard"], row["tags"],
            row["special"]) == (6, 1, 3, 1.0, 400.0, {"dc": "ams1", "rack": "r7"}, format_test_line("web1", "n0nce"))
    assert store.hosts(silent=3600, now=400.0) == [] and len(store.hosts(silent=60, now=1000.0)) == 1
    assert len(store.hosts(release="6.1.0-56-amd64")) == 1 and store.hosts(release="5.10") == []
    assert len(store.hosts(tag=("dc", "ams1"))) == 1 and store.hosts(tag=("dc", "fra1")) == []
    store.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kpr_omprog.cli", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)


def test_a_running_receiver_lists_its_senders_and_status_counts_them(tmp_path: Path) -> None:
    conf = tmp_path / "config.toml"
    conf.write_text("metrics_interval = 0.2\n[hosts]\nflush_interval = 0.2\n")
    p, port = udp(tmp_path, "--config", str(conf))
    state = tmp_path / "state"
    try:
        ext = [(0.0, b"6.1.0-56-amd64,6,%d,%d,-;line %d\n dc=ams1\n msgid=%d\n" % (i, i * 1000, i, i))
               for i in range(1, 4)]
        ext.append((0.01, b"6.1.0-56-amd64,5,4,4000,-;" + format_test_line("guest", "abc123").encode() + b"\n dc=ams1\n"
                          b" msgid=6\n"))
        play(("127.0.0.1", port), {"127.0.0.70": ext,
                                   "127.0.0.71": [(i * 0.001, b"[    1.%06d] classic %d\n" % (i, i)) for i in range(3)],
                                   "127.0.0.72": [(0.0, b"[    1.000000] heard once\n")]})
        deadline = time.monotonic() + 30
        rows: list[dict[str, object]] = []
        while time.monotonic() < deadline and not any(r["special"] for r in rows if r["ip"] == "127.0.0.70"):
            r = _cli("hosts", "--state-dir", str(state), "--json")
            rows = [json.loads(x) for x in r.stdout.splitlines()] if r.returncode == 0 else []
            time.sleep(0.1)
        by_ip = {r["ip"]: r for r in rows}
        assert set(by_ip) == {"127.0.0.70", "127.0.0.71"}, rows  # .72 was heard once only
        g = by_ip["127.0.0.70"]
        assert (g["release"], g["formats"], g["tags"], g["lost"], g["special"]) == (
            "6.1.0-56-amd64", "extended", {"dc": "ams1"}, 2, format_test_line("guest", "abc123"))
        assert by_ip["127.0.0.71"]["formats"] == "classic"
        text = _cli("hosts", "--state-dir", str(state), "--tag", "dc=ams1").stdout
        assert "127.0.0.70" in text and "127.0.0.71" not in text and "test 20" in text
        assert "0 hosts silent for 1h" in _cli("hosts", "--state-dir", str(state), "--silent", "1h").stdout
        status = _cli("status", "--state-dir", str(state)).stdout
        assert "hosts     2 heard in the last hour, 2 in the last day; 0 of 2 silent" in status
        bad = _cli("hosts", "--state-dir", str(state), "--silent", "two days")
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "expected a duration" in bad.stderr
        bad = _cli("hosts", "--state-dir", str(state), "--tag", "novalue")
        assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr
        deadline = time.monotonic() + 30
        metrics = ""
        while time.monotonic() < deadline and "kpr_omprog_hosts_heard_hour 2.0" not in metrics:
            metrics = (state / "metrics.prom").read_text()
            time.sleep(0.1)
        assert "kpr_omprog_test_lines_total 1.0" in metrics and "kpr_omprog_hosts_silent 0.0" in metrics
        assert "kpr_omprog_hosts_heard_week 2.0" in metrics and 'host="' not in metrics  # no label per host
    finally:
        assert stop(p) == 0


@pytest.mark.parametrize("bad", ["max_rows = 0", "silent_after = 1e9", "flush_interval = 0"])
def test_hosts_settings_are_checked_in_one_line(tmp_path: Path, bad: str) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(f"[hosts]\n{bad}\n")
    r = _cli("check-config", "--config", str(conf))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "hosts" in r.stderr
