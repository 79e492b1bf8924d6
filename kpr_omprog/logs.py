"""structlog set-up: JSON lines on stderr, or a readable console format on a terminal.

stdout is never used: in omprog mode it carries rsyslog's protocol.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

import structlog

__all__ = ["configure", "get_logger", "worth_logging"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure(fmt: str = "auto", level: str = "info", stream: Any = None) -> None:
    """Send every log event to ``stream`` (stderr by default) as JSON or console text."""
    stream = stream or sys.stderr
    console = fmt == "console" or (fmt == "auto" and hasattr(stream, "isatty") and stream.isatty())
    renderer: Any = structlog.dev.ConsoleRenderer(colors=False) if console else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=_LineLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


class _LineLogger:
    """Each log line reaches the stream in one ``write(2)`` of the whole line and its newline.

    structlog's PrintLogger prints the line and then the newline: two writes where stderr is
    unbuffered (PYTHONUNBUFFERED, as container images set it) or the line is longer than
    the buffer. ``udp --workers N`` shares one stderr among N processes, and two workers
    logging at once then left two objects on one line and empty lines, which a shipper
    reading one JSON object a line loses. One write of a line up to PIPE_BUF (4 KiB) is
    never interleaved on a pipe, nor one of any length on a file opened for appending."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._lock = threading.Lock()  # threads of one process: a partial write's rest comes next
        try:
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):
            self._fd = None  # a StringIO in a test, a wrapper without a descriptor

    def msg(self, message: str) -> None:
        data = (message + "\n").encode("utf-8", "replace")
        with self._lock:
            if self._fd is None:
                self._stream.write(data.decode("utf-8"))
                self._stream.flush()
                return
            try:
                self._stream.flush()  # anything written to it the ordinary way goes first
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view):]
            except BlockingIOError:
                pass  # a full non-blocking pipe: the line is lost, never the receiver
            except OSError:
                pass  # stderr closed (rsyslog gone): nothing to tell it

    log = debug = info = warning = warn = error = critical = exception = fatal = failure = err = msg


class _LineLoggerFactory:
    def __init__(self, stream: Any) -> None:
        self._logger = _LineLogger(stream)

    def __call__(self, *args: Any) -> _LineLogger:
        return self._logger


def get_logger(name: str = "kpr-omprog") -> Any:
    return structlog.get_logger(name)


def worth_logging(count: int) -> bool:
    """Throttle for a bound that bites again and again: log its 1st, 10th, 100th,
    1000th time, then every 10,000th, so a flood costs a handful of log lines.

    >>> [n for n in range(1, 30001) if worth_logging(n)]
    [1, 10, 100, 1000, 10000, 20000, 30000]
    """
    return count in (1, 10, 100, 1000) or count % 10000 == 0
