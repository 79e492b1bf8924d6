"""Decoding netconsole datagrams into kernel log lines, per sending host.

Netconsole speaks two formats over UDP:

* classic: raw console text. One datagram holds one line, several lines, or a
  piece of a line (the kernel cuts console writes at 1000 bytes without a marker,
  and old kernels send ``pr_cont`` pieces as they are printed).
* extended (``netconsole=+...``): ``<level>,<seq>,<usec>,<flags>[,k=v...];<text>``
  with ``\\xNN`` escapes, dictionary lines after the text, an optional kernel
  release in front (the ``r`` option) and ``ncfrag=<offset>/<total>`` fragments
  for records longer than one datagram.

:class:`HostDecoder` is sans-IO: it never reads a clock and never raises on
input. Feed it payloads with their receive time; it returns finished
:class:`Line` objects and keeps, per host, the little state the formats need
(the unfinished classic line, pending fragments, the last sequence number)::

    >>> d = HostDecoder()
    >>> [l.text for l in d.feed(b"[    1.000000] hello\\n", at=10.0)]
    ['hello']
    >>> d.feed(b"6,7,1000,-;ext line\\n", at=10.1)[0].seq
    7

Everything it cannot parse is kept as classic text and counted in
:class:`DecodeStats`.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field

__all__ = ["MAX_PRINT_CHUNK", "DecodeStats", "DecoderLimits", "HostDecoder", "Line"]

#: The kernel never sends a datagram longer than this (drivers/net/netconsole.c).
MAX_PRINT_CHUNK = 1000

# "[    1.234567]" optionally followed by a printk caller id "[T123]" / "[C1]".
_CLASSIC_PREFIX = re.compile(rb"^(?:<(\d{1,3})>)?(?:\[\s*(\d{1,10}\.\d{1,9})\])?(?:\[\s*[TC]\d+\])? ?")
# The start of a new classic console line: a timestamp or a level prefix.
_NEW_LINE_START = re.compile(rb"^(?:<\d{1,3}>|\[\s*\d{1,10}\.\d{1,9}\])")
_EXT_ESCAPE = re.compile(rb"\\x([0-9a-fA-F]{2})")
_DIGITS = frozenset(b"0123456789")
#: A line the fast path took whole (:meth:`HostDecoder.quick_line`): kernel time, text,
#: release, and for an extended record its level and sequence number (None for classic).
Quick = tuple[float, str, str | None, int | None, int | None]
_PREFIX_FIRST = (b"[", b"<")
# A stamp damaged in transit: its "[" lost ("1570.586225] "), or both brackets turned into
# other characters by a console's code page ("c 1851.721062! " through EBCDIC, "64.735421¨ "
# through a 3270). Anchored, and fails within a few bytes on an ordinary line.
_DAMAGED_STAMP = re.compile(rb"(?:[^\s\d\[<]{1,2} )? *(\d{1,10}\.\d{6})(?:\]|[^\w\s\]]{1,2}) ?")

# The fast path's two shapes (HostDecoder.quick_line), matched whole: anything else
# (a caller id, a CR, a NUL, several lines, escapes, fragments, metadata, a continued
# record) takes the full decoder. Each is one pass over the datagram, no backtracking
# beyond the last character: O(len(payload)) for any input.
# "?+" is possessive: a line whose text starts with "[" ("[ INFO: possible recursive locking ]")
# must not match by leaving the space in its text, or its banner is lost.
_ONE_CLASSIC_LINE = re.compile(
    rb"\[ *(\d{1,10}\.\d{1,9})\] ?+((?:[^\[\x00\n][^\x00\n]*)?)(?<!\r)\n").fullmatch
_ONE_EXTENDED_RECORD = re.compile(
    rb"(?:(?!\d{1,64},)([^,;\x00\n]{1,64}),)?(\d{1,4}),(\d{1,19}),(\d{1,19}),-;([^\x00\n\\]*)(?<!\r)\n?").fullmatch



def one_classic_line(payload: bytes, max_line_bytes: int) -> tuple[float, str] | None:
    """(kernel time, text) of a datagram that is one whole timestamped classic line in valid
    UTF-8 within ``max_line_bytes``, as a fresh :class:`HostDecoder` decodes it, without
    building one; None for anything else.

    >>> one_classic_line(b"[   12.500000] e1000: eth0 NIC Link is Up\\n", 16384)
    (12.5, 'e1000: eth0 NIC Link is Up')
    >>> one_classic_line(b"6,12,500000,-;no stamp\\n", 16384) is None
    True
    """
    m = _ONE_CLASSIC_LINE(payload)
    if m is None or len(payload) > max_line_bytes:
        return None
    try:
        return float(m.group(1)), m.group(2).decode()
    except UnicodeDecodeError:
        return None


@dataclass(slots=True)
class Line:
    """One kernel log line as received from one host.

    ``text`` has every transport header removed (timestamp, level, extended
    header) and is valid UTF-8. ``ts`` is the kernel's own timestamp in seconds
    since boot, when the line carried one.
    """

    text: str
    at: float
    ts: float | None = None
    level: int | None = None
    seq: int | None = None
    release: str | None = None
    #: the host's log went backwards: this is the first line of a new boot
    reboot: bool = False
    #: bytes that were not valid UTF-8 (or NULs) were replaced in ``text``
    undecodable: bool = False
    #: part of this record's fragments never arrived
    fragments_lost: bool = False
    #: extended sequence numbers skipped before this line (not necessarily loss)
    seq_gap: int = 0
    #: messages the sender transmitted but we never received, from its ``msgid=`` sysdata
    #: (which counts only what was actually sent): real loss on the network
    lost: int = 0
    #: the sender's configfs userdata (`` key=value`` lines), as it labels itself
    userdata: tuple[tuple[str, str], ...] | None = None


@dataclass(slots=True)
class DecodeStats:
    """Counters of what decoding met; shared by every host of an assembler."""

    datagrams: int = 0
    lines: int = 0
    extended: int = 0
    malformed_headers: int = 0
    bad_fragments: int = 0
    fragments_expired: int = 0
    undecodable: int = 0
    oversized: int = 0
    duplicates: int = 0
    reboots: int = 0
    #: lines a host sent twice, once per format (a basic and an extended target both at us)
    dual_format_duplicates: int = 0
    #: messages lost on the network, from gaps in ``msgid=``
    msgid_lost: int = 0
    #: datagrams with more lines than max_lines_per_datagram (the rest kept as one line)
    lines_joined: int = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class DecoderLimits:
    """Bounds on what one host may make the decoder hold."""

    #: longest classic line kept while its pieces arrive; the rest is cut
    max_line_bytes: int = 16384
    #: lines read out of one datagram (or one extended record); the rest are kept as one
    #: line (their text stays in the report, but is not read for crash markers), so a
    #: datagram costs at most this many lines' work. The kernel sends one record a datagram,
    #: a few lines at most; empty lines carry nothing and are dropped first
    max_lines_per_datagram: int = 8
    #: an extended record claiming to be longer than this is rejected
    max_record_bytes: int = 65536
    #: records being reassembled from ncfrag pieces at the same time
    max_pending_fragments: int = 8
    #: seconds to wait for the rest of a classic line or of a fragmented record
    piece_timeout: float = 0.5
    #: extended sequence numbers going back by more than this mean a reboot
    reorder_window: int = 32
    #: userdata entries kept per record (the kernel allows 256); the rest are dropped
    max_userdata: int = 32


@dataclass(slots=True)
class _Fragments:
    total: int
    first_at: float
    header: tuple[int, int, int, str | None]
    pieces: dict[int, bytes] = field(default_factory=dict)
    have: int = 0


def _to_text(raw: bytes, stats: DecodeStats) -> tuple[str, bool]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        stats.undecodable += 1
        return raw.decode("utf-8", "replace").replace("\x00", "\ufffd"), True
    if "\x00" in text:
        stats.undecodable += 1
        return text.replace("\x00", "\ufffd"), True
    return text, False


class HostDecoder:
    """Turns one host's datagrams into :class:`Line` objects (sans-IO)."""

    __slots__ = (
        "_frags",
        "_last_key",
        "_last_msgid",
        "_last_seq",
        "_last_ts",
        "_partial",
        "_partial_at",
        "_recent",
        "_release",
        "_seen",
        "_seen_formats",
        "_userdata",
        "limits",
        "stats",
    )

    def __init__(self, limits: DecoderLimits | None = None, stats: DecodeStats | None = None) -> None:
        self.limits = limits or DecoderLimits()
        self.stats = stats if stats is not None else DecodeStats()
        self._partial: bytes = b""
        self._partial_at = 0.0
        self._frags: dict[int, _Fragments] = {}
        self._last_seq: int | None = None
        self._last_ts: float | None = None
        self._release: str | None = None
        self._seen = False
        self._last_msgid: int | None = None
        self._userdata: tuple[tuple[str, str], ...] | None = None
        # Dual-format dedupe: 1 = classic seen, 2 = extended seen; once both, the last
        # (kernel time, text) keys of each format (None until then), so the second copy of a
        # line is dropped.
        self._seen_formats = 0
        self._recent: tuple[dict[tuple[float, str], None], dict[tuple[float, str], None]] | None = None
        # the last line of the first format, to seed the dedupe when the second format appears
        self._last_key: tuple[float, str] | None = None

    # -- public -------------------------------------------------------------------------

    def feed(self, payload: bytes, at: float) -> list[Line]:
        """Decode one datagram received at ``at``; return the lines it completed."""
        quick = self.quick_line(payload)
        if quick is not None:
            return [self.line(quick, at)]  # the usual datagram: one whole line (counted there)
        self.stats.datagrams += 1
        out: list[Line] = []
        if len(payload) > 4 * MAX_PRINT_CHUNK:
            # Netconsole never sends this much; keep it, but as one bounded line.
            self.stats.oversized += 1
        if payload[:1] in _DIGITS_BYTES and b";" in payload[:96]:
            ext = self._feed_extended(payload, at, out)
            if ext:
                return out
        if not self._partial and payload[-1:] == b"\n" and payload.count(b"\n") == 1:
            self._emit_classic(payload[:-1], at, out)  # the usual datagram: one whole line
            return out
        self._feed_classic(payload, at, out)
        return out

    def quick_line(self, payload: bytes) -> Quick | None:
        """The usual datagram, cheaply: one whole line, valid UTF-8, from a host with nothing
        pending that sends one format: a timestamped classic line, or an extended
        record that follows the last one (sequence + 1) with no escapes, fragments or
        metadata. Returns its kernel time, text, release, level and sequence number (a
        :data:`Quick`) without building a :class:`Line` (the caller asks :meth:`line` for one
        only if it keeps more than the text), or None when :meth:`feed` must take the
        datagram (anything else: a reboot, a gap, a duplicate, a new release), the decoder
        then unchanged. One anchored regular expression: O(len(payload)).

            >>> d = HostDecoder(); _ = d.feed(b"[    1.000000] first\\n", at=1.0)
            >>> d.quick_line(b"[    1.500000] hello\\n")
            (1.5, 'hello', None, None, None)
        """
        if self._partial or self._frags or len(payload) > self.limits.max_line_bytes:
            return None
        formats = self._seen_formats
        if formats == 1:
            m = _ONE_CLASSIC_LINE(payload)
        elif formats == 2:
            m = _ONE_EXTENDED_RECORD(payload)
        else:
            return None
        if m is None:
            return None
        try:
            text = m.group(m.re.groups).decode()  # the text is each shape's last group
        except UnicodeDecodeError:
            return None  # before any state changes: feed() then takes the datagram whole
        if formats == 1:
            ts = float(m.group(1))
            last = self._last_ts
            if last is not None and ts + 1.0 < last:
                return None  # a reboot
            self._last_ts = ts
            release = level = seq = None
        else:
            rel, level_b, seq_b, usec, _ = m.groups()
            seq = int(seq_b)
            last_seq = self._last_seq
            if last_seq is None or seq != last_seq + 1:
                return None  # the first record, a gap, a duplicate or a reboot
            release = self._release
            if rel is not None and rel.decode("ascii", "replace") != release:
                return None  # a new release: feed() records it
            self._last_seq = seq
            self.stats.extended += 1
            ts = int(usec) / 1e6
            level = int(level_b) & 7
        self._last_key = (ts, text)
        stats = self.stats
        stats.datagrams += 1
        stats.lines += 1
        return ts, text, release, level, seq

    def line(self, quick: Quick, at: float) -> Line:
        """The :class:`Line` that :meth:`feed` would have made of the datagram ``quick`` came from."""
        ts, text, release, level, seq = quick
        if seq is None:
            return Line(text, at, ts)
        return Line(text, at, ts, level, seq, release, userdata=self._userdata)

    @property
    def formats(self) -> int:
        """The formats this host sent: 1 classic, 2 extended, 3 both (0 before its first line)."""
        return self._seen_formats

    @property
    def userdata(self) -> tuple[tuple[str, str], ...] | None:
        """The host's netconsole userdata, as its last extended record with metadata said."""
        return self._userdata

    @property
    def idle(self) -> bool:
        """Nothing pending: :meth:`expire` and :meth:`deadline` have nothing to do."""
        return not self._partial and not self._frags

    def deadline(self) -> float | None:
        """When :meth:`expire` has work to do (an unfinished line or record)."""
        if not self._partial and not self._frags:
            return None
        times = [f.first_at for f in self._frags.values()]
        if self._partial:
            times.append(self._partial_at)
        if not times:
            return None
        return min(times) + self.limits.piece_timeout

    def expire(self, now: float) -> list[Line]:
        """Give up waiting for pieces older than the timeout; return what they make."""
        out: list[Line] = []
        if not self._partial and not self._frags:
            return out
        timeout = self.limits.piece_timeout
        if self._partial and self._partial_at + timeout <= now:
            self._emit_classic(self._partial, self._partial_at, out)
            self._partial = b""
        for seq in [s for s, f in self._frags.items() if f.first_at + timeout <= now]:
            self._flush_fragments(seq, out, lost=True)
        return out

    def flush(self) -> list[Line]:
        """End of input: return everything still pending."""
        out: list[Line] = []
        if self._partial:
            self._emit_classic(self._partial, self._partial_at, out)
            self._partial = b""
        for seq in list(self._frags):
            self._flush_fragments(seq, out, lost=True)
        return out

    @property
    def pending_bytes(self) -> int:
        return len(self._partial) + sum(f.have for f in self._frags.values())

    # -- classic ------------------------------------------------------------------------

    def _feed_classic(self, payload: bytes, at: float, out: list[Line]) -> None:
        if self._partial:
            if _NEW_LINE_START.match(payload):
                # The unfinished line was complete after all (a line sent without LF).
                self._emit_classic(self._partial, self._partial_at, out)
                self._partial = b""
            else:
                payload = self._partial + payload
                at = self._partial_at
                self._partial = b""
        if payload.endswith(b"\n"):
            if payload.count(b"\n") == 1:  # the usual datagram: one whole line
                self._emit_classic(payload[:-1], at, out)
                return
            payload, rest = payload[:-1], b""
        else:
            # No separator: rpartition puts everything in ``rest``, as wanted.
            payload, _, rest = payload.rpartition(b"\n")
        if payload:
            for raw in self._cap_lines(payload.split(b"\n")):
                self._emit_classic(raw, at, out)
        if rest:
            if len(rest) > self.limits.max_line_bytes:
                self.stats.oversized += 1
                self._emit_classic(rest[: self.limits.max_line_bytes], at, out)
            else:
                self._partial = rest
                self._partial_at = at

    def _cap_lines(self, raws: list[bytes]) -> list[bytes]:
        """Empty lines dropped, at most max_lines_per_datagram lines: a datagram of 4096
        newlines or 2048 one-letter lines costs what eight lines do. O(len(datagram))."""
        cap = self.limits.max_lines_per_datagram
        if len(raws) <= cap:
            return raws
        raws = list(filter(None, raws))  # C speed, even for 4096 empty pieces
        if len(raws) > cap:
            self.stats.lines_joined += 1
            raws[cap - 1:] = [b"\n".join(raws[cap - 1:])]
        return raws

    def _emit_classic(self, raw: bytes, at: float, out: list[Line]) -> None:
        # Runs once per noise line: kept free of helper calls and keyword arguments.
        if raw[-1:] == b"\r":
            raw = raw[:-1]
        level: int | None = None
        ts: float | None = None
        if raw[:1] in _PREFIX_FIRST:
            m = _CLASSIC_PREFIX.match(raw)
            if m is not None and m.end():
                lv, stamp = m.groups()
                if lv is not None:
                    level = int(lv)
                if stamp is not None:
                    ts = float(stamp)
                raw = raw[m.end():]
        else:
            # A damaged stamp is still a stamp, or the header behind it would not start its line.
            m = _DAMAGED_STAMP.match(raw)
            if m is not None:
                ts = float(m.group(1))
                raw = raw[m.end():]
        if len(raw) > self.limits.max_line_bytes:
            self.stats.oversized += 1
            raw = raw[: self.limits.max_line_bytes]
        try:
            text = raw.decode()
            bad = "\x00" in text
            if bad:
                text = text.replace("\x00", "\ufffd")
        except UnicodeDecodeError:
            text = raw.decode("utf-8", "replace").replace("\x00", "\ufffd")
            bad = True
        line = Line(text, at, ts, level)
        if bad:
            self.stats.undecodable += 1
            line.undecodable = True
        if ts is not None:
            last = self._last_ts
            # A kernel clock that runs backwards by more than a second is a new boot.
            if last is not None and ts + 1.0 < last:
                line.reboot = True
                self.stats.reboots += 1
            self._last_ts = ts
        elif self._seen and text.startswith("Linux version "):
            # Without timestamps only the boot banner tells a reboot apart.
            line.reboot = True
            self.stats.reboots += 1
        self._seen = True
        if not self._seen_formats & 1:
            self._note_format(0)
        if ts is not None:
            # float("86.950000") == 86950000 / 1e6: both formats give the same key
            if self._recent is not None:
                if self._duplicate(0, ts, text):
                    return
            else:
                self._last_key = (ts, text)
        self.stats.lines += 1
        out.append(line)

    # -- dual formats -----------------------------------------------------------------------

    def _note_format(self, fmt: int) -> None:
        first = self._seen_formats
        self._seen_formats |= 1 << fmt
        if self._seen_formats == 3:
            self._recent = ({}, {})
            if self._last_key is not None:
                self._recent[first - 1][self._last_key] = None
            self._last_key = None

    def _duplicate(self, fmt: int, ts: float, text: str) -> bool:
        """True when the other format already delivered this line (same kernel time, same
        text); else remember it. O(1); each format remembers its last 256 lines."""
        assert self._recent is not None
        key = (ts, text)
        other = self._recent[1 - fmt]
        if key in other:
            del other[key]
            self.stats.dual_format_duplicates += 1
            return True
        mine = self._recent[fmt]
        mine[key] = None
        if len(mine) > 256:
            del mine[next(iter(mine))]
        return False

    # -- extended -----------------------------------------------------------------------

    def _feed_extended(self, payload: bytes, at: float, out: list[Line]) -> bool:
        """Handle ``payload`` as an extended record; False when it is not one."""
        header, _, body = payload.partition(b";")
        fields = header.split(b",")
        release: str | None = None
        if len(fields) >= 5 and not fields[0].isdigit():
            # The "r" option: the kernel release comes first.
            release = fields.pop(0).decode("ascii", "replace")
        if len(fields) < 4 or not (fields[0].isdigit() and fields[1].isdigit() and fields[2].isdigit()):
            self.stats.malformed_headers += 1
            return False
        if len(fields[0]) > 4 or len(fields[1]) > 20 or len(fields[2]) > 20:
            self.stats.malformed_headers += 1
            return False
        level, seq, usec = int(fields[0]), int(fields[1]), int(fields[2])
        frag: tuple[int, int] | None = None
        for extra in fields[4:]:
            if extra.startswith(b"ncfrag="):
                off, slash, total = extra[7:].partition(b"/")
                if not (slash and off.isdigit() and total.isdigit()) or len(off) > 9 or len(total) > 9:
                    self.stats.bad_fragments += 1
                    return True
                frag = (int(off), int(total))
        self.stats.extended += 1
        if release is not None:
            self._release = release
        if frag is not None:
            self._feed_fragment(frag, (level, seq, usec, release), body, at, out)
            return True
        self._emit_extended(level, seq, usec, release, body, at, out, lost=False)
        return True

    def _feed_fragment(self, frag: tuple[int, int], header: tuple[int, int, int, str | None],
                       body: bytes, at: float, out: list[Line]) -> None:
        off, total = frag
        seq = header[1]
        if total > self.limits.max_record_bytes or total == 0 or off >= total or off + len(body) > total:
            self.stats.bad_fragments += 1
            return
        pending = self._frags.get(seq)
        if pending is None or pending.total != total:
            if pending is not None:
                self._flush_fragments(seq, out, lost=True)
            if len(self._frags) >= self.limits.max_pending_fragments:
                oldest = min(self._frags, key=lambda s: self._frags[s].first_at)
                self._flush_fragments(oldest, out, lost=True)
            pending = self._frags[seq] = _Fragments(total, at, header)
        if off in pending.pieces:
            self.stats.duplicates += 1
            return
        pending.pieces[off] = body
        pending.have += len(body)
        if pending.have >= total:
            self._flush_fragments(seq, out, lost=False)

    def _flush_fragments(self, seq: int, out: list[Line], lost: bool) -> None:
        pending = self._frags.pop(seq)
        data = bytearray()
        expected = 0
        for off in sorted(pending.pieces):
            piece = pending.pieces[off]
            if off > expected:
                lost = True
            elif off < expected:
                piece = piece[expected - off:]  # overlapping piece: keep the first copy
            data += piece
            expected = max(expected, off + len(pending.pieces[off]))
        if expected < pending.total:
            lost = True
        if lost:
            self.stats.fragments_expired += 1
        level, s, usec, release = pending.header
        self._emit_extended(level, s, usec, release, bytes(data), pending.first_at, out, lost=lost)

    def _metadata(self, meta: bytes, release: str | None) -> tuple[int, str | None]:
        """Read the `` KEY=VALUE`` lines after an extended record's text: printk's dictionary
        (``SUBSYSTEM=``, ``DEVICE=``), then configfs userdata, then sysdata (``cpu=``,
        ``taskname=``, ``release=``, ``msgid=``), which the kernel writes last. Returns the
        messages lost before this one (from ``msgid``) and the release. O(len(meta))."""
        user: list[tuple[str, str]] = []
        sysdata: dict[str, str] = {}
        # The kernel writes at most ~260 metadata lines (256 userdata + sysdata + dictionary).
        for raw in meta.split(b"\n", 300)[:300]:
            if raw[:1] != b" " or b"=" not in raw:
                continue
            key_b, _, value_b = raw[1:].partition(b"=")
            key = key_b.decode("ascii", "replace")
            value = value_b.decode("utf-8", "replace")
            if key in ("cpu", "taskname", "release", "msgid"):
                # sysdata comes last: a user key of the same name is overridden by the kernel's
                if key in sysdata and key != "msgid":
                    user.append((key, sysdata[key]))
                sysdata[key] = value
            elif key not in ("SUBSYSTEM", "DEVICE") and len(user) < self.limits.max_userdata:
                user.append((key, value))
        if user:
            labels = tuple(user)
            if labels != self._userdata:
                self._userdata = labels
        lost = 0
        msgid = sysdata.get("msgid", "")
        if msgid.isdigit() and len(msgid) <= 10:
            n = int(msgid)
            last = self._last_msgid
            if last is not None:
                gap = (n - last - 1) & 0xFFFFFFFF  # a u32 that wraps
                if 0 < gap < 1 << 31:
                    lost = gap
                    self.stats.msgid_lost += gap
            if last is None or (n - last) & 0xFFFFFFFF < 1 << 31:
                self._last_msgid = n
        rel = sysdata.get("release")
        if rel and release is None:
            release = rel[:64]
            self._release = release
        return lost, release

    def _emit_extended(self, level: int, seq: int, usec: int, release: str | None, body: bytes,
                       at: float, out: list[Line], lost: bool) -> None:
        text_raw, _, meta = body.partition(b"\n")
        if not self._seen_formats & 2:
            self._note_format(1)
        msg_lost = 0
        if meta:
            msg_lost, release = self._metadata(meta, release)
        if b"\\x" in text_raw:
            text_raw = _unescape(text_raw)
        reboot = False
        gap = 0
        last = self._last_seq
        if last is not None:
            if seq == last:
                self.stats.duplicates += 1
                return
            if seq + self.limits.reorder_window < last:
                reboot = True
                self.stats.reboots += 1
                self._last_msgid = None
            elif seq > last + 1:
                gap = seq - last - 1
        if last is None or reboot or seq > last:
            self._last_seq = seq
        ts = usec / 1e6
        pieces = self._cap_lines(text_raw.split(b"\n")) if b"\n" in text_raw else (text_raw,)
        for i, raw in enumerate(pieces):
            if len(raw) > self.limits.max_line_bytes:
                self.stats.oversized += 1
                raw = raw[: self.limits.max_line_bytes]
            text, bad = _to_text(raw.rstrip(b"\r"), self.stats)
            if self._recent is not None:
                if self._duplicate(1, ts, text):
                    continue
            else:
                self._last_key = (ts, text)
            self.stats.lines += 1
            out.append(Line(text, at, ts, level & 7, seq, release or self._release,
                            reboot=reboot and i == 0, undecodable=bad, fragments_lost=lost,
                            seq_gap=gap if i == 0 else 0, lost=msg_lost if i == 0 else 0,
                            userdata=self._userdata))


_DIGITS_BYTES = frozenset(bytes((d,)) for d in _DIGITS)


def _unescape(raw: bytes) -> bytes:
    """printk's ``\\xNN`` escapes, at C speed: the kernel escapes every non-printable byte
    and the backslash itself, so any other backslash sequence is not the kernel's and is
    left to the (slower, exact) pattern."""
    if b"\\" in raw.replace(b"\\x", b""):
        return _EXT_ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), raw)
    try:
        return codecs.escape_decode(raw)[0]
    except ValueError:  # a "\\x" without two hex digits
        return _EXT_ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), raw)
