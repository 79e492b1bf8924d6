"""The journal: datagrams of crash reports still being assembled, in an append-only file.

A receiver killed in the middle of a report must lose none of it, so every datagram
of an open report is written here before it is acknowledged (omprog) or at the end of
the burst it came in (UDP), and replayed through a fresh assembler on the next start.

One ``write()`` per batch, no transaction: a process killed at any moment leaves what
it wrote in the page cache, the same guarantee SQLite's ``synchronous=NORMAL`` gave
per commit at a fraction of the cost (a commit per line was most of omprog mode's
time). A power cut may lose the tail, as before. Each write is one frame with a
checksum, so a torn tail (a full disk, a power cut) is found, logged and cut off on
load, whole batches at a time::

    j = Journal("/var/lib/kpr-omprog/journal.bin")
    j.add_many([("10.0.0.7", 1700000000.0, "10.0.0.7", 6666, b"BUG: ...\\n")])
    j.drop("10.0.0.7")           # its report closed: the rows are dead
    rows = j.load()              # on start: the rows of reports still open, in order

Dead rows are reclaimed by truncating the file when no report is open (the usual
case between crashes) or by rewriting the live rows when the file is mostly dead.
"""

from __future__ import annotations

import os
import struct
import zlib

from .logs import get_logger

__all__ = ["Journal", "JournalFull", "Row"]

log = get_logger()

#: (host key, receive time, sender ip, sender port, datagram)
Row = tuple[str, float, str, int, bytes]

# frame (one per write): body length, crc32 of body; body: records back to back, each a
# kind and its fields (one checksum per batch: a torn write tears the batch, never a row)
_FRAME = struct.Struct("<II")
_ADD = struct.Struct("<BdHHHI")  # kind, at, port, len(key), len(ip), len(data)
_DROP = struct.Struct("<BH")  # kind, len(key)
_KIND_ADD, _KIND_DROP = 1, 2
#: rewriting the live rows is worth it past this size, when they are under a quarter of the file
_COMPACT_MIN_BYTES = 8 << 20


class JournalFull(Exception):
    """The journal reached its cap, or the disk refused a write."""


class Journal:
    """Append-only journal of open reports' datagrams. Not thread-safe: one owner."""

    def __init__(self, path: str, cap_bytes: int = 256 << 20) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        self.path = path
        self.cap_bytes = cap_bytes
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = os.fstat(self._fd).st_size
        #: bytes of live rows per key (what compaction would keep), and their sum
        self._live: dict[str, int] = {}
        self._live_total = 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @property
    def size(self) -> int:
        return self._size

    @property
    def live_bytes(self) -> int:
        return self._live_total

    def add_many(self, rows: list[Row]) -> None:
        """Append ``rows`` with one write; raises :class:`JournalFull` and writes nothing on failure."""
        if not rows:
            return
        body, sizes = _encode(rows)
        self._append(body)
        live = self._live
        for key, n in sizes.items():
            live[key] = live.get(key, 0) + n
            self._live_total += n

    def drop(self, key: str) -> None:
        """The report of ``key`` closed: its rows are dead."""
        dead = self._live.pop(key, None)
        if dead is None:
            return
        self._live_total -= dead
        if not self._live:
            self._truncate(0)  # nothing open: the whole file is dead
            return
        k = key.encode("utf-8", "surrogateescape")
        body = _DROP.pack(_KIND_DROP, len(k)) + k
        # Past the cap too: a tombstone is tiny and is what lets the file shrink.
        self._append(body, capped=False)
        if self._size > _COMPACT_MIN_BYTES and self.live_bytes * 4 < self._size:
            self._compact()

    def load(self) -> list[Row]:
        """The live rows in the order they were written (call once, at start)."""
        rows, end = self._read()
        if end < self._size:
            log.warning("journal_torn_tail", path=self.path, kept_bytes=end, cut_bytes=self._size - end,
                        why="the last write was cut short (full disk or power loss); rows before it are kept")
            self._truncate(end)
        self._live = _sizes(rows)
        self._live_total = sum(self._live.values())
        return rows

    # -- internals ----------------------------------------------------------------------

    def _append(self, body: bytes, capped: bool = True) -> None:
        frame = _FRAME.pack(len(body), zlib.crc32(body))
        size = len(frame) + len(body)
        if capped and self._size + size > self.cap_bytes:
            raise JournalFull(f"{self.path}: {self._size} + {size} bytes would pass the cap of "
                              f"{self.cap_bytes} (journal_cap_bytes)")
        try:
            written = os.writev(self._fd, (frame, body))  # no copy of the body to prepend the frame
            if written < size:
                rest = (frame + body)[written:]
                while rest:
                    rest = rest[os.write(self._fd, rest):]
        except OSError as e:
            # A half-written frame would hide every later one from load(): cut it off.
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass
            raise JournalFull(f"cannot write {self.path}: {e.strerror or e}") from None
        self._size += size

    def _truncate(self, size: int) -> None:
        try:
            os.ftruncate(self._fd, size)
        except OSError as e:
            log.error("journal_truncate_failed", path=self.path, error=e.strerror or str(e))
            return
        self._size = size

    def _read(self, keep: set[str] | None = None) -> tuple[list[Row], int]:
        """The live rows (of ``keep``'s keys only, if given) and where the last whole frame ends.

        Reads frame by frame and forgets a key's rows at its drop, so memory holds the live
        rows, not the file (compaction runs while thousands of reports close)."""
        by_key: dict[str, list[tuple[int, Row]]] = {}
        pos = n = 0
        with open(self.path, "rb") as f:
            while True:
                head = f.read(_FRAME.size)
                if len(head) < _FRAME.size:
                    break
                length, crc = _FRAME.unpack(head)
                body = f.read(length)
                if len(body) < length or not body or zlib.crc32(body) != crc:
                    break
                records = _records(body)
                if records is None:
                    break
                for record in records:
                    if isinstance(record, str):
                        by_key.pop(record, None)
                    elif keep is None or record[0] in keep:
                        by_key.setdefault(record[0], []).append((n, record))
                    n += 1
                pos += _FRAME.size + length
        rows = sorted((x for xs in by_key.values() for x in xs), key=lambda x: x[0])
        return [row for _, row in rows], pos

    def _compact(self) -> None:
        rows, _ = self._read(keep=set(self._live))
        body, live = _encode(rows)
        blob = _FRAME.pack(len(body), zlib.crc32(body)) + body if rows else b""
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            log.warning("journal_compact_failed", path=self.path, error=e.strerror or str(e), size=self._size,
                        why="dead rows stay in the file until the next try")
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
        log.info("journal_compacted", path=self.path, bytes_before=self._size, bytes_after=len(blob),
                 rows=len(rows))
        self._size = len(blob)
        self._live = live
        self._live_total = sum(live.values())


def _encode(rows: list[Row]) -> tuple[bytes, dict[str, int]]:
    """The records of ``rows`` back to back, and how many bytes each key got."""
    parts: list[bytes] = []
    sizes: dict[str, int] = {}
    add = _ADD.pack
    for key, at, ip, port, data in rows:
        k = key.encode("utf-8", "surrogateescape")
        i = k if ip == key else ip.encode("utf-8", "surrogateescape")  # grouped by ip: the key is the ip
        parts += (add(_KIND_ADD, at, port, len(k), len(i), len(data)), k, i, data)
        sizes[key] = sizes.get(key, 0) + _ADD.size + len(k) + len(i) + len(data)
    return b"".join(parts), sizes


def _sizes(rows: list[Row]) -> dict[str, int]:
    """What :func:`_encode` would give each key, without building the bytes (for load)."""
    sizes: dict[str, int] = {}
    for key, _, ip, _, data in rows:
        k, i = len(key.encode("utf-8", "surrogateescape")), len(ip.encode("utf-8", "surrogateescape"))
        sizes[key] = sizes.get(key, 0) + _ADD.size + k + i + len(data)
    return sizes


def _records(body: bytes) -> list[Row | str] | None:
    """The rows (and dropped keys, as str) of one frame's body; None if it does not parse."""
    out: list[Row | str] = []
    pos, end = 0, len(body)
    while pos < end:
        kind = body[pos]
        if kind == _KIND_ADD and pos + _ADD.size <= end:
            _, at, port, lk, li, ld = _ADD.unpack_from(body, pos)
            o = pos + _ADD.size
            pos = o + lk + li + ld
            if pos > end:
                return None
            out.append((body[o:o + lk].decode("utf-8", "surrogateescape"),
                        at, body[o + lk:o + lk + li].decode("utf-8", "surrogateescape"), port,
                        body[o + lk + li:pos]))
        elif kind == _KIND_DROP and pos + _DROP.size <= end:
            _, lk = _DROP.unpack_from(body, pos)
            o = pos + _DROP.size
            pos = o + lk
            if pos > end:
                return None
            out.append(body[o:pos].decode("utf-8", "surrogateescape"))
        else:
            return None
    return out
