"""install.sh where many operators try it first: root, no sudo, no running systemd.

A copy of the debootstrapped Debian 12 root (tests/run.sh builds it; rsyslog, python3, no
sudo) is entered with chroot inside private network, mount and PID namespaces: loopback
only, nothing mounted on the host, and every process it starts (rsyslogd, kpr-omprog)
ends with it. tests/nosystemd_install_check.sh then runs the README's commands there:
install.sh must leave a running receiver and check it (and ``kpr-omprog status`` see
rsyslogd on the port), ``kpr-omprog reports`` must work as written, the README's smoke
test pasted as written must print the stored crash, a rerun that changes nothing must not
restart rsyslogd, ``--with-bugsink`` must start Bugsink with a pid file and a rerun
recognise it, ``--uninstall`` must stop that Bugsink, leave rsyslogd stopped as it found
it and say what it keeps, and ``--standalone`` must say exactly what to run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_install_systemd import ROOTFS, bugsink_wheels, wheels

ROOT = Path(__file__).resolve().parent.parent
CHECK = "KPR-CHECK"

pytestmark = pytest.mark.slow

ENTER = """
set -e
ip link set lo up
mount -t proc proc "$R/proc"
mount -t tmpfs tmpfs "$R/run"
mount -t tmpfs tmpfs "$R/tmp"
# /dev of its own (rsyslogd creates /dev/log there), with the host's null and random nodes
mount -t tmpfs tmpfs "$R/dev"
for n in null zero random urandom; do touch "$R/dev/$n"; mount --bind "/dev/$n" "$R/dev/$n"; done
exec chroot "$R" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  /bin/bash /root/kpr/nosystemd_install_check.sh
"""


def test_install_sh_as_root_without_systemd_or_sudo(tmp_path: Path) -> None:
    # never skipped: tests/run.sh debootstraps the root, so a missing one is a failure
    assert (ROOTFS / "usr" / "sbin" / "rsyslogd").exists(), f"{ROOTFS} missing (tests/run.sh debootstraps it)"
    root = tmp_path / "root"
    subprocess.run(["cp", "-a", str(ROOTFS), str(root)], check=True, timeout=300)
    kpr = root / "root" / "kpr"
    (kpr / "data").mkdir(parents=True)
    wheels(kpr / "wheels")
    bugsink_wheels(kpr / "wheels")
    for rel in ("kpr_omprog", "rsyslog.d"):
        shutil.copytree(ROOT / rel, kpr / "src" / rel, ignore=shutil.ignore_patterns("__pycache__"))
    for rel in ("install.sh", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / rel, kpr / "src" / rel)
    shutil.copy2(ROOT / "tests" / "nosystemd_install_check.sh", kpr / "nosystemd_install_check.sh")
    shutil.copy2(ROOT / "tests" / "senders.py", kpr / "senders.py")
    shutil.copy2(ROOT / "tests" / "data" / "lkdtm-BUG_classic_oopspanic.jsonl", kpr / "data")
    # the README's smoke test runs from the clone (its tests/ directory), as written there
    (kpr / "src" / "tests" / "data").mkdir(parents=True)
    shutil.copy2(ROOT / "tests" / "senders.py", kpr / "src" / "tests" / "senders.py")
    shutil.copy2(ROOT / "tests" / "data" / "lkdtm-BUG_classic_oopspanic.jsonl", kpr / "src" / "tests" / "data")
    (kpr / "smoke.sh").write_text("cd /root/kpr/src\n" + smoke_test())
    try:
        run = subprocess.run(["unshare", "--net", "--mount", "--pid", "--fork", "bash", "-c", ENTER],
                             env=dict(os.environ, R=str(root)), capture_output=True, text=True, timeout=900)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    lines = [x for x in run.stdout.splitlines() if x.startswith(CHECK)]
    assert lines and lines[-1] == "KPR-CHECK-DONE", "\n".join(lines) + "\n" + run.stderr[-3000:]
    assert not [x for x in lines if "FAIL" in x]
    assert sum(x.startswith("KPR-CHECK ok:") for x in lines) == 9, "\n".join(lines)


def smoke_test() -> str:
    """The README's smoke test: the sh block after "Smoke test with a real crash", as written."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index("Smoke test with a real crash"):]
    block = block[block.index("```sh\n") + 6:]
    return block[:block.index("```")]
