"""The client side: a POSIX ``sh`` script that points one machine's netconsole at us.

``kpr-omprog netconsole-script --server ADDR`` prints it; an operator pipes it to a
root shell on each client (``... | ssh root@web1 sh``), so clients need no Python and
nothing installed. Pure: this module only builds text from validated arguments; the
script does every lookup on the client, where the route, the interface and the next
hop's MAC address are known.

The printed script is a thin wrapper that writes :data:`HELPER` (with the settings
filled in) to a temporary file and runs it with ``install`` or ``remove``. ``install``
copies it to ``/usr/local/sbin/kpr-omprog-netconsole``, which a systemd unit or a boot
script runs at every boot (``boot``: the next hop's MAC can change between boots).

The two lines the receiver recognises (kept exactly, the server side matches them)::

    >>> TEST_LINE.format(hostname="web1", nonce="3f2a9c01")
    'kpr-omprog: netconsole test from web1 3f2a9c01'
    >>> HEARTBEAT_LINE.format(hostname="web1")
    'kpr-omprog: netconsole heartbeat from web1'
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

__all__ = [
    "HEARTBEAT_LINE",
    "HELPER",
    "MAX_TAGS",
    "TEST_LINE",
    "ScriptError",
    "ScriptSettings",
    "heartbeat_timer",
    "heartbeat_unit",
    "parse_interval",
    "parse_tag",
    "render",
    "render_helper",
    "settings",
    "setup_unit",
]

TEST_LINE = "kpr-omprog: netconsole test from {hostname} {nonce}"
HEARTBEAT_LINE = "kpr-omprog: netconsole heartbeat from {hostname}"

#: netconsole's own default source port; the receiver keys hosts by address, not port
LOCAL_PORT = 6665
DEFAULT_PORT = 514  # the shipped rsyslog drop-in's port
#: configfs userdata limits (drivers/net/netconsole.c, 2024-2026): a key is a configfs
#: directory name of at most 53 bytes (MAX_EXTRADATA_NAME_LEN = 256 - 200 - 3), a value
#: at most 200 bytes (MAX_EXTRADATA_VALUE_LEN); 6.9's first version allowed 16 entries
#: (MAX_USERDATA_ITEMS, 256 since), and the receiver keeps 16 tags per host.
MAX_TAG_KEY = 53
MAX_TAG_VALUE = 200
MAX_TAGS = 16
# Keys the kernel writes itself (sysdata) or whose names are configfs attributes in the
# same userdata/ directory: a tag of that name would be misread or refused (EEXIST).
_RESERVED_KEYS = frozenset({"cpu", "taskname", "release", "msgid", "SUBSYSTEM", "DEVICE", "cpu_nr_enabled",
                            "taskname_enabled", "release_enabled", "msgid_enabled"})
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_INTERVAL = re.compile(r"(\d+)([smhd]?)")
MIN_HEARTBEAT = 1
MAX_HEARTBEAT = 30 * 86400


class ScriptError(ValueError):
    """Bad input, with a message fit for one line."""


@dataclass(frozen=True)
class ScriptSettings:
    server: str  # canonical text form ("" with remove and no --server)
    port: int
    tags: tuple[tuple[str, str], ...]
    heartbeat: int  # seconds, 0 = none
    remove: bool


def parse_interval(text: str) -> int:
    """``1d``, ``12h``, ``30m``, ``45s`` or plain seconds, in seconds.

    >>> parse_interval("1d"), parse_interval("90")
    (86400, 90)
    """
    m = _INTERVAL.fullmatch(text.strip())
    if not m:
        raise ScriptError(f"--heartbeat {text!r}: expected an interval such as 1d, 12h, 30m or 45s")
    secs = int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    if not MIN_HEARTBEAT <= secs <= MAX_HEARTBEAT:
        raise ScriptError(f"--heartbeat {text!r}: must be between {MIN_HEARTBEAT} s and 30d")
    return secs


def parse_tag(text: str) -> tuple[str, str]:
    """One ``--tag key=value``, refused where a kernel's configfs would refuse it.

    >>> parse_tag("dc=ams1")
    ('dc', 'ams1')
    """
    key, eq, value = text.partition("=")
    if not eq:
        raise ScriptError(f"--tag {text!r}: expected key=value, e.g. dc=ams1")
    if not key or not _KEY.fullmatch(key):
        raise ScriptError(f"--tag {text!r}: the key must be letters, digits, '_', '.' or '-' (a configfs directory "
                          "name), not starting with '.' or '-'")
    if len(key) > MAX_TAG_KEY:
        raise ScriptError(f"--tag {text[:60]!r}...: the key is {len(key)} characters; netconsole's configfs allows "
                          f"{MAX_TAG_KEY}")
    if key in _RESERVED_KEYS:
        raise ScriptError(f"--tag {text!r}: {key!r} is a name netconsole uses itself (sysdata); choose another key")
    if not value:
        raise ScriptError(f"--tag {text!r}: empty value (the kernel sends no line for an empty value)")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ScriptError(f"--tag {key}=...: the value holds a control character (a newline would break the "
                          "line format)")
    size = len(value.encode("utf-8"))
    if size > MAX_TAG_VALUE:
        raise ScriptError(f"--tag {key}=...: the value is {size} bytes; netconsole's configfs allows {MAX_TAG_VALUE}")
    return key, value


def _server(text: str) -> str:
    if "%" in text:
        raise ScriptError(f"--server {text!r}: give the address without a %zone (the client's route lookup "
                          "finds the interface)")
    try:
        addr = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        raise ScriptError(f"--server {text!r}: not an IP address (netconsole sends to an address, not a name: "
                          "give the receiver's IPv4 or IPv6 address)") from None
    why = ("unspecified" if addr.is_unspecified else "multicast" if addr.is_multicast
           else "loopback: netconsole sends over a network device; use the receiver's address on the network"
           if addr.is_loopback else "broadcast" if addr == ipaddress.IPv4Address("255.255.255.255") else "")
    if why:
        raise ScriptError(f"--server {text!r}: a {why} address" if " " not in why else f"--server {text!r}: {why}")
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return addr.compressed


def settings(server: str | None, port: int = DEFAULT_PORT, tags: list[str] | tuple[str, ...] = (),
             heartbeat: str | None = None, remove: bool = False) -> ScriptSettings:
    """Validate the command line's values; the first problem raises :class:`ScriptError`."""
    if not 1 <= port <= 65535:
        raise ScriptError(f"--port {port}: must be 1-65535")
    if server is None and not remove:
        raise ScriptError("--server ADDR is needed (the receiver's IP address)")
    addr = _server(server) if server is not None else ""
    parsed: list[tuple[str, str]] = []
    for t in tags:
        key, value = parse_tag(t)
        if any(k == key for k, _ in parsed):
            raise ScriptError(f"--tag {key}=...: given twice")
        parsed.append((key, value))
    if len(parsed) > MAX_TAGS:
        raise ScriptError(f"{len(parsed)} tags: at most {MAX_TAGS} (the receiver keeps {MAX_TAGS} per host)")
    return ScriptSettings(addr, port, tuple(parsed), parse_interval(heartbeat) if heartbeat else 0, remove)


def _q(value: str) -> str:
    """Single-quoted for sh: nothing inside is expanded."""
    return "'" + value.replace("'", "'\\''") + "'"


BIN = "/usr/local/sbin/kpr-omprog-netconsole"
UNIT = "kpr-omprog-netconsole.service"
HB_UNIT = "kpr-omprog-netconsole-heartbeat"


def setup_unit(s: ScriptSettings) -> str:
    """The systemd unit that sets the target up again at every boot."""
    return f"""[Unit]
Description=kpr-omprog: netconsole to {s.server}:{s.port} (kernel crash reports)
# The next hop's MAC address is resolved at every boot: the route must be up.
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh {BIN} boot

[Install]
WantedBy=multi-user.target
"""


def heartbeat_unit(s: ScriptSettings) -> str:
    return f"""[Unit]
Description=kpr-omprog: netconsole heartbeat line to {s.server}:{s.port}

[Service]
Type=oneshot
ExecStart=/bin/sh {BIN} beat
"""


def heartbeat_timer(s: ScriptSettings) -> str:
    # AccuracySec: systemd's default (1 min) would drift a short interval; a tenth of it
    # still lets systemd batch wake-ups for the usual daily one.
    return f"""[Unit]
Description=kpr-omprog: netconsole heartbeat every {s.heartbeat} s

[Timer]
OnBootSec={s.heartbeat}s
OnUnitActiveSec={s.heartbeat}s
AccuracySec={max(1, s.heartbeat // 10)}s

[Install]
WantedBy=timers.target
"""


# The script's body. Placeholders are @NAME@ (sh's own braces stay as they are).
HELPER = r"""#!/bin/sh
# kpr-omprog-netconsole: written by `kpr-omprog netconsole-script` (kpr-omprog @VERSION@).
# Points this machine's netconsole at the kpr-omprog receiver @SERVER@ port @PORT@ and keeps it
# there: `boot` sets the target up again at every boot, resolving the next hop's MAC address
# anew (a gateway can change). Commands: install, remove, boot, beat, heartbeat-loop.
set -u
SERVER=@Q_SERVER@
PORT=@PORT@
LOCAL_PORT=@LOCAL_PORT@
HEARTBEAT=@HEARTBEAT@
# One `key value` pair per line; the keys were checked against configfs' limits. Quoted
# literally: a $ or a backslash in a value is meant as written.
# shellcheck disable=SC2016,SC1003
TAGS=@Q_TAGS@
NAME=kpr-omprog
BIN=@BIN@
STATE=/var/lib/kpr-omprog-netconsole
UNIT=/etc/systemd/system/@UNIT@
HB_SERVICE=/etc/systemd/system/@HB_UNIT@.service
HB_TIMER=/etc/systemd/system/@HB_UNIT@.timer
RC_LOCAL=/etc/rc.local
LOCAL_D=/etc/local.d/kpr-omprog-netconsole.start
SYSCONFIG=/etc/sysconfig/netconsole
PIDFILE=/run/kpr-omprog-netconsole-heartbeat.pid
# KPR_NC_CONFIGFS: where configfs is mounted (a directory without netconsole/ in it makes
# the script take the path of kernels without configfs; the tests use that).
CFS=${KPR_NC_CONFIGFS:-/sys/kernel/config}
T=$CFS/netconsole/$NAME
BEGIN='# kpr-omprog netconsole begin (kpr-omprog-netconsole remove takes this out)'
END='# kpr-omprog netconsole end'
changed=0
missing=

say() { printf '%s\n' "kpr-omprog netconsole: $*"; }
change() { changed=$((changed + 1)); say "$*"; }
die() { printf '%s\n' "kpr-omprog netconsole: error: $*" >&2; exit 1; }
cannot() { missing="$missing
  - $*"; }
have() { command -v "$1" >/dev/null 2>&1; }
hostname_() { cat /proc/sys/kernel/hostname 2>/dev/null || uname -n; }

# A level the console prints: the kernel sends a message to its consoles (netconsole is
# one) only below console_loglevel, the first number in /proc/sys/kernel/printk. Never
# emerg (0): that one is also broadcast to every terminal.
level() {
  read -r cl _ < /proc/sys/kernel/printk 2>/dev/null || cl=7
  lvl=$((cl - 1))
  [ "$lvl" -gt 5 ] && lvl=5
  [ "$lvl" -lt 1 ] && lvl=1
  echo "$lvl"
}

kmsg() { printf '<%s>%s\n' "$(level)" "$1" > /dev/kmsg; }

beat() { kmsg "kpr-omprog: netconsole heartbeat from $(hostname_)"; }

# Writes $2 to the file $1 unless it holds exactly that already; says what it did.
put_file() {
  if [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; then return 1; fi
  mkdir -p "$(dirname "$1")" || die "cannot create $(dirname "$1")"
  { printf '%s\n' "$2" > "$1.kpr-new" && mv "$1.kpr-new" "$1"; } || die "cannot write $1"
  change "wrote $1"
  return 0
}

family() { case $SERVER in *:*) echo -6 ;; *) echo -4 ;; esac; }

# Sets dev, src and hop (the next hop: the gateway, or the server on a local network).
find_route() {
  out=$(ip "$(family)" route get "$SERVER" 2>&1) || die "no route to $SERVER: $(printf '%s' "$out" | head -n 1)"
  # shellcheck disable=SC2086 # word splitting is the point: ip's output is words
  set -- $out
  case $1 in
    local) die "$SERVER is an address of this machine: netconsole sends over a network device," \
      "so --server must be the receiver's address as this machine sees it" ;;
    unreachable|prohibit|blackhole|throw) die "no route to $SERVER ($1 route)" ;;
  esac
  dev=; src=; via=
  while [ $# -gt 1 ]; do
    case $1 in
      via) via=$2; shift ;;
      dev) dev=$2; shift ;;
      src) src=$2; shift ;;
    esac
    shift
  done
  [ -n "$dev" ] || die "no route to $SERVER: ip route get names no device ($out)"
  [ -n "$src" ] || die "no source address on $dev for $SERVER (ip route get: $out)"
  hop=${via:-$SERVER}
}

# The link-layer address the neighbour table holds for $hop on $dev, if any.
neigh_mac() {
  # shellcheck disable=SC2046 # words again
  set -- $(ip "$(family)" neigh show "$hop" dev "$dev" 2>/dev/null)
  while [ $# -gt 1 ]; do
    if [ "$1" = lladdr ]; then
      case " $* " in *" FAILED "*|*" INCOMPLETE "*) return 0 ;; esac
      echo "$2" | tr 'A-F' 'a-f'
      return 0
    fi
    shift
  done
}

# Sets mac. Nothing in the neighbour table: any packet to the next hop makes the kernel
# ask for it (ARP or neighbour discovery), so a ping is sent, answered or not.
find_mac() {
  mac=$(neigh_mac)
  i=0
  while [ -z "$mac" ] && [ $i -lt 25 ]; do
    if [ $i -eq 0 ]; then
      if [ "$(family)" = -6 ]; then
        { ping -6 -c 1 -W 1 -I "$dev" "$hop" || ping6 -c 1 -W 1 -I "$dev" "$hop"; } >/dev/null 2>&1 &
      elif have ping; then
        ping -c 1 -W 1 -I "$dev" "$hop" >/dev/null 2>&1 &
      elif have arping; then
        arping -c 1 -w 1 -I "$dev" "$hop" >/dev/null 2>&1 &
      fi
    fi
    sleep 0.2 2>/dev/null || sleep 1
    mac=$(neigh_mac)
    i=$((i + 1))
  done
  [ -n "$mac" ] || die "the MAC address of the next hop $hop on $dev is unknown and it did not answer" \
    "ARP/neighbour discovery (is $dev up, is $hop there?)"
}

netconsole_loaded() { [ -d /sys/module/netconsole ]; }

load_netconsole() {
  # a module option set up before (no configfs): loaded with it in option_up, not plain here
  if ! netconsole_loaded && [ ! -f "$STATE/option" ]; then
    if modprobe netconsole 2>/dev/null; then
      mkdir -p "$STATE" && : > "$STATE/loaded-module"
      change "loaded the netconsole module"
    fi
  fi
  if [ -d /sys/kernel/config ] && [ ! -d /sys/kernel/config/netconsole ] \
      && ! grep -qs ' /sys/kernel/config ' /proc/mounts; then
    mount -t configfs configfs /sys/kernel/config 2>/dev/null && change "mounted configfs on /sys/kernel/config"
  fi
}

attr() { cat "$T/$1" 2>/dev/null; }

# The configfs target: every setting the running kernel offers.
configfs_up() {
  if [ ! -d "$T" ]; then
    mkdir "$T" || die "cannot create the netconsole target $T"
    change "created the netconsole target $T"
  fi
  rel=0
  [ -e "$T/release" ] && rel=1
  stale=
  for pair in "dev_name $dev" "local_ip $src" "remote_ip $SERVER" "local_port $LOCAL_PORT" \
              "remote_port $PORT" "remote_mac $mac" "extended 1" "release $rel"; do
    key=${pair%% *}
    [ "$key" = release ] && [ ! -e "$T/release" ] && continue
    [ "$(attr "$key")" = "${pair#* }" ] || stale="$stale $key"
  done
  if [ -n "$stale" ]; then
    # The kernel refuses changes to an enabled target ("disable to update parameters").
    [ "$(attr enabled)" = 1 ] && { echo 0 > "$T/enabled" || die "cannot disable $T to update it"; }
    # extended before release: release requires the extended format
    for pair in "dev_name $dev" "local_ip $src" "remote_ip $SERVER" "local_port $LOCAL_PORT" \
                "remote_port $PORT" "remote_mac $mac" "extended 1" "release $rel"; do
      key=${pair%% *}
      case " $stale " in *" $key "*) ;; *) continue ;; esac
      printf '%s' "${pair#* }" > "$T/$key" || die "the kernel refused $key=${pair#* } for $T"
    done
    change "set$stale of the netconsole target"
  fi
  if [ "$(attr enabled)" != 1 ]; then
    if ! echo 1 > "$T/enabled"; then
      why=$(dmesg 2>/dev/null | grep -E 'netconsole|netpoll' | tail -n 1)
      die "the kernel did not enable the netconsole target on $dev${why:+ (dmesg: $why)}"
    fi
    change "enabled the netconsole target: $dev $src -> $SERVER:$PORT via $mac"
  fi
  userdata_up
  # Another target at the same receiver (an older setup, a module option) sends every line
  # twice: harmless (the receiver keeps one copy), but worth knowing.
  for o in "$CFS"/netconsole/*/; do
    [ "$o" = "$T/" ] && continue
    if [ "$(cat "$o/remote_ip" 2>/dev/null)" = "$SERVER" ] && [ "$(cat "$o/remote_port" 2>/dev/null)" = "$PORT" ]; then
      say "note: the netconsole target $(basename "$o") also sends to $SERVER:$PORT (each line arrives twice)"
    fi
  done
}

userdata_up() {
  U=$T/userdata
  if [ ! -d "$U" ]; then
    [ "$rel" = 1 ] || cannot "the kernel release on each line (configfs 'release', 2023)"
    [ -n "$TAGS" ] && cannot "the tags (configfs userdata, 2024): this kernel's netconsole has none"
    cannot "sysdata (cpu_nr, taskname, msgid; 2025): this kernel's netconsole has none"
    return 0
  fi
  # Entries of ours that are no longer wanted (a tag dropped from the command line).
  for d in "$U"/*/; do
    [ -d "$d" ] || continue
    k=$(basename "$d")
    case "
$TAGS" in *"
$k "*) ;; *) rmdir "$d" && change "removed tag $k" ;; esac
  done
  while IFS= read -r kv; do
    [ -n "$kv" ] || continue
    k=${kv%% *}; v=${kv#* }
    if [ ! -d "$U/$k" ]; then
      mkdir "$U/$k" || die "the kernel refused the tag name $k (configfs userdata)"
    fi
    if [ "$(cat "$U/$k/value" 2>/dev/null)" != "$v" ]; then
      printf '%s' "$v" > "$U/$k/value" || die "the kernel refused the value of tag $k"
      change "tag $k=$v"
    fi
  done <<EOF
$TAGS
EOF
  for f in cpu_nr taskname msgid release; do
    # the release as sysdata only where the kernel cannot put it in front of the line
    [ $f = release ] && [ "$rel" = 1 ] && continue
    if [ -e "$U/${f}_enabled" ]; then
      if [ "$(cat "$U/${f}_enabled")" != 1 ]; then
        echo 1 > "$U/${f}_enabled" || die "the kernel refused ${f}_enabled"
        change "turned on sysdata $f"
      fi
    elif [ $f = release ]; then
      cannot "the kernel release on each line (neither configfs 'release' nor sysdata release_enabled)"
    else
      cannot "sysdata $f (userdata/${f}_enabled, 2025): this kernel's netconsole has none"
    fi
  done
}

# Kernels without configfs netconsole: a module option (the next hop is in it, so the boot
# script loads the module anew at every boot), or the RHEL family's netconsole service.
option_up() {
  [ "$SERVER" = "${SERVER#*:}" ] \
    || die "this kernel has no configfs netconsole, and its module option takes no IPv6 server here"
  cannot "configfs netconsole (CONFIG_NETCONSOLE_DYNAMIC): set up with a module option instead"
  [ -n "$TAGS" ] && cannot "the tags (they need configfs userdata)"
  cannot "sysdata (it needs configfs)"
  if [ -f "$SYSCONFIG" ]; then
    block="$BEGIN
SYSLOGADDR=$SERVER
SYSLOGPORT=$PORT
SYSLOGMACADDR=$mac
$END"
    if ! grep -qF "SYSLOGMACADDR=$mac" "$SYSCONFIG" || ! grep -qF "SYSLOGADDR=$SERVER" "$SYSCONFIG"; then
      strip_block "$SYSCONFIG"
      printf '%s\n' "$block" >> "$SYSCONFIG" || die "cannot write $SYSCONFIG"
      change "set SYSLOGADDR, SYSLOGPORT and SYSLOGMACADDR in $SYSCONFIG"
      cannot "the extended format and the release (the netconsole service sets neither)"
      if have systemctl; then systemctl enable netconsole >/dev/null 2>&1; systemctl restart netconsole
      else chkconfig netconsole on 2>/dev/null; service netconsole restart
      fi || die "service netconsole restart failed"
    fi
    return 0
  fi
  # extended (+) since Linux 4.4; the release (r) since 6.6, tried first there: a kernel
  # that does not know it refuses the whole option, and is then asked without it
  flags='+r + -'
  case $(uname -r) in
    [0-3].*|4.[0-3].*) flags=- ;;
    [4-5].*|6.[0-5].*) flags='+ -' ;;
  esac
  last=$(cat "$STATE/option" 2>/dev/null)
  if netconsole_loaded && [ -n "$last" ] && [ "${last#*[0-9]@}" = "$src/$dev,$PORT@$SERVER/$mac" ]; then
    opt=$last
  else
    if netconsole_loaded; then
      rmmod netconsole 2>/dev/null \
        || die "netconsole is loaded and in use by something else; it cannot be given our target"
    fi
    for f in $flags; do
      [ "$f" = - ] && f=
      opt="$f$LOCAL_PORT@$src/$dev,$PORT@$SERVER/$mac"
      modprobe netconsole "netconsole=$opt" 2>/dev/null && break
      opt=
    done
    [ -n "$opt" ] \
      || die "modprobe netconsole netconsole=$LOCAL_PORT@$src/$dev,$PORT@$SERVER/$mac failed (dmesg says why)"
    mkdir -p "$STATE" && printf '%s\n' "$opt" > "$STATE/option" && : > "$STATE/loaded-module"
    change "loaded netconsole with netconsole=$opt"
  fi
  case $opt in +*) ;; *) cannot "the extended format (netconsole's + option, Linux 4.4 and later)" ;; esac
  case $opt in
    +r*) ;;
    *) cannot "the kernel release in front of each line (netconsole's r option, Linux 6.6 and later)" ;;
  esac
}

up() {
  have ip || die "the ip command (iproute2 or busybox) is needed"
  find_route
  find_mac
  load_netconsole
  if [ -d "$CFS/netconsole" ]; then configfs_up; else option_up; fi
}

# Removes the lines between the markers from file $1 (nothing if it has none).
strip_block() {
  grep -qF "$BEGIN" "$1" 2>/dev/null || return 1
  awk -v b="$BEGIN" -v e="$END" '$0 == b {skip = 1; next} $0 == e {skip = 0; next} !skip' "$1" > "$1.kpr-new" \
    && cat "$1.kpr-new" > "$1" && rm -f "$1.kpr-new"
}

systemd_running() { [ -d /run/systemd/system ] && have systemctl; }

heartbeat_pid() {
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
  [ -n "$pid" ] && grep -qs kpr-omprog-netconsole "/proc/$pid/cmdline" && echo "$pid"
}

heartbeat_loop() {
  trap '' HUP
  while :; do
    sleep "$HEARTBEAT" || exit 0
    beat
  done
}

start_heartbeat_loop() {
  [ "$HEARTBEAT" -gt 0 ] || return 0
  heartbeat_pid >/dev/null && return 0
  mkdir -p "$(dirname "$PIDFILE")"
  if have setsid; then setsid sh "$BIN" heartbeat-loop </dev/null >/dev/null 2>&1 &
  else sh "$BIN" heartbeat-loop </dev/null >/dev/null 2>&1 & fi
  echo $! > "$PIDFILE"
  change "started the heartbeat (every $HEARTBEAT s, pid $!)"
}

stop_heartbeat_loop() {
  pid=$(heartbeat_pid) || { rm -f "$PIDFILE"; return 0; }
  # setsid made it a process group leader: its sleep goes with it
  kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null
  rm -f "$PIDFILE"
  change "stopped the heartbeat (pid $pid)"
}

persist() {
  if systemd_running; then
    put_file "$UNIT" "@UNIT_TEXT@" && systemctl daemon-reload
    if ! systemctl is-enabled --quiet @UNIT@ 2>/dev/null; then
      systemctl enable --quiet @UNIT@ && change "enabled @UNIT@ (runs at boot)"
    fi
    if [ "$HEARTBEAT" -gt 0 ]; then
      a=0; put_file "$HB_SERVICE" "@HB_SERVICE_TEXT@" && a=1
      put_file "$HB_TIMER" "@HB_TIMER_TEXT@" && a=1
      [ $a = 1 ] && systemctl daemon-reload && systemctl restart @HB_UNIT@.timer
      if ! systemctl is-enabled --quiet @HB_UNIT@.timer 2>/dev/null; then
        systemctl enable --now --quiet @HB_UNIT@.timer && change "enabled @HB_UNIT@.timer (every $HEARTBEAT s)"
      fi
    else
      remove_heartbeat_units
    fi
    return 0
  fi
  # No systemd: OpenRC's local.d, else rc.local (sysvinit, busybox systems), run at boot.
  line="sh $BIN boot >/dev/null 2>&1 &"
  if [ -d /etc/local.d ]; then
    put_file "$LOCAL_D" "#!/bin/sh
$line" && chmod 755 "$LOCAL_D"
  elif ! grep -qF "$line" "$RC_LOCAL" 2>/dev/null; then
    if [ ! -f "$RC_LOCAL" ]; then
      printf '#!/bin/sh\nexit 0\n' > "$RC_LOCAL" && mkdir -p "$STATE" && : > "$STATE/created-rc.local"
    fi
    strip_block "$RC_LOCAL"
    # before a final `exit 0`, or nothing after it would run
    { awk -v blk="$BEGIN
$line
$END" '{l[NR] = $0} END {last = NR; while (last > 0 && l[last] ~ /^[ \t]*$/) last--;
        at = (l[last] ~ /^[ \t]*exit 0[ \t]*$/) ? last : last + 1;
        for (i = 1; i <= NR; i++) { if (i == at) print blk; print l[i] } if (at > NR) print blk }' \
        "$RC_LOCAL" > "$RC_LOCAL.kpr-new" \
      && cat "$RC_LOCAL.kpr-new" > "$RC_LOCAL" && rm -f "$RC_LOCAL.kpr-new" && chmod 755 "$RC_LOCAL"
    } || die "cannot write $RC_LOCAL"
    change "added the boot line to $RC_LOCAL"
  fi
  if [ "$HEARTBEAT" -gt 0 ]; then start_heartbeat_loop; else stop_heartbeat_loop; fi
}

remove_heartbeat_units() {
  for u in "$HB_TIMER" "$HB_SERVICE"; do
    [ -f "$u" ] || continue
    systemctl disable --now --quiet "$(basename "$u")" 2>/dev/null
    rm -f "$u" && change "removed $u"
  done
}

do_install() {
  [ "$(id -u 2>/dev/null)" = 0 ] || die "run as root (the script writes to configfs, /dev/kmsg and /etc)"
  up
  me=$(cat "$0") || die "cannot read $0"
  if [ "$0" != "$BIN" ] && put_file "$BIN" "$me"; then
    chmod 755 "$BIN"
    stop_heartbeat_loop  # it runs the old copy (another interval, another server): started anew below
  fi
  persist
  host=$(hostname_)
  nonce=$(od -An -N6 -tx1 /dev/urandom 2>/dev/null | tr -d ' \n')
  [ -n "$nonce" ] || nonce=$$
  if [ "$changed" -eq 0 ]; then
    say "nothing changed: netconsole already sends to $SERVER:$PORT ($dev $src, next hop $hop $mac)"
  else
    say "done: $changed change(s); netconsole sends to $SERVER:$PORT ($dev $src, next hop $hop $mac)"
  fi
  [ -n "$missing" ] && say "could not turn on (kernel $(uname -r)):$missing"
  kmsg "kpr-omprog: netconsole test from $host $nonce" || die "cannot write the test line to /dev/kmsg"
  say "sent the test line 'kpr-omprog: netconsole test from $host $nonce'"
  say "on the server: kpr-omprog hosts   (lists $host, $src, with this test line)"
}

do_remove() {
  [ "$(id -u 2>/dev/null)" = 0 ] || die "run as root"
  stop_heartbeat_loop
  if have systemctl; then
    remove_heartbeat_units
    if [ -f "$UNIT" ]; then
      systemctl disable --quiet @UNIT@ 2>/dev/null
      rm -f "$UNIT" && change "removed $UNIT"
    fi
    [ "$changed" -gt 0 ] && systemctl daemon-reload 2>/dev/null
  fi
  [ -f "$LOCAL_D" ] && rm -f "$LOCAL_D" && change "removed $LOCAL_D"
  if strip_block "$RC_LOCAL"; then
    change "took the boot line out of $RC_LOCAL"
    if [ -f "$STATE/created-rc.local" ] && [ "$(grep -cvE '^(#!/bin/sh|exit 0)$' "$RC_LOCAL")" = 0 ]; then
      rm -f "$RC_LOCAL" && change "removed $RC_LOCAL (it was ours)"
    fi
  fi
  if [ -d "$T" ]; then
    [ "$(attr enabled)" = 1 ] && echo 0 > "$T/enabled"
    for d in "$T"/userdata/*/; do [ -d "$d" ] && rmdir "$d"; done
    rmdir "$T" || die "cannot remove the netconsole target $T"
    change "removed the netconsole target $T"
  fi
  if strip_block "$SYSCONFIG"; then
    change "took our settings out of $SYSCONFIG"
    if have systemctl; then systemctl restart netconsole; else service netconsole restart; fi >/dev/null 2>&1
  fi
  if [ -f "$STATE/loaded-module" ] && netconsole_loaded; then
    # only when no other target is left (someone else's would go with the module)
    if [ -f "$STATE/option" ] || [ -z "$(ls -A "$CFS/netconsole" 2>/dev/null)" ]; then
      # rmmod: busybox's modprobe -r also tries configfs, which stays in use while mounted
      if err=$(rmmod netconsole 2>&1) || ! netconsole_loaded; then change "unloaded the netconsole module"
      else say "left the netconsole module loaded: rmmod failed${err:+: $err}"; fi
    else
      say "left the netconsole module loaded: other netconsole targets use it"
    fi
  fi
  [ -d "$STATE" ] && rm -rf "$STATE" && change "removed $STATE"
  [ -f "$BIN" ] && rm -f "$BIN" && change "removed $BIN"
  if [ "$changed" -eq 0 ]; then say "nothing to remove: netconsole was not set up by kpr-omprog"
  else say "removed: $changed change(s); this machine no longer sends its kernel log to kpr-omprog"; fi
}

# At boot the network can take a while: the route is looked up for up to a minute.
boot() {
  i=0
  until (find_route) >/dev/null 2>&1 || [ $i -ge 30 ]; do sleep 2; i=$((i + 1)); done
  up
  [ -n "$missing" ] && say "could not turn on (kernel $(uname -r)):$missing"
  systemd_running || start_heartbeat_loop
  return 0
}

case ${1:-install} in
  install) do_install ;;
  remove) do_remove ;;
  boot) boot ;;
  beat) beat ;;
  heartbeat-loop) heartbeat_loop ;;
  *) die "unknown command ${1}: install, remove, boot, beat or heartbeat-loop" ;;
esac
"""

WRAPPER = r"""#!/bin/sh
# Generated by `kpr-omprog netconsole-script@ARGS@` (kpr-omprog @VERSION@).
# Run as root on a client, e.g. `... | ssh root@host sh`: @WHAT@
# It writes the helper below to a temporary file and runs it with `@ACTION@`.
set -u
umask 022
if ! t=$(mktemp "${TMPDIR:-/tmp}/kpr-omprog-netconsole.XXXXXX"); then
  echo "kpr-omprog netconsole: error: mktemp failed" >&2
  exit 1
fi
cat > "$t" <<'KPR_OMPROG_HELPER_END'
@HELPER@KPR_OMPROG_HELPER_END
# stdin to /dev/null: under `| ssh host sh` the rest of this script is on stdin, and
# nothing the helper runs may read it
sh "$t" @ACTION@ </dev/null
rc=$?
rm -f "$t"
exit "$rc"
"""


def _fill(template: str, values: dict[str, str]) -> str:
    return re.sub(r"@([A-Z_]+)@", lambda m: values[m.group(1)] if m.group(1) in values else m.group(0), template)


def render_helper(s: ScriptSettings, version: str) -> str:
    """The installed helper with ``s`` filled in."""
    tags = "\n".join(f"{k} {v}" for k, v in s.tags)
    # The unit texts are inside "...": sh would expand $, ` and \ there (none of which a
    # unit of ours holds, the server being an address) and " would end the string.
    units = {"UNIT_TEXT": setup_unit(s), "HB_SERVICE_TEXT": heartbeat_unit(s), "HB_TIMER_TEXT": heartbeat_timer(s)}
    for name, text in units.items():
        assert not set(text) & set('"$`\\'), name
        units[name] = text.rstrip("\n")
    return _fill(HELPER, {"VERSION": version, "SERVER": s.server or "(none)", "Q_SERVER": _q(s.server),
                          "PORT": str(s.port), "LOCAL_PORT": str(LOCAL_PORT), "HEARTBEAT": str(s.heartbeat),
                          "Q_TAGS": _q(tags), "BIN": BIN, "UNIT": UNIT, "HB_UNIT": HB_UNIT, **units})


def render(s: ScriptSettings, version: str) -> str:
    """The script ``netconsole-script`` prints."""
    args = "" if s.remove and not s.server else f" --server {s.server}"
    if s.port != DEFAULT_PORT:
        args += f" --port {s.port}"
    args += "".join(f" --tag {_q(f'{k}={v}')}" for k, v in s.tags)
    if s.heartbeat:
        args += f" --heartbeat {s.heartbeat}s"
    if s.remove:
        args += " --remove"
    what = ("undoes everything a kpr-omprog netconsole script did." if s.remove else
            f"sets up netconsole towards {s.server}:{s.port}, at every boot too.")
    # a tag value is printed on a comment line: no newline can be in it (parse_tag)
    return _fill(WRAPPER, {"ARGS": args, "VERSION": version, "WHAT": what,
                           "ACTION": "remove" if s.remove else "install", "HELPER": render_helper(s, version)})
