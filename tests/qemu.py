"""A real Linux kernel in QEMU that loads netconsole and crashes on purpose.

tests/run.sh fetches Debian's current amd64 kernel package and keeps only the kernel
and three modules (e1000, configfs, netconsole) in ``$KPR_KERNEL_DIR``; this module
writes a busybox initramfs whose /init brings eth0 up, loads netconsole towards
10.0.2.2 (QEMU's user-mode network hands that to the host's loopback) and runs
``echo c > /proc/sysrq-trigger``. With ``panic=-1`` and ``-no-reboot`` QEMU exits
right after the panic. No KVM: TCG works everywhere (about 10 s a boot).
"""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import BinaryIO

KERNEL_DIR = Path(os.environ.get("KPR_KERNEL_DIR", Path.home() / ".cache" / "kpr-omprog-kernel"))
QEMU = shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"
BUSYBOX = next((p for p in ("/bin/busybox", "/usr/bin/busybox") if os.path.exists(p)), "/bin/busybox")

INIT = r"""#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
arg() { for w in $(cat /proc/cmdline); do case "$w" in "$1"=*) echo "${w#*=}"; return;; esac; done; }
insmod /lib/modules/e1000.ko
ip link set lo up
ip addr add 10.0.2.15/24 dev eth0
ip link set eth0 up
insmod /lib/modules/configfs.ko 2>/dev/null
insmod /lib/modules/netconsole.ko netconsole="$(arg kpr_nc)" || echo "kpr-live: netconsole failed" > /dev/kmsg
i=0; while [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" != 1 ] && [ $i -lt 50 ]; do sleep 0.2; i=$((i+1)); done
sleep 1
echo "kpr-live: crashing now" > /dev/kmsg
sleep 0.5
if [ -x /crash.sh ]; then /crash.sh; else echo c > /proc/sysrq-trigger; fi
sleep 10
poweroff -f
"""


def kernel_release() -> str:
    return (KERNEL_DIR / "RELEASE").read_text().strip()


def _entry(out: BinaryIO, ino: int, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
           owner: tuple[int, int] = (0, 0)) -> None:
    # newc cpio: no root and no cpio(1) needed; /dev/console is written as a device entry.
    name_b = name.encode() + b"\0"
    fields = (ino, mode, owner[0], owner[1], 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0)
    out.write(("070701" + "".join(f"{v:08X}" for v in fields)).encode() + name_b)
    out.write(b"\0" * ((4 - (110 + len(name_b)) % 4) % 4))
    out.write(data)
    out.write(b"\0" * ((4 - len(data) % 4) % 4))


def _module(name: str) -> bytes:
    for suffix, read in ((".ko", Path.read_bytes), (".ko.xz", lambda p: lzma.decompress(p.read_bytes()))):
        path = KERNEL_DIR / f"{name}{suffix}"
        if path.exists():
            return read(path)
    raise FileNotFoundError(f"{KERNEL_DIR}/{name}.ko missing: tests/run.sh fetches the kernel")


def build_initramfs(out_path: Path, crash: str | None = None, modules: tuple[Path, ...] = ()) -> Path:
    """The guest's root; ``crash``: a shell script run instead of the sysrq crash, with
    ``modules`` (paths to .ko files) in /lib/modules."""
    with gzip.open(out_path, "wb", compresslevel=1) as out:
        ino = 1
        for d in ("bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules"):
            _entry(out, ino, d, stat.S_IFDIR | 0o755)
            ino += 1
        files = [("dev/console", stat.S_IFCHR | 0o600, b""),
                 ("bin/busybox", stat.S_IFREG | 0o755, Path(BUSYBOX).read_bytes()),
                 ("bin/sh", stat.S_IFLNK | 0o777, b"busybox"),  # the interpreter of /init
                 ("init", stat.S_IFREG | 0o755, INIT.encode())]
        files += [(f"lib/modules/{m}.ko", stat.S_IFREG | 0o644, _module(m)) for m in ("e1000", "configfs",
                                                                                       "netconsole")]
        files += [(f"lib/modules/{m.name}", stat.S_IFREG | 0o644, m.read_bytes()) for m in modules]
        if crash is not None:
            files.append(("crash.sh", stat.S_IFREG | 0o755, f"#!/bin/sh\n{crash}\n".encode()))
        for name, mode, data in files:
            _entry(out, ino, name, mode, data, (5, 1) if name == "dev/console" else (0, 0))
            ino += 1
        _entry(out, 0, "TRAILER!!!", 0)
    return out_path


def tree_cpio(out: BinaryIO, root: Path, under: str = "", ino: int = 1) -> int:
    """Append ``root``'s tree to a newc archive as ``under/...`` (owners, modes, links and
    device nodes kept; hard links become copies); returns the next free inode number.
    ``under``'s parents must be in the archive already: the kernel does not create them."""
    if under:
        _entry(out, ino, under, stat.S_IFDIR | 0o755)
        ino += 1
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in [""] + sorted(dirnames) + sorted(filenames):
            path = Path(dirpath, name) if name else Path(dirpath)
            if name in dirnames and not path.is_symlink():
                continue  # written when os.walk enters it
            rel = str(Path(under, path.relative_to(root))).lstrip("/")
            if rel in ("", "."):
                continue
            st = path.lstat()
            kind = stat.S_IFMT(st.st_mode)
            if kind == stat.S_IFLNK:
                data = os.readlink(path).encode()
            elif kind == stat.S_IFREG:
                data = path.read_bytes()
            elif kind in (stat.S_IFDIR, stat.S_IFCHR, stat.S_IFBLK):
                data = b""
            else:
                continue  # sockets and fifos: none in a fresh root
            rdev = (os.major(st.st_rdev), os.minor(st.st_rdev)) if kind in (stat.S_IFCHR, stat.S_IFBLK) else (0, 0)
            _entry(out, ino, rel, st.st_mode, data, rdev, (st.st_uid, st.st_gid))
            ino += 1
    return ino


def trailer(out: BinaryIO) -> None:
    _entry(out, 0, "TRAILER!!!", 0)


def qemu_usable() -> str | None:
    """None if QEMU runs here, else why not."""
    if not os.path.exists(QEMU):
        return f"{QEMU} not found (tests/run.sh installs qemu-system-x86)"
    r = subprocess.run([QEMU, "--version"], capture_output=True, text=True)
    return None if r.returncode == 0 else f"{QEMU} --version failed: {r.stderr.strip()}"


def crash_guest(work: Path, port: int, extended: bool = True, timeout: float = 180, crash: str | None = None,
                modules: tuple[Path, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Boot, send netconsole to 10.0.2.2:``port``, panic; returns when QEMU has exited.
    ``crash``/``modules``: see :func:`build_initramfs` (an oops panics: ``oops=panic``)."""
    vmlinuz = KERNEL_DIR / "vmlinuz"
    if not vmlinuz.exists():
        raise FileNotFoundError(f"{vmlinuz} missing: tests/run.sh fetches Debian's kernel into {KERNEL_DIR}")
    initrd = build_initramfs(work / "initramfs.cpio.gz", crash, modules)
    nc = f"{'+' if extended else ''}6666@10.0.2.15/eth0,{port}@10.0.2.2/"
    cmd = [QEMU, "-machine", "q35,accel=tcg", "-cpu", "max", "-smp", "2", "-m", "512M", "-nodefaults",
           "-no-user-config", "-display", "none", "-kernel", str(vmlinuz), "-initrd", str(initrd),
           "-append", f"console=ttyS0 panic=-1 oops=panic kpr_nc={nc}",
           "-netdev", "user,id=n0,ipv6=off", "-device", "e1000,netdev=n0,mac=52:54:00:12:34:56",
           "-serial", f"file:{work / 'serial.txt'}", "-no-reboot"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
