"""An open port receives anything: `kpr-omprog udp` and `kpr-omprog omprog` as processes
under malformed input, floods of spoofed sources, a full outbox and forged clocks.

Each test asserts that the process lives, that a real crash sent during or after the
attack gives exactly the report the assembler gives it alone, and that nothing is lost
across a restart.
"""

from __future__ import annotations

import json
import random
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kpr_omprog.assembler import Assembler, AssemblerConfig, Report
from kpr_omprog.capture import CapturedDatagram
from kpr_omprog.journal import used_bytes
from kpr_omprog.sources.omprog import MalformedLine, parse_omprog_line
from kpr_omprog.sources.replay import replay
from kpr_omprog.store import Store
from tests.rsyslogd import free_udp_port, udp_bound
from tests.senders import capture, play
from tests.test_omprog import omprog_lines, send, stored
from tests.waiting import wait_for as _wait


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def attachments(state: Path) -> list[tuple[str, str, str]]:
    store = Store(str(state / "kpr-omprog.sqlite3"))
    try:
        rows = store._db.execute("SELECT host, title, attachment FROM reports ORDER BY created").fetchall()
    finally:
        store.close()
    return [(h, t, bytes(a).decode()) for h, t, a in rows]


def alone(name: str, host: str, config: AssemblerConfig | None = None) -> list[Report]:
    """What the assembler alone makes of a capture."""
    return list(replay((CapturedDatagram(d, (host, 6666), at) for at, d in capture(name)), Assembler(config)))


# -- omprog -------------------------------------------------------------------------------

def omprog(state: Path, *extra: str, stderr: Any = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    p = subprocess.Popen([sys.executable, "-m", "kpr_omprog.cli", "omprog", "--state-dir", str(state),
                          "--log-format", "json", *extra], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=stderr)
    assert p.stdout is not None and p.stdout.readline() == b"OK\n"
    return p


def finish(p: subprocess.Popen[bytes]) -> int:
    try:
        assert p.stdin is not None
        p.stdin.close()
        return p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


KILLER_LINES = [
    b'{"ip": "10.6.0.1", "received": "2026-11-24T10:00:00+00:00", "raw": "\\ud800 lone surrogate\\n"}\n',
    b'{"ip": "\\ud800", "received": "2026-11-24T10:00:00+00:00", "raw": "x\\n"}\n',
    b'{"ip": "' + b"1" * 70_000 + b'", "received": "2026-11-24T10:00:00+00:00", "raw": "x\\n"}\n',
    b"[" * 100_000 + b"\n",
    bytes(range(256)).replace(b"\n", b"") + b"\n",
    b'{"ip": "10.6.0.1", "raw": "cut in the mid\n',
    b'{"ip": 7, "raw": ["x"], "received": 5}\n',
    b'{"ip": "10.6.0.1", "received": "not a time", "raw": "no time\\n"}\n',
    b'{"received": "2026-11-24T10:00:00+00:00"}\n',
    b"\n",
    b'{"ip": "10.6.0.1", "received": "9999-12-31T23:59:59+00:00", "raw": "far future\\n"}\n',
]


def test_omprog_answers_and_survives_every_malformed_line(tmp_path: Path) -> None:
    err = open(tmp_path / "err.log", "wb")  # noqa: SIM115
    p = omprog(tmp_path / "state", stderr=err)
    try:
        send(p, KILLER_LINES)
        assert p.stdin is not None and p.stdout is not None
        # Longer than omprog.max_line_bytes (1 MiB), in pieces: dropped as it arrives, answered once.
        for _ in range(40):
            p.stdin.write(b'{"ip": "10.6.0.2", "raw": "' + b"A" * 65536)
        p.stdin.write(b'"}\n')
        p.stdin.flush()
        assert p.stdout.readline() == b"OK\n"
        assert rss_mb(p.pid) < 150
        lines = omprog_lines("sysrq-c_classic")
        send(p, lines)
    finally:
        rc = finish(p)
        err.close()
    assert rc == 0
    log = [json.loads(x) for x in (tmp_path / "err.log").read_text().splitlines() if x.startswith("{")]
    assert any(x.get("reason", "").startswith("longer than omprog.max_line_bytes") for x in log)
    assert not [x for x in log if x.get("level") in ("critical",) or "Traceback" in str(x)]
    reports = [r for r in stored(tmp_path / "state") if r["host"] == "10.5.0.1"]
    clean = tmp_path / "clean"
    q = omprog(clean)
    send(q, omprog_lines("sysrq-c_classic"))
    assert finish(q) == 0
    assert [(r["title"], r["event_id"]) for r in reports] == [(r["title"], r["event_id"]) for r in stored(clean)]


def test_omprog_a_received_time_in_the_future_does_not_keep_a_report_open(tmp_path: Path) -> None:
    lines = omprog_lines("lkdtm-BUG_ext_oopspanic", ip="10.6.1.1")
    start = next(i for i, x in enumerate(lines) if b"cut here" in x)
    future = [_shift(x, 365 * 86400) for x in lines[start:start + 20]]  # half a report, forged a year ahead
    now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    other = json.dumps({"ip": "10.6.1.2", "received": now, "raw": "[ 1.0] noise from another host\n"}).encode()
    state = tmp_path / "state"
    p = omprog(state)
    try:
        send(p, future + [other + b"\n"])
        # idle_timeout is 2 s: the half report closes by our clock, not the forged one
        _wait(lambda: (state / "kpr-omprog.sqlite3").exists() and stored(state), 20, "the half report", p)
    finally:
        assert finish(p) == 0
    [r] = stored(state)
    assert r["host"] == "10.6.1.1" and r["title"] == "kernel BUG in lkdtm_BUG"
    assert used_bytes(str(state / "journal.bin")) == 0  # nothing left open


def _shift(line: bytes, seconds: float) -> bytes:
    o = json.loads(line)
    t = time.time() + seconds
    o["received"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(t))
    return json.dumps(o, ensure_ascii=False).encode("utf-8", "surrogateescape") + b"\n"


def test_a_report_refused_by_a_full_outbox_survives_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    # An attacker filled the 1 MiB outbox cap; a real crash arrives.
    store = Store(str(state / "kpr-omprog.sqlite3"))
    store.put({"event_id": "f" * 32}, b"x" * (1 << 20), host="203.0.113.9", title="noise", level="error",
              created=1.0, now=1.0, local=True)
    store.close()
    small = tmp_path / "small.toml"
    small.write_text("[delivery]\ndisk_cap_bytes = 1048576\n")
    err = open(tmp_path / "err.log", "wb")  # noqa: SIM115
    p = omprog(state, "--config", str(small), stderr=err)
    send(p, omprog_lines("sysrq-c_classic", ip="10.6.2.1"))
    _wait(lambda: b"outbox_full" in (tmp_path / "err.log").read_bytes(), 20, "the outbox to refuse", p)
    p.send_signal(signal.SIGTERM)
    assert finish(p) == 0
    err.close()
    assert [r["host"] for r in stored(state)] == ["203.0.113.9"]
    assert used_bytes(str(state / "journal.bin")) > 0  # the refused report's rows stay
    shown = run_cli("reports", "--config", str(small), "--state-dir", str(state))
    assert "FULL: new reports wait in the journal" in shown.stdout, shown.stdout + shown.stderr
    # Restarted with room: the journal rebuilds the report and the outbox takes it.
    p = omprog(state)
    _wait(lambda: len(stored(state)) == 2, 20, "the report rebuilt from the journal", p)
    assert finish(p) == 0
    titles = {r["host"]: r["title"] for r in stored(state)}
    assert titles["10.6.2.1"] == "kernel panic: sysrq triggered crash"


# -- UDP ----------------------------------------------------------------------------------

def udp(tmp: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_udp_port()
    p = subprocess.Popen([sys.executable, "-m", "kpr_omprog.cli", "udp", "--listen", f"127.0.0.1:{port}",
                          "--state-dir", str(tmp / "state"), "--log-format", "json", *extra],
                         stderr=open(tmp / "udp.log", "wb"))  # noqa: SIM115
    _wait(lambda: udp_bound(port), 20, "kpr-omprog udp to bind", p)
    return p, port


def stop(p: subprocess.Popen[bytes]) -> int:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        return p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def fuzz_datagrams(seed: int, count: int) -> list[bytes]:
    rnd = random.Random(seed)
    kinds = [
        lambda: rnd.randbytes(rnd.randint(0, 1500)),
        lambda: b"\x00" * rnd.randint(1, 3000),
        lambda: b"\n" * rnd.randint(1, 65000),
        lambda: rnd.randbytes(65000),
        lambda: b"%d,%d,%d,-;" % (rnd.randint(-9, 999), rnd.randint(0, 2**64), rnd.randint(0, 2**64)) + b"x\n",
        lambda: b"6,1,1,-,ncfrag=%d/%d;" % (rnd.randint(0, 10**9), rnd.randint(0, 10**9)) + rnd.randbytes(50),
        lambda: b"6,1,1,-;" + b"\\x" * rnd.randint(1, 2000),
        lambda: b"6,%d,1,-;seq going back\n" % rnd.randint(0, 5),
        lambda: b"[%d.%06d] BUG: fuzzed\n---[ end trace ]---\n" % (rnd.randint(0, 10**10), rnd.randint(0, 999999)),
        lambda: b"<" + b"9" * rnd.randint(1, 50) + b">[ 99999999999.999999999] \xff\xfe\n",
        lambda: "6,1,1,-;\u00e9\u2603 utf-8 and \udcff".encode("utf-8", "surrogateescape"),
    ]
    return [rnd.choice(kinds)() for _ in range(count)]


def test_udp_fuzzed_datagrams_then_a_real_crash(tmp_path: Path) -> None:
    p, port = udp(tmp_path)
    try:
        socks = []
        for n in range(16):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((f"127.0.44.{n + 1}", 0))
            socks.append(s)
        for i, d in enumerate(fuzz_datagrams(7, 3000)):
            socks[i % len(socks)].sendto(d, ("127.0.0.1", port))
            if i % 200 == 0:
                time.sleep(0.01)  # bounded pace: the socket buffer is not what is tested here
        for s in socks:
            s.close()
        play(("127.0.0.1", port), {"127.0.0.45": capture("lkdtm-BUG_classic_oopspanic")})
        _wait(lambda: any(h == "127.0.0.45" for h, _, _ in _rows(tmp_path)), 30, "the real crash", p)
        assert rss_mb(p.pid) < 200
    finally:
        assert stop(p) == 0, (tmp_path / "udp.log").read_text()[-2000:]
    [(_, title, log)] = [r for r in attachments(tmp_path / "state") if r[0] == "127.0.0.45"]
    [expected] = alone("lkdtm-BUG_classic_oopspanic", "127.0.0.45")
    assert (title, log) == ("kernel BUG in lkdtm_BUG", expected.render_log())
    assert "Traceback" not in (tmp_path / "udp.log").read_text()


def _rows(tmp: Path) -> list[tuple[str, str, str]]:
    if not (tmp / "state" / "kpr-omprog.sqlite3").exists():
        return []
    return attachments(tmp / "state")


SPOOFER = """
import socket, sys, time
port, count = int(sys.argv[1]), int(sys.argv[2])
print("go", flush=True)
t0 = time.monotonic()
for n in range(count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((f"127.{50 + n // 62500}.{n // 250 % 250}.{n % 250 + 2}", 0))
    s.sendto(b"[ 5.%06d] IN=eth0 SRC=198.51.100.7 DST=198.51.100.2 PROTO=TCP DPT=22 SYN\\n" % n, ("127.0.0.1", port))
    s.close()
    if n % 500 == 0:
        time.sleep(0.01)
    if time.monotonic() - t0 > 60:
        sys.exit("spoofing took over 60 s")
"""


def test_udp_spoofed_sources_flooding_during_a_crash_never_cut_it(tmp_path: Path) -> None:
    # A host streams an oops at 50 ms a line; after its 14th line 12,000 spoofed sources send
    # a line each, against max_hosts = 200. The report must be whole: the same as alone.
    conf = tmp_path / "config.toml"
    conf.write_text("[assembler]\nmax_hosts = 200\nend_grace = 1.0\n")
    cfg = AssemblerConfig(max_hosts=200, end_grace=1.0)
    name = "lkdtm-BUG_classic_oopspanic"
    stream = capture(name)
    start = next(i for i, (_, d) in enumerate(stream) if b"cut here" in d)
    head = [(0.0, d) for _, d in stream[:start]]
    body = [(i * 0.05, d) for i, (_, d) in enumerate(stream[start:])]
    p, port = udp(tmp_path, "--config", str(conf))
    spoofer = None
    try:
        play(("127.0.0.1", port), {"127.0.0.60": head + [(0.1 + at, d) for at, d in body[:14]]})
        spoofer = subprocess.Popen([sys.executable, "-c", SPOOFER, str(port), "12000"], stdout=subprocess.PIPE)
        assert spoofer.stdout is not None and spoofer.stdout.readline() == b"go\n"
        play(("127.0.0.1", port), {"127.0.0.60": [(at - body[14][0], d) for at, d in body[14:]]})
        assert spoofer.wait(90) == 0
        _wait(lambda: any(h == "127.0.0.60" for h, _, _ in _rows(tmp_path)), 30, "the crash's report", p)
        assert rss_mb(p.pid) < 200
    finally:
        if spoofer is not None and spoofer.poll() is None:
            spoofer.kill()
            spoofer.wait()
        assert stop(p) == 0
    timed = [CapturedDatagram(d, ("127.0.0.60", 6666), at) for at, d in head + [(0.1 + at, d) for at, d in body]]
    expected = [r for r in replay(timed, Assembler(cfg))]
    got = [r for r in attachments(tmp_path / "state") if r[0] == "127.0.0.60"]
    assert [log for _, _, log in got] == [r.render_log() for r in expected]
    log = [json.loads(x) for x in (tmp_path / "udp.log").read_text().splitlines() if x.startswith("{")]
    assert not [x for x in log if x.get("event") == "report_closed_by_bound"]


# -- state faults and secrets --------------------------------------------------------------

def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kpr_omprog.cli", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)


def test_a_corrupt_store_gives_one_line_naming_the_file_in_every_command(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "kpr-omprog.sqlite3").write_bytes(b"this is not a database" * 100)
    for args in (["reports"], ["omprog"], ["udp", "--listen", f"127.0.0.1:{free_udp_port()}"]):
        r = run_cli(*args, "--state-dir", str(state))
        assert r.returncode == 1, (args, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert str(state / "kpr-omprog.sqlite3") in r.stderr and "move it aside" in r.stderr


def test_a_state_directory_that_is_not_one_gives_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    r = run_cli("omprog", "--state-dir", str(tmp_path / "file" / "state"))
    assert r.returncode == 1 and "Traceback" not in r.stderr and str(tmp_path / "file") in r.stderr


def test_a_malformed_dsn_is_never_echoed_with_its_key(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('dsn = "https://s3cr3tkey@"\n')
    for args in (["check-config", "--config", str(conf)], ["omprog", "--config", str(conf)]):
        r = run_cli(*args)
        assert r.returncode == 2 and "s3cr3tkey" not in r.stderr + r.stdout and "***" in r.stderr


def test_files_the_receiver_creates_are_private(tmp_path: Path) -> None:
    state = tmp_path / "new-state"
    p = omprog(state)
    send(p, omprog_lines("sysrq-c_classic")[:50])
    assert finish(p) == 0
    assert stat.S_IMODE(state.stat().st_mode) & 0o077 == 0
    for f in state.iterdir():
        if f.name != "metrics.prom":  # counters only, for node_exporter's user
            assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, f.name


def test_open_reports_are_bounded_by_their_budget_not_by_hosts_times_max_bytes(tmp_path: Path) -> None:
    # 200 hosts each open a report and pour text into it: the open-bytes budget closes the
    # largest ones (flagged truncated) rather than letting memory grow to hosts x max_bytes.
    conf = tmp_path / "config.toml"
    conf.write_text(f"[assembler]\nopen_bytes_budget = {8 << 20}\nidle_timeout = 60.0\nmax_age = 600.0\n")
    p, port = udp(tmp_path, "--config", str(conf))
    try:
        filler = b"".join(b"[    2.%06d] filler %s\n" % (i, b"y" * 180) for i in range(4))
        socks = []
        for h in range(200):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((f"127.0.46.{h + 2}", 0))
            s.sendto(b"[    1.000000] BUG: kernel NULL pointer dereference, address: 0000000000000000\n",
                     ("127.0.0.1", port))
            socks.append(s)
        for _ in range(120):  # 200 hosts x 120 x 800 bytes = 19 MB offered
            for s in socks:
                s.sendto(filler, ("127.0.0.1", port))
            time.sleep(0.005)
        for s in socks:
            s.close()
        _wait(lambda: b"open_bytes_budget" in (tmp_path / "udp.log").read_bytes(), 30, "the budget to bite", p)
        assert rss_mb(p.pid) < 150
    finally:
        assert stop(p) == 0



# -- properties ----------------------------------------------------------------------------

_json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                            max_leaves=10)


@given(st.binary(max_size=2000))
@settings(max_examples=300, deadline=None)
def test_any_bytes_as_an_omprog_line_give_a_datagram_or_malformed_line(line: bytes) -> None:
    try:
        data, ip, at = parse_omprog_line(line)
    except MalformedLine:
        return
    assert isinstance(data, bytes) and isinstance(ip, str) and (at is None or isinstance(at, float))


@given(st.dictionaries(st.sampled_from(["ip", "raw", "received", "x"]), _json_values | st.text(), max_size=4))
@settings(max_examples=300, deadline=None)
def test_any_json_object_as_an_omprog_line_gives_a_datagram_or_malformed_line(obj: dict[str, Any]) -> None:
    line = json.dumps(obj).encode()
    try:
        data, ip, _ = parse_omprog_line(line)
    except MalformedLine:
        return
    assert isinstance(data, bytes) and 0 < len(ip) <= 64


@given(st.lists(st.tuples(st.binary(max_size=1500), st.integers(0, 40), st.booleans()), max_size=150))
@settings(max_examples=100, deadline=None)
def test_open_reports_stay_within_their_count_and_byte_bounds(items: list[tuple[bytes, int, bool]]) -> None:
    cfg = AssemblerConfig(max_hosts=20, new_hosts=10, max_open_reports=5, open_bytes_budget=6000,
                          max_datagram_bytes=1024)
    asm = Assembler(cfg)
    t = 0.0
    for data, h, crash in items:
        t += 0.01
        asm.expire(t)
        asm.feed(b"BUG: x\n" + data if crash else data, (f"10.8.{h}.1", 1), t)
        # a host heard once whose report closed may sit in _new beyond its bound until the next new host
        assert asm.open_reports <= cfg.max_open_reports and asm.hosts <= cfg.max_hosts + cfg.new_hosts + 5
        assert asm.open_bytes <= cfg.open_bytes_budget
        # every tracked host is idle (heard twice, or once: evictable) or has an open report, one only
        idle, new, opened = asm._idle.keys(), asm._new.keys(), asm._opened.keys()
        assert idle | new | opened == asm._hosts.keys()
        assert not idle & opened and not new & opened and not idle & new
        assert asm.context_bytes == sum(len(h.ctx) for h in asm._hosts.values())
    asm.close_all()
    assert asm.open_reports == 0 and asm.open_bytes == 0


def test_commands_end_quietly_when_their_reader_leaves_and_refuse_bad_flags_in_one_line() -> None:
    data = str(Path(__file__).parent / "data")
    r = subprocess.run(f"{sys.executable} -m kpr_omprog.cli replay {data}/*.jsonl | head -c 10",
                       shell=True, capture_output=True, text=True, timeout=120,
                       executable="/bin/bash")
    assert r.stderr == "" and len(r.stdout) == 10
    r = run_cli("replay", "--idle-timeout", "-5", f"{data}/sysrq-c_ext.jsonl")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "idle_timeout must be > 0" in r.stderr


def test_config_mistakes_name_the_file_the_key_and_what_is_known(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('[hooks]\ntitle = "nosuchmodule:title"\n')
    r = run_cli("omprog", "--config", str(conf), "--state-dir", str(tmp_path / "s"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{conf}: hooks.title: hook 'nosuchmodule:title': cannot import module" in r.stderr
    conf.write_text("colour = 1\n")
    r = run_cli("check-config", "--config", str(conf))
    assert r.returncode == 2 and "colour: unknown key (known: assembler, " in r.stderr
    r = run_cli("replay", str(tmp_path / "missing.jsonl"))
    assert r.returncode == 1 and r.stderr.strip() == f"kpr-omprog replay: error: {tmp_path}/missing.jsonl: No such " \
        "file or directory"


def test_show_prints_what_the_event_carries_and_reports_filters(tmp_path: Path) -> None:
    state = tmp_path / "state"
    p = omprog(state)
    send(p, omprog_lines("lkdtm-WARNING_ext_then-sysrq-c", ip="10.6.9.1") + omprog_lines("sysrq-c_ext", ip="10.6.9.2"))
    assert finish(p) == 0
    r = run_cli("reports", "--state-dir", str(state), "--json", "--title", "WARNING", "--since", "3650d")
    [row] = [json.loads(x) for x in r.stdout.splitlines()]
    assert row["host"] == "10.6.9.1"
    assert len(run_cli("reports", "--state-dir", str(state), "--json", "--host", "10.6.9.2").stdout.splitlines()) == 1
    assert run_cli("reports", "--state-dir", str(state), "--json", "--since", "2099-01-01").stdout == ""
    shown = run_cli("show", row["event_id"][:10], "--state-dir", str(state))
    assert shown.returncode == 0, shown.stderr
    head, _, log = shown.stdout.partition("--- kernel.log ---\n")
    assert "lkdtm: Performing direct entry WARNING" in log
    fields: dict[str, list[str]] = {}  # key -> its value's lines
    lines = head.splitlines()
    column = len(lines[0]) - len(lines[0].split()[-1])  # where the event id, and every value, starts
    for line in lines:
        key = line[:column].strip()
        assert " " not in key and line[column:].strip() and line[column - 1] == " ", f"not aligned: {line!r}"
        if key:
            assert key not in fields, f"{key} twice"
            fields[key] = [line[column:]]
        else:  # a multi-line value goes on under its first line
            fields[list(fields)[-1]].append(line[column:])
    assert fields["title"] == ["WARNING in lkdtm_WARNING"]
    assert fields["fingerprint"] == ['["linux-kernel", "WARNING", "lkdtm_WARNING"]']
    assert fields["tags.kernel_release"] == ["6.1.0-56-amd64"]
    assert fields["stack"][0] == "* lkdtm_WARNING [lkdtm]" and len(fields["stack"]) > 3
    assert fields["contexts.os.version"] == ["6.1.0-56-amd64"]
    # each field once: the message is the title and the log, both shown already, as are the
    # context lines; the host is not repeated as user or tag; omprog has no receiving port
    assert "message" not in fields and "user.ip_address" not in fields and "tags.host" not in fields
    assert "extra.context" not in fields and "extra.start_line" not in fields
    assert "extra.receiver_port" not in fields and "extra.flags" not in fields
    as_json = json.loads(run_cli("show", row["event_id"][:10], "--json", "--state-dir", str(state)).stdout)
    assert "receiver_port" not in as_json["event"]["extra"]  # nor in the event Sentry gets
    assert head.count("lkdtm: Performing direct entry WARNING") == 0 and log.count("Performing direct entry") == 1
    missing = run_cli("show", "ffff", "--state-dir", str(state))
    assert missing.returncode == 2 and "no single stored report" in missing.stderr


def test_a_second_receiver_on_the_same_state_directory_is_refused_in_one_line(tmp_path: Path) -> None:
    first = omprog(tmp_path / "state")
    try:
        r = run_cli("omprog", "--state-dir", str(tmp_path / "state"))
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert f"in use by another kpr-omprog receiver (pid {first.pid})" in r.stderr
    finally:
        assert finish(first) == 0
    second = omprog(tmp_path / "state")  # free again once the first has stopped
    assert finish(second) == 0


def test_status_says_whether_it_runs_and_exits_1_when_a_human_is_needed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    p = omprog(state)
    try:
        r = run_cli("status", "--state-dir", str(state))
        assert r.returncode == 0 and f"running, pid {p.pid}" in r.stdout and r.stdout.endswith("ok\n")
    finally:
        assert finish(p) == 0
    store = Store(str(state / "kpr-omprog.sqlite3"))
    store.put({"event_id": "a" * 32}, b"log", host="10.6.7.1", title="t", level="error", created=1.0, now=1.0,
              local=False)
    store.put({"event_id": "b" * 32}, b"log", host="10.6.7.2", title="t", level="error", created=2.0, now=2.0,
              local=False)
    store.dead("a" * 32, 400, "HTTP 400: bad", time.time())
    store.close()
    r = run_cli("status", "--state-dir", str(state))
    assert r.returncode == 1 and "none holds the state directory" in r.stdout
    assert "NEEDS A HUMAN: 1 reports dead-lettered" in r.stdout
    assert "NEEDS A HUMAN: a report has waited" in r.stdout  # created in 1970: waiting ever since


def _metrics(path: Path) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return out


def test_metrics_of_a_running_receiver_move_with_a_real_crash(tmp_path: Path) -> None:
    conf = tmp_path / "config.toml"
    conf.write_text("metrics_interval = 0.2\n")
    p, port = udp(tmp_path, "--config", str(conf))
    prom = tmp_path / "state" / "metrics.prom"
    try:
        _wait(prom.exists, 20, "the metrics file", p)
        before = _metrics(prom)
        assert before["kpr_omprog_datagrams_total"] == 0 and before["kpr_omprog_open_reports"] == 0
        play(("127.0.0.1", port), {"127.0.0.48": capture("lkdtm-BUG_classic_oopspanic")})
        _wait(lambda: _metrics(prom).get("kpr_omprog_reports_closed_total{reason=end_marker}", 0) >= 1, 30,
              "the crash in the metrics", p)
        after = _metrics(prom)
    finally:
        assert stop(p) == 0
    assert after["kpr_omprog_datagrams_total"] == len(capture("lkdtm-BUG_classic_oopspanic"))
    assert after["kpr_omprog_outbox_reports{state=local}"] == 1 and after["kpr_omprog_hosts_tracked"] == 1
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644  # node_exporter reads it as its own user
    exported = tmp_path / "textfile-collector" / "kpr_omprog.prom"  # where node_exporter would read it
    exported.parent.mkdir()
    conf.write_text(f'metrics_file = "{exported}"\n')
    q = omprog(tmp_path / "omprog-state", "--config", str(conf))
    send(q, [b"not json\n", *omprog_lines("sysrq-c_classic")])
    assert finish(q) == 0
    final = _metrics(exported)
    assert final["kpr_omprog_malformed_input_total"] == 1
    assert final["kpr_omprog_reports_closed_total{reason=end_marker}"] == 1


def test_the_decoder_bounds_are_settings_and_a_typo_is_one_line(tmp_path: Path) -> None:
    from kpr_omprog.config import load

    conf = tmp_path / "c.toml"
    conf.write_text("[assembler]\nidle_timeout = 3.0\n[assembler.decoder]\nmax_lines_per_datagram = 16\n")
    cfg = load(conf)
    assert cfg.assembler.idle_timeout == 3.0 and cfg.assembler.decoder.max_lines_per_datagram == 16
    conf.write_text("[assembler.decoder]\nmax_lines_per_datagramm = 16\n")
    r = run_cli("check-config", "--config", str(conf))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "assembler.decoder.max_lines_per_datagramm: unknown key" in r.stderr


@given(st.one_of(st.binary(max_size=300),
                 st.builds(lambda ip, raw, rec: json.dumps({"ip": ip, "raw": raw, "received": rec}).encode(),
                           st.text(max_size=20), st.text(max_size=100), st.text(max_size=40)),
                 st.builds(lambda raw: b'{"ip":"10.0.0.1","raw":"' + raw + b'"}', st.binary(max_size=60))))
@settings(max_examples=400, deadline=None)
def test_the_fast_json_parser_agrees_with_the_standard_one(line: bytes) -> None:
    import kpr_omprog.sources.omprog as om

    def parse(fast: object) -> object:
        saved, om._fast_loads = om._fast_loads, fast  # type: ignore[assignment]
        try:
            return om.parse_omprog_line(line)
        except MalformedLine as e:
            return ("malformed", str(e))
        finally:
            om._fast_loads = saved  # type: ignore[assignment]

    assert om._fast_loads is not None, "tests/run.sh installs kpr-omprog[fast]"
    assert parse(om._fast_loads) == parse(None)
