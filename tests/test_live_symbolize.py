"""Live: a real kernel module, built with -g against the headers of the kernel QEMU boots,
oopses in the guest; its netconsole lines reach ``kpr-omprog udp``, which finds the
module's debug file under symbols.dirs, and the event read back from a real Bugsink
shows the module's source file and line for its frames.

guest: insmod kprcrash.ko; echo > /proc/kprcrash -> NULL dereference -> oops=panic
-> netconsole (extended) -> 10.0.2.2 -> kpr-omprog udp (symbols.dirs) -> Bugsink.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from tests.bugsink import Bugsink
from tests.qemu import crash_guest, kernel_release
from tests.rsyslogd import free_udp_port, udp_bound
from tests.test_symbolize import KMOD_DIR, line_of
from tests.waiting import wait_for


def test_live_module_oops_has_source_lines_in_bugsink(fresh_bugsink: Bugsink, tmp_path: Path) -> None:
    release = kernel_release()
    ko = KMOD_DIR / "kprcrash.ko"
    assert ko.exists(), f"{ko} missing: tests/run.sh builds tests/kmod against linux-headers-{release}"
    assert KMOD_DIR.name == release, f"{KMOD_DIR} was built for another release than {release}"
    port = free_udp_port()
    conf = tmp_path / "config.toml"
    conf.write_text(f'dsn = "{fresh_bugsink.dsn}"\n[symbols]\ndirs = ["{KMOD_DIR.parent}"]\n'
                    'standard_root = "/nonexistent"\n')
    log = tmp_path / "udp.log"
    proc = subprocess.Popen([sys.executable, "-m", "kpr_omprog.cli", "udp", "--config", str(conf), "--listen",
                             f"127.0.0.1:{port}", "--state-dir", str(tmp_path / "state"), "--log-format", "json"],
                            stderr=open(log, "wb"))  # noqa: SIM115
    try:
        wait_for(lambda: udp_bound(port), 20, "kpr-omprog udp to bind its port", proc)
        run = crash_guest(tmp_path, port, crash="insmod /lib/modules/kprcrash.ko\necho crash > /proc/kprcrash",
                          modules=(ko,))
        serial = (tmp_path / "serial.txt").read_text(errors="replace")
        assert "RIP: 0010:kpr_crash_deep+" in serial, (run.stderr, serial[-3000:])
        events = fresh_bugsink.wait_events(1, timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(15)
    assert rc == 0, log.read_text()[-3000:]
    assert len(events) == 1, log.read_text()[-3000:]
    data = events[0]["data"]
    assert data["release"] == f"linux@{release}"
    exc = data["exception"]["values"][0]
    assert exc["value"] == "in kpr_crash_deep"
    src = str(KMOD_DIR / "kprcrash.c")
    by_fn = {f.get("raw_function"): f for f in exc["stacktrace"]["frames"]}
    outer = by_fn["kpr_crash_outer.isra.0"]
    assert (outer["package"], outer["filename"], outer["lineno"]) == ("kprcrash", src, line_of("KPR_CALL_LINE"))
    assert (by_fn["kpr_write"]["filename"], by_fn["kpr_write"]["lineno"]) == (src, line_of("kpr_crash_outer((int)"))
    assert "lineno" not in by_fn["vfs_write"]  # no vmlinux debug file here
    assert data["tags"]["source"] == f"{src}:{line_of('KPR_FAULT_LINE')}"
    assert data["contexts"]["source"]["function"] == "kpr_poke"
