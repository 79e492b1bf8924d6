"""Real kernel crash captures (Debian 6.1 in QEMU, netconsole over UDP) through replay.

The captures under tests/data/ were recorded with the kernel lab: one JSON line per
datagram, exactly as netconsole sent it, the boot-log replay included.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kpr_omprog.assembler import Assembler, AssemblerConfig, Report
from kpr_omprog.crash import analyze
from kpr_omprog.sources.replay import read_captures, replay

DATA = Path(__file__).parent / "data"

# capture -> [(title, level, a line the report must hold, a context line)] per report
EXPECTED = {
    "sysrq-c_classic": [("kernel panic: sysrq triggered crash", "fatal", "Kernel Offset:", "sysrq: Trigger a crash")],
    "sysrq-c_ext": [("kernel panic: sysrq triggered crash", "fatal", "Kernel Offset:", "sysrq: Trigger a crash")],
    "sysrq-c_classic_panic10": [("kernel panic: sysrq triggered crash", "fatal", "Rebooting in 10 seconds", None)],
    "lkdtm-BUG_classic_oopspanic": [("kernel BUG in lkdtm_BUG", "fatal", "Kernel panic - not syncing: Fatal exception",
                                     "lkdtm: Performing direct entry BUG")],
    "lkdtm-BUG_ext_oopspanic": [("kernel BUG in lkdtm_BUG", "fatal", "Kernel panic - not syncing: Fatal exception",
                                 "lkdtm: Performing direct entry BUG")],
    "lkdtm-BUG_classic_manymods_oopspanic": [("kernel BUG in lkdtm_BUG", "fatal", "Modules linked in:", None)],
    "lkdtm-BUG_ext_nopanic-then-sysrq-c": [("kernel BUG in lkdtm_BUG", "error", "---[ end trace", None),
                                           ("kernel panic: sysrq triggered crash", "fatal", "Kernel Offset:",
                                            "sysrq: Trigger a crash")],
    "lkdtm-WARNING_classic_then-sysrq-c": [("WARNING in lkdtm_WARNING", "warning", "---[ end trace", None),
                                           ("kernel panic: sysrq triggered crash", "fatal", "Kernel Offset:", None)],
    "lkdtm-WARNING_ext_then-sysrq-c": [("WARNING in lkdtm_WARNING", "warning", "---[ end trace", None),
                                       ("kernel panic: sysrq triggered crash", "fatal", "Kernel Offset:", None)],
    "lkdtm-ACCESS_NULL_ext_oopspanic": [("BUG: unable to handle kernel NULL pointer dereference in "
                                         "lkdtm_ACCESS_NULL", "fatal", "RIP: 0010:lkdtm_ACCESS_NULL", None)],
    "lkdtm-CORRUPT_STACK_classic": [("kernel panic: stack is corrupted in lkdtm_CORRUPT_STACK", "fatal",
                                     "Kernel Offset:", None)],
    # a soft lockup names where the CPU was stuck (RIP), not the test's debugfs dispatcher;
    # a hung task has no RIP: the handler vfs_write called is its representative frame
    "lkdtm-SOFTLOCKUP_ext": [("BUG: soft lockup in lkdtm_SOFTLOCKUP", "fatal", "Kernel panic - not syncing", None)],
    "lkdtm-HUNG_TASK_classic": [("INFO: task hung in direct_entry", "fatal", "Kernel panic - not syncing", None)],
    "lkdtm-REFCOUNT_INC_OVERFLOW_ext_then-sysrq-c": [
        ("WARNING: refcount bug in lkdtm_REFCOUNT_INC_OVERFLOW", "warning", "---[ end trace", None),
        ("kernel panic: sysrq triggered crash", "fatal", "Kernel Offset:", None)],
}


# Captured with the kernel lab in more ways (issue 14): capture -> per report (title, level,
# how its first line starts, how its last line starts). Each names a class of error that
# unseen captures showed: plumbing or helper frames blamed, lines before the header left
# out, lines after the end marker taken in, slab debug reports, stalls seen only by NMI.
BOUNDS = {
    # SMEP: the lead-in line opens the report; RIP is a user address, the trace names the culprit
    "lkdtm-EXEC_USERSPACE_ext_oopspanic": [("BUG: unable to handle kernel paging request in lkdtm_EXEC_USERSPACE",
                                            "fatal", "unable to execute userspace code (SMEP?)", "Kernel Offset:")],
    # NX: RIP is data_area+0x0/0xffffffffffff76e0, a data symbol: the caller that jumped there
    "lkdtm-EXEC_DATA_ext_oopspanic": [("BUG: unable to handle kernel paging request in execute_location", "fatal",
                                       "kernel tried to execute NX-protected page", "Kernel Offset:")],
    # the checker is skipped by name, not every function whose name holds "usercopy"
    "lkdtm-USERCOPY_STACK_FRAME_TO_ext_oopspanic": [("BUG: bad usercopy in do_usercopy_stack", "fatal",
                                                     "usercopy: Kernel memory exposure attempt", "Kernel Offset:")],
    "lkdtm-FORTIFY_STR_OBJECT_ext_oopspanic": [("kernel BUG in lkdtm_FORTIFY_STR_OBJECT", "fatal",
                                                "detected buffer overflow in strncpy", "Kernel Offset:")],
    # a CPU stuck with interrupts off: the RCU stall's NMI backtrace names the code
    "lkdtm-HARDLOCKUP_ext_rcupanic": [("INFO: rcu detected stall in direct_entry", "fatal",
                                       "rcu: INFO: rcu_preempt detected stalls", "Kernel Offset:")],
    # two incidents 0 s apart: the next test's trigger line is not the WARNING's
    "lkdtm-WARNING+EXCEPTION_ext_delay0_oopspanic": [
        ("WARNING in lkdtm_WARNING", "warning", "------------[ cut here ]", "---[ end trace"),
        ("BUG: unable to handle kernel NULL pointer dereference in lkdtm_EXCEPTION", "fatal",
         "BUG: kernel NULL pointer dereference", "Kernel Offset:")],
    "lkdtm-REFCOUNT_INC_OVERFLOW_ext_then-sysrq-c": [
        ("WARNING: refcount bug in lkdtm_REFCOUNT_INC_OVERFLOW", "warning", "------------[ cut here ]",
         "---[ end trace"),
        ("kernel panic: sysrq triggered crash", "fatal", "Kernel panic - not syncing", "Kernel Offset:")],
    "lkdtm-WRITE_BUDDY_AFTER_FREE_ext_pagepoison_oopspanic": [
        ("BUG: pagealloc: memory corruption in lkdtm_WRITE_BUDDY_AFTER_FREE", "error", "pagealloc: memory corruption",
         "page dumped because")],
    "lkdtm-SLAB_FREE_DOUBLE_ext_oopspanic": [("kernel BUG in direct_entry", "fatal", "------------[ cut here ]",
                                              "Kernel Offset:")],
    # slub_debug: the separator opens it; no cache name or taint flags in the title (the
    # guest stopped printing mid-report: closed by the end of the capture)
    "lkdtm-WRITE_AFTER_FREE_ext_slubdebug_oopspanic": [("BUG: slab Poison overwritten in lkdtm_WRITE_AFTER_FREE",
                                                        "error", "=====", "RIP: 0033:")],
}


@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_unseen_crash_classes_get_the_right_report_and_title(name: str) -> None:
    got = [(analyze(r.lines).title, analyze(r.lines).level, r.lines[0], r.lines[-1]) for r in reports_of(name)]
    want = BOUNDS[name]
    assert len(got) == len(want), [g[0] for g in got]
    for (title, level, first, last), (t, lv, f, la) in zip(got, want, strict=True):
        assert (title, level) == (t, lv)
        assert first.startswith(f), first
        assert last.startswith(la), last


def reports_of(name: str, **cfg: object) -> list[Report]:
    return list(replay(read_captures([str(DATA / f"{name}.jsonl")]), Assembler(AssemblerConfig(**cfg))))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_crash_gives_exactly_the_expected_reports(name: str) -> None:
    reports = reports_of(name)
    want = EXPECTED[name]
    assert len(reports) == len(want), [r.start_line for r in reports]
    for report, (title, level, holds, context) in zip(reports, want, strict=True):
        info = analyze(report.lines)
        assert info.title == title
        assert info.level == level
        assert any(x.startswith(holds) for x in report.lines), holds
        if context:
            assert context in report.context
        assert report.kernel_release == "6.1.0-56-amd64"
        # no boot-log lines inside a report
        assert not any(x.startswith(("Linux version", "Command line:")) for x in report.lines)


def test_boot_log_replay_alone_gives_no_report() -> None:
    # The first ~360 datagrams of every capture are the boot-log replay netconsole sends on load.
    lines = (DATA / "sysrq-c_classic.jsonl").read_text().splitlines()
    boot = [x for x in lines if "sysrq" not in x][:300]
    path = DATA.parent / "boot-only.tmp.jsonl"
    try:
        path.write_text("\n".join(boot) + "\n")
        assert list(replay(read_captures([str(path)]), Assembler())) == []
    finally:
        path.unlink()


def test_interleaved_captures_keep_senders_apart() -> None:
    # Two real captures merged as if two hosts crashed at the same moment.
    a = list(read_captures([str(DATA / "lkdtm-BUG_ext_oopspanic.jsonl")]))
    b = list(read_captures([str(DATA / "sysrq-c_classic.jsonl")]))
    t0a, t0b = a[0].at, b[0].at
    merged = [d._replace(source=("10.0.0.1", 6665), at=d.at - t0a) for d in a]
    merged += [d._replace(source=("10.0.0.2", 6665), at=d.at - t0b) for d in b]
    merged.sort(key=lambda d: d.at)
    reports = list(replay(merged, Assembler()))
    titles = sorted((r.host, analyze(r.lines).title) for r in reports)
    assert titles == [("10.0.0.1", "kernel BUG in lkdtm_BUG"), ("10.0.0.2", "kernel panic: sysrq triggered crash")]


def test_replay_cli_is_deterministic_and_prints_json_lines() -> None:
    cmd = [sys.executable, "-m", "kpr_omprog.cli", "replay", str(DATA / "lkdtm-WARNING_ext_then-sysrq-c.jsonl")]
    first = subprocess.run(cmd, capture_output=True, check=True, text=True).stdout
    second = subprocess.run(cmd, capture_output=True, check=True, text=True).stdout
    assert first == second
    objs = [json.loads(x) for x in first.splitlines()]
    assert len(objs) == 2
    for o in objs:
        for key in ("host", "port", "first_seen", "last_seen", "text", "lines", "flags"):
            assert key in o


def test_replay_cli_names_file_and_line_of_a_bad_capture(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"t": 1, "src": ["1.2.3.4", 1], "data_b64": "aGk="}\nnot json\n')
    p = subprocess.run([sys.executable, "-m", "kpr_omprog.cli", "replay", str(bad)], capture_output=True, text=True)
    assert p.returncode == 2
    assert f"{bad}:2:" in p.stderr and p.stderr.count("\n") == 1
