"""structlog set-up: JSON lines on stderr, or a readable console format on a terminal.

stdout is never used: in omprog mode it carries rsyslog's protocol.
"""

from __future__ import annotations

import logging
import sys
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
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str = "kpr-omprog") -> Any:
    return structlog.get_logger(name)


def worth_logging(count: int) -> bool:
    """Throttle for a bound that bites again and again: log its 1st, 10th, 100th,
    1000th time, then every 10,000th, so a flood costs a handful of log lines.

    >>> [n for n in range(1, 30001) if worth_logging(n)]
    [1, 10, 100, 1000, 10000, 20000, 30000]
    """
    return count in (1, 10, 100, 1000) or count % 10000 == 0
