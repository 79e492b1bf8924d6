"""Delivery: the outbox's pending reports go to Sentry, in the background, until 2xx.

The sentry-sdk transport drops events when the server is down, rate-limits or
its 100-slot queue is full, so delivery is ours: each report is an envelope
POSTed to the DSN's envelope endpoint, and its outbox row changes state only
on the server's answer:

* 2xx: delivered;
* 429: everything waits for ``Retry-After`` / ``X-Sentry-Rate-Limits``;
* 413: the event is trimmed (never title, fingerprint or tags) and resent,
  first without the attachment;
* other 4xx: dead-lettered (``kpr-omprog reports`` shows them);
* 5xx, timeouts, refused connections: exponential backoff up to a ceiling.
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
        parts += [json.dumps({"type": "attachment", "length": len(attachment), "filename": "kernel.log",
                              "content_type": "text/plain"}).encode(), attachment]
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


class Delivery:
    """Background senders for one DSN. ``send_due`` is the synchronous core (used by tests)."""

    def __init__(self, store: Store, dsn: str, config: DeliveryConfig | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.dsn = dsn
        self.config = config or DeliveryConfig()
        self.clock = clock
        auth = Dsn(dsn).to_auth(f"kpr-omprog/{__version__}")
        self.url = auth.get_api_url(EndpointType.ENVELOPE)
        self.auth_header = auth.to_header()
        self._cond = threading.Condition()
        self._claimed: set[str] = set()
        self._paused_until = 0.0
        self._stop = False
        self._threads: list[threading.Thread] = []
        self.sent = 0
        #: delivery attempts by result: delivered, rate_limited, too_large, dead, retry
        self.attempts: dict[str, int] = {}
        # Events we dropped ourselves, by client-report reason, not yet told to the server.
        self._discarded: dict[str, int] = {}

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        for i in range(self.config.concurrency):
            t = threading.Thread(target=self._worker, name=f"kpr-delivery-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def record_lost(self, reason: str, quantity: int = 1) -> None:
        """Count events we dropped (``event_processor``: folded by the rate limit;
        ``send_error``: dead-lettered); the next envelope tells the server."""
        with self._cond:
            self._discarded[reason] = self._discarded.get(reason, 0) + quantity

    def _take_discarded(self) -> dict[str, int]:
        with self._cond:
            out, self._discarded = self._discarded, {}
        return out

    def _give_back(self, discarded: dict[str, int]) -> None:
        for reason, n in discarded.items():
            self.record_lost(reason, n)

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

    def _claim(self) -> Outgoing | None:
        now = self.clock()
        if now < self._paused_until:
            return None
        rows = self.store.due(now, 1, exclude=self._claimed)
        if not rows:
            return None
        self._claimed.add(rows[0].event_id)
        return rows[0]

    def _worker(self) -> None:
        while True:
            with self._cond:
                if self._stop:
                    return
                try:
                    row = self._claim()
                    nxt = self.store.next_due() if row is None else None
                except Exception as e:  # the store failing must not end the worker
                    log.error("delivery_error", error=f"{type(e).__name__}: {e}", what_happens="retried in 5 s")
                    self._cond.wait(5.0)
                    continue
                if row is None:
                    wait = 5.0 if nxt is None else max(0.01, min(5.0, max(nxt, self._paused_until) - self.clock()))
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
                with self._cond:
                    self._claimed.discard(row.event_id)

    # -- sending ------------------------------------------------------------------------

    def send_due(self) -> int:
        """Send every report due now, one after the other; return how many were attempted."""
        n = 0
        while True:
            row = self._claim()
            if row is None:
                return n
            try:
                self.send_one(row)
            finally:
                self._claimed.discard(row.event_id)
            n += 1

    def _post(self, body: bytes) -> tuple[int, Any, str]:
        req = urllib.request.Request(self.url, data=gzip.compress(body, 6), method="POST", headers={
            "Content-Type": "application/x-sentry-envelope", "Content-Encoding": "gzip",
            "X-Sentry-Auth": self.auth_header, "User-Agent": f"kpr-omprog/{__version__}"})
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

    def send_one(self, row: Outgoing) -> int:
        now = self.clock()
        if now - row.created > self.config.max_age:
            self.store.dead(row.event_id, None, "older than delivery.max_age", now)
            self.record_lost("send_error")
            log.error("report_dead", event_id=row.event_id, host=row.host, title=row.title,
                      why="undelivered for longer than delivery.max_age")
            return 0
        event = trim_event(row.event, row.trim) if row.trim else row.event
        attachment = row.attachment if row.trim == 0 else None
        discarded = self._take_discarded()
        status, headers, detail = self._post(build_envelope(event, attachment, self.dsn, now, discarded))
        if not 200 <= status < 300:
            self._give_back(discarded)  # told with a later envelope
        result = ("delivered" if 200 <= status < 300 else "rate_limited" if status == 429 else
                  "too_large" if status == 413 and row.trim < 2 else "dead" if 400 <= status < 500 else "retry")
        with self._cond:
            self.attempts[result] = self.attempts.get(result, 0) + 1
        now = self.clock()
        if 200 <= status < 300:
            self.store.delivered(row.event_id, status, now)
            self.sent += 1
            # Sentry may announce a limit on a 2xx too: everything waits, nothing is dropped.
            limited = _rate_limited_for(headers)
            if limited:
                with self._cond:
                    self._paused_until = max(self._paused_until, now + limited)
                log.warning("sentry_rate_limited", retry_after=limited, on="2xx")
            log.info("report_delivered", event_id=row.event_id, host=row.host, title=row.title, status=status,
                     attempts=row.attempts + 1, delay=round(now - row.created, 3))
        elif status == 429:
            wait = _retry_after(headers, 60.0)
            with self._cond:
                self._paused_until = max(self._paused_until, now + wait)
            self.store.retry(row.event_id, now + wait, f"HTTP 429, retry after {wait:g}s", now)
            log.warning("sentry_rate_limited", retry_after=wait, event_id=row.event_id)
        elif status == 413 and row.trim < 2:
            self.store.retry(row.event_id, now, "HTTP 413, trimming", now, trim=row.trim + 1)
            log.warning("report_too_large", event_id=row.event_id, host=row.host, title=row.title,
                        trim_step=row.trim + 1)
        elif 400 <= status < 500:
            self.store.dead(row.event_id, status, f"HTTP {status}: {detail}", now)
            self.record_lost("send_error")
            log.error("report_dead", event_id=row.event_id, host=row.host, title=row.title, status=status,
                      detail=detail[:200])
        else:
            delay = min(self.config.backoff_max, 2.0 ** min(row.attempts, 16))
            why = f"HTTP {status}" if status else detail
            self.store.retry(row.event_id, now + delay, why, now)
            log.warning("delivery_retry", event_id=row.event_id, host=row.host, error=why, retry_in=delay,
                        attempts=row.attempts + 1)
        return status
