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
from collections.abc import Callable
from pathlib import Path

from kpr_omprog.dropin import receiver_dropin, relay_dropin

ROOT = Path(__file__).parent.parent
RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
SHIPPED = 'binary="/opt/kpr-omprog/bin/kpr-omprog omprog --omprog"'


def free_udp_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def udp_bound(port: int) -> bool:
    """True when some socket is bound to UDP ``port`` (IPv4 or IPv6)."""
    suffix = f":{port:04X}"
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as f:
                if any(line.split()[1].endswith(suffix) for line in list(f)[1:]):
                    return True
        except OSError:
            continue
    return False


def free_tcp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def tcp_listening(port: int) -> bool:
    """True when some socket listens on TCP ``port`` (state 0A in /proc/net/tcp)."""
    suffix = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                if any(line.split()[1].endswith(suffix) and line.split()[3] == "0A" for line in list(f)[1:]):
                    return True
        except OSError:
            continue
    return False


class Rsyslogd:
    """``Rsyslogd(work, program_args).start()``; ``.port`` is where to send datagrams."""

    def __init__(self, work: Path, program: list[str] | None = None, port: int | None = None,
                 stats: bool = False, program_stderr: bool = False, shards: int = 1,
                 relayed_port: int | None = None) -> None:
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
        self.wrapper = wrapper
        self._wrapper_text = "#!/bin/sh\nexec " + " ".join(f"'{a}'" for a in args) + ' "$@"' + redirect + "\n"
        wrapper.write_text(self._wrapper_text)
        wrapper.chmod(0o755)
        dropin = (ROOT / "rsyslog.d" / "30-kpr-omprog.conf").read_text()
        for old, new in ((SHIPPED, f'binary="{wrapper} --omprog"'),
                         ('output="/var/log/kpr-omprog/omprog.log"', f'output="{self.log}"'),
                         ('port="514"', f'address="127.0.0.1" port="{self.port}"')):
            if old not in dropin:
                raise AssertionError(f"the shipped drop-in no longer contains {old!r}")
            dropin = dropin.replace(old, new)
        # install.sh --shards N / --relayed-port P: the same transform of the shipped file
        self.relayed_port = relayed_port
        dropin = receiver_dropin(dropin, shards, relayed_port, "127.0.0.1" if relayed_port else None)
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
        # Ready once its UDP input is bound: rsyslog starts the omprog program only at the
        # first message, and queues whatever arrives before the program answers OK.
        self._wait(lambda: udp_bound(self.port), 20, f"rsyslogd to bind UDP port {self.port}")
        if self.relayed_port:
            port = self.relayed_port
            self._wait(lambda: tcp_listening(port), 20, f"rsyslogd to listen on TCP port {port}")

    def _wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"rsyslogd exited ({self.proc.returncode}) while waiting for {what}: "
                                     + (self.work / "rsyslogd.stderr").read_text()[-2000:])
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.02)

    def wait_program(self, timeout: float = 20, not_pid: int | None = None) -> int:
        """Wait until rsyslog runs an omprog program (other than ``not_pid``) that has
        answered its start ``OK`` (it logged ``omprog_started``); its pid."""
        found: list[int] = []

        def ready() -> bool:
            pids = [p for p in self.program_pids() if p != not_pid]
            if pids and self.started_pid(pids[0]):
                found.append(pids[0])
                return True
            return False

        self._wait(ready, timeout, "the omprog program to start")
        return found[0]

    def started_pid(self, pid: int) -> bool:
        """True once program ``pid`` logged ``omprog_started`` (the line after its first OK)."""
        for path in (self.log, self.program_log):
            if path.exists() and f'"pid": {pid},' in path.read_text(errors="replace"):
                return True
        return False

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

    def hold_program(self) -> None:
        """From now on the program fails to start (rsyslog keeps what arrives queued)."""
        self.wrapper.write_text("#!/bin/sh\nexit 1\n")

    def release_program(self) -> None:
        """The program starts again (see :meth:`hold_program`)."""
        self.wrapper.write_text(self._wrapper_text)

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


class RelayRsyslogd(Rsyslogd):
    """A private rsyslogd running the shipped relay drop-in, forwarding to ``receivers``
    (loopback TCP ports of receivers started with ``relayed_port``)."""

    def __init__(self, work: Path, receivers: list[int], port: int | None = None) -> None:
        self.work = work
        self.spool = work / "spool"
        self.spool.mkdir(parents=True, exist_ok=True)
        self.port = port or free_udp_port()
        self.relayed_port = None
        text = (ROOT / "rsyslog.d" / "40-kpr-omprog-relay.conf").read_text()
        old = 'input(type="imudp" port="514"'
        if old not in text:
            raise AssertionError(f"the shipped relay drop-in no longer contains {old!r}")
        text = text.replace(old, f'input(type="imudp" address="127.0.0.1" port="{self.port}"')
        text = relay_dropin(text, [("127.0.0.1", p) for p in receivers])
        self.conf = work / "rsyslog.conf"
        self.stats_file = work / "impstats.json"
        self.conf.write_text(f'global(workDirectory="{self.spool}")\n'
                             'module(load="imuxsock" SysSock.Use="off")\n'
                             f'module(load="impstats" interval="1" format="json" log.syslog="off" '
                             f'log.file="{self.stats_file}" resetCounters="off")\n' + text)
        self.env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = None
