#!/usr/bin/env bash
# Install kpr-omprog on Debian/Ubuntu (as root): rsyslog drop-in (default) or a systemd
# unit for standalone UDP mode (--standalone). Idempotent; never overwrites a config.
# KPR_INSTALL_ROOT=DIR stages every path under DIR, as the current user, without a system
# user or service restart (the test suite installs that way and runs the result).
set -euo pipefail
usage() {
  cat <<'USAGE'
usage: ./install.sh [--standalone] [--port N] [--shards N] [--relayed-port N] [--with-bugsink [--bugsink-port N]]
                    [--dry-run] [--uninstall]
       ./install.sh --relay HOST:PORT,HOST:PORT,... [--port N] [--dry-run]

Installs kpr-omprog into /opt/kpr-omprog (a virtual environment on the system's python3),
links /usr/local/bin/kpr-omprog, writes /etc/kpr-omprog/config.toml (never overwritten)
and, by default, the rsyslog drop-in /etc/rsyslog.d/30-kpr-omprog.conf, then restarts
rsyslog (systemctl, or rsyslogd itself where systemd is not running) when the drop-in, the
package or the config changed (or starts it if it was not running), and checks that a
datagram sent to the port reaches kpr-omprog. /etc/kpr-omprog/installed records what was
installed (kpr-omprog status reads it). Installs elfutils (eu-addr2line, the
symbolizer) with apt when it is missing; without it kpr-omprog works, without source lines.

  --standalone  no rsyslog: a systemd unit runs `kpr-omprog udp` as user kpr-omprog
  --port N      UDP port to receive netconsole on (default 514)
  --shards N    N kpr-omprog processes behind rsyslog, a host always on the same one
                (hash64mod of its ip); state of shard K in /var/lib/kpr-omprog/shard-K.
                Default: half the cores, 1 to 8 (this machine: AUTO_SHARDS); a reinstall
                keeps the count the installed drop-in has
  --relayed-port N  also take a relay's frames on TCP port N (a receiver behind --relay)
  --relay LIST  this machine is a RELAY, not a receiver: forward netconsole to the
                receivers in LIST (HOST:PORT of their --relayed-port, comma-separated),
                each host always to the same one; installs no package
  --with-bugsink  also a local Bugsink (a Sentry-compatible web page for the crashes) on
                127.0.0.1:8000: /opt/kpr-omprog-bugsink, data in /var/lib/kpr-omprog-bugsink,
                user and service kpr-omprog-bugsink, an admin user (password printed once,
                kept in /etc/kpr-omprog/bugsink/admin) and a project whose DSN goes into the
                config if its dsn is empty (a DSN already set is never replaced)
  --bugsink-port N  Bugsink's TCP port on 127.0.0.1 (implies --with-bugsink; default 8000,
                a reinstall keeps the installed one)
  --dry-run     print every step, change nothing
  --uninstall   remove the package, the drop-in or unit, the link, and Bugsink's service and
                package; keep config, reports and Bugsink's data. rsyslogd and Bugsink are left
                as the install found them (stopped if it started them), and it says so

Run it as root (with sudo if you are not root). Debian and Ubuntu; the RHEL family is not
supported by this script (see README).
USAGE
}
HERE=$(cd "$(dirname "$0")" && pwd)
R=${KPR_INSTALL_ROOT:-}
PREFIX=$R/opt/kpr-omprog; CONF_DIR=$R/etc/kpr-omprog; STATE=$R/var/lib/kpr-omprog; LOGDIR=$R/var/log/kpr-omprog
DROPIN=$R/etc/rsyslog.d/30-kpr-omprog.conf; UNIT=$R/etc/systemd/system/kpr-omprog.service
SYSCTL=$R/etc/sysctl.d/60-kpr-omprog.conf; RCVBUF=8388608
RSYSLOG_CONF=$R/etc/rsyslog.conf; LINK=$R/usr/local/bin/kpr-omprog
RELAY_DROPIN=$R/etc/rsyslog.d/40-kpr-omprog-relay.conf
# --with-bugsink: Bugsink in its own venv, config, data, user and unit
BS_VERSION=2.6.1; BS_USER=kpr-omprog-bugsink; BS_PREFIX=$R/opt/kpr-omprog-bugsink; BS_CONF_DIR=$CONF_DIR/bugsink
BS_STATE=$R/var/lib/kpr-omprog-bugsink; BS_UNIT=$R/etc/systemd/system/kpr-omprog-bugsink.service
BS_RUN=$BS_PREFIX/bin/kpr-omprog-bugsink
# without systemd install.sh starts Bugsink itself, in a session of its own, and keeps its pid here
BS_PIDFILE=$R/run/kpr-omprog-bugsink.pid
# what this script installed (mode, drop-in, port, the config it started with, whether rsyslogd
# ran before the first install): `kpr-omprog status` reads it, --uninstall undoes by it
MARKER=$CONF_DIR/installed; PKG_STAMP=$PREFIX/.kpr-omprog-source
MODE=rsyslog; PORT=514; DRY=0; UNINSTALL=0; SHARDS=""; RELAYED_PORT=""; RELAY=""; BUGSINK=0; BS_PORT=""
# Half the cores: a shard at full rate keeps a core busy, and rsyslogd (its input and one
# worker thread per shard) and the host need the rest. Measured on 2 cores: 2 shards took
# 1.5x the lines of 1, 4 shards no more than 1 (README, "A fleet").
CORES=$(nproc 2>/dev/null || echo 1); AUTO_SHARDS=$(( CORES / 2 ))
[ "$AUTO_SHARDS" -ge 1 ] || AUTO_SHARDS=1; [ "$AUTO_SHARDS" -le 8 ] || AUTO_SHARDS=8
number() {  # number NAME VALUE MIN MAX
  case "$2" in ''|*[!0-9]*) echo "install.sh: $1 needs a number ($3-$4)" >&2; exit 2 ;; esac
  [ "$2" -ge "$3" ] && [ "$2" -le "$4" ] || { echo "install.sh: $1 $2: not $3-$4" >&2; exit 2; }
}
while [ $# -gt 0 ]; do
  case "$1" in
    --standalone) MODE=standalone ;;
    --port) PORT=${2:-}; shift
            case "$PORT" in ''|*[!0-9]*) echo "install.sh: --port needs a number (1-65535)" >&2; exit 2 ;; esac
            [ "$PORT" -ge 1 ] && [ "$PORT" -le 65535 ] || { echo "install.sh: --port $PORT: not 1-65535" >&2; exit 2; } ;;
    --shards) SHARDS=${2:-}; shift; number --shards "$SHARDS" 1 64 ;;
    --relayed-port) RELAYED_PORT=${2:-}; shift; number --relayed-port "$RELAYED_PORT" 1 65535 ;;
    --relay) RELAY=${2:-}; shift; MODE=relay
             [ -n "$RELAY" ] || { echo "install.sh: --relay needs HOST:PORT,HOST:PORT,..." >&2; exit 2; } ;;
    --with-bugsink) BUGSINK=1 ;;
    --bugsink-port) BS_PORT=${2:-}; shift; BUGSINK=1; number --bugsink-port "$BS_PORT" 1 65535 ;;
    --dry-run) DRY=1 ;;
    --uninstall) UNINSTALL=1 ;;
    -h|--help) usage | sed "s/AUTO_SHARDS/$AUTO_SHARDS of $CORES cores/"; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
  esac; shift
done
case "$MODE" in
  standalone) [ -z "$SHARDS$RELAYED_PORT" ] || { echo "install.sh: --shards and --relayed-port are for rsyslog mode (standalone: kpr-omprog udp)" >&2; exit 2; } ;;
  relay) [ -z "$SHARDS$RELAYED_PORT" ] || { echo "install.sh: --relay forwards only: --shards and --relayed-port belong on the receivers" >&2; exit 2; }
         [ "$BUGSINK" = 0 ] || { echo "install.sh: --with-bugsink belongs on a receiver, not on a relay" >&2; exit 2; } ;;
esac
run() { echo "+ $*"; [ "$DRY" = 1 ] || "$@"; }
[ "$(id -u)" = 0 ] || [ "$DRY" = 1 ] || [ -n "$R" ] || { echo "install.sh: run as root (sudo ./install.sh)" >&2; exit 1; }
SYSTEMD=0; [ -z "$R" ] && [ -d /run/systemd/system ] && SYSTEMD=1
# systemctl only on a real install with systemd running
restart() { if [ "$SYSTEMD" = 1 ]; then run systemctl "$@"; else echo "(skipped) systemctl $*"; fi; }
port_bound() {  # something bound to UDP port $1 (IPv4 or IPv6)
  awk 'NR > 1 {print $2}' /proc/net/udp /proc/net/udp6 2>/dev/null | grep -qi ":$(printf %04X "$1")\$"
}
# rsyslog picks up the drop-in only when restarted: systemctl, or rsyslogd itself where
# systemd is not running (a container; Debian 12's rsyslog has no init script).
restart_rsyslog() {  # restart_rsyslog WHY
  if [ -n "$R" ]; then echo "(skipped) restart rsyslog ($1): staged install"; return 0; fi
  echo "rsyslogd: restarting ($1)"
  if [ "$SYSTEMD" = 1 ]; then run systemctl restart rsyslog; return; fi
  stop_rsyslog
  run rsyslogd
}
rsyslogd_pid() {  # the running rsyslogd (its pid file, else the first one), nothing if none
  local pid=""
  [ -f /run/rsyslogd.pid ] && pid=$(cat /run/rsyslogd.pid 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then echo "$pid"; return; fi
  pgrep -x rsyslogd 2>/dev/null | head -1 || true
}
rsyslogd_running() {
  if [ "$SYSTEMD" = 1 ]; then systemctl is-active --quiet rsyslog; else [ -n "$(rsyslogd_pid)" ]; fi
}
stop_rsyslog() {  # without systemd: SIGTERM, then SIGKILL after 10 s
  if [ "$SYSTEMD" = 1 ]; then run systemctl stop rsyslog; return; fi
  local pid; pid=$(rsyslogd_pid)
  [ -n "$pid" ] || return 0
  run kill -TERM "$pid"
  [ "$DRY" = 1 ] || for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if [ "$DRY" != 1 ] && kill -0 "$pid" 2>/dev/null; then run kill -KILL "$pid"; sleep 0.5; fi
}
marker_get() { sed -n "s/^$1=//p" "$MARKER" 2>/dev/null | head -1 || true; }
file_sha() { if [ -f "$1" ]; then sha256sum < "$1" | cut -d' ' -f1; else echo none; fi; }
# rsyslogd's state before the first install, kept across reinstalls: --uninstall restores it
RS_BEFORE=$(marker_get rsyslogd_before)
if [ -z "$RS_BEFORE" ]; then
  if [ -n "$R" ]; then RS_BEFORE=staged; elif rsyslogd_running; then RS_BEFORE=running; else RS_BEFORE=stopped; fi
fi
write_marker() {  # write_marker MODE: what is installed now (never in a dry run)
  [ "$DRY" = 1 ] && return 0
  mkdir -p "$CONF_DIR"
  { echo "# written by install.sh: what it installed here. kpr-omprog status reads it; --uninstall undoes by it"
    echo "mode=$1"
    [ "$1" = standalone ] && echo "unit=$UNIT" || echo "dropin=$( [ "$1" = relay ] && echo "$RELAY_DROPIN" || echo "$DROPIN")"
    echo "port=$PORT"
    echo "config_sha=$(file_sha "$CONF_DIR/config.toml")"
    echo "rsyslogd_before=$RS_BEFORE"
  } > "$MARKER.tmp" && mv "$MARKER.tmp" "$MARKER"
}
# restart what receives only for a reason: "changed: the drop-in, the package" (or nothing)
changed() { local out="" x; for x in "$@"; do [ -n "$x" ] && out="${out:+$out, }$x"; done; echo "$out"; }
tcp_listening() {  # something listens on TCP port $1 (IPv4 or IPv6)
  awk 'NR > 1 && $4 == "0A" {print $2}' /proc/net/tcp /proc/net/tcp6 2>/dev/null | grep -qi ":$(printf %04X "$1")\$"
}
bs_pid() {  # the Bugsink install.sh started without systemd (its pid file), nothing if it is gone
  local pid; pid=$(cat "$BS_PIDFILE" 2>/dev/null || true)
  case "$pid" in ''|*[!0-9]*) return 0 ;; esac
  # still that process (a pid is reused): its command line names the package
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF "$BS_PREFIX/" && echo "$pid" || true
}
bs_procs() { pgrep -f "$BS_PREFIX/" 2>/dev/null | tr '\n' ' ' | sed 's/ $//' || true; }  # runuser, gunicorn, workers
bs_running() { [ -n "$(bs_pid)" ] || [ -n "$(bs_procs)" ]; }
bs_start() {  # in a session of its own (setsid: not a group leader here, so $! is the session's id)
  echo "+ setsid $BS_RUN serve >>$BS_STATE/gunicorn.log 2>&1 &   (pid in $BS_PIDFILE)"
  [ "$DRY" = 1 ] && return 0
  mkdir -p "$(dirname "$BS_PIDFILE")"
  setsid "$BS_RUN" serve >>"$BS_STATE/gunicorn.log" 2>&1 </dev/null &
  echo $! > "$BS_PIDFILE"
}
bs_stop() {  # the whole session install.sh started (runuser, gunicorn, its workers): SIGTERM, SIGKILL after 30 s
  local pid; pid=$(bs_pid)
  if [ -n "$pid" ]; then
    run kill -TERM -- "-$pid" || true
    [ "$DRY" = 1 ] || for _ in $(seq 1 300); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.1; done
    if [ "$DRY" != 1 ] && kill -0 -- "-$pid" 2>/dev/null; then run kill -KILL -- "-$pid" || true; fi
  fi
  [ "$DRY" = 1 ] || rm -f "$BS_PIDFILE"
}
if [ "$BUGSINK" = 1 ] && [ "$UNINSTALL" = 0 ]; then
  # Bugsink's port: given, or the installed one, or 8000; taken by anything but our Bugsink
  # on that same port, nothing is installed.
  old_bs_port=$(sed -n 's|^    "BASE_URL": "http://127.0.0.1:\([0-9]*\)".*|\1|p' "$BS_CONF_DIR/bugsink_conf.py" 2>/dev/null | head -1 || true)
  BS_PORT=${BS_PORT:-${old_bs_port:-8000}}
  if tcp_listening "$BS_PORT" && ! { [ "$BS_PORT" = "$old_bs_port" ] && bs_running; }; then
    echo "install.sh: TCP port $BS_PORT is taken by another program (ss -ltnp 'sport = :$BS_PORT' names it);" \
         "give Bugsink another one with --bugsink-port N" >&2
    exit 1
  fi
fi

if [ "$UNINSTALL" = 1 ]; then
  bs_was=0
  if [ -f "$BS_UNIT" ] || [ -d "$BS_PREFIX" ] || [ -f "$BS_PIDFILE" ]; then
    bs_was=1
    [ -f "$BS_UNIT" ] && { restart disable --now kpr-omprog-bugsink || true; run rm -f "$BS_UNIT"; restart daemon-reload || true; }
    if [ -n "$(bs_pid)" ]; then echo "Bugsink: stopping what install.sh started (session $(bs_pid))"; bs_stop; fi
    run rm -rf "$BS_PREFIX"
  fi
  [ -f "$UNIT" ] && { restart disable --now kpr-omprog || true; run rm -f "$UNIT"; restart daemon-reload || true; }
  [ -f "$SYSCTL" ] && run rm -f "$SYSCTL"  # the running value stays until reboot
  if [ -f "$DROPIN" ] || [ -f "$RELAY_DROPIN" ]; then
    run rm -f "$DROPIN" "$RELAY_DROPIN"
    # rsyslogd as the first install found it: stopped if it was not running then (it
    # started it), else running without the drop-in
    rs_before=$(marker_get rsyslogd_before)
    if [ -n "$R" ]; then echo "(skipped) rsyslog: staged install"
    elif [ "$rs_before" = stopped ]; then
      if rsyslogd_running; then
        stop_rsyslog || true
        echo "rsyslogd stopped: it was not running before ./install.sh started it"
      fi
    else
      restart_rsyslog "without the drop-in" || true
      echo "rsyslogd running without the drop-in ($( [ "$rs_before" = running ] && echo "as before the install" \
        || echo "it ran when install.sh first ran, or that was not recorded"))"
    fi
  fi
  [ -L "$LINK" ] && [ "$(readlink "$LINK")" = "$PREFIX/bin/kpr-omprog" ] && run rm -f "$LINK"
  run rm -rf "$PREFIX"
  [ -f "$MARKER" ] && run rm -f "$MARKER"
  left=$(pgrep -f "$PREFIX/bin/kpr-omprog" 2>/dev/null | tr '\n' ' ' || true)
  [ -z "$left" ] || echo "still running from the removed package (stop it: kill $left)"
  echo "kept: $CONF_DIR (config), $STATE (stored reports), $LOGDIR (logs)$(id kpr-omprog >/dev/null 2>&1 \
    && echo ' and the system user kpr-omprog'); remove them by hand if wanted"
  if [ "$bs_was" = 1 ]; then
    left=$(bs_procs)
    if [ "$DRY" != 1 ] && [ -n "$left" ]; then
      # say what runs, each process, not "removed"
      echo "Bugsink's package is removed but Bugsink still runs (install.sh did not start it): pid $left"
      ps -o pid=,args= -p "${left// /,}" 2>/dev/null | sed 's/^/  /' || true
      echo "  stop it: kill $left"
    else
      echo "Bugsink stopped and removed"
    fi
    echo "kept: $BS_STATE (Bugsink's events and users), $BS_CONF_DIR (its settings and admin" \
         "password)$(id "$BS_USER" >/dev/null 2>&1 && echo " and the system user $BS_USER"); remove them by hand if wanted"
    if grep -Eqs '^[[:space:]]*dsn[[:space:]]*=[[:space:]]*"http://[^"]*@127\.0\.0\.1:' "$CONF_DIR/config.toml"; then
      echo "the dsn in $CONF_DIR/config.toml still names the removed Bugsink: set your Sentry's there"
    fi
  fi
  [ "$DRY" = 1 ] && echo "dry run: nothing was changed"
  exit 0
fi

# drops module(load="MOD") from drop-in $2 if anything but our drop-ins loads MOD: rsyslog
# refuses to load a module twice and `rsyslogd -N1` fails
drop_loaded() {
  for f in "$RSYSLOG_CONF" "$R"/etc/rsyslog.d/*.conf; do
    [ -f "$f" ] && [ "$f" != "$DROPIN" ] && [ "$f" != "$RELAY_DROPIN" ] || continue
    if grep -Eqs "^[[:space:]]*(module\\(load=\"$1\"|\\\$ModLoad[[:space:]]+$1)" "$f"; then
      sed -i "s|^module(load=\"$1\")|# $1 is already loaded by the main config|" "$2"; return
    fi
  done
}

# The system's interpreter, not the first python3 on PATH (a pyenv one in root's home
# would leave a venv the service user cannot run).
apt_install() { run apt-get update -q; DEBIAN_FRONTEND=noninteractive run apt-get install -y -q "$@"; }
PY=/usr/bin/python3
[ -x "$PY" ] || apt_install python3
"$PY" -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
# eu-addr2line (elfutils), the symbolizer: the receiver runs without it, with no source lines
# in stacks, so a host that cannot get it (no network, no mirror) is told and goes on.
if [ "$MODE" != relay ] && ! command -v eu-addr2line >/dev/null; then
  if [ -n "$R" ]; then echo "(skipped) apt-get install elfutils: staged install"
  elif ! apt_install elfutils; then
    echo "install.sh: could not install elfutils (above): no source lines in stacks until you apt-get install elfutils" >&2
  fi
fi
if [ "$MODE" != standalone ] && ! command -v rsyslogd >/dev/null; then apt_install rsyslog; fi
check_rsyslog_conf() {  # rsyslogd -N1 on the whole configuration, naming the drop-in to look at
  if [ "$DRY" != 1 ] && [ -f "$RSYSLOG_CONF" ]; then
    rsyslogd -N1 -f "$RSYSLOG_CONF" >/dev/null || { echo "rsyslogd -N1 failed; $1 left for you to inspect" >&2; exit 1; }
  fi
}
if [ "$MODE" = relay ]; then
  # A relay runs no kpr-omprog: rsyslog alone forwards to the receivers.
  [ ! -f "$DROPIN" ] || { echo "install.sh: $DROPIN is installed: a machine is a receiver or a relay, not both (./install.sh --uninstall first)" >&2; exit 2; }
  tmp=$(mktemp)
  sed -e "s|port=\"514\" ruleset=\"kpr_omprog_relay\"|port=\"$PORT\" ruleset=\"kpr_omprog_relay\"|" \
      "$HERE/rsyslog.d/40-kpr-omprog-relay.conf" | "$PY" "$HERE/kpr_omprog/dropin.py" relay --receivers "$RELAY" > "$tmp" \
    || { rm -f "$tmp"; exit 2; }
  drop_loaded imudp "$tmp"
  relay_changed=""; cmp -s "$tmp" "$RELAY_DROPIN" || relay_changed="the drop-in"
  # written only when it differs: its time says whether rsyslogd has loaded it
  [ -z "$relay_changed" ] || run install -D -m 0644 "$tmp" "$RELAY_DROPIN"
  rm -f "$tmp"
  check_rsyslog_conf "$RELAY_DROPIN"
  if [ -z "$R" ] && ! rsyslogd_running; then restart_rsyslog "it was not running"
  elif [ -n "$relay_changed" ]; then restart_rsyslog "changed: $relay_changed"
  else echo "rsyslogd not restarted: the relay drop-in is unchanged"; fi
  if [ -z "$R" ] && [ "$DRY" != 1 ]; then
    for _ in $(seq 1 100); do port_bound "$PORT" && break; sleep 0.1; done
    port_bound "$PORT" || { echo "install.sh: rsyslog is not listening on UDP $PORT; see rsyslogd -N1 -f $RSYSLOG_CONF" >&2; exit 1; }
  fi
  [ "$DRY" = 1 ] && { echo "dry run: nothing was changed"; exit 0; }
  write_marker relay
  echo "kpr-omprog relay installed: UDP port $PORT -> $RELAY (TCP, each host always to the same receiver)"
  echo "  drop-in: $RELAY_DROPIN; on each receiver: ./install.sh --relayed-port PORT"
  exit 0
fi
RUNAS=kpr-omprog
if [ "$MODE" = rsyslog ]; then
  # omprog children run as rsyslogd's user (root on Debian, syslog on Ubuntu)
  RUNAS=$(sed -n 's/^\$PrivDropToUser[[:space:]]*//p' "$RSYSLOG_CONF" 2>/dev/null | head -1 || true); RUNAS=${RUNAS:-root}
fi
if [ -n "$R" ]; then RUNAS=$(id -un)
elif [ "$MODE" = standalone ]; then  # only the standalone service runs as its own user
  id kpr-omprog >/dev/null 2>&1 || run useradd --system --home-dir "$STATE" --shell /usr/sbin/nologin kpr-omprog
fi
# A venv an older install built on another interpreter (a pyenv one) is built again.
if [ -f "$PREFIX/pyvenv.cfg" ] && ! grep -qx "home = $(dirname "$PY")" "$PREFIX/pyvenv.cfg"; then run rm -rf "$PREFIX"; fi
[ -x "$PREFIX/bin/python" ] || run "$PY" -m venv "$PREFIX"
# The package changed when its source did (a reinstall from the same tree changes nothing,
# and then rsyslogd need not restart for it): the tree's digest, kept in the venv.
src_sha=$(cd "$HERE" && find kpr_omprog pyproject.toml -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 \
  | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
pkg_changed=""
if [ -x "$PREFIX/bin/kpr-omprog" ] && [ "$(cat "$PKG_STAMP" 2>/dev/null || true)" = "$src_sha" ]; then
  echo "package unchanged: $PREFIX"
else
  # [fast]: orjson for omprog lines; a platform without its wheel installs without it
  run "$PREFIX/bin/pip" install -q --disable-pip-version-check --upgrade "$HERE[fast]" \
    || run "$PREFIX/bin/pip" install -q --disable-pip-version-check --upgrade "$HERE"
  [ "$DRY" = 1 ] || echo "$src_sha" > "$PKG_STAMP"
  pkg_changed="the package"
fi
run install -d -m 0755 "$(dirname "$LINK")"
run ln -sfn "$PREFIX/bin/kpr-omprog" "$LINK"
run install -d -m 0755 "$CONF_DIR"
run install -d -m 0750 -o "$RUNAS" "$STATE" "$LOGDIR"
# the state may come from the other mode (root under rsyslog, kpr-omprog standalone)
[ -n "$R" ] || run chown -R "$RUNAS:" "$STATE" "$LOGDIR"
if [ ! -f "$CONF_DIR/config.toml" ]; then
  echo "+ write $CONF_DIR/config.toml"
  [ "$DRY" = 1 ] || cat > "$CONF_DIR/config.toml" <<TOML
# kpr-omprog configuration; see README. Set the DSN, then restart rsyslog (or kpr-omprog).
dsn = ""
state_dir = "$STATE"

[udp]
listen = ["0.0.0.0:$PORT", "[::]:$PORT"]
TOML
fi
bs_summary() { :; }
if [ "$BUGSINK" = 1 ]; then
  # A local Bugsink (tests/bugsink.py runs the same server for the test suite): its own venv,
  # user, settings, data and unit; its project's DSN goes into an empty dsn.
  BS_RUNAS=$BS_USER; BS_GROUP=$BS_USER
  if [ -n "$R" ]; then BS_RUNAS=$(id -un); BS_GROUP=$(id -gn)
  else id "$BS_USER" >/dev/null 2>&1 || run useradd --system --user-group --home-dir "$BS_STATE" --shell /usr/sbin/nologin "$BS_USER"
  fi
  bs_changed=0
  if [ -f "$BS_PREFIX/pyvenv.cfg" ] && ! grep -qx "home = $(dirname "$PY")" "$BS_PREFIX/pyvenv.cfg"; then run rm -rf "$BS_PREFIX"; fi
  [ -x "$BS_PREFIX/bin/python" ] || run "$PY" -m venv "$BS_PREFIX"
  if ! "$BS_PREFIX/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('bugsink') != '$BS_VERSION')" 2>/dev/null; then
    run "$BS_PREFIX/bin/pip" install -q --disable-pip-version-check "bugsink==$BS_VERSION"; bs_changed=1
  fi
  run install -d -m 0750 -o "$BS_RUNAS" -g "$BS_GROUP" "$BS_STATE"
  run install -d -m 0750 -g "$BS_GROUP" "$BS_CONF_DIR"
  if [ ! -s "$BS_CONF_DIR/secret_key" ]; then
    echo "+ write $BS_CONF_DIR/secret_key (Django's, readable by $BS_RUNAS)"
    [ "$DRY" = 1 ] || { (umask 077; "$PY" -c 'import secrets; print(secrets.token_urlsafe(50))' > "$BS_CONF_DIR/secret_key")
                        chgrp "$BS_GROUP" "$BS_CONF_DIR/secret_key"; chmod 0640 "$BS_CONF_DIR/secret_key"; }
  fi
  if [ -s "$BS_CONF_DIR/admin" ]; then bs_password=$(sed -n 's/^password: //p' "$BS_CONF_DIR/admin")
  else
    bs_password=$("$PY" -c 'import secrets; print(secrets.token_urlsafe(15))')
    echo "+ write $BS_CONF_DIR/admin (the admin user's password, root only)"
    [ "$DRY" = 1 ] || (umask 077; printf 'user: admin\npassword: %s\n' "$bs_password" > "$BS_CONF_DIR/admin")
  fi
  bs_put() {  # bs_put MODE FILE: stdin becomes FILE (group BS_GROUP) if it differs
    local tmp; tmp=$(mktemp); cat > "$tmp"
    if ! cmp -s "$tmp" "$2"; then run install -D -m "$1" -g "$BS_GROUP" "$tmp" "$2"; bs_changed=1; fi
    rm -f "$tmp"
  }
  bs_conf=$(mktemp)  # (no process substitution: a container may have no /dev/fd)
  "$PY" "$HERE/kpr_omprog/bugsink_setup.py" conf --port "$BS_PORT" --state "$BS_STATE" > "$bs_conf"
  bs_put 0640 "$BS_CONF_DIR/bugsink_conf.py" < "$bs_conf"; rm -f "$bs_conf"
  bs_put 0755 "$BS_RUN" <<LAUNCH
#!/bin/sh
# kpr-omprog's local Bugsink, written by install.sh --with-bugsink:
#   $BS_RUN serve           the web server on 127.0.0.1:$BS_PORT (the service runs this)
#   $BS_RUN manage ARGS...  Bugsink's management commands, e.g. manage changepassword admin
# Run as root, it runs as $BS_RUNAS.
if [ "\$(id -u)" = 0 ] && [ "$BS_RUNAS" != root ]; then exec runuser -u "$BS_RUNAS" -- "\$0" "\$@"; fi
export DJANGO_SETTINGS_MODULE=bugsink_conf PYTHONPATH="$BS_CONF_DIR" PYTHONDONTWRITEBYTECODE=1
cd "$BS_STATE" || exit 1
case "\$1" in
  serve) exec "$BS_PREFIX/bin/gunicorn" --bind "127.0.0.1:$BS_PORT" --workers 2 --timeout 120 --no-control-socket \\
           --access-logfile - bugsink.wsgi ;;
  manage) shift; exec "$BS_PREFIX/bin/bugsink-manage" "\$@" ;;
  *) echo "usage: \$0 serve | manage ARGS..." >&2; exit 2 ;;
esac
LAUNCH
  bs_put 0644 "$BS_UNIT" <<BSUNIT
[Unit]
Description=Bugsink for kpr-omprog: the crash reports on a web page, http://127.0.0.1:$BS_PORT
After=network.target
[Service]
User=$BS_USER
ExecStart=$BS_RUN serve
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ReadWritePaths=$BS_STATE
Restart=always
[Install]
WantedBy=multi-user.target
BSUNIT
  # migrations, the admin user (created once), the team and project; recorded in
  # $BS_CONF_DIR/provisioned, so a run that changed nothing here leaves the database alone
  # (Django's start is the slow part of a rerun)
  bs_dsn="(the project's DSN)"; bs_admin=exists
  if [ "$DRY" = 1 ]; then echo "+ provision Bugsink as $BS_RUNAS: migrations, admin user, project \"kernel\""
  elif [ "$bs_changed" = 0 ] && [ -s "$BS_STATE/db.sqlite3" ] && grep -q '^DSN=' "$BS_CONF_DIR/provisioned" 2>/dev/null; then
    bs_dsn=$(sed -n 's/^DSN=//p' "$BS_CONF_DIR/provisioned" | head -1)
  else
    bs_out=$(cd "$BS_STATE" && if [ "$BS_RUNAS" = "$(id -un)" ]; then set --; else set -- runuser -u "$BS_RUNAS" --; fi \
      && "$@" env DJANGO_SETTINGS_MODULE=bugsink_conf PYTHONPATH="$BS_CONF_DIR" PYTHONDONTWRITEBYTECODE=1 \
           KPR_BUGSINK_ADMIN_PASSWORD="$bs_password" "$BS_PREFIX/bin/python" - provision < "$HERE/kpr_omprog/bugsink_setup.py") \
      || { echo "install.sh: setting up Bugsink's database in $BS_STATE failed (above)" >&2; exit 1; }
    bs_dsn=$(sed -n 's/^DSN=//p' <<<"$bs_out"); bs_admin=$(sed -n 's/^ADMIN=//p' <<<"$bs_out")
    [ -n "$bs_dsn" ] || { echo "install.sh: Bugsink's provisioning printed no DSN: $bs_out" >&2; exit 1; }
    (umask 077; echo "DSN=$bs_dsn" > "$BS_CONF_DIR/provisioned")
  fi
  bs_state=""
  if [ "$SYSTEMD" = 1 ]; then
    run systemctl daemon-reload
    run systemctl enable --quiet kpr-omprog-bugsink
    # a second run with nothing changed leaves the running server alone
    if [ "$bs_changed" = 1 ]; then run systemctl restart kpr-omprog-bugsink; else run systemctl start kpr-omprog-bugsink; fi
  elif [ -z "$R" ]; then
    # No systemd: install.sh starts Bugsink itself and keeps its pid file, so a rerun finds
    # it running (and restarts it only when its package or settings changed) and
    # --uninstall stops exactly what it started.
    if [ -n "$(bs_pid)" ] && [ "$bs_changed" = 1 ]; then echo "Bugsink: restarting (its package or settings changed)"; bs_stop; fi
    if [ -n "$(bs_pid)" ]; then bs_state="running, pid $(bs_pid), left as it was (nothing of it changed)"
    elif [ -n "$(bs_procs)" ]; then
      bs_state="running, pid $(bs_procs), started by hand, not by install.sh: left alone (and --uninstall leaves it too)"
    else bs_start; bs_state="started by install.sh, session $(cat "$BS_PIDFILE" 2>/dev/null || echo '(dry run)')"
    fi
  fi
  if [ -z "$R" ] && [ "$DRY" != 1 ]; then
    bs_look=$( [ "$SYSTEMD" = 1 ] && echo "journalctl -u kpr-omprog-bugsink" || echo "$BS_STATE/gunicorn.log")
    "$PY" - "http://127.0.0.1:$BS_PORT/health/ready" <<'PYEOF' || { echo "install.sh: Bugsink does not answer on 127.0.0.1:$BS_PORT; see $bs_look" >&2; exit 1; }
import sys, time, urllib.request
end = time.monotonic() + 180  # a slow machine imports Django slowly
while True:
    try:
        urllib.request.urlopen(sys.argv[1], timeout=5).close()
        break
    except OSError:
        if time.monotonic() > end:
            sys.exit(1)
        time.sleep(0.2)
PYEOF
    echo "checked: Bugsink answers on http://127.0.0.1:$BS_PORT"
  fi
  if [ "$DRY" = 1 ]; then echo "+ set the dsn in $CONF_DIR/config.toml to the project's, if it is empty"; bs_dsn_was=dry
  else
    bs_dsn_was=$("$PREFIX/bin/python" "$HERE/kpr_omprog/bugsink_setup.py" set-dsn "$CONF_DIR/config.toml" "$bs_dsn") || exit 1
  fi
  bs_summary() {
    echo "Bugsink, the crash reports on a web page: http://127.0.0.1:$BS_PORT on this machine, user admin"
    if [ "$bs_admin" = created ]; then echo "  password: $bs_password   (shown once; kept in $BS_CONF_DIR/admin, root only)"
    else echo "  password: in $BS_CONF_DIR/admin (root only)"; fi
    echo "  from your workstation: ssh -L $BS_PORT:127.0.0.1:$BS_PORT $(hostname 2>/dev/null || echo THIS-HOST), then open http://localhost:$BS_PORT"
    case "$bs_dsn_was" in
      set) echo "  kpr-omprog's dsn: set to Bugsink's project \"kernel\" ($bs_dsn)" ;;
      same) echo "  kpr-omprog's dsn: already Bugsink's project \"kernel\"" ;;
      moved) echo "  kpr-omprog's dsn: Bugsink's project \"kernel\", now on port $BS_PORT" ;;
      kept) echo "  kpr-omprog's dsn: KEPT, it was set already (install.sh never replaces a DSN);"
            echo "    to send to Bugsink instead, set dsn = \"$bs_dsn\" in $CONF_DIR/config.toml" ;;
    esac
    echo "  later, to a real Sentry: set dsn = \"https://KEY@sentry.example/1\" in $CONF_DIR/config.toml, then"
    if [ "$SYSTEMD" = 1 ]; then
      echo "    ./install.sh again (it restarts the receiver); Bugsink alone stops with: systemctl disable --now kpr-omprog-bugsink"
    else
      echo "    ./install.sh again (it restarts the receiver); Bugsink alone stops with: kill -TERM -- -\$(cat $BS_PIDFILE)"
    fi
    if [ -n "$bs_state" ]; then
      echo "Bugsink is $bs_state (systemd is not running here: no service; after a reboot, ./install.sh --with-bugsink starts it again)"
    fi
  }
fi
if [ "$MODE" = standalone ]; then
  # The service is unprivileged, so the kernel refuses it SO_RCVBUFFORCE: raise the cap on
  # receive buffers to udp.rcvbuf (never lower it), or bursts are dropped in the kernel.
  cur=$(cat /proc/sys/net/core/rmem_max 2>/dev/null || echo "$RCVBUF")
  if [ "$cur" -lt "$RCVBUF" ]; then
    echo "+ write $SYSCTL (net.core.rmem_max = $RCVBUF, was $cur)"
    [ "$DRY" = 1 ] || { mkdir -p "$(dirname "$SYSCTL")"; echo "net.core.rmem_max = $RCVBUF" > "$SYSCTL"; }
    [ -n "$R" ] || run sysctl -q -w net.core.rmem_max=$RCVBUF
  fi
  unit_tmp=$(mktemp)
  cat > "$unit_tmp" <<UNITEOF
[Unit]
Description=kpr-omprog: netconsole crash reports to Sentry (standalone UDP)
After=network-online.target
[Service]
User=kpr-omprog
ExecStart=$PREFIX/bin/kpr-omprog udp --config $CONF_DIR/config.toml
AmbientCapabilities=CAP_NET_BIND_SERVICE
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ReadWritePaths=$STATE
Restart=always
[Install]
WantedBy=multi-user.target
UNITEOF
  unit_changed=""
  if ! cmp -s "$unit_tmp" "$UNIT"; then
    unit_changed="the unit"; echo "+ write $UNIT"
    [ "$DRY" = 1 ] || { mkdir -p "$(dirname "$UNIT")"; cp "$unit_tmp" "$UNIT"; chmod 0644 "$UNIT"; }
  fi
  rm -f "$unit_tmp"
  why=$(changed "$unit_changed" "$pkg_changed" "$( [ "$(marker_get config_sha)" = "$(file_sha "$CONF_DIR/config.toml")" ] || echo "the config")")
  restart daemon-reload; restart enable kpr-omprog
  # an upgrade, a new unit or config runs anew; a rerun that changed nothing leaves it running
  if [ -n "$why" ]; then echo "kpr-omprog: restarting (changed: $why)"; restart restart kpr-omprog
  else echo "kpr-omprog not restarted: the unit, the package and the config are unchanged"; restart start kpr-omprog; fi
  write_marker standalone
  if [ "$SYSTEMD" != 1 ] && [ -z "$R" ] && [ "$DRY" != 1 ]; then
    cat <<NOSYSTEMD
kpr-omprog installed (standalone mode) but NOT running: systemd is not running here.
  Start it yourself, as root (the port in $CONF_DIR/config.toml is below 1024), e.g.:
  $PREFIX/bin/kpr-omprog udp --config $CONF_DIR/config.toml
NOSYSTEMD
    bs_summary
    exit 0
  fi
else
  tmp=$(mktemp)
  sed -e "s|port=\"514\"|port=\"$PORT\"|" \
      -e "s|binary=\"/opt/kpr-omprog/bin/kpr-omprog omprog --omprog\"|binary=\"$PREFIX/bin/kpr-omprog omprog --omprog --config $CONF_DIR/config.toml\"|" \
      -e "s|output=\"/var/log/kpr-omprog/|output=\"$LOGDIR/|" "$HERE/rsyslog.d/30-kpr-omprog.conf" > "$tmp"
  if [ -z "$SHARDS" ]; then  # a reinstall keeps the installed layout (shard K's state is in shard-K)
    SHARDS=$AUTO_SHARDS
    if [ -f "$DROPIN" ]; then
      SHARDS=$(grep -c -- '--omprog --shard ' "$DROPIN" || true); [ "$SHARDS" -ge 1 ] || SHARDS=1
    fi
  fi
  if [ -z "$RELAYED_PORT" ] && [ -f "$DROPIN" ]; then
    RELAYED_PORT=$(sed -n 's/^input(type="imtcp" port="\([0-9]*\)" ruleset="kpr_omprog_relayed".*/\1/p' "$DROPIN" | head -1)
  fi
  if [ "$SHARDS" != 1 ] || [ -n "$RELAYED_PORT" ]; then
    "$PY" "$HERE/kpr_omprog/dropin.py" receiver --shards "$SHARDS" ${RELAYED_PORT:+--relayed-port "$RELAYED_PORT"} \
      < "$tmp" > "$tmp.fleet" || { rm -f "$tmp" "$tmp.fleet"; exit 2; }
    mv "$tmp.fleet" "$tmp"
  fi
  drop_loaded imudp "$tmp"; drop_loaded imtcp "$tmp"; drop_loaded fmhash "$tmp"
  dropin_changed=""; cmp -s "$tmp" "$DROPIN" || dropin_changed="the drop-in"
  # written only when it differs: its time says whether rsyslogd has loaded it (kpr-omprog status)
  [ -z "$dropin_changed" ] || run install -D -m 0644 "$tmp" "$DROPIN"
  rm -f "$tmp"
  echo "rsyslog drop-in: $SHARDS shard(s)${RELAYED_PORT:+, relayed frames on TCP $RELAYED_PORT}"
  check_rsyslog_conf "$DROPIN"
  # rsyslogd restarts (its logging pauses, its omprog children restart) only for a reason
  conf_changed=""; [ "$(marker_get config_sha)" = "$(file_sha "$CONF_DIR/config.toml")" ] || conf_changed="the config"
  why=$(changed "$dropin_changed" "$pkg_changed" "$conf_changed")
  restarted=1
  if [ -z "$R" ] && ! rsyslogd_running; then restart_rsyslog "it was not running"
  elif [ -n "$why" ]; then restart_rsyslog "changed: $why"
  else restarted=0; echo "rsyslogd not restarted: the drop-in, the package and the config are unchanged"; fi
  if [ -z "$R" ] && [ "$DRY" != 1 ]; then
    # Check it, as an operator would: rsyslog listens, and a datagram reaches kpr-omprog
    # (rsyslog starts the program at the first message): a new kpr-omprog process that
    # is still running a second later (one that fails at start exits at once).
    for _ in $(seq 1 100); do port_bound "$PORT" && break; sleep 0.1; done
    port_bound "$PORT" || { echo "install.sh: rsyslog is not listening on UDP $PORT; see rsyslogd -N1 -f $RSYSLOG_CONF" >&2; exit 1; }
    programs() { pgrep -f "$PREFIX/bin/kpr-omprog omprog" 2>/dev/null | sort || true; }
    # after a restart, a new program; without one, the running one will do
    before=" "; [ "$restarted" = 0 ] || before=" $(programs | tr '\n' ' ')"
    ok=0
    for _ in $(seq 1 30); do
      "$PY" -c "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'kpr-omprog install check\n', ('127.0.0.1', $PORT))"
      sleep 0.5
      for pid in $(programs); do
        case "$before" in *" $pid "*) continue ;; esac
        sleep 1; kill -0 "$pid" 2>/dev/null && { ok=1; break; }
      done
      [ "$ok" = 1 ] && break
    done
    [ "$ok" = 1 ] || { echo "install.sh: rsyslog listens on UDP $PORT but kpr-omprog did not start; see $LOGDIR/omprog.log" >&2; exit 1; }
    echo "checked: rsyslog listens on UDP $PORT and hands datagrams to kpr-omprog"
  fi
  write_marker rsyslog
fi
[ "$DRY" = 1 ] && { echo "dry run: nothing was changed"; exit 0; }
if [ "$BUGSINK" = 1 ]; then
  cat <<DONE
kpr-omprog installed ($MODE mode, UDP port $PORT$( [ "$MODE" = rsyslog ] && echo ", $SHARDS shard(s)${RELAYED_PORT:+, relayed TCP $RELAYED_PORT}")).
  package:  $PREFIX     config: $CONF_DIR/config.toml     state: $STATE     logs: $LOGDIR
  Bugsink:  $BS_PREFIX     settings: $BS_CONF_DIR     data: $BS_STATE
DONE
  bs_summary
  exit 0
fi
cat <<DONE
kpr-omprog installed ($MODE mode, UDP port $PORT$( [ "$MODE" = rsyslog ] && echo ", $SHARDS shard(s)${RELAYED_PORT:+, relayed TCP $RELAYED_PORT}")).
  package:  $PREFIX     config: $CONF_DIR/config.toml     state: $STATE     logs: $LOGDIR
  Set the Sentry DSN:  dsn = "https://KEY@sentry.example/1" in $CONF_DIR/config.toml, then restart
  $( [ "$MODE" = standalone ] && echo "kpr-omprog (systemctl restart kpr-omprog)" || echo "rsyslog (systemctl restart rsyslog, or ./install.sh again)" ).
  Until then reports are kept locally; list them with:  kpr-omprog reports
DONE
