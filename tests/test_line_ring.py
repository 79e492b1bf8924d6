"""The omprog reader's ring: order, wrap-around, room, what a restart finds, damage, killed writers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kpr_omprog.sources.line_ring import TOO_LONG, LineRing, RingError


def drain(ring: LineRing) -> list[bytes]:
    out = []
    while (entry := ring.get()) is not None:
        out.append(entry[1])
    return out


def test_entries_come_back_in_order_across_many_wraps(tmp_path: Path) -> None:
    path = str(tmp_path / "ring")
    writer, reader = LineRing(path, 256), LineRing(path, 256)
    sent, got = [], []
    for i in range(2000):
        body = bytes([65 + i % 26]) * (i % 61)  # lengths 0-60: every offset, padding and wrap
        while not writer.put(body):
            got += drain(reader)
            reader.consume()
        sent.append(body)
    got += drain(reader)
    assert got == sent


def test_a_full_ring_refuses_until_entries_are_consumed(tmp_path: Path) -> None:
    path = str(tmp_path / "ring")
    writer, reader = LineRing(path, 128), LineRing(path, 128)
    n = 0
    while writer.put(b"x" * 20):
        n += 1
    assert n == 4  # 4 entries of 8 + 24 bytes fill 128
    assert reader.get() == (0, b"x" * 20)
    assert not writer.put(b"y")  # got is not consumed: the entry may still be needed after a kill
    reader.consume()
    assert writer.put(b"y")
    assert not writer.put(b"z" * 200)  # longer than the ring: never fits


def test_a_restart_gets_what_was_put_and_not_consumed(tmp_path: Path) -> None:
    path = str(tmp_path / "ring")
    ring = LineRing(path, 1024)
    for i in range(5):
        ring.put(b"line %d" % i)
    ring.get()
    ring.get()
    ring.consume()  # two processed
    ring.get()  # a third got, not consumed: a kill here processes it again
    ring.close()
    again = LineRing(path, 1024)
    assert drain(again) == [b"line 2", b"line 3", b"line 4"]
    assert again.reset_reason is None


def test_too_long_marks_and_empty_lines_keep_their_kind(tmp_path: Path) -> None:
    ring = LineRing(str(tmp_path / "ring"), 1024)
    ring.put((3_000_000).to_bytes(8, "little") + b"head", TOO_LONG)
    ring.put(b"")
    assert ring.get() == (TOO_LONG, (3_000_000).to_bytes(8, "little") + b"head")
    assert ring.get() == (0, b"")


def test_a_new_size_takes_the_waiting_lines_along_or_waits_until_they_fit(tmp_path: Path) -> None:
    path = str(tmp_path / "ring")
    ring = LineRing(path, 1024)
    for i in range(20):
        ring.put(b"line %02d waiting" % i)  # 8 + 16 bytes each: 480 bytes
    ring.get()
    ring.consume()
    ring.close()
    smaller = LineRing(path, 128)  # a new omprog.ring_bytes too small for what waits: kept as it is
    assert smaller.size == 1024 and os.path.getsize(path) == 4096 + 1024
    smaller.close()
    larger = LineRing(path, 4096)  # copied into a ring of the new size, renamed over the old
    assert larger.size == 4096 and os.path.getsize(path) == 4096 + 4096 and not os.path.exists(path + ".new")
    assert drain(larger) == [b"line %02d waiting" % i for i in range(1, 20)]
    larger.consume()
    larger.close()
    empty = LineRing(path, 2048)  # nothing waits: simply started at the new size
    assert empty.size == 2048 and empty.reset_reason is None and empty.get() is None


def test_a_damaged_waiting_line_and_a_new_size_still_open_the_ring(tmp_path: Path) -> None:
    # The damage is found where it always is, by the processor's get(), not at the start
    # (a start that fails would fail again at every restart).
    path = str(tmp_path / "ring")
    ring = LineRing(path, 1024)
    ring.put(b"a line rsyslog sent")
    ring.close()
    with open(path, "r+b") as f:
        f.seek(4096 + 8 + 3)
        f.write(b"X")
    kept = LineRing(path, 4096)
    assert kept.size == 1024
    with pytest.raises(RingError, match="fails its checksum"):
        kept.get()


def test_a_line_over_half_the_ring_is_refused_up_front(tmp_path: Path) -> None:
    # Wherever the cursor stands, an entry of at most half the ring fits once the ring is
    # empty; a longer one may never fit (the rest of the ring too short, its start held).
    ring = LineRing(str(tmp_path / "ring"), 256)
    assert ring.fits(120) and not ring.fits(121)
    ring.put(b"x" * 100)
    ring.get()
    ring.consume()
    assert not ring.put(b"y" * 150)  # 160 bytes at offset 112: past the end, and 112 < 160 at the start
    assert ring.put(b"y" * 120)


@pytest.mark.parametrize("content, why", [
    (b"P{\"ip\": \"10.0.0.1\"}\n", "shorter than its head"),
    (b"\x00" * 8192, "not a ring file of this version"),
    (b"KPRRING1" + (8).to_bytes(8, "little") + b"\x00" * (4096 + 8 - 16), "not a ring file of this version"),
    (b"KPRRING1" + (64).to_bytes(8, "little") + b"\x00" * (4096 + 64 - 16), None),  # an empty ring: kept
])
def test_a_foreign_or_damaged_file_is_started_afresh(tmp_path: Path, content: bytes, why: str | None) -> None:
    path = tmp_path / "ring"
    path.write_bytes(content)
    ring = LineRing(str(path), 64)
    assert ring.reset_reason == why and ring.get() is None
    assert ring.put(b"new") and ring.get() == (0, b"new")


def test_positions_that_cannot_be_are_reported_and_the_file_started_afresh(tmp_path: Path) -> None:
    path = str(tmp_path / "ring")
    LineRing(path, 64).close()
    with open(path, "r+b") as f:
        f.seek(16)
        f.write((500).to_bytes(8, "little"))  # written 500 bytes ahead of consumed 0 in a 64-byte ring
    ring = LineRing(path, 64)
    assert ring.reset_reason == "its positions are inconsistent" and ring.get() is None


def test_an_entry_whose_bytes_changed_is_an_error_not_a_line(tmp_path: Path) -> None:
    path = str(tmp_path / "ring")
    ring = LineRing(path, 1024)
    ring.put(b"a line rsyslog sent")
    with open(path, "r+b") as f:
        f.seek(4096 + 8 + 3)
        f.write(b"X")  # damage (or a hostile write to the state directory)
    with pytest.raises(RingError, match="fails its checksum"):
        LineRing(path, 1024).get()
    ring.reset()
    assert ring.get() is None and ring.put(b"next") and ring.get() == (0, b"next")


def test_an_entry_left_by_an_earlier_lap_is_not_taken_for_a_new_one(tmp_path: Path) -> None:
    # The same line at the same offset one lap earlier has a valid checksum of its own: the
    # position seeds the checksum, so a head or body not yet visible (or not yet written) is told apart.
    path = str(tmp_path / "ring")
    ring = LineRing(path, 64)
    for _ in range(2):
        assert ring.put(b"same line here!!")  # 8 + 16 bytes
        ring.get()
        ring.consume()
    ring.put(b"same line here!!")
    ring.get()
    ring.consume()
    # a new entry's head claims the ring's next position, but its bytes are the last lap's
    with open(path, "r+b") as f:
        f.seek(16)
        f.write((ring.written() + 24).to_bytes(8, "little"))
    with pytest.raises(RingError, match="fails its checksum"):
        ring.get()


KILLED_WRITER = """
import sys
from kpr_omprog.sources.line_ring import LineRing
ring = LineRing(sys.argv[1], 1 << 16)
i = 0
while True:
    if ring.put(b"line %09d " % i + b"x" * (i % 300)):
        sys.stdout.write("%d\\n" % i)  # like the reader's OK: after put() returned
        sys.stdout.flush()
        i += 1
    else:
        ring.reset_reason  # full: a reader in the test consumes
"""


def test_every_line_a_killed_writer_answered_is_in_the_ring(tmp_path: Path) -> None:
    # kill -9 at arbitrary points of put(): what the writer said it put is there, whole,
    # and nothing else (a half-copied entry is never taken for a line).
    path = str(tmp_path / "ring")
    reader = LineRing(path, 1 << 16)
    seen: list[bytes] = []
    for round_ in range(8):
        p = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, path], stdout=subprocess.PIPE)
        assert p.stdout is not None
        answered = -1
        for _ in range(200 + 97 * round_):
            line = p.stdout.readline()
            if not line:
                break
            answered = int(line)
            if answered % 50 == 49:
                seen += drain(reader)
                reader.consume()
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        p.stdout.close()
        seen += drain(reader)
        reader.consume()
        reader.close()
        reader = LineRing(path, 1 << 16)  # a restart: the writer's cursor is read back from the file
        assert reader.reset_reason is None
        numbers = [int(x[5:14]) for x in seen]
        assert numbers == list(range(len(numbers))) and numbers[-1] >= answered  # each answered line, once
        assert all(x == b"line %09d " % n + b"x" * (n % 300) for n, x in zip(numbers, seen, strict=True))
        seen = []
    reader.close()
