"""Replaying capture files through the assembler: the clock is the capture's."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator

from ..assembler import Assembler, Report
from ..capture import CapturedDatagram, parse_line

__all__ = ["read_captures", "replay"]


def read_captures(paths: Iterable[str]) -> Iterator[CapturedDatagram]:
    """Every datagram of every file in order (``-`` is stdin); raises CaptureError."""
    for path in paths:
        f = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
        name = "<stdin>" if path == "-" else path
        try:
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield parse_line(line, f"{name}:{n}")
        finally:
            if f is not sys.stdin.buffer:
                f.close()


def replay(datagrams: Iterable[CapturedDatagram], assembler: Assembler) -> Iterator[Report]:
    """Feed datagrams in order, expiring by their timestamps; close everything at the end."""
    for d in datagrams:
        yield from assembler.expire(d.at)
        yield from assembler.feed(d.data, d.source, d.at)
    yield from assembler.close_all()
