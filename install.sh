#!/usr/bin/env bash
# Install kpr-omprog on Debian/Ubuntu (as root): rsyslog drop-in (default) or a systemd
# unit for standalone UDP mode (--standalone). Idempotent; never overwrites a config.
# RHEL family: same steps with dnf (rsyslog, python3); see README.
#   ./install.sh [--standalone] [--port N] [--dry-run] [--uninstall]
# KPR_INSTALL_ROOT=DIR stages every path under DIR, as the current user, without a system
# user or service restart (the test suite installs that way and runs the result).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
R=${KPR_INSTALL_ROOT:-}
PREFIX=$R/opt/kpr-omprog; CONF_DIR=$R/etc/kpr-omprog; STATE=$R/var/lib/kpr-omprog; LOGDIR=$R/var/log/kpr-omprog
DROPIN=$R/etc/rsyslog.d/30-kpr-omprog.conf; UNIT=$R/etc/systemd/system/kpr-omprog.service
SYSCTL=$R/etc/sysctl.d/60-kpr-omprog.conf; RCVBUF=8388608
RSYSLOG_CONF=$R/etc/rsyslog.conf
MODE=rsyslog; PORT=514; DRY=0; UNINSTALL=0
while [ $# -gt 0 ]; do
  case "$1" in
    --standalone) MODE=standalone ;;
    --port) PORT=$2; shift ;;
    --dry-run) DRY=1 ;;
    --uninstall) UNINSTALL=1 ;;
    -h|--help) sed -n 2,6p "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
  esac; shift
done
run() { echo "+ $*"; [ "$DRY" = 1 ] || "$@"; }
[ "$(id -u)" = 0 ] || [ "$DRY" = 1 ] || [ -n "$R" ] || { echo "install.sh: run as root" >&2; exit 1; }
# systemctl only on a real install with systemd running
restart() { if [ -z "$R" ] && [ -d /run/systemd/system ]; then run systemctl "$@"; else echo "(skipped) systemctl $*"; fi; }

if [ "$UNINSTALL" = 1 ]; then
  [ -f "$UNIT" ] && { restart disable --now kpr-omprog || true; run rm -f "$UNIT"; }
  [ -f "$SYSCTL" ] && run rm -f "$SYSCTL"  # the running value stays until reboot
  [ -f "$DROPIN" ] && { run rm -f "$DROPIN"; restart restart rsyslog || true; }
  run rm -rf "$PREFIX"
  echo "kept: $CONF_DIR and $STATE (stored reports); remove them by hand if wanted"; exit 0
fi

command -v python3 >/dev/null || run apt-get install -y python3
python3 -c 'import venv' 2>/dev/null || run apt-get install -y python3-venv
if [ "$MODE" = rsyslog ] && ! command -v rsyslogd >/dev/null; then run apt-get update -q; run apt-get install -y rsyslog; fi
RUNAS=kpr-omprog
if [ "$MODE" = rsyslog ]; then
  # omprog children run as rsyslogd's user (root on Debian, syslog on Ubuntu)
  RUNAS=$(sed -n 's/^\$PrivDropToUser[[:space:]]*//p' "$RSYSLOG_CONF" 2>/dev/null | head -1); RUNAS=${RUNAS:-root}
fi
if [ -n "$R" ]; then RUNAS=$(id -un)
else id kpr-omprog >/dev/null 2>&1 || run useradd --system --home-dir "$STATE" --shell /usr/sbin/nologin kpr-omprog
fi
[ -x "$PREFIX/bin/python" ] || run python3 -m venv "$PREFIX"
run "$PREFIX/bin/pip" install -q --disable-pip-version-check --upgrade "$HERE"
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
if [ "$MODE" = standalone ]; then
  # The service is unprivileged, so the kernel refuses it SO_RCVBUFFORCE: raise the cap on
  # receive buffers to udp.rcvbuf (never lower it), or bursts are dropped in the kernel.
  cur=$(cat /proc/sys/net/core/rmem_max 2>/dev/null || echo "$RCVBUF")
  if [ "$cur" -lt "$RCVBUF" ]; then
    echo "+ write $SYSCTL (net.core.rmem_max = $RCVBUF, was $cur)"
    [ "$DRY" = 1 ] || { mkdir -p "$(dirname "$SYSCTL")"; echo "net.core.rmem_max = $RCVBUF" > "$SYSCTL"; }
    [ -n "$R" ] || run sysctl -q -w net.core.rmem_max=$RCVBUF
  fi
  echo "+ write $UNIT"
  [ "$DRY" = 1 ] || cat > "$UNIT" <<UNITEOF
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
  restart daemon-reload; restart enable --now kpr-omprog
else
  tmp=$(mktemp)
  sed -e "s|port=\"514\"|port=\"$PORT\"|" \
      -e "s|binary=\"/opt/kpr-omprog/bin/kpr-omprog omprog --omprog\"|binary=\"$PREFIX/bin/kpr-omprog omprog --omprog --config $CONF_DIR/config.toml\"|" \
      -e "s|output=\"/var/log/kpr-omprog/|output=\"$LOGDIR/|" "$HERE/rsyslog.d/30-kpr-omprog.conf" > "$tmp"
  if grep -Eqs '^[[:space:]]*(module\(load="imudp"|\$ModLoad[[:space:]]+imudp)' "$RSYSLOG_CONF" "$R"/etc/rsyslog.d/*.conf 2>/dev/null \
     && ! grep -qs 'kpr_omprog' "$R"/etc/rsyslog.d/*.conf; then
    sed -i 's|^module(load="imudp")|# imudp is already loaded by the main config|' "$tmp"
  fi
  run install -D -m 0644 "$tmp" "$DROPIN"; rm -f "$tmp"
  if [ "$DRY" != 1 ] && [ -f "$RSYSLOG_CONF" ]; then
    rsyslogd -N1 -f "$RSYSLOG_CONF" >/dev/null || { echo "rsyslogd -N1 failed; $DROPIN left for you to inspect" >&2; exit 1; }
  fi
  restart restart rsyslog
fi
cat <<DONE
kpr-omprog installed ($MODE mode, UDP port $PORT).
  package:  $PREFIX     config: $CONF_DIR/config.toml     state: $STATE     logs: $LOGDIR
  Set the Sentry DSN:  dsn = "https://KEY@sentry.example/1" in $CONF_DIR/config.toml, then restart
  $( [ "$MODE" = standalone ] && echo "kpr-omprog (systemctl restart kpr-omprog)" || echo "rsyslog (systemctl restart rsyslog)" ).
  Until then reports are kept locally: $PREFIX/bin/kpr-omprog reports --config $CONF_DIR/config.toml
DONE
