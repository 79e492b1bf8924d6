"""Which crash a report holds, and which function is to blame: the title's two halves.

Titles follow syzbot's (``<kind> in <guilty function>``) so that a kernel engineer
recognises them and so that they can be scored against syzkaller's titled corpus
(``tests/benchmarks/title_eval.py``). Each :class:`Format` names the header line it
recognises, the kind it gives, and where its guilty frame is found: a list of parts
read top-down over the report (an anchor line, the faulting-instruction line, a call
trace), whose frames are filtered by :func:`kpr_omprog.frames.is_skipped` plus the
format's own list, then picked by an extractor (the first frame; for stalls the frame a
dispatch point called; for hangs the first frame that is not waiting).

    >>> t = blame(["BUG: kernel NULL pointer dereference, address: 0000000000000000",
    ...            "RIP: 0010:lkdtm_ACCESS_NULL+0x5/0x20 [lkdtm]"])
    >>> t.kind, t.frame
    ('BUG: unable to handle kernel NULL pointer dereference', 'lkdtm_ACCESS_NULL')
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .frames import arm_caller, canonical_function, is_skipped, is_trace_start, parse_frame, pc_function, pc_in_data

__all__ = ["FORMATS", "Blame", "Format", "blame", "has_header", "is_separator", "without_cpu_column"]

#: part: read the following lines as a call trace
TRACE = "TRACE"
#: part: the faulting-instruction line (RIP/IP/pc/PC is at/NIP)
PC = "PC"

_Part = str | re.Pattern[str]
_Extractor = Callable[[list[str]], str | None]

# A frame printed as "[<address>] function+0x.." or after "at: " (lockdep).
_AT = re.compile(r"\bat: (?:\[<?(?:0x)?[0-9a-f]+>?\] +)?(?P<f>[A-Za-z_][\w.]*)\+0x")
_PC_FUNC = re.compile(r"(?:\[<?(?:0x)?[0-9a-f]+>?\] +|\bat: )(?P<f>[A-Za-z_][\w.]*)\+0x")
_CALL_TRACE = re.compile(r"Call [Tt]race:|Backtrace:")
_BACKTRACE = re.compile(r"backtrace:|Backtrace:")
# Other stacks inside a report: a trace part stops at them once it has read frames.
_OTHER_STACK = re.compile(r"^\s*(?:Allocated by task|Freed by task|Uninit was (?:created|stored)|Last potentially)")
_APIC_TIMER = re.compile(r"apic_timer_interrupt")
_STALL_IRQ = re.compile(r"apic_timer_interrupt|Exception stack|el1h_64_irq|NMI backtrace for cpu")


@dataclass(frozen=True, slots=True)
class Format:
    """One kind of crash: how its header looks, what it is called, where its culprit is."""

    header: re.Pattern[str]
    #: the title before `` in <frame>``; ``{0}``.. are the header's groups, ``{rw}`` Read/Write
    kind: str
    #: parts read top-down: PC, TRACE, or an anchor regex (its group ``f``, if any, is a frame)
    stack: tuple[_Part, ...] = ()
    #: tried when ``stack`` finds no frame
    alt: tuple[_Part, ...] = ()
    skip: re.Pattern[str] | None = None
    extractor: _Extractor | None = None
    #: the ``crash_kind`` tag for kinds that embed a free-form message
    category: str | None = None
    #: appended to the frame: the USB driver is the culprit, usb_submit_urb the place
    frame_suffix: str = ""
    #: an anchor of ``stack`` that is missing means no frame (rather than reading on), so that
    #: ``alt`` is tried: a stall's timer-interrupt frames must never name it
    strict: bool = False
    #: with no reliable frame, the unwinder's "?" guesses may name it
    guesses: bool = True
    #: tried when ``stack`` and ``alt`` find no frame
    last: tuple[_Part, ...] = ()
    #: a fault below this address (a line "Failing address: ...") is a NULL pointer dereference
    null_below: int = 0


@dataclass(frozen=True, slots=True)
class Blame:
    """What :func:`blame` found: the kind, the guilty function, the header line."""

    kind: str
    category: str
    frame: str | None
    header_index: int
    #: a frame was expected but none survived (torn or interleaved report)
    corrupted: bool
    #: the format wants no frame (its kind is the whole title)
    frameless: bool


_SEPARATOR = re.compile(r"^\s*(?:[=\-_*]{8,}\s*$|-+\[ (?:cut here|end trace\b[^\]]*|end Kernel panic[^\]]*) \]-*\s*$)")


def is_separator(line: str) -> bool:
    """A line that only frames a report: ``------------[ cut here ]------------``, ``=====``,
    ``---[ end trace 1234 ]---``."""
    return _SEPARATOR.match(line) is not None


# ------------------------------------------------------------------------------------------
# Extractors
# ------------------------------------------------------------------------------------------

# Where work is dispatched: a stall's representative frame is the one such a frame called.
_STALL_ANCHORS = re.compile(
    r"process_one_work|do_syscall_|do_fast_syscall_|sysenter_dispatch|tracesys_phase2|el0_svc_handler"
    r"|invoke_syscall|ret_fast_syscall|netif_receive_skb|do_softirq|call_timer_fn|_run_timers|run_timer_softirq"
    r"|hrtimer_run|run_ksoftirqd|smpboot_thread_fn|^kthread$|start_secondary|cpu_startup_entry|ret_from_fork"
    r"|vfs_write|vfs_read|vfs_iter_read|vfs_iter_write|do_iter_read|do_iter_write|call_read_iter"
    r"|call_write_iter|new_sync_read|new_sync_write|vfs_ioctl|ksys_ioctl|compat_ioctl|compat_sys_ioctl"
    r"|blkdev_driver_ioctl|blkdev_ioctl|do_iter_readv_writev|^call_mmap|mmap_region|do_mmap|do_dentry_open"
    r"|vfs_open|^sock_sendmsg|^sock_recvmsg|^sock_release|^__sock_release|^setsockopt$|kernel_setsockopt"
    r"|sock_common_setsockopt|^listen$|kernel_listen|sk_common_release|^sock_mmap|^accept$|kernel_accept"
    r"|^sock_do_ioctl|^sock_ioctl|^compat_sock_ioctl|^nfnetlink_rcv_msg|^rtnetlink_rcv_msg|^netlink_dump"
    r"|^(?:sys_)?(?:socketpair|connect|ioctl)|__do_fault|do_page_fault|^page_fault$|__fput|task_work_run"
    r"|exit_to_usermode|smp_call_function|tasklet_action|tasklet_hi_action"
)


# A debugfs file's proxy between vfs_write and the file's own handler.
_PROXY = re.compile(r"full_proxy_|debugfs_(?:attr_)?(?:read|write)")
# Anchors are matched on names without syscall wrappers (__sys_setsockopt is setsockopt).
_SYSCALL_WRAPPER = re.compile(r"^(?:SYSC_|SyS_|sys_|__x64_|__ia32_|__arm64_|_{1,4}sys_|__se_|__do_sys_|compat_|ksys_)+")


def _stall(frames: list[str]) -> str | None:
    """Stalls are caught at a random point of the looping code: take the frame that the
    first dispatch point (syscall entry, work item, timer, vfs/socket op) called."""
    if not frames:
        return None
    prev = frames[0]
    for f in frames:
        if _STALL_ANCHORS.search(f) or _STALL_ANCHORS.search(_SYSCALL_WRAPPER.sub("", f)):
            if "smp_call_function" in f:
                prev = "smp_call_function"
            return prev  # blame() strips the syscall wrapper prefix
        if not _PROXY.match(f):  # a debugfs proxy between vfs_write and the file's own handler
            prev = f
    return frames[0]


_HANG_BUCKETS = (("rtnl_lock", "rtnl_lock"), ("synchronize_rcu", "synchronize_rcu"),
                 ("synchronize_srcu", "synchronize_rcu"), ("synchronize_net", "synchronize_rcu"),
                 ("synchronize_sched", "synchronize_rcu"))
_HANG_SKIP = re.compile(r"sched|_lock|_slowlock|down|rwsem|completion|kthread|wait|synchronize|context_switch"
                        r"|__switch_to|cancel_delayed_work|rcu_barrier|sync_page|sync_buffer|sleep_on|bit_wait")


def _hang(frames: list[str]) -> str | None:
    """A hung task is a victim: group the common waits (rtnl_lock, synchronize_rcu), else the
    first frame that is not scheduling, locking or waiting."""
    for f in frames:
        for anchor, bucket in _HANG_BUCKETS:
            if anchor in f:
                return bucket
    for f in frames:
        if not _HANG_SKIP.search(f):
            return f
    return None


# ------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------

def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _skip(*names: str) -> re.Pattern[str]:
    return re.compile("|".join(names))


# powerpc's link register ("LR [..] f+0x.."): the caller, which names the fault when NIP is in
# a helper or in data (a jump into a buffer); ppc's trace can only guess it ("(unreliable)").
# arm's and arm64's traces name the caller reliably, and their lr may be stale.
_LR = re.compile(r"^LR \[[0-9a-f]+\] \.?(?P<f>[A-Za-z_][\w.]*)\+0x")
_ANY_LR = re.compile(r"^(?:LR \[[0-9a-f]+\] |lr : |LR is at )\.?(?P<f>[A-Za-z_][\w.]*)\+0x")
_RIP_THEN_TRACE: tuple[_Part, ...] = (PC, _LR, _CALL_TRACE, TRACE)
_INSTRUMENTATION = re.compile(r"__sanitizer_cov|__asan|__msan|__tsan|kasan|check_memory_region|kcsan|kmsan")
_FAILING_ADDRESS = re.compile(r"^[Ff]ailing address: ([0-9a-f]{1,16})\b")
_EXCEPTION_FRAME = re.compile(r"^\s*--- (?:Exception|interrupt):")
# The end of an NMI's or interrupt's own stack: what follows is the interrupted code
_EOE = _rx(r"(?:<<EOE>>|<EOE>|<EOI>|</NMI>)(?:\s*(?:\[<[0-9a-f]+>\]\s*)?(?:\?\s+)?(?P<f>[A-Za-z_][\w.]*)\+0x)?")
# An old WARNING's function on the line after its header: "ath_rx_tasklet+0x2d1/0x990 [ath9k]()"
_WRAPPED_FUNCTION = _rx(r"^\.?(?P<f>[A-Za-z_][\w.]*)\+0x[0-9a-f]+/0x[0-9a-f]+(?: \[\w+\])?\(\)")
_TRACE_ONLY: tuple[_Part, ...] = (_CALL_TRACE, TRACE)
# WARNINGs: the RIP line names the function that warned; older kernels print only a trace.
_WARNING: tuple[_Part, ...] = (PC, TRACE)


def _warning_at(header: str) -> Format:
    return Format(_rx(header), "WARNING", (_rx(header), PC, TRACE), _TRACE_ONLY)


def _warning(header: str, kind: str, *skip: str) -> Format:
    return Format(_rx(header), kind, _WARNING, _TRACE_ONLY, _skip(*skip) if skip else None)


# The checker's own functions, by name: a culprit called do_usercopy_* stays a culprit.
_USERCOPY_SKIP = _skip("^usercopy_", "^_*check_object_size", "^_*check_heap_object", "^_*check_bogus_address",
                       "^_*check_kernel_text_object", "^_*check_stack_object", "^_*check_page_span")
# lockdep's own checks show in a splat's trace: never the locking bug's site
_LOCKDEP_SKIP = _skip("process_one_work", "flush_workqueue", "drain_workqueue", "destroy_workqueue",
                      "^validate_chain", "^_*check_(?:prevs?_add|deadlock|noncircular|irq_usage|usage|flags)",
                      "^print_(?:circular|deadlock)_bug", "^mark_lock", "^debug_check_no_locks")
_ALLOC_SKIP = ("kmemleak", "kmalloc", "kcalloc", "kzalloc", "krealloc", "vmalloc", "vzalloc", "mmap", "kmem",
               "slab", "alloc", "create_object", "idr_get", "list_lru_init", "kasprintf", "kvasprintf",
               "pcpu_create", "strdup", "strndup", "memdup")

FORMATS: tuple[Format, ...] = (
    # --- sanitizers ---------------------------------------------------------------------
    Format(_rx(r"BUG: KASAN: (?:double-free or invalid-free|invalid-free|double-free) in (?P<f>[\w.]+)"),
           "KASAN: invalid-free", (_rx(r"BUG: KASAN: .* in (?P<f>[\w.]+)"), _CALL_TRACE, TRACE),
           skip=_skip("kmem_", "slab_", "kfree", "vunmap", "vfree")),
    # kernel_fault..el1h_: the arm64 tag-check path of KASAN_HW_TAGS reports
    Format(_rx(r"BUG: KASAN: ([a-z\-]+) in (?P<f>[\w.]+)"), "KASAN: {0} {rw}",
           (_rx(r"BUG: KASAN: [a-z\-]+ in (?P<f>[\w.]+)"), _CALL_TRACE, TRACE),
           skip=_skip("kernel_fault", "tag_check", "mem_abort", "^el1_", "^el1h_")),
    Format(_rx(r"BUG: KASAN: ([a-z\-]+) on address"), "KASAN: {0} {rw}"),
    Format(_rx(r"BUG: KASAN: (.*)"), "KASAN: {0}", category="KASAN"),
    Format(_rx(r"BUG: KMSAN: kernel-usb-infoleak"), "KMSAN: kernel-usb-infoleak", _TRACE_ONLY,
           skip=_skip("usb_submit_urb", "usb_start_wait_urb", "usb_bulk_msg", "usb_interrupt_msg",
                      "usb_control_msg")),
    # Generic crypto is where uninit data is used, rarely where the bug is.
    Format(_rx(r"BUG: KMSAN: ([a-z\-]+)"), "KMSAN: {0}", _TRACE_ONLY,
           skip=_skip("_copy_to_iter", "copyout", "copy_to_user", "instrument_", "_copy_to_user", "alloc_skb",
                      "netlink_ack", "netlink_rcv_skb", "_encrypt$", "^(?:crypto|cipher|drbg|rng)_")),
    Format(_rx(r"BUG: KCSAN: (.*)"), "KCSAN: {0}", category="KCSAN"),
    Format(_rx(r"BUG: KFENCE: ([a-z\- ]+?) (read|write) in (?P<f>[\w.]+)"), "KFENCE: {0} {1}",
           (_rx(r"BUG: KFENCE: .* in (?P<f>[\w.]+)"), TRACE)),
    Format(_rx(r"BUG: KFENCE: ([a-z\- ]+?) in (?P<f>[\w.]+)"), "KFENCE: {0}",
           (_rx(r"BUG: KFENCE: .* in (?P<f>[\w.]+)"), TRACE)),
    Format(_rx(r"UBSAN: [Uu]ndefined[ -]behaviou?r in "), "UBSAN: undefined-behaviour", _TRACE_ONLY,
           skip=_skip("ubsan", "overflow")),
    Format(_rx(r"UBSAN: ([\w\- ]+?) in "), "UBSAN: {0}", _TRACE_ONLY, skip=_skip("ubsan", "overflow")),
    # --- faults ---------------------------------------------------------------------------
    Format(_rx(r"BUG: (?:unable to handle kernel paging request|unable to handle page fault for address"
               r"|Unable to handle kernel data access|Unable to handle kernel instruction fetch)"),
           "BUG: unable to handle kernel paging request", _RIP_THEN_TRACE),
    Format(_rx(r"BUG: (?:unable to handle kernel NULL pointer dereference|kernel NULL pointer dereference"
               r"|Kernel NULL pointer dereference)"),
           "BUG: unable to handle kernel NULL pointer dereference", _RIP_THEN_TRACE),
    Format(_rx(r"^(?:CPU \d+ )?Unable to handle kernel (NULL pointer dereference|paging request|access to user memory"
               r"|execute from non-executable memory|write to read-only memory)"),
           "BUG: unable to handle kernel {0}", _RIP_THEN_TRACE),
    # s390: "Unable to handle kernel pointer dereference in virtual kernel address space",
    # a NULL pointer dereference when its "Failing address:" is in the first page
    Format(_rx(r"^Unable to handle kernel pointer dereference in virtual"),
           "BUG: unable to handle kernel paging request", _RIP_THEN_TRACE, null_below=0x1000),
    Format(_rx(r"BUG: (?:unable to handle kernel|Unable to handle kernel)"), "BUG: unable to handle kernel",
           _RIP_THEN_TRACE),
    Format(_rx(r"^(?:Oops: )?general protection fault"), "general protection fault", _RIP_THEN_TRACE),
    Format(_rx(r"^stack segment: "), "stack segment fault", _RIP_THEN_TRACE),
    Format(_rx(r"^(?:divide error|divide_error|Oops: divide error)[:,]"), "divide error", _RIP_THEN_TRACE),
    Format(_rx(r"^(?:Oops: )?invalid opcode:"), "invalid opcode", _RIP_THEN_TRACE),
    Format(_rx(r"^(?:Oops: )?int3[:,]"), "int3", _RIP_THEN_TRACE),
    Format(_rx(r"PANIC: double fault|^double fault:"), "PANIC: double fault", (PC,)),
    Format(_rx(r"^Unhandled fault:"), "Unhandled fault", _RIP_THEN_TRACE),
    Format(_rx(r"^Internal error: "), "Internal error", _RIP_THEN_TRACE),
    # --- lockups, stalls, hangs -------------------------------------------------------------
    Format(_rx(r"BUG: soft lockup"), "BUG: soft lockup", _RIP_THEN_TRACE, extractor=_stall),
    # Where the CPU was: the register dump's RIP/pc, else the code the NMI interrupted (after
    # "<<EOE>>"/"<EOI>"). A buddy or timer detector's trace is the detector's own: no function.
    Format(_rx(r"[Ww]atchdog detected hard LOCKUP"), "watchdog: hard LOCKUP", (PC,), (_EOE, TRACE), strict=True),
    # 3.x printed a hard lockup as a WARNING of the watchdog itself: the code it interrupted
    # is the first frame after the NMI stack
    Format(_rx(r"^WARNING: (?:CPU: \d+ PID: \d+ )?at kernel/watchdog\.c:\d+ watchdog_overflow_callback"),
           "watchdog: hard LOCKUP",
           (_EOE, TRACE),
           _TRACE_ONLY, _skip("watchdog", "perf_", "nmi", "^warn_", "intel_pmu", "x86_pmu")),
    Format(_rx(r"INFO: rcu_\w+ (?:self-)?detected (?:expedited )?stall|INFO: rcu detected stall"
               r"|INFO: RCU detected CPU \d+ stall"),
           "INFO: rcu detected stall", (_APIC_TIMER, PC, TRACE), (_STALL_IRQ, PC, TRACE),
           _skip("apic_timer_interrupt", "rcu"), _stall, strict=True,
           # s390 prints the self-detecting CPU's own registers: its PSW is where it was stuck
           last=(_rx(r"^Krnl PSW : [0-9a-f]+ [0-9a-f]+ \(\.?(?P<f>[A-Za-z_][\w.]*)\+0x"),)),
    Format(_rx(r"INFO: task .* blocked (?:in I/O wait )?for more than"), "INFO: task hung", _TRACE_ONLY,
           extractor=_hang),
    Format(_rx(r"INFO: task .* can't die for more than"), "INFO: task can't die", _TRACE_ONLY,
           skip=_skip("schedule")),
    Format(_rx(r"BUG: workqueue lockup"), "BUG: workqueue lockup"),
    # --- lockdep ---------------------------------------------------------------------------
    Format(_rx(r"(?:WARNING|INFO): possible circular locking dependency"), "possible deadlock",
           (_AT, _AT, TRACE), skip=_LOCKDEP_SKIP),
    Format(_rx(r"(?:WARNING|INFO): possible irq lock inversion"), "possible deadlock",
           (_rx("just changed the state of lock"), _AT)),
    Format(_rx(r"(?:WARNING|INFO): \S+-safe -> \S+-unsafe lock order"), "possible deadlock",
           (_rx(r"which became \S+ at:"), TRACE), (_rx("is trying to acquire"), _AT)),
    # the lock taken again, else (a helper took it) where it was first taken
    Format(_rx(r"(?:WARNING|INFO): possible recursive locking"), "possible deadlock",
           (_rx("is trying to acquire lock"), _AT, _rx("already holding lock"), _AT), skip=_LOCKDEP_SKIP),
    Format(_rx(r"WARNING: inconsistent lock state"), "inconsistent lock state", _TRACE_ONLY, (_rx("takes"), _AT)),
    Format(_rx(r"INFO: inconsistent lock state"), "inconsistent lock state", (_rx("takes"), _AT)),
    # 3.x-4.x said "[ INFO: suspicious RCU usage. ]" or "suspicious rcu_dereference_check() usage";
    # syzkaller keeps the kernel's own INFO/WARNING in the title
    Format(_rx(r"(WARNING|INFO): suspicious (?:RCU|rcu_dereference_check\(\)) usage"),
           "{0}: suspicious RCU usage", _TRACE_ONLY,
           skip=_skip("rcu", "kmem", "slab", "kmalloc", "vmalloc", "kcalloc", "kzalloc")),
    Format(_rx(r"INFO: trying to register non-static key"), "INFO: trying to register non-static key",
           _TRACE_ONLY, skip=_skip("stack", "lock", "IRQ")),
    Format(_rx(r"(BUG|WARNING): bad unlock balance detected"), "{0}: bad unlock balance",
           (_rx("is trying to release lock"), _PC_FUNC)),
    Format(_rx(r"(BUG|WARNING): held lock freed"), "{0}: held lock freed", (_PC_FUNC,)),
    Format(_rx(r"(BUG|WARNING): .*still has locks held"), "{0}: still has locks held", (_PC_FUNC,)),
    Format(_rx(r"(BUG|WARNING): lock held when returning to user space"), "{0}: lock held when returning to "
           "user space", (_rx("leaving the kernel with locks still held"), _AT)),
    Format(_rx(r"WARNING: [Nn]ested lock was not taken"), "WARNING: nested lock was not taken", _WARNING,
           _TRACE_ONLY),
    Format(_rx(r"(BUG|WARNING): lock held at task exit time"), "{0}: lock held at task exit time", (_PC_FUNC,)),
    # --- other BUG: reports ---------------------------------------------------------------------
    # 2.6.32: "BUG: spinlock lockup on CPU#1, swapper/0, ffff88007d4a9040"
    Format(_rx(r"BUG: (spinlock|rwlock) lockup on CPU"), "BUG: {0} lockup suspected", _TRACE_ONLY,
           skip=_skip("spin_", "_lock", "_unlock")),
    Format(_rx(r"BUG: (spinlock|rwlock) (lockup suspected|already unlocked|recursion|bad magic|wrong owner"
               r"|wrong CPU)"), "BUG: {0} {1}", _TRACE_ONLY, skip=_skip("spin_", "_lock", "_unlock")),
    Format(_rx(r"BUG: Invalid wait context"), "WARNING: locking bug", (_rx("is trying to lock"), _AT),
           _TRACE_ONLY),
    Format(_rx(r"BUG: sleeping function called from invalid context"),
           "BUG: sleeping function called from invalid context", _TRACE_ONLY),
    Format(_rx(r"BUG: scheduling while atomic"), "BUG: scheduling while atomic", _TRACE_ONLY,
           skip=_skip("schedule")),
    Format(_rx(r"BUG: using ([a-z_]+)\(\) in preemptible"), "BUG: using {0}() in preemptible code", _TRACE_ONLY,
           skip=_skip("dump_stack", "preemption", "preempt", "debug_", "processor_id", "this_cpu")),
    Format(_rx(r"BUG: workqueue leaked lock or atomic"), "BUG: workqueue leaked lock or atomic",
           (_rx(r"last function: (?P<f>\w+)"),)),
    Format(_rx(r"BUG: memory leak"), "memory leak", (_BACKTRACE, TRACE), skip=_skip(*_ALLOC_SKIP)),
    Format(_rx(r"BUG: (?:TASK )?stack guard page was hit"), "BUG: stack guard page was hit", _RIP_THEN_TRACE,
           extractor=_stall),
    Format(_rx(r"BUG: Bad rss-counter state"), "BUG: Bad rss-counter state"),
    Format(_rx(r"BUG: non-zero (nr_ptes|nr_pmds|pgtables_bytes) on freeing mm"), "BUG: non-zero {0} on freeing mm"),
    # The device and fs type would split one bug into many issues.
    Format(_rx(r"BUG: Dentry .* still in use \(\d+\) \[(?P<f>unmount) of [^\]]+\]"), "BUG: Dentry still in use",
           (_rx(r"\[(?P<f>unmount) of "),)),
    # The allocation stack names the page's owner; where it is missing, the freeing stack.
    Format(_rx(r"BUG: Bad page (state|cache)"), "BUG: Bad page {0}", (_rx("page last allocated"), TRACE),
           _TRACE_ONLY, _skip("(?:free|put|get|update|release)_page", "free_unref", "^_*folio", "truncate_inode_pages",
                              "page_frag_free", "alloc", "vmap", "page_owner", "bad_page", "free_pages", "free_pcp",
                              "free_one_page", "dump_page", "skb_release", "skb_free", "page_pool")),
    Format(_rx(r"BUG: Bad page map"), "BUG: Bad page map"),
    Format(_rx(r"kernel BUG at mm/usercopy.c|^usercopy: Kernel memory"), "BUG: bad usercopy", _TRACE_ONLY,
           skip=_USERCOPY_SKIP),
    Format(_rx(r"kernel BUG at lib/list_debug.c|^list_(?:add|del) corruption|^list_\w+ corruption"),
           "BUG: corrupted list", _RIP_THEN_TRACE, skip=_skip("list_")),
    Format(_rx(r"[Kk]ernel BUG at "), "kernel BUG", _RIP_THEN_TRACE,
           skip=_skip("^skb_", "fortify", "assert", "_panic$", "__phys_addr", "folio_unlock", "unlock_page")),
    Format(_rx(r"BUG kmalloc-.*: Object already free"), "BUG: Object already free"),
    # Leaked objects: where they were allocated (a driver's own *_alloc_* is the culprit)
    Format(_rx(r"^BUG [\w.:-]+(?: \([^)]*\))?: (Objects remaining[\w -]*)"), "BUG: slab {0}",
           (_rx(r"^(?:INFO: )?Allocated in (?P<f>[\w.]+)\+0x"),),
           skip=_skip("^_*kmem_cache", "^_*kv?[mzc]alloc", "^_*slab_", "^krealloc", "^_*alloc_pages")),
    # 2.6-4.x print no taint in parentheses: "BUG kmalloc-192: Objects remaining on kmem_cache_close()"
    Format(_rx(r"^BUG [\w.:-]+(?: \([^)]*\))?: ([A-Za-z][\w -]*)"), "BUG: slab {0}",
           (_rx(r"^(?:INFO: )?(?:Allocated|Freed) in (?P<f>[\w.]+)\+0x"),
            _rx(r"^(?:INFO: )?(?:Allocated|Freed) in (?P<f>[\w.]+)\+0x")),
           skip=_skip(*_ALLOC_SKIP, "kfree", "free", "^_*slab_")),
    Format(_rx(r"^pagealloc: memory corruption"), "BUG: pagealloc: memory corruption", _TRACE_ONLY,
           skip=_skip("page", "poison", "alloc", "^_*slab_", "kmem_cache", "free")),
    Format(_rx(r"^kernel stack overflow|^Kernel panic - not syncing: kernel stack overflow"), "kernel stack overflow",
           _RIP_THEN_TRACE, extractor=_stall),
    # --- WARNINGs by file ------------------------------------------------------------------------
    _warning(r"WARNING: .*lib/debugobjects\.c.* (?:debug_print|debug_check|at)", "WARNING: ODEBUG bug",
             "debug_", "rcu", "hrtimer_", "timer_", "work_", "percpu_", "kmem_", "slab_", "kfree", "vunmap",
             "vfree", "__free_", "debug_check", "kobject_"),
    Format(_rx(r"WARNING: .*mm/usercopy\.c.* (?:usercopy_warn|at)"), "WARNING: bad usercopy", _WARNING, _TRACE_ONLY,
           _USERCOPY_SKIP),
    _warning(r"WARNING: .*lib/kobject\.c.* (?:kobject_|at)", "WARNING: kobject bug", "kobject_"),
    _warning(r"WARNING: .*fs/proc/generic\.c.* (?:proc_register|at)", "WARNING: proc registration bug", "proc_"),
    _warning(r"WARNING: .*lib/refcount\.c.* (?:refcount_|at)", "WARNING: refcount bug", "refcount", "kobject_"),
    _warning(r"WARNING: .*kernel/locking/lockdep\.c.*lock_", "WARNING: locking bug", "lock_sock",
             "release_sock"),
    _warning(r"WARNING: .*mm/vmalloc\.c.*__vmalloc_node_range", "WARNING: zero-size vmalloc", "vmalloc",
             "vzalloc", "kvmalloc", "kvzalloc", "kvcalloc"),
    _warning(r"WARNING: .*mm/.*\.c.* k?.?malloc", "WARNING: kmalloc bug", "kmalloc", "krealloc", "slab", "kmem"),
    Format(_rx(r"WARNING: .* usb_submit_urb"), "WARNING", _WARNING, _TRACE_ONLY,
           _skip("usb_submit_urb", "usb_start_wait_urb", "usb_bulk_msg", "usb_interrupt_msg", "usb_control_msg"),
           frame_suffix="/usb_submit_urb"),
    Format(_rx(r"WARNING: kernel stack regs at [0-9a-f]+ in \S* has bad '([^']+)' value"),
           "WARNING: kernel stack regs has bad '{0}' value"),
    Format(_rx(r"WARNING: kernel stack frame pointer at [0-9a-f]+ in \S* has bad value"),
           "WARNING: kernel stack frame pointer has bad value"),
    # Hashed pointers ("(ptrval)"): one unwinder bug, whichever register it trips on.
    Format(_rx(r"WARNING: kernel stack (?:regs|frame pointer) at .* has bad"),
           "WARNING: kernel stack regs has bad value"),
    Format(_rx(r"WARNING: .*still has locks held"), "WARNING: still has locks held", (_AT,)),
    # The header names where the WARN fired: first, unless it is a helper (2.6.32's traces
    # are all "?" frames, and the first of them is often the caller's caller)
    _warning_at(r"^WARNING: (?:CPU: \d+ PID: \d+ )?at \S+:\d+ \.?(?P<f>[\w.]+)"),
    _warning_at(r"^WARNING: \S+:\d+ at \.?(?P<f>[A-Za-z_][\w.]*)"),
    # 2025: "WARNING: file:line at 0x0, CPU#n: comm/pid" when the function is unknown: RIP names it
    Format(_rx(r"^WARNING: \S+:\d+ at 0x[0-9a-f]+, CPU#"), "WARNING", _WARNING, _TRACE_ONLY),
    _warning_at(r"^WARNING: \[.*\] \S+:\d+ at \.?(?P<f>[A-Za-z_][\w.]*)"),
    # 2.6.18: "BUG: warning at kernel/rtmutex-debug.c:125/rt_mutex_debug_task_free() (Not tainted)"
    _warning_at(r"^BUG: warning at \S+:\d+/\.?(?P<f>[A-Za-z_][\w.]*)\(\)"),
    # 2.6-3.x: the function wrapped onto the next line ("foo+0x1/0x2 [mod]() (Tainted: ..)"), or
    # none at all (ppc64, s390 print "WARNING: at arch/powerpc/..c:390": NIP/PSW names it)
    Format(_rx(r"^WARNING: (?:CPU: \d+ PID: \d+ )?at \S+:\d+\s*$"), "WARNING",
           (_WRAPPED_FUNCTION, PC, TRACE), _TRACE_ONLY),
    # --- the rest -----------------------------------------------------------------------------
    Format(_rx(r"Machine Check Exception"), "Machine Check Exception"),
    Format(_rx(r"^NETDEV WATCHDOG: \S+ \((?P<f>\S+)\): transmit queue \d+ timed out"),
           "NETDEV WATCHDOG: transmit queue timed out", (_rx(r"^NETDEV WATCHDOG: \S+ \((?P<f>\S+)\)"),)),
    Format(_rx(r"^irq \d+: nobody cared"), "irq: nobody cared", _TRACE_ONLY),
    Format(_rx(r"unregister_netdevice: waiting for \S+ to become free"),
           "unregister_netdevice: waiting for DEV to become free"),
    # Rust symbols are mangled in traces; the source file of the panic is stable across builds.
    Format(_rx(r"rust_kernel: panicked at (?P<f>[\w/.-]+\.rs):"), "rust panic",
           (_rx(r"panicked at (?P<f>[\w/.-]+\.rs):"),)),
    Format(_rx(r"^VFS: Close: file count is 0"), "VFS: Close: file count is zero (use-after-free)"),
    Format(_rx(r"^VFS: Busy inodes after unmount"), "VFS: Busy inodes after unmount (use-after-free)"),
    Format(_rx(r"^Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: (?P<f>[\w.]+)\+"),
           "kernel panic: stack is corrupted", (_rx(r"corrupted in: (?P<f>[\w.]+)\+"),)),
    # 2.6.32 printed the corrupted function's address: a reliable frame may name it, but its
    # "?" guesses are stale stack contents (sprintf's leftovers), never the function
    Format(_rx(r"^Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: [0-9a-f]+\s*$"),
           "kernel panic: stack is corrupted", _TRACE_ONLY, skip=_skip("stack_chk"), guesses=False),
    Format(_rx(r"^Kernel panic - not syncing: stack-protector"), "kernel panic: stack is corrupted",
           _TRACE_ONLY, skip=_skip("stack_chk")),
    Format(_rx(r"^Kernel panic - not syncing: corrupted stack end"), "kernel panic: corrupted stack end",
           _TRACE_ONLY, skip=_skip("schedule", "retint_kernel", "resched"), extractor=_stall),
    Format(_rx(r"^Kernel panic - not syncing: Attempted to kill init!"), "kernel panic: Attempted to kill init!"),
    Format(_rx(r"^Kernel panic - not syncing: Couldn't open N_TTY ldisc"), "kernel panic: Couldn't open N_TTY ldisc"),
    Format(_rx(r"(?<![A-Za-z])BUG: (.+)"), "BUG: {0}", category="BUG"),
    Format(_rx(r"^Kernel panic - not syncing: (.+)"), "kernel panic: {0}", category="kernel panic"),
    # mips die(): "Kernel bug detected[#1]:" is BUG(); the others name the exception
    Format(_rx(r"^Kernel bug detected\[#\d+\]:"), "kernel BUG", _RIP_THEN_TRACE),
    Format(_rx(r"^Reserved instruction in kernel code\[#\d+\]:"), "invalid opcode", _RIP_THEN_TRACE),
    Format(_rx(r"^(Unhandled kernel unaligned access|Instruction bus error|Data bus error"
               r"|Floating point exception in kernel code)\[#\d+\]:"), "{0}", _RIP_THEN_TRACE),
    # ARMv7-M (no MMU): "Unhandled exception: IPSR = 00000005 LR = fffffff1"
    Format(_rx(r"^Unhandled exception: IPSR"), "Unhandled exception", _RIP_THEN_TRACE),
    Format(_rx(r"^(?:Oops(?:\[#\d+\]:(?: |$)|: (?:[0-9a-f]{4}\b|.*\[#\d+\]))|Internal error: )"), "Oops",
           _RIP_THEN_TRACE),
)

# One search over every header first: most report lines match none, and trying ~90
# formats on each would cost more than the rest of the analysis.
_ANY_HEADER = re.compile("|".join(f"(?:{re.sub(r'[(][?]P<f>', '(', f.header.pattern)})" for f in FORMATS))
# Every header holds one of these: most lines are rejected by a few substring tests
# instead of the alternation above, which is tried at every position of the line.
_HEADER_LITERALS = ("BUG", "WARNING", "INFO", "UBSAN", "PANIC", "Kernel panic", "Oops", "Internal error", "fault",
                    "Unable to handle", "divide", "opcode", "int3", "stack", "LOCKUP", "Machine Check", "NETDEV",
                    "nobody cared", "unregister_netdevice", "corruption", "usercopy", "VFS: ",
                    "rust_kernel", "BUG ", "Unhandled exception", "Kernel bug", "kernel code", "unaligned", "bus error")
for _f in FORMATS:
    assert any(lit in _f.header.pattern for lit in _HEADER_LITERALS), _f.header.pattern


def _maybe_header(line: str) -> bool:
    for lit in _HEADER_LITERALS:
        if lit in line:
            return _ANY_HEADER.search(line) is not None
    return False


# Panics that only report an earlier crash: the earlier crash names the report.
_CONSEQUENCE = re.compile(
    r"^Kernel panic - not syncing: (?:Fatal exception|Fatal exception in interrupt|.*panic_on_warn set"
    r"|hung_task: blocked tasks|softlockup: hung tasks|Hard LOCKUP|Fatal machine check|Fatal Machine check"
    r"|Attempted to kill the idle task|Aiee, killing interrupt handler|rcu_sched stall|RCU Stall"
    r"|.*Fatal exception)"
)
# Header-looking lines that belong inside a report rather than start another one.
_INSIDE = re.compile(r"^(?:Oops|Internal error|invalid opcode: 0000|Kernel panic - not syncing|PANIC: double fault"
                     r"|unregister_netdevice: waiting for|-+\[ cut here|general protection fault|Unhandled fault"
                     r"|Unable to handle kernel|Modules linked in)")
_INFO_WITH_STACK = re.compile(r"vmalloc: allocation failure:|FAULT_INJECTION: forcing a failure"
                              r"|FAULT_FLAG_ALLOW_RETRY missing")
# Syzkaller's cut-off: after this many lines, a panic (panic_on_warn's own stack) or an
# oops-induced lockdep splat is noise.
_SECOND_STACK_AFTER = 22
# "list_del corruption" is followed by "kernel BUG at lib/list_debug.c", a refcount message by
# its WARNING: a header this close to the first is the same report.
_SAME_REPORT_LINES = 3


def _find_header(lines: Sequence[str]) -> tuple[int, Format, re.Match[str]] | None:
    first: tuple[int, Format, re.Match[str]] | None = None
    for i, line in enumerate(lines):
        if not _maybe_header(line):
            continue
        if _CONSEQUENCE.match(line):
            fatal = _FATAL.header.match(line)
            if first is None and fatal is not None:
                first = (i, _FATAL, fatal)
            continue
        for fmt in FORMATS:
            m = fmt.header.search(line)
            if m is None:
                continue
            if fmt.kind != "Oops":
                return i, fmt, m
            # A bare "Oops:"/"Internal error: Oops" line: the real header may come next.
            if first is None:
                first = (i, fmt, m)
            break
    return first


_FATAL = Format(_rx(r"^Kernel panic - not syncing: (.+)"), "kernel panic: {0}", category="kernel panic")


def has_header(lines: Sequence[str]) -> bool:
    """Some line is a crash header that a format knows."""
    return _find_header(without_cpu_column(lines)) is not None


def without_cpu_column(lines: Sequence[str]) -> Sequence[str]:
    """The lines without PREEMPT_RT's console CPU column ("000: WARNING: ..."), when every
    line that has a stamp-free start carries one: the report as other kernels print it."""
    if lines and all(x[3:5] == ": " and x[:3].isdigit() for x in lines[:3]):
        return [x[5:] if x[3:5] == ": " and x[:3].isdigit() else x for x in lines]
    return lines


def _region(lines: Sequence[str], start: int) -> Sequence[str]:
    """The header's own report: up to the next crash header (another CPU's, or a crash the
    first one caused), which would lend its frames to the wrong title."""
    for j in range(start + 1, len(lines)):
        line = lines[j]
        if _INFO_WITH_STACK.search(line):
            return lines[start:j]
        if j - start > _SECOND_STACK_AFTER and line.startswith("Kernel panic - not syncing"):
            return lines[start:j]
        if j - start > _SAME_REPORT_LINES and _maybe_header(line) and not _INSIDE.match(line) \
                and not _CONSEQUENCE.match(line):
            return lines[start:j]
    return lines[start:]


def _match_part(part: _Part, line: str) -> tuple[bool, str | None]:
    if part is PC:
        f = pc_function(line)
        return f is not None, f
    assert isinstance(part, re.Pattern)
    m = part.search(line)
    if m is None:
        return False, None
    return True, m.groupdict().get("f")


def _candidates(lines: Sequence[str], parts: tuple[_Part, ...], skip: re.Pattern[str] | None,
                strict: bool = False, unreliable: bool = False) -> list[str]:
    out: list[str] = []

    def add(name: str | None) -> None:
        # Extractors see the names as printed (their anchors know the wrapper prefixes).
        if name and not is_skipped(name, skip) and not is_skipped(canonical_function(name), skip) \
                and (not out or out[-1] != name):
            out.append(name)

    i, n = 0, len(lines)
    for k, part in enumerate(parts):
        nxt = parts[k + 1] if k + 1 < len(parts) else None
        if part is TRACE:
            read = 0
            while i < n:
                line = lines[i]
                if nxt is not None and _match_part(nxt, line)[0]:
                    break
                if is_trace_start(line) or _OTHER_STACK.match(line):
                    if read:
                        break
                    i += 1
                    continue
                f = parse_frame(line, inline=False)
                if f is not None:
                    read += 1
                    if f.reliable or unreliable:
                        add(f.function)
                        add(arm_caller(line))
                i += 1
            continue
        for j in range(i, n):
            ok, name = _match_part(part, lines[j])
            if ok:
                add(name)
                i = j + 1
                break
        else:
            if strict and part is not PC:
                return []
        # An anchor that never shows (no RIP line on this arch, say): read on from where we are.
    return out


_PLUMBING = re.compile(r"(?:__x64_|__ia32_|__arm64_|__se_|__do_|_{0,3})sys_|ksys_|do_syscall_|entry_SYSCALL"
                       r"|x64_sys_call"
                       r"|vfs_(?:read|write|readv|writev|iter_read|iter_write|ioctl|open)$|do_sys_|full_proxy_"
                       r"|debugfs_(?:attr_)?(?:read|write)|do_el0_svc|el0|invoke_syscall")
_END_TRACE = "---[ end trace"
# What a warning can lead to at once in the same incident (a fortify WARNING, then its BUG()).
_FATAL_KINDS = ("kernel BUG", "BUG: ", "invalid opcode", "general protection fault", "Oops", "Internal error")


def _fatal_after_warning(lines: Sequence[str], index: int) -> tuple[int, Format, re.Match[str]] | None:
    """A fatal crash that begins right after the warning at ``index`` has ended: the
    assembler keeps the two as one incident, and the fatal one names it, as it does on
    kernels that print no warning first (6.1's fortify_panic), so both group together."""
    end = next((k for k in range(index + 1, min(len(lines), index + 200)) if lines[k].startswith(_END_TRACE)), None)
    if end is None:
        return None
    for j in range(end + 1, min(len(lines), end + 4)):
        if not _maybe_header(lines[j]):
            continue
        for fmt in FORMATS:
            m = fmt.header.search(lines[j])
            if m is not None:
                return (j, fmt, m) if fmt.kind.startswith(_FATAL_KINDS) else None
    return None


def blame(lines: Sequence[str]) -> Blame:
    """Find the report's header line, its kind and its guilty function."""
    lines = without_cpu_column(lines)
    found = _find_header(lines)
    if found is not None and found[1].kind.startswith("WARNING"):
        found = _fatal_after_warning(lines, found[0]) or found
    if found is None:
        # No header we know: the first line that says something. A separator ("cut here",
        # "=====", "---[ end trace") never names a crash.
        index = next((i for i, x in enumerate(lines) if x.strip() and not is_separator(x)), 0)
        header = lines[index] if lines else ""
        return Blame(kind=header, category="kernel crash", frame=None, header_index=index, corrupted=True,
                     frameless=True)
    index, fmt, m = found
    region = _region(lines, index)
    groups = tuple(g or "" for g in m.groups())
    kind = fmt.kind
    if "{rw}" in kind:
        rw = "Write" if any("Write of size" in x for x in region[:12]) else "Read"
        kind = kind.replace("{rw}", rw)
    if "{" in kind:
        kind = kind.format(*groups)
    if fmt.null_below:
        failing = next((f for x in region[:4] if (f := _FAILING_ADDRESS.match(x)) is not None), None)
        if failing is not None and int(failing.group(1), 16) < fmt.null_below:
            kind = "BUG: unable to handle kernel NULL pointer dereference"
    category = fmt.category or kind
    if not fmt.stack:
        return Blame(kind, category, None, index, False, True)
    frames = _candidates(region, fmt.stack, fmt.skip, fmt.strict)
    if fmt.stack and fmt.stack[0] is PC and any(pc_in_data(x) for x in region[:40]):
        # The CPU jumped into data: the link register names the code that jumped there
        # (the trace may not show it: the jump left no frame)
        frames = [*_candidates(region, (_ANY_LR,), fmt.skip), *frames]
    if not frames and fmt.alt:
        frames = _candidates(region, fmt.alt, fmt.skip, fmt.strict)
    if not frames and fmt.last:
        frames = _candidates(region, fmt.last, fmt.skip)
    if not frames and fmt.stack != _TRACE_ONLY and not fmt.strict:
        # The anchor the format reads named only a helper (a lock taken in a never-guilty
        # function, a fault in memcpy): the first guilty frame of the call trace instead.
        frames = _candidates(region, _TRACE_ONLY, fmt.skip)
    if not frames and fmt.guesses:
        # Executing data or user memory leaves the unwinder only "? f+0x.." guesses: the
        # best of them beats no function at all.
        frames = _candidates(region, fmt.stack, fmt.skip, fmt.strict, unreliable=True)
    raw: str | None = None
    if frames and fmt.extractor is _stall and fmt.stack[0] is PC and not fmt.strict:
        # A soft lockup names where the CPU was: the function the fault line names, or the
        # first guilty frame after it when that is a helper (a lock, a delay loop), or the
        # trace's top when there is no fault line (an old kernel's, a trimmed log).
        # (A fuzzing kernel's instrumentation, KCOV or KASAN's checks, is where such a CPU is
        # most often caught: noise, and syzkaller's dispatch rule names those. A stack
        # overflow recurses: where it ran out says little, so the dispatch rule names it too.)
        pc_name = next((pc for x in region[:60] if (pc := pc_function(x)) is not None), None)
        if pc_name is None or (not _INSTRUMENTATION.match(pc_name) and fmt.kind == "BUG: soft lockup"):
            raw = frames[0]
        if raw is None:
            # ppc's "--- Exception: 300 at ..." starts another context's frames (a fault the
            # stuck task took earlier): the stall is in the frames above it
            cut = next((k for k, x in enumerate(region) if _EXCEPTION_FRAME.match(x)), None)
            if cut is not None:
                frames = _candidates(region[:cut], fmt.stack, fmt.skip, fmt.strict) or frames
        if raw is not None and raw.startswith("smp_call_function"):
            raw = "smp_call_function"  # waiting on other CPUs: syzkaller's one bucket
    if raw is None and frames and fmt.extractor is not None:
        raw = fmt.extractor(frames)
    if raw is None and frames:
        # Syscall, VFS and debugfs plumbing only carries the call: any other frame is the culprit.
        raw = next((f for f in frames if not _PLUMBING.match(f)), None) \
            or next((f for f in frames if not _PROXY.match(f)), frames[0])
    if raw is None and "f" in m.groupdict() and m.group("f"):
        raw = m.group("f")
    frame = canonical_function(raw) + fmt.frame_suffix if raw else None
    return Blame(kind, category, frame, index, frame is None, False)
