"""Waiting for a state, never for a fixed time."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             proc: subprocess.Popen[bytes] | None = None, show: Callable[[], Any] | None = None) -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout`` s, or at once if ``proc`` exits,
    naming ``what`` (and what ``show`` returns)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process exited ({proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}" + (f": {show()}" if show else ""))
        time.sleep(0.05)
