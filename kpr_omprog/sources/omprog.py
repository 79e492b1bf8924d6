"""rsyslog omprog front end: one JSON line per datagram on stdin, ``OK`` per line on stdout.

The drop-in's template sends ``{"ip": fromhost-ip, "received": timegenerated, "raw": rawmsg}``.
rsyslog passes bytes >= 0x80 unescaped, so lines are read as bytes and decoded with
surrogateescape, which gives back the datagram byte for byte.

``OK`` is written only once a line is safe, and as early as that: rsyslog sends the
next line only after it (one line in flight, no batching), so the time between a
line and its ``OK`` is what limits the rate. Each line is first written to a small
in-flight file (one ``pwrite``), answered, then processed, and the file is marked
done; a receiver killed in between processes the line from that file on its next
start. Processing journals the datagrams of open crash reports (see
:class:`kpr_omprog.runtime.Intake`), so every acknowledged line survives a
``kill -9``. stdout carries the protocol only; anything else printing there (a hook)
is sent to stderr.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, BinaryIO

from ..assembler import Assembler
from ..config import Config, ConfigError, load
from ..hooks import Parsers
from ..logs import configure, get_logger, worth_logging
from ..runtime import Intake, metrics_path, open_journal, open_runtime

__all__ = ["parse_omprog_line", "run_omprog"]

log = get_logger()


class MalformedLine(ValueError):
    pass


class InFlight:
    """The one line answered but not yet processed, in a file: ``P`` + line + ``\n``, or ``D`` once done.

    >>> import tempfile, os
    >>> f = InFlight(os.path.join(tempfile.mkdtemp(), "inflight"))
    >>> f.hold(b'{"ip": "10.0.0.1", "raw": "x"}'); f.take()
    b'{"ip": "10.0.0.1", "raw": "x"}'
    >>> f.done(); f.take() is None
    True
    >>> f.hold(b"a much longer line than the next"); f.hold(b"short"); f.take()
    b'short'

    Written through a shared memory map of the file, not ``pwrite``: a store into a
    ``MAP_SHARED`` page is a store into the page cache itself, so what it holds is what
    ``pwrite`` would have left there, at no system call (0.4 against 2.2 us a line for
    hold + done on the benchmark VM; the receiver makes both calls for every line rsyslog
    sends it one at a time).

    Why this is as safe against ``kill -9`` as ``pwrite``: a killed process's stores are
    not undone, whatever the CPU (they leave its store buffer whether or not the process
    lives on); only the ones it had not executed yet are missing. ``hold()`` runs to the
    end before the ``OK`` write (a system call, in program order after it), so an ``OK``
    rsyslog read means every byte of the line and its ``P`` are in the page cache, and the
    next start's ``take()`` (a ``pread`` of that page cache) finds them. A kill inside
    ``hold()`` can leave a half-copied line, never a ``P`` in front of one: the mark is
    cleared first and set last, so ``take()`` sees ``D`` (that line got no ``OK``; rsyslog
    sends it again) or the whole line. Not a protection against power loss, no more than
    ``pwrite`` without ``fsync`` was: the journal's promise is the same (see journal.py).
    The file's blocks are allocated when it is opened, so a full disk fails the start with
    an error, never a SIGBUS on a store into a page with no block.
    """

    def __init__(self, path: str, max_line_bytes: int = 1 << 20) -> None:
        self.path = path
        self.max_line_bytes = max_line_bytes
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        size = max_line_bytes + 2  # "P" + the longest line held + "\n"
        try:
            os.posix_fallocate(self._fd, 0, size)
            self._map = mmap.mmap(self._fd, size)
        except OSError as e:
            os.close(self._fd)
            raise OSError(e.errno, e.strerror, path) from None  # the CLI names the file, one line

    def hold(self, line: bytes) -> None:
        m, n = self._map, len(line)
        m[0] = 68  # "D": no line held while it is copied
        m[1:1 + n] = line
        m[1 + n] = 10  # "\n" ends it (a longer line held before is cut here)
        m[0] = 80  # "P", last

    def done(self) -> None:
        self._map[0] = 68

    def take(self) -> bytes | None:
        """The line a killed receiver answered but did not process, if any."""
        data = os.pread(self._fd, self.max_line_bytes + 2, 0)
        if data[:1] != b"P" or b"\n" not in data:
            return None
        return data[1:data.index(b"\n")]

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)


#: the longest sender address rsyslog writes (an IPv6 address with a zone is shorter)
MAX_IP_CHARS = 64
#: the start "OK" has been written (the CLI must not write one on a failed start then)
answered_start = False

# orjson (the optional extra kpr-omprog[fast], which install.sh installs) parses an omprog
# line 5-7 times faster than json (tests/benchmarks: 0.4 against 2.2-2.8 us); the standard
# library stays the exact fallback for whatever orjson refuses.
_fast_loads: Callable[[bytes], Any] | None
try:
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - depends on the install
    _fast_loads = None
#: a receive time further back than this (Sentry's 30-day retention) is replaced by ours
PAST_LIMIT = 30 * 86400.0


def parse_omprog_line(line: bytes) -> tuple[bytes, str, float | None]:
    r"""(datagram, sender ip, receive time or None) from one omprog line; raises MalformedLine.

    Never raises anything else, whatever the bytes (a hostile sender cannot reach this
    parser except through rsyslog's template, but a broken relay or a wrong template can):

    >>> parse_omprog_line(b'{"ip": "10.0.0.1", "received": "2026-01-01T00:00:00+00:00", "raw": "x\\\\n"}')
    (b'x\\n', '10.0.0.1', 1767225600.0)
    >>> parse_omprog_line(b'{"ip": "10.0.0.2", "received": "2026-01-01T00:00:00+00:00", "raw": "y"}')[2]  # cached
    1767225600.0
    >>> [parse_omprog_line(b'{"ip": "10.0.0.1", "received": "%s", "raw": "y"}' % t)[2] for t in (b"never", b"never")]
    [None, None]
    >>> parse_omprog_line(b"[" * 100000)
    Traceback (most recent call last):
    ...
    kpr_omprog.sources.omprog.MalformedLine: not JSON: nested too deeply
    """
    obj: Any = None
    if _fast_loads is not None:
        try:
            obj = _fast_loads(line)
        except ValueError:  # invalid UTF-8, a lone surrogate, NaN, deep nesting: the exact parser decides
            obj = None
    if obj is None:
        try:
            obj = json.loads(line.decode("utf-8", "surrogateescape"))
        except ValueError as e:
            raise MalformedLine(f"not JSON: {e}") from None
        except RecursionError:
            raise MalformedLine("not JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise MalformedLine("not a JSON object")
    raw, ip, received = obj.get("raw"), obj.get("ip"), obj.get("received")
    if not isinstance(raw, str) or not isinstance(ip, str) or not ip:
        raise MalformedLine("missing 'raw' or 'ip' (is the drop-in's template in use?)")
    if len(ip) > MAX_IP_CHARS or not ip.isascii() or not ip.isprintable():
        raise MalformedLine(f"'ip' is not an address ({len(ip)} characters)")
    try:
        data = raw.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        # A \uD800-style escape: never from rsyslog's jsonf, but the datagram is kept
        # (its bytes become invalid UTF-8, which the decoder replaces and flags).
        data = raw.encode("utf-8", "surrogatepass")
    at: float | None = None
    if isinstance(received, str):
        if received == _last_received[0]:
            # rsyslog gives every datagram of one recvmmsg() batch the same timegenerated:
            # under load nine lines in ten repeat the last one's (bench_rsyslog: 56,331 of
            # 59,972), and the ISO parse is a third of this function.
            at = _last_received[1]
        else:
            try:
                at = datetime.fromisoformat(received).timestamp()
            except (ValueError, OverflowError, OSError):
                at = None
            if at is not None and not math.isfinite(at):
                at = None
            _last_received[:] = (received, at)
    return data, ip, at


#: the last "received" text parsed, and its time (or None when it was not a time)
_last_received: list[Any] = ["", None]


def run_omprog(cfg: Config, parsers: Parsers, stdin: BinaryIO | None = None, config_path: str | None = None) -> int:
    # A private handle for the protocol; fd 1 becomes stderr so stray prints cannot corrupt it.
    ack = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    stdin = stdin or sys.stdin.buffer
    state: dict[str, Any] = {"stop": False, "hup": False}

    def on_term(signum: int, frame: object) -> None:
        state["stop"] = True

    def on_hup(signum: int, frame: object) -> None:
        state["hup"] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGINT, on_term)
    store, delivery, pipeline = open_runtime(cfg, parsers)
    journal = open_journal(cfg)
    intake = Intake(pipeline, Assembler(cfg.assembler), journal, metrics_path(cfg), cfg.metrics_interval,
                    resends=True)
    intake.recover(time.time())
    max_line, skew = cfg.omprog.max_line_bytes, cfg.omprog.max_clock_skew
    inflight = InFlight(os.path.join(cfg.state_dir, "omprog-inflight"), max_line)
    # The assembler runs on the datagrams' receive times. While stdin is idle that clock
    # moves on with real time from the last line, so a backlog rsyslog replays after a
    # restart (old receive times) is cut by its own timing, not closed line by line.
    last_at: float | None = intake.last_at
    last_mono = time.monotonic()
    counts = intake.front_counters  # malformed_input, clock_clamped: also in the metrics file

    def clock() -> float:
        return time.time() if last_at is None else last_at + (time.monotonic() - last_mono)

    by_reason: dict[str, int] = {}

    def skipped(reason: str, line: bytes, length: int) -> None:
        malformed = counts["malformed_input"] = counts.get("malformed_input", 0) + 1
        kind = reason.split(":", 1)[0].split(" (", 1)[0]
        n = by_reason[kind] = by_reason.get(kind, 0) + 1
        if worth_logging(n) and len(by_reason) <= 100:  # throttled per kind of fault
            log.error("omprog_malformed_line", reason=reason, first_bytes=line[:80].decode("utf-8", "replace"),
                      length=length, count=malformed, what_happens="the line is answered OK and skipped")

    def process(line: bytes) -> None:
        nonlocal last_at, last_mono
        try:
            data, ip, at = parse_omprog_line(line)
        except MalformedLine as e:
            skipped(str(e), line, len(line))
            return
        now = time.time()
        if at is None:
            at = now
        elif at < now - PAST_LIMIT:
            # Older than anything Sentry keeps (a forged or zeroed time): it would set the
            # clock back for every host and dead-letter the report at once.
            counts["clock_clamped"] = counts.get("clock_clamped", 0) + 1
            at = now
        elif at > now + skew:
            # A forged time, or rsyslog's clock ahead of ours: a report would wait for it forever.
            clamped = counts["clock_clamped"] = counts.get("clock_clamped", 0) + 1
            if worth_logging(clamped):
                log.warning("omprog_time_ahead", received=at, now=now, ahead_seconds=round(at - now, 3),
                            count=clamped, bound="omprog.max_clock_skew", what_happens="our clock is used")
            at = now
        intake.feed(data, (ip, 0), at, now)
        intake.flush()
        last_at = at if last_at is None or at < last_at - 3600 else max(at, last_at)
        last_mono = time.monotonic()

    pending = inflight.take()
    if pending is not None:
        # Answered by a receiver killed before it processed the line: rsyslog will not resend it.
        log.info("omprog_inflight_recovered", first_bytes=pending[:80].decode("utf-8", "replace"))
        try:
            process(pending)
        except Exception as e:
            # Whatever killed the last receiver on this line must not kill every next one.
            log.exception("omprog_inflight_failed", error=repr(e), first_bytes=pending[:80].decode("utf-8", "replace"),
                          why="the line is dropped so that rsyslog's queue moves on")
        inflight.done()
    ack.write(b"OK\n")
    global answered_start
    answered_start = True
    log.info("omprog_started", pid=os.getpid(), dsn_set=bool(cfg.dsn), routes=len(cfg.routes),
             state_dir=cfg.state_dir)
    fd = stdin.fileno()
    os.set_blocking(fd, False)
    buf = b""
    # A line over max_line_bytes is dropped as it arrives: memory stays O(max_line_bytes)
    # whatever stdin holds; dropping > 0 while its rest is being skipped.
    dropping, dropped_head = 0, b""
    next_tick = 0.0
    lines = 0
    first_line_at = 0.0
    held = False  # a line is held in the in-flight file and not yet marked done
    try:
        while not state["stop"]:
            if state["hup"]:
                state["hup"] = False
                _reload(config_path)
            if b"\n" not in buf:
                try:
                    # Under load the next line is already waiting (it came while the last one
                    # was processed): read it without a select() first.
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    if held:
                        # Idle: the line just processed is marked done. Under load the next
                        # line's hold() overwrites it instead, one write a line fewer.
                        inflight.done()
                        held = False
                    deadline = intake.assembler.next_deadline()
                    timeout = 1.0 if deadline is None else max(0.0, min(1.0, deadline - clock()))
                    try:
                        ready, _, _ = select.select([fd], [], [], timeout)
                    except InterruptedError:
                        continue
                    if not ready:
                        intake.expire(clock())
                    continue
                if not chunk:
                    break
                if dropping:
                    nl = chunk.find(b"\n")
                    if nl < 0:
                        dropping += len(chunk)
                        continue
                    skipped(f"longer than omprog.max_line_bytes ({max_line})", dropped_head, dropping + nl)
                    ack.write(b"OK\n")
                    dropping, chunk = 0, chunk[nl + 1:]
                buf += chunk
                if b"\n" not in buf:
                    if len(buf) > max_line:
                        dropping, dropped_head, buf = len(buf), buf[:80], b""
                    continue
            line, _, buf = buf.partition(b"\n")
            if len(line) > max_line:
                skipped(f"longer than omprog.max_line_bytes ({max_line})", line, len(line))
                ack.write(b"OK\n")
                continue
            lines += 1
            if lines == 1:
                first_line_at = time.time()
            inflight.hold(line)
            held = True
            ack.write(b"OK\n")
            process(line)
            if last_mono >= next_tick:
                # Under steady input select() never times out: summaries of rate-limited
                # reports and outbox retries run here, once a second.
                next_tick = last_mono + 1.0
                intake.expire(clock())
        intake.shutdown(clock())
        if held:
            inflight.done()
    finally:
        # process() ends by reading the monotonic clock: the wall time the last line was done
        last_line_at = time.time() - (time.monotonic() - last_mono) if lines else 0.0
        # Open reports stay in the journal: the next start rebuilds them.
        if delivery is not None:
            delivery.stop(2.0)
        pipeline.close()
        store.close()
        journal.close()
        inflight.close()
        # busy_seconds: first line in to last line processed, so a burst gives the rate lines were taken at
        log.info("omprog_stopped", lines=lines, malformed=counts.get("malformed_input", 0),
                 clock_clamped=counts.get("clock_clamped", 0),
                 open_reports=intake.assembler.open_reports, duplicates=intake.duplicates,
                 busy_seconds=round(max(0.0, last_line_at - first_line_at), 6),
                 # the span of several shards' bursts is first of the firsts to last of the lasts
                 first_line_at=first_line_at, last_line_at=last_line_at, counters=intake.counters())
    return 0


def _reload(path: str | None) -> None:
    try:
        new = load(path)
        configure(new.log_format, new.log_level)
        log.info("config_reloaded", path=path or "default", note="assembler and DSN changes apply at restart")
    except ConfigError as e:
        log.error("config_reload_failed", error=str(e))
