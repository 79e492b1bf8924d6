"""Decoding: classic pieces, extended headers, fragments, and hostile input."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kpr_omprog.netconsole import DecoderLimits, DecodeStats, HostDecoder


def texts(lines):  # type: ignore[no-untyped-def]
    return [x.text for x in lines]


def test_classic_line_with_timestamp_and_level() -> None:
    d = HostDecoder()
    [line] = d.feed(b"<4>[  123.456789] Kernel panic - not syncing: Fatal exception\n", at=5.0)
    assert line.text == "Kernel panic - not syncing: Fatal exception"
    assert line.level == 4
    assert line.ts == 123.456789
    assert line.at == 5.0


def test_classic_several_lines_in_one_datagram_and_crlf() -> None:
    d = HostDecoder()
    out = d.feed(b"[    1.000000] one\r\n[    1.000001] two\nthree\n", at=1.0)
    assert texts(out) == ["one", "two", "three"]


def test_classic_line_cut_at_1000_bytes_is_joined() -> None:
    d = HostDecoder()
    line = b"[    2.000000] Modules linked in: " + b"x" * 1200 + b"\n"
    assert d.feed(line[:1000], at=1.0) == []
    [joined] = d.feed(line[1000:], at=1.001)
    assert joined.text == line[15:-1].decode()
    assert joined.at == 1.0


def test_unterminated_line_completes_when_next_line_starts() -> None:
    d = HostDecoder()
    assert d.feed(b"[    3.0] ---[ end Kernel panic - not syncing: x ]---", at=1.0) == []
    out = d.feed(b"[    3.1] next\n", at=1.1)
    assert texts(out) == ["---[ end Kernel panic - not syncing: x ]---", "next"]


def test_unterminated_line_completes_on_timeout() -> None:
    d = HostDecoder(DecoderLimits(piece_timeout=0.5))
    d.feed(b"[    3.0] no newline", at=1.0)
    assert d.deadline() == 1.5
    assert d.expire(1.4) == []
    assert texts(d.expire(1.5)) == ["no newline"]
    assert d.deadline() is None


def test_extended_record_with_escapes_and_dictionary() -> None:
    d = HostDecoder()
    [line] = d.feed(b"6,417,1758500,-;tab\\x09here \\x1b esc\n SUBSYSTEM=usb\n DEVICE=c189:1\n", at=1.0)
    assert line.text == "tab\there \x1b esc"
    assert (line.level, line.seq, line.ts) == (6, 417, 1.7585)


def test_extended_release_prefix_is_kept() -> None:
    d = HostDecoder()
    [line] = d.feed(b"6.1.0-18-amd64,0,419,1758700,-;Kernel panic - not syncing: Fatal exception\n", 1.0)
    assert line.release == "6.1.0-18-amd64"
    assert line.text.startswith("Kernel panic")


def test_extended_extra_fields_are_accepted() -> None:
    d = HostDecoder()
    [line] = d.feed(b"4,5,100,-,caller=T12,foo=bar;hello\n", 1.0)
    assert line.text == "hello"


def test_extended_fragments_reassemble_in_any_order() -> None:
    text = b"BUG: long record " + bytes(range(65, 91)) * 40
    total = len(text)
    a, b, c = text[:400], text[400:800], text[800:]
    d = HostDecoder()
    assert d.feed(b"4,420,1758800,-,ncfrag=800/%d;" % total + c, 1.0) == []
    assert d.feed(b"4,420,1758800,-,ncfrag=0/%d;" % total + a, 1.0) == []
    [line] = d.feed(b"4,420,1758800,-,ncfrag=400/%d;" % total + b, 1.0)
    assert line.text == text.decode()
    assert not line.fragments_lost


def test_fragment_lost_is_flagged_on_timeout() -> None:
    d = HostDecoder(DecoderLimits(piece_timeout=1.0))
    d.feed(b"4,9,1,-,ncfrag=0/20;0123456789", 1.0)
    [line] = d.expire(2.0)
    assert line.fragments_lost and line.text == "0123456789"
    assert d.stats.fragments_expired == 1


def test_hostile_fragment_headers_are_rejected_and_counted() -> None:
    stats = DecodeStats()
    d = HostDecoder(stats=stats)
    for bad in (b"4,1,1,-,ncfrag=50/20;x", b"4,1,1,-,ncfrag=0/99999999;x", b"4,1,1,-,ncfrag=-1/20;x",
                b"4,1,1,-,ncfrag=0/0;x", b"4,1,1,-,ncfrag=18/20;xyz", b"4,1,1,-,ncfrag=a/b;x"):
        assert d.feed(bad, 1.0) == []
    assert stats.bad_fragments == 6
    assert d.pending_bytes == 0


def test_sequence_going_back_is_a_reboot_and_gaps_are_counted() -> None:
    d = HostDecoder()
    d.feed(b"6,100,1,-;a\n", 1.0)
    [gap] = d.feed(b"6,105,2,-;b\n", 1.1)
    assert gap.seq_gap == 4 and not gap.reboot
    [dup] = d.feed(b"6,105,2,-;b\n", 1.1) or [None]
    assert dup is None and d.stats.duplicates == 1
    [boot] = d.feed(b"6,0,0,-;Linux version 6.1.0\n", 9.0)
    assert boot.reboot


def test_classic_clock_going_back_is_a_reboot() -> None:
    d = HostDecoder()
    d.feed(b"[  100.000000] before\n", 1.0)
    [line] = d.feed(b"[    0.000000] Linux version 6.1.0\n", 2.0)
    assert line.reboot


def test_invalid_utf8_and_nul_are_replaced_and_flagged() -> None:
    d = HostDecoder()
    [line] = d.feed(b"[ 1.0] caf\xe9 \x00 ok \xc3\xa9\n", 1.0)
    assert line.undecodable
    assert line.text == "caf\ufffd \ufffd ok \xe9"
    line.text.encode("utf-8")


def test_malformed_extended_header_is_kept_as_classic_text() -> None:
    d = HostDecoder()
    [line] = d.feed(b"1x,2,3;not really extended\n", 1.0)
    assert line.text == "1x,2,3;not really extended"
    assert d.stats.malformed_headers == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=3000), max_size=40))
def test_random_bytes_never_raise_and_stay_bounded(chunks: list[bytes]) -> None:
    limits = DecoderLimits(max_line_bytes=2048, max_pending_fragments=4)
    d = HostDecoder(limits)
    t = 0.0
    for c in chunks:
        t += 0.01
        for line in d.feed(c, t):
            line.text.encode("utf-8")  # always valid UTF-8
            assert len(line.text) <= limits.max_line_bytes
        assert d.pending_bytes <= limits.max_line_bytes + limits.max_pending_fragments * limits.max_record_bytes
        assert len(d._frags) <= limits.max_pending_fragments
    d.flush()
    assert d.pending_bytes == 0


_line_text = st.text(st.characters(codec="utf-8", exclude_characters="\n\r[<\x00"), max_size=120)


@settings(max_examples=200, deadline=None)
@given(st.lists(_line_text, min_size=1, max_size=30), st.data())
def test_classic_cut_at_arbitrary_points_gives_the_same_lines(lines: list[str], data: st.DataObject) -> None:
    stream = b"".join(b"[%5d.%06d] " % (i, i) + t.encode() + b"\n" for i, t in enumerate(lines))
    cuts = sorted(data.draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=20, unique=True)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    d = HostDecoder(DecoderLimits(max_lines_per_datagram=10_000))  # pieces of many lines: not the point here
    got = []
    for p in pieces:
        got += d.feed(p, 1.0)
    got += d.flush()
    assert [x.text for x in got] == lines


# -- 2024-2026 wire formats, from Documentation/networking/netconsole.rst and the selftests
# (anchors-2026.md §1.2) -------------------------------------------------------------------

def test_sysdata_lines_are_metadata_not_log_lines() -> None:
    d = HostDecoder()
    [line] = d.feed(b"12,607,22085407756,-;This is a message\n cpu=42\n taskname=echo\n"
                    b" release=6.14.0-rc6-01219-g3c027fbd941d\n", at=1.0)
    assert line.text == "This is a message"
    assert line.release == "6.14.0-rc6-01219-g3c027fbd941d"
    assert line.userdata is None


def test_userdata_labels_the_host_and_a_colliding_user_key_is_kept() -> None:
    d = HostDecoder()
    [line] = d.feed(b"12,607,22085407756,-;This is a message\n foo=bar\n qux=baz\n cpu=1\n cpu=42\n", at=1.0)
    assert line.text == "This is a message"
    assert line.userdata == (("foo", "bar"), ("qux", "baz"), ("cpu", "1"))
    # the printk dictionary is not userdata
    [line] = d.feed(b"6,608,22085407800,-;e1000: eth0 up\n SUBSYSTEM=pci\n DEVICE=+pci:0000:00:03.0\n", at=1.1)
    assert line.text == "e1000: eth0 up" and line.userdata == (("foo", "bar"), ("qux", "baz"), ("cpu", "1"))


def test_a_msgid_gap_is_real_loss_and_wraps_as_a_u32() -> None:
    def lost(msgids: list[int]) -> list[int]:
        d = HostDecoder()
        out = []
        for seq, msgid in enumerate(msgids, 1):
            [line] = d.feed(b"13,%d,%d,-;message\n msgid=%d\n" % (seq, seq * 1000, msgid), at=seq)
            out.append(line.lost)
        assert d.stats.msgid_lost == sum(out)
        return out

    assert lost([1, 2, 5, 6]) == [0, 0, 2, 0]
    assert lost([0xFFFFFFFE, 0xFFFFFFFF, 1]) == [0, 0, 1]  # 0 was lost across the wrap
    assert lost([7, 3, 8]) == [0, 0, 0]  # going back is reordering, not loss


def test_fragments_split_a_metadata_line_and_reassemble_with_it() -> None:
    body = b"A" * 960 + b"\n key=" + b"v" * 40 + b"\n msgid=7\n"
    first, second = body[:967], body[967:]
    d = HostDecoder()
    out = d.feed(b"6.13.0-04048-g4f561a87745a,13,468,514729715,-,ncfrag=0/%d;" % len(body) + first, at=1.0)
    out += d.feed(b"6.13.0-04048-g4f561a87745a,13,468,514729715,-,ncfrag=967/%d;" % len(body) + second, at=1.0)
    [line] = out
    assert line.text == "A" * 960 and line.userdata == (("key", "v" * 40),)
    assert line.release == "6.13.0-04048-g4f561a87745a" and not line.fragments_lost


def test_a_host_with_a_basic_and_an_extended_target_gives_each_line_once() -> None:
    crash = ["BUG: kernel NULL pointer dereference, address: 0000000000000000", "Oops: 0002 [#1] SMP",
             "RIP: 0010:lkdtm_ACCESS_NULL+0x5/0x20 [lkdtm]", "---[ end trace 0000000000000000 ]---"]
    d = HostDecoder()
    out = []
    for i, text in enumerate(crash):
        usec = 86_950_000 + i * 12
        classic = b"[%5d.%06d] %s\n" % (usec // 1_000_000, usec % 1_000_000, text.encode())
        extended = b"4,%d,%d,-;%s\n" % (100 + i, usec, text.encode())
        # the two consoles are written in either order
        for d_gram in ((classic, extended) if i % 2 else (extended, classic)):
            out += d.feed(d_gram, at=1.0 + i * 0.001)
    assert texts(out) == crash
    assert d.stats.dual_format_duplicates == len(crash)


def test_a_datagram_of_many_lines_costs_eight_lines() -> None:
    d = HostDecoder()
    out = d.feed(b"\n" * 4000 + b"[    1.000000] one\n", at=1.0)
    assert texts(out) == ["one"]  # empty lines carry nothing
    many = b"".join(b"[    1.%06d] line %d\n" % (i, i) for i in range(40))
    out = d.feed(many, at=2.0)
    assert len(out) == 8 and d.stats.lines_joined == 1
    assert out[-1].text.startswith("line 7\n[    1.000008] line 8\n") and out[-1].text.endswith("line 39")
    # the same cap for a record whose escaped text holds newlines
    out = d.feed(b"6,9,3000000,-;" + b"x\\x0a" * 1000 + b"\n", at=3.0)
    assert len(out) == 8 and d.stats.lines_joined == 2


def test_escapes_decode_alike_fast_or_exact() -> None:
    d = HostDecoder()
    [a] = d.feed(b"6,1,1,-;caf\\xc3\\xa9 tab\\x09end back\\x5cslash\n", at=1.0)
    assert a.text == "caf\u00e9 tab\tend back\\slash"
    # not the kernel's escapes: kept as sent, the valid \xNN still decoded
    [b] = d.feed(b"6,2,2,-;odd \\q and \\x4 and \\x41\n", at=1.0)
    assert b.text == "odd \\q and \\x4 and A"
