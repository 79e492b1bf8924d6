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

from .frames import Frame, call_trace, canonical_function, is_trace_start, parse_frame, pc_function
from .titles import blame, has_header, without_cpu_column

__all__ = ["END_GRACE", "END_NOW", "NONE", "PANIC", "START", "CrashInfo", "Frame", "analyze", "call_trace",
           "canonical_function", "classify", "is_crash", "is_lead_in", "is_new_detection", "is_start", "normalize",
           "parse_frame"]

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
    r"|INFO: rcu_\w+ (?:self-)?detected (?:expedited )?stall|INFO: RCU detected CPU \d+ stall"
    r"|[Ww]atchdog detected hard LOCKUP"
    r"|Machine Check Exception"
)
_ANYWHERE_LITERALS = ("BUG", "INFO: rcu", "INFO: RCU", "LOCKUP", "Machine Check")
# Markers that start a line: tried at position 0 only, which costs a fraction of a search.
# Lines a fault handler or checker prints just before the header (arch/x86/mm/fault.c,
# lib/string_helpers.c): the report begins with them, not after them.
_LEAD_IN = (r"kernel tried to execute (?:NX|exec)-protected page|unable to execute userspace code \(SMEP\?\)"
            r"|Kernel attempted to (?:read|write|access|execute) user page"  # powerpc
            r"|(?:\w+: )?detected buffer overflow|Eeek! page_mapcount\(page\) went negative")
_LEAD_IN_RE = re.compile(_LEAD_IN)
_START_OF_LINE = (
    r"BUG \S+ \(.*\): "  # SLUB: "BUG kmalloc-64 (Not tainted): Poison overwritten"
    r"|BUG [\w.:-]+: [A-Z]"  # 2.6-4.x SLUB: "BUG kmalloc-192: Objects remaining on kmem_cache_close()"
    # A kernel WARNING names where it fired (CPU/at/file:line) or is a lockdep/RCU splat; other
    # "WARNING: " lines are messages (fbcon notices, a loader's complaint on the console).
    r"|WARNING: (?:CPU: \d|at \S|\S+:\d+ at |\[.*\] \S+:\d+ at |possible |inconsistent |suspicious "
    r"|bad unlock|held lock|[Nn]ested lock|lock held|kernel stack|\S+-safe -> |.* still has locks held|ODEBUG|refcount)"
    # 2.6-4.x lockdep/RCU banners: "[ INFO: inconsistent lock state ]", also with the "[" lost
    r"|\[? ?(?:INFO|BUG|WARNING): [^\[\]]*\]\s*$"
    r"|INFO: (?:possible|inconsistent|suspicious|trying to register non-static)"
    r"|INFO: task \S.* (?:blocked|can't die) (?:in I/O wait )?for more than"
    # "Oops: 0002 [#1] SMP", ppc "Oops: Kernel access of bad area, sig: 11 [#1]", mips "Oops[#1]:";
    # not a message that merely begins "Oops: " ("Oops: efitime: can't read time!")
    r"|Oops(?:\[#\d+\]:(?: |$)|: (?:[0-9a-f]{4}\b|.*\[#\d+\]))|Internal error: "
    r"|(?:Kernel bug detected|Reserved instruction in kernel code|Unhandled kernel unaligned access"
    r"|Instruction bus error|Data bus error|Floating point exception in kernel code)\[#\d+\]:"
    r"|(?:Oops: )?general protection fault"
    r"|(?:CPU \d+ )?Unable to handle kernel "  # mips: "CPU 0 Unable to handle kernel paging request"
    r"|(?:UBSAN|KASAN|KFENCE|KMSAN|KCSAN): "
    r"|-+\[ cut here \]-+"
    r"|PANIC: double fault"
    r"|(?:divide error|divide_error|invalid opcode|stack segment|double fault"
    r"|alignment check|int3|bounds|coprocessor segment overrun|invalid TSS|segment not present"
    r"|iret exception|simd exception|fpu exception): "
    r"|list_(?:add|del) corruption"
    r"|usercopy: Kernel memory"
    r"|NETDEV WATCHDOG: "
    r"|irq \d+: nobody cared"
    r"|(?:do_IRQ: stack overflow|[Kk]ernel stack overflow)"
    r"|Unhandled fault: |Unhandled exception: IPSR"
    r"|Kernel panic - not syncing"
    # Bugs reported in one line, with no stack (syzkaller counts them too)
    r"|unregister_netdevice: waiting for \S+ to become free|VFS: Close: file count is 0"
    r"|VFS: Busy inodes after unmount|rust_kernel: panicked at |pagealloc: memory corruption"
    r"|" + _LEAD_IN
)
_END_NOW = r"---\[ end Kernel panic|Rebooting in \d+ seconds"
_END_GRACE = r"---\[ end trace|Kernel Offset: "

_AT_START = re.compile(f"(?P<s>{_START_OF_LINE})|(?P<n>{_END_NOW})|(?P<g>{_END_GRACE})")
_PANIC_PREFIX = "Kernel panic - not syncing"
_CUT_HERE = re.compile(r"-+\[ cut here \]-+")


def classify(text: str) -> int:
    """Return :data:`START`, :data:`PANIC`, :data:`END_NOW`, :data:`END_GRACE` or :data:`NONE`."""
    if text[3:5] == ": " and text[:3].isdigit():
        text = text[5:]  # PREEMPT_RT's console CPU column: "000: WARNING: CPU: 0 PID: 0 at ..."
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


def is_crash(lines: list[str] | tuple[str, ...]) -> bool:
    """False for a report that only a separator opened (a lone ``[ cut here ]`` followed by
    ordinary lines): no header, end marker or call trace came after it, so it is no crash.

        >>> is_crash(["------------[ cut here ]------------", "e1000: eth0 NIC Link is Up"])
        False
    """
    for text in lines:
        if classify(text) != NONE and not _CUT_HERE.match(text):
            return True
        if is_trace_start(text) or parse_frame(text, inline=False) is not None:
            return True
    return has_header(lines)


_SOFT_LOCKUP = re.compile(r"(?:^|: )BUG: soft lockup - CPU#\d+ stuck")
# Panics that are a crash of their own, not the consequence of the one before them
_PANIC_IS_CRASH = re.compile(r"^Kernel panic - not syncing: Watchdog detected hard LOCKUP")


def is_new_detection(text: str, start_line: str, ended: bool) -> bool:
    """A start line that begins a report of its own although one is open: a second soft
    lockup (each detection prints a whole report and no end marker), or, after the open
    report's end marker, a panic that is a crash of its own (a hard lockup on another CPU).

        >>> is_new_detection("BUG: soft lockup - CPU#1 stuck for 61s! [kbd:3360]",
        ...                  "BUG: soft lockup - CPU#0 stuck for 61s! [kbd:3360]", False)
        True
    """
    if _SOFT_LOCKUP.search(text) is not None:
        return _SOFT_LOCKUP.search(start_line) is not None
    return ended and _PANIC_IS_CRASH.match(text) is not None


def is_lead_in(text: str) -> bool:
    """A line that opens a report but is not its header: the header follows."""
    return _LEAD_IN_RE.match(text) is not None


def is_start(text: str) -> bool:
    """True when ``text`` opens a crash report."""
    return classify(text) in (START, PANIC)


# ---------------------------------------------------------------------------------------
# Titles, fingerprints and frames
# ---------------------------------------------------------------------------------------

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
    #: where ``header`` is in the report's lines
    header_index: int = 0


_CPU_LINE = re.compile(
    r"^(?:CPU: \d+ (?:UID: \d+ )?PID: \d+ Comm: (?P<comm>.+?)|Pid: \d+, comm: (?P<comm2>.+?))"
    r" +(?:Not tainted|Tainted: (?P<taint>[A-Z ]+?)) +(?P<release>\S+) #"
)
_HARDWARE = re.compile(r"^Hardware name: (.+?)(?:, BIOS .*)?$")
_MODULE_SUFFIX = re.compile(r"\[(\w+)\]\s*$")
_WARNING_LEVEL = ("WARNING", "possible deadlock", "inconsistent lock state", "INFO: suspicious RCU usage",
                  "unregister_netdevice")


def analyze(lines: list[str] | tuple[str, ...]) -> CrashInfo:
    """Read the crash out of a report's lines (no transport headers).

        >>> info = analyze(["kernel BUG at drivers/misc/lkdtm/bugs.c:76!",
        ...                 "RIP: 0010:lkdtm_BUG+0x5/0x10 [lkdtm]", "Kernel panic - not syncing: Fatal exception"])
        >>> info.title, info.level, info.module
        ('kernel BUG in lkdtm_BUG', 'fatal', 'lkdtm')
    """
    lines = list(without_cpu_column(lines))
    b = blame(lines)
    kind = normalize(b.kind) or "kernel crash"
    header = lines[b.header_index] if lines else ""
    after = lines[b.header_index:]
    if kind == "Machine Check Exception":
        reason = next((x for x in after if x.startswith("Machine check: ")), "")
        if reason:
            kind = normalize(f"{kind}: {reason[15:]}")
    frames, _ = call_trace(after)
    module: str | None = None
    if b.frame is not None:
        module = next((f.module for f in frames if canonical_function(f.function) == b.frame), None)
        if module is None:
            for x in after[:80]:
                f = pc_function(x)
                if f is not None and canonical_function(f) == b.frame:
                    m = _MODULE_SUFFIX.search(x)
                    module = m.group(1) if m else None
                    break
    title = normalize(f"{kind} in {b.frame}" if b.frame else kind)
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
    panicked = any(x.startswith("Kernel panic - not syncing") for x in lines)
    if panicked:
        level = "fatal"
    elif kind.startswith(_WARNING_LEVEL):
        level = "warning"
    else:
        level = "error"
    category = "Machine Check Exception" if kind.startswith("Machine Check") else normalize(b.category)
    return CrashInfo(kind=kind, category=category or kind, frame=b.frame, title=title,
                     fingerprint=("linux-kernel", kind, b.frame or "-"), level=level, panicked=panicked,
                     frames=tuple(f for f in frames if f.reliable), module=module, tainted=tainted,
                     hardware=hardware, comm=comm, release=release, header=header,
                     corrupted=b.corrupted, header_index=b.header_index)
