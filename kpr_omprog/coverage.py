"""Which machines would report a crash: the lines a client writes to prove its netconsole
works, and the per-host coverage record the receiver keeps (pure: no I/O).

The client script (``kpr-omprog netconsole-script``) writes :func:`test_line` once, and
:func:`heartbeat_line` at its ``--heartbeat`` interval, to ``/dev/kmsg``. The receiver
recognises both (:func:`special`) and records them on the host; they never open a report
and never become a report's context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["HEARTBEAT_PREFIX", "HEARTBEAT_RE", "SPECIAL_PREFIX", "TEST_PREFIX", "TEST_RE", "HostRecord",
           "format_heartbeat_line", "format_test_line", "special"]

#: every line of ours starts with this: one ``str.startswith`` on the hot path
SPECIAL_PREFIX = "kpr-omprog: netconsole "
#: ``kpr-omprog: netconsole test from <hostname> <nonce>``
TEST_PREFIX = SPECIAL_PREFIX + "test from "
#: ``kpr-omprog: netconsole heartbeat from <hostname>``
HEARTBEAT_PREFIX = SPECIAL_PREFIX + "heartbeat from "
#: the exact shapes :func:`special` accepts, as POSIX extended regular expressions
#: (``grep -E``) and Python ones: a hostname of 1-253 characters and a nonce of 1-64, no spaces
TEST_RE = r"^kpr-omprog: netconsole test from [^ ]{1,253} [^ ]{1,64}$"
HEARTBEAT_RE = r"^kpr-omprog: netconsole heartbeat from [^ ]{1,253}$"


def format_test_line(hostname: str, nonce: str) -> str:
    """The line the client script writes once, after setting netconsole up."""
    return f"{TEST_PREFIX}{hostname} {nonce}"


def format_heartbeat_line(hostname: str) -> str:
    """The line the client's heartbeat timer writes."""
    return f"{HEARTBEAT_PREFIX}{hostname}"


def special(text: str) -> str | None:
    """``"test"`` or ``"heartbeat"`` for a line of ours (``text`` already starts with
    :data:`SPECIAL_PREFIX`), else None: a kernel line that merely looks like one is kernel text."""
    if text.startswith(TEST_PREFIX):
        rest = text[len(TEST_PREFIX):].split(" ")
        if len(rest) == 2 and all(rest) and len(rest[0]) <= 253 and len(rest[1]) <= 64:
            return "test"
    elif text.startswith(HEARTBEAT_PREFIX):
        name = text[len(HEARTBEAT_PREFIX):]
        if name and " " not in name and len(name) <= 253:
            return "heartbeat"
    return None


#: the bits of a host's ``formats``
CLASSIC, EXTENDED = 1, 2


def formats_name(bits: int) -> str:
    return {CLASSIC: "classic", EXTENDED: "extended", CLASSIC | EXTENDED: "both"}.get(bits, "-")


@dataclass(frozen=True, slots=True)
class HostRecord:
    """What the receiver knows of one sender, as written to the store. The counters
    (datagrams, lost, reports) are what was added since the host's last write."""

    key: str
    ip: str
    first_heard: float
    last_heard: float
    datagrams: int
    release: str | None
    formats: int
    tags: tuple[tuple[str, str], ...]
    lost: int
    special: str | None
    special_at: float | None
    reports: int
    title: str | None
    #: the host's crash marks (see the assembler's ``_Host.crash_marks``), 8 bytes each; empty: unchanged
    crash_marks: bytes = b""

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "ip": self.ip, "first_heard": self.first_heard, "last_heard": self.last_heard,
                "datagrams": self.datagrams, "release": self.release, "formats": formats_name(self.formats),
                "tags": dict(self.tags), "lost": self.lost, "special": self.special, "special_at": self.special_at,
                "reports": self.reports, "title": self.title}
