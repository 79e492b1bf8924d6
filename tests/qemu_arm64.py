"""Debian's arm64 kernel in QEMU (aarch64 ``virt``, TCG) that loads netconsole and panics.

tests/run.sh fetches Debian's current ``linux-image-arm64:arm64`` and ``busybox-static:arm64``
packages and keeps the kernel, busybox and the modules of the NIC and netconsole in
``$KPR_ARM64_DIR``. The guest's /init loads them, brings eth0 up, loads netconsole towards
10.0.2.2 (QEMU's user-mode network hands that to the host's loopback) and runs
``echo c > /proc/sysrq-trigger``. With ``panic=-1`` and ``-no-reboot`` QEMU exits right after
the panic (about 12 s a boot here under TCG).

The NIC is an e1000 on the ``virt`` machine's PCIe bus, not virtio-net: under TCG QEMU sends
virtio-net's TX queue from its main loop, which on a loaded host lags behind the vCPU; the
panic's last lines were lost (netpoll's ring full, then QEMU exiting at the reset). e1000
sends inside the guest's register write, as on x86.
"""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import stat
import subprocess
from pathlib import Path

from tests.qemu import INIT, _entry

ARM64_DIR = Path(os.environ.get("KPR_ARM64_DIR", Path.home() / ".cache" / "kpr-omprog-kernel-arm64"))
QEMU = shutil.which("qemu-system-aarch64") or "/usr/bin/qemu-system-aarch64"
# what the x86 guest's INIT loads (tests/qemu.py), from /lib/modules
MODULES = ("e1000", "configfs")

def kernel_release() -> str:
    return (ARM64_DIR / "RELEASE").read_text().strip()


def qemu_usable() -> str | None:
    """None if the arm64 QEMU and Debian's arm64 kernel are here, else what is missing."""
    if not os.path.exists(QEMU):
        return f"{QEMU} not found (tests/run.sh installs qemu-system-arm)"
    for name in ("vmlinuz", "busybox", "RELEASE"):
        if not (ARM64_DIR / name).exists():
            return f"{ARM64_DIR / name} missing (tests/run.sh fetches Debian's arm64 kernel)"
    for m in (*MODULES, "netconsole"):
        if not any((ARM64_DIR / f"{m}{suffix}").exists() for suffix in (".ko", ".ko.xz")):
            return f"{ARM64_DIR / m}.ko missing (tests/run.sh fetches Debian's arm64 kernel)"
    return None


def _module(name: str) -> bytes:
    # Debian's 6.1 modules are plain .ko; later kernels ship .ko.xz, which insmod cannot load
    path = ARM64_DIR / f"{name}.ko"
    return path.read_bytes() if path.exists() else lzma.decompress((ARM64_DIR / f"{name}.ko.xz").read_bytes())


def build_initramfs(out_path: Path) -> Path:
    with gzip.open(out_path, "wb", compresslevel=1) as out:
        ino = 1
        for d in ("bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules"):
            _entry(out, ino, d, stat.S_IFDIR | 0o755)
            ino += 1
        files = [("dev/console", stat.S_IFCHR | 0o600, b""),
                 ("bin/busybox", stat.S_IFREG | 0o755, (ARM64_DIR / "busybox").read_bytes()),
                 ("bin/sh", stat.S_IFLNK | 0o777, b"busybox"),  # the interpreter of /init
                 ("init", stat.S_IFREG | 0o755, INIT.encode())]
        files += [(f"lib/modules/{m}.ko", stat.S_IFREG | 0o644, _module(m))
                  for m in (*MODULES, "netconsole")]
        for name, mode, data in files:
            _entry(out, ino, name, mode, data, (5, 1) if name == "dev/console" else (0, 0))
            ino += 1
        _entry(out, 0, "TRAILER!!!", 0)
    return out_path


def crash_guest(work: Path, port: int, extended: bool = True, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Boot, send netconsole to 10.0.2.2:``port``, panic; returns when QEMU has exited."""
    initrd = build_initramfs(work / "initramfs-arm64.cpio.gz")
    nc = f"{'+' if extended else ''}6666@10.0.2.15/eth0,{port}@10.0.2.2/"
    # romfile= : no PXE option ROM is needed (and none has to be installed) for -kernel boots
    cmd = [QEMU, "-machine", "virt,accel=tcg", "-cpu", "max", "-smp", "2", "-m", "512M", "-nodefaults",
           "-no-user-config", "-display", "none", "-kernel", str(ARM64_DIR / "vmlinuz"), "-initrd", str(initrd),
           "-append", f"console=ttyAMA0 panic=-1 oops=panic kpr_nc={nc}",
           "-netdev", "user,id=n0,ipv6=off", "-device", "e1000,netdev=n0,mac=52:54:00:12:34:56,romfile=",
           "-serial", f"file:{work / 'serial.txt'}", "-no-reboot"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
