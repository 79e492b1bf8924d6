"""The omprog lines answered and not yet processed: a ring in a file shared by two processes.

``kpr-omprog omprog`` is two processes. The *reader* takes each line rsyslog sends,
stores it here and answers ``OK``; the *processor* takes the lines from here in order,
feeds them to the assembler and journal, and marks each one consumed. rsyslog waits for
one ``OK`` a line (omprog is lockstep), so the reader's few microseconds, not the
processing, set the rate; the processor runs on another CPU meanwhile.

>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "omprog-ring")
>>> writer = LineRing(path, 4096)
>>> writer.put(b"first"), writer.put(b"second")
(True, True)
>>> reader = LineRing(path, 4096)   # the next start: what was put and not consumed is there
>>> reader.get(), reader.get(), reader.get()
((0, b'first'), (0, b'second'), None)
>>> reader.consume(); LineRing(path, 4096).get() is None
True

Layout: a 4 KiB head, then ``size`` bytes of entries. The head holds 8-byte words: a
magic number, the size, *written* (bytes ever put, the reader's) and *consumed* (bytes
ever consumed, the processor's), the processor's "asleep" flag, the reader's count of
waits for room and the times of its first and last lines (for the stop's figures). An entry is an
8-byte head (4-byte length, bit 31 marking a line dropped as too long; 4-byte CRC-32 of
the body seeded with the entry's position), the body, padding to 8 bytes; a length of
all ones (its second word the position's tag) says the next entry is at the ring's start.

Why ``kill -9`` of either process loses no answered line: :meth:`put` copies the entry
and then stores *written*, and the reader writes ``OK`` only after :meth:`put` returned,
so a line rsyslog got an ``OK`` for is inside *written* (a killed process's stores are
not undone; one killed inside :meth:`put` leaves *written* where it was, and that line got
no ``OK``: rsyslog sends it again). The processor stores *consumed* after a line's
journal write, so a kill between the two processes that line twice at the next start:
the journal drops a repeat of a host's last row, as it does for rsyslog's own re-send.
Words are stored and loaded whole (an aligned 8-byte ``memoryview`` item is one
``memcpy`` of 8 bytes, one instruction). Python has no memory barrier, and weakly ordered
CPUs (arm64) may show another core the store of *written* before the entry's: the
position-seeded CRC tells an entry whose bytes are not visible yet (or are a lap older)
from the real one, and :meth:`get` then waits for it.

Worst case: memory and disk are ``size`` + 4 KiB whatever the input (the reader waits
for room, and rsyslog keeps the rest in its queue); every entry is read at its length,
which :meth:`get` checks against the ring's bounds before trusting it.
"""

from __future__ import annotations

import mmap
import os
import time
import zlib
from collections.abc import Callable

__all__ = ["TOO_LONG", "LineRing", "RingError"]

_MAGIC = int.from_bytes(b"KPRRING1", "little")  # what a zeroed, older or foreign file lacks
_HEAD = 4096
_W_MAGIC, _W_SIZE, _W_WRITTEN, _W_CONSUMED, _W_ASLEEP, _W_WAITS, _W_FIRST_PUT, _W_LAST_PUT = range(8)
_WRAP = 0xFFFFFFFF
_LONG_BIT = 0x80000000
#: the kind of an entry for a line dropped as too long: its body is its length (8 bytes) and first bytes
TOO_LONG = 1


class RingError(OSError):
    pass


def _tag(position: int) -> int:
    return (position >> 3) & 0xFFFFFFFF


class LineRing:
    """One file, mapped by both processes; ``put`` is the reader's, ``get``/``consume`` the processor's."""

    def __init__(self, path: str, size: int) -> None:
        if size < 64 or size % 8:
            raise ValueError("ring size must be a multiple of 8, at least 64")
        self.path = path
        #: why the file was started afresh, if it was (a log line for the caller)
        self.reset_reason: str | None = None
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            self._open(size)
        except OSError as e:
            os.close(self._fd)
            if e.errno is None:
                raise
            raise RingError(e.errno, e.strerror, path) from None  # the CLI names the file, one line

    def _open(self, size: int) -> None:
        have = os.fstat(self._fd).st_size
        reason = None
        if 0 < have < _HEAD:
            reason = "shorter than its head"
        elif have:
            old = memoryview(os.pread(self._fd, 64, 0)).cast("Q")
            old_size, written, consumed = old[_W_SIZE], old[_W_WRITTEN], old[_W_CONSUMED]
            if old[_W_MAGIC] != _MAGIC or old_size < 64 or old_size % 8 or have != _HEAD + old_size:
                reason = "not a ring file of this version"
            elif written % 8 or consumed % 8 or not 0 <= written - consumed <= old_size:
                reason = "its positions are inconsistent"
            elif old_size == size:
                self._map(size)
                return
            elif written != consumed:
                self._map(old_size)
                self._resize(size)
                return
        self.reset_reason = reason
        self._start_afresh(size)

    def _start_afresh(self, size: int) -> None:
        # The blocks are allocated now: a full disk fails the start, never a SIGBUS on a store.
        os.ftruncate(self._fd, 0)
        os.posix_fallocate(self._fd, 0, _HEAD + size)
        self._map(size)
        self._words[_W_SIZE] = size
        self._words[_W_MAGIC] = _MAGIC

    def _resize(self, size: int) -> None:
        """omprog.ring_bytes changed while lines wait in the ring: they are copied into a ring
        of the new size, written beside it and renamed over it (a kill leaves one or the other
        whole). When they would not fit, the ring keeps its size until it is empty."""
        entries = []
        try:
            while (entry := self.get()) is not None:
                entries.append(entry)
        except RingError:
            entries = []  # damage: the processor finds it at this size, says so and starts afresh
        self._get_at = self._words[_W_CONSUMED]
        if not entries or sum(8 + ((len(body) + 7) & ~7) for _, body in entries) > size:
            return
        new_path = self.path + ".new"
        if os.path.exists(new_path):
            os.unlink(new_path)
        new = LineRing(new_path, size)
        copied = all(new.put(body, kind) for kind, body in entries)
        new._mm.flush()  # on disk before it replaces the old ring (a power cut between the two)
        new.close()
        if not copied:
            os.unlink(new_path)
            return
        os.replace(new_path, self.path)
        self._unmap()
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_RDWR)
        self._map(size)

    def _map(self, size: int) -> None:
        self.size = size
        self._mm = mmap.mmap(self._fd, _HEAD + size)
        self._words = memoryview(self._mm)[:64].cast("Q")
        self._heads = memoryview(self._mm).cast("I")
        self.put = self._writer()
        self._get_at = self._words[_W_CONSUMED]  # the processor's cursor, ahead of consumed until consume()

    def _unmap(self) -> None:
        self._words.release()
        self._heads.release()
        self._mm.close()

    # The reader's side.

    def fits(self, length: int) -> bool:
        """Whether a body of ``length`` bytes can be put wherever the ring's cursor stands, once
        the processor made room: an entry over half the ring may find the rest of the ring too
        short and its start still held (omprog.ring_bytes is checked to hold two longest lines)."""
        return 2 * (8 + ((length + 7) & ~7)) <= self.size

    def _writer(self) -> Callable[..., bool]:
        """``put(body, kind=0) -> bool``: store one entry; False when the processor has not made
        room for it yet. A closure over the ring's parts: the reader calls it once a line."""
        size, mm, heads, words, crc32, now = self.size, self._mm, self._heads, self._words, zlib.crc32, time.time
        at = words[_W_WRITTEN]  # the reader's cursor

        def put(body: bytes, kind: int = 0) -> bool:
            nonlocal at
            n = len(body)
            step = 8 + ((n + 7) & ~7)
            offset = at % size
            start, end = at, at + step
            if offset + step > size:  # no room before the ring's end: a wrap mark, the entry at its start
                start = at + size - offset
                end = start + step
                if step > size or end - words[_W_CONSUMED] > size:
                    return False
                heads[((_HEAD + offset) >> 2) + 1] = (at >> 3) & 0xFFFFFFFF
                heads[(_HEAD + offset) >> 2] = _WRAP
                offset = 0
            elif end - words[_W_CONSUMED] > size:
                return False
            base = _HEAD + offset
            mm[base + 8:base + 8 + n] = body
            heads[(base >> 2) + 1] = crc32(body, (start >> 3) & 0xFFFFFFFF)
            heads[base >> 2] = n | _LONG_BIT if kind == TOO_LONG else n
            at = end
            words[_W_WRITTEN] = end  # last: the entry is in the ring from here on
            words[_W_LAST_PUT] = t = int(now() * 1e6)
            if not words[_W_FIRST_PUT]:
                words[_W_FIRST_PUT] = t
            return True

        return put

    def processor_asleep(self) -> bool:
        """True (once) when the processor said it waits for a wake-up; the caller sends one."""
        if self._words[_W_ASLEEP]:
            self._words[_W_ASLEEP] = 0
            return True
        return False

    def forget_put_span(self) -> None:
        """A new reader's span starts at its first line (put() notes the first and the last)."""
        self._words[_W_FIRST_PUT] = self._words[_W_LAST_PUT] = 0

    def put_span(self) -> tuple[float, float]:
        """When this reader put its first and its last line (0.0, 0.0 before any)."""
        return self._words[_W_FIRST_PUT] / 1e6, self._words[_W_LAST_PUT] / 1e6

    def count_wait(self) -> int:
        self._words[_W_WAITS] += 1
        return self._words[_W_WAITS]

    # The processor's side.

    def get(self) -> tuple[int, bytes] | None:
        """The next entry (kind, body) after the last one got, or None when there is none yet.
        Raises RingError for an entry that cannot be read (the ring is then started afresh)."""
        at = self._get_at
        spins = 0
        while at != self._words[_W_WRITTEN]:
            offset = at % self.size
            base = _HEAD + offset
            head = self._heads[base >> 2]
            if head == _WRAP and self._heads[(base >> 2) + 1] == _tag(at):
                at += self.size - offset
                continue
            n = head & ~_LONG_BIT
            if offset + 8 + n > self.size:
                n = 0  # a length not visible yet, or damage: the checksum below decides
            body = self._mm[base + 8:base + 8 + n]
            if zlib.crc32(body, _tag(at)) != self._heads[(base >> 2) + 1]:
                # Not visible yet on a weakly ordered CPU, or damaged: a live entry shows up within
                # microseconds; one that stays wrong is damage.
                spins += 1
                if spins > 1000:
                    raise RingError(f"{self.path}: the entry at {offset} fails its checksum")
                time.sleep(0.0001 if spins > 10 else 0)
                continue
            self._get_at = at + 8 + ((n + 7) & ~7)
            return (TOO_LONG if head & _LONG_BIT else 0), body
        return None

    def consume(self) -> None:
        """Everything got so far is processed (and journaled): it is not given again at the next start."""
        self._words[_W_CONSUMED] = self._get_at

    def got(self) -> int:
        """The ring position after the last entry got (positions only grow)."""
        return self._get_at

    def written(self) -> int:
        """The ring position after the last entry put."""
        return self._words[_W_WRITTEN]

    def pending(self) -> bool:
        return self._get_at != self._words[_W_WRITTEN]

    def sleep_flag(self, asleep: bool) -> None:
        self._words[_W_ASLEEP] = 1 if asleep else 0

    def waits(self) -> int:
        """How often the reader found no room (the processor far behind)."""
        return self._words[_W_WAITS]

    def backlog_bytes(self) -> int:
        return self._words[_W_WRITTEN] - self._words[_W_CONSUMED]

    def reset(self) -> None:
        """Forget every entry put so far (after a RingError; the reader may go on putting)."""
        written = self._words[_W_WRITTEN]
        self._words[_W_CONSUMED] = self._get_at = written

    def close(self) -> None:
        self._unmap()
        os.close(self._fd)
