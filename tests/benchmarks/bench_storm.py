"""A panic storm: 2,000 hosts panic within 10 s, through rsyslogd (shipped drop-in) and
``kpr-omprog omprog`` into a real Bugsink.

    python tests/benchmarks/bench_storm.py [--hosts 2000]

Half the hosts replay the crash part of a real sysrq-c panic, half a real oops->panic
(lkdtm BUG), each at full speed from its own loopback address, starting at random
moments within 10 s. Expected: one event per host, two issues, nothing lost or
duplicated. Prints how long the last event took to arrive after the storm began.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent.parent))
from common import PY, Row, json_logs
from sender import crash_datagrams

from tests.bugsink import Bugsink
from tests.rsyslogd import Rsyslogd
from tests.senders import play


def run(hosts: int = 2000, spread: float = 10.0) -> list[Row]:
    kinds = [crash_datagrams("sysrq-c_classic"), crash_datagrams("lkdtm-BUG_ext_oopspanic")]
    rnd = random.Random(3)
    plan = sorted((rnd.uniform(0, spread), h) for h in range(hosts))
    with tempfile.TemporaryDirectory() as work:
        bugsink = Bugsink(Path(work) / "bugsink")
        state = Path(work) / "state"
        rs = Rsyslogd(Path(work) / "rs", [PY, "-m", "kpr_omprog.cli", "omprog", "--state-dir", str(state), "--dsn",
                                          bugsink.dsn, "--log-format", "json"], program_stderr=True)
        rs.start()
        try:
            t0, wall0 = time.monotonic(), time.time()
            # each host's datagrams back to back (1 us apart) from its random start
            play(("127.0.0.1", rs.port), {f"127.30.{h // 250}.{2 + h % 250}": [(at + i * 1e-6, d)
                                          for i, d in enumerate(kinds[h % 2])] for at, h in plan}, timeout=120)
            sent_in = time.monotonic() - t0
            deadline = time.monotonic() + 600
            issues: list[dict[str, object]] = []
            count = 0
            while time.monotonic() < deadline:
                issues = bugsink.issues()
                count = sum(int(str(i.get("digested_event_count", 0))) for i in issues)
                if count >= hosts:
                    break
                time.sleep(1)
            took = time.monotonic() - t0
            time.sleep(3)
            issues = bugsink.issues()
            count = sum(int(str(i.get("digested_event_count", 0))) for i in issues)
        finally:
            rs.stop()
            bugsink.stop()
        logs = json_logs(rs.program_log)
        stored = [_ts(x) - wall0 for x in logs if x.get("event") == "report"]
        answered = [_ts(x) - wall0 for x in logs if x.get("event") == "report_delivered"]
    print(f"  receiver: last report stored {max(stored, default=0):.1f} s, last 2xx from Bugsink "
          f"{max(answered, default=0):.1f} s after the storm began ({len(answered)} answered 2xx)")
    titles = sorted(f"{i.get('calculated_type')} {i.get('calculated_value')}".strip() for i in issues)
    print(f"  sent in {sent_in:.1f} s; {count} events in {len(issues)} issues after {took:.1f} s: {titles}")
    return [Row(f"6. storm: {hosts:,} hosts panic within {spread:.0f} s, rsyslog -> Bugsink: seconds to the last event",
                took, None, "s", f"{hosts:,} events, 2 issues, none lost or duplicated",
                count == hosts and len(issues) == 2, f"{count} events, {len(issues)} issues")]


def _ts(record: dict[str, str]) -> float:
    return datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=2000)
    for row in run(ap.parse_args().hosts):
        print(row)
