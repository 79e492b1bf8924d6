#!/bin/bash
# Runs inside a Debian 12 guest booted with systemd (tests/test_install_systemd.py), as the
# operator would: install.sh as root with systemd running, then checks what it left. Every
# line for the host starts with "KPR-GUEST"; the last one is "KPR-GUEST-DONE <status>". They go
# to the second serial port: the kernel's console, the first, would cut into them.
exec >/dev/ttyS1 2>&1
export PIP_NO_INDEX=1 PIP_FIND_LINKS=/root/kpr/wheels  # the guest has no network: wheels from the host
SRC=/root/kpr/src CONF=/etc/kpr-omprog/config.toml EXE=/opt/kpr-omprog/bin/kpr-omprog
ok() { echo "KPR-GUEST ok: $* (at ${SECONDS}s)"; }
fail() {
  echo "KPR-GUEST FAIL: $*"
  journalctl -b --no-pager -n 60 -u rsyslog -u kpr-omprog 2>&1 | sed 's/^/KPR-GUEST journal: /'
  echo "KPR-GUEST-DONE 1"; systemctl poweroff --force --force; exit 1
}
reports() { "$EXE" reports --json --config "$CONF" 2>/dev/null; }
wait_reports() {  # until the store lists $1 reports
  for _ in $(seq 1 180); do [ "$(reports | grep -c '"title"')" -ge "$1" ] && return 0; sleep 1; done; return 1
}
send() {  # a real lkdtm BUG capture to 127.0.0.1:$1 from source address $2
  python3 -c "import sys; sys.path.insert(0, '/root/kpr'); from senders import capture, play; \
play(('127.0.0.1', $1), {'$2': capture('lkdtm-BUG_classic_oopspanic')}, speed=20)"
}
main_pid_user() { awk '/^Uid:/ {print $2}' "/proc/$(systemctl show -p MainPID --value "$1")/status"; }
tcp_listen() {  # the local addresses listening on TCP port $1, as /proc/net/tcp{,6} writes them
  awk -v p=":$(printf %04X "$1")" 'NR > 1 && $4 == "0A" && toupper(substr($2, length($2) - 4)) == p {print $2}' \
    /proc/net/tcp /proc/net/tcp6 2>/dev/null
}
bugsink_issues() {  # the first line of each issue's Markdown in Bugsink's project 1, read over HTTP as
  # an operator does: logged in with the admin password install.sh kept, the project's page, each issue's
  python3 - "$(sed -n 's/^password: //p' /etc/kpr-omprog/bugsink/admin)" <<'PYEOF'
import http.cookiejar, re, sys, urllib.parse, urllib.request
base = "http://127.0.0.1:8000"
jar = http.cookiejar.CookieJar()
web = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
login = base + "/accounts/login/"
page = web.open(login, timeout=60).read().decode()
token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
form = urllib.parse.urlencode({"csrfmiddlewaretoken": token, "username": "admin", "password": sys.argv[1]})
web.open(urllib.request.Request(login, data=form.encode(), headers={"Referer": login}), timeout=60).read()
if "sessionid" not in {c.name for c in jar}:
    sys.exit("the admin password did not log in")
listing = web.open(base + "/issues/1/", timeout=60).read().decode()
for issue in sorted(set(re.findall(r"/issues/issue/([0-9a-f-]{36})/", listing))):
    print(web.open(f"{base}/issues/issue/{issue}/md/", timeout=60).read().decode().partition("\n")[0])
PYEOF
}

# (not `is-system-running --wait`: this unit is part of the boot it would wait for)
for _ in $(seq 1 60); do systemctl is-active --quiet rsyslog && break; sleep 1; done
systemctl is-active --quiet rsyslog || fail "rsyslog is not running before the install"
echo "KPR-GUEST booted: $(systemctl is-system-running)"

# -- rsyslog mode (the default) -----------------------------------------------------------
bash "$SRC/install.sh" || fail "install.sh exited $?"
ok "install.sh (rsyslog mode)"
if id kpr-omprog >/dev/null 2>&1; then fail "rsyslog mode created a system user nothing uses"; fi
command -v kpr-omprog >/dev/null || fail "kpr-omprog is not on PATH"
ok "no system user in rsyslog mode; kpr-omprog on PATH"
systemctl is-active --quiet rsyslog || fail "rsyslog is not running after the install"
grep -q "omprog --omprog --config $CONF" /etc/rsyslog.d/30-kpr-omprog.conf || fail "drop-in binary= line"
ok "rsyslog restarted by systemctl with the drop-in"
send 514 127.0.0.2
wait_reports 1 || fail "no report stored after a crash sent to rsyslog on 514"
reports | grep -q '"title": "kernel BUG in lkdtm_BUG"' || fail "wrong title: $(reports)"
ok "crash via rsyslog -> kpr-omprog: $(reports | head -1)"
logger -t kpr-guest "host logging still works"
sleep 1
grep -q "host logging still works" /var/log/syslog || fail "the host's own logging is disturbed"
if grep -q "lkdtm" /var/log/syslog; then fail "netconsole lines leaked into /var/log/syslog"; fi
ok "host logging undisturbed, netconsole lines kept out of /var/log/syslog"

# -- --with-bugsink: a local Bugsink, and the crash stored above on its web page ---------------
t0=$SECONDS
bash "$SRC/install.sh" --with-bugsink >/tmp/bs.out 2>&1 \
  || { sed 's/^/KPR-GUEST out: /' /tmp/bs.out; fail "install.sh --with-bugsink exited $?"; }
sed -n '/^Bugsink, the crash/,$p' /tmp/bs.out | sed 's/^/KPR-GUEST out: /'
systemctl is-active --quiet kpr-omprog-bugsink || fail "kpr-omprog-bugsink.service is not active"
[ "$(main_pid_user kpr-omprog-bugsink)" = "$(id -u kpr-omprog-bugsink)" ] || fail "Bugsink does not run as its user"
[ "$(tcp_listen 8000)" = "0100007F:1F40" ] || fail "Bugsink should listen on 127.0.0.1:8000 only: $(tcp_listen 8000)"
ok "Bugsink active as user kpr-omprog-bugsink, on 127.0.0.1:8000 only"
dsn=$(sed -n 's/^dsn = "\([^"]*\)".*/\1/p' "$CONF")
case "$dsn" in http://*@127.0.0.1:8000/1) ;; *) fail "the empty dsn did not become Bugsink's: $(grep dsn "$CONF")" ;; esac
grep -q "^  password: [^ ]*   (shown once" /tmp/bs.out || fail "the admin password was not shown"
[ "$(stat -c %a:%U /etc/kpr-omprog/bugsink/admin)" = 600:root ] || fail "the admin password file is not root's alone"
ok "the empty dsn is Bugsink's project; admin password shown once, kept root-only"
until bugsink_issues 2>/dev/null | grep -q "lkdtm_BUG" || [ "$SECONDS" -gt $((t0 + 600)) ]; do sleep 1; done
[ "$(bugsink_issues)" = "# kernel BUG: in lkdtm_BUG" ] \
  || fail "the stored crash is not in Bugsink: $(bugsink_issues 2>&1) $(tail -3 /var/log/kpr-omprog/omprog.log)"
ok "the crash stored before is on Bugsink's page, read back over HTTP with the admin login: $(bugsink_issues)"
# The second run of install.sh (a plain rerun's idempotence is also checked in test_install.py
# and test_install_nosystemd.py; each run here costs a minute and a half under TCG)
cp "$CONF" /tmp/conf.before; bs_pid=$(systemctl show -p MainPID --value kpr-omprog-bugsink)
bash "$SRC/install.sh" --with-bugsink >/tmp/bs2.out 2>&1 || fail "a second --with-bugsink run exited $?"
cmp -s "$CONF" /tmp/conf.before || fail "the second run changed the config"
systemctl is-active --quiet rsyslog || fail "rsyslog is not running after the second run"
[ "$(systemctl show -p MainPID --value kpr-omprog-bugsink)" = "$bs_pid" ] || fail "the second run restarted Bugsink"
grep -q "dsn: already Bugsink's" /tmp/bs2.out && grep -q "password: in /etc/kpr-omprog/bugsink/admin" /tmp/bs2.out \
  || fail "the second run said: $(sed -n '/^Bugsink, the crash/,$p' /tmp/bs2.out)"
[ "$(bugsink_issues)" = "# kernel BUG: in lkdtm_BUG" ] || fail "one issue expected after the second run"
ok "second run (--with-bugsink): idempotent (config, project, running Bugsink untouched)"

# -- standalone mode: a systemd unit of its own -------------------------------------------
bash "$SRC/install.sh" --uninstall >/tmp/unin.out 2>&1 || fail "--uninstall exited $?"
[ ! -e /etc/rsyslog.d/30-kpr-omprog.conf ] && [ ! -e /opt/kpr-omprog ] || fail "--uninstall left files"
systemctl is-active --quiet rsyslog || fail "rsyslog not running after --uninstall"
ok "--uninstall (rsyslog mode)"
if systemctl is-active --quiet kpr-omprog-bugsink; then fail "Bugsink still runs after --uninstall"; fi
[ ! -e /etc/systemd/system/kpr-omprog-bugsink.service ] && [ ! -e /opt/kpr-omprog-bugsink ] || fail "Bugsink's unit or package left"
[ -s /var/lib/kpr-omprog-bugsink/db.sqlite3 ] && [ -s /etc/kpr-omprog/bugsink/admin ] || fail "Bugsink's data not kept"
[ -z "$(tcp_listen 8000)" ] || fail "something still listens on 8000"
sed -n '/^Bugsink stopped and removed/,$p' /tmp/unin.out | sed 's/^/KPR-GUEST out: /'
ok "--uninstall removed Bugsink's service and package, kept its data"
bash "$SRC/install.sh" --standalone || fail "install.sh --standalone exited $?"
id kpr-omprog >/dev/null || fail "no kpr-omprog system user"
[ "$(getent passwd kpr-omprog | cut -d: -f7)" = /usr/sbin/nologin ] || fail "the system user has a login shell"
for _ in $(seq 1 60); do journalctl -u kpr-omprog --no-pager | grep -q udp_started && break; sleep 1; done
systemctl is-active --quiet kpr-omprog || fail "kpr-omprog.service is not active"
[ "$(main_pid_user kpr-omprog)" = "$(id -u kpr-omprog)" ] || fail "the service does not run as kpr-omprog"
if journalctl -u kpr-omprog --no-pager | grep -q udp_rcvbuf_small; then fail "receive buffer refused (rmem_max)"; fi
ok "kpr-omprog.service active as user kpr-omprog on port 514 (CAP_NET_BIND_SERVICE), full receive buffer"
send 514 127.0.0.3
wait_reports 2 || fail "no report from the standalone service: $(journalctl -u kpr-omprog --no-pager | tail -5)"
ok "crash via standalone UDP: $(reports | head -1)"
systemctl restart kpr-omprog || fail "restart"
systemctl is-active --quiet kpr-omprog || fail "not active after a restart"
ok "systemctl restart kpr-omprog"
bash "$SRC/install.sh" --uninstall || fail "--uninstall (standalone) exited $?"
if systemctl is-active --quiet kpr-omprog; then fail "the service still runs after --uninstall"; fi
[ ! -e /etc/systemd/system/kpr-omprog.service ] && [ ! -e /etc/sysctl.d/60-kpr-omprog.conf ] || fail "files left behind"
ok "--uninstall (standalone)"
echo "KPR-GUEST-DONE 0"
systemctl poweroff
