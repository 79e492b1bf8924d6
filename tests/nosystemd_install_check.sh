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
grep -q "rsyslogd: restarting (it was not running)" /tmp/install.out || fail "install.sh did not say it started rsyslogd"
kpr-omprog status >/tmp/status.out 2>&1 || fail "kpr-omprog status after install.sh: $(cat /tmp/status.out)"
grep -q "^receiving rsyslog: rsyslogd (pid $(cat /run/rsyslogd.pid)) listens on UDP 514 with /etc/rsyslog.d/30-kpr-omprog.conf" \
  /tmp/status.out || fail "status does not check rsyslogd: $(cat /tmp/status.out)"
ok "install.sh as root without sudo or systemd left a running, checked receiver; status checks rsyslogd"
id kpr-omprog >/dev/null 2>&1 && fail "rsyslog mode created a system user nothing uses"
ok "no system user in rsyslog mode"
command -v kpr-omprog >/dev/null || fail "kpr-omprog is not on PATH"
kpr-omprog reports >/tmp/reports.out 2>&1 || fail "kpr-omprog reports: $(cat /tmp/reports.out)"
ok "kpr-omprog reports, as the README writes it: $(head -1 /tmp/reports.out)"
# The README's smoke test, pasted as written (tests/test_install_nosystemd.py copies it out):
# it prints the report when it is stored; Ctrl-C ends it.
setsid bash /root/kpr/smoke.sh >/tmp/smoke.out 2>&1 &
smoke=$!
for _ in $(seq 1 120); do grep -q "kernel BUG in lkdtm_BUG" /tmp/smoke.out && break; sleep 0.5; done
kill -INT -- "-$smoke" 2>/dev/null
for _ in $(seq 1 100); do kill -0 "$smoke" 2>/dev/null || break; sleep 0.1; done
kill -0 "$smoke" 2>/dev/null && fail "the README's smoke test did not end at Ctrl-C: $(cat /tmp/smoke.out)"
grep -q "kernel BUG in lkdtm_BUG" /tmp/smoke.out || fail "the README's smoke test printed no report: $(cat /tmp/smoke.out)"
grep -q Traceback /tmp/smoke.out && fail "the README's smoke test: $(cat /tmp/smoke.out)"
[ "$(has_report)" -ge 1 ] || fail "no report stored after a crash sent to 514: $(tail -5 /var/log/kpr-omprog/omprog.log)"
ok "the README's smoke test, as written: a real crash through rsyslog, printed once stored"
rs_pid=$(cat /run/rsyslogd.pid)
./install.sh >/tmp/install2.out 2>&1 || fail "a second install.sh run exited $?"
grep -q "rsyslogd not restarted: the drop-in, the package and the config are unchanged" /tmp/install2.out \
  || fail "a second run that changed nothing: $(cat /tmp/install2.out)"
[ "$(cat /run/rsyslogd.pid)" = "$rs_pid" ] || fail "a second run that changed nothing restarted rsyslogd"
send 127.0.0.3
for _ in $(seq 1 120); do [ "$(has_report)" -ge 2 ] && break; sleep 0.5; done
[ "$(has_report)" -ge 2 ] || fail "no report after the second run"
ok "second run, nothing changed: rsyslogd not restarted (same pid), still receiving"

# Bugsink without systemd: install.sh starts it with a pid file, a rerun finds it running
./install.sh --with-bugsink >/tmp/bugsink.out 2>&1 || { sed 's/^/KPR-CHECK out: /' /tmp/bugsink.out; fail "--with-bugsink exited $?"; }
sed 's/^/KPR-CHECK out: /' /tmp/bugsink.out
grep -q "checked: Bugsink answers on http://127.0.0.1:8000" /tmp/bugsink.out || fail "--with-bugsink did not check Bugsink"
grep -q "Bugsink is started by install.sh, session $(cat /run/kpr-omprog-bugsink.pid)" /tmp/bugsink.out \
  || fail "--with-bugsink did not say it started Bugsink (pid file: $(cat /run/kpr-omprog-bugsink.pid 2>&1))"
grep -q "rsyslogd: restarting (changed: the config)" /tmp/bugsink.out || fail "the dsn set, rsyslogd was not restarted"
grep -Eq "pkill|NOT running" /tmp/bugsink.out && fail "--with-bugsink: $(grep -E 'pkill|NOT running' /tmp/bugsink.out)"
bs_session=$(cat /run/kpr-omprog-bugsink.pid)
./install.sh --with-bugsink >/tmp/bugsink2.out 2>&1 || fail "a second --with-bugsink exited $?: $(cat /tmp/bugsink2.out)"
grep -q "Bugsink is running, pid $bs_session, left as it was" /tmp/bugsink2.out \
  || fail "a second --with-bugsink did not recognise the running Bugsink: $(cat /tmp/bugsink2.out)"
grep -Eq "pkill|NOT running" /tmp/bugsink2.out && fail "a second --with-bugsink: $(cat /tmp/bugsink2.out)"
ok "--with-bugsink without systemd: started with a pid file, a rerun recognises it, no pkill advice"

./install.sh --uninstall >/tmp/uninstall.out 2>&1 || fail "--uninstall exited $?"
grep -q "kept: /etc/kpr-omprog (config), /var/lib/kpr-omprog (stored reports), /var/log/kpr-omprog (logs)" \
  /tmp/uninstall.out || fail "--uninstall does not say what it kept: $(cat /tmp/uninstall.out)"
[ -e /usr/local/bin/kpr-omprog ] && fail "--uninstall left the link on PATH"
[ -e /opt/kpr-omprog ] && fail "--uninstall left the package"
for _ in $(seq 1 50); do port_bound 514 || break; sleep 0.1; done
port_bound 514 && fail "rsyslogd still listens on 514 after --uninstall"
# rsyslogd was not running before the first install.sh: it is not left running
pgrep -x rsyslogd >/dev/null && fail "rsyslogd left running after --uninstall (it was not running before)"
grep -q "rsyslogd stopped: it was not running before ./install.sh started it" /tmp/uninstall.out \
  || fail "--uninstall does not say what it did to rsyslogd: $(cat /tmp/uninstall.out)"
ok "--uninstall: rsyslogd stopped as the install found it; kept config, reports and logs, and said so"
pgrep -f /opt/kpr-omprog-bugsink/ >/dev/null && fail "Bugsink still runs after --uninstall: $(pgrep -af /opt/kpr-omprog-bugsink/)"
[ -e /run/kpr-omprog-bugsink.pid ] && fail "--uninstall left Bugsink's pid file"
grep -q "^Bugsink stopped and removed" /tmp/uninstall.out || fail "--uninstall about Bugsink: $(cat /tmp/uninstall.out)"
ok "--uninstall stopped the Bugsink it started (its whole session) and said so"

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
