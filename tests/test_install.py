"""install.sh, staged under a temporary root (KPR_INSTALL_ROOT): it installs the package into
its own virtual environment, writes the config once, installs the drop-in pointing at that
install, and the result runs: a real rsyslogd loading the installed drop-in hands a real
crash capture to the installed program, which stores the report (no DSN: kept locally)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.rsyslogd import RSYSLOGD, free_udp_port, udp_bound
from tests.senders import capture, play

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def install(stage: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, KPR_INSTALL_ROOT=str(stage))
    return subprocess.run(["bash", str(ROOT / "install.sh"), *args], env=env, capture_output=True, text=True,
                          timeout=600)


def test_staged_install_runs_under_rsyslog_and_is_idempotent(tmp_path: Path) -> None:
    stage = tmp_path / "root"
    (stage / "etc").mkdir(parents=True)
    spool = tmp_path / "spool"
    spool.mkdir()
    port = free_udp_port()
    # the host's main rsyslog.conf: the drop-in is included the way Debian's includes rsyslog.d
    (stage / "etc" / "rsyslog.conf").write_text(
        f'global(workDirectory="{spool}")\nmodule(load="imuxsock" SysSock.Use="off")\n'
        f'include(file="{stage}/etc/rsyslog.d/*.conf")\n')
    r = install(stage, "--port", str(port), "--shards", "1")  # the default depends on the cores
    assert r.returncode == 0, r.stdout + r.stderr
    assert "kpr-omprog installed (rsyslog mode" in r.stdout
    assert "(skipped) restart rsyslog (changed: the drop-in, the package, the config): staged install" in r.stdout
    exe = stage / "opt" / "kpr-omprog" / "bin" / "kpr-omprog"
    conf = stage / "etc" / "kpr-omprog" / "config.toml"
    dropin = stage / "etc" / "rsyslog.d" / "30-kpr-omprog.conf"
    text = dropin.read_text()
    assert f'binary="{exe} omprog --omprog --config {conf}"' in text
    assert f'port="{port}"' in text
    check = subprocess.run([str(exe), "check-config", "--config", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    # install.sh's record, for `kpr-omprog status`
    marker = (stage / "etc" / "kpr-omprog" / "installed").read_text()
    assert "mode=rsyslog\n" in marker and f"dropin={dropin}\n" in marker and f"port={port}\n" in marker

    # a second run keeps the operator's config, and restarts rsyslog for it (only for it)
    conf.write_text(conf.read_text() + "# edited by the operator\n")
    r2 = install(stage, "--port", str(port))
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert conf.read_text().endswith("# edited by the operator\n")
    assert "package unchanged" in r2.stdout and "(skipped) restart rsyslog (changed: the config)" in r2.stdout
    # a third with nothing changed restarts nothing, and leaves the drop-in's time alone
    written = dropin.stat().st_mtime_ns
    r2 = install(stage, "--port", str(port))
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert "rsyslogd not restarted: the drop-in, the package and the config are unchanged" in r2.stdout
    assert "(skipped) restart rsyslog" not in r2.stdout and dropin.stat().st_mtime_ns == written

    # the installed drop-in, loopback only for the test
    dropin.write_text(text.replace(f'port="{port}"', f'address="127.0.0.1" port="{port}"'))
    main = stage / "etc" / "rsyslog.conf"
    n1 = subprocess.run([RSYSLOGD, "-N1", "-f", str(main)], capture_output=True, text=True)
    assert n1.returncode == 0, n1.stderr

    def status() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "kpr_omprog.cli", "status", "--config", str(conf)],
                              capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))

    (stage / "var" / "lib" / "kpr-omprog" / "kpr-omprog.sqlite3").touch()  # the store, as after a first datagram
    st = status()  # installed, but no rsyslogd runs it
    assert st.returncode == 1 and "NEEDS A HUMAN: nothing receives: rsyslogd" in st.stdout, st.stdout + st.stderr
    proc = subprocess.Popen([RSYSLOGD, "-n", "-f", str(main), "-i", str(tmp_path / "pid")],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "rsyslogd.err", "wb"))  # noqa: SIM115
    try:
        deadline = time.monotonic() + 20
        while not udp_bound(port):
            assert time.monotonic() < deadline and proc.poll() is None, "rsyslogd never bound its UDP port"
            time.sleep(0.02)
        play(("127.0.0.1", port), {"127.0.0.1": capture("lkdtm-BUG_classic_oopspanic")}, speed=20, timeout=30)
        deadline = time.monotonic() + 30
        rows: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            out = subprocess.run([str(exe), "reports", "--json", "--config", str(conf)], capture_output=True,
                                 text=True)
            rows = [json.loads(x) for x in out.stdout.splitlines() if x.strip()]
            if rows:
                break
            time.sleep(0.5)
        st = status()
        assert st.returncode == 0 and f"listens on UDP {port} with {dropin}" in st.stdout, st.stdout + st.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert len(rows) == 1, rows
    assert rows[0]["title"] == "kernel BUG in lkdtm_BUG"
    assert rows[0]["host"] == "127.0.0.1"

    r3 = install(stage, "--uninstall")
    assert r3.returncode == 0, r3.stdout + r3.stderr
    assert not dropin.exists() and not exe.exists()
    assert conf.exists()  # stored reports and config stay
    st = status()
    assert st.returncode == 1 and "NEEDS A HUMAN: nothing receives" in st.stdout, st.stdout


def test_help_is_whole_and_a_dry_run_changes_nothing_and_says_so(tmp_path: Path) -> None:
    r = subprocess.run(["bash", str(ROOT / "install.sh"), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("usage: ./install.sh")
    assert r.stdout.rstrip().endswith("(see README).") and "--uninstall" in r.stdout
    stage = tmp_path / "root"
    stage.mkdir()
    r = install(stage, "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.rstrip().endswith("dry run: nothing was changed") and "installed" not in r.stdout
    assert list(stage.iterdir()) == []


def test_a_host_that_loads_imudp_itself_keeps_a_valid_config_across_reinstalls(tmp_path: Path) -> None:
    stage = tmp_path / "root"
    (stage / "etc").mkdir(parents=True)
    spool = tmp_path / "spool"
    spool.mkdir()
    (stage / "etc" / "rsyslog.conf").write_text(
        f'global(workDirectory="{spool}")\nmodule(load="imuxsock" SysSock.Use="off")\nmodule(load="imudp")\n'
        f'include(file="{stage}/etc/rsyslog.d/*.conf")\n')
    for _ in range(2):  # the second run must not load imudp a second time (rsyslogd -N1 refuses that)
        r = install(stage, "--port", str(free_udp_port()))
        assert r.returncode == 0, r.stdout + r.stderr
    dropin = (stage / "etc" / "rsyslog.d" / "30-kpr-omprog.conf").read_text()
    assert '\nmodule(load="imudp")' not in dropin
    n1 = subprocess.run([RSYSLOGD, "-N1", "-f", str(stage / "etc" / "rsyslog.conf")], capture_output=True, text=True)
    assert n1.returncode == 0, n1.stderr
    r = install(stage, "--port")
    assert r.returncode == 2 and "--port needs a number" in r.stderr


def _staged_rsyslog(tmp_path: Path) -> Path:
    stage = tmp_path / "root"
    (stage / "etc").mkdir(parents=True)
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    (stage / "etc" / "rsyslog.conf").write_text(
        f'global(workDirectory="{spool}")\nmodule(load="imuxsock" SysSock.Use="off")\n'
        f'include(file="{stage}/etc/rsyslog.d/*.conf")\n')
    return stage


def test_shards_and_relayed_port_are_written_checked_and_kept_by_a_reinstall(tmp_path: Path) -> None:
    stage = _staged_rsyslog(tmp_path)
    r = install(stage, "--port", str(free_udp_port()), "--shards", "3", "--relayed-port", "10514")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 shard(s), relayed TCP 10514" in r.stdout
    exe = stage / "opt" / "kpr-omprog" / "bin" / "kpr-omprog"
    conf = stage / "etc" / "kpr-omprog" / "config.toml"
    dropin = stage / "etc" / "rsyslog.d" / "30-kpr-omprog.conf"
    text = dropin.read_text()
    for k in range(3):
        assert f'binary="{exe} omprog --omprog --shard {k} --config {conf}"' in text
    assert 'input(type="imtcp" port="10514" ruleset="kpr_omprog_relayed"' in text
    r = install(stage, "--port", str(free_udp_port()))  # no --shards: the installed layout stays
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 shard(s), relayed TCP 10514" in r.stdout and dropin.read_text().count("--omprog --shard ") == 3
    for bad, say in ((["--shards", "0"], "--shards 0: not 1-64"), (["--shards", "x"], "--shards needs a number"),
                     (["--relay", "r1:10514", "--shards", "2"], "belong on the receivers"),
                     (["--relay", "r1:10514"], "a receiver or a relay, not both")):
        r = install(stage, *bad)
        assert r.returncode == 2 and say in r.stderr and r.stderr.count("\n") == 1, (bad, r.stderr)


def test_relay_install_writes_the_relay_dropin_and_checks_it(tmp_path: Path) -> None:
    stage = _staged_rsyslog(tmp_path)
    port = free_udp_port()
    r = install(stage, "--relay", "10.0.0.11:10514,[2001:db8::12]:10514,recv3:6514", "--port", str(port))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "relay installed" in r.stdout and not (stage / "opt").exists()  # no package on a relay
    text = (stage / "etc" / "rsyslog.d" / "40-kpr-omprog-relay.conf").read_text()
    assert text.count('action(type="omfwd"') == 3 and 'target="2001:db8::12"' in text
    assert f'port="{port}" ruleset="kpr_omprog_relay"' in text and "hash64mod($fromhost-ip, 3)" in text
    r = install(stage, "--relay", "10.0.0.11")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "HOST:PORT" in r.stderr


def test_with_bugsink_dry_run_and_a_taken_port_change_nothing(tmp_path: Path) -> None:
    stage = tmp_path / "root"
    stage.mkdir()
    r = install(stage, "--with-bugsink", "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "pip install -q --disable-pip-version-check bugsink==2.6.1" in r.stdout
    assert "+ provision Bugsink" in r.stdout and "127.0.0.1:8000" not in r.stderr
    assert r.stdout.rstrip().endswith("dry run: nothing was changed") and list(stage.iterdir()) == []
    with socket.socket() as taken:  # something else on Bugsink's port: refused before anything is done
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = install(stage, "--bugsink-port", str(port), "--dry-run")
    assert r.returncode == 1 and f"TCP port {port} is taken by another program" in r.stderr, r.stdout + r.stderr
    assert r.stdout == "" and list(stage.iterdir()) == []
    r = install(stage, "--relay", "10.0.0.1:6514", "--with-bugsink")
    assert r.returncode == 2 and "--with-bugsink belongs on a receiver" in r.stderr
