"""Several Sentry projects from one receiver: ``[[route]]`` tables, their validation and
matching, the outbox's per-row DSN (and the migration of older stores), and delivery with
a state per DSN, against real Bugsink projects and fake servers for the faults."""

from __future__ import annotations

import gzip
import http.server
import json
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest

from kpr_omprog.config import Config, ConfigError, load, redact_dsn
from kpr_omprog.routes import Router
from kpr_omprog.store import Store
from tests.bugsink import Bugsink, free_port
from tests.rsyslogd import free_udp_port, udp_bound
from tests.senders import capture, play
from tests.test_omprog import stored
from tests.waiting import wait_for


def config(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load(path)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kpr_omprog.cli", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)


ROUTES = """
dsn = "https://topkey@sentry.example/1"
environment = "production"

[[route]]
name = "customer-a"
networks = ["10.1.0.0/16", "2001:db8::/32"]
dsn = "https://akey@sentry.example/2"
environment = "customer-a"
tags = { customer = "a", tier = "gold" }

[[route]]
networks = ["10.1.2.0/24", "10.2.0.0/16"]   # 10.1.2.x: customer-a wins, it comes first
dsn = "https://bkey@sentry.example/3"

[[route]]
name = "quiet"
networks = ["192.0.2.7"]
dsn = ""
"""


def test_first_matching_route_wins_v4_v6_and_mapped_v6_else_the_default(tmp_path: Path) -> None:
    router = Router(config(tmp_path, ROUTES))
    a = router.match("10.1.2.3")
    assert (a.label, a.dsn, a.environment, a.tags) == (
        "customer-a", "https://akey@sentry.example/2", "customer-a", (("customer", "a"), ("tier", "gold")))
    assert router.match("2001:db8:ffff::1").label == "customer-a"
    assert router.match("::ffff:10.1.200.1").label == "customer-a"  # a dual-stack socket's IPv4 sender
    b = router.match("10.2.9.9")
    # no name: labelled by position; no environment: the top-level one
    assert (b.label, b.dsn, b.environment, b.tags) == ("route[1]", "https://bkey@sentry.example/3", "production", ())
    assert router.match("::ffff:10.2.0.1").label == "route[1]"
    quiet = router.match("192.0.2.7")
    assert (quiet.label, quiet.dsn) == ("quiet", None)  # dsn = "": kept locally
    for other in ("192.0.2.8", "10.3.0.1", "2001:db9::1", "::1", "not-an-address"):
        d = router.match(other)
        assert (d.label, d.dsn, d.environment) == ("default", "https://topkey@sentry.example/1", "production"), other
    # a route without a dsn key sends to the top-level DSN with its own environment and tags
    r = Router(config(tmp_path, 'dsn = "https://k@s.example/1"\n[[route]]\nnetworks = ["10.0.0.0/8"]\n'
                                'environment = "lab"\n')).match("10.9.9.9")
    assert (r.dsn, r.environment) == ("https://k@s.example/1", "lab")
    assert Router(Config()).match("10.1.2.3").label == "default"


def test_matching_many_routes_is_a_lookup_per_prefix_length(tmp_path: Path) -> None:
    routes = "".join(f'[[route]]\nnetworks = ["10.{i // 256}.{i % 256}.0/24"]\ndsn = "https://k{i}@s.example/{i}"\n'
                     for i in range(1000))
    router = Router(config(tmp_path, routes))
    assert router.match("10.3.231.9").label == "route[999]"
    assert router.match("10.3.232.9").label == "default"
    assert len(router._tables[4]) == 1  # one prefix length in use: one dict lookup a match


@pytest.mark.parametrize("text, message", [
    ('[[route]]\nnetworks = ["10.1.0.0/16"]\n[[route]]\nnetworks = ["10.2.0.0/16"]\n[[route]]\n'
     'networks = ["10.1.0.0/33"]\n', "route[2].networks[0]: '10.1.0.0/33' is not a network (e.g. 10.1.0.0/16 or "
                                     "2001:db8::/32)"),
    ('[[route]]\nnetworks = ["10.1.0.0/16", 7]\n', "route[0].networks[1]: expected a string, got int 7"),
    ('[[route]]\nnetworks = []\n', "route[0].networks: empty (a route takes at least one network)"),
    ('[[route]]\nnetworks = "10.0.0.0/8"\n', "route[0].networks: expected a list, got str '10.0.0.0/8'"),
    ('[[route]]\ndsn = "https://k@s.example/2"\n', "route[0]: networks is missing"),
    ('[[route]]\nnetworks = ["10.0.0.0/8"]\ncolour = "red"\n',
     "route[0].colour: unknown key (known: networks, dsn, environment, tags, name)"),
    ('[[route]]\nnetworks = ["10.0.0.0/8"]\ndsn = "https://s3cr3t@"\n',
     "route[0].dsn: 'https://***@' is not a Sentry DSN (expected https://KEY@HOST/PROJECT_ID)"),
    ('[[route]]\nnetworks = ["10.0.0.0/8"]\nenvironment = "a b"\n', "route[0].environment: 'a b' is not a Sentry "
                                                                     "environment (1-64 characters, no spaces or '/'"),
    ('[[route]]\nnetworks = ["10.0.0.0/8"]\nenvironment = "x/y"\n', "route[0].environment: 'x/y' is not"),
    ('[[route]]\nnetworks = ["10.0.0.0/8"]\ntags = { host = "x" }\n',
     "route[0].tags.host: kpr-omprog sets this tag itself (a route adds tags, it never replaces ours)"),
    ('[[route]]\nnetworks = ["10.0.0.0/8"]\ntags = { "bad key" = "x" }\n',
     "route[0].tags: key 'bad key' is not a Sentry tag key (1-32 characters"),
    ('[[route]]\nnetworks = ["10.0.0.0/8"]\ntags = { ' + "k" * 33 + ' = "x" }\n',
     f"route[0].tags: key '{'k' * 33}' is not a Sentry"),
    ('[[route]]\nnetworks = ["10.0.0.0/8"]\ntags = { customer = "' + "x" * 201 + '" }\n',
     "route[0].tags.customer: the value must be 1-200 printable characters"),
    ('[[route]]\nnetworks = ["10.0.0.0/8"]\ntags = { customer = 5 }\n',
     "route[0].tags.customer: expected a string, got int 5"),
    ('[[route]]\nnetworks = ["10.0.0.0/8"]\ntags = "customer=a"\n', "route[0].tags: expected a table"),
    ('[[route]]\nnetworks = ["10.0.0.0/8"]\ntags = { ' + ", ".join(f'k{i} = "v"' for i in range(17)) + ' }\n',
     "route[0].tags: 17 tags, at most 16"),
    ('[[route]]\nnetworks = ["10.0.0.0/8"]\nname = "default"\n', "route[0].name: 'default' must be"),
    ('[[route]]\nnetworks = ["10.0.0.0/8"]\nname = "a b"\n', "route[0].name: 'a b' must be 1-64 characters"),
    ('[[route]]\nnetworks = ["10.0.0.0/8"]\nname = "a"\n[[route]]\nnetworks = ["10.1.0.0/16"]\nname = "a"\n',
     "route[1].name: 'a' is also route[0]'s name"),
    ('route = "10.0.0.0/8"\n', "route: expected [[route]] tables (an array of tables)"),
    ('[route]\nnetworks = ["10.0.0.0/8"]\n', "route: expected [[route]] tables (an array of tables)"),
    ('max_routes = 1\n[[route]]\nnetworks = ["10.0.0.0/8"]\n[[route]]\nnetworks = ["10.1.0.0/16"]\n',
     "route: 2 [[route]] tables, more than max_routes (1)"),
    ('max_routes = 0\n', "max_routes: 0 must be 1-10000"),
])
def test_route_mistakes_are_one_line_naming_the_route_the_field_and_why(tmp_path: Path, text: str,
                                                                        message: str) -> None:
    with pytest.raises(ConfigError) as e:
        config(tmp_path, text)
    assert str(e.value).startswith(f"{tmp_path / 'config.toml'}: {message}"), str(e.value)
    assert "\n" not in str(e.value) and "s3cr3t" not in str(e.value)


def test_check_config_lists_the_routes_with_their_keys_hidden(tmp_path: Path) -> None:
    conf = tmp_path / "config.toml"
    conf.write_text(ROUTES)
    r = run_cli("check-config", "--config", str(conf))
    assert r.returncode == 0, r.stderr
    assert not any(k in r.stdout for k in ("topkey", "akey", "bkey"))
    assert r.stdout.splitlines()[1:] == [
        "routes (first match wins; 3 of max_routes 1000):",
        "  customer-a: 10.1.0.0/16, 2001:db8::/32 -> https://***@sentry.example/2, environment customer-a, "
        "tags customer=a, tier=gold",
        "  route[1]: 10.1.2.0/24, 10.2.0.0/16 -> https://***@sentry.example/3, environment production",
        "  quiet: 192.0.2.7 -> kept locally (no dsn), environment production",
        "  default: every other sender -> https://***@sentry.example/1, environment production",
    ]
    conf.write_text('[[route]]\nnetworks = ["10.1.0.0/33"]\n')
    r = run_cli("check-config", "--config", str(conf))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr == (f"kpr-omprog check-config: error: {conf}: route[0].networks[0]: '10.1.0.0/33' is not a "
                        "network (e.g. 10.1.0.0/16 or 2001:db8::/32)\n")


def test_a_routes_tags_never_replace_ours_and_the_senders_userdata_never_replaces_them() -> None:
    from kpr_omprog.assembler import Assembler
    from kpr_omprog.event import build_event
    from kpr_omprog.hooks import Parsers

    asm = Assembler()
    asm.feed(b"4,1,1000,-;BUG: kernel NULL pointer dereference, address: 0000000000000000\n customer=b\n"
             b" rack=r1\n", ("10.1.0.9", 6666), 1.0)
    [r] = asm.close_all()
    event, _ = build_event(r, Parsers().run(["10.1.0.9", 6666], r.text), "customer-a",
                           route_tags=(("customer", "a"), ("crash_kind", "forged")))
    tags = event["tags"]
    assert event["environment"] == "customer-a"
    assert tags["customer"] == "a" and tags["userdata.customer"] == "b" and tags["rack"] == "r1"
    assert tags["crash_kind"] != "forged"


def _old_store(path: Path) -> None:
    """An outbox as versions before [[route]] wrote it: no route, no dsn."""
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE reports (event_id TEXT PRIMARY KEY, created REAL NOT NULL, host TEXT NOT NULL,
            title TEXT NOT NULL, level TEXT NOT NULL, state TEXT NOT NULL, event BLOB, attachment BLOB,
            size INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_try REAL NOT NULL DEFAULT 0,
            trim INTEGER NOT NULL DEFAULT 0, status INTEGER, last_error TEXT, updated REAL NOT NULL);
        CREATE INDEX reports_due ON reports(state, next_try);""")
    for event_id, state in (("a" * 32, "pending"), ("b" * 32, "local")):
        db.execute("INSERT INTO reports (event_id, created, host, title, level, state, event, attachment, size, "
                   "updated) VALUES (?, 1.0, '10.1.0.1', 't', 'fatal', ?, ?, x'00', 10, 1.0)",
                   (event_id, state, json.dumps({"event_id": event_id})))
    db.commit()
    db.close()


def test_an_older_store_is_migrated_and_its_rows_go_to_the_top_level_dsn(tmp_path: Path) -> None:
    path = tmp_path / "kpr-omprog.sqlite3"
    _old_store(path)
    cfg = config(tmp_path, ROUTES)  # 10.1.0.1 is customer-a's now: old rows still go to the top level
    store = Store(str(path))
    try:
        assert store.apply_routes(Router(cfg).labels(), 2.0) == (1, 0)
        rows = store.due(3.0, 10, default_dsn=None)
        assert sorted((r.event_id[0], r.route, r.dsn) for r in rows) == [
            ("a", "default", "https://topkey@sentry.example/1"), ("b", "default", "https://topkey@sentry.example/1")]
        assert store.due(3.0, 10, skip_dsns={"https://topkey@sentry.example/1"}) == []
    finally:
        store.close()
    store = Store(str(path))  # opening it again changes nothing
    try:
        assert {r["route"] for r in store.reports()} == {"default"}
    finally:
        store.close()


def test_waiting_reports_follow_a_named_routes_dsn_and_an_unnamed_one_keeps_its_own(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s.sqlite3"))
    try:
        for i, (route, dsn) in enumerate([("customer-a", "https://old@s.example/2"), ("route[1]", "https://b@s.example/3"),
                                          ("quiet", None)]):
            store.put({"event_id": f"{i:032d}"}, b"log", host="10.1.0.1", title="t", level="fatal", created=1.0,
                      now=1.0, local=dsn is None, route=route, dsn=dsn)
        # customer-a's key rotated, quiet got a DSN, route[1] is now someone else's
        made_pending, made_local = store.apply_routes({"customer-a": "https://new@s.example/2", "quiet":
                                                       "https://q@s.example/4", "default": None}, 2.0)
        assert (made_pending, made_local) == (1, 0)
        assert sorted((r.route, r.dsn) for r in store.due(3.0, 10)) == [
            ("customer-a", "https://new@s.example/2"), ("quiet", "https://q@s.example/4"),
            ("route[1]", "https://b@s.example/3")]
        # a route told to keep its senders local: its waiting reports stay here
        assert store.apply_routes({"customer-a": None}, 4.0) == (0, 1)
        assert store.counts() == {"local": 1, "pending": 2}
    finally:
        store.close()


# -- real parts: a receiver, two Bugsink projects, fake servers only for the faults ------------------------------

CRASH_A, CRASH_B = "lkdtm-BUG_classic_oopspanic", "sysrq-c_ext"


class Receiver:
    """``kpr-omprog udp`` on a free loopback port with ``conf``; stopped (SIGTERM) by :meth:`stop`."""

    def __init__(self, tmp_path: Path, conf: str) -> None:
        self.port = free_udp_port()
        self.state = tmp_path / "state"
        self.conf = tmp_path / "receiver.toml"
        self.conf.write_text(conf)
        self.log = tmp_path / "udp.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kpr_omprog.cli", "udp", "--listen", f"127.0.0.1:{self.port}", "--config",
             str(self.conf), "--state-dir", str(self.state), "--log-format", "json"],
            stderr=open(self.log, "wb"))  # noqa: SIM115
        try:
            wait_for(lambda: udp_bound(self.port), 20, "kpr-omprog udp to bind its port", self.proc)
        except BaseException:
            self.stop()
            raise

    def send(self, host: str, name: str) -> None:
        play(("127.0.0.1", self.port), {host: capture(name)})

    def rows(self) -> dict[str, dict[str, object]]:
        """host -> its stored report (one each here)."""
        if not (self.state / "kpr-omprog.sqlite3").exists():
            return {}
        return {str(r["host"]): r for r in stored(self.state)}

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def routed_config(default_dsn: str, a_dsn: str) -> str:
    return f"""
dsn = "{default_dsn}"
environment = "fleet"
metrics_interval = 0.2

[[route]]
name = "customer-a"
networks = ["127.0.0.2/32", "2001:db8::/32"]
dsn = "{a_dsn}"
environment = "customer-a"
tags = {{ customer = "a" }}
"""


def delivery_attempts(prom: Path) -> dict[tuple[str, str], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.labels["route"], s.labels["result"]): s.value
            for f in text_string_to_metric_families(prom.read_text()) if f.name == "kpr_omprog_delivery_attempts"
            for s in f.samples if s.name.endswith("_total")}


def test_each_customers_crash_lands_in_its_own_bugsink_project(fresh_bugsink: Bugsink, tmp_path: Path) -> None:
    a_dsn, a_project = fresh_bugsink.add_project("customer-a")
    rx = Receiver(tmp_path, routed_config(fresh_bugsink.dsn, a_dsn))
    try:
        t = threading.Thread(target=rx.send, args=("127.0.0.3", CRASH_B))
        t.start()
        rx.send("127.0.0.2", CRASH_A)
        t.join()
        wait_for(lambda: [r["state"] for r in rx.rows().values()] == ["delivered", "delivered"], 60,
                 "both reports delivered", rx.proc, show=lambda: (rx.rows(), rx.log.read_text()[-2000:]))
        shown = run_cli("reports", "--json", "--config", str(rx.conf), "--state-dir", str(rx.state))
    finally:
        rc = rx.stop()
    assert rc == 0, rx.log.read_text()[-2000:]
    a_events, b_events = fresh_bugsink.events(a_project), fresh_bugsink.events()
    assert [(e["data"]["user"]["ip_address"], e["data"]["environment"], e["data"]["tags"].get("customer"))
            for e in a_events] == [("127.0.0.2", "customer-a", "a")]
    assert [(e["data"]["user"]["ip_address"], e["data"]["environment"], e["data"]["tags"].get("customer"))
            for e in b_events] == [("127.0.0.3", "fleet", None)]
    assert a_events[0]["data"]["tags"]["host"] == "127.0.0.2"  # ours, beside the route's
    rows = {r["host"]: r for r in map(json.loads, shown.stdout.splitlines())}
    assert (rows["127.0.0.2"]["route"], rows["127.0.0.2"]["dsn"]) == ("customer-a", redact_dsn(a_dsn))
    assert (rows["127.0.0.3"]["route"], rows["127.0.0.3"]["dsn"]) == ("default", redact_dsn(fresh_bugsink.dsn))
    one = run_cli("show", rows["127.0.0.2"]["event_id"][:12], "--state-dir", str(rx.state)).stdout
    assert re.search(rf"^route +customer-a \({re.escape(redact_dsn(a_dsn))}\)$", one, re.M), one
    assert a_dsn.split("@")[0] not in shown.stdout + one + rx.log.read_text()  # keys are never printed
    assert delivery_attempts(rx.state / "metrics.prom") == {("customer-a", "delivered"): 1, ("default", "delivered"): 1}


class _Limited(http.server.BaseHTTPRequestHandler):
    """A Sentry that answers its first envelope 429 (Retry-After) and takes the rest."""

    retry_after = 4
    seen: ClassVar[list[tuple[float, int, str]]] = []  # (when, status answered, event id)

    def do_POST(self) -> None:
        body = gzip.decompress(self.rfile.read(int(self.headers["Content-Length"])))
        event_id = json.loads(body.split(b"\n", 1)[0])["event_id"]
        status = 429 if not self.seen else 200
        self.seen.append((time.monotonic(), status, event_id))
        self.send_response(status)
        if status == 429:
            self.send_header("Retry-After", str(self.retry_after))
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


def test_one_customers_rate_limit_does_not_delay_anothers_reports_and_loses_nothing(fresh_bugsink: Bugsink,
                                                                                    tmp_path: Path) -> None:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Limited)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    _Limited.seen = []
    rx = Receiver(tmp_path, routed_config(fresh_bugsink.dsn, f"http://key@127.0.0.1:{srv.server_address[1]}/7"))
    try:
        rx.send("127.0.0.2", CRASH_A)
        wait_for(lambda: _Limited.seen, 30, "customer-a's Sentry to answer 429", rx.proc)
        rx.send("127.0.0.3", CRASH_B)
        wait_for(lambda: rx.rows().get("127.0.0.3", {}).get("state") == "delivered", 30,
                 "the default route's report delivered", rx.proc, show=rx.rows)
        # delivered while customer-a's limit still holds: its report waits, it is not lost
        a = rx.rows()["127.0.0.2"]
        assert a["state"] == "pending" and "HTTP 429" in str(a["last_error"])
        assert len(_Limited.seen) == 1
        wait_for(lambda: rx.rows()["127.0.0.2"]["state"] == "delivered", 30, "customer-a's report after its limit",
                 rx.proc, show=rx.rows)
    finally:
        rc = rx.stop()
        srv.shutdown()
        srv.server_close()
    assert rc == 0, rx.log.read_text()[-2000:]
    (t429, s429, id429), (t200, s200, id200) = _Limited.seen
    assert (s429, s200) == (429, 200) and id429 == id200
    assert t200 - t429 >= _Limited.retry_after - 0.1  # Retry-After honoured
    assert [e["data"]["user"]["ip_address"] for e in fresh_bugsink.events()] == ["127.0.0.3"]
    assert delivery_attempts(rx.state / "metrics.prom") == {
        ("customer-a", "rate_limited"): 1, ("customer-a", "delivered"): 1, ("default", "delivered"): 1}


def test_a_hanging_customer_sentry_holds_no_other_customers_report(bugsink: Bugsink, tmp_path: Path) -> None:
    from kpr_omprog.config import DeliveryConfig
    from kpr_omprog.delivery import Delivery
    from kpr_omprog.hooks import Parsers
    from kpr_omprog.runtime import Pipeline
    from tests.test_sentry import reports

    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(16)  # accepts, never answers
    cfg = config(tmp_path, routed_config(bugsink.dsn, f"http://key@127.0.0.1:{hang.getsockname()[1]}/7")
                 + "[delivery]\ntimeout = 20.0\n")
    store = Store(str(tmp_path / "s.sqlite3"))
    delivery = Delivery(store, cfg.dsn, cfg.delivery)
    pipe = Pipeline(cfg, Parsers(), store, delivery)
    try:
        delivery.start()
        # customer-a has more reports waiting than there are workers
        for i, name in enumerate(["sysrq-c_classic", "sysrq-c_ext", "lkdtm-CORRUPT_STACK_classic", CRASH_A]):
            [r] = reports(name, "127.0.0.2")
            pipe.handle(r, time.time() - i)
        wait_for(lambda: delivery.target(str(cfg.routes[0].dsn)).in_flight >= 1, 20, "customer-a's request to hang")
        [b] = reports(CRASH_B, "10.9.0.1")
        start = time.monotonic()
        pipe.handle(b, time.time())
        wait_for(lambda: any(r["host"] == "10.9.0.1" and r["state"] == "delivered" for r in store.reports()), 15,
                 "the other sender's report delivered while customer-a hangs", show=store.reports)
        assert time.monotonic() - start < DeliveryConfig(timeout=20.0).timeout
        waiting = [r for r in store.reports() if r["host"] == "127.0.0.2"]
        assert len(waiting) == 4 and {r["state"] for r in waiting} == {"pending"}
        # it held at most its share of the workers, never all of them
        assert delivery.target(str(cfg.routes[0].dsn)).in_flight <= cfg.delivery.concurrency - 1
    finally:
        hang.close()
        delivery.stop(timeout=1.0)
        store.close()


def test_replay_says_which_route_each_report_takes(tmp_path: Path, data_dir: Path) -> None:
    conf = tmp_path / "config.toml"
    conf.write_text('[[route]]\nname = "lab"\nnetworks = ["127.0.0.0/8"]\nenvironment = "lab"\n'
                    'tags = { customer = "lab" }\n')
    r = run_cli("replay", "--config", str(conf), str(data_dir / "sysrq-c_ext.jsonl"))
    assert r.returncode == 0, r.stderr
    [d] = map(json.loads, r.stdout.splitlines())
    assert (d["host"], d["route"], d["environment"], d["tags"]["customer"]) == ("127.0.0.1", "lab", "lab", "lab")
    r = run_cli("replay", str(data_dir / "sysrq-c_ext.jsonl"))  # no routes: as before
    assert "route" not in json.loads(r.stdout)


def test_a_refusing_dsn_backs_off_alone_one_probe_at_a_time(tmp_path: Path) -> None:
    from kpr_omprog.delivery import Delivery
    from kpr_omprog.hooks import Parsers
    from kpr_omprog.runtime import Pipeline
    from tests.test_sentry import reports

    class Ok(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    closed = free_port()  # nothing listens there: connections are refused
    cfg = config(tmp_path, routed_config(f"http://key@127.0.0.1:{srv.server_address[1]}/1",
                                         f"http://key@127.0.0.1:{closed}/7"))
    store = Store(str(tmp_path / "s.sqlite3"))
    delivery = Delivery(store, cfg.dsn, cfg.delivery)
    pipe = Pipeline(cfg, Parsers(), store, delivery)
    try:
        for i, name in enumerate(["sysrq-c_classic", "sysrq-c_ext", "lkdtm-CORRUPT_STACK_classic"]):
            [r] = reports(name, "127.0.0.2")
            pipe.handle(r, time.time() - i)
        [b] = reports(CRASH_B, "10.9.0.1")
        pipe.handle(b, time.time())
        assert delivery.send_due() == 2  # one probe to the refusing DSN, and the other's report
        rows = store.reports()
        assert {(r["route"], r["state"], r["attempts"]) for r in rows} == {
            ("customer-a", "pending", 1), ("customer-a", "pending", 0), ("default", "delivered", 0)}
        assert delivery.send_due() == 0  # the refusing DSN waits; nothing else is due
        assert delivery.attempts == {("customer-a", "retry"): 1, ("default", "delivered"): 1}
    finally:
        store.close()
        srv.shutdown()
        srv.server_close()
