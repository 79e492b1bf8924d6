"""Delivery: the outbox's pending reports go to Sentry, in the background, until 2xx.

The sentry-sdk transport drops events when the server is down, rate-limits or
its 100-slot queue is full, so delivery is ours: each report is an envelope
POSTed to the DSN's envelope endpoint, and its outbox row changes state only
on the server's answer:

* 2xx: delivered;
* 429: everything for that DSN waits for ``Retry-After`` / ``X-Sentry-Rate-Limits``;
* 413: the event is trimmed (never title, fingerprint or tags) and resent,
  first without the attachment;
* other 4xx: dead-lettered (``kpr-omprog reports`` shows them);
* 5xx, timeouts, refused connections: exponential backoff up to a ceiling.

Each outbox row names its DSN (``[[route]]``, see :mod:`kpr_omprog.routes`), and each
DSN has its own state: its rate limit, its backoff (the row's and, after a failure,
the DSN's: one probe at a time until it answers), its client-report counts. One DSN
never holds every worker either (at most ``concurrency - 1`` of them), so one customer's
Sentry being down or rate-limiting never delays another's reports.
"""

from __future__ import annotations

import gzip
import http.client
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sentry_sdk.consts import EndpointType
from sentry_sdk.utils import Dsn

from . import __version__
from .config import DeliveryConfig
from .event import trim_event
from .logs import get_logger
from .store import Outgoing, Store

__all__ = ["Delivery", "build_envelope"]

log = get_logger()


def build_envelope(event: dict[str, Any], attachment: bytes | None, dsn: str, now: float,
                   discarded: dict[str, int] | None = None) -> bytes:
    """Serialise an envelope: a fresh ``sent_at`` each attempt (Sentry corrects clock drift with
    it), and a ``client_report`` item counting the events we dropped ourselves (by reason)."""
    ev = json.dumps(event, ensure_ascii=False).encode()
    header = {"event_id": event["event_id"], "dsn": dsn,
              "sent_at": datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z")}
    parts = [json.dumps(header).encode(), json.dumps({"type": "event", "length": len(ev)}).encode(), ev]
    if attachment is not None:
        # A plain attachment as Sentry's envelope spec has it: a server that reads the type
        # (Bugsink) skips an item without one ("non-supported attachment type: None").
        parts += [json.dumps({"type": "attachment", "length": len(attachment), "filename": "kernel.log",
                              "attachment_type": "event.attachment", "content_type": "text/plain"}).encode(),
                  attachment]
    if discarded:
        lost = [{"reason": reason, "category": "error", "quantity": n} for reason, n in sorted(discarded.items())]
        report = json.dumps({"timestamp": now, "discarded_events": lost}).encode()
        parts += [json.dumps({"type": "client_report", "length": len(report)}).encode(), report]
    return b"\n".join(parts) + b"\n"


def _rate_limited_for(headers: Any) -> float:
    """Seconds ``X-Sentry-Rate-Limits`` bars our events for (the longest limit on the
    error or default category, or on all categories); 0 when it does not."""
    limits = headers.get("X-Sentry-Rate-Limits") if headers else None
    best = 0.0
    for part in (limits or "").split(","):
        secs, _, cats = part.strip().partition(":")
        categories = cats.split(":", 1)[0].split(";")
        if categories == [""] or "error" in categories or "default" in categories:
            try:
                best = max(best, min(float(secs), 86400.0))
            except ValueError:
                pass
    return best


def _retry_after(headers: Any, default: float) -> float:
    best = _rate_limited_for(headers)
    if best:
        return best
    value = headers.get("Retry-After") if headers else None
    if value and re.fullmatch(r"\d+(?:\.\d+)?", value.strip()):
        return min(float(value), 86400.0)  # a day at most, whatever a server says
    return default


@dataclass(slots=True)
class _Target:
    """One DSN: its endpoint and its own limits."""

    url: str = ""
    auth_header: str = ""
    #: why the DSN cannot be used ("" when it can)
    error: str = ""
    #: nothing is sent to it before this time (its rate limit, or its backoff)
    not_before: float = 0.0
    #: failed exchanges in a row (5xx, timeouts, refused): one probe at a time while > 0
    failures: int = 0
    in_flight: int = 0
    #: events we dropped ourselves, by client-report reason, not yet told to this DSN
    discarded: dict[str, int] = field(default_factory=dict)


def _target(dsn: str) -> _Target:
    try:
        auth = Dsn(dsn).to_auth(f"kpr-omprog/{__version__}")
        return _Target(auth.get_api_url(EndpointType.ENVELOPE), auth.to_header())
    except Exception as e:  # a DSN pinned by an older config may not parse
        return _Target(error=f"not a usable DSN: {type(e).__name__}")


class Delivery:
    """Background senders for every DSN in the outbox. ``send_due`` is the synchronous core
    (used by tests). ``dsn``: where rows that name none go (stores from before [[route]])."""

    def __init__(self, store: Store, dsn: str | None = None, config: DeliveryConfig | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.dsn = dsn or None
        self.config = config or DeliveryConfig()
        self.clock = clock
        self._cond = threading.Condition()
        self._claimed: set[str] = set()
        #: per DSN (bounded by the DSNs in the outbox: the routes' and older ones)
        self._targets: dict[str, _Target] = {}
        self._stop = False
        self._threads: list[threading.Thread] = []
        self.sent = 0
        #: delivery attempts by (route label, result): delivered, rate_limited, too_large, dead, retry
        self.attempts: dict[tuple[str, str], int] = {}

    def target(self, dsn: str) -> _Target:
        """The state of ``dsn`` (made on first use)."""
        with self._cond:
            t = self._targets.get(dsn)
            if t is None:
                t = self._targets[dsn] = _target(dsn)
            return t

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        for i in range(self.config.concurrency):
            t = threading.Thread(target=self._worker, name=f"kpr-delivery-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def record_lost(self, reason: str, dsn: str | None, quantity: int = 1) -> None:
        """Count events we dropped (``event_processor``: folded by the rate limit;
        ``send_error``: dead-lettered); the next envelope to ``dsn`` tells the server.
        None (a route kept locally): there is no one to tell."""
        if dsn is None:
            return
        t = self.target(dsn)
        with self._cond:
            t.discarded[reason] = t.discarded.get(reason, 0) + quantity

    def _take_discarded(self, t: _Target) -> dict[str, int]:
        with self._cond:
            out, t.discarded = t.discarded, {}
        return out

    def _give_back(self, t: _Target, discarded: dict[str, int]) -> None:
        with self._cond:
            for reason, n in discarded.items():
                t.discarded[reason] = t.discarded.get(reason, 0) + n

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the senders; what is not delivered stays in the outbox for the next start."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        end = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))

    def _blocked(self, now: float) -> set[str]:
        """DSNs nothing is sent to now: limited, backing off, or holding their share of workers
        (one probe while failing; never every worker). Called under the condition."""
        share = max(1, self.config.concurrency - 1)
        return {dsn for dsn, t in self._targets.items()
                if t.not_before > now or t.in_flight >= (1 if t.failures else share)}

    def _claim(self) -> Outgoing | None:
        now = self.clock()
        rows = self.store.due(now, 1, exclude=self._claimed, default_dsn=self.dsn, skip_dsns=self._blocked(now))
        if not rows:
            return None
        row = rows[0]
        self._claimed.add(row.event_id)
        self.target(row.dsn).in_flight += 1
        return row

    def _release(self, row: Outgoing) -> None:
        with self._cond:
            self._claimed.discard(row.event_id)
            self.target(row.dsn).in_flight -= 1
            self._cond.notify_all()  # a worker may wait for this DSN's share

    def _next_wake(self) -> float:
        """Seconds until a row may be due (at most 5). Called under the condition."""
        now = self.clock()
        blocked = self._blocked(now)
        times = [t.not_before for dsn, t in self._targets.items() if dsn in blocked and t.not_before > now]
        nxt = self.store.next_due(self.dsn, blocked)
        if nxt is not None:
            times.append(nxt)
        return max(0.01, min(5.0, min(times, default=now + 5.0) - now))

    def _worker(self) -> None:
        while True:
            with self._cond:
                if self._stop:
                    return
                try:
                    row = self._claim()
                    wait = self._next_wake() if row is None else 0.0
                except Exception as e:  # the store failing must not end the worker
                    log.error("delivery_error", error=f"{type(e).__name__}: {e}", what_happens="retried in 5 s")
                    self._cond.wait(5.0)
                    continue
                if row is None:
                    self._cond.wait(wait)
                    continue
            try:
                self.send_one(row)
            except Exception as e:
                # A bug of ours or a store error: the row waits like any failed attempt, so
                # a row that always fails costs one attempt per backoff, not a busy loop.
                log.error("delivery_error", event_id=row.event_id, error=f"{type(e).__name__}: {e}")
                try:
                    delay = min(self.config.backoff_max, 2.0 ** min(row.attempts, 16))
                    self.store.retry(row.event_id, self.clock() + delay, f"{type(e).__name__}: {e}", self.clock())
                except Exception as e2:
                    log.error("delivery_error", event_id=row.event_id, error=f"{type(e2).__name__}: {e2}")
                    with self._cond:
                        self._cond.wait(1.0)
            finally:
                self._release(row)

    # -- sending ------------------------------------------------------------------------

    def send_due(self) -> int:
        """Send every report due now, one after the other; return how many were attempted."""
        n = 0
        while True:
            with self._cond:
                row = self._claim()
            if row is None:
                return n
            try:
                self.send_one(row)
            finally:
                self._release(row)
            n += 1

    def _post(self, t: _Target, body: bytes) -> tuple[int, Any, str]:
        req = urllib.request.Request(t.url, data=gzip.compress(body, 6), method="POST", headers={
            "Content-Type": "application/x-sentry-envelope", "Content-Encoding": "gzip",
            "X-Sentry-Auth": t.auth_header, "User-Agent": f"kpr-omprog/{__version__}"})
        try:
            with urllib.request.urlopen(req, timeout=self.config.timeout) as resp:
                return resp.status, resp.headers, ""
        except urllib.error.HTTPError as e:
            detail = e.read(300).decode("utf-8", "replace") if e.fp else ""
            return e.code, e.headers, detail
        except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException, ValueError) as e:
            # Every failed exchange (refused, reset, TLS, an answer that is not HTTP, cut
            # headers) is one thing to the outbox: a retry with backoff, never a busy loop.
            reason = getattr(e, "reason", e)
            return 0, None, f"{type(reason).__name__}: {reason}"[:300]

    def _dead(self, row: Outgoing, code: int | None, error: str, now: float, **why: Any) -> None:
        self.store.dead(row.event_id, code, error, now)
        self.record_lost("send_error", row.dsn)
        log.error("report_dead", event_id=row.event_id, host=row.host, title=row.title, route=row.route, **why)

    def send_one(self, row: Outgoing) -> int:
        now = self.clock()
        if now - row.created > self.config.max_age:
            self._dead(row, None, "older than delivery.max_age", now,
                       why="undelivered for longer than delivery.max_age")
            return 0
        t = self.target(row.dsn)
        if t.error:
            self._dead(row, None, t.error, now, why=t.error)
            return 0
        event = trim_event(row.event, row.trim) if row.trim else row.event
        attachment = row.attachment if row.trim == 0 else None
        discarded = self._take_discarded(t)
        status, headers, detail = self._post(t, build_envelope(event, attachment, row.dsn, now, discarded))
        if not 200 <= status < 300:
            self._give_back(t, discarded)  # told with a later envelope
        result = ("delivered" if 200 <= status < 300 else "rate_limited" if status == 429 else
                  "too_large" if status == 413 and row.trim < 2 else "dead" if 400 <= status < 500 else "retry")
        now = self.clock()
        with self._cond:
            key = (row.route, result)
            self.attempts[key] = self.attempts.get(key, 0) + 1
            # the DSN's own backoff: after a failed exchange, one probe at a time, each
            # further failure doubling the wait; any answer but 5xx resets it
            t.failures = t.failures + 1 if result == "retry" else 0
            if t.failures:
                t.not_before = max(t.not_before, now + min(self.config.backoff_max, 2.0 ** min(t.failures - 1, 16)))
        if 200 <= status < 300:
            self.store.delivered(row.event_id, status, now)
            self.sent += 1
            # Sentry may announce a limit on a 2xx too: the DSN waits, nothing is dropped.
            limited = _rate_limited_for(headers)
            if limited:
                with self._cond:
                    t.not_before = max(t.not_before, now + limited)
                log.warning("sentry_rate_limited", retry_after=limited, on="2xx", route=row.route)
            log.info("report_delivered", event_id=row.event_id, host=row.host, title=row.title, status=status,
                     attempts=row.attempts + 1, delay=round(now - row.created, 3), route=row.route)
        elif status == 429:
            wait = _retry_after(headers, 60.0)
            with self._cond:
                t.not_before = max(t.not_before, now + wait)
            self.store.retry(row.event_id, now + wait, f"HTTP 429, retry after {wait:g}s", now)
            log.warning("sentry_rate_limited", retry_after=wait, event_id=row.event_id, route=row.route)
        elif status == 413 and row.trim < 2:
            self.store.retry(row.event_id, now, "HTTP 413, trimming", now, trim=row.trim + 1)
            log.warning("report_too_large", event_id=row.event_id, host=row.host, title=row.title,
                        trim_step=row.trim + 1, route=row.route)
        elif 400 <= status < 500:
            self._dead(row, status, f"HTTP {status}: {detail}", now, status=status, detail=detail[:200])
        else:
            delay = min(self.config.backoff_max, 2.0 ** min(row.attempts, 16))
            why = f"HTTP {status}" if status else detail
            self.store.retry(row.event_id, now + delay, why, now)
            log.warning("delivery_retry", event_id=row.event_id, host=row.host, error=why, retry_in=delay,
                        attempts=row.attempts + 1, route=row.route)
        return status
