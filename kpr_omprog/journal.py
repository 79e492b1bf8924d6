"""The journal: datagrams of crash reports still being assembled, in an append-only file.

A receiver killed in the middle of a report must lose none of it, so every datagram
of an open report is written here before it is acknowledged (omprog) or at the end of
the burst it came in (UDP), and replayed through a fresh assembler on the next start.

One store per batch into a shared memory map of the file, no system call and no
transaction: a store into a ``MAP_SHARED`` page is a store into the page cache itself,
and a process killed at any moment leaves every store it executed there (a killed
process's stores are not undone, whatever the CPU: they leave its store buffer whether or
not it lives on; only the ones it had not executed yet are missing; the omprog reader's
ring, :mod:`kpr_omprog.sources.line_ring`, rests on the same), the same guarantee ``write()``
gave (and SQLite's ``synchronous=NORMAL`` before it) at a fraction of the cost: the
``write()`` was a third of the journal's time a line in omprog mode. A power cut may lose
the tail, as before. Each batch is one frame with a checksum, so a torn tail (a power cut)
is found, logged and cut off on load, whole batches at a time::

    j = Journal("/var/lib/kpr-omprog/journal.bin")
    j.add_many([("10.0.0.7", 1700000000.0, "10.0.0.7", 6666, b"BUG: ...\\n")])
    j.drop("10.0.0.7")           # its report closed: the rows are dead
    rows = j.load()              # on start: the rows of reports still open, in order

The file is allocated a mebibyte at a time ahead of the frames (``posix_fallocate``: a full
disk is a :class:`JournalFull` at that step, never a SIGBUS on a store), so its length is not
where the frames end: a zero frame head is. Each batch writes the zero head after its frame
first and its own head last, so a process killed halfway leaves the old end in place, and
bytes of an earlier, longer file after it (however a hostile datagram shaped them) are
never read as frames.

Dead rows are reclaimed by truncating the file when no report is open (the usual
case between crashes) or by rewriting the live rows when the file is mostly dead.
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib

from .logs import get_logger

__all__ = ["Context", "Journal", "JournalFull", "Row", "used_bytes"]

log = get_logger()

#: (host key, receive time, sender ip, sender port, datagram)
Row = tuple[str, float, str, int, bytes]


class Context(bytes):
    r"""The datagram of a row that is one of its host's context lines (the lines kept before
    its report opened), not a datagram the host sent then: a restart puts it back into the
    host's context ring and never reads it for crash markers (a crash line kept as context,
    such as a crash the host's log buffer sent again, must not open a report on replay).
    Written as a record kind of its own; equal to the same bytes.

    >>> Context(b"[ 1.0] x\n") == b"[ 1.0] x\n", type(Context(b"y")).__name__
    (True, 'Context')
    """

    __slots__ = ()

# frame (one per write): body length, crc32 of body; body: records back to back, each a
# kind and its fields (one checksum per batch: a torn write tears the batch, never a row)
_FRAME = struct.Struct("<II")
_ADD = struct.Struct("<BdHHHI")  # kind, at, port, len(key), len(ip), len(data)
_DROP = struct.Struct("<BH")  # kind, len(key)
_KIND_ADD, _KIND_DROP, _KIND_CONTEXT = 1, 2, 3
#: rewriting the live rows is worth it past this size, when they are under a quarter of the file
_COMPACT_MIN_BYTES = 8 << 20
#: the file grows (and shrinks back, when no report is open) this much at a time
_CHUNK = 1 << 20
#: a frame head of zeros: where the frames end
_END = bytes(_FRAME.size)


def _round_up(n: int) -> int:
    return -(-n // _CHUNK) * _CHUNK


def _frames_end(buf: bytes | mmap.mmap, size: int) -> int:
    """Where the frames of ``buf[:size]`` end, by their heads alone (no checksums)."""
    pos = 0
    while pos + _FRAME.size <= size:
        length = _FRAME.unpack_from(buf, pos)[0]
        if length == 0 or pos + _FRAME.size + length > size:
            break
        pos += _FRAME.size + length
    return pos


def used_bytes(path: str) -> int:
    """The bytes of frames in the journal at ``path`` (its length counts room allocated ahead);
    0 when there is none. For ``status``: reads the file, never the receiver's state, and by
    ``pread`` (a map of a file the receiver shrinks meanwhile would be a SIGBUS)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return 0
    try:
        pos = 0
        while True:
            head = os.pread(fd, _FRAME.size, pos)
            if len(head) < _FRAME.size:
                return pos
            length = _FRAME.unpack(head)[0]
            if length == 0 or len(os.pread(fd, 1, pos + _FRAME.size + length - 1)) < 1:
                return pos
            pos += _FRAME.size + length
    except OSError:
        return 0
    finally:
        os.close(fd)


class JournalFull(Exception):
    """The journal reached its cap, or the disk refused a write."""


class Journal:
    """Append-only journal of open reports' datagrams. Not thread-safe: one owner."""

    def __init__(self, path: str, cap_bytes: int = 256 << 20) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        self.path = path
        self.cap_bytes = cap_bytes
        self._fd = -1
        self._map: mmap.mmap | None = None
        self._mapped = 0
        self._size = 0
        self._attach()
        #: bytes of live rows per key (what compaction would keep), and their sum
        self._live: dict[str, int] = {}
        self._live_total = 0

    def _attach(self) -> None:
        """Open and map the file at ``self.path``; the frames end where their heads say (a file
        an older version wrote with ``write()`` ends with its last frame: the same)."""
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self._size = 0
        try:
            length = os.fstat(self._fd).st_size
            if length:
                self._map, self._mapped = mmap.mmap(self._fd, length), length
                self._size = _frames_end(self._map, length)
        except OSError as e:
            self.close()
            raise OSError(e.errno, e.strerror, self.path) from None  # the CLI names the file, one line
        try:
            self._reserve(self._size + _FRAME.size)
        except OSError as e:
            # A full disk at start: the receiver still starts (input is never blocked); each
            # batch tries for room again and is refused as JournalFull (counted, logged).
            log.error("journal_no_room", path=self.path, error=e.strerror or str(e),
                      what_happens="open reports are not journaled until the disk has room")

    def _reserve(self, need: int) -> None:
        """Room in the file and the map for ``need`` bytes; raises OSError (a full disk)."""
        if need <= self._mapped:
            return
        # doubling, so a growing journal remaps O(log size) times; never far past the cap
        size = min(_round_up(max(need, 2 * self._mapped)), max(_round_up(need), _round_up(self.cap_bytes + _CHUNK)))
        os.posix_fallocate(self._fd, 0, size)
        if self._map is not None:
            self._map.close()
            self._map, self._mapped = None, 0
        self._map = mmap.mmap(self._fd, size)
        self._mapped = size

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map, self._mapped = None, 0
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
        """Append ``rows`` as one frame; raises :class:`JournalFull` and writes nothing on failure."""
        if not rows:
            return
        if len(rows) == 1:
            # omprog's usual batch (one datagram of an open report): no lists, no sizes dict
            key, at, ip, port, data = rows[0]
            k = key.encode("utf-8", "surrogateescape")
            i = k if ip == key else ip.encode("utf-8", "surrogateescape")
            kind = _KIND_CONTEXT if type(data) is Context else _KIND_ADD
            body = b"".join((_ADD.pack(kind, at, port, len(k), len(i), len(data)), k, i, data))
            self._append(body)
            self._live[key] = self._live.get(key, 0) + len(body)
            self._live_total += len(body)
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
        m = self._map
        # zeros, or the file's end, after the last whole frame: a clean end
        if m is not None and (end < self._size or m[end:end + _FRAME.size].strip(b"\0")):
            # a frame whose checksum fails, or one cut short by the file's end
            log.warning("journal_torn_tail", path=self.path, kept_bytes=end,
                        why="the last write was cut short (full disk or power loss); rows before it are kept")
            self._truncate(end)
        self._live = _sizes(rows)
        self._live_total = sum(self._live.values())
        return rows

    # -- internals ----------------------------------------------------------------------

    def _append(self, body: bytes, capped: bool = True) -> None:
        end, size = self._size, _FRAME.size + len(body)
        if capped and end + size > self.cap_bytes:
            raise JournalFull(f"{self.path}: {end} + {size} bytes would pass the cap of "
                              f"{self.cap_bytes} (journal_cap_bytes)")
        try:
            self._reserve(end + size + _FRAME.size)
        except OSError as e:
            raise JournalFull(f"cannot write {self.path}: {e.strerror or e}") from None
        m = self._map
        assert m is not None
        # The order is the promise: the new end first, then the body, the head last. Until
        # the head is stored the old end (zeros) is where a reader stops.
        m[end + size:end + size + _FRAME.size] = _END
        m[end + _FRAME.size:end + size] = body
        m[end:end + _FRAME.size] = _FRAME.pack(len(body), zlib.crc32(body))
        self._size = end + size

    def _truncate(self, size: int) -> None:
        """Frames end at ``size``, and so does the file: nothing of what was past it, however
        it was shaped, stays to be read after a power cut that kept a later frame but not the
        zero head behind it. Then room is allocated again (a chunk when nothing is open)."""
        try:
            if self._map is not None:
                self._map.close()
                self._map, self._mapped = None, 0
            os.ftruncate(self._fd, size)
            self._size = size  # whatever follows: the frames past it are gone
            self._reserve(size + _FRAME.size)
        except OSError as e:
            log.error("journal_truncate_failed", path=self.path, error=e.strerror or str(e))

    def _read(self, keep: set[str] | None = None) -> tuple[list[Row], int]:
        """The live rows (of ``keep``'s keys only, if given) and where the last whole frame ends.

        Reads frame by frame and forgets a key's rows at its drop, so memory holds the live
        rows, not the file (compaction runs while thousands of reports close)."""
        by_key: dict[str, list[tuple[int, Row]]] = {}
        pos = n = 0
        with open(self.path, "rb") as f:
            total = os.fstat(f.fileno()).st_size
            while True:
                head = f.read(_FRAME.size)
                if len(head) < _FRAME.size:
                    break
                length, crc = _FRAME.unpack(head)
                if pos + _FRAME.size + length > total:
                    break  # a torn head's length: never read (nor allocate) past the file
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
        before = self._size
        self.close()
        try:
            self._attach()
        except OSError as e:
            log.error("journal_reopen_failed", path=self.path, error=e.strerror or str(e),
                      what_happens="new rows are refused (JournalFull) until a restart")
            return
        log.info("journal_compacted", path=self.path, bytes_before=before, bytes_after=len(blob), rows=len(rows))
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
        parts += (add(_KIND_CONTEXT if type(data) is Context else _KIND_ADD, at, port, len(k), len(i), len(data)),
                  k, i, data)
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
        if kind in (_KIND_ADD, _KIND_CONTEXT) and pos + _ADD.size <= end:
            _, at, port, lk, li, ld = _ADD.unpack_from(body, pos)
            o = pos + _ADD.size
            pos = o + lk + li + ld
            if pos > end:
                return None
            data = body[o + lk + li:pos]
            out.append((body[o:o + lk].decode("utf-8", "surrogateescape"),
                        at, body[o + lk:o + lk + li].decode("utf-8", "surrogateescape"), port,
                        Context(data) if kind == _KIND_CONTEXT else data))
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
