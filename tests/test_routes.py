"""Several Sentry projects from one receiver: ``[[route]]`` tables, their validation and
matching, the outbox's per-row DSN (and the migration of older stores), and delivery with
a state per DSN, against real Bugsink projects and fake servers for the faults."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from kpr_omprog.config import Config, ConfigError, load
from kpr_omprog.routes import Router
from kpr_omprog.store import Store


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
    ('max_routes = 0\n', "max_routes: 0 must be 1-100000"),
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
