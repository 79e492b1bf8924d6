"""Live on arm64: Debian's arm64 kernel panics in QEMU (aarch64 ``virt``, TCG, about 12 s);
its netconsole lines travel through a real rsyslogd with the shipped drop-in into
``kpr-omprog omprog`` and on to a real Bugsink.

kernel -> netconsole (extended format) -> QEMU user-mode net (10.0.2.2 = host loopback)
-> rsyslogd imudp -> omprog -> kpr-omprog -> Bugsink.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.bugsink import Bugsink
from tests.qemu_arm64 import crash_guest, kernel_release, qemu_usable
from tests.rsyslogd import Rsyslogd


def test_live_arm64_kernel_panic_through_rsyslog_into_bugsink(fresh_bugsink: Bugsink, tmp_path: Path) -> None:
    # never skipped: tests/run.sh fetches everything this needs, so a missing part is a failure
    why = qemu_usable()
    assert why is None, why
    state = tmp_path / "state"
    rs = Rsyslogd(tmp_path / "rs", [sys.executable, "-m", "kpr_omprog.cli", "omprog", "--state-dir", str(state),
                                    "--dsn", fresh_bugsink.dsn, "--log-format", "json"])
    rs.start()
    try:
        run = crash_guest(tmp_path, rs.port)
        serial = (tmp_path / "serial.txt").read_text(errors="replace")
        assert "Kernel panic - not syncing: sysrq triggered crash" in serial, (run.stderr, serial[-3000:])
        events = fresh_bugsink.wait_events(1, timeout=30)
    finally:
        rs.stop()
    assert len(events) == 1, (rs.log.read_text()[-3000:] if rs.log.exists() else "no omprog log")
    data = events[0]["data"]
    exc = data["exception"]["values"][0]
    assert (exc["type"], exc["value"]) == ("kernel panic: sysrq triggered crash", "")
    assert data["level"] == "fatal"
    assert data["user"]["ip_address"] == "127.0.0.1"
    assert data["tags"]["kernel_release"] == kernel_release()
    assert kernel_release().endswith("-arm64")
    assert data["tags"]["crash_kind"] == "kernel panic"
    log = fresh_bugsink.attachments()[events[0]["event_id"].replace("-", "")].decode()
    # the context before the crash, arm64's own trace and the panic's tail made it through
    assert "kpr-live: crashing now" in log and "sysrq: Trigger a crash" in log
    assert "Kernel panic - not syncing: sysrq triggered crash" in log and "Call trace:" in log
    assert "__arm64_sys_write" in log and "Kernel Offset:" in log
    # arm64's panic ends with three more lines after Kernel Offset (arch/arm64's panic notifier)
    assert log.rstrip().endswith("Memory Limit: none"), log[-500:]
