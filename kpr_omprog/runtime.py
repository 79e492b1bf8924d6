"""The runtime: closed reports through the rate limit, parsers and outbox, and the
journaled intake that turns datagrams into reports. The omprog, UDP and replay front
ends (:mod:`kpr_omprog.sources`) are thin adapters around it::

    store, delivery, pipeline = open_runtime(cfg, parsers)
    intake = Intake(pipeline, Assembler(cfg.assembler), open_journal(cfg))
    intake.recover(time.time())
    intake.feed(datagram, (ip, port), received_at, time.time())
    intake.flush()                   # before acknowledging the datagram
    intake.expire(time.time())       # now and then: timeouts, summaries, outbox retries

It imports the pure modules and the I/O below it (store, journal, delivery), never the
front ends or :mod:`kpr_omprog.receiver`.
"""

from __future__ import annotations

import os
import time
from collections import deque
from typing import Any

from .assembler import Assembler, Report
from .config import Config, ConfigError
from .event import build_event
from .hooks import Parsers, analyze_text, load_hook
from .journal import Context, Journal, JournalFull, Row
from .logs import get_logger, worth_logging
from .ratelimit import ReportGate
from .routes import Route, Router
from .store import Store, StoreFull
from .symbolizer import Symbolizer

__all__ = ["Intake", "Pipeline", "describe", "metrics_path", "open_journal", "open_runtime", "parsers_from_config"]

log = get_logger()


def describe(report: Report, parsers: Parsers, router: Router | None = None) -> dict[str, Any]:
    """What ``kpr-omprog replay`` prints for a report: its fields and everything parsed; with
    ``router``, the route it takes (its label, environment and tags)."""
    addr = [report.host, report.port]
    parsed = parsers.run(addr, report.text)
    route = router.match(report.host) if router is not None else None
    event, _ = (build_event(report, parsed, route.environment, route_tags=route.tags) if route is not None
                else build_event(report, parsed))
    d = report.to_dict()
    d.update(level=event["level"], title=parsed.title, fingerprint=parsed.fingerprint, message=parsed.message,
             tags=event["tags"], extra=event["extra"], user=event["user"], event_id=event["event_id"])
    if route is not None:
        d.update(route=route.label, environment=route.environment)
    return d


def parsers_from_config(cfg: Config, parsers: Parsers | None = None) -> Parsers:
    """The parsers the config's ``[hooks]`` name; raises ConfigError naming the key."""
    p = parsers or Parsers()
    h = cfg.hooks

    def hook(key: str, spec: str) -> Any:
        try:
            return load_hook(spec, h.dirs)
        except ValueError as e:
            raise ConfigError(f"hooks.{key}: {e}") from None

    for kind in ("title", "user", "fingerprint", "message"):
        spec = getattr(h, kind)
        if spec:
            getattr(p, f"register_parser_{kind}")(hook(kind, spec))
    if h.check:
        p.register_check_hook(hook("check", h.check))
    for spec in h.tag:
        p.register_parser_tag(hook("tag", spec))
    for spec in h.extra:
        p.register_parser_extra(hook("extra", spec))
    return p


class Pipeline:
    """A closed report -> rate limit -> parsers -> Sentry event (its sender's route: DSN,
    environment, tags) -> outbox row (-> delivery wakes up)."""

    def __init__(self, config: Config, parsers: Parsers, store: Store, delivery: Any = None) -> None:
        self.config = config
        self.parsers = parsers
        self.store = store
        self.delivery = delivery
        self.gate: ReportGate[Report] = ReportGate(config.rate_limit)
        self.router = Router(config)
        self._next_summary_check = 0.0
        # Reports the outbox refused (cap, full disk): retried every second. Their journal
        # rows stay until they are stored (see Intake), so a restart loses none of them.
        self.overflow: deque[tuple[dict[str, Any], bytes, Report, str, str, Route]] = deque()
        self._overflow_bytes = 0
        #: reports the outbox refused that are held in the journal only (memory bound bit)
        self.overflow_spilled = 0
        #: the title of the last report handle() parsed (None when it was folded unparsed)
        self.last_title: str | None = None
        #: source lines from the crashing kernel's debug files (after a report closes)
        self.symbolizer = Symbolizer(config.symbols) if config.symbols.time_limit > 0 else None

    def handle(self, report: Report, now: float, folded: int = 0) -> bool:
        """Store the report's event; False if it is waiting for room in the outbox.

        ``folded``: the report is a summary of that many folded reports (itself included).
        """
        gate = self.gate
        if not folded and not gate.admit_host(report.host, now):
            # Refused before parsing: a packed datagram or a crash loop costs a count, not a parse.
            gate.fold(("host", report.host), report)
            self._log_folded(report, "rate_limit.host_burst / host_interval")
            return True
        addr = [report.host, report.port]
        klogs = report.text
        if not self.parsers.keep(addr, klogs):
            log.info("report_discarded_by_check_hook", host=report.host, lines=len(report.lines))
            return True
        parsed = self.parsers.run(addr, klogs)
        self.last_title = parsed.title
        key = ("crash", report.host, tuple(parsed.fingerprint))
        if not gate.admit_crash(report.host, key[2], now):
            # a summary folded again was counted when it was first folded
            gate.fold(key, report, parsed, max(1, folded), new=not folded)
            self._log_folded(report, "rate_limit.crash_burst / crash_interval", parsed.title)
            return True
        return self._send(report, parsed, max(0, folded - 1) + gate.take_folded(key), now)

    def _send(self, report: Report, parsed: Any, suppressed: int, now: float) -> bool:
        route = self.router.match(report.host)  # once a report, when it closes
        event, attachment = build_event(report, parsed, route.environment, route_tags=route.tags)
        if self.symbolizer is not None:
            self._symbolize(event, report)
        if suppressed:
            self.gate.stats.summaries += 1
            event["extra"]["suppressed_reports"] = suppressed
            event["tags"]["rate_limited"] = "yes"
        return self._put(event, attachment, report, parsed.title, event["level"], route, now)

    def _symbolize(self, event: dict[str, Any], report: Report) -> None:
        """Source lines into the event (bounded by symbols.time_limit); titles and
        fingerprints are already made and never depend on them."""
        assert self.symbolizer is not None
        info = analyze_text(report.text)
        try:
            self.symbolizer.symbolize(event, report.text.split("\n"), info, report.kernel_release or info.release)
        except Exception as e:  # a symbolizer problem never costs a report
            log.error("symbolization_failed", host=report.host, error=f"{type(e).__name__}: {e}",
                      what_happens="the report is sent without source lines")

    def close(self) -> None:
        """Stop the symbolizer processes."""
        if self.symbolizer is not None:
            self.symbolizer.close()

    def _log_folded(self, report: Report, bound: str, title: str | None = None) -> None:
        if self.delivery is not None:  # counted in the summary, not sent alone
            self.delivery.record_lost("event_processor", self.router.match(report.host).dsn)
        n = self.gate.stats.folded_by_host + self.gate.stats.folded_by_crash
        if worth_logging(n):
            log.warning("report_rate_limited", host=report.host, title=title, bound=bound, count=n,
                        what_happens="counted; the latest goes out as a summary with suppressed_reports "
                                     "when the limit allows")

    def send_summaries(self, now: float) -> None:
        """Folded reports whose limit allows one again go out, each with its count."""
        if now < self._next_summary_check or not self.gate.held:
            return
        self._next_summary_check = now + 1.0  # O(held reports) a pass: at most once a second
        for key, held in self.gate.due(now):
            if key[0] == "host":
                self.handle(held.report, now, folded=held.folded)
            else:
                self._send(held.report, held.parsed, held.folded - 1, now)

    def flush_summaries(self, now: float) -> None:
        """Stopping: every held summary goes out now, limits or not (they live in memory only)."""
        for key, held in self.gate.take_all():
            if key[0] == "host":
                addr = [held.report.host, held.report.port]
                if not self.parsers.keep(addr, held.report.text):
                    continue
                self._send(held.report, self.parsers.run(addr, held.report.text), held.folded - 1, now)
            else:
                self._send(held.report, held.parsed, held.folded - 1, now)

    def _put(self, event: dict[str, Any], attachment: bytes, report: Report, title: str, level: str,
             route: Route, now: float, retrying: bool = False) -> bool:
        local = route.dsn is None
        try:
            new = self.store.put(event, attachment, host=report.host, title=title, level=level,
                                 created=report.first_seen, now=now, local=local, route=route.label, dsn=route.dsn)
        except StoreFull as e:
            if retrying:
                return False
            size = 3 * len(attachment)  # the event and the Report hold about the text again each
            if len(self.overflow) < OVERFLOW_IN_MEMORY and self._overflow_bytes + size <= OVERFLOW_BYTES:
                self.overflow.append((event, attachment, report, title, level, route))
                self._overflow_bytes += size
            else:
                self.overflow_spilled += 1
            log.error("outbox_full", host=report.host, title=title, error=str(e), waiting=len(self.overflow),
                      journal_only=self.overflow_spilled,
                      what_happens="the report stays in the journal and is retried every second; it survives "
                                   "restarts", fix="free disk space or raise delivery.disk_cap_bytes")
            return False
        if new:
            log.info("report", host=report.host, title=title, level=level, lines=len(report.lines),
                     closed_by=report.closed_by, flags=list(report.flags), event_id=event["event_id"],
                     route=route.label, stored="local (no DSN)" if local else "outbox")
        if self.delivery is not None:
            self.delivery.wake()
        return True

    def in_backlog(self, report: Report) -> bool:
        """True if ``report``, just refused, is held in memory for the retry (not past the bound)."""
        return bool(self.overflow) and self.overflow[-1][2] is report

    def retry_overflow(self, now: float) -> list[Report]:
        """Try the reports waiting for room again, oldest first; the ones now stored."""
        stored = []
        while self.overflow:
            event, attachment, report, title, level, route = self.overflow[0]
            if not self._put(event, attachment, report, title, level, route, now, retrying=True):
                break  # still full
            self.overflow.popleft()
            self._overflow_bytes -= 3 * len(attachment)
            stored.append(report)
        if stored:
            log.info("outbox_backlog_stored", stored=len(stored), waiting=len(self.overflow))
        return stored


#: reports waiting for room in the outbox kept in memory for the retry; beyond it they
#: wait in the journal only and are retried at the next start
OVERFLOW_IN_MEMORY = 1000
#: and about this many bytes of them
OVERFLOW_BYTES = 64 << 20
#: closing reasons that mean a bound bit, and the setting behind each
_BOUNDS = {"evicted": "assembler.max_hosts", "max_open_reports": "assembler.max_open_reports",
           "open_bytes_budget": "assembler.open_bytes_budget", "max_lines": "assembler.max_lines",
           "max_bytes": "assembler.max_bytes", "max_age": "assembler.max_age"}


class Intake:
    """Datagrams in, reports out, with crash datagrams journaled so a restart loses none.

    A host's recent lines are kept by the assembler (its context ring); once the host has an
    open crash report they, and every datagram after them, are written to the journal (see
    :mod:`kpr_omprog.journal`) before the caller acknowledges the datagram. On start
    the journal is replayed through a fresh assembler, which rebuilds the open
    reports exactly. Without a journal (``None``) nothing survives a restart.
    """

    def __init__(self, pipeline: Pipeline, assembler: Assembler, journal: Journal | None = None,
                 metrics_path: str | None = None, metrics_interval: float = 15.0, resends: bool = False) -> None:
        self.pipeline = pipeline
        #: the front end may hand the same datagram twice (rsyslog re-sends the line in flight
        #: when the receiver died before OK): drop a repeat of a host's last journaled row.
        #: Not for UDP, where one host's identical datagrams in one batch share a time.
        self._resends = resends
        self.assembler = assembler
        self.journal = journal
        self._by_ip = assembler.config.group_by == "ip"
        self._max_datagram = assembler.config.max_datagram_bytes
        self._journaled: set[str] = set()
        self._last: dict[str, tuple[float, bytes]] = {}
        # Journal rows not yet written: flush() writes them with one write. The omprog
        # front end flushes before every OK, the UDP one once per burst read off the socket.
        self._batch: list[Row] = []
        #: keys whose closed reports wait for room in the outbox: their journal rows stay
        self._held: dict[str, int] = {}
        self._held_reports: dict[int, str] = {}  # id(report) -> key, for the ones counted in _held
        self._recovering = False
        #: reports closed, by closed_by; and counters the front end keeps (malformed lines...)
        self.closed_by: dict[str, int] = {}
        self.front_counters: dict[str, int] = {}
        self._metrics_path = metrics_path
        self._metrics_interval = metrics_interval
        self._next_metrics = 0.0
        self._bound_steps: dict[str, int] = {}
        self.journal_failures = 0
        self.duplicates = 0
        #: the newest receive time replayed from the journal
        self.last_at: float | None = None
        # The hosts table (kpr-omprog hosts): the assembler's records of the hosts that
        # changed, written every hosts.flush_interval, flush_batch rows a step.
        self._hosts_cfg = pipeline.config.hosts
        self._next_hosts = time.monotonic() + self._hosts_cfg.flush_interval
        self._hosts_draining = False
        self._new_budget = self._hosts_cfg.new_per_flush
        self.hosts_deferred = 0
        self.hosts_dropped = 0
        self.hosts_write_failures = 0
        self._host_counts: dict[str, int] = {}

    def key(self, source: tuple[str, int]) -> str:
        return source[0] if self._by_ip else f"{source[0]}:{source[1]}"

    def recover(self, now: float) -> int:
        """Rebuild open reports from the journal, and give the assembler the hosts' crash marks
        the store kept (a log buffer sent again after a restart is still known); returns how
        many datagrams were replayed.
        Then the metrics file is written: it exists from the start, and the exporter's import
        and first exposition are paid before the first datagram, not during it."""
        replayed = self._replay(now)
        try:
            self.assembler.restore_crash_marks(self.pipeline.store.crash_marks(self.assembler.config.max_hosts))
        except Exception as e:  # a store without them loses nothing but a replay's recognition
            log.warning("crash_marks_not_restored", error=f"{type(e).__name__}: {e}")
        if self._metrics_path is not None:
            self._next_metrics = time.monotonic() + self._metrics_interval
            self.write_metrics()
        return replayed

    def _replay(self, now: float) -> int:
        if self.journal is None:
            return 0
        rows = self.journal.load()
        legacy = self.pipeline.store.legacy_journal_take()
        if legacy:
            # Rows an older version journaled in SQLite: moved, so an upgrade loses no open report.
            self.journal.add_many(legacy)
            rows += legacy
        sources: dict[str, tuple[str, int]] = {}
        self._recovering = True  # no drops while replaying: a drop would take a later report's rows too
        try:
            for key, at, ip, port, data in rows:
                self.last_at = max(self.last_at or at, at)
                self._journaled.add(key)
                self._last[key] = (at, data)
                sources[key] = (ip, port)
                if type(data) is Context:
                    self._closed(self.assembler.keep_context(data, (ip, port), at), now)
                else:
                    self._closed(self.assembler.feed(data, (ip, port), at), now)
        finally:
            self._recovering = False
        for key, source in sources.items():
            if not self.assembler.is_open(source) and key not in self._held:
                self._drop(key)
        if rows:
            log.info("journal_recovered", datagrams=len(rows), open_reports=self.assembler.open_reports)
        return len(rows)

    def feed(self, data: bytes, source: tuple[str, int], at: float, now: float) -> None:
        # Runs once per datagram: the calls that usually have nothing to do are guarded.
        ip = source[0]
        key = ip if self._by_ip else f"{ip}:{source[1]}"
        # What the assembler keeps of a datagram, and so all the journal needs: a hostile
        # 64 KiB datagram costs a journal write (and its checksum) of max_datagram_bytes.
        kept = data if len(data) <= self._max_datagram else data[:self._max_datagram]
        journaled = self._journaled
        if self._resends and key in journaled and self._last.get(key) == (at, kept):
            # rsyslog re-sends the line in flight when the receiver died before "OK".
            self.duplicates += 1
            return
        asm = self.assembler
        deadline = asm.next_deadline()
        if deadline is not None and deadline <= at:
            self._closed(asm.expire(at), now)
        closed = asm.feed(data, source, at)
        if closed:
            self._closed(closed, now)
        if len(data) > self._max_datagram and worth_logging(asm.stats.datagrams_cut):
            log.warning("datagram_cut", host=ip, length=len(data), kept=self._max_datagram,
                        count=asm.stats.datagrams_cut, bound="assembler.max_datagram_bytes",
                        why="longer than any kernel sends")
        if self.journal is None:
            return
        row = (key, at, ip, source[1], kept)
        if asm.last_fed_open or key in self._held:
            if key not in journaled:
                # The host's context lines, from the assembler's record of it (one record a
                # host): journaled first, they rebuild the same context on replay.
                self._batch.extend((key, at, ip, source[1], Context(x)) for x in asm.take_context(source))
                journaled.add(key)
            self._batch.append(row)
            self._last[key] = (at, kept)

    def flush(self) -> None:
        """Write the journal rows fed so far (call before acknowledging them)."""
        if self._batch and self.journal is not None:
            batch, self._batch = self._batch, []
            try:
                self.journal.add_many(batch)
            except JournalFull as e:
                # The lines stay in the assembler's memory and their reports still go out;
                # only a restart before they close would lose them. Never block the input.
                self.journal_failures += 1
                if worth_logging(self.journal_failures):
                    log.error("journal_write_failed", error=str(e), rows=len(batch), failures=self.journal_failures,
                              why="the disk is full or unwritable: open reports would not survive a restart")

    # Bounds the assembler applies inside a datagram: counted there, logged here (once a
    # batch) when a count passes 1, 10, 100, 1000, then every 10,000.
    _DATAGRAM_BOUNDS = (
        ("lines_joined", "assembler.decoder.max_lines_per_datagram",
         "a datagram held more lines than a kernel sends; the rest were kept as one line"),
        ("starts_ignored", "one report a datagram",
         "a datagram held several crash starts; one report was made, the rest kept as context"),
        ("hosts_evicted", "assembler.max_hosts",
         "more hosts heard more than once than the table holds: the least recently heard idle host was forgotten "
         "(its context lines with it); open reports are never cut for one"),
        ("hosts_forgotten_for_bytes", "assembler.context_bytes_budget",
         "the hosts' context lines held the budget: the least recently heard idle host was forgotten (one heard "
         "once first); open reports are never cut for one"),
        ("new_hosts_forgotten", "assembler.new_hosts",
         "more sources heard only once than the table holds (a fleet starting, or spoofed sources): the least "
         "recently heard was forgotten; hosts heard twice are not touched"),
    )

    def _log_datagram_bounds(self) -> None:
        stats = self.assembler.stats
        for name, bound, why in self._DATAGRAM_BOUNDS:
            count = getattr(stats.decode, name) if name == "lines_joined" else getattr(stats, name)
            step = self._bound_steps.get(name, 1)
            if count >= step:
                log.warning("datagram_bound", what=name, count=count, bound=bound, why=why)
                self._bound_steps[name] = 10 * count if count < 1000 else count + 10_000

    def write_hosts(self, now: float, everything: bool = False) -> None:
        """Write the hosts that changed to the store: one batch a call (the receive loop runs
        between batches) once hosts.flush_interval has passed, or all of them (shutdown)."""
        cfg = self._hosts_cfg
        mono = time.monotonic()
        if not everything and not self._hosts_draining and mono < self._next_hosts:
            return
        if not self._hosts_draining:
            self._new_budget = cfg.new_per_flush  # a new interval: hosts.new_per_flush replacements
        asm = self.assembler
        while True:
            batch = asm.take_dirty(cfg.flush_batch)
            try:
                _, deferred, dropped = self.pipeline.store.put_hosts(batch, time.time(), cfg.max_rows,
                                                                     max(0, self._new_budget))
                self._new_budget -= dropped
            except Exception as e:  # a full disk must not stop the receiving
                self.hosts_write_failures += 1
                if worth_logging(self.hosts_write_failures):
                    log.error("hosts_write_failed", error=f"{type(e).__name__}: {e}", hosts=len(batch),
                              failures=self.hosts_write_failures, why="the hosts table misses these updates")
                deferred = dropped = 0
            if deferred:
                self.hosts_deferred += deferred
                if worth_logging(self.hosts_deferred):
                    log.warning("hosts_not_stored", count=self.hosts_deferred, bound="hosts.new_per_flush",
                                why="more new senders than a write adds (a flood of spoofed sources?): the rest are "
                                    "added at their next line")
            if dropped:
                self.hosts_dropped += dropped
                if worth_logging(self.hosts_dropped):
                    log.warning("hosts_dropped", count=self.hosts_dropped, bound="hosts.max_rows",
                                why="the hosts table is full: the least recently heard were dropped")
            if not everything or not asm.dirty_hosts:
                break
        self._hosts_draining = asm.dirty_hosts > 0 and not everything
        if not self._hosts_draining:
            self._next_hosts = mono + cfg.flush_interval
            try:
                self._host_counts = self.pipeline.store.host_counts(time.time(), cfg.silent_after)
            except Exception:
                pass  # counted above when the store fails; the gauges keep their last values

    def expire(self, now: float) -> None:
        self.write_hosts(now)
        self._log_datagram_bounds()
        self._closed(self.assembler.expire(now), now)
        self.pipeline.send_summaries(now)
        if self._metrics_path is not None and time.monotonic() >= self._next_metrics:
            self._next_metrics = time.monotonic() + self._metrics_interval
            self.write_metrics()
        if self.pipeline.overflow:
            for report in self.pipeline.retry_overflow(now):
                key = self._held_reports.pop(id(report), None)
                if key is None:
                    continue  # a rate-limit summary: it holds no journal rows
                n = self._held.get(key, 0) - 1
                if n > 0:
                    self._held[key] = n
                    continue
                self._held.pop(key, None)
                if not self.assembler.is_open((report.host, report.port)):
                    self._drop(key)

    def counters(self) -> dict[str, int]:
        """Every bound's counter, for the stop log line (and metrics)."""
        a = self.assembler.stats
        g = self.pipeline.gate.stats
        return {"reports": a.reports, "hosts_evicted": a.hosts_evicted, "reports_evicted": a.reports_evicted,
                "new_hosts_forgotten": a.new_hosts_forgotten, "test_lines": a.test_lines,
                "hosts_forgotten_for_bytes": a.hosts_forgotten_for_bytes,
                "heartbeat_lines": a.heartbeat_lines,
                "reports_truncated": a.reports_truncated, "datagrams_cut": a.datagrams_cut,
                "open_reports_limited": a.open_reports_limited, "open_bytes_limited": a.open_bytes_limited,
                "undecodable": a.decode.undecodable, "malformed_headers": a.decode.malformed_headers,
                "lines_lost": a.decode.msgid_lost,
                "dual_format_duplicates": a.decode.dual_format_duplicates,
                "incidents_joined": a.incidents_joined, "lines_joined": a.decode.lines_joined,
                "starts_ignored": a.starts_ignored, "lone_separators": a.lone_separators,
                "crash_replays": a.crash_replays,
                "reports_folded": g.folded_by_host + g.folded_by_crash,
                "summaries": g.summaries,
                "summaries_dropped": g.held_dropped, "waiting_for_outbox": self.waiting_for_outbox,
                "journal_failures": self.journal_failures, "hosts_not_stored": self.hosts_deferred,
                "hosts_dropped": self.hosts_dropped, **self._symbol_counters()}

    def _symbol_counters(self) -> dict[str, int]:
        sy = self.pipeline.symbolizer
        if sy is None:
            return {}
        return {"symbolization_hits": sy.hits, "symbolization_misses": sy.misses,
                "symbolization_timeouts": sy.timeouts}

    def write_metrics(self) -> None:
        """Rewrite the metrics file (see :mod:`kpr_omprog.metrics`); a failure is logged, never raised."""
        if self._metrics_path is None:
            return
        from . import metrics

        try:
            store = self.pipeline.store
            oldest = store.oldest("pending")
            a = self.assembler
            counters = {**self.counters(), "datagrams": a.stats.decode.datagrams, "lines": a.stats.decode.lines,
                        **self.front_counters}
            gauges = {"open_reports": a.open_reports, "open_report_bytes": a.open_bytes, "hosts_tracked": a.hosts,
                      "context_bytes": a.context_bytes,
                      **self._host_counts,
                      "waiting_for_outbox": self.waiting_for_outbox, "outbox_bytes": store.pending_bytes,
                      "journal_bytes": self.journal.size if self.journal is not None else 0}
            delivery = self.pipeline.delivery
            metrics.write(self._metrics_path, counters, gauges, dict(self.closed_by),
                          dict(delivery.attempts) if delivery is not None else {}, store.counts(),
                          max(0.0, time.time() - oldest) if oldest is not None else 0.0)
        except Exception as e:
            log.error("metrics_write_failed", path=self._metrics_path, error=f"{type(e).__name__}: {e}")

    @property
    def waiting_for_outbox(self) -> int:
        """Closed reports kept in the journal until the outbox has room."""
        return sum(self._held.values())

    def shutdown(self, now: float) -> None:
        """Stopping: close what is due and what is whole; the rest stays journaled for the next start."""
        self._closed(self.assembler.expire(now), now)
        self._closed(self.assembler.close_ended(), now)
        self.pipeline.flush_summaries(now)
        self.flush()
        self.write_hosts(now, everything=True)
        self.write_metrics()

    def _closed(self, reports: list[Report], now: float) -> None:
        for report in reports:
            n = self.closed_by[report.closed_by] = self.closed_by.get(report.closed_by, 0) + 1
            if report.closed_by in _BOUNDS and worth_logging(n):
                log.warning("report_closed_by_bound", host=report.host, closed_by=report.closed_by,
                            bound=_BOUNDS[report.closed_by], lines=len(report.lines), count=n,
                            what_happens="the report is sent as it is, flagged")
            self.pipeline.last_title = None
            settled = self.pipeline.handle(report, now)
            if self.pipeline.last_title is not None:
                self.assembler.note_title((report.host, report.port), self.pipeline.last_title)
            key = self.key((report.host, report.port))
            if not settled:
                # No room in the outbox: the report's rows stay journaled (a restart rebuilds
                # it) until the retry stores it; the host's later datagrams are journaled too.
                self._held[key] = self._held.get(key, 0) + 1
                if self.pipeline.in_backlog(report):
                    # Kept in memory for the retry (so its id stays its own); one past the
                    # memory bound waits in the journal only, for the next start.
                    self._held_reports[id(report)] = key
                if key not in self._journaled and self.journal is not None:
                    # It opened and closed within this datagram: journal its context now (the
                    # datagram itself follows in feed(), as the host is held).
                    self._batch.extend((key, report.first_seen, report.host, report.port, x)
                                       for x in self.assembler.take_context((report.host, report.port)))
                    self._journaled.add(key)
                self.flush()
                continue
            if key not in self._held and not self._recovering:
                self._drop(key)

    def _drop(self, key: str) -> None:
        if key in self._journaled and self.journal is not None:
            self.flush()  # rows of this report still in the batch must not outlive the drop
            try:
                self.journal.drop(key)
            except JournalFull as e:
                log.error("journal_write_failed", error=str(e), host=key,
                          why="the closed report's rows stay journaled; a restart rebuilds it under the "
                              "same event id, which the outbox ignores")
            self._journaled.discard(key)
            self._last.pop(key, None)


def open_runtime(cfg: Config, parsers: Parsers) -> tuple[Store, Any, Pipeline]:
    """The store, the delivery workers (started, or None when nothing has a DSN) and the pipeline."""
    store = Store(os.path.join(cfg.state_dir, "kpr-omprog.sqlite3"), cfg.delivery.disk_cap_bytes,
                  cfg.delivery.dead_retention, exclusive=True)
    pipeline = Pipeline(cfg, parsers, store)
    router = pipeline.router
    released, held = store.apply_routes(router.labels(), time.time())
    if released:
        log.info("local_reports_queued", count=released)
    if held:
        log.warning("reports_kept_locally", count=held, why="their route has no DSN now (no dsn, or dsn = \"\")")
    if cfg.routes:
        log.info("routes", count=len(cfg.routes), dsns=len(router.dsns), local_only=sum(
            1 for r in router.routes if r.dsn is None))
    # rows of a route no longer in the config keep their DSN: delivery runs for them too
    if router.dsns or store.next_due() is not None:
        from .delivery import Delivery

        pipeline.delivery = Delivery(store, cfg.dsn, cfg.delivery)
        pipeline.delivery.start()
    if not cfg.dsn:
        log.warning("no_dsn", why="reports are kept in the local store only" if not router.dsns else
                    "reports of senders no [[route]] takes are kept in the local store only",
                    state_dir=cfg.state_dir, fix="set dsn (the config file's dsn, --dsn, or KernelPanicReceiver's "
                                                 "sentry_dsn); stored reports are sent then")
    return store, pipeline.delivery, pipeline


def metrics_path(cfg: Config) -> str | None:
    """Where the running receiver writes its metrics (None when metrics_interval is 0)."""
    if cfg.metrics_interval <= 0:
        return None
    return cfg.metrics_file or os.path.join(cfg.state_dir, "metrics.prom")


def open_journal(cfg: Config) -> Journal:
    """The journal of open reports in the state directory."""
    return Journal(os.path.join(cfg.state_dir, "journal.bin"), cfg.journal_cap_bytes)
