"""Default titles and fingerprints: old (2.6.32/3.10) and new (6.x) spellings of one bug agree,
different bugs differ, and the guilty frame is the culprit, not the reporting machinery."""

from __future__ import annotations

import pytest

from kpr_omprog import crash
from kpr_omprog.crash import analyze

# CentOS 6 (2.6.32) and Debian 12 (6.1) print the same NULL dereference differently.
NULL_OLD = """BUG: unable to handle kernel NULL pointer dereference at 0000000000000000
IP: [<ffffffffa0123456>] lkdtm_ACCESS_NULL+0x5/0x20 [lkdtm]
PGD 7b5f4067 PUD 7b5f5067 PMD 0
Oops: 0002 [#1] SMP
Pid: 1234, comm: bash Not tainted 2.6.32-754.el6.x86_64 #1 Red Hat KVM
RIP: 0010:[<ffffffffa0123456>]  [<ffffffffa0123456>] lkdtm_ACCESS_NULL+0x5/0x20 [lkdtm]
Call Trace:
 [<ffffffffa0123789>] lkdtm_do_action+0x19/0x30 [lkdtm]
 [<ffffffffa0123abc>] direct_entry+0xdc/0x120 [lkdtm]
 [<ffffffff811a1234>] vfs_write+0xb8/0x1a0
 [<ffffffff8100b072>] system_call_fastpath+0x16/0x1b
Kernel panic - not syncing: Fatal exception""".splitlines()

NULL_NEW = """BUG: kernel NULL pointer dereference, address: 0000000000000000
#PF: supervisor write access in kernel mode
Oops: 0002 [#1] PREEMPT SMP NOPTI
CPU: 0 PID: 77 Comm: sh Tainted: G           O      6.1.0-26-amd64 #1  Debian 6.1.112-1
Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
RIP: 0010:lkdtm_ACCESS_NULL+0x5/0x20 [lkdtm]
Code: 00 00 00
Call Trace:
 <TASK>
 ? __die+0x1f/0x70
 ? page_fault_oops+0x171/0x4e0
 lkdtm_do_action+0x15/0x30 [lkdtm]
 direct_entry.cold+0x3a/0x60 [lkdtm]
 full_proxy_write+0x56/0x80
 vfs_write+0xe2/0x3e0
 ksys_write+0x6f/0xf0
 do_syscall_64+0x5b/0xc0
 entry_SYSCALL_64_after_hwframe+0x64/0xce
 </TASK>
Kernel panic - not syncing: Fatal exception""".splitlines()

WARN_OLD = """------------[ cut here ]------------
WARNING: at drivers/misc/lkdtm.c:365 lkdtm_WARNING+0x15/0x20 [lkdtm]() (Not tainted)
Modules linked in: lkdtm
Pid: 2130, comm: bash Not tainted 2.6.32-754.el6.x86_64 #1
Call Trace:
 [<ffffffff81076db7>] ? warn_slowpath_common+0x87/0xc0
 [<ffffffff81076e0a>] ? warn_slowpath_null+0x1a/0x20
 [<ffffffffa0002285>] ? lkdtm_WARNING+0x15/0x20 [lkdtm]
 [<ffffffffa0002285>] lkdtm_WARNING+0x15/0x20 [lkdtm]
 [<ffffffffa00023a4>] lkdtm_do_action+0x24/0x30 [lkdtm]
---[ end trace 1a2b3c4d5e6f7a8b ]---""".splitlines()

WARN_NEW = """------------[ cut here ]------------
WARNING: CPU: 1 PID: 88 at drivers/misc/lkdtm/bugs.c:83 lkdtm_WARNING+0xe/0x20 [lkdtm]
Modules linked in: lkdtm netconsole
CPU: 1 PID: 88 Comm: sh Not tainted 6.1.0-26-amd64 #1  Debian 6.1.112-1
RIP: 0010:lkdtm_WARNING+0xe/0x20 [lkdtm]
Call Trace:
 <TASK>
 ? __warn+0x7d/0xc0
 ? report_bug+0xe2/0x150
 ? handle_bug+0x41/0x70
 lkdtm_do_action+0x15/0x30 [lkdtm]
 direct_entry.cold+0x3a/0x60 [lkdtm]
 </TASK>
---[ end trace 0000000000000000 ]---""".splitlines()

SOFT_LOCKUP = """watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [cat:123]
CPU: 0 PID: 123 Comm: cat Not tainted 6.1.0-26-amd64 #1
RIP: 0010:_raw_spin_lock+0x1c/0x30
Call Trace:
 <IRQ>
 </IRQ>
 <TASK>
 mydrv_poll_status+0x40/0x90 [mydrv]
 mydrv_read+0x21/0x80 [mydrv]
 vfs_read+0xa1/0x1a0
 ksys_read+0x6f/0xf0
 do_syscall_64+0x5b/0xc0
 </TASK>""".splitlines()

HUNG_RTNL = """INFO: task ip:4242 blocked for more than 120 seconds.
      Not tainted 6.1.0-26-amd64 #1
Call Trace:
 <TASK>
 __schedule+0x34d/0x9e0
 schedule+0x5a/0xd0
 schedule_preempt_disabled+0x11/0x20
 __mutex_lock.constprop.0+0x399/0x700
 rtnl_lock+0x11/0x20
 devinet_ioctl+0x1c1/0x8a0
 inet_ioctl+0x15a/0x1a0
 </TASK>""".splitlines()

LOCKDEP = """======================================================
WARNING: possible circular locking dependency detected
6.1.0 #1 Not tainted
------------------------------------------------------
kworker/0:1/12 is trying to acquire lock:
ffff888003a1c0b8 (&dev->mutex){+.+.}-{3:3}, at: mydrv_reset+0x2e/0x90 [mydrv]

but task is already holding lock:
ffff888003a1c0f0 (&priv->lock){+.+.}-{3:3}, at: mydrv_work+0x1c/0x80 [mydrv]
""".splitlines()


def test_old_and_new_spellings_of_one_null_dereference_agree() -> None:
    old, new = analyze(NULL_OLD), analyze(NULL_NEW)
    assert old.title == new.title == "BUG: unable to handle kernel NULL pointer dereference in lkdtm_ACCESS_NULL"
    assert old.fingerprint == new.fingerprint
    assert (old.level, new.level) == ("fatal", "fatal")
    assert (old.module, new.module) == ("lkdtm", "lkdtm")
    assert (old.release, new.release) == ("2.6.32-754.el6.x86_64", "6.1.0-26-amd64")


def test_old_and_new_spellings_of_one_warning_agree() -> None:
    old, new = analyze(WARN_OLD), analyze(WARN_NEW)
    assert new.title == "WARNING in lkdtm_WARNING"
    assert old.title == new.title
    assert old.fingerprint == new.fingerprint
    assert new.level == "warning"


def test_different_bugs_get_different_fingerprints() -> None:
    prints = {analyze(x).fingerprint for x in (NULL_NEW, WARN_NEW, SOFT_LOCKUP, HUNG_RTNL, LOCKDEP)}
    assert len(prints) == 5


@pytest.mark.parametrize(("lines", "title"), [
    # a soft lockup names where the CPU was: past the lock it spins on, the first guilty frame
    (SOFT_LOCKUP, "BUG: soft lockup in mydrv_poll_status"),
    # hangs on rtnl_lock are one bucket, whichever ioctl waited
    (HUNG_RTNL, "INFO: task hung in rtnl_lock"),
    # lockdep: the acquisition that closed the cycle
    (LOCKDEP, "possible deadlock in mydrv_reset"),
])
def test_extractors_name_the_culprit(lines: list[str], title: str) -> None:
    assert analyze(lines).title == title


def test_a_warning_message_is_not_a_kernel_warning() -> None:
    assert not crash.is_start("WARNING: fbcon: Driver 'vkmsdrmfb' missed to adjust virtual screen size")
    assert crash.is_start("WARNING: CPU: 1 PID: 88 at drivers/misc/lkdtm/bugs.c:83 lkdtm_WARNING+0xe/0x20")
    assert crash.is_start("WARNING: possible circular locking dependency detected")


# The 2025 WARNING spellings (anchors-2026.md §7; lore 20251110114633.202485143@infradead.org)
WARN_2025 = [WARN_NEW[0], "WARNING: drivers/misc/lkdtm/bugs.c:83 at lkdtm_WARNING+0xe/0x20 [lkdtm], CPU#1: sh/88",
             *WARN_NEW[2:]]
WARN_2025_NO_FUNC = [WARN_NEW[0], "WARNING: drivers/misc/lkdtm/bugs.c:83 at 0x0, CPU#1: sh/88", *WARN_NEW[2:]]


@pytest.mark.parametrize("lines", [WARN_2025, WARN_2025_NO_FUNC])
def test_the_2025_warning_spellings_title_like_the_old_one(lines: list[str]) -> None:
    assert crash.is_start(lines[1])
    info = analyze(lines)
    assert info.title == "WARNING in lkdtm_WARNING"
    assert info.fingerprint == analyze(WARN_NEW).fingerprint == analyze(WARN_OLD).fingerprint


def test_never_guilty_names_match_whole_tokens_not_parts_of_a_culprit() -> None:
    from kpr_omprog.frames import is_skipped
    for helper in ("__memcpy", "memcpy_orig", "fortify_memcpy_chk", "_copy_to_user", "vsnprintf", "vprintk_emit",
                   "__kmalloc_noprof", "_raw_spin_lock_irqsave", "__x86_indirect_thunk_rax", "should_failslab",
                   "kasan_report", "__fortify_report", "hlock_class"):
        assert is_skipped(helper), helper
    # a culprit whose name merely contains a helper's (syzkaller's substring match skips these)
    for culprit in ("sget_userns", "mydrvmemcpy", "nvme_stringify_ctrl", "ext4_fileattr_get", "tls_copyin_buf"):
        assert not is_skipped(culprit), culprit


USERCOPY_VIA_DEBUGFS = """usercopy: Kernel memory exposure attempt detected from SLUB object 'kmalloc-64' (offset 0)
------------[ cut here ]------------
kernel BUG at mm/usercopy.c:102!
invalid opcode: 0000 [#1] PREEMPT SMP NOPTI
CPU: 0 PID: 91 Comm: cat Not tainted 6.1.0-56-amd64 #1  Debian 6.1.192-2
RIP: 0010:usercopy_abort+0x6e/0x70
Call Trace:
 <TASK>
 __check_heap_object+0xd7/0x110
 __check_object_size.cold+0x4f/0xe8
 mydrv_stats_read.cold+0x2a/0x4c [mydrv]
 full_proxy_read+0x59/0x80
 vfs_read+0xa1/0x1a0
 ksys_read+0x6f/0xf0
 do_syscall_64+0x5b/0xc0
 entry_SYSCALL_64_after_hwframe+0x64/0xce
 </TASK>
Kernel panic - not syncing: Fatal exception""".splitlines()

# Every frame between the checker and the syscall is skipped: plumbing is the last resort.
ONLY_PLUMBING_LEFT = [*USERCOPY_VIA_DEBUGFS[:10], *USERCOPY_VIA_DEBUGFS[11:]]

USER_RIP = """BUG: unable to handle page fault for address: 00007ffd4c3b2000
#PF: supervisor instruction fetch in kernel mode
#PF: error_code(0x0011) - permissions violation
Oops: 0011 [#1] PREEMPT SMP NOPTI
CPU: 1 PID: 120 Comm: sh Not tainted 6.1.0-56-amd64 #1  Debian 6.1.192-2
RIP: 0010:0x7ffd4c3b2000
Call Trace:
 <TASK>
 lkdtm_EXEC_USERSPACE+0x6f/0x90 [lkdtm]
 lkdtm_do_action+0x15/0x30 [lkdtm]
 direct_entry.cold+0x3a/0x60 [lkdtm]
 full_proxy_write+0x56/0x80
 vfs_write+0xe2/0x3e0
 </TASK>
Kernel panic - not syncing: Fatal exception""".splitlines()


@pytest.mark.parametrize(("lines", "title"), [
    (USERCOPY_VIA_DEBUGFS, "BUG: bad usercopy in mydrv_stats_read"),
    (ONLY_PLUMBING_LEFT, "BUG: bad usercopy in vfs_read"),
    # RIP holds no symbol (user space address): the trace names the culprit
    (USER_RIP, "BUG: unable to handle kernel paging request in lkdtm_EXEC_USERSPACE"),
])
def test_the_culprit_is_a_module_function_not_the_plumbing(lines: list[str], title: str) -> None:
    assert analyze(lines).title == title


def test_lead_in_lines_open_the_report_but_do_not_name_it() -> None:
    nx = ["kernel tried to execute NX-protected page - exploit attempt? (uid: 0)", *USER_RIP]
    assert crash.is_start(nx[0]) and crash.is_lead_in(nx[0])
    assert analyze(nx).title == analyze(USER_RIP).title
    assert crash.is_start("unable to execute userspace code (SMEP?) (uid: 0)")
    assert crash.is_start("detected buffer overflow in strscpy")


def test_one_fortify_overflow_groups_alike_on_6_1_and_6_12() -> None:
    # 6.1: fortify_panic() prints one line and BUG()s; 6.12: __fortify_report WARNs first.
    v61 = ["detected buffer overflow in strnlen", "------------[ cut here ]------------",
           "kernel BUG at lib/string_helpers.c:1027!", "invalid opcode: 0000 [#1] PREEMPT SMP NOPTI",
           "CPU: 0 PID: 300 Comm: prog Not tainted 6.1.0-56-amd64 #1 Debian 6.1.192-2",
           "RIP: 0010:fortify_panic+0x13/0x20", "Call Trace:", " <TASK>", " ext4_fileattr_get+0x70/0x78",
           " __ext4_ioctl+0x2f0/0x1200", " </TASK>", "Kernel panic - not syncing: Fatal exception"]
    v612 = ["------------[ cut here ]------------", "strnlen: detected buffer overflow: 17 byte read of buffer size 16",
            "WARNING: CPU: 0 PID: 300 at lib/string_helpers.c:1029 __fortify_report+0x6c/0x74",
            "CPU: 0 PID: 300 Comm: prog Not tainted 6.12.9-amd64 #1 Debian 6.12.9-1",
            "RIP: 0010:__fortify_report+0x6c/0x74", "Call Trace:", " <TASK>", " __fortify_panic+0x10/0x14",
            " ext4_fileattr_get+0x70/0x78", " </TASK>", "---[ end trace 0000000000000000 ]---",
            "------------[ cut here ]------------", "kernel BUG at lib/string_helpers.c:1037!",
            "Oops: invalid opcode: 0000 [#1] PREEMPT SMP NOPTI",
            "CPU: 0 PID: 300 Comm: prog Tainted: G        W          6.12.9-amd64 #1 Debian 6.12.9-1",
            "RIP: 0010:__fortify_panic+0x10/0x14", "Call Trace:", " <TASK>", " ext4_fileattr_get+0x70/0x78",
            " </TASK>", "---[ end trace 0000000000000000 ]---", "Kernel panic - not syncing: Fatal exception"]
    a, b = analyze(v61), analyze(v612)
    assert a.title == b.title == "kernel BUG in ext4_fileattr_get"
    assert a.fingerprint == b.fingerprint and a.level == b.level == "fatal"


def test_hung_task_in_io_wait_is_a_hung_task() -> None:
    lines = ["INFO: task udevd:5612 blocked in I/O wait for more than 143 seconds.", *HUNG_RTNL[1:]]
    assert crash.is_start(lines[0])
    assert analyze(lines).title == "INFO: task hung in rtnl_lock"
