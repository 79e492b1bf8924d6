"""Helpers shared by the benchmarks: processes, CPU pinning, socket queues, result rows."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))
from tests.rsyslogd import free_udp_port  # noqa: E402

free_port = free_udp_port  # one helper for the tests and the benchmarks
PY = sys.executable
# Two cores: the receiver on one, the load generator on the other.
RECEIVER_CPU, SENDER_CPU = 0, (1 if (os.cpu_count() or 1) > 1 else 0)


@dataclass
class Row:
    name: str
    ours: float
    ceiling: float | None
    unit: str
    target: str
    met: bool | None
    note: str = ""

    @property
    def ratio(self) -> str:
        return f"{100 * self.ours / self.ceiling:.0f}%" if self.ceiling else "-"


def udp_queue(port: int) -> tuple[int, int]:
    """(rx_queue bytes, drops) of the UDP socket bound to ``port`` (from /proc/net/udp)."""
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[1].split(":")[1], 16) == port:
            return int(f[4].split(":")[1], 16), int(f[-1])
    return 0, 0


def wait_drained(port: int, timeout: float = 30) -> None:
    """Until the socket's receive queue has read empty three times in a row."""
    deadline = time.monotonic() + timeout
    empty = 0
    while time.monotonic() < deadline and empty < 3:
        empty = empty + 1 if udp_queue(port)[0] == 0 else 0
        time.sleep(0.05)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


_BUILD = tempfile.mkdtemp(prefix="kpr-bench-")
_csender: str | None = None


def csender() -> str | None:
    """tests/benchmarks/csender.c built with the system compiler (once a run), or None
    without one (then the Python sender, which tops out near 200k datagrams/s, is used)."""
    global _csender
    if _csender is None:
        cc = shutil.which("cc") or shutil.which("gcc")
        exe = os.path.join(_BUILD, "csender")
        if cc is None or subprocess.run([cc, "-O2", "-o", exe, str(HERE / "csender.c")]).returncode != 0:
            _csender = ""
        else:
            _csender = exe
    return _csender or None


def sender_name() -> str:
    return "C sender (csender.c)" if csender() else "Python sender (no C compiler)"


def send(port: int, rate: float, count: int, hosts: int = 1000, noise: float = 0.5,
         max_seconds: float = 30) -> dict[str, Any]:
    exe = csender()
    if exe is None:
        out = subprocess.run([PY, str(HERE / "sender.py"), "--port", str(port), "--rate", str(rate), "--count",
                              str(count), "--hosts", str(hosts), "--noise", str(noise), "--cpu", str(SENDER_CPU),
                              "--max-seconds", str(max_seconds)], capture_output=True, text=True, check=True,
                             timeout=max_seconds + 60)
        return dict(json.loads(out.stdout))
    plan = os.path.join(_BUILD, f"plan-{hosts}-{count}-{noise}.bin")
    if not os.path.exists(plan):
        subprocess.run([PY, str(HERE / "sender.py"), "--port", str(port), "--rate", "1", "--count", str(count),
                        "--hosts", str(hosts), "--noise", str(noise), "--write-schedule", plan], check=True,
                       timeout=300)
    out = subprocess.run([exe, str(port), str(rate), str(max_seconds), plan, str(hosts), str(SENDER_CPU)],
                         capture_output=True, text=True, check=True, timeout=max_seconds + 60)
    return dict(json.loads(out.stdout))


def json_logs(path: Path) -> list[dict[str, Any]]:
    out = []
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
    return out


def wait_log(path: Path, event: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for x in json_logs(path):
            if x.get("event") == event:
                return x
        time.sleep(0.05)
    raise TimeoutError(f"no {event!r} in {path} after {timeout} s")


def kpr(*args: str, log: Path, cpu: int | None = RECEIVER_CPU) -> subprocess.Popen[bytes]:
    p = subprocess.Popen([PY, "-m", "kpr_omprog.cli", *args, "--log-format", "json"], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=open(log, "wb"))  # noqa: SIM115
    if cpu is not None:
        os.sched_setaffinity(p.pid, {cpu})
    return p


def machine_speed(n: int = 100_000) -> float:
    """How fast this machine is, for scaling every figure: datagrams/s a bare Python
    ``recvfrom`` loop drains from its own socket buffer on the receiver's core, the
    buffer filled beforehand (so no sender is involved)."""
    import socket

    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.setsockopt(socket.SOL_SOCKET, 33, 256 << 20)  # SO_RCVBUFFORCE (root)
    except OSError:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 << 20)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    payload = b"[ 5.000001] IN=eth0 OUT= SRC=203.0.113.7 DST=198.51.100.2 PROTO=TCP DPT=22 SYN\n"
    addr = rx.getsockname()
    for _ in range(n):
        tx.sendto(payload, addr)
    rx.setblocking(False)
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {RECEIVER_CPU})
    got = 0
    start = time.perf_counter()
    try:
        r = rx.recvfrom
        while True:
            r(65535)
            got += 1
    except BlockingIOError:
        pass
    seconds = time.perf_counter() - start
    os.sched_setaffinity(0, saved)
    rx.close()
    tx.close()
    return got / seconds


def print_folded_profile(lines: list[str], title: str, own_top: int, inclusive_top: int) -> None:
    """Print py-spy's folded stacks ("f1;f2;f3 N" a line) as the functions with the most
    samples of their own, then with the most samples inclusive of what they called."""
    import collections

    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in lines:
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        total += int(n)
        own[frames[-1]] += int(n)
        for f in {f.split(" (")[0] for f in frames}:
            inclusive[f] += int(n)
    print(f"{total} samples of {title}")
    for name, n in own.most_common(own_top):
        print(f"  self {100 * n / max(1, total):5.1f} %  {name}")
    for name, n in inclusive.most_common(inclusive_top):
        print(f"  incl {100 * n / max(1, total):5.1f} %  {name}")
