#!/bin/bash
# Runs as root in a chroot of a debootstrapped Debian 12 (tests/test_install_nosystemd.py):
# no systemd running, no sudo, a private network namespace. What a new operator on a
# container host types, from the README. Lines for the test start with "KPR-CHECK".
set -u
export PIP_NO_INDEX=1 PIP_FIND_LINKS=/root/kpr/wheels  # no network: wheels from the host
ok() { echo "KPR-CHECK ok: $*"; }
fail() { echo "KPR-CHECK FAIL: $*"; exit 1; }
port_bound() { awk 'NR > 1 {print $2}' /proc/net/udp /proc/net/udp6 2>/dev/null | grep -qi ":$(printf %04X "$1")\$"; }
send() {  # a real lkdtm BUG capture to 127.0.0.1:514 from source address $1
  python3 -c "import sys; sys.path.insert(0, '/root/kpr'); from senders import capture, play; \
play(('127.0.0.1', 514), {'$1': capture('lkdtm-BUG_classic_oopspanic')}, speed=20)"
}
has_report() { kpr-omprog reports --json 2>/dev/null | grep -c '"kernel BUG in lkdtm_BUG"'; }

command -v sudo >/dev/null && fail "sudo is installed here"
[ -d /run/systemd/system ] && fail "systemd is running here"
# A container does not own the kernel's log: keep this rsyslogd off /proc/kmsg.
sed -i 's/^module(load="imklog"/# &/' /etc/rsyslog.conf
cd /root/kpr/src

./install.sh >/tmp/install.out 2>&1 || { sed 's/^/KPR-CHECK out: /' /tmp/install.out; fail "install.sh exited $?"; }
sed 's/^/KPR-CHECK out: /' /tmp/install.out
grep -q "checked: rsyslog listens on UDP 514 and hands datagrams to kpr-omprog" /tmp/install.out \
  || fail "install.sh did not check the running receiver"
port_bound 514 || fail "nothing listens on UDP 514 after install.sh"
ok "install.sh as root without sudo or systemd left a running, checked receiver"
id kpr-omprog >/dev/null 2>&1 && fail "rsyslog mode created a system user nothing uses"
ok "no system user in rsyslog mode"
command -v kpr-omprog >/dev/null || fail "kpr-omprog is not on PATH"
kpr-omprog reports >/tmp/reports.out 2>&1 || fail "kpr-omprog reports: $(cat /tmp/reports.out)"
ok "kpr-omprog reports, as the README writes it: $(head -1 /tmp/reports.out)"
send 127.0.0.2
for _ in $(seq 1 120); do [ "$(has_report)" -ge 1 ] && break; sleep 0.5; done
[ "$(has_report)" -ge 1 ] || fail "no report stored after a crash sent to 514: $(tail -5 /var/log/kpr-omprog/omprog.log)"
ok "a real crash through rsyslog is stored"
./install.sh >/tmp/install2.out 2>&1 || fail "a second install.sh run exited $?"
send 127.0.0.3
for _ in $(seq 1 120); do [ "$(has_report)" -ge 2 ] && break; sleep 0.5; done
[ "$(has_report)" -ge 2 ] || fail "no report after the second run restarted rsyslogd"
ok "second run: rsyslogd restarted, still receiving"

./install.sh --uninstall >/tmp/uninstall.out 2>&1 || fail "--uninstall exited $?"
grep -q "kept: /etc/kpr-omprog (config), /var/lib/kpr-omprog (stored reports), /var/log/kpr-omprog (logs)" \
  /tmp/uninstall.out || fail "--uninstall does not say what it kept: $(cat /tmp/uninstall.out)"
[ -e /usr/local/bin/kpr-omprog ] && fail "--uninstall left the link on PATH"
[ -e /opt/kpr-omprog ] && fail "--uninstall left the package"
for _ in $(seq 1 50); do port_bound 514 || break; sleep 0.1; done
port_bound 514 && fail "rsyslogd still listens on 514 after --uninstall"
pgrep -x rsyslogd >/dev/null || fail "rsyslogd is not running after --uninstall"
ok "--uninstall: rsyslogd restarted without the drop-in; kept config, reports and logs, and said so"

./install.sh --standalone >/tmp/standalone.out 2>&1 || fail "--standalone exited $?"
grep -q "NOT running: systemd is not running here" /tmp/standalone.out || fail "--standalone claimed a running service"
cmd=$(grep -A1 "Start it yourself" /tmp/standalone.out | tail -1)
[ -n "$cmd" ] || fail "--standalone did not say what to run"
$cmd >/tmp/udp.log 2>&1 &
for _ in $(seq 1 100); do port_bound 514 && break; sleep 0.1; done
port_bound 514 || fail "the command --standalone printed ($cmd) does not listen: $(tail -3 /tmp/udp.log)"
send 127.0.0.4
for _ in $(seq 1 120); do [ "$(has_report)" -ge 3 ] && break; sleep 0.5; done
[ "$(has_report)" -ge 3 ] || fail "no report from the standalone receiver: $(tail -3 /tmp/udp.log)"
ok "--standalone without systemd says exactly what to run, and it receives"
echo "KPR-CHECK-DONE"
