"""What a receiver that dies while starting costs: the delay rsyslog adds before the next
line moves, with the shipped drop-in's ``action.resumeInterval`` and with others.

    python tests/benchmarks/bench_resume.py [--intervals 2,10]

A private rsyslogd with the shipped drop-in (the interval replaced) runs a program that
takes a second to start (as a receiver recovering its journal does). It is SIGKILLed;
a line is sent, for which rsyslog restarts it; the restarted one is SIGKILLed again while it is still starting
(before its first ``OK``); the time from sending a line to a program receiving it is
measured. Three trials per interval, each bounded in time.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent.parent))
from tests.rsyslogd import Rsyslogd

SINK = r"""import sys, time
time.sleep(1.0)
sys.stdout.write("OK\n"); sys.stdout.flush()
for line in sys.stdin:
    open(sys.argv[1], "a").write(f"{time.time()}\n")
    sys.stdout.write("OK\n"); sys.stdout.flush()
"""


def _wait(what: str, predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout} s")
        time.sleep(0.01)


def trial(work: Path, interval: int) -> float:
    seen = work / "seen"
    sink = work / "sink.py"
    sink.write_text(SINK)
    rs = Rsyslogd(work / "rs", [sys.executable, str(sink), str(seen)])
    rs.conf.write_text(rs.conf.read_text().replace('action.resumeInterval="2"', f'action.resumeInterval="{interval}"'))
    rs.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"6,1,1,-;first\n", ("127.0.0.1", rs.port))
            _wait("first line", seen.exists, 30)
            first = rs.kill_program()
            sent = time.time()
            s.sendto(b"6,2,2,-;second\n", ("127.0.0.1", rs.port))  # rsyslog restarts the program for it
            _wait("restarted program", lambda: [p for p in rs.program_pids() if p != first], 30)
            for pid in rs.program_pids():
                os.kill(pid, signal.SIGKILL)  # still inside its one-second start
            _wait("second line", lambda: len(seen.read_text().split()) >= 2, interval * 3 + 30)
        return float(seen.read_text().split()[1]) - sent
    finally:
        rs.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--intervals", default="2,10")
    for interval in (int(x) for x in ap.parse_args().intervals.split(",")):
        delays = []
        for _ in range(3):
            with tempfile.TemporaryDirectory() as tmp:
                delays.append(trial(Path(tmp), interval))
        print(f"resumeInterval={interval}: a line waits {statistics.median(delays):.2f} s "
              f"(trials {', '.join(f'{d:.2f}' for d in delays)}) when the restarted program dies while "
              "starting (it takes 1 s to start)")


if __name__ == "__main__":
    main()
