"""``kpr-omprog netconsole-script``: the client side of issue 23.

Real parts: the printed script is checked by ``shellcheck`` and parsed by ``dash`` and
``busybox sh``, and it runs in a QEMU guest on two real Debian kernels (the suite's 6.1,
whose netconsole has no release, userdata or sysdata, and Debian 13's backports kernel,
which has them all), under busybox sh and dash, with no systemd (rc.local and the
heartbeat loop), and in the debootstrapped Debian 12 root booted with systemd as PID 1 (the
boot unit and the heartbeat timer). The receiver here is ``kpr-omprog capture`` and the
datagrams are read back through the project's decoder.
"""

from __future__ import annotations

import gzip
import http.server
import json
import lzma
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from kpr_omprog.assembler import Assembler, AssemblerConfig
from kpr_omprog.capture import parse_line
from kpr_omprog.netconsole import HostDecoder, Line
from kpr_omprog.netconsole_script import (
    MAX_TAG_KEY,
    ScriptError,
    heartbeat_timer,
    heartbeat_unit,
    render,
    render_helper,
    settings,
    setup_unit,
)
from kpr_omprog.shards import STORE_FILE
from kpr_omprog.store import Store
from tests.qemu import BUSYBOX, KERNEL_DIR, QEMU, _entry, qemu_usable
from tests.waiting import wait_for

NEW_KERNEL_DIR = Path(os.environ.get("KPR_NEW_KERNEL_DIR", Path.home() / ".cache" / "kpr-omprog-kernel-new"))
HEARTBEAT = 2  # seconds: short, so the live test sees beats without waiting a day


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kpr_omprog.cli", "netconsole-script", *args],
                          capture_output=True, text=True, timeout=60)


# --- bad input: one clear line, exit 2 -----------------------------------------------------

@pytest.mark.parametrize(("args", "says"), [
    (["--server", "receiver.example"], "not an IP address"),
    (["--server", "10.0.0.300"], "not an IP address"),
    (["--server", "127.0.0.1"], "loopback"),
    (["--server", "0.0.0.0"], "unspecified"),
    (["--server", "224.0.0.1"], "multicast"),
    (["--server", "fe80::1%eth0"], "without a %zone"),
    (["--port", "514"], "--server ADDR is needed"),
    (["--server", "192.0.2.10", "--port", "70000"], "--port 70000: must be 1-65535"),
    (["--server", "192.0.2.10", "--tag", "dc"], "expected key=value"),
    (["--server", "192.0.2.10", "--tag", "d c=x"], "the key must be"),
    (["--server", "192.0.2.10", "--tag", "a/b=x"], "the key must be"),
    (["--server", "192.0.2.10", "--tag", ".dc=x"], "the key must be"),
    (["--server", "192.0.2.10", "--tag", "k" * (MAX_TAG_KEY + 1) + "=x"], "configfs allows 53"),
    (["--server", "192.0.2.10", "--tag", "dc=" + "v" * 201], "201 bytes; netconsole's configfs allows 200"),
    (["--server", "192.0.2.10", "--tag", "dc="], "empty value"),
    (["--server", "192.0.2.10", "--tag", "dc=a\nb"], "control character"),
    (["--server", "192.0.2.10", "--tag", "release=x"], "uses itself"),
    (["--server", "192.0.2.10", "--tag", "msgid_enabled=1"], "uses itself"),
    (["--server", "192.0.2.10", "--tag", "a=1", "--tag", "a=2"], "given twice"),
    (["--server", "192.0.2.10", *[a for i in range(17) for a in ("--tag", f"k{i}=v")]], "at most 16"),
    (["--server", "192.0.2.10", "--heartbeat", "often"], "expected an interval"),
    (["--server", "192.0.2.10", "--heartbeat", "0s"], "between 1 s and 30d"),
    (["--server", "192.0.2.10", "--heartbeat", "31d"], "between 1 s and 30d"),
])
def test_bad_input_is_one_line(args: list[str], says: str) -> None:
    r = cli(*args)
    assert r.returncode == 2 and r.stdout == "", r
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("kpr-omprog netconsole-script: error: "), r.stderr
    assert says in r.stderr, r.stderr


def test_settings_canonical_forms() -> None:
    assert settings("[2001:DB8::0001]").server == "2001:db8::1"
    assert settings("::ffff:192.0.2.1").server == "192.0.2.1"
    assert settings(None, remove=True).server == ""
    assert settings("192.0.2.1", heartbeat="1d").heartbeat == 86400
    with pytest.raises(ScriptError):
        settings("192.0.2.1", tags=["ok=1", "bad"])


# --- the text: shellcheck, dash, busybox sh, the units ------------------------------------

VARIANTS = [
    settings("192.0.2.10"),
    settings("192.0.2.10", 6666, ["dc=ams1", "rack=r 12", "quote=it's \"x\" $HOME `id` \\"], "1d"),
    settings("2001:db8::10", 514, ["dc=ams1"], "45s"),
    settings(None, remove=True),
]


def _shellcheck() -> str:
    found = shutil.which("shellcheck")
    assert found, "shellcheck missing: tests/run.sh installs the Debian package"
    return found


@pytest.mark.parametrize("s", VARIANTS, ids=["plain", "tags-heartbeat", "ipv6", "remove"])
def test_script_passes_shellcheck_dash_and_busybox(s: object, tmp_path: Path) -> None:
    from kpr_omprog.netconsole_script import ScriptSettings

    assert isinstance(s, ScriptSettings)
    wrapper, helper = tmp_path / "wrapper.sh", tmp_path / "helper.sh"
    wrapper.write_text(render(s, "test"))
    helper.write_text(render_helper(s, "test"))
    for f in (wrapper, helper):
        r = subprocess.run([_shellcheck(), "-s", "sh", str(f)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout
        for shell in (["dash", "-n"], [BUSYBOX, "sh", "-n"]):
            r = subprocess.run([*shell, str(f)], capture_output=True, text=True)
            assert r.returncode == 0, (shell, r.stderr)
    # the heredoc carries the helper byte for byte (its tags' quotes and $ unexpanded)
    r = subprocess.run(["dash", "-c", "sed -n '/^cat > \"$t\" <</,/^KPR_OMPROG_HELPER_END$/p' \"$1\" | sed '1d;$d'",
                        "x", str(wrapper)], capture_output=True, text=True)
    assert r.stdout == helper.read_text()


def test_helper_tags_reach_the_shell_unchanged(tmp_path: Path) -> None:
    """The TAGS variable, as dash and busybox sh read it, holds the values exactly."""
    s = VARIANTS[1]
    helper = render_helper(s, "test")
    settings_part = helper.split("\nNAME=kpr-omprog\n")[0]
    for shell in (["dash"], [BUSYBOX, "sh"]):
        r = subprocess.run([*shell, "-c", settings_part + '\nprintf "%s" "$TAGS"'], capture_output=True, text=True)
        assert r.stdout == "dc ams1\nrack r 12\nquote it's \"x\" $HOME `id` \\", (shell, r.stdout)


@pytest.mark.parametrize("action", ["install", "remove"])
def test_not_root_is_one_line(action: str) -> None:
    """Run as an ordinary user, the helper changes nothing and says why in one line."""
    helper = render_helper(VARIANTS[1], "test")
    user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    for shell in (["dash"], [BUSYBOX, "sh"]):
        r = subprocess.run([*user, *shell, "-s", action], input=helper, capture_output=True, text=True, timeout=30,
                           cwd="/")
        assert r.returncode == 1 and r.stdout == "", r
        assert r.stderr.startswith("kpr-omprog netconsole: error: run as root") and r.stderr.count("\n") == 1


def test_systemd_unit_texts() -> None:
    s = settings("192.0.2.10", 6666, ["dc=ams1"], "1d")
    unit = setup_unit(s)
    assert "ExecStart=/bin/sh /usr/local/sbin/kpr-omprog-netconsole boot" in unit
    assert "After=network-online.target" in unit and "Wants=network-online.target" in unit
    assert "Type=oneshot" in unit and "WantedBy=multi-user.target" in unit
    assert "ExecStart=/bin/sh /usr/local/sbin/kpr-omprog-netconsole beat" in heartbeat_unit(s)
    timer = heartbeat_timer(s)
    assert "OnUnitActiveSec=86400s" in timer and "OnBootSec=86400s" in timer and "WantedBy=timers.target" in timer
    assert "AccuracySec=8640s" in timer
    assert "AccuracySec=1s" in heartbeat_timer(settings("192.0.2.10", heartbeat="5s"))
    helper = render_helper(s, "test")
    for text in (unit, heartbeat_unit(s), timer):
        assert text.rstrip("\n") in helper  # written verbatim by the helper


def test_systemd_units_pass_systemd_analyze(tmp_path: Path) -> None:
    """systemd's own checker reads the three units without a warning."""
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze not installed (Debian's systemd package: tests/run.sh installs it)"
    s = settings("192.0.2.10", 6666, ["dc=ams1"], "1d")
    names = {"kpr-omprog-netconsole.service": setup_unit(s), "kpr-omprog-netconsole-heartbeat.service":
             heartbeat_unit(s), "kpr-omprog-netconsole-heartbeat.timer": heartbeat_timer(s)}
    for name, text in names.items():
        (tmp_path / name).write_text(text)
    r = subprocess.run([analyze, "verify", "--man=no", *(str(tmp_path / n) for n in names)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    (tmp_path / "kpr-omprog-netconsole.service").write_text(setup_unit(s) + "Typo=1\n")  # it can fail
    r = subprocess.run([analyze, "verify", "--man=no", str(tmp_path / "kpr-omprog-netconsole.service")],
                       capture_output=True, text=True, timeout=120)
    assert "Unknown key 'Typo'" in r.stderr


# --- live: a real kernel runs the script --------------------------------------------------

GUEST_INIT = r"""#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
# the steps report on the second serial port: the kernel's console (ttyS0) would otherwise
# cut into a step's line at any character
exec >/dev/ttyS1 2>&1
mkdir -p /run /etc /var/lib /usr/local/sbin /tmp/nocfs /dashbin
ln -s /usr/bin/dash /dashbin/sh
hostname kpr-guest
modprobe e1000
ip link set lo up
ip addr add 10.0.2.15/24 dev eth0
ip link set eth0 up
i=0; while [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" != 1 ] && [ $i -lt 100 ]; do sleep 0.2; i=$((i+1)); done
T=/sys/kernel/config/netconsole/kpr-omprog
HP=$(cat /hport)
step() { n=$1; shift; echo "KPR-STEP-BEGIN $n"; "$@" 2>&1; echo "KPR-STEP-END $n rc=$?"; }
until_true() {  # bounded: 300 polls, then a line the host fails on
  i=0; until eval "$1"; do [ $i -ge 300 ] && { echo "KPR-TIMEOUT $1"; return 1; }; sleep 0.2; i=$((i+1)); done
}
# A line that must reach the host before a later step tears its target down is waited for
# until the host has it: the test answers http://10.0.2.2:$HP/<text> with 200 once a captured
# datagram holds <text>. Nothing in the guest can tell: newer kernels print to netconsole from
# a kthread (nbcon), so a line may still be queued when the write returns, and a target given
# by the module option first sends the whole log buffer again (CON_PRINTBUFFER), so the line
# waits behind hundreds of old ones; netpoll defers a datagram the NIC refuses to a worker.
arrived() {
  u="http://10.0.2.2:$HP/$(printf %s "$1" | sed 's/ /%20/g')"
  until_true 'timeout 10 wget -q -O /dev/null "$u" 2>/dev/null' || echo "KPR-TIMEOUT the host never got: $1"
}
mark() { echo "<5>$1" > /dev/kmsg; arrived "$1"; }
newest_test_line() { dmesg | sed -n 's/.*\(netconsole test from kpr-guest [0-9a-f]*\)$/\1/p' | tail -n 1; }
# No default route yet: the server is unreachable.
step unreachable sh /nc-unreach.sh
ip route add default via 10.0.2.2
step install1 sh /nc.sh
# again under dash, as /bin/sh too (the helper and its heartbeat run `sh`); another
# (disabled) target at the same receiver is pointed out
mkdir /sys/kernel/config/netconsole/other
echo 10.0.2.2 > /sys/kernel/config/netconsole/other/remote_ip
cat /port > /sys/kernel/config/netconsole/other/remote_port
step install2 env PATH=/dashbin:/bin /usr/bin/dash /nc.sh
rmdir /sys/kernel/config/netconsole/other
until_true '[ "$(dmesg | grep -c "netconsole heartbeat from kpr-guest")" -ge 2 ]'
# A reboot, as far as the target and the heartbeat know: both gone, rc.local runs.
kill -- "-$(cat /run/kpr-omprog-netconsole-heartbeat.pid)"
for d in "$T"/userdata/*/; do [ -d "$d" ] && rmdir "$d"; done
echo 0 > "$T/enabled"; rmdir "$T"
step boot sh /etc/rc.local
until_true '[ "$(cat $T/enabled 2>/dev/null)" = 1 ] && [ -s /run/kpr-omprog-netconsole-heartbeat.pid ]'
n=$(dmesg | grep -c "netconsole heartbeat from kpr-guest")
until_true '[ "$(dmesg | grep -c "netconsole heartbeat from kpr-guest")" -gt '"$n"' ]'
mark "kpr-live: after boot"
step remove1 sh /nc-remove.sh
step leftovers sh -c 'ls -d $0 /etc/rc.local /usr/local/sbin/kpr-omprog-netconsole /var/lib/kpr-omprog-netconsole \
  /sys/module/netconsole 2>/dev/null; ps | grep "[h]eartbeat-loop"; true' "$T"
echo "<5>kpr-live: after remove" > /dev/kmsg
step remove2 sh /nc-remove.sh
# as `... | ssh root@host sh` runs it: the script on the shell's stdin
step install3 sh -c 'sh < /nc.sh'
mark "kpr-live: after install3"
step remove3 sh /nc-remove.sh
# A kernel without configfs netconsole, as the script sees it: the module option.
step fallback env KPR_NC_CONFIGFS=/tmp/nocfs sh /nc.sh
# its test line goes out after the replayed log buffer; the rmmod below would cut that short
arrived "$(newest_test_line)"
step fallback2 env KPR_NC_CONFIGFS=/tmp/nocfs sh /nc.sh
# its reboot: no module, no heartbeat; the boot line loads it with the option again
kill -- "-$(cat /run/kpr-omprog-netconsole-heartbeat.pid)"
rmmod netconsole
step fallback-boot env KPR_NC_CONFIGFS=/tmp/nocfs sh /etc/rc.local
until_true '[ -d /sys/module/netconsole ] && [ -s /run/kpr-omprog-netconsole-heartbeat.pid ]'
mark "kpr-live: after fallback boot"
step fallback-remove env KPR_NC_CONFIGFS=/tmp/nocfs sh /nc-remove.sh
# IPv6: QEMU's user network answers for fec0::2 and hands it to the host's ::1
ip -6 addr add fec0::15/64 dev eth0
until_true '! ip -6 addr show dev eth0 | grep -q tentative'
step install6 sh /nc6.sh
mark "kpr-live: over ipv6"
step remove6 sh /nc-remove.sh
echo KPR-DONE
poweroff -f
"""


def _module_bytes(kdir: Path, name: str) -> bytes:
    for suffix, read in ((".ko", Path.read_bytes), (".ko.xz", lambda p: lzma.decompress(p.read_bytes()))):
        path = kdir / f"{name}{suffix}"
        if path.exists():
            return read(path)
    raise FileNotFoundError(f"{kdir}/{name}.ko missing: tests/run.sh fetches the kernel")


def _guest_initramfs(out_path: Path, kdir: Path, scripts: dict[str, str]) -> Path:
    release = (kdir / "RELEASE").read_text().strip()
    mods = f"lib/modules/{release}"
    dash_libs = ["lib/x86_64-linux-gnu/libc.so.6", "lib64/ld-linux-x86-64.so.2"]
    with gzip.open(out_path, "wb", compresslevel=1) as out:
        ino = 1
        for d in ("bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules", mods, f"{mods}/kernel", "usr",
                  "usr/bin", "lib/x86_64-linux-gnu", "lib64"):
            _entry(out, ino, d, stat.S_IFDIR | 0o755)
            ino += 1
        files = [("dev/console", stat.S_IFCHR | 0o600, b""),
                 ("bin/busybox", stat.S_IFREG | 0o755, Path(BUSYBOX).read_bytes()),
                 ("bin/sh", stat.S_IFLNK | 0o777, b"busybox"),
                 ("init", stat.S_IFREG | 0o755, GUEST_INIT.encode()),
                 ("usr/bin/dash", stat.S_IFREG | 0o755, Path("/usr/bin/dash").read_bytes())]
        files += [(lib, stat.S_IFREG | 0o755, Path("/" + lib).resolve().read_bytes()) for lib in dash_libs]
        # busybox modprobe finds modules through modules.dep, as on a real system
        files += [(f"{mods}/kernel/{m}.ko", stat.S_IFREG | 0o644, _module_bytes(kdir, m))
                  for m in ("e1000", "configfs", "netconsole")]
        dep = "kernel/e1000.ko:\nkernel/configfs.ko:\nkernel/netconsole.ko: kernel/configfs.ko\n"
        files.append((f"{mods}/modules.dep", stat.S_IFREG | 0o644, dep.encode()))
        files += [(name, stat.S_IFREG | 0o755, text.encode()) for name, text in scripts.items()]
        for name, mode, data in files:
            _entry(out, ino, name, mode, data, (5, 1) if name == "dev/console" else (0, 0))
            ino += 1
        _entry(out, 0, "TRAILER!!!", 0)
    return out_path


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _udp_bound(port: int) -> bool:
    want = f"0100007F:{port:04X}"
    return any(line.split()[1] == want for line in Path("/proc/net/udp").read_text().splitlines()[1:])


@pytest.fixture
def arrivals(tmp_path: Path) -> Iterator[int]:
    """How the guest waits for a line to reach the host: ``GET /<text>`` (from the guest
    ``http://10.0.2.2:PORT/...``, which QEMU's user network hands to 127.0.0.1) answers 200 once
    a datagram in ``tmp_path/capture.jsonl`` holds ``<text>``, 404 before. Yields the port."""
    capture = tmp_path / "capture.jsonl"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            want = urllib.parse.unquote(self.path.lstrip("/")).encode()
            # the last piece is a line still being written, or ""
            lines = capture.read_text().split("\n")[:-1] if capture.exists() else []
            seen = any(want in parse_line(raw, f"{capture}:{i + 1}").data for i, raw in enumerate(lines))
            self.send_response(200 if seen else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass  # the guest polls: a line per request would bury pytest's output

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="arrivals")
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


def _guest_steps(serial_file: Path, steps_file: Path) -> tuple[str, dict[str, tuple[int, str]]]:
    """The kernel's console and each step of a guest that ran to its end (fails otherwise)."""
    serial = serial_file.read_text(errors="replace")
    report = steps_file.read_text(errors="replace") if steps_file.exists() else ""
    assert "KPR-DONE" in report and "KPR-TIMEOUT" not in report, report[-3000:] + serial[-3000:]
    return serial, _steps(report)


def _steps(serial: str) -> dict[str, tuple[int, str]]:
    """Each step's exit status and output, from the guest's console."""
    out: dict[str, tuple[int, str]] = {}
    name, buf = None, []
    for line in serial.replace("\r", "").splitlines():
        if line.startswith("KPR-STEP-BEGIN "):
            name, buf = line.split()[1], []
        elif line.startswith("KPR-STEP-END ") and name is not None:
            out[name] = (int(line.rsplit("rc=", 1)[1]), "\n".join(b for b in buf if not b.startswith("[")))
            name = None
        elif name is not None:
            buf.append(line)
    return out


def _received(capture: Path) -> list[tuple[str, bytes, Line]]:
    """The captured datagrams through the project's own reading path: the capture format,
    then the netconsole decoder (one per source, as the assembler keeps them)."""
    decoders: dict[str, HostDecoder] = {}
    got = []
    for i, raw in enumerate(capture.read_text().splitlines()):
        d = parse_line(raw, f"{capture}:{i + 1}")
        # QEMU's user network hands 10.0.2.2 to 127.0.0.1 and fec0::2 to ::1
        assert d.source[0] in ("127.0.0.1", "::1"), d.source
        for line in decoders.setdefault(d.source[0], HostDecoder()).feed(d.data, d.at):
            got.append((d.source[0], d.data, line))
    return got


def _kernels() -> list[object]:
    return [pytest.param(KERNEL_DIR, id="debian12-6.1"), pytest.param(NEW_KERNEL_DIR, id="debian13-backports")]


@pytest.mark.slow
@pytest.mark.parametrize("kdir", _kernels())
def test_live_guest_runs_the_script(kdir: Path, tmp_path: Path, arrivals: int) -> None:
    # never skipped: tests/run.sh fetches everything this needs, so a missing part is a failure
    why = qemu_usable()
    assert why is None, why
    vmlinuz = kdir / "vmlinuz"
    assert vmlinuz.exists(), f"{vmlinuz} missing: tests/run.sh fetches it"
    release = (kdir / "RELEASE").read_text().strip()
    new_kernel = kdir == NEW_KERNEL_DIR
    port = _free_udp_port()
    tags = ["dc=ams1", "rack=r 12"]
    capture = tmp_path / "capture.jsonl"  # the arrivals fixture reads it
    scripts = {
        "nc.sh": render(settings("10.0.2.2", port, tags, f"{HEARTBEAT}s"), "test"),
        "nc-remove.sh": render(settings(None, remove=True), "test"),
        "nc-unreach.sh": render(settings("192.0.2.77", port), "test"),
        "nc6.sh": render(settings("fec0::2", port, tags), "test"),
        "port": str(port),
        "hport": str(arrivals),
    }
    initrd = _guest_initramfs(tmp_path / "initramfs.cpio.gz", kdir, scripts)
    cap = subprocess.Popen([sys.executable, "-m", "kpr_omprog.cli", "capture", "--listen", f"127.0.0.1:{port}",
                            "--listen", f"[::1]:{port}", "--out", str(capture)], stderr=subprocess.PIPE)
    serial_file, steps_file = tmp_path / "serial.txt", tmp_path / "steps.txt"
    try:
        wait_for(lambda: _udp_bound(port), 30, f"kpr-omprog capture on 127.0.0.1:{port}", cap)
        # One vCPU: with two, Debian 13's 7.x kernel under TCG once died in early boot patching
        # its own code (an int3 oops in sched_clock_cpu, before any of ours ran).
        cmd = [QEMU, "-machine", "q35,accel=tcg", "-cpu", "max", "-smp", "1", "-m", "512M", "-nodefaults",
               "-no-user-config", "-display", "none", "-kernel", str(vmlinuz), "-initrd", str(initrd),
               "-append", "console=ttyS0 panic=-1",
               "-netdev", "user,id=n0", "-device", "e1000,netdev=n0,mac=52:54:00:12:34:56",
               "-serial", f"file:{serial_file}", "-serial", f"file:{steps_file}", "-no-reboot"]
        for attempt in (1, 2):
            subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if "KPR-STEP-BEGIN" in (steps_file.read_text(errors="replace") if steps_file.exists() else ""):
                break
            # The guest's kernel died before its init ran a step: nothing of ours was involved
            # (netconsole is not loaded yet), so the guest is booted once more, and said so.
            warnings.warn(f"guest boot {attempt} died before its first step: "
                          f"{serial_file.read_text(errors='replace')[-300:]!r}", stacklevel=1)
    finally:
        cap.send_signal(signal.SIGTERM)
        cap.wait(timeout=30)
    serial, steps = _guest_steps(serial_file, steps_file)
    got6 = [(raw, line) for src, raw, line in _received(capture) if src == "::1"]
    got = [(raw, line) for src, raw, line in _received(capture) if src == "127.0.0.1"]
    texts = [line.text for _, line in got]

    # bad input the client finds: one line, exit 1
    rc, out = steps["unreachable"]
    assert rc == 1 and out.count("\n") == 0, out
    assert out.startswith("kpr-omprog netconsole: error: no route to 192.0.2.77"), out

    # first run: set up, a test line with the extended format at a console level
    rc, out = steps["install1"]
    assert rc == 0 and "kpr-omprog netconsole: done:" in out, out
    assert "created the netconsole target /sys/kernel/config/netconsole/kpr-omprog" in out
    assert "enabled the netconsole target: eth0 10.0.2.15 -> 10.0.2.2:" in out
    assert "loaded the netconsole module" in out and "added the boot line to /etc/rc.local" in out
    tests = [(raw, line) for raw, line in got if line.text.startswith("kpr-omprog: netconsole test from kpr-guest ")]
    nonce1 = out.split("netconsole test from kpr-guest ")[1].split("'")[0]
    first = next(line for _, line in tests if line.text.endswith(nonce1))
    assert first.seq is not None and first.level == 5  # extended; console_loglevel 7 -> level 5 (notice)
    raw1 = next(raw for raw, line in tests if line.text.endswith(nonce1))
    if new_kernel:
        assert "could not turn on" not in out, out
        assert first.release == release  # the configfs release option
        assert first.userdata == (("dc", "ams1"), ("rack", "r 12"))
        for sysdata in (b"\n cpu=", b"\n taskname=", b"\n msgid="):
            assert sysdata in raw1, raw1
    else:
        assert "could not turn on (kernel 6.1" in out, out
        for what in ("the kernel release on each line", "the tags (configfs userdata, 2024)", "sysdata"):
            assert what in out, out
        assert first.release is None and first.userdata is None

    # second run (under dash): nothing changes, and it says so
    rc, out = steps["install2"]
    assert rc == 0 and "kpr-omprog netconsole: nothing changed: netconsole already sends to 10.0.2.2:" in out, out
    assert f"note: the netconsole target other also sends to 10.0.2.2:{port} (each line arrives twice)" in out
    nonce2 = out.split("netconsole test from kpr-guest ")[1].split("'")[0]
    assert nonce2 != nonce1 and any(t.endswith(nonce2) for t in texts)

    # the heartbeat, at its short interval, and again after the "reboot"
    beats = [t for t in texts if t == "kpr-omprog: netconsole heartbeat from kpr-guest"]
    assert len(beats) >= 3, texts
    assert steps["boot"][0] == 0
    assert "kpr-live: after boot" in texts

    # --remove: everything goes; the datagrams stop; a second --remove has nothing to do
    rc, out = steps["remove1"]
    assert rc == 0 and "kpr-omprog netconsole: removed:" in out, out
    for what in ("stopped the heartbeat", "removed the netconsole target", "took the boot line out of /etc/rc.local",
                 "removed /etc/rc.local (it was ours)", "unloaded the netconsole module",
                 "removed /usr/local/sbin/kpr-omprog-netconsole"):
        assert what in out, out
    assert steps["leftovers"] == (0, ""), steps["leftovers"]
    assert "kpr-live: after remove" in serial  # the kernel logged it ...
    rc, out = steps["remove2"]
    assert rc == 0 and "nothing to remove" in out, out
    # ... but sent nothing until the next install, whose test line arrives
    nonce3 = steps["install3"][1].split("netconsole test from kpr-guest ")[1].split("'")[0]
    until = next(i for i, t in enumerate(texts) if t.endswith(nonce3))
    after_remove = texts.index("kpr-live: after boot") + 1
    assert "kpr-live: after remove" not in texts[:until]
    # in between only what the kernel logs as install3 enables its target (and a heartbeat
    # that fired before remove1 stopped it); 7.x also logs the console's registration
    # ("printk: console [netcon_ext0] enabled", "printk: legacy console [netcon0] enabled"),
    # sent once the console is up or not, by timing
    assert all(t.startswith(("netpoll", "netconsole", "kpr-omprog: netconsole heartbeat"))
               or (t.startswith("printk: ") and "console [netcon" in t)
               for t in texts[after_remove:until]), texts[after_remove:until]
    assert steps["remove3"][0] == 0

    # a kernel without configfs netconsole: the module option, extended format
    rc, out = steps["fallback"]
    flags = "+r" if new_kernel else "+"
    assert rc == 0 and f"loaded netconsole with netconsole={flags}6665@10.0.2.15/eth0," in out, out
    assert "configfs netconsole (CONFIG_NETCONSOLE_DYNAMIC)" in out and "the tags (they need configfs" in out
    assert ("the kernel release in front of each line" in out) != new_kernel, out
    nonce4 = out.split("netconsole test from kpr-guest ")[1].split("'")[0]
    fb = next(line for _, line in got if line.text.endswith(nonce4))
    assert fb.seq is not None and fb.release == (release if new_kernel else None)
    assert "nothing changed" in steps["fallback2"][1], steps["fallback2"]
    assert "kpr-live: after fallback boot" in texts
    rc, out = steps["fallback-remove"]
    assert rc == 0 and "unloaded the netconsole module" in out, out

    # an IPv6 server: route, neighbour discovery and the configfs target over IPv6
    rc, out = steps["install6"]
    assert rc == 0 and f"enabled the netconsole target: eth0 fec0::15 -> fec0::2:{port}" in out, out
    nonce6 = out.split("netconsole test from kpr-guest ")[1].split("'")[0]
    v6 = next(line for _, line in got6 if line.text.endswith(nonce6))
    assert v6.seq is not None and v6.userdata == ((("dc", "ams1"), ("rack", "r 12")) if new_kernel else None)
    assert "kpr-live: over ipv6" in [line.text for _, line in got6]
    assert steps["remove6"][0] == 0

    # The server side (issue 23): every datagram the guest sent, through the assembler into
    # a real store, read back by `kpr-omprog hosts`: the guest is one host (one per address
    # family) with its release, the extended format, its tags and its last test line, and it
    # is silent once its netconsole was removed.
    state = tmp_path / "state"
    state.mkdir()
    asm = Assembler(AssemblerConfig())
    last_at = 0.0
    for i, raw in enumerate(capture.read_text().splitlines()):
        d = parse_line(raw, f"{capture}:{i + 1}")
        asm.feed(d.data, d.source, d.at)
        last_at = max(last_at, d.at)
    store = Store(str(state / STORE_FILE))
    store.put_hosts(asm.take_dirty(100), time.time(), max_rows=100, new_cap=100)
    store.close()
    hosts = {h["key"]: h for h in map(json.loads, _cli("hosts", "--state-dir", str(state), "--json").splitlines())}
    assert set(hosts) == {"127.0.0.1", "::1"}, hosts
    v4 = hosts["127.0.0.1"]
    assert v4["formats"] in ("extended", "both") and v4["datagrams"] >= len(got) // 2, v4
    assert v4["special"].startswith("kpr-omprog: netconsole test from kpr-guest ") and v4["special_at"], v4
    if new_kernel:
        assert v4["release"] == release and v4["tags"] == {"dc": "ams1", "rack": "r 12"}, v4
        assert _cli("hosts", "--state-dir", str(state), "--tag", "rack=r 12").count("127.0.0.1") == 1
    # silent: heard before, not since its netconsole was removed (more than two heartbeats ago)
    wait_for(lambda: time.time() - last_at > 2 * HEARTBEAT, timeout=30, what="two heartbeat intervals")
    silent = _cli("hosts", "--state-dir", str(state), "--silent", f"{2 * HEARTBEAT}s")
    assert "127.0.0.1" in silent and "::1" in silent and "2 hosts silent" in silent, silent
    assert "0 hosts silent" in _cli("hosts", "--state-dir", str(state), "--silent", "1h")


def _cli(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "kpr_omprog.cli", *args], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


# --- live: a systemd host (Debian 12 booted with systemd as PID 1) ------------------------

SYSTEMD_CHECK = r"""#!/bin/sh
# The netconsole script on a systemd host, reported on the second serial port (ttyS1): the
# kernel's console (ttyS0) would otherwise cut into a step's line at any character.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
hostname kpr-systemd
modprobe e1000
i=0; until dev=$(ls /sys/class/net | grep -v '^lo$' | head -n 1) && [ -n "$dev" ] || [ $i -ge 150 ]; do
  sleep 0.2; i=$((i+1)); done
ip addr add 10.0.2.15/24 dev "$dev"
ip link set "$dev" up
ip route add default via 10.0.2.2
i=0; while [ "$(cat /sys/class/net/$dev/carrier 2>/dev/null)" != 1 ] && [ $i -lt 100 ]; do sleep 0.2; i=$((i+1)); done
T=/sys/kernel/config/netconsole/kpr-omprog
tx() { cat "/sys/class/net/$dev/statistics/tx_packets"; }
step() { n=$1; shift; echo "KPR-STEP-BEGIN $n"; "$@" 2>&1; echo "KPR-STEP-END $n rc=$?"; }
until_true() {  # bounded: 600 polls, then a line the host fails on
  i=0; until eval "$1"; do [ $i -ge 600 ] && { echo "KPR-TIMEOUT $1"; return 1; }; sleep 0.2; i=$((i+1)); done
}
mark() { b=$(tx); echo "<5>$1" > /dev/kmsg; until_true "[ \$(tx) -gt $b ]"; }
beats() { dmesg | grep -c "netconsole heartbeat from kpr-systemd"; }
step install1 sh /root/nc.sh
step install2 sh /root/nc.sh
step enabled systemctl is-enabled kpr-omprog-netconsole.service kpr-omprog-netconsole-heartbeat.timer
until_true '[ "$(beats)" -ge 2 ]'
# the boot unit, as at a boot: the target is gone and the unit sets it up again
for d in "$T"/userdata/*/; do [ -d "$d" ] && rmdir "$d"; done
echo 0 > "$T/enabled"; rmdir "$T"
step unit systemctl restart kpr-omprog-netconsole.service
step target cat "$T/enabled"
mark "kpr-live: after the unit"
step remove1 sh /root/nc-remove.sh
# nothing of ours left: files, target, helper, timer
step leftovers sh -c 'ls /etc/systemd/system | grep kpr-omprog-netconsole; \
  ls -d $0 /usr/local/sbin/kpr-omprog-netconsole 2>/dev/null; \
  systemctl list-timers --all --no-legend | grep kpr-omprog; true' "$T"
echo "<5>kpr-live: after remove" > /dev/kmsg
step install3 sh /root/nc.sh
mark "kpr-live: after install3"
step remove3 sh /root/nc-remove.sh
echo KPR-DONE
"""

SYSTEMD_UNIT = """[Unit]
Description=kpr-omprog netconsole script check (test guest)
After=multi-user.target
SuccessAction=poweroff-force
FailureAction=poweroff-force
[Service]
Type=oneshot
ExecStart=/bin/sh /root/check.sh
StandardOutput=tty
TTYPath=/dev/ttyS1
[Install]
WantedBy=multi-user.target
"""


def _systemd_initramfs(work: Path, scripts: dict[str, str]) -> Path:
    from tests.qemu import trailer, tree_cpio
    from tests.test_install_systemd import ROOTFS

    release = (KERNEL_DIR / "RELEASE").read_text().strip()
    mods = f"usr/lib/modules/{release}"
    out_path = work / "initramfs.cpio"
    with open(out_path, "wb") as out:
        ino = tree_cpio(out, ROOTFS)
        for d in ("usr/local/sbin", "usr/lib/modules", mods, f"{mods}/kernel"):
            _entry(out, ino, d, stat.S_IFDIR | 0o755)
            ino += 1
        # Debian's minbase root has neither iproute2 nor kmod: busybox stands in for ip,
        # ping, modprobe and rmmod (the script needs only their common options)
        files: list[tuple[str, int, bytes]] = [("usr/local/sbin/busybox", stat.S_IFREG | 0o755,
                                                Path(BUSYBOX).read_bytes())]
        files += [(f"usr/local/sbin/{a}", stat.S_IFLNK | 0o777, b"busybox") for a in ("ip", "ping", "modprobe",
                                                                                    "rmmod")]
        files += [(f"{mods}/kernel/{m}.ko", stat.S_IFREG | 0o644, _module_bytes(KERNEL_DIR, m))
                  for m in ("e1000", "configfs", "netconsole")]
        dep = "kernel/e1000.ko:\nkernel/configfs.ko:\nkernel/netconsole.ko: kernel/configfs.ko\n"
        files.append((f"{mods}/modules.dep", stat.S_IFREG | 0o644, dep.encode()))
        files += [(f"root/{name}", stat.S_IFREG | 0o755, text.encode()) for name, text in scripts.items()]
        files.append(("etc/systemd/system/kpr-nc-check.service", stat.S_IFREG | 0o644, SYSTEMD_UNIT.encode()))
        files.append(("etc/systemd/system/multi-user.target.wants/kpr-nc-check.service", stat.S_IFLNK | 0o777,
                      b"/etc/systemd/system/kpr-nc-check.service"))
        for name, mode, data in files:
            _entry(out, ino, name, mode, data)
            ino += 1
        trailer(out)
    return out_path


@pytest.mark.slow
def test_live_systemd_guest_runs_the_script(tmp_path: Path) -> None:
    """The unit and the timer under a real systemd: enabled, the timer's heartbeats, the
    boot unit setting the target up again, --remove disabling and deleting both."""
    from tests.test_install_systemd import ROOTFS

    why = qemu_usable() or (None if (ROOTFS / "lib" / "systemd" / "systemd").exists() else
                            f"{ROOTFS} has no systemd (tests/run.sh debootstraps it)")
    assert why is None, why  # never skipped: tests/run.sh fetches and builds what this needs
    port = _free_udp_port()
    scripts = {"check.sh": SYSTEMD_CHECK,
               "nc.sh": render(settings("10.0.2.2", port, ["dc=ams1"], "3s"), "test"),
               "nc-remove.sh": render(settings(None, remove=True), "test")}
    initrd = _systemd_initramfs(tmp_path, scripts)
    capture = tmp_path / "capture.jsonl"
    cap = subprocess.Popen([sys.executable, "-m", "kpr_omprog.cli", "capture", "--listen", f"127.0.0.1:{port}",
                            "--out", str(capture)], stderr=subprocess.PIPE)
    serial_file, steps_file = tmp_path / "serial.txt", tmp_path / "steps.txt"
    try:
        wait_for(lambda: _udp_bound(port), 30, f"kpr-omprog capture on 127.0.0.1:{port}", cap)
        cmd = [QEMU, "-machine", "q35,accel=tcg", "-cpu", "max", "-smp", "1", "-m", "2048M", "-nodefaults",
               "-no-user-config", "-display", "none", "-kernel", str(KERNEL_DIR / "vmlinuz"), "-initrd", str(initrd),
               "-append", "console=ttyS0 rdinit=/lib/systemd/systemd panic=-1 systemd.show_status=0 "
               "systemd.mask=serial-getty@ttyS0.service",
               "-netdev", "user,id=n0,ipv6=off", "-device", "e1000,netdev=n0,mac=52:54:00:12:34:56",
               "-serial", f"file:{serial_file}", "-serial", f"file:{steps_file}", "-no-reboot"]
        # a bound, not a wait: the guest powers off when its check is done
        subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    finally:
        cap.send_signal(signal.SIGTERM)
        cap.wait(timeout=30)
    _, steps = _guest_steps(serial_file, steps_file)
    texts = [line.text for _, _, line in _received(capture)]

    rc, out = steps["install1"]
    assert rc == 0 and "kpr-omprog netconsole: done:" in out, out
    for what in ("wrote /etc/systemd/system/kpr-omprog-netconsole.service",
                 "enabled kpr-omprog-netconsole.service (runs at boot)",
                 "wrote /etc/systemd/system/kpr-omprog-netconsole-heartbeat.timer",
                 "enabled kpr-omprog-netconsole-heartbeat.timer (every 3 s)"):
        assert what in out, out
    assert "rc.local" not in out and "started the heartbeat" not in out, out  # systemd's, not the fallback
    rc, out = steps["install2"]
    assert rc == 0 and "nothing changed" in out, out
    assert steps["enabled"] == (0, "enabled\nenabled"), steps["enabled"]
    assert texts.count("kpr-omprog: netconsole heartbeat from kpr-systemd") >= 2, texts
    assert steps["unit"][0] == 0 and steps["target"] == (0, "1"), (steps["unit"], steps["target"])
    assert "kpr-live: after the unit" in texts

    rc, out = steps["remove1"]
    assert rc == 0, out
    for what in ("removed /etc/systemd/system/kpr-omprog-netconsole-heartbeat.timer",
                 "removed /etc/systemd/system/kpr-omprog-netconsole-heartbeat.service",
                 "removed /etc/systemd/system/kpr-omprog-netconsole.service",
                 "removed the netconsole target", "removed /usr/local/sbin/kpr-omprog-netconsole"):
        assert what in out, out
    assert steps["leftovers"] == (0, ""), steps["leftovers"]
    nonce3 = steps["install3"][1].split("netconsole test from kpr-systemd ")[1].split("'")[0]
    until = next(i for i, t in enumerate(texts) if t.endswith(nonce3))
    assert "kpr-live: after remove" not in texts[:until] and "kpr-live: after install3" in texts
    assert steps["remove3"][0] == 0
