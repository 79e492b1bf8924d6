"""The ``kpr-omprog`` command."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from . import __version__, logs
from .assembler import Assembler
from .capture import CaptureError, format_line
from .config import DEFAULT_CONFIG_PATH, DEFAULT_ROUTE, Config, ConfigError, load, parse_listen, redact_dsn, validate
from .journal import used_bytes
from .ratelimit import ReportGate
from .routes import Route, Router
from .store import StoreError

__all__ = ["main"]

# The commands are argparse's own list above it (once); this says what holds for all.
EPILOG = "Without a DSN every report is kept in the local store (see `kpr-omprog reports`)."


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One clear line and exit 2, without the usage block.
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def _add_config_args(p: argparse.ArgumentParser, default_file: bool = True) -> None:
    p.add_argument("--config", metavar="FILE",
                   help="TOML config file (default /etc/kpr-omprog/config.toml if present)" if default_file else
                   "TOML config file (its [assembler], [rate_limit] and [hooks]; none is read unless given)")
    p.add_argument("--group-by", choices=["ip", "ip-port"],
                   help="group datagrams by sender IP (default) or by IP and port")
    p.add_argument("--idle-timeout", type=float, metavar="SECONDS",
                   help="close a report after this much silence (default 2)")


def _add_runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dsn", help="Sentry DSN (overrides the config file)")
    p.add_argument("--state-dir", metavar="DIR", help="state directory for the outbox and journal")
    p.add_argument("--log-format", choices=["auto", "json", "console"], help="log format on stderr")


def _add_store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML config file")
    p.add_argument("--state-dir", metavar="DIR", help="state directory (default from config)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kpr-omprog", description="Kernel crash reports from netconsole to Sentry.",
                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"kpr-omprog {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("replay", help="print the reports in capture files as JSON lines",
                       description="Read capture files (one datagram per JSON line; '-' is stdin), run them "
                                   "through the assembler and the parsers with the capture's own clock, and "
                                   "print one JSON object per report in the order they closed.")
    p.add_argument("files", nargs="+", metavar="FILE")
    _add_config_args(p, default_file=False)

    p = sub.add_parser("omprog", help="run under rsyslog omprog (stdin: one JSON line per datagram)",
                       description="Run as rsyslog's omprog program: read the drop-in's JSON lines on stdin, "
                                   "answer OK per line once it is safe, report crashes to Sentry.")
    p.add_argument("--omprog", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--shard", type=int, metavar="K",
                   help="shard K of the sharded drop-in: state in <state_dir>/shard-K (reports, show and "
                        "status read every shard)")
    _add_config_args(p)
    _add_runtime_args(p)

    p = sub.add_parser("udp", help="listen on UDP (standalone mode, no rsyslog)",
                       description="Listen for netconsole datagrams on UDP and report crashes to Sentry.")
    p.add_argument("--listen", action="append", metavar="ADDR:PORT",
                   help="address to listen on, e.g. 0.0.0.0:514 or [::]:514 (repeatable; default from config)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="N receiving processes on the port (SO_REUSEPORT), a host always on the same one; "
                        "state of worker K in <state_dir>/shard-K (default udp.workers, 1)")
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # set by the supervisor
    _add_config_args(p)
    _add_runtime_args(p)

    p = sub.add_parser("reports", help="list stored reports (time, host, title, level, delivery state)")
    p.add_argument("--json", action="store_true", help="one JSON object per report")
    p.add_argument("--limit", type=int, default=50, metavar="N",
                   help="newest N reports (default 50; with --follow, the ones shown before it follows)")
    p.add_argument("--host", metavar="IP|NETWORK", help="only reports from this host, or from hosts in this network "
                                                         "(10.0.0.7, 10.0.0.0/24, 2001:db8::/32)")
    p.add_argument("--since", metavar="TIME", help="only reports since TIME (2026-11-29, 2026-11-29T10:00, or 2h, 30m)")
    p.add_argument("--title", metavar="TEXT", help="only reports whose title contains TEXT")
    p.add_argument("--follow", "-f", action="store_true",
                   help="then print each report as it is stored, until interrupted (Ctrl-C), as journalctl -f does")
    p.add_argument("--wait", type=float, metavar="SECONDS",
                   help="when no report matches yet, wait up to SECONDS for one to be stored (exit 1 if none is); "
                        "with --follow, stop following after SECONDS")
    _add_store_args(p)

    p = sub.add_parser("show", help="one stored report: title, tags, extra, fingerprint and the full log",
                       description="Print everything the Sentry event of a stored report carries, and its full "
                                   "log (kept until the report is delivered). ID: its event id or a unique prefix "
                                   "(the ID column of `kpr-omprog reports`).")
    p.add_argument("event_id", metavar="ID")
    p.add_argument("--json", action="store_true", help="the row, the event and the log as one JSON object")
    _add_store_args(p)

    p = sub.add_parser("status", help="is it running, what waits, what needs a human (exit 1 if something does)",
                       description="Whether anything receives, for what install.sh installed (the file "
                                   "'installed' beside the config): under rsyslog, rsyslogd running with the "
                                   "drop-in loaded and its UDP port bound; standalone, the receiver running. "
                                   "Then, from the state directory: whether a receiver holds it, the outbox "
                                   "(waiting, oldest, dead, fill against its cap) and the journal of open "
                                   "reports. Exits 1 when something needs a human: nothing receiving, "
                                   "dead-lettered reports, a report waiting longer than --max-wait, or a full "
                                   "outbox. For cron or a health check.")
    p.add_argument("--max-wait", type=float, default=3600, metavar="SECONDS",
                   help="a report undelivered for longer needs a human (default 3600)")
    _add_store_args(p)

    _add_hosts_parser(sub)

    p = sub.add_parser("symbols", help="which kernel releases seen so far have debug files on this host",
                       description="For every kernel release in the stored reports: whether its vmlinux and "
                                   "module debug files are found (symbols.dirs and the distributions' layouts "
                                   "under symbols.standard_root), so its stack traces get source lines, and how "
                                   "many of its reports got them.")
    p.add_argument("--json", action="store_true", help="one JSON object per release")
    _add_store_args(p)

    p = sub.add_parser("check-config", help="validate a config file and its hooks")
    p.add_argument("--config", metavar="FILE", help="TOML config file (default /etc/kpr-omprog/config.toml)")

    p = sub.add_parser("capture", help="record UDP datagrams to a capture file",
                       description="Listen on UDP and write every datagram as a capture line "
                                   '{"t", "src", "data_b64"}, for replay later.')
    p.add_argument("--listen", required=True, action="append", metavar="ADDR:PORT",
                   help="address to listen on, e.g. 0.0.0.0:6666 or [::]:6666 (repeatable)")
    p.add_argument("--out", metavar="FILE", default="-", help="output file (default stdout)")
    p.add_argument("--count", type=int, metavar="N", help="stop after N datagrams")
    p.add_argument("--seconds", type=float, metavar="S", help="stop after S seconds")
    _add_netconsole_script(sub)
    return parser


def _add_netconsole_script(sub: Any) -> None:
    p = sub.add_parser("netconsole-script", help="print a sh script that sets up netconsole on a client",
                       description="Print a POSIX sh script to run as root on a client, e.g. `kpr-omprog "
                                   "netconsole-script --server 192.0.2.10 --tag dc=ams1 | ssh root@web1 sh`. It "
                                   "finds the route, interface, source address and next hop's MAC, creates a "
                                   "netconsole target with everything the client's kernel offers (extended "
                                   "format, release, sysdata, one userdata entry per tag), keeps it across "
                                   "reboots and ends with a test line. A second run changes nothing; --remove "
                                   "undoes it all.")
    p.add_argument("--server", metavar="ADDR", help="this receiver's IP address as the client reaches it")
    p.add_argument("--port", type=int, default=514, metavar="N", help="the receiver's UDP port (default 514)")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                   help="a label the client sends with every line (netconsole userdata; repeatable)")
    p.add_argument("--heartbeat", metavar="INTERVAL",
                   help="also write a heartbeat line at this interval (1d, 12h, 30m, 45s), so a client "
                        "whose netconsole broke shows up as silent")
    p.add_argument("--remove", action="store_true", help="print the script that undoes the setup")


def _config(args: argparse.Namespace) -> Config:
    path = getattr(args, "config", None)
    cfg = load(path) if path or args.command != "replay" else Config()
    asm = cfg.assembler
    if getattr(args, "group_by", None):
        asm = replace(asm, group_by=args.group_by)
    if getattr(args, "idle_timeout", None) is not None:
        try:
            asm = replace(asm, idle_timeout=args.idle_timeout)
        except ValueError as e:
            raise ConfigError(f"--idle-timeout {args.idle_timeout:g}: {e}") from None
    cfg = replace(cfg, assembler=asm)
    if getattr(args, "dsn", None) is not None:
        cfg = replace(cfg, dsn=args.dsn or None)
    if getattr(args, "state_dir", None):
        cfg = replace(cfg, state_dir=args.state_dir)
    if getattr(args, "workers", None) is not None:
        cfg = replace(cfg, udp=replace(cfg.udp, workers=args.workers))
    shard = getattr(args, "shard", None)
    shard = getattr(args, "worker", None) if shard is None else shard
    if shard is not None:
        from .shards import MAX_SHARDS, shard_dir, shard_metrics_file

        if not 0 <= shard < MAX_SHARDS:
            raise ConfigError(f"--shard {shard}: must be 0-{MAX_SHARDS - 1}")
        cfg = replace(cfg, state_dir=shard_dir(cfg.state_dir, shard),
                      metrics_file=shard_metrics_file(cfg.metrics_file, shard) if cfg.metrics_file else "")
    if getattr(args, "log_format", None):
        cfg = replace(cfg, log_format=args.log_format)
    if getattr(args, "listen", None) and args.command == "udp":
        for item in args.listen:
            parse_listen(item)
        cfg = replace(cfg, udp=replace(cfg.udp, listen=tuple(args.listen)))
    validate(cfg)
    return cfg


def _cmd_replay(args: argparse.Namespace, cfg: Config) -> int:
    from .runtime import describe, parsers_from_config
    from .sources.replay import read_captures, replay

    logs.configure("json", "warning")
    parsers = parsers_from_config(cfg)
    gate: ReportGate[Any] = ReportGate(cfg.rate_limit)
    router = Router(cfg) if cfg.routes else None  # with routes: each report says which it takes
    out = sys.stdout
    for report in replay(read_captures(args.files), Assembler(cfg.assembler)):
        d = describe(report, parsers, router)
        # Every report is printed; the receiver would fold the ones marked (see rate_limit).
        t = report.last_seen
        d["rate_limited"] = not (gate.admit_host(report.host, t)
                                 and gate.admit_crash(report.host, tuple(d["fingerprint"]), t))
        out.write(json.dumps(d, ensure_ascii=False) + "\n")
    out.flush()
    return 0


def _cmd_omprog(args: argparse.Namespace, cfg: Config) -> int:
    from .runtime import parsers_from_config
    from .sources.omprog import run_omprog

    logs.configure(cfg.log_format, cfg.log_level)
    parsers = parsers_from_config(cfg)
    if args.shard is not None:
        from .shards import adopt_unsharded

        adopt_unsharded(os.path.dirname(cfg.state_dir), cfg.state_dir)
    return run_omprog(cfg, parsers, config_path=args.config)


def _cmd_udp(args: argparse.Namespace, cfg: Config) -> int:
    from .runtime import parsers_from_config
    from .sources.udp import run_udp

    logs.configure(cfg.log_format, cfg.log_level)
    parsers = parsers_from_config(cfg)  # a bad hook fails here, once, not in N workers
    if args.worker is None and cfg.udp.workers > 1:
        from .sources.workers import run_workers

        return run_workers(_worker_argv(args), cfg.udp.workers)
    return run_udp(cfg, parsers, reuseport=args.worker is not None)


def _worker_argv(args: argparse.Namespace) -> list[str]:
    """The supervisor's own ``udp`` arguments, for its workers (``--workers`` left out)."""
    argv: list[str] = args.argv
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--workers":
            skip = True
            continue
        if not a.startswith("--workers="):
            out.append(a)
    return out


def _cmd_reports(args: argparse.Namespace, cfg: Config) -> int:
    if args.limit < 1:
        raise ConfigError(f"--limit {args.limit}: must be 1 or more")
    if args.wait is not None and not 0 < args.wait <= 7 * 86400:
        raise ConfigError(f"--wait {args.wait:g}: must be more than 0 seconds (and at most a week)")
    match = _ReportFilter(args)
    if args.follow:
        return _follow(args, cfg, match)
    if args.wait is not None and not _wait_for_match(cfg, match, args.wait):
        raise _Unmet(f"no report {match.said or 'stored'} within {args.wait:g} s ({cfg.state_dir})")
    stores = _stores_for(cfg)
    rows = sorted((r for _, store in stores
                   for r in store.reports(args.limit, since=match.since, title=match.title, hosts=match.hosts)),
                  key=lambda r: r["created"], reverse=True)[:args.limit]
    for r in rows:
        r["dsn"] = _shown_dsn(r["dsn"])
    nothing = f"no stored report {match.said}" if not rows and match.said else ""
    if args.json:
        for r in rows:
            sys.stdout.write(json.dumps(r) + "\n")
        if nothing:  # stdout stays one JSON object a line
            sys.stderr.write(f"kpr-omprog reports: {nothing}\n")
        return 0
    counts: dict[str, int] = {}
    for _, store in stores:
        for state, n in store.counts().items():
            counts[state] = counts.get(state, 0) + n
    sys.stdout.write("stored: " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none") + "\n")
    cap = cfg.delivery.disk_cap_bytes
    for folder, store in stores:
        journal = os.path.join(folder, "journal.bin")
        held = used_bytes(journal)
        full = store.pending_bytes >= cap * 0.95
        shard = f"{os.path.basename(folder)} " if len(stores) > 1 else ""
        sys.stdout.write(f"{shard}outbox: {store.pending_bytes / 2**20:.1f} of {cap / 2**20:.1f} MiB "
                         "(delivery.disk_cap_bytes)"
                         + ("  FULL: new reports wait in the journal until there is room" if full else "")
                         + f"; journal: {held / 1024:.1f} KiB of open reports"
                         + (" and reports waiting for the outbox" if full else "") + "\n")
    routed = any(r["route"] != DEFAULT_ROUTE for r in rows)  # a route column only where routes are used
    ids = _short_ids([r["event_id"] for r in rows])
    for r in rows:
        sys.stdout.write(_report_line(r, ids[r["event_id"]], routed))
    if nothing:
        sys.stdout.write(nothing + "\n")
    return 0


class _Unmet(Exception):
    """What was waited for did not happen: one line, exit 1."""


#: the fewest characters of an event id ``reports`` prints (``show`` takes any unique prefix)
SHORT_ID = 8


def _short_ids(event_ids: list[str]) -> dict[str, str]:
    """Each event id's first SHORT_ID characters, more where two listed ones share them."""
    n = SHORT_ID
    while n < 32 and len({e[:n] for e in event_ids}) < len(set(event_ids)):
        n += 2
    return {e: e[:n] for e in event_ids}


def _report_line(r: dict[str, Any], short: str, routed: bool) -> str:
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(r["created"], UTC).strftime("%Y-%m-%d %H:%M:%S")
    err = f"  ({r['last_error']})" if r["last_error"] and r["state"] != "delivered" else ""
    route = f"{r['route']:<12} " if routed else ""
    return f"{short}  {when}Z  {r['host']:<15} {route}{r['level']:<7} {r['state']:<9} {r['title']}{err}\n"


class _ReportFilter:
    """``reports``' --host, --since and --title, checked once."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.since = _since(args.since)
        self.title: str | None = args.title or None
        self.hosts = _host_test(args.host) if args.host else None
        said = [f"--host {args.host}" if args.host else "", f"--since {args.since}" if args.since else "",
                f"--title {args.title!r}" if args.title else ""]
        #: how the filters were given, for "no stored report matches ..." ("" without filters)
        self.said = ("matches " + " ".join(x for x in said if x)) if any(said) else ""

    def __call__(self, r: dict[str, Any]) -> bool:
        return ((self.since is None or r["created"] >= self.since) and (not self.title or self.title in r["title"])
                and (self.hosts is None or self.hosts(r["host"])))


def _host_test(value: str) -> Any:
    """``--host``: an address or a network; a test of a stored host (an IPv4 sender seen on a
    dual-stack socket as ``::ffff:10.0.0.7`` is in 10.0.0.0/8)."""
    import ipaddress

    try:
        net = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ConfigError(f"--host {value!r}: not an address or a network (e.g. 10.0.0.7, 10.0.0.0/24, "
                          "2001:db8::/32)") from None

    def test(host: str) -> bool:
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        mapped = getattr(addr, "ipv4_mapped", None)
        return addr in net or (mapped is not None and mapped in net)

    return test


def _open_stores(cfg: Config, opened: dict[str, Any]) -> dict[str, Any]:
    """``opened`` with the stores of the state directory and its shards that exist now added."""
    from .shards import STORE_FILE, store_dirs
    from .store import Store

    for d in store_dirs(cfg.state_dir):
        if d not in opened:
            opened[d] = Store(os.path.join(d, STORE_FILE), cfg.delivery.disk_cap_bytes, cfg.delivery.dead_retention)
    return opened


def _stop_on_signals() -> Any:
    """An event set by SIGINT or SIGTERM: a follower ends quietly, exit 0."""
    import threading

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return stop


#: how often --follow and --wait look for new rows (one indexed query a store)
POLL_SECONDS = 0.25


def _wait_for_match(cfg: Config, match: _ReportFilter, seconds: float) -> bool:
    """Whether a report matching the filters is stored within ``seconds`` (the store may not
    exist yet: under rsyslog the receiver starts at the first datagram)."""
    stop = _stop_on_signals()
    end = time.monotonic() + seconds
    opened: dict[str, Any] = {}
    try:
        while True:
            for store in _open_stores(cfg, opened).values():
                if store.reports(1, since=match.since, title=match.title, hosts=match.hosts):
                    return True
            if time.monotonic() >= end or stop.wait(min(POLL_SECONDS, max(0.0, end - time.monotonic()))):
                return False
    finally:
        for store in opened.values():
            store.close()


def _follow(args: argparse.Namespace, cfg: Config, match: _ReportFilter) -> int:
    """The newest --limit matching reports, oldest first, then each report as it is stored,
    until SIGINT/SIGTERM (or --wait seconds). Stores that appear meanwhile (the first
    datagram under rsyslog, a new shard) are followed from their first row."""
    stop = _stop_on_signals()
    end = time.monotonic() + args.wait if args.wait is not None else None
    opened = _open_stores(cfg, {})
    pos = {d: store.last_rowid() for d, store in opened.items()}
    shown: set[str] = set()
    routed = bool(cfg.routes)
    out = sys.stdout

    def emit(r: dict[str, Any]) -> None:
        r["dsn"] = _shown_dsn(r["dsn"])
        out.write(json.dumps(r) + "\n" if args.json else _report_line(r, r["event_id"][:SHORT_ID], routed))

    try:
        first = sorted((r for store in opened.values()
                        for r in store.reports(args.limit, since=match.since, title=match.title, hosts=match.hosts)),
                       key=lambda r: r["created"])[-args.limit:]
        for r in first:
            shown.add(r["event_id"])  # stored while it was read: not printed twice
            emit(r)
        out.flush()
        sys.stderr.write(f"kpr-omprog reports: following {cfg.state_dir}"
                         + (f", reports that {match.said}" if match.said else "") + " (Ctrl-C ends)\n")
        while not stop.is_set() and (end is None or time.monotonic() < end):
            for d, store in _open_stores(cfg, opened).items():
                for rowid, r in store.newer_reports(pos.get(d, 0)):
                    pos[d] = rowid
                    if match(r) and r["event_id"] not in shown:
                        emit(r)
            out.flush()
            stop.wait(POLL_SECONDS if end is None else max(0.0, min(POLL_SECONDS, end - time.monotonic())))
    finally:
        for store in opened.values():
            store.close()
    return 0


def _shown_dsn(dsn: str | None) -> str | None:
    """A stored row's DSN fit to print (None: the top-level DSN, for rows from before routes)."""
    return redact_dsn(dsn) if dsn else None


def _cmd_symbols(args: argparse.Namespace, cfg: Config) -> int:
    from .symbolizer import find_debug_files

    # every shard's outbox: a release seen by any of them, its counts summed
    merged: dict[str, dict[str, Any]] = {}
    for _, store in _stores_for(cfg):
        for r in store.kernel_releases():
            m = merged.setdefault(r["release"], dict(r, reports=0, symbolized=0))
            m["first_seen"] = min(m["first_seen"], r["first_seen"])
            m["last_seen"] = max(m["last_seen"], r["last_seen"])
            m["reports"] += r["reports"]
            m["symbolized"] += r["symbolized"]
        store.close()
    rows = sorted(merged.values(), key=lambda r: r["last_seen"], reverse=True)
    if not rows and not args.json:
        sys.stdout.write("no kernel release seen yet\n")
    for r in rows:
        files = find_debug_files(r["release"], cfg.symbols)
        r.update(vmlinux=files.vmlinux, module_debug_files=len(files.modules), has_symbols=files.found)
        if args.json:
            r["looked_in"] = files.looked_in
            sys.stdout.write(json.dumps(r) + "\n")
            continue
        state = "symbols" if files.found else "no symbols"
        sys.stdout.write(f"{r['release']:<28} {state:<10}  vmlinux: {files.vmlinux or 'none'}; module debug files: "
                         f"{len(files.modules)}; reports: {r['reports']}, with source lines: {r['symbolized']}\n")
    missing = [r["release"] for r in rows if not r["has_symbols"]]
    if missing and not args.json:
        sys.stdout.write(f"no debug files for {len(missing)} release(s): install linux-image-<release>-dbg (Debian; "
                         "Ubuntu: linux-image-unsigned-<release>-dbgsym) or kernel-debuginfo-<release> (RHEL, "
                         f"Fedora), or put vmlinux and .ko files under <dir>/<release>/ for a symbols.dirs entry; "
                         f"looked under {cfg.symbols.standard_root}"
                         + (f" and {', '.join(cfg.symbols.dirs)}" if cfg.symbols.dirs else "") + "\n")
    return 0


def _since(value: str | None) -> float | None:
    """``2h`` / ``30m`` / ``45s`` / ``3d`` ago, or an ISO date or time (UTC unless it says)."""
    if not value:
        return None
    import re
    from datetime import UTC, datetime

    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", value.strip())
    if m:
        return time.time() - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    try:
        t = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ConfigError(f"--since {value!r}: expected 2h, 30m, 3d or a date such as 2026-11-29T10:00") from None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def _stores_for(cfg: Config) -> list[tuple[str, Any]]:
    """(directory, store) of the state directory and of each of its shards (see shards.py)."""
    from .shards import STORE_FILE, store_dirs
    from .store import Store

    dirs = store_dirs(cfg.state_dir)
    if not dirs:
        path = os.path.join(cfg.state_dir, STORE_FILE)
        raise ConfigError(f"state_dir {cfg.state_dir}: no store yet ({path} does not exist, nor shard-K/{STORE_FILE})")
    return [(d, Store(os.path.join(d, STORE_FILE), cfg.delivery.disk_cap_bytes, cfg.delivery.dead_retention))
            for d in dirs]


#: the widest key `show` aligns its values to; a longer one (a hook's extra) sits one space off
_SHOW_KEY_WIDTH = 28


def _show_value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)


def _applies(v: Any) -> bool:
    """A value worth a line: not empty, not "none" (no flags), not a 0 port (omprog has none)."""
    return v not in (None, "", "none", [], {})


def _in_log(message: str, log: str) -> bool:
    """The default message (the title, then the log or its key lines): nothing the log lacks."""
    return all(line in log for line in message.split("\n")[2:]
               if line and not (line.startswith("[... ") and line.endswith(" in the full log ...]")))


def _show_fields(r: dict[str, Any]) -> list[tuple[str, str]]:
    """What `show` prints of a stored report, each field once, in the event's order."""
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(r["created"], UTC).strftime("%Y-%m-%d %H:%M:%S")
    state = r["state"] + (f" ({r['last_error']})" if r["last_error"] and r["state"] != "delivered" else "")
    fields = [("event_id", r["event_id"]), ("created", f"{when}Z"), ("host", r["host"]), ("title", r["title"]),
              ("level", r["level"]), ("route", f"{r['route']} ({r['dsn'] or 'the top-level dsn'})"),
              ("state", state)]
    event = r["event"]
    if event is None:
        return fields
    fields.append(("fingerprint", json.dumps(event.get("fingerprint"))))
    exc = (event.get("exception") or {}).get("values") or [{}]
    frames = (exc[0].get("stacktrace") or {}).get("frames") or []
    if frames:
        # innermost first, as the kernel prints a trace; * marks Sentry's in-app frames
        fields.append(("stack", "\n".join(f"{'*' if f.get('in_app') else ' '} {f.get('function')} "
                                          f"[{f.get('package')}]" for f in reversed(frames))))
    message = event.get("logentry") or event.get("message")
    text = message.get("formatted", message.get("message", "")) if isinstance(message, dict) else message
    if text and not (r["log"] and text.startswith(f"{r['title']}\n\n") and _in_log(text, r["log"])):
        fields.append(("message", text))  # a hook's own message: the log below does not say it
    contexts = {f"{c}.{k}": v for c, ctx in sorted((event.get("contexts") or {}).items()) if isinstance(ctx, dict)
                for k, v in ctx.items() if k != "type"}
    for name in ("tags", "extra", "user", "contexts"):
        for k, v in sorted((contexts if name == "contexts" else event.get(name) or {}).items()):
            if not _applies(v) or ((name, k) == ("extra", "receiver_port") and v == 0):
                continue
            if (name == "user" or (name, k) == ("tags", "host")) and v == r["host"]:
                continue  # the host, said above
            if r["log"] and (name, k) in (("extra", "context"), ("extra", "start_line")):
                continue  # the log below begins with them
            fields.append((f"{name}.{k}", _show_value(v)))
    return fields


def _aligned(fields: list[tuple[str, str]]) -> str:
    """``key  value`` lines, values in one column, a multi-line value's lines under its first."""
    width = min(_SHOW_KEY_WIDTH, max(len(k) for k, _ in fields))
    out = []
    for key, value in fields:
        first, *rest = value.split("\n")
        out.append(f"{key:<{width}}  {first}".rstrip())
        pad = " " * (max(width, len(key)) + 2)
        out += [(pad + line).rstrip() for line in rest]
    return "\n".join(out) + "\n"


def _cmd_show(args: argparse.Namespace, cfg: Config) -> int:
    wanted = args.event_id.replace("-", "").lower()
    found = [r for _, store in _stores_for(cfg) if (r := store.report(wanted)) is not None]
    r = found[0] if len(found) == 1 else None
    if r is None:
        raise ConfigError(f"no single stored report with an event id starting {args.event_id!r} "
                          "(the ID column of kpr-omprog reports)")
    r["dsn"] = _shown_dsn(r["dsn"])
    if args.json:
        sys.stdout.write(json.dumps(r, ensure_ascii=False) + "\n")
        return 0
    out = sys.stdout
    out.write(_aligned(_show_fields(r)))
    if r["event"] is None:
        out.write("(the event and log were dropped once Sentry took them; see the event there)\n")
        return 0
    out.write("--- kernel.log ---\n" + (r["log"] or ""))
    return 0


def _cmd_status(args: argparse.Namespace, cfg: Config) -> int:
    from .receiving import check
    from .store import state_dir_holder

    stores = _stores_for(cfg)
    now = time.time()
    problems = []
    out = sys.stdout
    # the receiving path of what is installed, first: "ok" with nothing receiving says nothing
    config = getattr(args, "config", None) or (str(DEFAULT_CONFIG_PATH) if DEFAULT_CONFIG_PATH.exists() else None)
    receiving = check(os.path.dirname(os.path.abspath(config)) if config else None,
                      [h for folder, _ in stores if (h := state_dir_holder(folder))])
    said = "NO: " + receiving.line.removeprefix("nothing receives: ") if receiving.problem else receiving.line
    out.write(f"receiving {said}\n")
    if receiving.problem:
        problems.append(receiving.line)
    for folder, store in stores:
        counts = store.counts()
        holder = state_dir_holder(folder)
        out.write(f"state_dir {folder}\n")
        out.write(f"receiver  {'running, pid ' + holder if holder else 'none holds the state directory'}"
                  + ("" if holder else " (under rsyslog it starts at the first datagram)") + "\n")
        waiting = counts.get("pending", 0)
        oldest = store.oldest("pending")
        age = now - oldest if oldest is not None else 0.0
        out.write(f"outbox    {waiting} waiting for Sentry" + (f", the oldest for {age:,.0f} s" if waiting else "")
                  + f"; {counts.get('local', 0)} kept locally (no DSN); {counts.get('delivered', 0)} delivered; "
                  f"{counts.get('dead', 0)} dead\n")
        cap = cfg.delivery.disk_cap_bytes
        out.write(f"disk      {store.pending_bytes / 2**20:.1f} of {cap / 2**20:.1f} MiB (delivery.disk_cap_bytes)\n")
        journal = os.path.join(folder, "journal.bin")
        size = used_bytes(journal)
        out.write(f"journal   {size / 1024:.1f} KiB of open reports\n")
        h = store.host_counts(now, cfg.hosts.silent_after)
        out.write(f"hosts     {h['hosts_heard_hour']} heard in the last hour, {h['hosts_heard_day']} in the last day; "
                  f"{h['hosts_silent']} of {h['hosts_stored']} silent for {cfg.hosts.silent_after:,.0f} s "
                  "(kpr-omprog hosts --silent)\n")
        where = f"{folder}: " if len(stores) > 1 else ""
        if counts.get("dead", 0):
            problems.append(f"{where}{counts['dead']} reports dead-lettered (kpr-omprog reports shows why)")
        if waiting and age > args.max_wait:
            problems.append(f"{where}a report has waited {age:,.0f} s for Sentry (is the DSN right, is Sentry "
                            "reachable?)")
        if store.pending_bytes >= 0.95 * cap:
            problems.append(f"{where}the outbox is full: new reports wait in the journal")
    for p in problems:
        out.write(f"NEEDS A HUMAN: {p}\n")
    out.write("ok\n" if not problems else "")
    return 1 if problems else 0


def _add_hosts_parser(sub: Any) -> None:
    p = sub.add_parser("hosts", help="every sender heard: when, its kernel, formats, tags, lines lost, last test line",
                       description="One line per sender the receiver heard more than once (the hosts table, "
                                   "written every hosts.flush_interval; last-heard times are as coarse as "
                                   "assembler.heard_resolution), most recently heard first. With --silent, only "
                                   "the hosts heard before but not within that time: with a heartbeat "
                                   "(netconsole-script --heartbeat), the machines whose netconsole broke.")
    p.add_argument("--silent", metavar="AGE", help="only hosts not heard for AGE (2d, 12h, 30m)")
    p.add_argument("--release", metavar="R", help="only hosts running this kernel release")
    p.add_argument("--tag", metavar="K=V", help="only hosts whose netconsole userdata has K=V")
    p.add_argument("--json", action="store_true", help="one JSON object per host")
    _add_store_args(p)


def _duration(flag: str, value: str) -> float:
    """``2d`` / ``12h`` / ``30m`` / ``45s`` in seconds; one clear line for anything else."""
    import re

    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", value.strip())
    if not m:
        raise ConfigError(f"{flag} {value!r}: expected a duration such as 2d, 12h, 30m or 45s")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _cmd_hosts(args: argparse.Namespace, cfg: Config) -> int:
    from datetime import UTC, datetime

    from .coverage import formats_name

    silent = _duration("--silent", args.silent) if args.silent else None
    tag: tuple[str, str] | None = None
    if args.tag is not None:
        k, eq, v = args.tag.partition("=")
        if not eq or not k:
            raise ConfigError(f"--tag {args.tag!r}: expected KEY=VALUE (a netconsole userdata entry)")
        tag = (k, v)
    rows = sorted((r for _, store in _stores_for(cfg) for r in store.hosts(silent, args.release, tag)),
                  key=lambda r: r["last_heard"], reverse=True)

    def when(t: float | None) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if t is not None else "-"

    for r in rows:
        if args.json:
            sys.stdout.write(json.dumps({**r, "formats": formats_name(r["formats"])}, ensure_ascii=False) + "\n")
            continue
        tags = ",".join(f"{k}={v}" for k, v in r["tags"].items()) or "-"
        special = f"{r['special'].split(' from ')[0].rsplit(' ', 1)[-1]} {when(r['special_at'])}" if r["special"] \
            else "no test line"
        title = f"  last: {r['title']}" if r["title"] else ""
        sys.stdout.write(f"{when(r['last_heard'])}  {r['key']:<15} {r['release'] or '-':<24} "
                         f"{formats_name(r['formats']):<8} {tags:<20} {r['datagrams']} datagrams, {r['lost']} lost, "
                         f"{r['reports']} reports; {special}{title}\n")
    if not args.json:
        sys.stdout.write(f"{len(rows)} hosts" + (f" silent for {args.silent}" if args.silent else "") + "\n")
    return 0


def _cmd_check_config(args: argparse.Namespace, cfg: Config) -> int:
    from .runtime import parsers_from_config

    parsers_from_config(cfg)
    where = args.config or (str(DEFAULT_CONFIG_PATH) if DEFAULT_CONFIG_PATH.exists() else "defaults (no config file)")
    sys.stdout.write(f"{where}: OK (dsn {'set' if cfg.dsn else 'not set: reports stay local'}, "
                     f"state_dir {cfg.state_dir})\n")
    if cfg.routes:
        router = Router(cfg)
        sys.stdout.write(f"routes (first match wins; {len(cfg.routes)} of max_routes {cfg.max_routes}):\n")
        for conf, route in zip(cfg.routes, router.routes, strict=True):
            sys.stdout.write(f"  {route.label}: {', '.join(conf.networks)} -> {_route_target(route)}\n")
        sys.stdout.write(f"  {DEFAULT_ROUTE}: every other sender -> {_route_target(router.default)}\n")
    return 0


def _route_target(route: Route) -> str:
    """Where a route sends, for check-config: its DSN with the key hidden, environment and tags."""
    where = redact_dsn(route.dsn) if route.dsn else "kept locally (no dsn)"
    tags = ", ".join(f"{k}={v}" for k, v in route.tags)
    return (where + (f", environment {route.environment}" if route.environment else "")
            + (f", tags {tags}" if tags else ""))


def _cmd_capture(args: argparse.Namespace, cfg: Config) -> int:
    import selectors

    from .sources.udp import bind

    socks = [bind(*parse_listen(item), cfg.udp.rcvbuf) for item in args.listen]
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    out: Any = sys.stdout if args.out == "-" else open(args.out, "a", encoding="ascii")  # noqa: SIM115
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    end = time.monotonic() + args.seconds if args.seconds else None
    n = 0
    try:
        while not stop and (args.count is None or n < args.count):
            timeout = 0.5 if end is None else max(0.0, min(0.5, end - time.monotonic()))
            if end is not None and time.monotonic() >= end:
                break
            for key, _ in sel.select(timeout):
                data, src = key.fileobj.recvfrom(65535)  # type: ignore[union-attr]
                out.write(format_line(data, (src[0], src[1]), time.time()))
                n += 1
            out.flush()
    finally:
        out.flush()
        if out is not sys.stdout:
            out.close()
    sys.stderr.write(f"kpr-omprog capture: {n} datagrams\n")
    return 0


def _cmd_netconsole_script(args: argparse.Namespace) -> int:
    from .netconsole_script import ScriptError, render, settings

    try:
        s = settings(args.server, args.port, args.tag, args.heartbeat, args.remove)
    except ScriptError as e:
        sys.stderr.write(f"kpr-omprog netconsole-script: error: {e}\n")
        return 2
    sys.stdout.write(render(s, __version__))
    return 0


def _answer_start_before_exit(args: argparse.Namespace) -> None:
    """Under rsyslog, a program that fails before its start ``OK`` makes rsyslogd 8.2302
    crash (SIGSEGV, measured with the shipped drop-in; rsyslog issue 5017), taking the
    host's own logging with it. So a receiver that cannot start (a config mistake, an
    unwritable state directory) answers ``OK`` first and then exits: rsyslog sees an
    ordinary failure, keeps the lines queued and starts it again every resumeInterval."""
    if args.command != "omprog" or not getattr(args, "omprog", False):
        return
    started = sys.modules.get("kpr_omprog.sources.omprog")
    if started is not None and getattr(started, "answered_start", False):
        return  # its start OK is out: another would acknowledge a line not processed
    try:
        sys.stdout.write("OK\n")
        sys.stdout.flush()
    except OSError:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not args.command:
        parser.print_help()
        return 2
    rc = 1
    try:
        rc = _main(args)
        return rc
    finally:
        if rc != 0:
            _answer_start_before_exit(args)


def _main(args: argparse.Namespace) -> int:
    try:
        if args.command == "netconsole-script":
            return _cmd_netconsole_script(args)
        cfg = _config(args)
        handler = {"replay": _cmd_replay, "capture": _cmd_capture, "omprog": _cmd_omprog, "udp": _cmd_udp,
                   "reports": _cmd_reports, "show": _cmd_show, "status": _cmd_status,
                   "check-config": _cmd_check_config, "symbols": _cmd_symbols, "hosts": _cmd_hosts}[args.command]
        return handler(args, cfg)
    except ConfigError as e:
        where = str(e)
        if where.startswith("hooks."):  # loaded from a file: say which
            path = getattr(args, "config", None) or (DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None)
            where = f"{path}: {where}" if path else where
        sys.stderr.write(f"kpr-omprog {args.command}: error: {where}\n")
        return 2
    except CaptureError as e:
        sys.stderr.write(f"kpr-omprog {args.command}: error: {e}\n")
        return 2
    except StoreError as e:
        sys.stderr.write(f"kpr-omprog {args.command}: error: {e}\n")
        return 1
    except _Unmet as e:
        sys.stderr.write(f"kpr-omprog {args.command}: {e}\n")
        return 1
    except BrokenPipeError:
        # `kpr-omprog reports | head`: the reader left; nothing more to say. stdout is
        # pointed at /dev/null so the interpreter's own flush at exit does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as e:
        what = f"{e.filename}: {e.strerror}" if e.filename else str(e)
        sys.stderr.write(f"kpr-omprog {args.command}: error: {what}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
