"""The assembler's boundaries, bounds and determinism, on synthetic input."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kpr_omprog.assembler import Assembler, AssemblerConfig, Report

A = ("10.0.0.1", 6665)
B = ("10.0.0.2", 6665)

OOPS = [
    "sysrq: Trigger a crash",
    "BUG: kernel NULL pointer dereference, address: 0000000000000000",
    "Oops: 0002 [#1] PREEMPT SMP NOPTI",
    "CPU: 0 PID: 1 Comm: sh Not tainted 6.1.0-56-amd64 #1 Debian 6.1.192-2",
    "RIP: 0010:sysrq_handle_crash+0x16/0x20",
    "Call Trace:",
    " <TASK>",
    " write_sysrq_trigger+0x28/0x40",
    " </TASK>",
    "---[ end trace 0000000000000000 ]---",
    "Kernel panic - not syncing: Fatal exception",
    "Kernel Offset: 0x1000000 from 0xffffffff81000000",
]


def classic(lines: list[str], t0: float = 1.0) -> list[bytes]:
    return [b"[%5d.%06d] %s\n" % (int(t0), i, x.encode()) for i, x in enumerate(lines)]


def run(asm: Assembler, items: list[tuple[bytes, tuple[str, int], float]]) -> list[Report]:
    out: list[Report] = []
    for data, src, at in items:
        out += asm.expire(at)
        out += asm.feed(data, src, at)
    return out + asm.close_all()


def test_oops_and_its_panic_are_one_report_with_context() -> None:
    items = [(d, A, 100 + i * 0.001) for i, d in enumerate(classic(["boot noise"] * 20 + OOPS))]
    [r] = run(Assembler(), items)
    assert r.start_line.startswith("BUG: kernel NULL pointer dereference")
    assert r.lines[-1].startswith("Kernel Offset:")
    assert "Kernel panic - not syncing: Fatal exception" in r.lines
    assert r.context[-1] == "sysrq: Trigger a crash"
    assert len(r.context) == 10
    assert r.closed_by == "end_marker"
    assert r.kernel_release == "6.1.0-56-amd64"
    assert r.timestamps[0] == pytest.approx(1.000021)


def test_end_marker_closes_after_grace_without_expire_calls() -> None:
    asm = Assembler(AssemblerConfig(end_grace=0.5))
    out: list[Report] = []
    for i, d in enumerate(classic(OOPS)):
        out += asm.feed(d, A, 100 + i * 0.001)
    assert out == []
    deadline = asm.next_deadline()
    assert deadline is not None and deadline <= 100.511
    assert asm.expire(100.510) == []
    [r] = asm.expire(100.512)
    assert r.closed_by == "end_marker"


def test_slow_console_tail_after_end_marker_stays_in_the_report() -> None:
    # A 9600-baud serial console holds every printk ~80 ms: the register dump and the
    # panic after "end trace" trickle in, each within the grace of the one before.
    tail = ["---[ end trace 0000000000000000 ]---"] + [f"R{n:02d}: 0000000000000000" for n in range(15)]
    tail += ["Kernel panic - not syncing: Fatal exception", "Kernel Offset: disabled"]
    items = [(d, A, 10 + i * 0.08) for i, d in enumerate(classic(OOPS[:9] + tail))]
    asm = Assembler()
    [r] = run(asm, items) + asm.close_all()
    assert r.lines[-1] == "Kernel Offset: disabled"


def test_noise_after_end_marker_cannot_hold_the_report_open() -> None:
    warn = ["------------[ cut here ]------------", "WARNING: CPU: 1 PID: 9 at foo.c:1 foo+0x1/0x2",
            "---[ end trace 0000000000000000 ]---"]
    noise = [f"IN=eth0 OUT= SRC=10.0.0.{n} DST=10.0.0.1" for n in range(100)]
    items = [(d, A, 10 + i * 0.1) for i, d in enumerate(classic(warn + noise))]
    [r] = run(Assembler(), items)
    # closed within idle_timeout (2 s) of the marker, not by max_age
    assert r.closed_by == "end_marker" and r.last_seen <= 10.2 + 2.0


def test_warning_then_unrelated_panic_seconds_later_are_two_reports() -> None:
    warn = ["------------[ cut here ]------------", "WARNING: CPU: 1 PID: 9 at foo.c:1 foo+0x1/0x2",
            "Call Trace:", " foo+0x1/0x2", "---[ end trace 0000000000000000 ]---"]
    panic = ["sysrq: Trigger a crash", "Kernel panic - not syncing: sysrq triggered crash",
             "Kernel Offset: disabled"]
    items = [(d, A, 10 + i * 0.001) for i, d in enumerate(classic(warn))]
    items += [(d, A, 13 + i * 0.001) for i, d in enumerate(classic(panic, 5))]
    r1, r2 = run(Assembler(), items)
    assert r1.start_line.startswith("------------[ cut here ]")
    assert r1.lines[-1].startswith("---[ end trace")
    assert r2.start_line.startswith("Kernel panic")
    assert r2.context[-1] == "sysrq: Trigger a crash"


def test_second_warning_right_after_end_trace_is_a_new_report() -> None:
    warn = ["------------[ cut here ]------------", "WARNING: CPU: 1 PID: 9 at foo.c:1 foo+0x1/0x2",
            "---[ end trace 0000000000000000 ]---"]
    items = [(d, A, 10 + i * 0.001) for i, d in enumerate(classic(warn * 2))]
    assert len(run(Assembler(), items)) == 2


def test_idle_timeout_closes_and_says_so() -> None:
    items = [(d, A, 10 + i * 0.001) for i, d in enumerate(classic(OOPS[:5]))]
    asm = Assembler(AssemblerConfig(idle_timeout=2.0))
    assert run_no_close(asm, items) == []
    assert asm.expire(12.003) == []
    [r] = asm.expire(12.0041)
    assert r.closed_by == "idle"


def run_no_close(asm: Assembler, items: list[tuple[bytes, tuple[str, int], float]]) -> list[Report]:
    out: list[Report] = []
    for data, src, at in items:
        out += asm.expire(at) + asm.feed(data, src, at)
    return out


def test_limits_close_reports_and_flag_them() -> None:
    asm = Assembler(AssemblerConfig(max_lines=5))
    [r] = run_no_close(asm, [(d, A, 1.0) for d in classic(OOPS)])
    assert r.closed_by == "max_lines" and "truncated" in r.flags and len(r.lines) == 5

    asm = Assembler(AssemblerConfig(max_bytes=100))
    [r] = run_no_close(asm, [(d, A, 1.0) for d in classic(OOPS)])
    assert r.closed_by == "max_bytes" and "truncated" in r.flags

    asm = Assembler(AssemblerConfig(max_age=5.0, idle_timeout=2.0))
    lines = ["BUG: soft lockup - CPU#0 stuck for 22s!"] + ["still stuck"] * 20
    [r] = run_no_close(asm, [(d, A, 1.0 + i * 0.5) for i, d in enumerate(classic(lines))])
    assert r.closed_by == "max_age" and "truncated" in r.flags


def test_reboot_closes_the_open_report() -> None:
    before = [b"6,%d,%d,-;%s\n" % (100 + i, 5000 + i, x.encode()) for i, x in enumerate(OOPS[:6])]
    after = [b"6,0,0,-;Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org)\n",
             b"6,1,1,-;Command line: console=ttyS0\n"]
    items = [(d, A, 1.0 + i * 0.001) for i, d in enumerate(before + after)]
    [r] = run(Assembler(), items)
    assert r.closed_by == "reboot" and "reboot_seen" in r.flags


def test_boot_log_without_crash_gives_no_report() -> None:
    boot = ["Linux version 6.1.0-56-amd64", "Command line: console=ttyS0 kl_crash=BUG",
            "lkdtm: Performing direct entry BUG", "ODEBUG: object is on stack", "DEBUG: something",
            "traps: a.out[123] general protection fault ip:4011 sp:7ffd error:0 in a.out[401000+1000]",
            "INFO: lockdep is turned off.", "Machine check events logged", "usb 1-1: new device"]
    assert run(Assembler(), [(d, A, 1.0) for d in classic(boot)]) == []


def test_hosts_are_kept_apart_and_grouping_by_port_works() -> None:
    a = classic(OOPS)
    b = classic(["something", *OOPS[1:6], "INFO: other host line"])
    items = []
    for i in range(max(len(a), len(b))):
        if i < len(a):
            items.append((a[i], A, 1 + i * 0.001))
        if i < len(b):
            items.append((b[i], B, 1 + i * 0.001))
    reports = run(Assembler(), items)
    assert sorted(r.host for r in reports) == ["10.0.0.1", "10.0.0.2"]
    rb = next(r for r in reports if r.host == "10.0.0.2")
    assert rb.lines[-1] == "INFO: other host line" and rb.context == ("something",)

    same_ip = [(d, ("127.0.0.1", port), 1 + i * 0.001) for i, d in enumerate(classic(OOPS)) for port in (1000, 1001)]
    assert len(run(Assembler(AssemblerConfig(group_by="ip-port")), same_ip)) == 2


def test_host_eviction_forgets_idle_hosts_before_any_open_report() -> None:
    # Hosts heard twice (admitted) are bounded by max_hosts, hosts heard once by new_hosts.
    asm = Assembler(AssemblerConfig(max_hosts=2, new_hosts=1))
    out = run_no_close(asm, [(classic([OOPS[1]])[0], A, 1.0)])
    out += run_no_close(asm, [(b"noise\n", B, 1.1), (b"noise\n", B, 1.15), (b"noise\n", ("10.0.0.3", 1), 1.2),
                              (b"noise\n", ("10.0.0.3", 1), 1.25)])
    assert out == [] and asm.is_open(A) and not asm.is_open(B)
    assert asm.hosts == 2 and asm.stats.hosts_evicted == 1 and asm.stats.reports_evicted == 0
    assert not asm.is_open(B) and asm.stats.hosts_admitted == 2 and asm.idle_hosts == 1
    # a source heard once goes to the new-hosts table: it pushes out the one there, not B
    run_no_close(asm, [(b"noise\n", ("10.0.0.4", 1), 1.3), (b"noise\n", ("10.0.0.5", 1), 1.4)])
    assert asm.stats.new_hosts_forgotten == 1 and asm.new_hosts == 1 and asm.idle_hosts == 1


def test_a_flood_of_spoofed_sources_never_cuts_an_open_report() -> None:
    # A host streams an oops while 12,000 sources each send one noise line: the report
    # closes whole, at its end marker, exactly as without the flood.
    lines = [(d, 1.0 + i * 0.05) for i, d in enumerate(classic(OOPS))]
    solo = Assembler()
    alone = run_no_close(solo, [(d, A, at) for d, at in lines]) + solo.close_all()
    asm = Assembler(AssemblerConfig(max_hosts=1000, new_hosts=1000))
    out: list[Report] = []
    for i, (d, at) in enumerate(lines):
        out += asm.feed(d, A, at)
        if i == 3:
            for n in range(12_000):
                out += asm.feed(b"noise\n", (f"10.9.{n // 250}.{n % 250}", 6666), at + n * 1e-6)
    out += asm.close_all()
    assert _reports_key(out) == _reports_key(alone) and len(out) >= 1
    assert asm.stats.new_hosts_forgotten >= 11_000 and asm.stats.reports_evicted == 0


def test_when_every_tracked_host_has_an_open_report_the_least_recent_closes_whole() -> None:
    asm = Assembler(AssemblerConfig(max_hosts=2))
    c = ("10.0.0.3", 1)
    out = run_no_close(asm, [(classic([OOPS[1]])[0], A, 1.0), (classic([OOPS[1]])[0], B, 1.1),
                             (b"noise\n", c, 1.2), (b"noise\n", c, 1.3)])
    [r] = out
    assert r.host == "10.0.0.1" and r.closed_by == "evicted" and "evicted" in r.flags


def test_max_open_reports_closes_the_oldest_report_whole() -> None:
    asm = Assembler(AssemblerConfig(max_open_reports=2))
    out = run_no_close(asm, [(classic([OOPS[1]])[0], (f"10.0.1.{i}", 1), 1.0 + i / 10) for i in range(3)])
    [r] = out
    assert (r.host, r.closed_by, r.flags) == ("10.0.1.0", "max_open_reports", ("evicted",))
    assert asm.open_reports == 2 and asm.stats.open_reports_limited == 1


def test_open_bytes_budget_closes_the_largest_report() -> None:
    asm = Assembler(AssemblerConfig(open_bytes_budget=10_000, max_bytes=1 << 20))
    big = b"".join(b"[    1.%06d] filler line %d %s\n" % (i, i, b"x" * 60) for i in range(200))
    out = run_no_close(asm, [(classic([OOPS[1]])[0], A, 1.0), (classic([OOPS[1]])[0], B, 1.0)])
    out += asm.feed(big[:4000], A, 1.1) + asm.feed(big[4000:8000], A, 1.2) + asm.feed(big[8000:12000], A, 1.3)
    [r] = out
    assert r.host == A[0] and r.closed_by == "open_bytes_budget" and "truncated" in r.flags
    assert asm.is_open(B) and asm.open_bytes <= 10_000


def test_a_datagram_longer_than_the_bound_is_cut_and_counted() -> None:
    asm = Assembler(AssemblerConfig(max_datagram_bytes=1024))
    asm.feed(b"\n" * 65_000, A, 1.0)
    assert asm.stats.datagrams_cut == 1 and asm.stats.decode.lines <= 1024


def test_invalid_config_is_refused() -> None:
    with pytest.raises(ValueError, match="group_by"):
        AssemblerConfig(group_by="mac")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="idle_timeout"):
        AssemblerConfig(idle_timeout=0)


def _reports_key(reports: list[Report]) -> list[tuple[str, tuple[str, ...]]]:
    return sorted((r.host, r.lines) for r in reports)


@settings(max_examples=60, deadline=None)
@given(st.randoms(use_true_random=False))
def test_reports_do_not_depend_on_how_senders_interleave(rnd: random.Random) -> None:
    hosts = [(f"10.0.1.{i}", 6665) for i in range(4)]
    streams = {h: [(d, h) for d in classic(["noise a", "noise b", *OOPS, "after"])] for h in hosts}
    merged = []
    pos = {h: 0 for h in hosts}
    while any(pos[h] < len(streams[h]) for h in hosts):
        h = rnd.choice([h for h in hosts if pos[h] < len(streams[h])])
        merged.append(streams[h][pos[h]])
        pos[h] += 1
    base = [(d, h, 1.0 + i * 0.0001) for i, (d, h) in enumerate(x for h in hosts for x in streams[h])]
    shuffled = [(d, h, 1.0 + i * 0.0001) for i, (d, h) in enumerate(merged)]
    assert _reports_key(run(Assembler(), shuffled)) == _reports_key(run(Assembler(), base))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=1200), st.integers(0, 300)), max_size=200))
def test_random_datagrams_from_many_hosts_stay_within_caps(items: list[tuple[bytes, int]]) -> None:
    cfg = AssemblerConfig(max_hosts=50, new_hosts=20, max_lines=40, max_bytes=4000, context_lines=4)
    asm = Assembler(cfg)
    t = 0.0
    for data, h in items:
        t += 0.003
        for r in asm.expire(t) + asm.feed(b"BUG: x\n" + data if h % 7 == 0 else data, (f"10.9.{h}.1", 1), t):
            assert len(r.lines) <= cfg.max_lines
            "\n".join(r.lines).encode("utf-8")
        assert asm.hosts <= cfg.max_hosts + cfg.new_hosts
        assert asm.context_bytes == sum(len(h.ctx) for h in asm._hosts.values())
        for host in asm._hosts.values():
            assert host.nctx <= cfg.context_lines and host.ctx.count(b"\n") == host.nctx
            if host.report is not None:
                assert len(host.report.lines) < cfg.max_lines
                assert host.report.nbytes < cfg.max_bytes + cfg.decoder.max_line_bytes
    asm.close_all()
    assert asm.open_reports == 0


def test_same_input_same_output() -> None:
    items = [(d, A if i % 3 else B, 1 + i * 0.01) for i, d in enumerate(classic(OOPS * 3))]
    first = [r.to_dict() for r in run(Assembler(), items)]
    assert first == [r.to_dict() for r in run(Assembler(), items)]


# A 6.x fortify overflow: __fortify_report WARNs, then __fortify_panic BUG()s in the same task
# within microseconds (lib/string_helpers.c); both parts print "cut here".
FORTIFY_WARN = ["------------[ cut here ]------------",
                "strnlen: detected buffer overflow: 17 byte read of buffer size 16",
                "WARNING: CPU: 0 PID: 3004 at lib/string_helpers.c:1029 __fortify_report+0x6c/0x74",
                "CPU: 0 PID: 3004 Comm: prog Not tainted 6.12.0-1-amd64 #1 Debian 6.12.9-1",
                "RIP: 0010:__fortify_report+0x6c/0x74",
                "Call Trace:", " <TASK>", " __fortify_panic+0x10/0x14", " ext4_fileattr_get+0x70/0x78",
                " __ext4_ioctl+0x2f0/0x1200", " </TASK>", "---[ end trace 0000000000000000 ]---"]


def fortify_bug(pid: str = "3004") -> list[str]:
    return ["------------[ cut here ]------------", "kernel BUG at lib/string_helpers.c:1037!",
            "Oops: invalid opcode: 0000 [#1] PREEMPT SMP NOPTI",
            f"CPU: 0 PID: {pid} Comm: prog Tainted: G        W          6.12.0-1-amd64 #1 Debian 6.12.9-1",
            "RIP: 0010:__fortify_panic+0x10/0x14", "Call Trace:", " <TASK>", " ext4_fileattr_get+0x70/0x78",
            " </TASK>", "---[ end trace 0000000000000000 ]---",
            "Kernel panic - not syncing: Fatal exception", "---[ end Kernel panic - not syncing: Fatal exception ]---"]


def stamped(lines: list[str], t0: float, step: float) -> list[bytes]:
    return [b"[%12.6f] %s\n" % (t0 + i * step, x.encode()) for i, x in enumerate(lines)]


def test_a_warning_and_the_bug_it_leads_to_at_once_are_one_incident() -> None:
    data = stamped(FORTIFY_WARN + fortify_bug(), 86.95, 0.00002)
    asm = Assembler()
    [r] = run(asm, [(d, A, 100 + i * 0.0001) for i, d in enumerate(data)])
    assert r.lines[0] == FORTIFY_WARN[0] and r.lines[-1].startswith("---[ end Kernel panic")
    assert asm.stats.incidents_joined == 1 and asm.stats.incidents_split == 0


@pytest.mark.parametrize("case", ["another task", "a line between", "a visible gap", "a second warning"])
def test_separate_incidents_after_an_end_marker_stay_separate(case: str) -> None:
    second = fortify_bug()
    if case == "another task":
        second = fortify_bug(pid="3005")
    elif case == "a line between":
        second = ["lkdtm: Performing direct entry BUG", *second]
    elif case == "a second warning":
        second = FORTIFY_WARN
    first = stamped(FORTIFY_WARN, 86.95, 0.00002)
    gap = 0.5 if case == "a visible gap" else 0.00002
    rest = stamped(second, 86.95 + len(FORTIFY_WARN) * 0.00002 + gap, 0.00002)
    asm = Assembler()
    reports = run(asm, [(d, A, 100 + i * 0.0001) for i, d in enumerate(first + rest)])
    assert len(reports) == 2, [r.lines[:2] for r in reports]
    # (a line in the end marker's grace belongs to the first report, as always)
    assert reports[0].lines[:len(FORTIFY_WARN)] == tuple(FORTIFY_WARN)
    assert reports[1].lines[0].startswith("---") and reports[1].lines[-3:] == tuple(second[-3:])
    if case == "another task":
        assert asm.stats.incidents_split == 1


def test_a_panic_sent_in_one_burst_is_closed_by_its_end_marker_not_a_pause() -> None:
    # nbcon (2026): a panicking kernel may flush the whole crash at once, just before reboot.
    asm = Assembler(AssemblerConfig(idle_timeout=30.0))
    out: list[Report] = []
    for d in classic(["boot noise", *OOPS]):
        out += asm.feed(d, A, 50.0)  # every line in the same instant
    assert out == []  # "Kernel Offset:" may still be followed by a line or two...
    [r] = asm.expire(50.0 + AssemblerConfig().end_grace)  # ...for end_grace, not idle_timeout
    assert r.closed_by == "end_marker" and r.lines[-1] == OOPS[-1]


def test_lost_messages_and_userdata_reach_the_report() -> None:
    asm = Assembler()
    recs = [b"6,1,1000,-;boot noise\n dc=ams1\n rack=r12\n msgid=1\n"]
    for i, text in enumerate(OOPS):
        msgid = 2 + i + (3 if i == 2 else 0) + (3 if i > 2 else 0)  # three messages lost before OOPS[2]
        recs.append(b"4,%d,%d,-;%s\n dc=ams1\n rack=r12\n msgid=%d\n" % (2 + i, 2000 + i, text.encode(), msgid))
    [r] = run(asm, [(d, A, 1.0 + i * 0.001) for i, d in enumerate(recs)])
    assert r.lost_lines == 3 and "lines_lost" in r.flags
    assert r.userdata == (("dc", "ams1"), ("rack", "r12"))
    assert r.to_dict()["userdata"] == {"dc": "ams1", "rack": "r12"}


def test_the_noise_fast_path_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from kpr_omprog.netconsole import HostDecoder

    odd = [b"[    9.000000] before a reboot\n", b"[    1.000000] after a reboot\n",
           b"[    1.000001][  T42] caller id noise\n", b"[    1.000002] cr\r\n", b"[    1.000003] nul \x00 byte\n",
           b"[    1.000004] bad utf-8 \xff\xfe\n", b"[    1.000005] \n",
           b"[    1.000006] Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org)\n",
           b"[nonsense] not a time\n", b"[    1.000007] " + b"x" * 2000 + b"\n"]
    data = [*odd, *classic(OOPS, t0=2)]

    def reports() -> list[Report]:
        return run(Assembler(), [(d, A, 10 + i * 0.001) for i, d in enumerate(data)])

    fast = reports()
    monkeypatch.setattr(HostDecoder, "quick_line", lambda self, payload: None)
    slow = reports()
    assert [(r.context, r.lines, r.flags, r.kernel_release) for r in fast] == \
        [(r.context, r.lines, r.flags, r.kernel_release) for r in slow]
    assert len(fast) == 1 and len(fast[0].context) == 10 and fast[0].context[0] == "after a reboot"


def test_the_extended_noise_fast_path_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from kpr_omprog.netconsole import HostDecoder

    rel = b"6.1.0-56-amd64,"
    odd = [b"6,110,1000000,-;first\n", b"6,111,1000001,-;next in order\n", b"6,111,1000001,-;a duplicate\n",
           b"6,115,1000002,-;after a gap\n", b"6,116,1000003,-;cr\r\n", b"6,117,1000004,-;escaped \\x41\n",
           b"6,118,1000005,-;with metadata\n dc=ams1\n rack=r12\n", b"6,119,1000006,-;labelled noise\n",
           b"6,120,1000007,c;continued\n", b"6,121,1000008,-;bad utf-8 \xff\n", b"6,122,1000009,-;nul \x00\n",
           rel + b"6,123,1000010,-;a release appears\n", rel + b"6,124,1000011,-;the same release\n",
           b"6.2.0-1-amd64,6,125,1000012,-;another release\n", b"6,126,1000013,-;no release field\n",
           b"6,127,1000014,-;Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org)\n",
           b"6,3,1000015,-;a reboot: the numbers start again\n", b"6,4,1000016,-;" + b"x" * 20000 + b"\n",
           b"14,5,1000017,-;a user-space level\n"]
    crash = [b"4,%d,%d,-;%s\n" % (6 + i, 2000000 + i, text.encode()) for i, text in enumerate(OOPS)]
    data = [*odd, *crash]

    def reports() -> list[Report]:
        return run(Assembler(), [(d, A, 10 + i * 0.001) for i, d in enumerate(data)])

    taken = []
    real = HostDecoder.quick_line

    def counting(self: HostDecoder, payload: bytes) -> object:
        quick = real(self, payload)
        taken.extend([payload] if quick is not None else [])
        return quick

    monkeypatch.setattr(HostDecoder, "quick_line", counting)
    fast = reports()
    # the ordinary ones, and only those (17 as the assembler cut it)
    assert [d[:40] for d in taken if d[:2] != b"4,"] == [odd[i][:40] for i in (1, 7, 12, 14, 15, 17, 18)]
    monkeypatch.setattr(HostDecoder, "quick_line", lambda self, payload: None)
    slow = reports()
    assert [(r.context, r.lines, r.flags, r.kernel_release, r.userdata) for r in fast] == \
        [(r.context, r.lines, r.flags, r.kernel_release, r.userdata) for r in slow]
    assert len(fast) == 1 and fast[0].userdata == (("dc", "ams1"), ("rack", "r12"))


def test_one_datagram_opens_at_most_one_report() -> None:
    def packed(t: int) -> bytes:  # four separate crashes (a second apart) in one datagram
        return b"".join(b"[%5d.000000] BUG: unable to handle page fault for address: 0000000000001234\n"
                        b"[%5d.000001] ---[ end trace 0 ]---\n" % (t + i, t + i) for i in range(4))
    asm = Assembler()
    out = run(asm, [(packed(10), A, 1.0), (packed(20), A, 2.0)])
    assert len(out) == 2 and asm.stats.starts_ignored == 6 and asm.stats.incidents_joined == 0
    assert all(r.lines == ("BUG: unable to handle page fault for address: 0000000000001234",
                           "---[ end trace 0 ]---") for r in out)


def test_a_foreign_line_after_the_end_marker_is_context_not_the_crash_and_splits_nothing() -> None:
    # another CPU's message between an oops's end marker and its panic: one report, without it
    end = OOPS.index("---[ end trace 0000000000000000 ]---")
    lines = [*OOPS[:end + 1], "e1000: eth0 NIC Link is Down", *OOPS[end + 1:], "lkdtm: Performing direct entry BUG",
             *OOPS[1:]]
    reports = run(Assembler(), [(d, A, 10 + i * 0.001) for i, d in enumerate(classic(lines))])
    assert len(reports) == 2
    assert reports[0].lines == tuple(OOPS[1:])  # the panic joined, the link message left out
    assert reports[1].context[-1] == "lkdtm: Performing direct entry BUG"
    assert "e1000: eth0 NIC Link is Down" in reports[1].context


# -- a fleet: compact idle hosts, hosts heard once kept apart (issue 22) ------------------------

def _fleet_addr(n: int) -> tuple[str, int]:
    return (f"127.{10 + n // 62500}.{(n // 250) % 250}.{2 + n % 250}", 6666)


def test_a_host_quiet_while_100000_others_spoke_keeps_its_context_lines() -> None:
    # The defaults: Q prints 12 lines, falls quiet while 100,000 other hosts print two lines
    # each (classic and extended), then crashes. Its report starts with its last lines.
    asm = Assembler()
    q = ("10.1.0.1", 6666)
    before = [f"mce: [Hardware Error]: quiet host line {i}" for i in range(12)]
    for i, d in enumerate(classic(before)):
        assert asm.feed(d, q, 1 + i * 0.01) == []
    for r in range(2):
        for n in range(100_000):
            data = (b"[%5d.%06d] usb 1-1: noise %d\n" % (5 + r, n, n) if n % 2 else
                    b"6,%d,%d,-;systemd[1]: noise %d\n" % (r + 1, (5 + r) * 1_000_000 + n, n))
            assert asm.feed(data, _fleet_addr(n), 5 + r + n * 1e-6) == []
    assert asm.stats.hosts_evicted == 0 and asm.hosts == 100_001
    out = run(asm, [(d, q, 10 + i * 0.001) for i, d in enumerate(classic(OOPS[1:], t0=30))])
    [rep] = [r for r in out if r.host == q[0]]
    assert rep.context == tuple(before[-10:]) and rep.start_line == OOPS[1]
    assert [r for r in out if r.host != q[0]] == []


def test_a_flood_of_one_datagram_sources_pushes_out_no_host_heard_twice() -> None:
    # 50,000 spoofed sources, one datagram each, against new_hosts = 500: they churn the
    # new-hosts table only; the 500 real hosts keep their context and an open report its lines.
    asm = Assembler(AssemblerConfig(max_hosts=1000, new_hosts=500))
    for r in range(2):
        for n in range(500):
            asm.feed(b"[%5d.%06d] real host %d line %d\n" % (1 + r, n, n, r), _fleet_addr(n), 1 + r + n * 1e-6)
    asm.feed(classic([OOPS[1]], t0=3)[0], _fleet_addr(0), 3.0)
    for n in range(50_000):
        asm.feed(b"[    4.%06d] spoof %d\n" % (n % 1_000_000, n), (f"10.{n // 62500}.{n // 250 % 250}.{n % 250}", 1),
                 4 + n * 1e-6)
    assert asm.stats.new_hosts_forgotten >= 49_000 and asm.stats.hosts_evicted == 0
    assert asm.idle_hosts == 499 and asm.new_hosts == 500 and asm.is_open(_fleet_addr(0))
    out = run(asm, [(d, _fleet_addr(7), 5 + i * 0.001) for i, d in enumerate(classic(OOPS[1:], t0=5))])
    by_host = {r.host: r for r in out}
    assert by_host[_fleet_addr(7)[0]].context == ("real host 7 line 0", "real host 7 line 1")
    assert by_host[_fleet_addr(0)[0]].lines == (OOPS[1],) and by_host[_fleet_addr(0)[0]].context == (
        "real host 0 line 0", "real host 0 line 1")


def test_a_source_forgotten_while_heard_once_is_admitted_when_heard_again() -> None:
    # A fleet starting: more new sources than new_hosts between two lines of each. The ghost
    # table remembers the forgotten ones, so their second line admits them.
    asm = Assembler(AssemblerConfig(new_hosts=10))
    for r in range(2):
        for n in range(1000):
            asm.feed(b"[%5d.%06d] line %d\n" % (1 + r, n, r), _fleet_addr(n), 1 + r + n * 1e-6)
    # (a ghost slot shared by two hosts forgets one of them: a few of 990, as hashes fall)
    assert asm.stats.new_hosts_forgotten >= 990 and asm.idle_hosts >= 950
    rows = asm.take_dirty(5000)
    # counted from the datagram that admitted them (2 for those still in new_hosts then)
    assert len(rows) == asm.idle_hosts and all(x.datagrams in (1, 2) and x.formats == 1 for x in rows)


def test_test_and_heartbeat_lines_are_recorded_and_never_open_a_report_or_become_context() -> None:
    from kpr_omprog.coverage import format_heartbeat_line, format_test_line

    asm = Assembler()
    lines = ["first", format_test_line("web1", "a1b2c3"), "second", format_heartbeat_line("web1"),
             "kpr-omprog: netconsole test from not a valid one", *OOPS[1:]]
    out = run(asm, [(d, A, 1 + i * 0.001) for i, d in enumerate(classic(lines))])
    [r] = out
    assert r.context == ("first", "second", "kpr-omprog: netconsole test from not a valid one")
    assert (asm.stats.test_lines, asm.stats.heartbeat_lines) == (1, 1)
    [rec] = asm.take_dirty(10)
    assert rec.special == format_heartbeat_line("web1") and rec.reports == 1 and rec.datagrams == len(lines)
    ext = Assembler()
    ext.feed(b"6,1,1000,-;" + format_test_line("h", "n").encode() + b"\n sysdata\n", B, 1.0)
    ext.feed(b"6,2,2000,-;" + format_test_line("h", "m").encode() + b"\n", B, 1.1)
    assert ext.stats.test_lines == 2 and ext.open_reports == 0


def test_the_context_rings_are_bounded_in_bytes_hosts_heard_once_forgotten_first() -> None:
    # 200 hosts heard twice with 1,000-byte lines against a 100 KB budget: the least recently
    # heard idle hosts go, never one with an open report, and sources heard once go first.
    cfg = AssemblerConfig(context_bytes_budget=100_000, context_lines=4)
    asm = Assembler(cfg)
    asm.feed(classic([OOPS[1]])[0], A, 0.5)
    long = b"y" * 980
    for r in range(2):
        for n in range(200):
            asm.feed(b"[%5d.%06d] %d %s\n" % (1 + r, n, n, long), _fleet_addr(n), 1 + r + n * 1e-5)
            assert asm.context_bytes <= cfg.context_bytes_budget
    assert asm.is_open(A) and asm.stats.hosts_forgotten_for_bytes > 0
    assert asm.context_bytes == sum(len(h.ctx) for h in asm._hosts.values())
    asm.feed(b"[    3.000000] %s\n" % long, ("10.7.0.1", 1), 3.0)
    kept = asm.idle_hosts
    for n in range(2, 50):  # sources heard once: each pushes out the previous one, no host heard twice
        asm.feed(b"[    3.000000] %s\n" % long, (f"10.7.0.{n}", 1), 3.0 + n / 100)
    assert asm.new_hosts == 1 and asm.idle_hosts == kept and asm.context_bytes <= cfg.context_bytes_budget


WARN = ["------------[ cut here ]------------",
        "WARNING: CPU: 1 PID: 77 at drivers/foo/bar.c:12 foo_probe+0x1d/0x30 [foo]",
        "Modules linked in: foo", "CPU: 1 PID: 77 Comm: modprobe Not tainted 6.1.0-56-amd64 #1 Debian 6.1.192-2",
        "RIP: 0010:foo_probe+0x1d/0x30 [foo]", "Call Trace:", " <TASK>", " do_one_initcall+0x41/0x200",
        " </TASK>", "---[ end trace 0000000000000000 ]---"]


@pytest.mark.parametrize("fmt", ["classic", "extended"])
def test_the_log_buffer_sent_again_does_not_report_its_crash_again(fmt: str) -> None:
    # netconsole loaded with the module option sends the whole log buffer to the new console
    # (CON_PRINTBUFFER): a crash the machine survived earlier in this boot comes again, at the
    # same kernel times. One report; a new crash after the replay is a report of its own.
    boot = ["Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org)", "Command line: console=ttyS0"]
    log = [(0.0, boot[0]), (0.1, boot[1])] + [(50.0 + i / 1000, x) for i, x in enumerate(WARN)] \
        + [(60.0, "e1000: eth0 NIC Link is Up")]
    later = [(900.0 + i / 1000, x) for i, x in enumerate(WARN[:1] + [WARN[1].replace("12", "99")] + WARN[2:])]

    def datagrams(records: list[tuple[float, str]], seq0: int) -> list[bytes]:
        if fmt == "classic":
            return [b"[%5d.%06d] %s\n" % (int(ts), round(ts % 1 * 1e6), x.encode()) for ts, x in records]
        return [b"4,%d,%d,-;%s\n" % (seq0 + i, round(ts * 1e6), x.encode()) for i, (ts, x) in enumerate(records)]

    first = datagrams(log, 0)
    replay = datagrams(log, 0) + datagrams([(800.0, "netconsole: network logging started")], len(log))
    items = [(d, A, 1000 + i * 0.01) for i, d in enumerate(first)]
    items += [(d, A, 1100 + i * 0.01) for i, d in enumerate(replay + datagrams(later, len(log) + 1))]
    asm = Assembler()
    reports = run(asm, items)
    assert [r.lines[1] for r in reports] == [WARN[1], WARN[1].replace("12", "99")], [r.lines for r in reports]
    assert asm.stats.crash_replays >= 1


def test_a_new_boot_crashing_at_another_time_is_reported_again() -> None:
    # the same bug after a real reboot: other kernel times, so a report each time
    a = classic(WARN, t0=50.0)
    b = classic(["Linux version 6.1.0-56-amd64"] + WARN, t0=3.0)
    items = [(d, A, 1000 + i * 0.01) for i, d in enumerate(a)] + [(d, A, 1100 + i * 0.01) for i, d in enumerate(b)]
    asm = Assembler()
    assert len(run(asm, items)) == 2 and asm.stats.crash_replays == 0


def test_a_report_line_without_expire_calls_closes_what_is_due_first() -> None:
    # feed() alone (no expire() between datagrams, as a busy front end may): a line of an open
    # report that arrives past the idle timeout closes the report before it, and a line
    # older than the last one (a backlog's receive times) is still taken into the report
    asm = Assembler(AssemblerConfig(idle_timeout=2.0))
    lines = classic(OOPS[:6])
    out: list[Report] = []
    for i, d in enumerate(lines[:3]):
        out += asm.feed(d, A, 10 + i * 0.001)
    out += asm.feed(lines[3], A, 9.5)  # older: the idle deadline moves earlier
    assert out == [] and asm.next_deadline() == pytest.approx(11.5)
    out += asm.feed(lines[4], A, 11.6)  # past it: the report closes first, then this line is context
    assert [r.closed_by for r in out] == ["idle"] and out[0].lines == tuple(OOPS[1:4])


def test_a_crash_stamped_before_the_clock_runs_is_reported_at_every_boot() -> None:
    # printed at 0.000000 (before the clock runs), the same early-boot warning carries the
    # same stamp and text at every boot: each boot's is a report, never a replay
    boot = classic(["Linux version 6.1.0-56-amd64"] + WARN, t0=0.0)
    boot = [b"[    0.000000]" + d.split(b"]", 1)[1] for d in boot]
    items = [(d, A, 1000 + i * 0.01) for i, d in enumerate(boot)] + [(d, A, 1100 + i * 0.01)
                                                                        for i, d in enumerate(boot)]
    asm = Assembler()
    assert len(run(asm, items)) == 2 and asm.stats.crash_replays == 0


def test_the_open_report_fast_path_keeps_the_context_budget() -> None:
    # A report that max_lines closes on a fast-path line may be a lone cut-here line, whose
    # lines go back to the context rings: the rings' budget is enforced right there, as on
    # the general path (a host is forgotten at once, not at some later datagram).
    cfg = AssemblerConfig(context_bytes_budget=350, max_lines=6)
    asm = Assembler(cfg)
    for d in classic(["noise of B one", "noise of B two"]):
        asm.feed(d, B, 10.0)
    asm.feed(b"[    5.000000] noise of A\n", A, 10.0)
    asm.feed(b"[    5.100000] ------------[ cut here ]------------\n", A, 10.0)
    for i in range(5):  # the fifth makes six lines: max_lines closes the report on it
        asm.feed(b"[    5.%06d] an ordinary line number %d of host A, long enough to count\n" % (200000 + i, i), A,
                 10.0 + i * 0.001)
    assert asm.open_reports == 0 and asm.stats.lone_separators == 1
    assert asm.stats.hosts_forgotten_for_bytes == 1
