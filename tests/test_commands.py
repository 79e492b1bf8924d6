"""The commands an operator uses on the second day, run as they are typed: ``--help``,
``reports`` (its ID column, its filters, ``--follow`` and ``--wait``), ``status`` against a
real rsyslogd, the library's state-directory error, ``udp --workers`` log lines, where hook
modules are imported from, and the outbox files against ``delivery.disk_cap_bytes``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from kpr_omprog.store import Store, StoreFull
from tests.rsyslogd import Rsyslogd, free_udp_port, udp_bound
from tests.senders import capture, play
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kpr_omprog.cli", *args], capture_output=True, text=True,
                          env=ENV, timeout=timeout)


def one_line_error(r: subprocess.CompletedProcess[str], code: int, says: str) -> None:
    assert r.returncode == code, r.stdout + r.stderr
    assert says in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr


def put(state: Path, event_id: str, host: str, title: str, created: float) -> None:
    store = Store(str(state / "kpr-omprog.sqlite3"))
    try:
        store.put({"event_id": event_id, "message": title}, b"the log\n", host=host, title=title, level="error",
                  created=created, now=created, local=True)
    finally:
        store.close()


def test_help_lists_each_command_once() -> None:
    r = cli("--help")
    assert r.returncode == 0
    for command in ("replay", "omprog", "udp", "reports", "show", "status", "symbols", "check-config", "capture"):
        listed = [line for line in r.stdout.splitlines() if line.split()[:1] == [command]]
        assert len(listed) == 1, (command, r.stdout)


def test_reports_prints_the_id_show_takes_and_refuses_bad_filters(tmp_path: Path) -> None:
    state = tmp_path / "state"
    now = time.time()
    put(state, "a1b2c3d4" + "0" * 24, "10.1.0.5", "kernel BUG in one", now - 30)
    put(state, "a1b2c3d4" + "f" * 24, "10.2.0.7", "kernel BUG in two", now - 20)  # the same 8 first characters
    put(state, "77" * 16, "::ffff:10.1.0.9", "WARNING in three", now - 10)  # an IPv4 sender on a dual-stack socket
    r = cli("reports", "--state-dir", str(state))
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if "kernel BUG" in line or "WARNING" in line]
    assert len(rows) == 3
    ids = [line.split()[0] for line in rows]
    assert len(set(ids)) == 3 and all(8 <= len(i) < 32 for i in ids), ids
    for short, line in zip(ids, rows, strict=True):
        shown = cli("show", short, "--json", "--state-dir", str(state))
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["title"] in line
    # --limit below 1 and a --host that is neither an address nor a network: one line, exit 2
    for bad, says in ((["--limit", "0"], "--limit 0: must be 1 or more"),
                      (["--limit", "-1"], "--limit -1: must be 1 or more"),
                      (["--host", "10.1.0.300"], "--host '10.1.0.300': not an address or a network"),
                      (["--host", "web-1"], "--host 'web-1': not an address or a network")):
        one_line_error(cli("reports", *bad, "--state-dir", str(state)), 2, says)
    # a network takes its hosts (the dual-stack one too); an address one host
    r = cli("reports", "--host", "10.1.0.0/16", "--json", "--state-dir", str(state))
    assert sorted(json.loads(x)["host"] for x in r.stdout.splitlines()) == ["10.1.0.5", "::ffff:10.1.0.9"]
    r = cli("reports", "--host", "10.2.0.7", "--limit", "1", "--json", "--state-dir", str(state))
    assert [json.loads(x)["host"] for x in r.stdout.splitlines()] == ["10.2.0.7"]
    # a filter that matches nothing says so: in the listing, and on stderr beside --json
    r = cli("reports", "--host", "192.0.2.0/24", "--title", "BUG", "--state-dir", str(state))
    assert r.returncode == 0 and r.stdout.rstrip().endswith("no stored report matches --host 192.0.2.0/24 "
                                                            "--title 'BUG'"), r.stdout
    r = cli("reports", "--host", "192.0.2.1", "--json", "--state-dir", str(state))
    assert r.returncode == 0 and r.stdout == "" and "no stored report matches --host 192.0.2.1" in r.stderr


class Lines:
    """A process's stdout lines, read as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stdout is not None
        out = proc.stdout
        self.thread = threading.Thread(target=lambda: self.lines.extend(iter(out.readline, "")), daemon=True)
        self.thread.start()

    def having(self, text: str) -> list[str]:
        return [line for line in list(self.lines) if text in line]


def test_reports_follow_prints_each_report_as_it_is_stored_until_interrupted(tmp_path: Path) -> None:
    state = tmp_path / "state"  # no store yet: as under rsyslog before the first datagram
    follower = subprocess.Popen([sys.executable, "-m", "kpr_omprog.cli", "reports", "--follow", "--state-dir",
                                 str(state)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    port = free_udp_port()
    receiver = subprocess.Popen([sys.executable, "-m", "kpr_omprog.cli", "udp", "--listen", f"127.0.0.1:{port}",
                                 "--state-dir", str(state), "--idle-timeout", "0.5", "--log-format", "json"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        lines = Lines(follower)
        wait_for(lambda: udp_bound(port), 30, "the receiver's port", receiver)
        # nothing matches yet: --wait gives up after its time, in one line, exit 1
        one_line_error(cli("reports", "--wait", "0.5", "--title", "lkdtm_BUG", "--state-dir", str(state)), 1,
                       "no report matches --title 'lkdtm_BUG' within 0.5 s")
        waiting = subprocess.Popen([sys.executable, "-m", "kpr_omprog.cli", "reports", "--wait", "60", "--title",
                                    "lkdtm_BUG", "--state-dir", str(state)], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=ENV)
        play(("127.0.0.1", port), {"127.0.0.1": capture("lkdtm-BUG_classic_oopspanic")}, speed=20)
        wait_for(lambda: lines.having("kernel BUG in lkdtm_BUG"), 60, "the follower to print the report",
                 show=lambda: lines.lines)
        out, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 0 and "kernel BUG in lkdtm_BUG" in out, out + err
        [line] = lines.having("kernel BUG in lkdtm_BUG")
        shown = cli("show", line.split()[0], "--json", "--state-dir", str(state))
        assert shown.returncode == 0 and json.loads(shown.stdout)["title"] == "kernel BUG in lkdtm_BUG"
        follower.send_signal(signal.SIGINT)  # Ctrl-C
        assert follower.wait(30) == 0
        assert follower.stderr is not None
        err = follower.stderr.read()
        assert "Traceback" not in err and err.count("\n") == 1 and "following" in err, err
        lines.thread.join(10)
        assert len(lines.having("kernel BUG in lkdtm_BUG")) == 1  # printed once
    finally:
        for p in (follower, receiver):
            if p.poll() is None:
                p.terminate()
                p.wait(30)


def status(config: Path) -> subprocess.CompletedProcess[str]:
    return cli("status", "--config", str(config))


def test_status_checks_the_receiving_path_of_the_installed_mode(tmp_path: Path) -> None:
    state = tmp_path / "state"
    Store(str(state / "kpr-omprog.sqlite3")).close()
    etc = tmp_path / "etc"
    etc.mkdir()
    config = etc / "config.toml"
    config.write_text(f'state_dir = "{state}"\n')
    rs = Rsyslogd(tmp_path / "rsyslog")
    (etc / "installed").write_text(f"mode=rsyslog\ndropin={rs.conf}\nport={rs.port}\n")

    def problem(r: subprocess.CompletedProcess[str], says: str) -> None:
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stdout + r.stderr
        needs = [line for line in r.stdout.splitlines() if line.startswith("NEEDS A HUMAN")]
        assert len(needs) == 1 and "nothing receives" in needs[0] and says in needs[0], r.stdout

    # rsyslogd not running (or, on a machine running other ones, none on our port)
    r = status(config)
    problem(r, "rsyslogd")
    assert "not running" in r.stdout or f"does not listen on UDP {rs.port}" in r.stdout
    rs.start()
    try:
        r = status(config)
        assert r.returncode == 0 and r.stdout.endswith("ok\n"), r.stdout
        assert f"listens on UDP {rs.port} with {rs.conf}" in r.stdout
        # the drop-in changed after rsyslogd started: it runs the old one
        later = time.time() + 5
        os.utime(rs.conf, (later, later))
        problem(status(config), "started before")
    finally:
        rs.stop()
    os.utime(rs.conf)
    problem(status(config), f"does not listen on UDP {rs.port}" if _other_rsyslogd() else "rsyslogd is not running")
    rs.conf.unlink()
    problem(status(config), f"the rsyslog drop-in {rs.conf} is gone")
    # standalone: the receiver runs or not
    (etc / "installed").write_text("mode=standalone\n")
    problem(status(config), "the standalone receiver is not running")
    port = free_udp_port()
    receiver = subprocess.Popen([sys.executable, "-m", "kpr_omprog.cli", "udp", "--listen", f"127.0.0.1:{port}",
                                 "--config", str(config), "--log-format", "json"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        wait_for(lambda: udp_bound(port), 30, "the receiver's port", receiver)
        r = status(config)
        assert r.returncode == 0 and f"receiver running, pid {receiver.pid}" in r.stdout, r.stdout
    finally:
        receiver.terminate()
        receiver.wait(30)
    # nothing installed and nothing holding the state directory: not "ok"
    (etc / "installed").unlink()
    problem(status(config), f"{etc / 'installed'} is missing")


def _other_rsyslogd() -> bool:
    from kpr_omprog.receiving import _processes

    return bool(_processes("rsyslogd"))


def test_a_library_user_is_told_the_library_keyword(tmp_path: Path) -> None:
    state = tmp_path / "state"
    holder = subprocess.Popen([sys.executable, "-m", "kpr_omprog.cli", "omprog", "--state-dir", str(state),
                               "--log-format", "json"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, env=ENV)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"OK\n"
        script = ("import kpr_omprog\n"
                  f"r = kpr_omprog.KernelPanicReceiver('127.0.0.1', {free_udp_port()}, '', state_dir={str(state)!r})\n"
                  "r.start_receiving_logs([])\n")
        r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=60)
        # the command keeps its own advice
        cmd = cli("udp", "--listen", f"127.0.0.1:{free_udp_port()}", "--state-dir", str(state), "--log-format", "json")
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(30)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"in use by another kpr-omprog receiver (pid {holder.pid})" in r.stderr
    assert "KernelPanicReceiver(state_dir=...)" in r.stderr and "--state-dir" not in r.stderr, r.stderr
    assert cmd.returncode == 1 and "(state_dir in the config, or --state-dir)" in cmd.stderr, cmd.stderr
    assert "KernelPanicReceiver" not in cmd.stderr


LOGGER = """
import sys
from kpr_omprog import logs
logs.configure("json", "info")
log = logs.get_logger()
for i in range(int(sys.argv[1])):
    log.info("udp_stopped", worker=sys.argv[2], i=i, pad="x" * 300)
"""


def test_processes_sharing_stderr_never_interleave_their_log_lines(tmp_path: Path) -> None:
    # unbuffered, as container images run Python (PYTHONUNBUFFERED=1): each line is one write
    env = dict(ENV, PYTHONUNBUFFERED="1")
    r_fd, w_fd = os.pipe()
    n, procs = 2000, []
    try:
        for k in range(3):
            procs.append(subprocess.Popen([sys.executable, "-c", LOGGER, str(n), str(k)], stderr=w_fd, env=env))
    finally:
        os.close(w_fd)
    with os.fdopen(r_fd, "rb") as f:
        data = f.read()
    for p in procs:
        assert p.wait(60) == 0
    lines = data.split(b"\n")
    assert lines[-1] == b""
    objects = [json.loads(line) for line in lines[:-1]]  # an empty or doubled line fails here
    assert len(objects) == 3 * n


def test_udp_workers_log_each_line_whole(tmp_path: Path) -> None:
    # the real thing: two workers on one stderr, both logging a report line for each of 400
    # crashes closing at the same moment, then both stopping at once
    port = free_udp_port()
    err = tmp_path / "stderr"
    hosts = [f"127.0.{k // 200 + 1}.{k % 200 + 1}" for k in range(400)]
    with open(err, "wb") as f:
        p = subprocess.Popen([sys.executable, "-m", "kpr_omprog.cli", "udp", "--listen", f"127.0.0.1:{port}",
                              "--workers", "2", "--state-dir", str(tmp_path / "state"), "--log-format", "json",
                              "--idle-timeout", "1"],
                             stdout=subprocess.DEVNULL, stderr=f, env=dict(ENV, PYTHONUNBUFFERED="1"))
        try:
            wait_for(lambda: err.read_text().count('"udp_started"') == 2, 60, "both workers to start", p)
            crash = capture("lkdtm-BUG_classic_oopspanic")
            play(("127.0.0.1", port), dict.fromkeys(hosts, crash), speed=50, timeout=120)
            wait_for(lambda: err.read_text().count('"event": "report"') >= len(hosts), 120, "a report line a crash",
                     p, show=lambda: err.read_text()[-2000:])
        finally:
            p.send_signal(signal.SIGTERM)
            assert p.wait(60) == 0
    objects = [json.loads(line) for line in err.read_text().split("\n")[:-1]]  # an empty or doubled line fails
    events = [o["event"] for o in objects]
    assert events.count("report") >= len(hosts) and events.count("udp_stopped") == 2


def test_hook_modules_are_imported_from_hooks_dirs_default_the_config_files_directory(tmp_path: Path) -> None:
    conf_dir = tmp_path / "etc"
    (conf_dir / "mysite").mkdir(parents=True)
    (conf_dir / "mysite" / "__init__.py").write_text("")
    (conf_dir / "mysite" / "hooks.py").write_text("def tag(addr, klogs):\n    return ('site', 'here')\n")
    config = conf_dir / "config.toml"
    config.write_text('[hooks]\ntag = ["mysite.hooks:tag"]\n')
    data = ROOT / "tests" / "data" / "lkdtm-BUG_classic_oopspanic.jsonl"
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()

    def replay(conf: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "kpr_omprog.cli", "replay", "--config", str(conf), str(data)],
                              capture_output=True, text=True, env=ENV, cwd=elsewhere, timeout=60)

    r = replay(config)  # run from another directory: found next to the config file
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[0])["tags"]["site"] == "here"
    # hooks.dirs: relative to the config file; a module not there is named with where it looked
    (tmp_path / "lib").mkdir()
    (conf_dir / "mysite").rename(tmp_path / "lib" / "mysite")
    one_line_error(replay(config), 2, f"cannot import module 'mysite.hooks': No module named 'mysite' "
                                      f"(looked in {conf_dir} (hooks.dirs), then Python's path)")
    config.write_text('[hooks]\ntag = ["mysite.hooks:tag"]\ndirs = ["../lib"]\n')
    r = replay(config)
    assert r.returncode == 0 and json.loads(r.stdout.splitlines()[0])["tags"]["site"] == "here", r.stderr


def files(state: Path) -> int:
    return sum(f.stat().st_size for f in state.iterdir() if f.name.startswith("kpr-omprog.sqlite3"))


def test_the_outbox_files_stay_near_disk_cap_bytes(tmp_path: Path) -> None:
    # Dead-lettered reports, each retried before Sentry refused it for good (every retry
    # rewrites its row), until the outbox is full; then pruned and filled again.
    cap = 1 << 20
    state = tmp_path / "state"
    store = Store(str(state / "kpr-omprog.sqlite3"), cap, dead_retention=3600)
    log = os.urandom(3000).hex().encode()
    biggest = n = 0
    try:
        for _ in range(3):
            while True:
                eid = f"{n:032x}"
                try:
                    store.put({"event_id": eid, "message": "x" * 1000}, log, host="10.0.0.1", title="t",
                              level="error", created=time.time(), now=time.time(), local=False)
                except StoreFull:
                    break
                for _ in range(5):
                    store.retry(eid, 0, "HTTP 500", time.time())
                store.dead(eid, 400, "HTTP 400", time.time())
                n += 1
                biggest = max(biggest, files(state))
            assert store.pending_bytes > cap - 8000
            assert store.prune_dead(time.time() + 7200) > 100
    finally:
        store.close()
    # the rows up to the cap, SQLite's pages around them, the log cut back at cap/16, its index
    # (the README's bounds table says so); SQLite's defaults took 5.2 MB here
    assert biggest <= cap * 1.3 + cap / 16 + 32768, biggest
