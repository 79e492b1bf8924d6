"""Stack frames as kernels print them, and the frames that are never to blame.

    >>> parse_frame(" [<ffffffff81234567>] ? ext4_find_entry+0x12/0x340 [ext4]")
    ('ext4_find_entry', 'ext4', False)
    >>> canonical_function("__x64_sys_ioctl")
    'sys_ioctl'
    >>> is_skipped("_raw_spin_lock_irqsave")
    True
"""

from __future__ import annotations

import re

__all__ = ["Frame", "arm_caller", "call_trace", "canonical_function", "is_skipped", "is_trace_start", "parse_frame",
           "pc_function", "pc_in_data", "strip_clone_suffix"]

# One frame of a call trace. The address columns are optional and tolerant: a line damaged
# in transit ("<ffffffff81234567>] func+0x..", a "[" lost) still names its function. s390
# wraps its first frame in parentheses; ppc64's ELFv1 names start with "." (".foo" is foo).
# An x86 frame may follow a stack marker on its line ("<EOI>  [<..>] f+0x.."), an archive
# may have stripped the address ("[] f+0x..") or a code page turned its brackets into other
# characters ("c<0000..>! f+0x.."), and 2.6.2x printed a module's symbol as ":mod:f+0x..".
_FRAME = re.compile(
    r"^\s*(?:<<?[A-Z]{2,7}>>?\s+)?\(?(?:\S?[<(][0-9a-fx]{6,}[>)]\S?\s*|\[?[0-9a-fx]{6,}\]\s*|\[\]\s*)*(\?\s+)?\(?"
    r"(?::(\w+):)?"
    r"\.?([A-Za-z_$][\w.$]*)\+0x([0-9a-f]+)/0x([0-9a-f]+)\)?(?:\s+\[(\w+)(?:\s+[0-9a-f]+)?\])?(\s+\(unreliable\))?"
)
# arm32: "[<c0100000>] (callee) from [<c0200000>] (caller+0x10/0x20)": the line is the callee's frame.
_ARM_FRAME = re.compile(
    r"^\s*\[<[0-9a-f]+>\] \(([A-Za-z_$][\w.$]*)(?:\+0x[0-9a-f]+/0x[0-9a-f]+)?(?: \[(\w+)\])?\) from ")
# ...and its caller, which is the only place a noreturn callee's caller shows.
_ARM_CALLER = re.compile(r"\) from \[<[0-9a-f]+>\] \(([A-Za-z_$][\w.$]*)\+0x")
_INLINE_FRAME = re.compile(r"^\s+([A-Za-z_$][\w.$]*) \S+\.[chS]:\d+(?::\d+)? \[inline\]")
# The faulting instruction's function: x86 RIP/IP/EIP ("EIP is at" on 32-bit), arm64 pc,
# arm "PC is at", ppc NIP, mips epc (its columns padded: "epc   : 8033a5c4 f+0x.."), s390
# "Krnl PSW : <mask> <addr> (f+0x..)". A line that lost its first column ("IP: 0010:f") too.
_PC = re.compile(
    r"^(?:R?IP: [0-9a-f]{4}:|IP:|EIP: [0-9a-f]{4}:|EIP:|EIP is at |pc : |PC is at |NIP:? *\[[0-9a-f]+\] "
    r"|epc\s*: [0-9a-f]+ |(?:Krnl )?PSW\s*: [0-9a-f]+ [0-9a-f]+ \()"
    r"\s*(?:\[?<[0-9a-f]+>\]\s*)*\.?([A-Za-z_$][\w.$]*)\+0x([0-9a-f]+)(?:/0x([0-9a-f]+))?"
)
# No function is this big: a larger "size" means the address is in data (executing a
# buffer: lkdtm EXEC_DATA gives data_area+0x0/0xffffffffffff76e0), not in the function named.
_MAX_FUNCTION_BYTES = 1 << 24
_CLONE_SUFFIX = re.compile(r"\.(?:isra|constprop|part|cold|llvm|lto_priv|localalias)(?:\.\d+)*$|\.cold$")
_SYSCALL_PREFIX = re.compile(
    r"^(?:__x64_|__ia32_|__arm64_|__se_|__do_|__riscv_|__s390x_|__s390_|compat_)+(?=sys_)|^(?:compat_)?(?:SyS_|SYSC_)"
    r"|^ksys_"
)
_TRACE_START = re.compile(r"^\s*(?:Call Trace|Call trace|Backtrace|backtrace|Stack)\s*:", re.IGNORECASE)
_TRACE_NOISE = re.compile(r"^\s*(?:<(?:/?(?:IRQ|NMI|TASK|SOFTIRQ)|EOI|<EOE>)>|--- |-+\[ end|\? 0x|\(stack is not)")

# Functions that report, lock, allocate, copy or dispatch, but never are the bug: such a
# frame is passed over when blaming. The list follows syzkaller's (pkg/report/linux.go,
# 2026) so that titles agree with syzbot's, but each entry is a name TOKEN: it matches at
# the start of a name or after "_", and ends the name or is followed by "_", "." or a digit
# ("memcpy" skips __memcpy, memcpy_orig, fortify_memcpy_chk; not a driver's
# mydrvmemcpyx). An entry ending in "_" is a prefix. Whole-name rules are in
# _SKIP_ANCHORED. A culprit is never skipped because part of its name looks like a helper.
_NEVER_GUILTY = (
    # sanitizers and reporting machinery
    "__sanitizer", "__asan", "kasan", "hwasan", "__msan", "msan", "kmsan", "kcsan", "kfence", "ubsan",
    "check_memory_region", "check_heap_object", "check_object", "read_word_at_a_time",
    "(?:read|write)_once_[a-z_]*nocheck", "print_address_description", "print_report", "v?panic",
    "invalid_op", "report_bug", "fixup_bug", "handle_bug", "do_error", "do_trap", "[a-z0-9]*_trap",
    "dump_stack", "show_stack", "show_regs", "show_trace", "walk_stack", "dump_backtrace", "warn_slowpath",
    "warn_alloc", "warn_bogus", "__warn", "warn_printk", "debug_objects?", "debug_print_object",
    "timer_is_static_object", "work_is_static_object", "v?printk", "va_format", "dev_info", "dev_notice",
    "dev_warn", "dev_err", "dev_alert", "dev_crit", "dev_emerg", "dev_printk", "program_check_exception",
    "program_check_common", "print_usage_bug", "print_unlock", "imbalance_bug", "nmi_cpu_backtrace",
    "nmi_trigger", "trigger_cpumask_backtrace", "trigger_all_cpu_backtrace", "__die",
    "oops_(?:enter|exit|begin|end)", "bad_stack",
    "page_fault_oops", "no_context", "bad_area", "__bad_area_nosemaphore", "do_user_addr_fault",
    "do_kern_addr_fault", "handle_page_fault", "kernelmode_fixup_or_oops", "exc_", "asm_exc_",
    "asm_sysvec_", "sysvec_", "fixup_exception", "should_fail(?:slab|_alloc|_ex|_usercopy)?", "fail_dump",
    "print_tainted", "assertfail", "__fortify_report", "fortify_panic", "__fortify_panic",
    # allocators and the page cache
    "alloc_pages?", "alloc_frozen_pages", "alloc_pages_noprof", "k?v?[mzc]alloc", "krealloc", "kmem_cache",
    "allocate_slab", "folio_(?:alloc|unlock)", "filemap_alloc_folio", "__filemap_get_folio",
    "find_or_create_page", "do_read_cache_folio", "read_cache_page", "pagecache_get_page",
    "grab_cache_page_write_begin", "slab_", "memdup", "strdup", "strndup",
    # locking
    "lockdep", "perf_trace", "lock_acquire", "lock_release", "h?lock_class", "mark_lock",
    "(?:reacquire|mark)_held_locks", "held_locks", "raw_spin_rq", "spin_lock", "spin_trylock",
    "spin_unlock", "raw_read_lock", "raw_read_trylock", "raw_write_lock", "raw_write_trylock", "read_lock",
    "read_trylock", "write_lock", "write_trylock", "read_unlock", "write_unlock", "queued_spin",
    "queued_read", "queued_write", "down_read", "down_write", "down_trylock", "up_read", "up_write",
    "owner_on_cpu", "osq_lock", "osq_unlock", "rwsem_", "__wake_up", "might_fault", "might_sleep",
    "might_resched", "bh_enable", "bh_disable", "local_bh_enable", "(?:trace|lockdep)_(?:hard|soft)irqs?",
    # refcounts, atomics, bit ops
    "refcount_add", "refcount_sub", "refcount_inc", "refcount_dec", "refcount_set", "refcount_read",
    "refcount_warn", "kref_put", "kref_get", "ref_tracker", "seqprop_assert",
    "atomic(?:64)?_(?:dec|inc|read|set|or|xor|and|add|sub|fetch|xchg|cmpxchg|try)[a-z_]*",
    # string and copy helpers
    "memcpy", "memcmp", "memset", "memchr", "memmove", "memscan", "strcmp", "strncmp", "strcpy", "strlcpy",
    "strncpy", "strscpy", "strlen", "strstr", "strnstr", "strnlen", "strchr", "copy_to_user",
    "copy_from_user", "copy_to_iter", "copy_from_iter", "copy_page_to_iter", "copy_page_from_iter",
    "copy_folio_to_iter", "put_user", "get_user", "string", "pointer", "v?snprintf", "v?scnprintf",
    "kv?asprintf", "indirect_thunk", "check_object_size", "usercopy_abort", "hex_dump", "hex_dump_to_buffer",
    "print_hex_dump", "extract_(?:user|iter)_to_sg",
    # lists and trees
    "__?dev_get_by_(?:index|name)",
    "list_add", "list_del", "list_replace", "list_move", "list_splice", "list_debug", "rhashtable",
    "rhashtable_lookup", "xas_(?:start|load|find)",
    # workqueues, timers, completions
    "del_timer", "flush_work", "__cancel_work", "cancel_work_sync", "cancel_delayed_work_sync",
    "try_to_grab_pending", "flush_workqueue", "drain_workqueue", "destroy_workqueue", "queue_work",
    "__queue_work", "queue_work_on", "insert_work", "__queue_delayed_work", "queue_delayed_work_on",
    "finish_wait", "kthread_stop", "wait_for_completion", "lock_timer_base", "__timer_delete_sync",
    "timer_delete_sync", "sk_stop_timer_sync", "mod_timer", "cleanup_srcu_struct",
    # kobjects, devices, teardown
    "kobject_", "add_uevent_var", "get_device_parent", "device_add", "device_del", "device_unregister",
    "device_destroy", "device_release", "devres_release_all", "hwrng_unregister", "i2c_del_adapter",
    "__unregister_client", "device_for_each_child", "rollback_registered", "unregister_netdev(?:ice)?",
    "sysfs_remove", "device_remove_file", "tty_unregister_device", "dummy_urb_enqueue", "usb_kill_urb",
    "usb_kill_anchored_urbs", "usb_control_msg", "usb_hcd_submit_urb", "usb_submit_urb", "kfree_skb",
    "ida_free", "cache_from_obj", "find_lock_entries", "truncate_inode_pages_range", "drop_nlink", "fast_dput",
    "logic_in[bwlq]?", "logic_out[bwlq]?", "crc_itu_t",
    # stack and scheduler plumbing printed around every report
    "__stack_chk_fail", "stackleak_", "__schedule_bug", "check_preemption_disabled",
    "debug_smp_processor_id", "__this_cpu_preempt_check", "debug_check_no_", "__pfx_", "stack_trace",
    "stack_trace_save", "stack_trace_consume_entry", "arch_stack_walk", "stack_walk", "walk_stackframe",
    "read_once_word", "__phys_addr", "__virt_to_phys", "arch_local_irq_",
    # busy-wait helpers a lockup is often caught in
    "delay_tsc", "delay_loop", "__delay", "__const_udelay", "__udelay", "__ndelay", "udelay", "ndelay", "mdelay",
)
_SKIP_ANCHORED = (
    r"^complete$", r"^kv?free$", r"^down$", r"^up$", r"^mutex_", r"^__mutex_", r"^rt_mutex_(?!debug)", r"^_raw_",
    r"^do_raw_", r"^__raw_", r"^dput$", r"^iput$", r"^iput_final$", r"^ihold$", r"^put_device$",
    r"^deactivate_super$", r"^kill_super$", r"^klist_", r"^(?:un)?lock_page", r"^get_taint$", r"^copyin$",
    r"^copyout$", r"^(?:__)?(?:set|clear|change|test)_bit$", r"^(?:arch_)?atomic", r"^__atomic", r"^die$",
    r"^(?:__)?bug$", r"^do_BUG", r"^__BUG", r"^BUG_", r"^(?:nmi_)?panic$", r"^vpanic$", r"^schedule$",
    r"^__schedule$", r"^read[bwlq]$", r"^write[bwlq]$", r"^(?:__)?crc\d+", r"^el1_abort$", r"^el1h_64_sync",
    r"^do_mem_abort$", r"^do_(?:kernel|translation)_fault$", r"^__do_kernel_fault$", r"^do_bad_area$",
    r"^do_page_fault$", r"^__do_page_fault$", r"^page_fault$", r"^async_page_fault$", r"^_?atomic",
    r"^(?:__)?(?:test_and_)?(?:set|clear|change)_bit", r"^crc_", r"^xas_", r"^__?kmem_cache", r"^kmem_cache",
    r"^__?kmalloc", r"^kzalloc", r"^kvmalloc", r"^kcalloc", r"^slab_alloc", r"^__slab_alloc",
    r"^do_tag_check_fault", r"^rb_", r"^__rb_", r"^unwind_", r"^dump_backtrace",
)
_SKIP = re.compile(
    "(?:^|(?<=_))(?:" + "|".join(t for t in _NEVER_GUILTY if not t.endswith("_")) + r")(?=$|[_.\d])"
    "|(?:^|(?<=_))(?:" + "|".join(t for t in _NEVER_GUILTY if t.endswith("_")) + ")"
    "|" + "|".join(_SKIP_ANCHORED)
)


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


def parse_frame(line: str, inline: bool = True) -> Frame | None:
    """Parse one call-trace line (x86, arm64, ppc, old ``[<addr>]`` forms; symbolised inline
    frames unless ``inline`` is False). ``?`` frames come back with ``reliable`` False."""
    m = _FRAME.match(line)
    if m is not None:
        offset, size = m.group(4), m.group(5)
        if int(offset, 16) > int(size, 16) or int(size, 16) > _MAX_FUNCTION_BYTES:
            return None  # an address past the symbol's end is data the CPU ran, not a function
        # ppc64 marks the frame it guessed from the link register "(unreliable)"
        return Frame((m.group(3), m.group(6) or m.group(2), m.group(1) is None and m.group(7) is None))
    m = _ARM_FRAME.match(line)
    if m is not None:
        return Frame((m.group(1), m.group(2), True))
    if inline:
        m = _INLINE_FRAME.match(line)
        if m is not None:
            return Frame((m.group(1), None, True))
    return None


def arm_caller(line: str) -> str | None:
    """The caller in an arm32 frame line (``(callee) from [<..>] (caller+0x..)``)."""
    m = _ARM_CALLER.search(line)
    return m.group(1) if m is not None else None


def pc_function(line: str) -> str | None:
    """The function of a faulting-instruction line (``RIP: 0010:f+0x..``, ``pc : f+0x..``, ...)."""
    m = _PC.match(line)
    if m is None or _past_symbol(m):
        return None  # past the symbol's end: the CPU ran data (a jump into a buffer)
    return m.group(1)


def _past_symbol(m: re.Match[str]) -> bool:
    size = m.group(3)
    return size is not None and (int(size, 16) > _MAX_FUNCTION_BYTES or int(m.group(2), 16) >= int(size, 16))


def pc_in_data(line: str) -> bool:
    """A fault line whose address lies past its symbol's end: the CPU was running data."""
    m = _PC.match(line)
    return m is not None and _past_symbol(m)


def is_trace_start(line: str) -> bool:
    """A ``Call Trace:`` / ``backtrace:`` line."""
    return _TRACE_START.match(line) is not None


def canonical_function(name: str) -> str:
    """A function name as every build spells it: no clone suffix, no syscall wrapper prefix."""
    return _SYSCALL_PREFIX.sub("", strip_clone_suffix(name))


def strip_clone_suffix(name: str) -> str:
    """The symbol without a compiler clone's suffix (``.isra.0``, ``.cold``) or ``__pfx_``."""
    name = name.removeprefix("__pfx_")
    while True:
        stripped = _CLONE_SUFFIX.sub("", name)
        if stripped == name:
            return name
        name = stripped


# name -> skipped: the list is one large pattern (16 us a search on a slow core) and a
# kernel's reports name the same few thousand functions again and again.
_SKIPPED: dict[str, bool] = {}
_SKIPPED_MAX = 16384


def is_skipped(name: str, extra: re.Pattern[str] | None = None) -> bool:
    """True for a function that reports, locks, allocates or copies but is never the bug."""
    skipped = _SKIPPED.get(name)
    if skipped is None:
        if len(_SKIPPED) >= _SKIPPED_MAX:
            _SKIPPED.clear()  # bounded whatever names a hostile report carries
        skipped = _SKIPPED[name] = _SKIP.search(name) is not None
    return skipped or (extra is not None and extra.search(name) is not None)


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
