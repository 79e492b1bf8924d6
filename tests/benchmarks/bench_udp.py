"""Ceiling A: a bare Python receive loop, then ``kpr-omprog udp``, under the same paced load.

    python tests/benchmarks/bench_udp.py
    python tests/benchmarks/bench_udp.py --workers 1,2    # kpr-omprog udp --workers N instead

Load: interleaved crash reports (real capture) and noise from 1,000 loopback hosts, at
fixed rates for about 2 s each, sent by tests/benchmarks/csender.c (built with the system
compiler; the Python sender.py without one), pinned to the other core. What the sender
offers flat out is printed first: on loopback the sender's core also runs the kernel's
receive path, so that figure caps every rate. A rate passes when every datagram sent was
received (the receiver's own count). Both receivers ask for the same 4 MiB socket buffer.
Prints the highest passing rate of each, then the receiver's CPU per datagram at 25,000
and 1,000 datagrams/s (the scheduler's count, /proc/PID/task/*/schedstat), ours beside the
bare loop's.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import PY, RECEIVER_CPU, Row, free_port, json_logs, kpr, send, sender_name, wait_drained, wait_log

BARE_LOOP = """
import os, signal, socket, sys, json
os.sched_setaffinity(0, {%d})
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE, as kpr-omprog asks
except OSError:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind(("127.0.0.1", %d))
n = 0
def stop(*a):
    print(json.dumps({"datagrams": n}), flush=True)
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
r = s.recvfrom
while True:
    r(65535)
    n += 1
"""

# 12,500 apart above 100k, where the receiver's limit lies: 25,000 steps could not tell 130k from 145k
RATES = (25_000, 50_000, 75_000, 100_000, 112_500, 125_000, 137_500, 150_000, 162_500, 175_000, 187_500, 200_000,
         225_000, 250_000, 275_000, 300_000, 350_000, 400_000)
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time of a process, all its threads: the scheduler's own nanosecond count
    (/proc/PID/task/*/schedstat). utime + stime from /proc/PID/stat is sampled at the
    timer tick, and a process that wakes just after a tick and sleeps before the next (the
    bare loop under a paced sender: 20-40 us a wake-up) is mostly missed: it read 27 us a
    datagram where the scheduler counted 40-48. The tick figure is the fallback where
    schedstat is missing (a kernel without CONFIG_SCHED_INFO)."""
    try:
        return sum(int((t / "schedstat").read_text().split()[0]) for t in Path(f"/proc/{pid}/task").iterdir()) / 1e9
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK


def sender_ceiling() -> float:
    """What the sender offers: datagrams/s sent flat out to a socket nobody reads."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    try:
        r = send(sink.getsockname()[1], 10_000_000, 300_000)
    finally:
        sink.close()
    return float(r["sent"] / r["seconds"])


def cpu_per_datagram(kind: str, rate: float, seconds: float) -> float:
    """Microseconds of the receiver's CPU per datagram at a fixed paced rate."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "bare":
            p: subprocess.Popen[Any] = subprocess.Popen([PY, "-c", BARE_LOOP % (RECEIVER_CPU, port)],
                                                        stdout=subprocess.PIPE, text=True)
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        else:
            log = Path(tmp) / "udp.log"
            p = kpr("udp", "--listen", f"127.0.0.1:{port}", "--state-dir", tmp, log=log)
            wait_log(log, "udp_started")
        try:
            before = cpu_seconds(p.pid)
            sent = send(port, rate, int(rate * seconds))["sent"]
            wait_drained(port)
            used = cpu_seconds(p.pid) - before
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(60)
    return used / sent * 1e6


def trial_bare(rate: float, seconds: float) -> tuple[int, int]:
    port = free_port()
    p = subprocess.Popen([PY, "-c", BARE_LOOP % (RECEIVER_CPU, port)], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    sent = send(port, rate, int(rate * seconds))["sent"]
    wait_drained(port)
    p.send_signal(signal.SIGTERM)
    got = json.loads(p.stdout.readline())["datagrams"]
    p.wait(10)
    return sent, got


def trial_kpr(rate: float, seconds: float) -> tuple[int, int]:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "udp.log"
        p = kpr("udp", "--listen", f"127.0.0.1:{port}", "--state-dir", tmp, log=log)
        wait_log(log, "udp_started")
        sent = send(port, rate, int(rate * seconds))["sent"]
        wait_drained(port)
        time.sleep(0.2)
        p.send_signal(signal.SIGTERM)
        p.wait(60)
        got = next(x for x in json_logs(log) if x["event"] == "udp_stopped")["datagrams"]
    return sent, got


def trial_workers(workers: int, rate: float, seconds: float) -> tuple[int, int]:
    """``kpr-omprog udp --workers N``, unpinned: the workers, and the sender, share the cores."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "udp.log"
        p = kpr("udp", "--listen", f"127.0.0.1:{port}", "--state-dir", tmp, "--workers", str(workers), log=log,
                cpu=None)
        deadline = time.monotonic() + 30
        while sum(1 for x in json_logs(log) if x.get("event") == "udp_started") < workers:
            if time.monotonic() > deadline or p.poll() is not None:
                raise RuntimeError(f"{workers} workers did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        sent = send(port, rate, int(rate * seconds))["sent"]
        wait_drained(port)
        time.sleep(0.2)
        p.send_signal(signal.SIGTERM)
        p.wait(90)
        got = sum(int(x["datagrams"]) for x in json_logs(log) if x.get("event") == "udp_stopped")
    return sent, got


def run_workers(seconds: float = 2.0, counts: tuple[int, ...] = (1, 2)) -> list[Row]:
    """Highest zero-loss rate of ``udp --workers N`` for each N, beside the bare loop's, same run."""
    import os

    ceiling, cnotes = highest_lossless(trial_bare, seconds)
    print(f"  cores: {os.cpu_count()}; bare loop:", "; ".join(cnotes))
    rows = []
    for n in counts:
        ours, notes = highest_lossless(lambda rate, secs, n=n: trial_workers(n, rate, secs), seconds)
        print(f"  kpr-omprog udp --workers {n}:", "; ".join(notes), flush=True)
        rows.append(Row(f"UDP --workers {n}: highest zero-loss rate, 1,000 hosts crash+noise (vs bare loop)",
                        ours, ceiling, "datagrams/s", "scaling with the cores", None,
                        f"{os.cpu_count()} cores shared with the sender; workers unpinned"))
    return rows


def highest_lossless(trial, seconds: float) -> tuple[float, list[str]]:  # type: ignore[no-untyped-def]
    best = 0.0
    notes = []
    for rate in RATES:
        sent, got = trial(rate, seconds)
        notes.append(f"{rate / 1000:g}k: {sent - got} lost of {sent}")
        if got < sent:
            break
        best = rate
    return best, notes


def run(seconds: float = 2.0) -> list[Row]:
    offers = sender_ceiling()
    print(f"  {sender_name()} offers {offers:,.0f} datagrams/s from 1,000 sources on this machine")
    ceiling, cnotes = highest_lossless(trial_bare, seconds)
    ours, onotes = highest_lossless(trial_kpr, seconds)
    print("  bare loop:", "; ".join(cnotes))
    print("  kpr-omprog udp:", "; ".join(onotes))
    capped = ceiling >= RATES[-1] or ceiling >= 0.9 * offers
    rows = [Row("1. UDP: highest zero-loss rate, 1,000 hosts crash+noise (vs bare recvfrom loop = ceiling A)",
                ours, ceiling, "datagrams/s", ">= 70% of ceiling A", ours >= 0.7 * ceiling,
                f"{sender_name()} offers {offers:,.0f}/s" + (" (the ceiling is the sender's)" if capped else ""))]
    cpu = {(kind, rate): cpu_per_datagram(kind, rate, 3.0 if rate < 10_000 else seconds)
           for rate in (25_000, 1_000) for kind in ("bare", "kpr")}
    for rate in (25_000, 1_000):
        ours_us, bare_us = cpu[("kpr", rate)], cpu[("bare", rate)]
        print(f"  CPU per datagram at {rate:,}/s: kpr-omprog udp {ours_us:.1f} us, bare loop {bare_us:.1f} us")
        rows.append(Row(f"1{'b' if rate > 1000 else 'c'}. UDP: receiver CPU per datagram at {rate:,}/s "
                        "(ceiling: bare loop)", ours_us, bare_us, "us", "<= 3x the bare loop's, flat as the rate falls",
                        ours_us <= 3 * bare_us, f"{ours_us / bare_us:.1f}x"))
    return rows


if __name__ == "__main__":
    # --workers 1,2: the workers' scaling instead of row 1
    if len(sys.argv) > 2 and sys.argv[1] == "--workers":
        for row in run_workers(counts=tuple(int(x) for x in sys.argv[2].split(","))):
            print(row)
    else:
        for row in run():
            print(row)
