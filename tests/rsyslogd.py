"""A private, real ``rsyslogd`` running the shipped drop-in on a free loopback port.

Used by the end-to-end tests and the benchmarks. The drop-in is taken as shipped;
only what an installation changes is changed: the program path (a wrapper that runs
this checkout's ``kpr-omprog omprog`` or any other program), the log file, the port,
and a loopback-only listen address. Everything lives in the given work directory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parent.parent
RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
SHIPPED = 'binary="/opt/kpr-omprog/bin/kpr-omprog omprog --omprog"'


def free_udp_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Rsyslogd:
    """``Rsyslogd(work, program_args).start()``; ``.port`` is where to send datagrams."""

    def __init__(self, work: Path, program: list[str] | None = None, port: int | None = None,
                 stats: bool = False, program_stderr: bool = False) -> None:
        if not os.path.exists(RSYSLOGD):
            raise RuntimeError(f"{RSYSLOGD} missing: tests/run.sh installs Debian's rsyslog")
        self.work = work
        self.spool = work / "spool"
        self.spool.mkdir(parents=True, exist_ok=True)
        self.port = port or free_udp_port()
        self.log = work / "omprog.log"
        wrapper = work / "program.sh"
        args = program or [sys.executable, "-m", "kpr_omprog.cli", "omprog"]
        # program_stderr: the program's stderr to a file of our own, so that what it logs
        # after rsyslog has closed its pipes (its last words at shutdown) is kept too.
        self.program_log = work / "program.stderr"
        redirect = f" 2>>'{self.program_log}'" if program_stderr else ""
        wrapper.write_text("#!/bin/sh\nexec " + " ".join(f"'{a}'" for a in args) + ' "$@"' + redirect + "\n")
        wrapper.chmod(0o755)
        dropin = (ROOT / "rsyslog.d" / "30-kpr-omprog.conf").read_text()
        for old, new in ((SHIPPED, f'binary="{wrapper} --omprog"'),
                         ('output="/var/log/kpr-omprog/omprog.log"', f'output="{self.log}"'),
                         ('port="514"', f'address="127.0.0.1" port="{self.port}"')):
            if old not in dropin:
                raise AssertionError(f"the shipped drop-in no longer contains {old!r}")
            dropin = dropin.replace(old, new)
        self.conf = work / "rsyslog.conf"
        self.stats_file = work / "impstats.json"
        extra = (f'module(load="impstats" interval="1" format="json" log.syslog="off" log.file="{self.stats_file}"'
                 ' resetCounters="off")\n') if stats else ""
        self.conf.write_text(f'global(workDirectory="{self.spool}")\n'
                             'module(load="imuxsock" SysSock.Use="off")\n' + extra + dropin)
        self.env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc: subprocess.Popen[bytes] | None = None

    def check(self) -> None:
        """``rsyslogd -N1`` on the generated configuration."""
        r = subprocess.run([RSYSLOGD, "-N1", "-f", str(self.conf)], capture_output=True, text=True, env=self.env)
        if r.returncode != 0:
            raise AssertionError(f"rsyslogd -N1 failed: {r.stderr}")

    def start(self) -> None:
        errlog = open(self.work / "rsyslogd.stderr", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.work / "pid")],
                                     env=self.env, stdout=errlog, stderr=errlog)
        # The omprog program answers its first OK once its store is open.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not self.program_pids():
            time.sleep(0.05)
        time.sleep(0.3)

    def program_pids(self) -> list[int]:
        if self.proc is None:
            return []
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(x) for x in out.split()]

    def kill_program(self) -> int:
        """SIGKILL the omprog program (rsyslog restarts it about 1 s later); its pid."""
        pids = self.program_pids()
        if not pids:
            raise AssertionError("no omprog program running under rsyslogd")
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        return pids[0]

    def stop(self, timeout: float = 30) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def stats(self, name: str = "kpr_omprog") -> dict[str, int]:
        """Latest impstats counters of ``name`` (the action: ``processed``...; "kpr_omprog queue":
        ``size``...); needs ``stats=True``."""
        latest: dict[str, int] = {}
        if self.stats_file.exists():
            needle = f'"name": "{name}"'
            for line in self.stats_file.read_text().splitlines():
                _, _, body = line.partition(": ")
                if needle in body:
                    try:
                        latest = json.loads(body)
                    except ValueError:
                        continue
        return latest

    def queued_files(self) -> list[str]:
        return sorted(p.name for p in self.spool.iterdir() if p.name.startswith("kpr_omprog"))
