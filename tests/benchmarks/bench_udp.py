"""Ceiling A: a bare Python receive loop, then ``kpr-omprog udp``, under the same paced load.

    python tests/benchmarks/bench_udp.py
    python tests/benchmarks/bench_udp.py --workers 1,2    # kpr-omprog udp --workers N instead

Load: interleaved crash reports (real capture) and noise from 1,000 loopback hosts, at
fixed rates for about 2 s each (tests/benchmarks/sender.py, pinned to the other core).
A rate passes when every datagram sent was received (the receiver's own count). Both
receivers ask for the same 4 MiB socket buffer. Prints the highest passing rate of each.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import PY, RECEIVER_CPU, Row, free_port, json_logs, kpr, send, wait_drained, wait_log

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
RATES = (25_000, 50_000, 75_000, 100_000, 112_500, 125_000, 137_500, 150_000, 162_500, 175_000, 187_500, 200_000)


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
    ceiling, cnotes = highest_lossless(trial_bare, seconds)
    ours, onotes = highest_lossless(trial_kpr, seconds)
    print("  bare loop:", "; ".join(cnotes))
    print("  kpr-omprog udp:", "; ".join(onotes))
    return [Row("1. UDP: highest zero-loss rate, 1,000 hosts crash+noise (vs bare recvfrom loop = ceiling A)",
                ours, ceiling, "datagrams/s", ">= 70% of ceiling A", ours >= 0.7 * ceiling,
                f"ceiling capped by the Python sender at {RATES[-1]:,}/s" if ceiling >= RATES[-1] else "")]


if __name__ == "__main__":
    # --workers 1,2: the workers' scaling instead of row 1
    if len(sys.argv) > 2 and sys.argv[1] == "--workers":
        for row in run_workers(counts=tuple(int(x) for x in sys.argv[2].split(","))):
            print(row)
    else:
        for row in run():
            print(row)
