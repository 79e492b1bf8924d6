"""The capture file format: one received datagram per JSON line.

``{"t": <unix time, float>, "src": [<ip>, <port>], "data_b64": "<payload>"}``

``kpr-omprog capture`` writes it, ``kpr-omprog replay`` and the tests read it,
and so does the kernel lab that recorded the fixtures under ``tests/data/``::

    >>> d = parse_line('{"t": 1.5, "src": ["10.0.0.1", 6665], "data_b64": "aGk="}', "x.jsonl:1")
    >>> d.data, d.source, d.at
    (b'hi', ('10.0.0.1', 6665), 1.5)
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import NamedTuple

__all__ = ["CaptureError", "CapturedDatagram", "format_line", "parse_line"]


class CaptureError(ValueError):
    """A line that is not a capture record; the message names where and why."""


class CapturedDatagram(NamedTuple):
    data: bytes
    source: tuple[str, int]
    at: float


def parse_line(line: str | bytes, where: str) -> CapturedDatagram:
    """Parse one capture line; ``where`` (``file:line``) prefixes any error."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise CaptureError(f"{where}: not a capture record: invalid JSON ({e.msg})") from None
    except ValueError:
        raise CaptureError(f"{where}: not a capture record: not UTF-8 JSON") from None
    if not isinstance(obj, dict):
        raise CaptureError(f"{where}: not a capture record: expected a JSON object")
    t, src, b64 = obj.get("t"), obj.get("src"), obj.get("data_b64")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        raise CaptureError(f"{where}: not a capture record: 't' must be a number (unix time)")
    if (not isinstance(src, list) or len(src) != 2 or not isinstance(src[0], str)
            or isinstance(src[1], bool) or not isinstance(src[1], int) or not 0 <= src[1] <= 65535):
        raise CaptureError(f"{where}: not a capture record: 'src' must be [ip, port]")
    if not isinstance(b64, str):
        raise CaptureError(f"{where}: not a capture record: 'data_b64' must be a base64 string")
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise CaptureError(f"{where}: not a capture record: 'data_b64' is not valid base64") from None
    return CapturedDatagram(data, (src[0], src[1]), float(t))


def format_line(data: bytes, source: tuple[str, int], at: float) -> str:
    """One capture line (with its newline) for a datagram."""
    return json.dumps({"t": at, "src": [source[0], source[1]],
                       "data_b64": base64.b64encode(data).decode("ascii")}) + "\n"
