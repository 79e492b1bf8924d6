"""Live: a real kernel panics in QEMU; its netconsole lines travel through a real rsyslogd
with the shipped drop-in into ``kpr-omprog omprog`` and on to a real Bugsink. Debian's
amd64 kernel (q35) and its arm64 kernel (aarch64 ``virt``, TCG, about 12 s) alike.

kernel -> netconsole (extended format) -> QEMU user-mode net (10.0.2.2 = host loopback)
-> rsyslogd imudp -> omprog -> kpr-omprog -> Bugsink.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests import qemu, qemu_arm64
from tests.bugsink import Bugsink
from tests.rsyslogd import Rsyslogd


@pytest.mark.parametrize("guest", [qemu, qemu_arm64], ids=["x86_64", "arm64"])
def test_live_kernel_panic_through_rsyslog_into_bugsink(guest: ModuleType, fresh_bugsink: Bugsink,
                                                        tmp_path: Path) -> None:
    # never skipped: tests/run.sh fetches everything this needs, so a missing part is a failure
    why = guest.qemu_usable()
    assert why is None, why
    state = tmp_path / "state"
    rs = Rsyslogd(tmp_path / "rs", [sys.executable, "-m", "kpr_omprog.cli", "omprog", "--state-dir", str(state),
                                    "--dsn", fresh_bugsink.dsn, "--log-format", "json"])
    rs.start()
    try:
        run = guest.crash_guest(tmp_path, rs.port)
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
    assert data["tags"]["kernel_release"] == guest.kernel_release()
    assert data["tags"]["crash_kind"] == "kernel panic"
    log = fresh_bugsink.attachments()[events[0]["event_id"].replace("-", "")].decode()
    # the context before the crash and the panic's last line made it through
    assert "kpr-live: crashing now" in log and "sysrq: Trigger a crash" in log
    assert "Kernel panic - not syncing: sysrq triggered crash" in log and "Kernel Offset:" in log
    if guest is qemu_arm64:
        assert guest.kernel_release().endswith("-arm64")
        # arm64's own trace, and its panic's three lines after Kernel Offset (its panic notifier)
        assert "Call trace:" in log and "__arm64_sys_write" in log
        assert log.rstrip().endswith("Memory Limit: none"), log[-500:]
