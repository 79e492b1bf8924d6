"""Header and frame formats of older and non-x86 kernels (issue 21), one log each.

The logs in tests/data/formats/ follow the layout each kernel prints (2.6.32 to 5.10;
x86_64, i386, arm, arm64, ppc64, s390x, mips) with a made-up driver as the culprit. Each
is replayed as classic netconsole datagrams, one line a datagram, with and without printk
timestamps: the report count, the title and the report's first line must not change.
The real logs of tests/test_old_kernels.py check the same classes on real text.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kpr_omprog.assembler import Assembler, AssemblerConfig, Report
from kpr_omprog.crash import analyze, is_crash
from kpr_omprog.frames import parse_frame, pc_function
from kpr_omprog.titles import is_separator

DATA = Path(__file__).parent / "data" / "formats"

# file -> [(title, first line of the report)]
EXPECTED = {
    # class 2: the old WARNING header, with the function, wrapped onto the next line, or none (ppc64)
    "warn_old.txt": [("WARNING in ext4_da_writepages", "------------[ cut here ]")],
    "warn_wrapped.txt": [("WARNING in ath_rx_tasklet", "------------[ cut here ]")],
    "warn_ppc.txt": [("WARNING in eeh_dn_check_failure", "------------[ cut here ]")],
    # class 1: bracketed lockdep and RCU banners, opened by their "=====" line
    "lockdep_circular.txt": [("possible deadlock in foo_work", "=====")],
    "lockdep_recursive.txt": [("possible deadlock in mydev_tx", "=====")],
    "rcu_old.txt": [("INFO: suspicious RCU usage in ipv6_dev_get_saddr", "=====")],
    # class 4: each architecture's fault line and trace
    "arm32.txt": [("BUG: unable to handle kernel NULL pointer dereference in mydrv_irq_handler",
                   "Unable to handle kernel NULL pointer dereference")],
    "arm64.txt": [("BUG: unable to handle kernel NULL pointer dereference in mydrv_work",
                   "Unable to handle kernel NULL pointer dereference")],
    "i386.txt": [("BUG: unable to handle kernel NULL pointer dereference in mydrv_open",
                  "BUG: unable to handle kernel NULL pointer dereference")],
    "s390.txt": [("BUG: unable to handle kernel NULL pointer dereference in mydrv_write",
                  "Unable to handle kernel pointer dereference in virtual kernel address space")],
    "mips.txt": [("BUG: unable to handle kernel paging request in mydrv_probe",
                  "CPU 0 Unable to handle kernel paging request")],
    # class 3: a lone cut-here line is no report
    "lone.txt": [],
}


def replay(lines: list[str], timestamps: bool) -> list[Report]:
    asm = Assembler(AssemblerConfig())
    reports: list[Report] = []
    for i, text in enumerate(lines):
        if timestamps:
            text = f"[{100 + i * 0.001:12.6f}] {text}"
        reports += asm.feed(text.encode() + b"\n", ("192.0.2.7", 6665), 1000.0 + i * 1e-3)
    reports += asm.expire(1e9)
    return reports + asm.close_all()


@pytest.mark.parametrize("timestamps", [False, True], ids=["plain", "timestamps"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_format_gives_one_report_with_the_right_title(name: str, timestamps: bool) -> None:
    lines = (DATA / name).read_text().splitlines()
    reports = replay(lines, timestamps)
    want = EXPECTED[name]
    assert [analyze(r.lines).title for r in reports] == [t for t, _ in want]
    for report, (_, first) in zip(reports, want, strict=True):
        assert report.lines[0].startswith(first), report.lines[0]
        assert not is_separator(analyze(report.lines).title)


def test_a_separator_is_never_a_title() -> None:
    # No header that any format knows: the first line that says something names it.
    info = analyze(["------------[ cut here ]------------", "=" * 40, "frobnicator: lost its marbles",
                    "Call Trace:", " [<ffffffff81234567>] frob_run+0x1/0x2"])
    assert info.title == "frobnicator: lost its marbles"
    for sep in ("------------[ cut here ]------------", "=" * 55, "---[ end trace a7919e7f17c0a725 ]---",
                "---[ end Kernel panic - not syncing: Fatal exception ]---"):
        assert is_separator(sep)
    assert not is_separator("WARNING: at fs/ext4/inode.c:3583")
    assert not is_crash(["------------[ cut here ]------------", "e1000: eth0 NIC Link is Down"])
    assert is_crash(["------------[ cut here ]------------", "WARNING: at fs/x.c:1 f+0x1/0x2()"])


@pytest.mark.parametrize(("line", "function"), [
    ("RIP: 0010:[<ffffffff8123>]  [<ffffffff81234567>] ext4_foo+0x1/0x2 [ext4]", "ext4_foo"),  # 2.6.32
    ("IP: 0010:ext4_foo+0x1/0x2", "ext4_foo"),  # first column lost in transit
    ("EIP is at mydrv_open+0x13/0x90 [mydrv]", "mydrv_open"),
    ("EIP: [<f8a2b0d3>] mydrv_open+0x13/0x90 [mydrv] SS:ESP 0068:f59f9ec4", "mydrv_open"),
    ("NIP [c000000000054a64] .eeh_dn_check_failure+0x2a4/0x2c0", "eeh_dn_check_failure"),
    ("Krnl PSW : 0704e00180000000 000003ff80123456 (mydrv_write+0x2e/0x60 [mydrv])", "mydrv_write"),
    ("PC is at mydrv_irq_handler+0x24/0x70 [mydrv]", "mydrv_irq_handler"),
    ("pc : mydrv_work+0x30/0x80 [mydrv]", "mydrv_work"),
    ("epc   : 8033a5c4 mydrv_probe+0x34/0x1a0", "mydrv_probe"),
])
def test_the_fault_line_of_each_architecture_names_its_function(line: str, function: str) -> None:
    assert pc_function(line) == function


@pytest.mark.parametrize(("line", "frame"), [
    ("[c0000000fe3f3b40] [c000000000054c40] .eeh_check_failure+0xc0/0x100", ("eeh_check_failure", None, True)),
    ("[c0000000fe3f3a90] [c000000000054a60] .eeh_dn_check_failure+0x2a0/0x2c0 (unreliable)",
     ("eeh_dn_check_failure", None, False)),
    ("([<000003ff80123440>] mydrv_write+0x28/0x60 [mydrv])", ("mydrv_write", "mydrv", True)),
    (" <ffffffff8106e3e7>] ext4_foo+0x87/0xc0 [ext4]", ("ext4_foo", "ext4", True)),  # a "[" lost
    ("[<bf000024>] (mydrv_irq_handler+0x24/0x70 [mydrv]) from [<c0089d90>] (handle_irq_event_percpu+0x5c/0x22c)",
     ("mydrv_irq_handler", "mydrv", True)),
])
def test_trace_lines_of_each_architecture_parse(line: str, frame: tuple[str, str | None, bool]) -> None:
    assert parse_frame(line) == frame


SOFT_LOCKUP = """BUG: soft lockup - CPU#1 stuck for 22s! [insmod:2233]
Modules linked in: mydrv(O+)
CPU 1
Pid: 2233, comm: insmod Tainted: G           O 3.10.0-123.el7.x86_64 #1
RIP: 0010:[<ffffffffa0012034>]  [<ffffffffa0012034>] mydrv_spin+0x34/0x50 [mydrv]
Call Trace:
 [<ffffffffa0012090>] mydrv_init+0x40/0x1000 [mydrv]
 [<ffffffff810020e8>] do_one_initcall+0xb8/0x230
 [<ffffffff810ef7ee>] load_module+0x133e/0x1b40
 [<ffffffff810f0166>] SyS_finit_module+0xa6/0xd0
 [<ffffffff815f3219>] system_call_fastpath+0x16/0x1b""".splitlines()

UNLOCK_IN_HELPER = """=====================================
[ BUG: bad unlock balance detected! ]
3.10.0+ #1 Not tainted
-------------------------------------
kworker/0:1/24 is trying to release lock (&dev->mutex) at:
[<ffffffff81612345>] mutex_unlock+0xe/0x10
but there are no more locks to release!
Call Trace:
 [<ffffffff8160a1b2>] dump_stack+0x19/0x1b
 [<ffffffff810b3bcc>] print_unlock_imbalance_bug+0xec/0x100
 [<ffffffff810b8d2f>] lock_release+0x2ff/0x420
 [<ffffffff81612345>] mutex_unlock+0xe/0x10
 [<ffffffffa0015678>] mydrv_reset_work+0x88/0x120 [mydrv]
 [<ffffffff81087a1b>] process_one_work+0x17b/0x470""".splitlines()


def test_a_lockup_names_where_the_cpu_was_not_its_caller() -> None:
    # class 5: RIP names the looping function; the trace's dispatch rule would name mydrv_init
    assert analyze(SOFT_LOCKUP).title == "BUG: soft lockup in mydrv_spin"


def test_a_helper_named_by_the_header_gives_way_to_the_next_guilty_frame() -> None:
    # class 6: the unlock site is mutex_unlock (never guilty): the trace's first guilty frame
    assert analyze(UNLOCK_IN_HELPER).title == "BUG: bad unlock balance in mydrv_reset_work"


def test_pieces_and_damage_in_transit_give_the_same_report() -> None:
    # class 9: pre-4.x kernels send each pr_cont piece as a datagram without a newline;
    # class 7: a line that lost the "[" of its stamp
    lines = (DATA / "warn_old.txt").read_text().splitlines()
    datagrams: list[bytes] = []
    for i, text in enumerate(lines):
        stamped = f"[{100 + i:5d}.000000] {text}"
        if i == 1:
            stamped = stamped[1:]
        cut = stamped.rfind(" ", 0, len(stamped) - 5)
        if i % 2 == 0 and cut > 14:
            datagrams += [stamped[:cut].encode(), (stamped[cut:] + "\n").encode()]
        else:
            datagrams.append((stamped + "\n").encode())
    asm = Assembler(AssemblerConfig())
    reports: list[Report] = []
    for j, datagram in enumerate(datagrams):
        reports += asm.feed(datagram, ("192.0.2.7", 6665), 1000.0 + j * 1e-3)
    reports += asm.close_all()
    assert [analyze(r.lines).title for r in reports] == ["WARNING in ext4_da_writepages"]
    assert list(reports[0].lines) == lines[:len(reports[0].lines)] and len(reports[0].lines) == len(lines)


def test_a_message_that_begins_oops_opens_no_report() -> None:
    # "Oops: efitime: can't read time!" is an EFI driver's message, not an oops header
    reports = replay(["Oops: efitime: can't read time!", "e1000: eth0 NIC Link is Up"], timestamps=True)
    assert reports == []
    assert len(replay(["Oops: Kernel access of bad area, sig: 11 [#1]", "NIP [c0000000000b1234] .foo+0x1/0x2"],
                      timestamps=False)) == 1


def test_a_3x_hard_lockup_warning_names_the_interrupted_code() -> None:
    lines = """WARNING: at kernel/watchdog.c:245 watchdog_overflow_callback+0x9c/0xd0()
Watchdog detected hard LOCKUP on cpu 0
Call Trace:
  <NMI>  [<ffffffff810eb800>] ? watchdog_overflow_callback+0x60/0xd0
  [<ffffffff8105cd86>] warn_slowpath_common+0x66/0x80
  [<ffffffff810eb83c>] watchdog_overflow_callback+0x9c/0xd0
  [<ffffffff811261ce>] __perf_event_overflow+0x8e/0x220
  [<ffffffff816466f0>] do_nmi+0xd0/0x310
  <<EOE>>  [<ffffffff810944f0>] account_idle_ticks+0x90/0xa0
  [<ffffffff810b6ae5>] tick_nohz_idle_exit+0x165/0x1a0""".splitlines()
    assert analyze(lines).title == "watchdog: hard LOCKUP in account_idle_ticks"


def test_an_arm32_frame_without_offset_keeps_its_module() -> None:
    assert parse_frame("[<bf0000a4>] (lkdtm_BUG [lkdtm]) from [<bf000348>] (lkdtm_do_action+0x1c/0x24 [lkdtm])") \
        == ("lkdtm_BUG", "lkdtm", True)
