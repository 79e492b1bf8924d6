"""rsyslog omprog front end: one JSON line per datagram on stdin, ``OK`` per line on stdout.

The drop-in's template sends ``{"ip": fromhost-ip, "received": timegenerated, "raw": rawmsg}``.
rsyslog passes bytes >= 0x80 unescaped, so lines are read as bytes and decoded with
surrogateescape, which gives back the datagram byte for byte.

``OK`` is written only once a line is safe: datagrams of open crash reports are
journaled first (see :class:`kpr_omprog.receiver.Intake`). stdout carries the
protocol only; anything else printing there (a hook) is sent to stderr.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
from datetime import datetime
from typing import Any, BinaryIO

from ..assembler import Assembler
from ..config import Config, ConfigError, load
from ..hooks import Parsers
from ..logs import configure, get_logger
from ..receiver import Intake, open_journal, open_runtime

__all__ = ["parse_omprog_line", "run_omprog"]

log = get_logger()


class MalformedLine(ValueError):
    pass


def parse_omprog_line(line: bytes) -> tuple[bytes, str, float]:
    """(datagram, sender ip, receive time) from one omprog line; raises MalformedLine."""
    try:
        obj = json.loads(line.decode("utf-8", "surrogateescape"))
    except ValueError as e:
        raise MalformedLine(f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise MalformedLine("not a JSON object")
    raw, ip, received = obj.get("raw"), obj.get("ip"), obj.get("received")
    if not isinstance(raw, str) or not isinstance(ip, str) or not ip:
        raise MalformedLine("missing 'raw' or 'ip' (is the drop-in's template in use?)")
    try:
        at = datetime.fromisoformat(received).timestamp() if isinstance(received, str) else time.time()
    except ValueError:
        at = time.time()
    return raw.encode("utf-8", "surrogateescape"), ip, at


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
    intake = Intake(pipeline, Assembler(cfg.assembler), journal)
    intake.recover(time.time())
    ack.write(b"OK\n")
    log.info("omprog_started", pid=os.getpid(), dsn_set=bool(cfg.dsn), state_dir=cfg.state_dir)
    fd = stdin.fileno()
    buf = b""
    # The assembler runs on the datagrams' receive times. While stdin is idle that clock
    # moves on with real time from the last line, so a backlog rsyslog replays after a
    # restart (old receive times) is cut by its own timing, not closed line by line.
    last_at: float | None = intake.last_at
    last_mono = time.monotonic()

    def clock() -> float:
        return time.time() if last_at is None else last_at + (time.monotonic() - last_mono)

    lines = malformed = 0
    first_line_at = last_line_at = 0.0
    try:
        while not state["stop"]:
            if state["hup"]:
                state["hup"] = False
                _reload(config_path)
            if b"\n" not in buf:
                deadline = intake.assembler.next_deadline()
                timeout = 1.0 if deadline is None else max(0.0, min(1.0, deadline - clock()))
                try:
                    ready, _, _ = select.select([fd], [], [], timeout)
                except InterruptedError:
                    continue
                if not ready:
                    intake.expire(clock())
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                buf += chunk
                if b"\n" not in buf:
                    continue
            line, _, buf = buf.partition(b"\n")
            lines += 1
            if lines == 1:
                first_line_at = time.time()
            try:
                data, ip, at = parse_omprog_line(line)
            except MalformedLine as e:
                malformed += 1
                log.error("omprog_malformed_line", reason=str(e), first_bytes=line[:80].decode("utf-8", "replace"),
                          count=malformed)
                ack.write(b"OK\n")
                continue
            intake.feed(data, (ip, 0), at, time.time())
            intake.flush()
            last_at = at if last_at is None or at < last_at - 3600 else max(at, last_at)
            last_mono = time.monotonic()
            ack.write(b"OK\n")
            last_line_at = time.time()
        intake.shutdown(clock())
    finally:
        # Open reports stay in the journal: the next start rebuilds them.
        if delivery is not None:
            delivery.stop(2.0)
        store.close()
        journal.close()
        # busy_seconds: first line in to last OK out, so a burst gives the rate lines were taken at
        log.info("omprog_stopped", lines=lines, malformed=malformed, open_reports=intake.assembler.open_reports,
                 duplicates=intake.duplicates, busy_seconds=round(max(0.0, last_line_at - first_line_at), 6))
    return 0


def _reload(path: str | None) -> None:
    try:
        new = load(path)
        configure(new.log_format, new.log_level)
        log.info("config_reloaded", path=path or "default", note="assembler and DSN changes apply at restart")
    except ConfigError as e:
        log.error("config_reload_failed", error=str(e))
