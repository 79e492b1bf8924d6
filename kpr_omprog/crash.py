"""What a kernel crash looks like: the lines that start and end a crash report.

The start markers are the union of what ABRT, kerneloops and syzkaller
recognise (see the README for the list and its sources), anchored so that
look-alikes stay out: ``ODEBUG:``, a userspace ``traps: ... general protection
fault``, ``kl_crash=BUG`` on a command line, ``INFO: lockdep is turned off``.

    >>> classify("BUG: kernel NULL pointer dereference, address: 0000000000000000")
    1
    >>> classify("---[ end trace 0000000000000000 ]---") == END_GRACE
    True
    >>> classify("e1000: eth0 NIC Link is Up 1000 Mbps Full Duplex")
    0
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["END_GRACE", "END_NOW", "NONE", "PANIC", "START", "classify", "is_start"]

NONE = 0
#: a line that opens a crash report
START = 1
#: ``Kernel panic - not syncing``: opens a report, or belongs to the oops just before it
PANIC = 2
#: the last line of a report (``---[ end Kernel panic``, ``Rebooting in N seconds``)
END_NOW = 3
#: a report's end is near; a few lines may follow (``---[ end trace``, ``Kernel Offset:``)
END_GRACE = 4

# Markers that may sit anywhere in a line (after a "watchdog: " or "rcu: " prefix, say);
# each contains one of _ANYWHERE_LITERALS, so most lines skip the regex entirely.
_ANYWHERE = re.compile(
    r"(?<![A-Za-z])BUG: "
    r"|[Kk]ernel BUG at "
    r"|INFO: rcu_\w+ (?:self-)?detected (?:expedited )?stall"
    r"|[Ww]atchdog detected hard LOCKUP"
    r"|Machine Check Exception"
)
_ANYWHERE_LITERALS = ("BUG", "INFO: rcu", "LOCKUP", "Machine Check")
# Markers that start a line: tried at position 0 only, which costs a fraction of a search.
_START_OF_LINE = (
    r"BUG \S+ \(.*\): "  # SLUB: "BUG kmalloc-64 (Not tainted): Poison overwritten"
    r"|WARNING: "
    r"|\[ INFO: (?:possible|inconsistent)"  # old lockdep banners
    r"|INFO: (?:possible|inconsistent|suspicious|trying to register non-static)"
    r"|INFO: task \S.* blocked for more than"
    r"|(?:Oops|Internal error): "
    r"|(?:Oops: )?general protection fault"
    r"|Unable to handle kernel "
    r"|(?:UBSAN|KASAN|KFENCE|KMSAN|KCSAN): "
    r"|-+\[ cut here \]-+"
    r"|(?:divide error|invalid opcode|stack segment|double fault|PANIC: double fault"
    r"|alignment check|int3|bounds|coprocessor segment overrun|invalid TSS|segment not present"
    r"|iret exception|simd exception|fpu exception): "
    r"|list_(?:add|del) corruption"
    r"|usercopy: Kernel memory"
    r"|NETDEV WATCHDOG: "
    r"|irq \d+: nobody cared"
    r"|(?:do_IRQ: stack overflow|kernel stack overflow)"
    r"|Kernel panic - not syncing"
)
_END_NOW = r"---\[ end Kernel panic|Rebooting in \d+ seconds"
_END_GRACE = r"---\[ end trace|Kernel Offset: "

_AT_START = re.compile(f"(?P<s>{_START_OF_LINE})|(?P<n>{_END_NOW})|(?P<g>{_END_GRACE})")
_PANIC_PREFIX = "Kernel panic - not syncing"


def classify(text: str) -> int:
    """Return :data:`START`, :data:`PANIC`, :data:`END_NOW`, :data:`END_GRACE` or :data:`NONE`."""
    m = _AT_START.match(text)
    if m is None:
        for literal in _ANYWHERE_LITERALS:
            if literal in text:
                break
        else:
            return NONE
        return START if _ANYWHERE.search(text) is not None else NONE
    if m.group("s") is not None:
        return PANIC if text.startswith(_PANIC_PREFIX) else START
    return END_NOW if m.group("n") is not None else END_GRACE


def is_start(text: str) -> bool:
    """True when ``text`` opens a crash report."""
    return classify(text) in (START, PANIC)


# ---------------------------------------------------------------------------------------
# Titles, fingerprints and frames
# ---------------------------------------------------------------------------------------

_FRAME = re.compile(
    r"^\s*(?:\[[<(]?[0-9a-fx]+[>)]?\]\s*)*(\?\s+)?\(?([A-Za-z_$][\w.$]*)\+0x[0-9a-f]+/0x[0-9a-f]+\)?"
    r"(?:\s+\[(\w+)(?:\s+[0-9a-f]+)?\])?"
)
_INLINE_FRAME = re.compile(r"^\s+([A-Za-z_$][\w.$]*) \S+\.[chS]:\d+(?::\d+)? \[inline\]")
_PC = re.compile(
    r"^(?:RIP: [0-9a-f]{4}:|IP:|EIP: [0-9a-f]{4}:|EIP:|pc : |PC is at |NIP:? *\[[0-9a-f]+\] |epc : |PSW: )"
    r"\s*(?:\[<[0-9a-f]+>\]\s*)*([A-Za-z_$][\w.$]*)\+0x"
)
_CPU_LINE = re.compile(
    r"^(?:CPU: \d+ (?:UID: \d+ )?PID: \d+ Comm: (?P<comm>.+?)|Pid: \d+, comm: (?P<comm2>.+?))"
    r" +(?:Not tainted|Tainted: (?P<taint>[A-Z ]+?)) +(?P<release>\S+) #"
)
_HARDWARE = re.compile(r"^Hardware name: (.+?)(?:, BIOS .*)?$")
_CLONE_SUFFIX = re.compile(r"\.(?:isra|constprop|part|cold|llvm|lto_priv|localalias)(?:\.\d+)*$|\.cold$")
_SYSCALL_PREFIX = re.compile(r"^(?:__x64_|__ia32_|__arm64_|__se_|__do_|__riscv_|__s390x_|compat_)+(?=sys_)|^SyS_")
_TRACE_START = re.compile(r"^\s*(?:Call Trace|Call trace|Backtrace|backtrace|Stack)\s*:", re.IGNORECASE)
_TRACE_NOISE = re.compile(r"^\s*(?:<(?:/?(?:IRQ|NMI|TASK|SOFTIRQ)|EOI|<EOE>)>|--- |-+\[ end|\? 0x|\(stack is not)")

# Frames that report a crash but never cause one (after syzkaller's and satyr's lists).
_SKIP = re.compile(
    r"^(?:dump_stack\w*|__dump_stack|show_stack\w*|show_trace\w*|show_regs|__show_regs|panic|nmi_panic|vpanic"
    r"|__warn\w*|warn_slowpath\w*|warn_bogus\w*|report_bug|fixup_bug|handle_bug|do_error_trap|do_trap\w*"
    r"|do_invalid_op|invalid_op|exc_\w+|asm_exc_\w+|asm_sysvec_\w+|sysvec_\w+|do_int3\w*|die|__die\w*|oops_\w+"
    r"|page_fault_oops|kernelmode_fixup_or_oops|no_context|__bad_area\w*|bad_area\w*|do_user_addr_fault"
    r"|do_kern_addr_fault|handle_page_fault|page_fault|async_page_fault|do_page_fault|__do_page_fault"
    r"|_?printk\w*|vprintk\w*|dev_printk\w*|_?dev_(?:err|warn|info)\w*|print_\w+|kasan_\w+|__kasan_\w+"
    r"|__asan_\w+|asan_\w+|kmsan_\w+|__msan_\w+|kcsan_\w+|kfence_\w+|__kfence_\w+|check_memory_region\w*"
    r"|check_heap_object|__check_heap_object|ubsan_\w+|__ubsan_\w+|__sanitizer_\w+|lockdep_\w+|__lock_acquire"
    r"|lock_acquire|lock_release|__lock_release|lock_is_held\w*|mark_lock\w*|_raw_\w+|do_raw_\w+"
    r"|spin_(?:un)?lock\w*|__?mutex_\w+|mutex_\w+|down_\w+|__down_\w+|up_\w+|rwsem_\w+|__rwsem\w*"
    r"|queued_\w+|native_queued_\w+|osq_lock|__might_sleep|___might_sleep|__might_fault|might_fault"
    r"|__might_resched|kmem_cache_\w+|__kmem_cache_\w+|kmalloc\w*|__kmalloc\w*|kzalloc\w*|kvmalloc\w*"
    r"|kfree\w*|kvfree|slab_\w+|__slab_\w+|___slab_\w+|memcpy\w*|memset\w*|memmove\w*|__mem\w+|str\w*cpy|strlen"
    r"|strnlen|copy_(?:to|from)_user\w*|_copy_(?:to|from)_user|__copy_\w+|raw_copy_\w+|check_object_size"
    r"|__check_object_size|usercopy_abort|refcount_\w+|__refcount_\w+|__list_\w+_valid\w*|__list_\w+"
    r"|list_\w+_valid|__stack_chk_fail|stackleak_\w+|watchdog\w*|nmi_\w+|__nmi\w*|arch_trigger\w+"
    r"|trigger_\w+backtrace|rcu_dump\w*|rcu_sched_clock_irq|rcu_check_\w+|print_cpu_stall\w*|check_cpu_stall"
    r"|hrtimer_\w+|__hrtimer_\w+|update_process_times|tick_\w+|__sysvec_\w+|irq_exit\w*|__irq_exit\w*"
    r"|do_syscall_\w+|entry_SYSCALL\w*|ret_from_fork\w*|kthread|worker_thread|smpboot_thread_fn"
    r"|debug_check_no_obj_freed|debug_object\w*|should_fail\w*|fail_dump|bug_handler|do_BUG\w*|__BUG\w*"
    r"|lkdtm_do_action|direct_entry|full_proxy_write|__schedule|schedule\w*|io_schedule\w*|context_switch"
    r"|__cond_resched|preempt_schedule\w*|__sched_text_start|__pfx_\w+|spin_dump|spin_bug|check_prev_add\w*"
    r"|check_prevs_add|validate_chain|print_circular_bug\w*|check_noncircular|kmemleak_\w+|create_object\w*"
    r"|debug_print_object|usercopy_warn|check_preemption_disabled|debug_smp_processor_id|__schedule_bug"
    r"|__this_cpu_preempt_check|mem(?:cmp|chr|scan)|bcmp|work_is_static_object|debug_check_no_locks_freed"
    r"|kobject_\w+|warn_alloc\w*|__alloc_pages\w*|alloc_pages\w*|__get_free_pages|get_page_from_freelist"
    r"|__vmalloc\w*|vmalloc\w*|kvzalloc|krealloc\w*|__krealloc|kmemdup\w*|kstrdup\w*|alloc_inode|new_inode\w*"
    r"|sock_kmalloc|__sock_kmalloc|sk_alloc|skb_\w+|__skb_\w+|pskb_\w+|alloc_skb\w*|__alloc_skb|consume_skb"
    r"|kfree_skb\w*|__kfree_skb|kmem_\w+|fixup_exception|ex_handler_\w+|perf_trace_destroy|register_lock_class"
    r"|__raw_\w+|raw_spin_\w+|rcu_read_\w+|__rcu_read_\w+|rcu_lockdep_\w+|lockdep_rcu_suspicious"
    r"|__read_once\w*|__write_once\w*|read_word_at_a_time|atomic\w*|arch_atomic\w*|__atomic\w*|bitmap_\w+"
    r"|__bitmap_\w+|find_\w+_bit|test_bit|set_bit|clear_bit|__set_bit|__clear_bit|_find_\w+)$"
)
# Where a hung or stalling task entered the kernel: its caller is the representative frame.
_ANCHOR = re.compile(
    r"^(?:do_syscall_\w+|entry_SYSCALL\w*|__x64_sys_\w+|__se_sys_\w+|__do_sys_\w+|ksys_\w+|vfs_\w+|process_one_work"
    r"|worker_thread|kthread|ret_from_fork\w*|__do_softirq|call_timer_fn|expire_timers|run_timer_softirq"
    r"|task_work_run|__fput|sock_\w+msg|netlink_rcv\w*|exc_page_fault|do_user_addr_fault)$"
)
_HANG_SKIP = re.compile(r"schedule|lock|wait|completion|sleep|rwsem|futex|down|__x64_sys|do_syscall|entry_SYSCALL")

_SPECIAL_WARNING_FILES = (
    ("lib/refcount.c", "WARNING: refcount bug"),
    ("lib/debugobjects.c", "WARNING: ODEBUG bug"),
    ("kernel/locking/lockdep.c", "WARNING: locking bug"),
    ("mm/usercopy.c", "WARNING: bad usercopy"),
    ("lib/kobject.c", "WARNING: kobject bug"),
    ("fs/proc/generic.c", "WARNING: proc registration bug"),
    ("mm/util.c", "WARNING: kmalloc bug"),
    ("mm/slab_common.c", "WARNING: kmalloc bug"),
)

# (regex on a report line, kind template, where the guilty frame comes from)
# frame sources: "pc" (the faulting instruction, then the call trace), "header" (a
# function named in the matched line), "stall" and "hang" (see _guilty), "msg" (no frame:
# the normalised message is the bug), "none".
_KINDS: tuple[tuple[re.Pattern[str], str, str], ...] = tuple(
    (re.compile(rx), kind, src) for rx, kind, src in (
        (r"BUG: KASAN: double-free or invalid-free", "KASAN: invalid-free", "stack"),
        (r"BUG: KASAN: ([a-z\-]+) in ([\w.]+)", "KASAN: {0} {rw}", "header1"),
        (r"BUG: KMSAN: ([a-z\-]+) in ([\w.]+)", "KMSAN: {0}", "header1"),
        (r"BUG: KFENCE: ([a-z\-]+) (read|write) in ([\w.]+)", "KFENCE: {0} {1}", "header2"),
        (r"BUG: KFENCE: ([a-z\-]+) in ([\w.]+)", "KFENCE: {0}", "header1"),
        (r"BUG: KCSAN: ([a-z\-]+) in ([\w.]+)", "KCSAN: {0}", "header1"),
        (r"UBSAN: [Uu]ndefined behaviour in ", "UBSAN: undefined-behaviour", "stack"),
        (r"UBSAN: ([\w\- ]+?) in ", "UBSAN: {0}", "stack"),
        (r"(?:BUG: unable to handle kernel|BUG: kernel|BUG: Kernel|Unable to handle kernel) "
         r"NULL pointer dereference", "BUG: unable to handle kernel NULL pointer dereference", "pc"),
        (r"(?:BUG: unable to handle kernel paging request|BUG: unable to handle page fault"
         r"|Unable to handle kernel paging request|Unable to handle kernel data access"
         r"|BUG: unable to handle kernel$)", "BUG: unable to handle kernel paging request", "pc"),
        (r"^(?:Oops: )?general protection fault", "general protection fault", "pc"),
        (r"BUG: soft lockup", "BUG: soft lockup", "stall"),
        (r"[Ww]atchdog detected hard LOCKUP", "watchdog: hard LOCKUP", "pc"),
        (r"INFO: rcu_\w+ (?:self-)?detected (?:expedited )?stall", "INFO: rcu detected stall", "stall"),
        (r"^INFO: task .* blocked for more than", "INFO: task hung", "hang"),
        (r"(?:WARNING|INFO): possible (?:circular|recursive) locking", "possible deadlock", "stack"),
        (r"(?:WARNING|INFO): possible irq lock inversion", "possible deadlock", "stack"),
        (r"(?:WARNING|INFO): \S+-safe -> \S+-unsafe", "possible deadlock", "stack"),
        (r"(?:WARNING|INFO): inconsistent lock state", "inconsistent lock state", "stack"),
        (r"(?:WARNING|INFO): suspicious RCU usage", "WARNING: suspicious RCU usage", "stack"),
        (r"^WARNING: (?:CPU: \d+ PID: \d+ )?at (\S+?):\d+ ([\w.]+)\+", "WARNING", "warning"),
        (r"^WARNING: (\S+?):\d+ at ", "WARNING", "warning"),
        (r"^WARNING: at (\S+?):\d+ ([\w.]+)\(", "WARNING", "warning"),
        (r"BUG: sleeping function called from invalid context", "BUG: sleeping function called from invalid "
         "context", "stack"),
        (r"BUG: scheduling while atomic", "BUG: scheduling while atomic", "stack"),
        (r"BUG: spinlock (\w+(?: \w+)?) on CPU", "BUG: spinlock {0}", "stack"),
        (r"BUG: using ([\w]+)\(\) in preemptible", "BUG: using {0}() in preemptible code", "stack"),
        (r"BUG: Bad page (state|map)", "BUG: Bad page {0}", "stack"),
        (r"BUG: memory leak", "memory leak", "stack"),
        (r"BUG: workqueue lockup", "BUG: workqueue lockup", "none"),
        (r"BUG: (?:TASK )?stack guard page was hit", "BUG: stack guard page was hit", "pc"),
        (r"(?:kernel BUG at lib/list_debug.c|^list_(?:add|del) corruption)", "BUG: corrupted list", "pc"),
        (r"(?:kernel BUG at mm/usercopy.c|^usercopy: Kernel memory)", "BUG: bad usercopy", "stack"),
        (r"[Kk]ernel BUG at ", "kernel BUG", "pc"),
        (r"^Kernel panic - not syncing: (?:stack-protector|.*corrupted stack end)", "kernel panic: stack is "
         "corrupted", "panicmsg"),
        (r"^(?:divide error|divide_error):", "divide error", "pc"),
        (r"^invalid opcode:", "invalid opcode", "pc"),
        (r"^PANIC: double fault|^double fault:", "PANIC: double fault", "pc"),
        (r"^stack segment:", "stack segment fault", "pc"),
        (r"^int3:", "int3", "pc"),
        (r"Machine Check Exception", "Machine Check Exception", "mce"),
        (r"^NETDEV WATCHDOG: \S+ \((\S+)\): transmit queue \d+ timed out", "NETDEV WATCHDOG: transmit queue "
         "timed out", "header0"),
        (r"^irq \d+: nobody cared", "irq: nobody cared", "stack"),
        (r"^Internal error: Oops", "Oops", "pc"),
        (r"^Oops: ", "Oops", "pc"),
        (r"(?<![A-Za-z])BUG: (.+)", "BUG: {0}", "msg"),
        (r"^Kernel panic - not syncing: (.+)", "kernel panic: {0}", "msg"),
        (r"^-+\[ cut here \]-+", "", "skip"),
    )
)

# Panics that only report an earlier crash: the earlier crash names the report.
_CONSEQUENCE_PANIC = re.compile(
    r"^Kernel panic - not syncing: (?:Fatal exception|Fatal exception in interrupt|.*panic_on_warn set"
    r"|hung_task: blocked tasks|softlockup: hung tasks|Hard LOCKUP|Fatal machine check|Fatal Machine check"
    r"|Attempted to kill the idle task|Aiee, killing interrupt handler|rcu_sched stall|RCU Stall)"
)
_NUMBERS = re.compile(r"(?<![\w.])(?:0x)?[0-9a-fA-F]*[0-9][0-9a-fA-F]*(?![\w])")
_HEX_RUN = re.compile(r"(?<![A-Za-z0-9])(?:0x)?[0-9a-fA-F]{6,}(?![A-Za-z0-9])")
_FUNC_OFFSET = re.compile(r"([A-Za-z_$][\w.$]*)\+0x[0-9a-f]+/0x[0-9a-f]+")
_FILE_LINE = re.compile(r"(\.\w{1,3}):\d+(?::\d+)?")


def normalize(text: str) -> str:
    """syzkaller-style normalisation: no addresses, offsets, numbers or file lines; printable, <= 120."""
    text = _FUNC_OFFSET.sub(r"\1", text)
    text = _FILE_LINE.sub(r"\1:LINE", text)
    text = _HEX_RUN.sub("ADDR", text)
    text = re.sub(r"CPU#\d+", "CPU", text)
    text = _NUMBERS.sub("NUM", text)
    text = "".join(c if " " <= c <= "~" else " " for c in text.replace("\t", " "))
    return " ".join(text.split())[:120]


def canonical_function(name: str) -> str:
    """A function name as every build spells it: no clone suffix, no syscall wrapper prefix."""
    name = name.removeprefix("__pfx_")
    while True:
        stripped = _CLONE_SUFFIX.sub("", name)
        if stripped == name:
            break
        name = stripped
    return _SYSCALL_PREFIX.sub("", name)


class Frame(tuple[str, str | None, bool]):
    """(function, module or None, reliable) as printed in a call trace, innermost first."""

    __slots__ = ()

    @property
    def function(self) -> str:
        return self[0]

    @property
    def module(self) -> str | None:
        return self[1]

    @property
    def reliable(self) -> bool:
        return self[2]


def parse_frame(line: str) -> Frame | None:
    """Parse one call-trace line (x86, arm64, ppc, old ``[<addr>]`` forms, symbolised inline frames)."""
    m = _FRAME.match(line)
    if m is not None:
        return Frame((m.group(2), m.group(3), m.group(1) is None))
    m = _INLINE_FRAME.match(line)
    if m is not None:
        return Frame((m.group(1), None, True))
    return None


def call_trace(lines: list[str] | tuple[str, ...], start: int = 0) -> tuple[list[Frame], int]:
    """The frames of the first call trace at or after ``start``, and the index after it."""
    i = start
    n = len(lines)
    while i < n and not _TRACE_START.match(lines[i]):
        i += 1
    if i == n:
        return [], n
    frames: list[Frame] = []
    i += 1
    misses = 0
    while i < n:
        line = lines[i]
        f = parse_frame(line)
        if f is not None:
            frames.append(f)
            misses = 0
        elif _TRACE_NOISE.match(line) or line.startswith((" ", "\t")):
            misses = 0 if frames else misses
        else:
            misses += 1
            # Register dumps of a user-mode frame sit inside x86 traces: tolerate a few.
            if misses > 12 or _TRACE_START.match(line):
                break
        i += 1
    return frames, i


def _first_guilty(frames: list[Frame]) -> str | None:
    for f in frames:
        if f.reliable:
            name = canonical_function(f.function)
            if not _SKIP.match(name):
                return name
    return None


@dataclass(frozen=True, slots=True)
class CrashInfo:
    """What the default parsers read out of one report."""

    kind: str
    #: the kind without the message of a "msg" kind ("kernel panic", not "kernel panic: <reason>"):
    #: few values, for the ``crash_kind`` tag
    category: str
    #: the guilty function, or None when the crash names none (panics with a message, MCE)
    frame: str | None
    title: str
    fingerprint: tuple[str, ...]
    level: str
    panicked: bool
    #: the crashing task's stack, innermost first, unreliable ("?") frames left out
    frames: tuple[Frame, ...]
    module: str | None
    tainted: str
    hardware: str | None
    comm: str | None
    release: str | None
    header: str
    corrupted: bool


def analyze(lines: list[str] | tuple[str, ...]) -> CrashInfo:
    """Read the crash out of a report's lines (no transport headers)."""
    kind_index = -1
    kind = ""
    source = "none"
    groups: tuple[str, ...] = ()
    category = ""
    for i, line in enumerate(lines):
        if _CONSEQUENCE_PANIC.match(line) and kind_index >= 0:
            break
        for rx, template, src in _KINDS:
            m = rx.search(line)
            if m is None:
                continue
            if src == "skip":
                break
            kind_index, kind, source, groups = i, template, src, tuple(g or "" for g in m.groups())
            break
        if kind_index >= 0:
            break
    panicked = any(x.startswith("Kernel panic - not syncing") for x in lines)
    if kind_index < 0:
        header = next((x for x in lines if x.strip()), "")
        kind = normalize(header) or "kernel crash"
        kind_index = 0
        source = "stack"
    header = lines[kind_index] if lines else ""
    lines_after = lines[kind_index:]
    frames, _ = call_trace(lines_after)
    reliable = [f for f in frames if f.reliable]
    module: str | None = None
    frame: str | None = None
    corrupted = False

    def pc_frame() -> str | None:
        for x in lines_after[:80]:
            m = _PC.match(x)
            if m:
                name = canonical_function(m.group(1))
                if not _SKIP.match(name):
                    return name
        return None

    if "{rw}" in kind:
        rw = "Write" if any("Write of size" in x for x in lines_after[:10]) else "Read"
        kind = kind.replace("{rw}", rw)
    if source in ("header0", "header1", "header2"):
        idx = int(source[-1])
        name = groups[idx] if len(groups) > idx else ""
        kind = kind.format(*groups)
        if source == "header0":
            frame = name or None
        else:
            cand = canonical_function(name)
            frame = cand if cand and not _SKIP.match(cand) else _first_guilty(frames)
    elif source == "warning":
        path = groups[0] if groups else ""
        for suffix, special in _SPECIAL_WARNING_FILES:
            if path.endswith(suffix):
                kind = special
                break
        cand = canonical_function(groups[1]) if len(groups) > 1 and groups[1] else ""
        if cand and not _SKIP.match(cand) and kind == "WARNING":
            frame = cand
        else:
            frame = pc_frame() or _first_guilty(frames)
    elif source == "pc":
        frame = pc_frame() or _first_guilty(frames)
    elif source == "stall":
        frame = _stall_frame(lines_after)
    elif source == "hang":
        frame = _hang_frame(frames)
    elif source == "panicmsg":
        m = re.search(r"(?:in|:) ([A-Za-z_][\w.]*)\+0x", header)
        frame = canonical_function(m.group(1)) if m else _first_guilty(frames)
    elif source == "msg":
        category = kind.partition(":")[0]
        kind = normalize(kind.format(*groups))
    elif source == "mce":
        reason = next((x for x in lines_after if x.startswith("Machine check: ")), "")
        if reason:
            kind = f"Machine Check Exception: {normalize(reason[15:])}"
    elif source == "stack":
        kind = kind.format(*groups) if groups else kind
        frame = _first_guilty(frames) or pc_frame()
    if frame is None and source not in ("msg", "mce", "none", "header0"):
        corrupted = True
    if frame is not None:
        for f in frames:
            if canonical_function(f.function) == frame:
                module = f.module
                break
        if module is None:
            for x in lines_after[:80]:
                m = _PC.match(x)
                if m and canonical_function(m.group(1)) == frame:
                    mm = re.search(r"\[(\w+)\]\s*$", x)
                    module = mm.group(1) if mm else None
                    break
    title = normalize(f"{kind} in {frame}" if frame else kind)
    tainted, hardware, comm, release = "", None, None, None
    for x in lines:
        if release is None:
            m = _CPU_LINE.match(x)
            if m:
                comm = (m.group("comm") or m.group("comm2") or "").strip() or None
                tainted = " ".join((m.group("taint") or "").split())
                release = m.group("release")
        if hardware is None:
            m = _HARDWARE.match(x)
            if m:
                hardware = m.group(1).strip()
        if release is not None and hardware is not None:
            break
    if panicked:
        level = "fatal"
    elif kind.startswith("WARNING") or kind in ("possible deadlock", "inconsistent lock state"):
        level = "warning"
    else:
        level = "error"
    fingerprint = ("linux-kernel", normalize(kind), frame or "-")
    if source == "mce":
        category = "Machine Check Exception"
    return CrashInfo(kind=normalize(kind), category=category or normalize(kind), frame=frame, title=title,
                     fingerprint=fingerprint, level=level,
                     panicked=panicked, frames=tuple(reliable), module=module, tainted=tainted,
                     hardware=hardware, comm=comm, release=release, header=header, corrupted=corrupted)


def _stall_frame(lines: list[str] | tuple[str, ...]) -> str | None:
    # Stalls are caught at a random point inside the looping code: the frame the
    # dispatch point called is steadier than the top frame. Skip the IRQ part.
    frames, _ = call_trace(lines)
    task: list[Frame] = []
    in_irq = False
    for x in lines:
        if "<IRQ>" in x:
            in_irq = True
        elif "</IRQ>" in x or "<EOI>" in x:
            in_irq = False
            task = []
        elif not in_irq:
            f = parse_frame(x)
            if f is not None and f.reliable:
                task.append(f)
    use = task or [f for f in frames if f.reliable]
    pc = None
    for x in lines[:80]:
        m = _PC.match(x)
        if m:
            pc = canonical_function(m.group(1))
            break
    names = [canonical_function(f.function) for f in use]
    for idx, name in enumerate(names):
        if _ANCHOR.match(use[idx].function) or _ANCHOR.match(name):
            for j in range(idx - 1, -1, -1):
                if not _SKIP.match(names[j]):
                    return names[j]
            break
    if pc and not _SKIP.match(pc):
        return pc
    return _first_guilty(use)


def _hang_frame(frames: list[Frame]) -> str | None:
    names = [canonical_function(f.function) for f in frames if f.reliable]
    for name in names:
        if "rtnl_lock" in name:
            return "rtnl_lock"
        if name.startswith(("synchronize_rcu", "synchronize_srcu", "synchronize_net", "synchronize_sched")):
            return "synchronize_rcu"
    for name in names:
        if not _HANG_SKIP.search(name) and not _SKIP.match(name):
            return name
    return None
