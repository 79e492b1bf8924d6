"""Where ``kpr-omprog omprog`` spends its time under row 2's load, sampled by py-spy.

    python tests/benchmarks/profile_omprog.py [--count 60000]

Runs ``bench_rsyslog.py``'s setup (a real rsyslogd with the shipped drop-in, a burst of
crash+noise datagrams from 1,000 loopback hosts landing in its queue), has py-spy sample
the program (500 Hz, by line, without pausing it) while it takes the burst, and prints
the share of samples per line (self) and per function (inclusive), idle time included
(``--idle``: a sample in ``select``/``read`` is the program waiting for rsyslog). Both
processes are sampled: the reader's samples are under ``_read_lines``, the processor's
under ``_process`` (shares are of both together: each process has about half). py-spy
comes with the test extra (``pip install -e .[test]``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent.parent))
from common import PY, json_logs, print_folded_profile, send

from tests.rsyslogd import Rsyslogd


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=60_000)
    a = ap.parse_args()
    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    with tempfile.TemporaryDirectory() as tmp:
        state, raw = Path(tmp) / "state", Path(tmp) / "omprog.spy"
        state.mkdir()
        rs = Rsyslogd(Path(tmp), [PY, "-m", "kpr_omprog.cli", "omprog", "--state-dir", str(state), "--log-format",
                                  "json"], stats=True, program_stderr=True)
        rs.start()
        try:
            send(rs.port, 1000, 1)  # rsyslog starts the program at the first message
            pid = rs.wait_program()
            # --subprocesses: the reader (forked at the start, _read_lines) beside the processor (_process)
            rec = subprocess.Popen([spy, "record", "-p", str(pid), "-r", "500", "-f", "raw", "-o", str(raw), "--idle",
                                    "--nonblocking", "--subprocesses"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
            sent = 1 + send(rs.port, 150_000, a.count)["sent"]
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and (rs.stats("kpr_omprog queue").get("size", 1) > 0
                                                   or rs.stats().get("processed", 0) < sent):
                time.sleep(0.2)
        finally:
            rs.stop()
        rec.wait(60)
        stop = next((x for x in json_logs(rs.program_log) if x.get("event") == "omprog_stopped"), {})
        print(f"sent {sent}, the program took {stop.get('lines')} lines in {stop.get('busy_seconds')} s")
        lines = raw.read_text().splitlines() if raw.exists() else []
    print_folded_profile(lines, f"kpr-omprog omprog taking {a.count:,} lines from rsyslogd (idle included)", 15, 25)


if __name__ == "__main__":
    main()
