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
from .ratelimit import ReportGate
from .routes import Route, Router
from .store import StoreError

__all__ = ["main"]

EPILOG = """\
commands:
  omprog        what rsyslog runs (omprog): read datagrams as JSON lines on stdin
  udp           listen for netconsole on UDP yourself (standalone mode)
  reports       list stored reports and their delivery state (--host, --since, --title)
  show ID       one stored report: everything its Sentry event carries, and the full log
  status        is it running, what waits, what needs a human (exit 1 if something does)
  replay        print the reports a capture file holds, one JSON object per line
  capture       record live UDP datagrams in the capture format
  check-config  validate the config file
  symbols       which kernel releases seen so far have debug files here (source lines)

Without a DSN every report is kept in the local store (see `kpr-omprog reports`)."""


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
    p.add_argument("--limit", type=int, default=50, metavar="N", help="newest N reports (default 50)")
    p.add_argument("--host", metavar="IP", help="only reports from this host")
    p.add_argument("--since", metavar="TIME", help="only reports since TIME (2026-11-29, 2026-11-29T10:00, or 2h, 30m)")
    p.add_argument("--title", metavar="TEXT", help="only reports whose title contains TEXT")
    _add_store_args(p)

    p = sub.add_parser("show", help="one stored report: title, tags, extra, fingerprint and the full log",
                       description="Print everything the Sentry event of a stored report carries, and its full "
                                   "log (kept until the report is delivered). ID: its event id or a unique prefix "
                                   "(the first column of `kpr-omprog reports --json`).")
    p.add_argument("event_id", metavar="ID")
    p.add_argument("--json", action="store_true", help="the row, the event and the log as one JSON object")
    _add_store_args(p)

    p = sub.add_parser("status", help="is it running, what waits, what needs a human (exit 1 if something does)",
                       description="From the state directory alone: whether a receiver holds it, the outbox "
                                   "(waiting, oldest, dead, fill against its cap) and the journal of open "
                                   "reports. Exits 1 when something needs a human: dead-lettered reports, a "
                                   "report waiting longer than --max-wait, or a full outbox. For cron or a "
                                   "health check.")
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
    return parser


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
    from datetime import UTC, datetime

    stores = _stores_for(cfg)
    since = _since(args.since)
    rows = sorted((r for _, store in stores
                   for r in store.reports(args.limit, host=args.host, since=since, title=args.title)),
                  key=lambda r: r["created"], reverse=True)[:args.limit]
    for r in rows:
        r["dsn"] = _shown_dsn(r["dsn"])
    if args.json:
        for r in rows:
            sys.stdout.write(json.dumps(r) + "\n")
        return 0
    counts: dict[str, int] = {}
    for _, store in stores:
        for state, n in store.counts().items():
            counts[state] = counts.get(state, 0) + n
    sys.stdout.write("stored: " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none") + "\n")
    cap = cfg.delivery.disk_cap_bytes
    for folder, store in stores:
        journal = os.path.join(folder, "journal.bin")
        held = os.path.getsize(journal) if os.path.exists(journal) else 0
        full = store.pending_bytes >= cap * 0.95
        shard = f"{os.path.basename(folder)} " if len(stores) > 1 else ""
        sys.stdout.write(f"{shard}outbox: {store.pending_bytes / 2**20:.1f} of {cap / 2**20:.1f} MiB "
                         "(delivery.disk_cap_bytes)"
                         + ("  FULL: new reports wait in the journal until there is room" if full else "")
                         + f"; journal: {held / 1024:.1f} KiB of open reports"
                         + (" and reports waiting for the outbox" if full else "") + "\n")
    routed = any(r["route"] != DEFAULT_ROUTE for r in rows)  # a route column only where routes are used
    for r in rows:
        when = datetime.fromtimestamp(r["created"], UTC).strftime("%Y-%m-%d %H:%M:%S")
        err = f"  ({r['last_error']})" if r["last_error"] and r["state"] != "delivered" else ""
        route = f"{r['route']:<12} " if routed else ""
        sys.stdout.write(f"{when}Z  {r['host']:<15} {route}{r['level']:<7} {r['state']:<9} {r['title']}{err}\n")
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


def _cmd_show(args: argparse.Namespace, cfg: Config) -> int:
    from datetime import UTC, datetime

    wanted = args.event_id.replace("-", "").lower()
    found = [r for _, store in _stores_for(cfg) if (r := store.report(wanted)) is not None]
    r = found[0] if len(found) == 1 else None
    if r is None:
        raise ConfigError(f"no single stored report with an event id starting {args.event_id!r} "
                          "(see kpr-omprog reports --json)")
    r["dsn"] = _shown_dsn(r["dsn"])
    if args.json:
        sys.stdout.write(json.dumps(r, ensure_ascii=False) + "\n")
        return 0
    out = sys.stdout
    when = datetime.fromtimestamp(r["created"], UTC).strftime("%Y-%m-%d %H:%M:%S")
    out.write(f"event_id  {r['event_id']}\ncreated   {when}Z\nhost      {r['host']}\ntitle     {r['title']}\n"
              f"level     {r['level']}\nroute     {r['route']} ({r['dsn'] or 'the top-level dsn'})\n"
              f"state     {r['state']}"
              + (f" ({r['last_error']})" if r["last_error"] and r["state"] != "delivered" else "") + "\n")
    event = r["event"]
    if event is None:
        out.write("(the event and log were dropped once Sentry took them; see the event there)\n")
        return 0
    out.write(f"fingerprint {json.dumps(event.get('fingerprint'))}\n")
    message = event.get("logentry") or event.get("message")
    text = message.get("formatted", message.get("message", "")) if isinstance(message, dict) else message
    if text:
        out.write(f"message   {text}\n")
    for name in ("tags", "extra", "user"):
        for k, v in sorted((event.get(name) or {}).items()):
            out.write(f"{name}.{k} = {v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}\n")
    out.write("--- kernel.log ---\n" + (r["log"] or ""))
    return 0


def _cmd_status(args: argparse.Namespace, cfg: Config) -> int:
    from .store import state_dir_holder

    stores = _stores_for(cfg)
    now = time.time()
    problems = []
    out = sys.stdout
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
        size = os.path.getsize(journal) if os.path.exists(journal) else 0
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
