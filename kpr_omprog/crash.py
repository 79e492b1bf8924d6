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

_START = (
    r"(?<![A-Za-z])BUG: "
    r"|[Kk]ernel BUG at "
    r"|^BUG \S+ \(.*\): "  # SLUB: "BUG kmalloc-64 (Not tainted): Poison overwritten"
    r"|^WARNING: "
    r"|^\[ INFO: (?:possible|inconsistent)"  # old lockdep banners
    r"|^INFO: (?:possible|inconsistent|suspicious|trying to register non-static)"
    r"|^INFO: task \S.* blocked for more than"
    r"|INFO: rcu_\w+ (?:self-)?detected (?:expedited )?stall"
    r"|^(?:Oops|Internal error): "
    r"|^(?:Oops: )?general protection fault"
    r"|^Unable to handle kernel "
    r"|[Ww]atchdog detected hard LOCKUP"
    r"|^(?:UBSAN|KASAN|KFENCE|KMSAN|KCSAN): "
    r"|Machine Check Exception"
    r"|^-+\[ cut here \]-+"
    r"|^(?:divide error|invalid opcode|stack segment|double fault|PANIC: double fault"
    r"|alignment check|int3|bounds|coprocessor segment overrun|invalid TSS|segment not present"
    r"|iret exception|simd exception|fpu exception): "
    r"|^list_(?:add|del) corruption"
    r"|^usercopy: Kernel memory"
    r"|^NETDEV WATCHDOG: "
    r"|^irq \d+: nobody cared"
    r"|^(?:do_IRQ: stack overflow|kernel stack overflow)"
    r"|^Kernel panic - not syncing"
)
_END_NOW = r"^---\[ end Kernel panic|^Rebooting in \d+ seconds"
_END_GRACE = r"^---\[ end trace|^Kernel Offset: "

_ANY = re.compile(f"(?P<s>{_START})|(?P<n>{_END_NOW})|(?P<g>{_END_GRACE})")
_PANIC_PREFIX = "Kernel panic - not syncing"


def classify(text: str) -> int:
    """Return :data:`START`, :data:`PANIC`, :data:`END_NOW`, :data:`END_GRACE` or :data:`NONE`."""
    m = _ANY.search(text)
    if m is None:
        return NONE
    if m.group("s") is not None:
        return PANIC if text.startswith(_PANIC_PREFIX) else START
    return END_NOW if m.group("n") is not None else END_GRACE


def is_start(text: str) -> bool:
    """True when ``text`` opens a crash report."""
    return classify(text) in (START, PANIC)
