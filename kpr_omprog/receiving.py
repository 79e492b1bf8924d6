"""Is anything receiving? The receiving path ``kpr-omprog status`` checks.

A state directory alone cannot say: under rsyslog no receiver runs until the first
datagram, so "no receiver" is normal there, and "ok" said nothing about rsyslogd. What is
installed is recorded by install.sh in ``installed`` next to the config file (``mode``,
``dropin``, ``port``); without that file a drop-in at the standard place means rsyslog.

* rsyslog: the drop-in exists, an ``rsyslogd`` process runs, it holds the drop-in's UDP
  port, and it started after the drop-in last changed (rsyslogd reads its config only at
  start).
* standalone: a ``kpr-omprog udp`` holds the state directory (or one of its shards).

Linux only (``/proc``); each check is a read of a few small files.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

__all__ = ["INSTALLED_FILE", "STANDARD_DROPIN", "Receiving", "check", "read_installed"]

#: written by install.sh next to the config file; removed by ``install.sh --uninstall``
INSTALLED_FILE = "installed"
#: where install.sh (and the README's manual route) put the drop-in
STANDARD_DROPIN = "/etc/rsyslog.d/30-kpr-omprog.conf"

_IMUDP_PORT = re.compile(r'input\(\s*type="imudp"[^)]*?port="(\d+)"')


@dataclass(frozen=True, slots=True)
class Receiving:
    #: "rsyslog", "standalone" or "unknown"
    mode: str
    #: one line: what receives, or what is missing (``problem`` set)
    line: str
    problem: bool


def read_installed(config_dir: str) -> dict[str, str]:
    """install.sh's record of what it installed (``key=value`` lines); {} if none."""
    try:
        with open(os.path.join(config_dir, INSTALLED_FILE), encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            out[key.strip()] = value.strip()
    return out


def check(config_dir: str | None, holders: list[str]) -> Receiving:
    """The receiving path of what is installed (``config_dir``: where the config file is);
    ``holders``: pids of receivers holding the state directory or its shards."""
    installed = read_installed(config_dir) if config_dir else {}
    mode = installed.get("mode", "")
    dropin = installed.get("dropin", "")
    if not mode and os.path.exists(STANDARD_DROPIN):
        mode, dropin = "rsyslog", STANDARD_DROPIN
    if mode == "rsyslog":
        return _rsyslog(dropin or STANDARD_DROPIN)
    running = f"kpr-omprog receiver running, pid {', '.join(holders)}"
    if mode == "standalone":
        if holders:
            return Receiving(mode, f"standalone: {running}", False)
        return Receiving(mode, "nothing receives: the standalone receiver is not running (systemctl start "
                               "kpr-omprog, or kpr-omprog udp --config FILE)", True)
    if holders:
        return Receiving("unknown", running, False)
    record = (f"{os.path.join(config_dir, INSTALLED_FILE)} is missing" if config_dir else
              "no config file, so no 'installed' record beside it")
    return Receiving("unknown", f"nothing receives: no receiver holds the state directory, and no install is "
                                f"recorded ({record}: ./install.sh writes it; or run kpr-omprog udp)", True)


def _rsyslog(dropin: str) -> Receiving:
    def missing(what: str) -> Receiving:
        return Receiving("rsyslog", f"nothing receives: {what}", True)

    try:
        with open(dropin, encoding="utf-8", errors="replace") as f:
            text = f.read()
        changed = os.stat(dropin).st_mtime
    except OSError:
        return missing(f"the rsyslog drop-in {dropin} is gone (./install.sh installs it again)")
    ports = sorted({int(p) for p in _IMUDP_PORT.findall(text)})
    daemons = _processes("rsyslogd")
    if not daemons:
        return missing("rsyslogd is not running (start it: systemctl start rsyslog, or rsyslogd)")
    for port in ports:
        inodes = _udp_inodes(port)
        owners = {pid for pid in daemons if _holds(pid, inodes)}
        if not inodes:
            return missing(f"rsyslogd (pid {', '.join(map(str, daemons))}) does not listen on UDP {port}: it has "
                           f"not loaded {dropin} (restart rsyslog: systemctl restart rsyslog, or ./install.sh)")
        if not owners and all(_readable(pid) for pid in daemons):
            return missing(f"UDP {port} is held by another program, not rsyslogd (ss -lunp 'sport = :{port}' "
                           "names it)")
        for pid in sorted(owners or set(daemons)):
            # whole seconds (the boot time is one): a drop-in changed in the second rsyslogd
            # started is taken as loaded
            started = _started(pid)
            if started and started + 1 < changed:
                return missing(f"rsyslogd (pid {pid}) started before {dropin} last changed, so it runs the old "
                               "one (restart rsyslog: systemctl restart rsyslog, or ./install.sh)")
    pids = ", ".join(map(str, daemons))
    return Receiving("rsyslog", f"rsyslog: rsyslogd (pid {pids}) listens on UDP {', '.join(map(str, ports))} with "
                                f"{dropin} (it starts kpr-omprog at the first datagram)", False)


def _processes(name: str) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm", encoding="utf-8", errors="replace") as f:
                if f.read().strip() == name:
                    out.append(int(entry))
        except OSError:
            continue  # gone meanwhile
    return sorted(out)


def _udp_inodes(port: int) -> set[str]:
    """Socket inodes bound to UDP ``port`` (IPv4 and IPv6)."""
    want = f":{port:04X}"
    inodes = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table, encoding="ascii") as f:
                next(f, None)
                for line in f:
                    cols = line.split()
                    if len(cols) > 9 and cols[1].upper().endswith(want):
                        inodes.add(cols[9])
        except OSError:
            continue
    return inodes


def _readable(pid: int) -> bool:
    try:
        os.listdir(f"/proc/{pid}/fd")
        return True
    except OSError:
        return False


def _holds(pid: int, inodes: set[str]) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            return True
    return False


def _started(pid: int) -> float:
    """When process ``pid`` started (seconds since the epoch; 0 if unknown)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
        with open("/proc/stat", encoding="ascii") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        return 0.0
    # field 22 (starttime, clock ticks since boot), counted after the command name's ")"
    ticks = int(stat.rpartition(")")[2].split()[19])
    return btime + ticks / os.sysconf("SC_CLK_TCK")
