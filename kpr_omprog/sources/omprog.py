"""rsyslog omprog front end: one JSON line per datagram on stdin, ``OK`` per line on stdout.

The drop-in's template sends ``{"ip": fromhost-ip, "received": timegenerated, "raw": rawmsg}``.
rsyslog passes bytes >= 0x80 unescaped, so lines are read as bytes and decoded with
surrogateescape, which gives back the datagram byte for byte.

``OK`` is written only once a line is safe, and as early as that: rsyslog sends the
next line only after it (one line in flight, no batching), so the time between a
line and its ``OK`` is what limits the rate. So the receiver is two processes:

- the *reader* (forked at the start) stores each line in a ring in a file
  (:class:`kpr_omprog.sources.line_ring.LineRing`, ``omprog-ring``) and answers ``OK``,
  a few microseconds a line, nothing else;
- the *processor* (the process rsyslog started) takes the lines from the ring in
  order, parses them, feeds the assembler, journals the datagrams of open crash
  reports (see :class:`kpr_omprog.runtime.Intake`) and marks them consumed.

A ``kill -9`` of either loses no answered line: the next start replays the journal,
then processes what the ring holds past its consumed mark. The processor runs on
another CPU while the reader waits for rsyslog; when it falls ``omprog.ring_bytes``
behind, the reader waits for room and rsyslog queues. The reader dies with the
processor (``PR_SET_PDEATHSIG``) and the processor stops when the reader's end of a
pipe closes (stdin ended, or the reader died); a lock file held by both keeps a next
receiver from starting before both are gone. stdout carries the protocol only (the
reader's); anything else printing there (a hook) is sent to stderr.
"""

from __future__ import annotations

import json
import math
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
from ..store import lock_state_dir, make_state_dir
from .line_ring import TOO_LONG, LineRing, RingError
from .workers import _die_with_parent

__all__ = ["parse_omprog_line", "run_omprog"]

log = get_logger()


class MalformedLine(ValueError):
    pass


def take_legacy_inflight(path: str) -> bytes | None:
    """The line an older version (one process, one ``P``-marked line in ``omprog-inflight``)
    answered and did not process before it stopped, if any: an upgrade loses none."""
    try:
        with open(path, "rb") as f:
            data = f.read((1 << 20) + 2)
    except OSError:
        return None
    if data[:1] != b"P" or b"\n" not in data:
        return None
    return data[1:data.index(b"\n")]


#: how long the processor looks for the next line before it sleeps (a wake-up costs the reader
#: a system call a line under load; a receiver idle between lines spends this once a pause)
SPIN_SECONDS = 50e-6
#: how much lower the processor's priority is than the reader's and rsyslog's (nice(2))
PROCESSOR_NICE = 5
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
    """Run the two processes (see the module's docstring): the reader is forked first, while
    this process has no threads, open files or sockets of the runtime; this one processes."""
    stdin = stdin or sys.stdin.buffer
    make_state_dir(cfg.state_dir)
    # Held by the reader too (it inherits the open file): a next receiver starts once both are gone.
    lock = lock_state_dir(cfg.state_dir, "omprog.lock")
    ring = LineRing(os.path.join(cfg.state_dir, "omprog-ring"), cfg.omprog.ring_bytes)
    if ring.reset_reason is not None:
        log.warning("omprog_ring_started_afresh", path=ring.path, why=ring.reset_reason)
    ring.forget_put_span()
    # Lines the last receiver answered and did not process end here: read before the reader
    # answers anything new.
    recovered_until = ring.written()
    # A SIGHUP or SIGINT between the fork and the handlers must not end either process:
    # the reader keeps ignoring them, the processor sets its own.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    wake_r, wake_w = os.pipe()  # the reader wakes an idle processor; its end closing says the reader stopped
    go_r, go_w = os.pipe()  # the processor lets the reader answer once the runtime is open
    os.set_blocking(wake_w, False)
    reader = os.fork()
    if reader == 0:  # pragma: no cover - the child's coverage is not collected; tests drive it through rsyslog's pipes
        code = 1
        try:
            os.close(wake_r)
            os.close(go_w)
            code = _read_lines(stdin.fileno(), ring, wake_w, go_r, cfg.omprog.max_line_bytes)
        except BaseException as e:
            log.error("omprog_reader_failed", error=f"{type(e).__name__}: {e}")
        finally:
            os._exit(code)
    os.close(wake_w)
    os.close(go_r)
    try:
        # The processor yields to rsyslog (its UDP input above all: a datagram the kernel
        # drops for want of a reader is lost) and to the reader; it takes the CPU they leave,
        # and the ring holds what it has not taken yet.
        os.nice(PROCESSOR_NICE)
    except OSError:
        pass
    try:
        return _process(cfg, parsers, config_path, ring, recovered_until, reader, wake_r, go_w)
    finally:
        if _reap(reader, 0) is None:
            os.kill(reader, signal.SIGKILL)  # safe at any point: what it answered is in the ring
            _reap(reader, None)
        for fd in (wake_r, lock):
            os.close(fd)
        ring.close()


def _reap(pid: int, timeout: float | None) -> int | None:
    """The reader's exit status once it has exited (waiting up to timeout, None: for ever)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG if deadline is not None else 0)
        except ChildProcessError:
            return 0
        if done:
            return os.waitstatus_to_exitcode(status)
        if deadline is None or time.monotonic() >= deadline:
            return None
        time.sleep(0.001)


def _read_lines(fd: int, ring: LineRing, wake: int, go: int, max_line: int) -> int:  # pragma: no cover - child
    """The reader: each line into the ring, then its ``OK``. Returns 0 at the end of stdin.

    Worst case for what stdin holds: memory is O(max_line_bytes) (a longer line is dropped as
    it arrives, its length and first bytes passed on for the processor's log line), and the
    ring is bounded by omprog.ring_bytes: with no room the reader waits, rsyslog queues."""
    # SIGHUP (a config reload) and SIGINT are the processor's to take: ignored here since the fork.
    _die_with_parent()
    if os.read(go, 1) != b"G":
        return 0  # the processor could not start: it answers rsyslog and says why
    os.close(go)
    write, put, asleep = os.write, ring.put, ring.processor_asleep
    write(1, b"OK\n")
    os.set_blocking(fd, True)
    buf = b""
    dropping, dropped_head = 0, b""
    while True:
        if b"\n" not in buf:
            chunk = os.read(fd, 65536)
            if not chunk:
                return 0
            if dropping:
                nl = chunk.find(b"\n")
                if nl < 0:
                    dropping += len(chunk)
                    continue
                _put_waiting(ring, (dropping + nl).to_bytes(8, "little") + dropped_head, TOO_LONG)
                write(1, b"OK\n")
                dropping, chunk = 0, chunk[nl + 1:]
            buf += chunk
            if b"\n" not in buf:
                if len(buf) > max_line:
                    dropping, dropped_head, buf = len(buf), buf[:80], b""
                continue
        line, _, buf = buf.partition(b"\n")
        if len(line) > max_line:
            _put_waiting(ring, len(line).to_bytes(8, "little") + line[:80], TOO_LONG)
        elif not put(line):
            _put_waiting(ring, line, 0)
        write(1, b"OK\n")
        if asleep():
            try:
                write(wake, b"w")
            except BlockingIOError:
                pass  # wake-ups already wait in the pipe


def _put_waiting(ring: LineRing, body: bytes, kind: int) -> None:  # pragma: no cover - child
    """Put, waiting for the processor to make room (rsyslog holds the next lines meanwhile)."""
    if not ring.fits(len(body)):
        # Never with a checked config (omprog.ring_bytes holds two of the longest lines, and a
        # ring kept at its old size is the larger one): a guard, so that a line that could
        # never fit is passed on as too long instead of waited for.
        body, kind = len(body).to_bytes(8, "little") + body[:80], TOO_LONG
    waited = False
    while not ring.put(body, kind):
        if not waited:
            waited = True
            n = ring.count_wait()
            if worth_logging(n):
                log.warning("omprog_ring_full", count=n, bound="omprog.ring_bytes", backlog_bytes=ring.backlog_bytes(),
                            what_happens="the reader waits for the processor; rsyslog queues the lines meanwhile")
        time.sleep(0.001)


def _process(cfg: Config, parsers: Parsers, config_path: str | None, ring: LineRing, recovered_until: int,
             reader: int, wake: int, go: int) -> int:
    state: dict[str, Any] = {"stop": False, "hup": False}

    def on_term(signum: int, frame: object) -> None:
        state["stop"] = True

    def on_hup(signum: int, frame: object) -> None:
        state["hup"] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGINT, on_term)
    try:
        store, delivery, pipeline = open_runtime(cfg, parsers)
        journal = open_journal(cfg)
    except BaseException:
        os.close(go)  # the reader leaves without a word; the CLI answers the start and says why
        raise
    # From here the reader answers rsyslog (stdout is its); anything printing (a hook) goes to stderr.
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    sys.stdout = sys.stderr
    os.write(go, b"G")
    os.close(go)
    global answered_start
    answered_start = True
    intake = Intake(pipeline, Assembler(cfg.assembler), journal, metrics_path(cfg), cfg.metrics_interval,
                    resends=True)
    skew = cfg.omprog.max_clock_skew
    counts = intake.front_counters  # malformed_input, clock_clamped, ring_waits: also in the metrics file
    # Lines the last receiver answered and did not process: the ring's up to recovered_until,
    # and an older version's in-flight line. Processed after the journal's replay, each on
    # its own: one that killed the last receiver must not kill every next one.
    legacy_path = os.path.join(cfg.state_dir, "omprog-inflight")
    legacy = take_legacy_inflight(legacy_path)
    intake.recover(time.time())
    # The assembler runs on the datagrams' receive times. While stdin is idle that clock
    # moves on with real time from the last line, so a backlog rsyslog replays after a
    # restart (old receive times) is cut by its own timing, not closed line by line.
    last_at: float | None = intake.last_at
    last_mono = time.monotonic()

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

    def recovered(line: bytes, where: str) -> None:
        if where == legacy_path:
            log.info("omprog_inflight_recovered", where=where, first_bytes=line[:80].decode("utf-8", "replace"))
        try:
            process(line)
        except Exception as e:
            log.exception("omprog_inflight_failed", error=repr(e), first_bytes=line[:80].decode("utf-8", "replace"),
                          why="the line is dropped so that rsyslog's queue moves on")

    if legacy is not None:
        recovered(legacy, legacy_path)
    if os.path.exists(legacy_path):
        os.unlink(legacy_path)
    log.info("omprog_started", pid=os.getpid(), reader_pid=reader, dsn_set=bool(cfg.dsn), routes=len(cfg.routes),
             state_dir=cfg.state_dir, ring_bytes=ring.size,
             # answered by the last receiver and not processed: processed first
             recovered_bytes=recovered_until - ring.got())
    next_tick = 0.0
    lines = 0
    first_line_at = 0.0
    reader_status: int | None = None
    try:
        while True:
            if state["hup"]:
                state["hup"] = False
                _reload(config_path)
            if state["stop"] and reader_status is None:
                # Under load the ring is never empty: stop the reader at once, then drain what
                # it answered (at most omprog.ring_bytes; rsyslog keeps the rest queued).
                os.kill(reader, signal.SIGKILL)  # safe at any point: its lines are in the ring or not answered
                reader_status = _reap(reader, None)
            try:
                entry = ring.get()
            except RingError as e:
                log.error("omprog_ring_unreadable", error=str(e), backlog_bytes=ring.backlog_bytes(),
                          what_happens="the lines the ring held are dropped")
                ring.reset()
                continue
            if entry is not None:
                kind, body = entry
                if kind == TOO_LONG:
                    skipped(f"longer than omprog.max_line_bytes ({cfg.omprog.max_line_bytes})", body[8:],
                            int.from_bytes(body[:8], "little"))
                else:
                    lines += 1
                    if lines == 1:
                        first_line_at = time.time()
                    if ring.got() <= recovered_until:
                        recovered(body, ring.path)
                    else:
                        process(body)
                ring.consume()
                if last_mono >= next_tick:
                    # Under steady input the processor never waits: summaries of rate-limited
                    # reports and outbox retries run here, once a second.
                    next_tick = last_mono + 1.0
                    counts["ring_waits"] = ring.waits()
                    intake.expire(clock())
                continue
            if reader_status is not None:
                break  # the reader is gone and every line it answered is processed
            # Nothing to do. Under load the next line is a few microseconds away: look for it a
            # little (SPIN_SECONDS) before asking the reader for a wake-up, which costs it a
            # system call. Then sleep until a line, a deadline, or a second. The reader may miss
            # the flag set just before its check (no memory barrier in Python): the 50 ms cap bounds that.
            spin_until = time.monotonic() + SPIN_SECONDS
            while not ring.pending() and time.monotonic() < spin_until:
                pass
            if ring.pending():
                continue
            ring.sleep_flag(True)
            if ring.pending():
                ring.sleep_flag(False)
                continue
            deadline = intake.assembler.next_deadline()
            timeout = 0.05 if deadline is None else max(0.0, min(0.05, deadline - clock()))
            ready, _, _ = select.select([wake], [], [], timeout)
            ring.sleep_flag(False)
            if ready and not os.read(wake, 4096):
                reader_status = _reap(reader, None)  # its end of the pipe closed: stdin ended, or it died
                if reader_status != 0 and not state["stop"]:
                    log.error("omprog_reader_died", status=reader_status,
                              what_happens="the lines it answered are processed, then the receiver exits for rsyslog "
                                           "to start it again")
                continue
            mono = time.monotonic()
            if mono >= next_tick or (deadline is not None and deadline <= clock()):
                next_tick = mono + 1.0
                counts["ring_waits"] = ring.waits()
                intake.expire(clock())
        counts["ring_waits"] = ring.waits()
        intake.shutdown(clock())
    finally:
        # process() ends by reading the monotonic clock: the wall time the last line was done
        last_line_at = time.time() - (time.monotonic() - last_mono) if lines else 0.0
        # A burst's rates run from the reader's first line (the processor may start on it later):
        # to its last OK (answered_seconds), and to the last line processed (busy_seconds).
        first_put, last_put = ring.put_span()
        first_line_at = min(first_line_at, first_put or first_line_at)
        # Open reports stay in the journal: the next start rebuilds them.
        if delivery is not None:
            delivery.stop(2.0)
        pipeline.close()
        store.close()
        journal.close()
        # busy_seconds: first line read to last line processed, so a burst gives the rate lines were taken at
        log.info("omprog_stopped", lines=lines, malformed=counts.get("malformed_input", 0),
                 clock_clamped=counts.get("clock_clamped", 0),
                 open_reports=intake.assembler.open_reports, duplicates=intake.duplicates,
                 busy_seconds=round(max(0.0, last_line_at - first_line_at), 6),
                 answered_seconds=round(max(0.0, last_put - first_put), 6),
                 # the span of several shards' bursts is first of the firsts to last of the lasts
                 first_line_at=first_line_at, last_line_at=last_line_at, counters=intake.counters())
    return 0 if reader_status == 0 or state["stop"] else 1


def _reload(path: str | None) -> None:
    try:
        new = load(path)
        configure(new.log_format, new.log_level)
        log.info("config_reloaded", path=path or "default", note="assembler and DSN changes apply at restart")
    except ConfigError as e:
        log.error("config_reload_failed", error=str(e))
