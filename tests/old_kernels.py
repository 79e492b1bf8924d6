"""Real crash logs of old and non-x86 kernels (tests/data/kernels/), replayed as classic
netconsole would have sent them (issue 21).

Each log is kept as the kernel printed it; ``expected.json`` beside it says how many
reports it must give and each report's title and first line. A log is replayed through
the sans-IO :class:`~kpr_omprog.assembler.Assembler` one line a datagram, in variants:

* ``found``: as the log is;
* ``timestamps``: printk timestamps removed where the log has them, added where it has none;
* ``fragments``: register dumps, ``Modules linked in:`` lists and trace lines cut into
  2-3 pieces at spaces, each piece a datagram and only the last ending the line, as
  pre-4.x kernels send ``pr_cont`` output;
* ``damaged`` (for the logs named in :data:`DAMAGED`): the first column lost where it
  is a ``[`` or a blank, and the ``[`` of every ``[<address>]`` frame.

Used by tests/test_old_kernels.py and tests/benchmarks/kernels_eval.py.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kpr_omprog.assembler import Assembler, AssemblerConfig
from kpr_omprog.crash import analyze

DATA = Path(__file__).parent / "data" / "kernels"
SOURCE = ("10.0.0.1", 6665)
#: datagrams this far apart (s): far below the idle timeout, as a crash is printed
STEP = 0.001
#: the logs also replayed with damage in transit (a mix of arches and kinds)
DAMAGED = (
    "satyr-rhbz-1040900-ppc64-1.log",
    "satyr-arm-hung-task-oops-2.log",
    "satyr-03-rcu.log",
    "satyr-rhbz-1140681-gpf.log",
    "abrt-oops1-null-2.6.27-i686.log",
    "satyr-rhbz-1040900-s390x-1.log",
)

_TIMESTAMP = re.compile(r"^\[\s*\d+\.\d+\] ?")
# A timestamp behind a "<level>" prefix, as dmesg -r and pstore print it ("<4>[ 39.4][ T17] ")
_LEVEL_TIMESTAMP = re.compile(r"^(<\d{1,3}>)?\[\s*\d+\.\d+\]")
# A timestamp as a damaged console prints it: EBCDIC 'c 1851.72!' or a first column lost
# with ']' turned into another byte ('64.735421\u00a8 '). The first-line check allows it.
_DAMAGED_TIMESTAMP = re.compile(r"^(?:[\[c]\s*)?\d+\.\d+[\]!\u00a8] ?")
# Lines old kernels print in pr_cont pieces: module lists, register dumps, stack frames.
_CONTINUED = re.compile(
    r"Modules linked in:|^\s*(?!CPU)(?:[RE]?[A-Z0-9]{2,3}|GPR\d\d|r\d{1,2}|x\d{1,2}|pc|lr|sp|ip|fp|psr|Krnl GPRS) *: "
    r"|\[<?[0-9a-f]{6,16}>?\]|\+0x[0-9a-f]+/0x[0-9a-f]+"
)
_SEPARATOR = re.compile(r"^[-=]{5,}|cut here|end trace")


@dataclass(frozen=True, slots=True)
class Expected:
    title: str
    first: str


@dataclass(frozen=True, slots=True)
class Got:
    title: str
    first: str


def expected() -> dict[str, dict[str, object]]:
    """expected.json: file -> {arch, kernel, source, reports: [{title, first}], note?}."""
    data: dict[str, dict[str, object]] = json.loads((DATA / "expected.json").read_text())
    return data


def reports_of(entry: dict[str, object]) -> list[Expected]:
    reports = entry["reports"]
    assert isinstance(reports, list)
    return [Expected(r["title"], r["first"]) for r in reports]


def read_log(name: str) -> list[bytes]:
    """The log's lines as bytes, without their newlines (kept byte for byte)."""
    raw = (DATA / name).read_bytes()
    return raw.removesuffix(b"\n").split(b"\n")


def found(lines: list[bytes]) -> list[bytes]:
    return [x + b"\n" for x in lines]


def timestamps(lines: list[bytes]) -> list[bytes]:
    """Remove printk timestamps where the log has them, add them where it has none."""
    text = [x.decode("utf-8", "surrogateescape") for x in lines]
    if any(_DAMAGED_TIMESTAMP.match(x) and not _TIMESTAMP.match(x) for x in text):
        out = [_DAMAGED_TIMESTAMP.sub("", x, count=1) for x in text]
    elif any(_LEVEL_TIMESTAMP.match(x) for x in text):
        out = [_TIMESTAMP.sub("", x, count=1) if _TIMESTAMP.match(x) else _LEVEL_TIMESTAMP.sub(r"\1", x, count=1)
               for x in text]
    else:
        out = [f"[{1234.567890 + i * 0.000011:12.6f}] {x}" for i, x in enumerate(text)]
    return [x.encode("utf-8", "surrogateescape") + b"\n" for x in out]


def _cut_points(text: str, start: int, pieces: int) -> list[int]:
    """Positions of spaces that cut text[start:] into about ``pieces`` parts; never right
    before a '<' or '[' (a piece starting with '<4>' or '[ 1.0]' is a new line to a
    classic decoder, which old kernels never send mid-line)."""
    spaces = [i for i in range(start + 1, len(text) - 1)
              if text[i] == " " and text[i + 1] not in "<[ " and text[i - 1] != " "]
    if not spaces:
        return []
    want = [start + (len(text) - start) * k // pieces for k in range(1, pieces)]
    cuts: list[int] = []
    for w in want:
        best = min(spaces, key=lambda s: abs(s - w))
        if best not in cuts:
            cuts.append(best)
    return sorted(cuts)


def fragments(lines: list[bytes]) -> list[bytes]:
    """Cut continued lines into 2-3 datagrams at spaces; only the last piece ends the line."""
    out: list[bytes] = []
    for n, raw in enumerate(lines):
        text = raw.decode("utf-8", "surrogateescape")
        m = _TIMESTAMP.match(text)
        start = m.end() if m else 0
        if not _CONTINUED.search(text[start:]):
            out.append(raw + b"\n")
            continue
        cuts = _cut_points(text, start, 2 + n % 2)
        if not cuts:
            out.append(raw + b"\n")
            continue
        bounds = [0, *cuts, len(text)]
        parts = [text[a:b] for a, b in itertools.pairwise(bounds)]
        assert "".join(parts) == text
        out += [p.encode("utf-8", "surrogateescape") for p in parts[:-1]]
        out.append(parts[-1].encode("utf-8", "surrogateescape") + b"\n")
    return out


_FRAME_BRACKET = re.compile(rb"\[<")


def damaged(lines: list[bytes]) -> list[bytes]:
    """Damage in transit (issue 21 class 7), as in the real damaged logs of the corpus: the
    first column lost where it is a timestamp's or a banner's '[' or an indent, and the '['
    before every '<address>]' of a frame. (A lost letter of a header is not readable.)"""
    return [_FRAME_BRACKET.sub(b"<", x[1:] if x[:1] in (b"[", b" ", b"\t") else x) + b"\n" for x in lines]


VARIANTS: dict[str, Callable[[list[bytes]], list[bytes]]] = {
    "found": found,
    "timestamps": timestamps,
    "fragments": fragments,
    "damaged": damaged,
}


def variants_of(name: str) -> Iterator[str]:
    yield from ("found", "timestamps", "fragments")
    if name in DAMAGED:
        yield "damaged"


def replay(datagrams: list[bytes]) -> list[Got]:
    """Feed the datagrams from one host, STEP apart, and title every report that closes."""
    asm = Assembler(AssemblerConfig())
    reports = []
    at = 1000.0
    for i, d in enumerate(datagrams):
        at = 1000.0 + i * STEP
        reports += asm.feed(d, SOURCE, at)
    reports += asm.expire(at + 3600.0)
    reports += asm.close_all()
    return [Got(analyze(r.lines).title, r.lines[0] if r.lines else "") for r in reports]


def run(name: str, variant: str) -> list[Got]:
    return replay(VARIANTS[variant](read_log(name)))


def first_matches(got: str, want: str) -> bool:
    """The report's first line is the expected one (trailing blanks aside; a timestamp the
    console damaged may stay in front of it)."""
    got, want = got.rstrip(), want.rstrip()
    if got == want:
        return True
    return got.endswith(want) and _DAMAGED_TIMESTAMP.fullmatch(got[: len(got) - len(want)]) is not None


def is_separator(title: str) -> bool:
    return _SEPARATOR.search(title) is not None
