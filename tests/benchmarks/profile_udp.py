"""Where ``kpr-omprog udp`` spends its time under the benchmark load, sampled by py-spy.

    python tests/benchmarks/profile_udp.py [--rate 100000] [--seconds 4]

Starts the receiver on the receiver core, has py-spy sample it (500 Hz, by line) while
``sender.py`` offers 1,000 hosts of crash traffic and noise from the other core, and
prints the share of samples per line (self) and per function (inclusive). py-spy comes
with the test extra (``pip install -e .[test]``).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import PY, RECEIVER_CPU, SENDER_CPU, free_port, kpr, print_folded_profile, wait_log


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=4.0)
    a = ap.parse_args()
    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log, raw = Path(tmp) / "udp.log", Path(tmp) / "udp.spy"
        p = kpr("udp", "--listen", f"127.0.0.1:{port}", "--state-dir", tmp, log=log)
        wait_log(log, "udp_started")
        rec = subprocess.Popen([spy, "record", "-p", str(p.pid), "-d", str(int(a.seconds)), "-r", "500", "-f", "raw",
                                "-o", str(raw), "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        subprocess.run([PY, str(Path(__file__).parent / "sender.py"), "--port", str(port), "--rate", str(a.rate),
                        "--count", str(int(a.rate * a.seconds)), "--cpu", str(SENDER_CPU)], check=True)
        rec.wait(60)
        p.send_signal(signal.SIGTERM)
        p.wait(30)
        lines = raw.read_text().splitlines()
    print_folded_profile(lines, f"kpr-omprog udp on CPU {RECEIVER_CPU} at {a.rate:,} datagrams/s", 12, 20)


if __name__ == "__main__":
    main()
