"""`kpr-omprog omprog`: the protocol, kill -9 mid-report, and a real rsyslogd with the shipped drop-in."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kpr_omprog.store import Store

ROOT = Path(__file__).parent.parent
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


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"


@pytest.mark.skipif(not os.path.exists(RSYSLOGD), reason="rsyslogd missing: tests/run.sh installs it")
def test_real_rsyslogd_with_shipped_dropin(tmp_path: Path) -> None:
    port = free_udp_port()
    work = tmp_path / "rs"
    (work / "spool").mkdir(parents=True)
    state = tmp_path / "state"
    wrapper = tmp_path / "kpr.sh"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m kpr_omprog.cli omprog --state-dir {state} \"$@\"\n")
    wrapper.chmod(0o755)
    dropin = (ROOT / "rsyslog.d" / "30-kpr-omprog.conf").read_text()
    dropin = dropin.replace('binary="/opt/kpr-omprog/bin/kpr-omprog omprog --omprog"', f'binary="{wrapper} --omprog"')
    dropin = dropin.replace('output="/var/log/kpr-omprog/omprog.log"', f'output="{tmp_path}/omprog.log"')
    dropin = dropin.replace('port="514"', f'address="127.0.0.1" port="{port}"')
    conf = tmp_path / "rsyslog.conf"
    conf.write_text(f'global(workDirectory="{work}/spool")\nmodule(load="imuxsock" SysSock.Use="off")\n'
                    f"{dropin}\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    check = subprocess.run([RSYSLOGD, "-N1", "-f", str(conf)], capture_output=True, text=True, env=env)
    assert check.returncode == 0, check.stderr
    rs = subprocess.Popen([RSYSLOGD, "-n", "-f", str(conf), "-i", str(work / "pid")], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.5)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for name in ("lkdtm-BUG_classic_oopspanic", "sysrq-c_ext"):
            for line in (DATA / f"{name}.jsonl").read_text().splitlines():
                sock.sendto(base64.b64decode(json.loads(line)["data_b64"]), ("127.0.0.1", port))
                time.sleep(0.0002)
            time.sleep(3)
        deadline = time.monotonic() + 30
        titles: list[object] = []
        while time.monotonic() < deadline:
            if (state / "kpr-omprog.sqlite3").exists():
                titles = sorted(r["title"] for r in stored(state))
                if len(titles) >= 2:
                    break
            time.sleep(0.5)
        assert titles == ["kernel BUG in lkdtm_BUG", "kernel panic: sysrq triggered crash"]
    finally:
        rs.send_signal(signal.SIGTERM)
        rs.wait(20)
