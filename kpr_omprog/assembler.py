"""Grouping kernel log lines per host into crash reports (sans-IO).

The assembler is a pure state machine in the style of h11: bytes and time go
in, finished :class:`Report` objects come out. It opens no socket, starts no
thread and never reads the clock, so the same input always gives the same
output, and the omprog, UDP and replay front ends are thin adapters around it::

    from kpr_omprog import Assembler, AssemblerConfig

    asm = Assembler(AssemblerConfig(idle_timeout=2.0))
    for payload, (ip, port), at in datagrams:       # from anywhere
        for report in asm.feed(payload, (ip, port), at):
            print(report.host, report.start_line)
    for report in asm.expire(now) + asm.close_all():  # idle reports, then the rest
        ...

A report opens at a crash start line (``BUG:``, ``WARNING:``, ``Kernel panic``,
...; see :mod:`kpr_omprog.crash`) and takes with it the host's most recent
lines as context. It closes on an end marker, an idle timeout, a maximum age,
lines or bytes, a reboot of the host, or eviction of the host; an oops followed
at once by the panic it caused stays one report.
"""

from __future__ import annotations

import hashlib
import heapq
import mmap
import re
from array import array
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Literal

from . import crash
from .coverage import SPECIAL_PREFIX, HostRecord, special
from .netconsole import _CLASSIC_PREFIX, DecoderLimits, DecodeStats, HostDecoder, Line, one_classic_line

__all__ = ["Assembler", "AssemblerConfig", "AssemblerStats", "HostRecord", "Report"]

GroupBy = Literal["ip", "ip-port"]

_RELEASE_RES = (
    # 3.x+ "CPU: 0 PID: 1 Comm: sh Not tainted 6.1.0-56-amd64 #1 Debian ..."
    re.compile(r"(?:Not tainted|Tainted: [A-Z ]+?)\s+(\S+) #"),
    # 2.6.32 "Pid: 1, comm: bash Not tainted 2.6.32-754.el6.x86_64 #1 ..."
    re.compile(r"^Linux version (\S+)"),
)


# What may follow a crash's end marker and still be the crash: indented stack lines,
# register dumps (RIP:, CR2:, pc :, x29:), and the panic's own lines.
_AFTERMATH = re.compile(
    r"\s|<|(?:R[A-Z0-9]{1,3}|E[A-Z]{2}|[CDEFGS]S|CR\d|DR\d|PKRU) *:|(?:x\d{1,2}|r\d{1,2}|pc|lr|sp|fp|psr) *: "
    r"|Code: |Call [Tt]race|Modules linked in|CPU: |Hardware name"
    r"|Kernel Offset|note: |Fixing recursive fault|Dumping ftrace|Stack:|Backtrace|Exception stack|irq event stamp"
    r"|hardirqs |softirqs |SMP: stopping|Shutting down cpus|Sending NMI|NMI backtrace|Rebooting|---|\(ftrace buffer"
    r"|Disabling lock debugging|Uhhuh|Fixing|Process |Task |pgd |\*pgd|Internal error|Unable to handle"
    # SLUB's diagnostics after a slab WARNING (print_tracking, print_trailer)
    r"|Allocated in |Freed in |Slab 0x|Object 0x|Redzone |Padding |FIX |INFO: "
    # arm64's panic tail after "Kernel Offset:"
    r"|PHYS_OFFSET: |CPU features: |Memory Limit: "
)
# A separator printed right before a header ("=====" before SLUB's "BUG <cache>: ...",
# lockdep's banners) opens the report with it.
_classify = crash.classify
_NONE = crash.NONE
_OPENS = (crash.START, crash.PANIC)
_SEPARATOR = re.compile(r"^[=-]{20,}$")
_PID = re.compile(r"CPU: \d+ (?:UID: \d+ )?PID: (\d+) ")

#: a context line (kept per idle host) is cut to this many bytes: the kernel prints at most
#: 1024 characters a line, and 100,000 idle hosts x 10 lines must stay small whatever is sent
CONTEXT_LINE_CHARS = 1024
# Lines that are not noise for the fast path: a boot banner (a reboot, a release) and ours
_NOT_NOISE = ("Linux version ", SPECIAL_PREFIX)
#: crash-start lines remembered per host that reported a crash (see _Host.crash_marks):
#: a replayed buffer repeats every crash of the boot, so a few reports' worth
CRASH_MARKS = 32


def _crash_mark(ts: float, text: str) -> int:
    """A crash line's mark: its kernel time and text, hashed the same in every process (the
    marks outlive a restart in the hosts table; ``hash()`` of a str is salted per process)."""
    digest = hashlib.blake2b(f"{ts!r}\0{text}".encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)
#: lines of an open report that _line looks at beyond their kind (the release, a client's
#: special line, the task a ``CPU:`` line names): never taken by the open report's fast path
_IN_REPORT_SPECIAL = (*_NOT_NOISE, "CPU: ")
_INF = float("inf")
#: slots of the table of hosts forgotten while heard only once (4 bytes each, 8 MiB of
#: anonymous memory, touched only as hosts are forgotten): a host heard again while its
#: slot still names it is admitted at once (see Assembler._host). 2^21 slots keep 95 % of
#: the names while 100,000 others are forgotten after them (a fleet of that size starting)
GHOST_SLOTS = 1 << 21


@dataclass(frozen=True, slots=True)
class AssemblerConfig:
    """Every bound of the assembler, with its default."""

    group_by: GroupBy = "ip"
    #: close a report when its host has been silent this long (seconds)
    idle_timeout: float = 2.0
    #: lines that may follow ``---[ end trace`` / ``Kernel Offset:`` (seconds)
    end_grace: float = 0.25
    #: ...after an end marker and an empty line: powerpc's oops_end prints one, then waits a
    #: second before its panic ("Fatal exception"), which belongs to the same report
    slow_panic_grace: float = 1.5
    #: a crash that starts right after another's end marker, this close in kernel time
    #: (seconds), with no line between them, is the same incident: a 6.x fortify overflow
    #: prints a whole WARNING and then the BUG and panic it leads to. It is split again if
    #: its own ``CPU: .. PID:`` line names another task
    same_incident_gap: float = 0.01
    #: close a report this long after its first line, whatever follows (seconds)
    max_age: float = 120.0
    #: close a report at this many lines
    max_lines: int = 5000
    #: close a report at this many bytes of text
    max_bytes: int = 1 << 20
    #: lines kept per host before a crash starts; the last few become context
    context_lines: int = 10
    #: hosts heard more than once tracked at once (about 1.2 KB each when idle, see the
    #: README); beyond this the least recently heard host *without* an open report is
    #: forgotten (a flood of spoofed sources cannot cut a real report)
    max_hosts: int = 120000
    #: hosts heard only once, tracked apart: a flood of one-datagram sources (spoofed)
    #: churns these, never the hosts above. Beyond it the least recently heard is forgotten
    new_hosts: int = 10000
    #: a host heard again is queued for the store's hosts table at most once this often
    #: (seconds; any other change at once): its last-heard time there is this coarse, and
    #: 100,000 hosts cost 100,000 rows per interval, whatever they send
    heard_resolution: float = 300.0
    #: bytes all hosts' context rings may hold together (a realistic line is ~70 bytes, so
    #: 100,000 hosts x 10 lines fit in ~75 MB; a line may take up to 1 KiB): beyond it the
    #: least recently heard idle host is forgotten, hosts heard once first
    context_bytes_budget: int = 128 << 20
    #: reports being collected at once; beyond this the oldest is closed whole (flag "evicted")
    max_open_reports: int = 5000
    #: bytes of text all open reports may hold together; beyond it the largest is closed
    #: (flag "truncated"). The process holds about 2.2 bytes per byte of open text
    #: (tests/benchmarks/bench_hostile.py), so 32 MiB keeps it near 100 MB
    open_bytes_budget: int = 32 << 20
    #: a datagram longer than this is cut to it (the kernel sends at most 1000 bytes a
    #: datagram, MAX_PRINT_CHUNK in drivers/net/netconsole.c), so any datagram costs
    #: a bounded amount of work
    max_datagram_bytes: int = 4096
    decoder: DecoderLimits = field(default_factory=DecoderLimits)

    def __post_init__(self) -> None:
        if self.group_by not in ("ip", "ip-port"):
            raise ValueError(f"group_by must be 'ip' or 'ip-port', not {self.group_by!r}")
        if self.same_incident_gap < 0:
            raise ValueError("same_incident_gap must be >= 0")
        for name in ("idle_timeout", "end_grace", "max_age", "heard_resolution"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("max_lines", "max_bytes", "max_hosts", "new_hosts", "context_bytes_budget", "max_open_reports",
                     "open_bytes_budget",
                     "max_datagram_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.context_lines < 0:
            raise ValueError("context_lines must be >= 0")


@dataclass(frozen=True, slots=True)
class Report:
    """One crash report from one host, as it closed."""

    host: str
    port: int
    first_seen: float
    last_seen: float
    lines: tuple[str, ...]
    #: the kernel's own timestamp of each line (seconds since boot), when it had one
    timestamps: tuple[float | None, ...]
    #: the host's lines just before the start line (``sysrq: Trigger a crash``, ...)
    context: tuple[str, ...]
    start_line: str
    #: why it closed: end_marker, idle, max_age, max_lines, max_bytes, reboot, evicted,
    #: max_open_reports, open_bytes_budget, end_of_input
    closed_by: str
    #: truncated, seq_gaps, lines_lost, fragments_lost, reboot_seen, undecodable, evicted
    flags: tuple[str, ...]
    kernel_release: str | None = None
    seq_gaps: int = 0
    #: messages the sender sent that never arrived (its ``msgid`` sysdata skipped them)
    lost_lines: int = 0
    #: the sender's netconsole userdata (`` key=value``): how the host labels itself
    userdata: tuple[tuple[str, str], ...] = ()

    @property
    def text(self) -> str:
        """The whole report, one line per kernel line, headers stripped."""
        return "\n".join(self.lines)

    def render_log(self) -> str:
        """The report as the kernel printed it: context, then lines, with timestamps."""
        out = [f"[{ts:12.6f}] {text}" if ts is not None else text
               for text, ts in zip(self.lines, self.timestamps, strict=True)]
        return "\n".join((*self.context, *out)) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "start_line": self.start_line,
            "closed_by": self.closed_by,
            "flags": list(self.flags),
            "kernel_release": self.kernel_release,
            "seq_gaps": self.seq_gaps,
            "lost_lines": self.lost_lines,
            "userdata": dict(self.userdata),
            "lines": len(self.lines),
            "context": list(self.context),
            "timestamps": list(self.timestamps),
            "text": self.text,
        }


@dataclass(slots=True)
class AssemblerStats:
    """What the assembler saw; every bound that bites is counted here."""

    reports: int = 0
    hosts: int = 0
    #: hosts forgotten at max_hosts
    hosts_evicted: int = 0
    #: hosts heard only once forgotten at new_hosts (a flood of new sources, or a fleet starting)
    new_hosts_forgotten: int = 0
    #: hosts admitted to the max_hosts table (heard a second time)
    hosts_admitted: int = 0
    #: test and heartbeat lines received (see :mod:`kpr_omprog.coverage`)
    test_lines: int = 0
    heartbeat_lines: int = 0
    #: idle hosts forgotten because the context rings held context_bytes_budget
    hosts_forgotten_for_bytes: int = 0
    #: changed hosts not queued for the store because the queue was full (written at their next line)
    host_updates_deferred: int = 0
    reports_evicted: int = 0
    reports_truncated: int = 0
    #: datagrams longer than max_datagram_bytes, cut
    datagrams_cut: int = 0
    #: reports closed because max_open_reports or open_bytes_budget was reached
    open_reports_limited: int = 0
    open_bytes_limited: int = 0
    #: crash starts in a datagram that had already opened a report (one report a datagram)
    starts_ignored: int = 0
    #: crashes joined to the report whose end marker they followed at once (same incident)
    incidents_joined: int = 0
    #: ...and split off again because they came from another task
    incidents_split: int = 0
    #: reports that only a "[ cut here ]" line opened, with no crash after it: kept as context
    lone_separators: int = 0
    #: crash starts seen again at the kernel time and text of a crash this host already
    #: reported (netconsole sending the log buffer again): kept as context, not a report
    crash_replays: int = 0
    decode: DecodeStats = field(default_factory=DecodeStats)

    def as_dict(self) -> dict[str, Any]:
        return {"reports": self.reports, "hosts": self.hosts, "hosts_evicted": self.hosts_evicted,
                "new_hosts_forgotten": self.new_hosts_forgotten, "hosts_admitted": self.hosts_admitted,
                "test_lines": self.test_lines, "heartbeat_lines": self.heartbeat_lines,
                "host_updates_deferred": self.host_updates_deferred,
                "hosts_forgotten_for_bytes": self.hosts_forgotten_for_bytes,
                "reports_evicted": self.reports_evicted, "reports_truncated": self.reports_truncated,
                "datagrams_cut": self.datagrams_cut, "open_reports_limited": self.open_reports_limited,
                "open_bytes_limited": self.open_bytes_limited, "incidents_joined": self.incidents_joined,
                "starts_ignored": self.starts_ignored, "crash_replays": self.crash_replays,
                "incidents_split": self.incidents_split, **self.decode.as_dict()}


class _Open:
    """A report being collected."""

    __slots__ = (
        "context",
        "end_ts",
        "ended_at",
        "first_seen",
        "flags",
        "grace_until",
        "joined_at",
        "joined_pending",
        "last_seen",
        "lines",
        "lines_after_end",
        "lost",
        "nbytes",
        "pid",
        "release",
        "seq_gaps",
        "serial",
        "start_line",
        "timestamps",
        "userdata",
    )

    def __init__(self, serial: int, first: Line, context: tuple[str, ...], release: str | None) -> None:
        self.serial = serial
        self.first_seen = first.at
        self.last_seen = first.at
        self.lines: list[str] = []
        self.timestamps: list[float | None] = []
        self.context = context
        self.start_line = first.text
        self.flags: set[str] = set()
        self.nbytes = 0
        self.grace_until: float | None = None
        self.ended_at: float | None = None
        self.release = release
        self.seq_gaps = 0
        self.lost = 0
        self.userdata: tuple[tuple[str, str], ...] | None = None
        #: kernel time of the end marker, and lines since it
        self.end_ts: float | None = None
        self.lines_after_end = 0
        #: the first task named by a ``CPU: .. PID:`` line, and where a joined incident begins
        self.pid: str | None = None
        self.joined_at: int | None = None
        #: the joined crash's own header has not been seen yet
        self.joined_pending = False

    def split(self, serial: int) -> _Open:
        """Cut the joined incident off into a report of its own and return it."""
        at = self.joined_at
        assert at is not None
        rest = _Open.__new__(_Open)
        rest.serial = serial
        rest.first_seen = rest.last_seen = self.last_seen
        rest.lines, rest.timestamps = self.lines[at:], self.timestamps[at:]
        del self.lines[at:], self.timestamps[at:]
        rest.context = ()
        rest.start_line = rest.lines[0]
        rest.flags = set()
        rest.nbytes = sum(len(x) + 1 for x in rest.lines)
        self.nbytes -= rest.nbytes
        rest.grace_until = rest.ended_at = rest.end_ts = None
        rest.lines_after_end = 0
        rest.release = self.release
        rest.seq_gaps = 0
        rest.lost = 0
        rest.userdata = self.userdata
        rest.pid = None
        rest.joined_at = self.joined_at = None
        rest.joined_pending = self.joined_pending = False
        return rest

    def add(self, line: Line) -> None:
        self.lines.append(line.text)
        self.timestamps.append(line.ts)
        self.nbytes += len(line.text) + 1
        self.last_seen = line.at
        if line.undecodable:
            self.flags.add("undecodable")
        if line.fragments_lost:
            self.flags.add("fragments_lost")
        if line.seq_gap:
            self.seq_gaps += line.seq_gap
            self.flags.add("seq_gaps")
        if line.release and not self.release:
            self.release = line.release
        if line.lost:
            self.lost += line.lost
            self.flags.add("lines_lost")
        if line.userdata is not None:
            self.userdata = line.userdata


def _ghost_slot(key: tuple[str, int] | str) -> tuple[int, int]:
    h = hash(key) & 0xFFFFFFFFFFFFFFFF
    return (h >> 32) & (GHOST_SLOTS - 1), (h & 0xFFFFFFFF) or 1


class _Host:
    """One sender: the compact record kept for every host, idle or not, and the one
    record of it the receiver has (coverage included, see :meth:`Assembler.take_dirty`).

    An idle host holds its decoder's position (a few slots, no buffers), its last
    ``context_lines`` lines as one ``bytes`` ring (``ctx``: each line as a datagram that
    decodes to it, ``\\n``-terminated; a fast-path line is stored as the bytes that
    arrived) and scalars: no per-line objects. Lines become :class:`Line` objects and
    text only when the host opens a report."""

    __slots__ = ("admitted", "crash_marks", "ctx", "datagrams", "decoder", "dirty", "first", "ip", "key", "last",
                 "lost", "nctx", "opened_ctx", "port", "release", "report", "reports", "requeue_at", "scheduled",
                 "special", "special_at", "title")

    def __init__(self, ip: str, port: int, key: tuple[str, int] | str, decoder: HostDecoder, at: float,
                 admitted: bool) -> None:
        self.ip = ip
        self.port = port
        self.key = key
        self.decoder = decoder
        self.ctx = b""
        self.nctx = 0
        self.report: _Open | None = None
        self.release: str | None = None
        #: the earliest deadline of this host that sits in the assembler's heap
        self.scheduled: float | None = None
        #: heard in two datagrams (or again soon after being forgotten): in the max_hosts table
        self.admitted = admitted
        #: True while queued for the store, and always for a host not admitted (never queued)
        self.dirty = not admitted
        #: a datagram at or after this queues the host (infinite while queued or not admitted)
        self.requeue_at = 0.0 if admitted else _INF
        self.first = at
        self.last = at
        #: since the host was last taken for the store
        self.datagrams = 0
        self.lost = 0
        self.reports = 0
        self.title: str | None = None
        #: the last test or heartbeat line, and when
        self.special: str | None = None
        self.special_at: float | None = None
        #: the ring as it was when the host's report opened (the journal's context rows)
        self.opened_ctx = b""
        #: hashes of (kernel time, text) of the crash-start lines of the host's last reports
        #: (at most CRASH_MARKS, 8 bytes each; None for a host that never reported one): the
        #: same line again is the log buffer sent again
        self.crash_marks: array[int] | None = None


class Assembler:
    """Per-host crash report assembly. See the module docstring for an example."""

    def __init__(self, config: AssemblerConfig | None = None) -> None:
        self.config = config or AssemblerConfig()
        self.stats = AssemblerStats()
        self._hosts: dict[tuple[str, int] | str, _Host] = {}
        # Hosts heard more than once without an open report, least recently heard first:
        # the ones max_hosts may forget. Hosts heard once live in _new (bounded apart, so a
        # flood of new sources churns only those), hosts with a report in _opened: a flood
        # evicts in O(1) and never passes over (or cuts) an open report.
        self._idle: OrderedDict[tuple[str, int] | str, _Host] = OrderedDict()
        self._new: OrderedDict[tuple[str, int] | str, _Host] = OrderedDict()
        # 32 bits of the hash of each host forgotten from _new, in a slot the other 32 pick
        # (a newer one overwrites): heard again while its slot still names it, the host
        # skips _new (see _host)
        self._ghost = memoryview(mmap.mmap(-1, 4 * GHOST_SLOTS)).cast("I")
        # admitted hosts changed since take_dirty() last took them, each once
        self._dirty: deque[_Host] = deque()
        # crash marks a store kept for hosts not heard yet since the start (restore_crash_marks)
        self._pending_marks: dict[tuple[str, int] | str, array[int]] = {}
        # (deadline, tie-breaker, key): lazily invalidated; see _check_deadline
        self._deadlines: list[tuple[float, int, tuple[str, int] | str]] = []
        self._serial = 0
        self._by_ip = self.config.group_by == "ip"
        self._cl = self.config.context_lines
        # bytes every host's context ring holds together (bound: context_bytes_budget)
        self._ring_bytes = 0
        self._last_host: _Host | None = None
        # Hosts with an open report, oldest report first, and the text they hold together.
        self._opened: OrderedDict[tuple[str, int] | str, _Host] = OrderedDict()
        self._open_bytes = 0
        self._opened_now = False

    # -- public -------------------------------------------------------------------------

    def feed(self, datagram: bytes, source: tuple[str, int], at: float) -> list[Report]:
        """Take one datagram from ``source`` (ip, port) received at ``at``.

        Returns the reports this datagram closed (often none).
        """
        closed: list[Report] = []
        self._opened_now = False
        if len(datagram) > self.config.max_datagram_bytes:
            # Worst case per datagram: O(max_datagram_bytes) of decoding, whatever was sent.
            datagram = datagram[:self.config.max_datagram_bytes]
            self.stats.datagrams_cut += 1
        key = source[0] if self._by_ip else (source[0], source[1])
        host = self._hosts.get(key)
        if host is None:
            host = self._host(source, at, closed)
        elif not host.admitted:
            self._admit(host, closed)
        elif host.report is None:
            self._idle.move_to_end(key)
        self._last_host = host
        host.port = source[1]
        host.last = at
        host.datagrams += 1
        if at >= host.requeue_at:
            self._queue(host)
        decoder = host.decoder
        if host.report is None and host.scheduled is None:
            quick = decoder.quick_line(datagram)
            if quick is not None:
                text = quick[1]
                if _classify(text) == _NONE and not text.startswith(_NOT_NOISE):
                    # The usual noise line: no Line object; the datagram as it arrived goes
                    # into the host's ring (one line, decoded again only if a report opens).
                    if quick[2] is not None:
                        host.release = quick[2]
                    if len(datagram) > CONTEXT_LINE_CHARS or datagram[-1:] != b"\n":
                        self._keep(host, decoder.line(quick, at))  # a line to cut, or no LF
                        return closed
                    old = host.ctx
                    ctx = old + datagram
                    n = host.nctx
                    if n < self._cl:
                        host.nctx = n + 1
                    else:
                        ctx = ctx[ctx.index(b"\n") + 1:]
                    host.ctx = ctx
                    self._ring_bytes += len(ctx) - len(old)
                    if self._ring_bytes > self.config.context_bytes_budget:
                        self._over_rings(host, closed)
                    return closed
                self._line(host, decoder.line(quick, at), closed)
                self._schedule(host)
                return closed
            # The common case under load: a host with nothing open and nothing pending
            # sends a line that is not a crash. Same steps as _line, without the calls.
            for line in decoder.feed(datagram, at):
                text = line.text
                if line.reboot or line.release or line.lost or text.startswith(_NOT_NOISE) \
                        or host.report is not None:
                    self._line(host, line, closed)
                    continue
                kind = crash.classify(text)
                if kind == crash.START or kind == crash.PANIC:
                    self._open(host, line, closed)
                else:
                    self._keep(host, line)
            if host.report is not None or not decoder.idle:
                self._schedule(host)
            if self._open_bytes > self.config.open_bytes_budget:
                self._over_budget(closed)
            if self._ring_bytes > self.config.context_bytes_budget:
                self._over_rings(host, closed)
            return closed
        rep = host.report
        quick_lines: list[Line] | None = None
        if rep is not None and rep.ended_at is None and host.scheduled is not None \
                and rep.last_seen <= at < host.scheduled:
            # The common case inside a crash: one more trace or register line of an open
            # report, before its end marker, with nothing due. What _due, _line and
            # _schedule would do with it, without their calls and without a Line: nothing is
            # due before the host's earliest deadline, and a line that is not older than the
            # last only moves the idle deadline later (an earlier one is all _schedule pushes).
            quick = decoder.quick_line(datagram)
            if quick is not None:
                text = quick[1]
                if (_classify(text) == _NONE and quick[2] is None
                        and not text.startswith(_IN_REPORT_SPECIAL)):
                    n = len(text) + 1
                    rep.lines.append(text)
                    rep.timestamps.append(quick[0])
                    rep.nbytes += n
                    rep.last_seen = at
                    if quick[4] is not None and decoder.userdata is not None:
                        rep.userdata = decoder.userdata
                    self._open_bytes += n
                    cfg = self.config
                    if len(rep.lines) >= cfg.max_lines:
                        self._truncate(host, "max_lines", closed)
                    elif rep.nbytes >= cfg.max_bytes:
                        self._truncate(host, "max_bytes", closed)
                    if self._open_bytes > cfg.open_bytes_budget:
                        self._over_budget(closed)
                    if self._ring_bytes > cfg.context_bytes_budget:
                        self._over_rings(host, closed)  # a report just closed may give lines back
                    return closed
                # anything else this line may be goes the whole way, as its Line (the
                # decoder has taken the datagram)
                quick_lines = [decoder.line(quick, at)]
        self._due(host, at, closed)
        for line in decoder.feed(datagram, at) if quick_lines is None else quick_lines:
            self._line(host, line, closed)
        self._schedule(host)
        if self._open_bytes > self.config.open_bytes_budget:
            self._over_budget(closed)
        if self._ring_bytes > self.config.context_bytes_budget:
            self._over_rings(host, closed)
        return closed

    def expire(self, now: float) -> list[Report]:
        """Close every report whose time is up at ``now``; return them in closing order."""
        closed: list[Report] = []
        self._opened_now = False
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            d, _, key = heapq.heappop(heap)
            host = self._hosts.get(key)
            if host is None or host.scheduled != d:
                continue  # stale: the host was evicted, or holds an earlier entry
            host.scheduled = None
            self._due(host, now, closed)
            self._schedule(host)
        return closed

    def close_all(self) -> list[Report]:
        """End of input: flush every host and close every open report."""
        closed: list[Report] = []
        for host in list(self._hosts.values()):
            for line in host.decoder.flush():
                self._line(host, line, closed)
            if host.report is not None:
                ended = host.report.grace_until is not None
                self._close(host, "end_marker" if ended else "end_of_input", closed)
            host.scheduled = None
        self._deadlines.clear()
        return closed

    def close_ended(self) -> list[Report]:
        """Close the reports that already saw their end marker (for a shutdown: they are whole)."""
        closed: list[Report] = []
        for host in list(self._hosts.values()):
            if host.report is not None and host.report.grace_until is not None:
                self._close(host, "end_marker", closed)
        return closed

    def next_deadline(self) -> float | None:
        """The earliest time at which :meth:`expire` may close something."""
        return self._deadlines[0][0] if self._deadlines else None

    @property
    def last_fed_open(self) -> bool:
        """True while the host of the last datagram fed has a crash report being collected
        (what :meth:`is_open` says of it, without the lookup)."""
        host = self._last_host
        return host is not None and host.report is not None

    def is_open(self, source: tuple[str, int]) -> bool:
        """True while ``source``'s host has a crash report being collected."""
        host = self._hosts.get(source[0] if self._by_ip else (source[0], source[1]))
        return host is not None and host.report is not None

    @property
    def open_reports(self) -> int:
        return len(self._opened)

    @property
    def open_bytes(self) -> int:
        """Bytes of text the open reports hold together (bounded by ``open_bytes_budget``)."""
        return self._open_bytes

    @property
    def hosts(self) -> int:
        return len(self._hosts)

    @property
    def context_bytes(self) -> int:
        """Bytes the hosts' context rings hold together (bound: context_bytes_budget)."""
        return self._ring_bytes

    @property
    def idle_hosts(self) -> int:
        """Hosts heard more than once with no open report (the max_hosts table, less _opened)."""
        return len(self._idle)

    @property
    def new_hosts(self) -> int:
        """Hosts heard only once, tracked apart (bound: new_hosts)."""
        return len(self._new)

    def take_context(self, source: tuple[str, int]) -> list[bytes]:
        """The context lines ``source``'s last report opened with, each as a datagram that
        gives that line again (for the journal: fed before the report's own datagrams, they
        rebuild the same context); then forgotten. Empty when there were none."""
        host = self._hosts.get(source[0] if self._by_ip else (source[0], source[1]))
        if host is None or not host.opened_ctx:
            return []
        ring, host.opened_ctx = host.opened_ctx, b""
        return [x + b"\n" for x in ring.split(b"\n")[:-1]]

    def keep_context(self, datagram: bytes, source: tuple[str, int], at: float) -> list[Report]:
        r"""Put one of ``source``'s context lines back into its ring as it was (a datagram
        :meth:`take_context` gave), never read for crash markers: the journal's replay of the
        lines a report opened with. Returns the reports that making room closed (rarely any).

        >>> asm = Assembler()
        >>> asm.keep_context(b"[  1.000000] BUG: kept as context\n", ("10.0.0.1", 0), 5.0)
        []
        >>> asm.feed(b"[  2.000000] Kernel panic - not syncing: x\n", ("10.0.0.1", 0), 6.0)
        []
        >>> [(r.context, r.lines) for r in asm.close_all()]  # one report: the panic, with the BUG line as context
        [(('BUG: kept as context',), ('Kernel panic - not syncing: x',))]
        """
        closed: list[Report] = []
        key = source[0] if self._by_ip else (source[0], source[1])
        host = self._hosts.get(key)
        if host is None:
            host = self._host(source, at, closed)
        elif not host.admitted:
            self._admit(host, closed)
        host.last = at
        host.datagrams += 1
        entry = datagram[:-1] if datagram.endswith(b"\n") else datagram
        entry = entry.replace(b"\n", b" ") + b"\n"  # one ring entry is one line
        self._push_context(host, entry)
        if self._ring_bytes > self.config.context_bytes_budget:
            self._over_rings(host, closed)
        return closed

    def note_title(self, source: tuple[str, int], title: str) -> None:
        """The title the parse stage gave ``source``'s last report: kept on its host record."""
        host = self._hosts.get(source[0] if self._by_ip else (source[0], source[1]))
        if host is not None:
            host.title = title[:200]
            if not host.dirty:
                self._queue(host)

    @property
    def dirty_hosts(self) -> int:
        """Hosts changed since :meth:`take_dirty` last took them."""
        return len(self._dirty)

    def take_dirty(self, limit: int) -> list[HostRecord]:
        """Up to ``limit`` hosts heard more than once that changed since they were last
        taken, oldest change first, as records for the store; their counters restart at 0.
        O(limit): the hosts queued themselves as they changed."""
        out: list[HostRecord] = []
        dirty = self._dirty
        while dirty and len(out) < limit:
            host = dirty.popleft()
            host.dirty = False
            host.requeue_at = host.last + self.config.heard_resolution
            d = host.decoder
            key = host.key if isinstance(host.key, str) else f"{host.key[0]}:{host.key[1]}"
            out.append(HostRecord(key, host.ip, host.first, host.last, host.datagrams, host.release, d.formats,
                                  d.userdata or (), host.lost, host.special, host.special_at, host.reports,
                                  host.title, host.crash_marks.tobytes() if host.crash_marks is not None else b""))
            host.datagrams = host.lost = host.reports = 0
        return out

    def restore_crash_marks(self, marks: list[tuple[str, bytes]]) -> None:
        """Give hosts the crash marks a store kept (``hosts`` table keys, 8 bytes a mark): at a
        start, so that a log buffer sent again after a receiver restart is still known. A host
        not tracked yet takes its marks when it is first heard; at most ``max_hosts`` wait."""
        for key, blob in marks[:self.config.max_hosts]:
            if not blob or len(blob) % 8:
                continue
            k: str | tuple[str, int] = key
            if not self._by_ip:
                ip, _, port = key.rpartition(":")
                if not port.isdigit():
                    continue
                k = (ip, int(port))
            restored = array("q")
            restored.frombytes(blob[:8 * CRASH_MARKS])
            host = self._hosts.get(k)
            if host is not None:
                host.crash_marks = restored
            else:
                self._pending_marks[k] = restored

    # -- internals ----------------------------------------------------------------------

    def _host(self, source: tuple[str, int], at: float, closed: list[Report]) -> _Host:
        """A host not tracked: into _new (heard once), or straight into the max_hosts table
        when it was forgotten from _new lately (its ghost slot still names it). O(1)."""
        key: tuple[str, int] | str = source[0] if self._by_ip else (source[0], source[1])
        slot, tag = _ghost_slot(key)
        admitted = self._ghost[slot] == tag
        if admitted:
            self._ghost[slot] = 0
            self._room(closed)
            self.stats.hosts_admitted += 1
        elif len(self._new) >= self.config.new_hosts:
            _, old = self._new.popitem(last=False)
            self.stats.new_hosts_forgotten += 1
            self._forget(old, closed)
        host = _Host(source[0], source[1], key, HostDecoder(self.config.decoder, self.stats.decode), at, admitted)
        if self._pending_marks:
            host.crash_marks = self._pending_marks.pop(key, None)
        self._hosts[key] = host
        (self._idle if admitted else self._new)[key] = host
        self.stats.hosts = len(self._hosts)
        return host

    def _admit(self, host: _Host, closed: list[Report]) -> None:
        """A host heard once is heard again: it joins the max_hosts table."""
        host.admitted = True
        host.dirty = False
        host.requeue_at = 0.0
        self.stats.hosts_admitted += 1
        if host.report is None:
            del self._new[host.key]
            self._room(closed)
            self._idle[host.key] = host

    def _room(self, closed: list[Report]) -> None:
        """Make room for one more host in the max_hosts table: forget the least recently
        heard host that has no open report (O(1) whatever a flood sends). Only when every
        one of them has an open report does the oldest report close (whole, flagged evicted)."""
        if len(self._idle) + len(self._opened) < self.config.max_hosts:
            return
        if self._idle:
            _, old = self._idle.popitem(last=False)
        else:
            old = next(iter(self._opened.values()))
        self.stats.hosts_evicted += 1
        self._forget(old, closed)

    def _over_rings(self, current: _Host, closed: list[Report]) -> None:
        """The context rings hold more than context_bytes_budget: forget the least recently
        heard idle hosts, those heard once first, until they fit. O(1) a host forgotten."""
        while self._ring_bytes > self.config.context_bytes_budget:
            table = self._new if self._new else self._idle
            if not table:
                return
            key = next(iter(table))
            old = table[key]
            if old is current:
                if table is self._idle or not self._idle:
                    return  # only the host being fed is left: its ring alone is bounded
                table = self._idle
                old = table[next(iter(table))]
                if old is current:
                    return
            del table[old.key]
            self.stats.hosts_forgotten_for_bytes += 1
            self._forget(old, closed)

    def _forget(self, old: _Host, closed: list[Report]) -> None:
        del self._hosts[old.key]
        if not old.admitted:
            slot, tag = _ghost_slot(old.key)
            self._ghost[slot] = tag
        for line in old.decoder.flush():
            self._line(old, line, closed)
        if old.report is not None:
            old.report.flags.add("evicted")
            self.stats.reports_evicted += 1
            self._close(old, "evicted", closed)
        # last: the lines its decoder still held went into the ring above
        self._ring_bytes -= len(old.ctx)
        old.ctx = b""
        self.stats.hosts = len(self._hosts)

    def _queue(self, host: _Host) -> None:
        """``host`` changed: queue it (once) for the store. The queue is bounded like the table."""
        if len(self._dirty) < self.config.max_hosts:
            host.dirty = True
            host.requeue_at = _INF
            self._dirty.append(host)
        else:
            self.stats.host_updates_deferred += 1

    def _unlist(self, host: _Host) -> None:
        if self._idle.pop(host.key, None) is None:
            self._new.pop(host.key, None)

    def _keep(self, host: _Host, line: Line) -> None:
        """Put ``line`` into the host's context ring, as a classic datagram that decodes to it
        (cut to CONTEXT_LINE_CHARS bytes; a line joined from several has them as spaces)."""
        raw = line.text.encode()
        if len(raw) > CONTEXT_LINE_CHARS:
            raw = raw[:CONTEXT_LINE_CHARS]
        if b"\n" in raw:
            raw = raw.replace(b"\n", b" ")
        if line.ts is not None:
            entry = b"[%.6f] %b\n" % (line.ts, raw)
        elif _CLASSIC_PREFIX.match(raw).end():  # type: ignore[union-attr]  # (all optional: it always matches)
            entry = b" " + raw + b"\n"  # the decoder takes one space there, not a "<4>" or "[1.0]" of the text
        else:
            entry = raw + b"\n"
        self._push_context(host, entry)

    def _push_context(self, host: _Host, entry: bytes) -> None:
        """Append one ring entry (one line, ending in LF) to the host's ring; the oldest goes
        past context_lines. (feed()'s idle fast path does the same inline.)"""
        old = host.ctx
        ctx = old + entry
        if host.nctx < self._cl:
            host.nctx += 1
        else:
            ctx = ctx[ctx.index(b"\n") + 1:]
        host.ctx = ctx
        self._ring_bytes += len(ctx) - len(old)

    def _context(self, ring: bytes, at: float) -> list[tuple[str, float | None]]:
        """The ring's lines, decoded again (text, kernel time): each entry alone, with a
        decoder of its own, so it gives the line it was stored for."""
        out: list[tuple[str, float | None]] = []
        if not ring:
            return out
        scratch = DecodeStats()
        limit = self.config.decoder.max_line_bytes
        for entry in ring.split(b"\n")[:-1]:
            quick = one_classic_line(entry + b"\n", limit)  # most are: no decoder to build
            if quick is not None:
                out.append((quick[1], quick[0]))
                continue
            for x in HostDecoder(self.config.decoder, scratch).feed(entry + b"\n", at):
                out.append((x.text, x.ts))
        return out

    def _deadline(self, host: _Host) -> float | None:
        # Runs once per line of an open report: comparisons, not a list and min().
        rep = host.report
        d = None if host.decoder.idle else host.decoder.deadline()
        if rep is None:
            return d  # None for noise: nothing to wait for
        cfg = self.config
        t = rep.last_seen + cfg.idle_timeout
        if d is None or t < d:
            d = t
        t = rep.first_seen + cfg.max_age
        if t < d:
            d = t
        if rep.grace_until is not None and rep.grace_until < d:
            d = rep.grace_until
        return d

    def _schedule(self, host: _Host) -> None:
        d = self._deadline(host)
        if d is None:
            return
        # Deadlines mostly move later (each line pushes the idle timeout on); an entry
        # that pops too early is re-pushed by expire(), so only an earlier deadline
        # needs a new entry. This keeps heap work per host, not per line.
        if host.scheduled is not None and host.scheduled <= d:
            return
        host.scheduled = d
        self._serial += 1
        heapq.heappush(self._deadlines, (d, self._serial, host.key))

    def _due(self, host: _Host, now: float, closed: list[Report]) -> None:
        """Apply whatever timeouts of ``host`` have passed by ``now``."""
        if not host.decoder.idle:
            for line in host.decoder.expire(now):
                self._line(host, line, closed)
        rep = host.report
        if rep is None:
            return
        cfg = self.config
        if rep.grace_until is not None and rep.grace_until <= now:
            self._close(host, "end_marker", closed)
        elif rep.last_seen + cfg.idle_timeout <= now:
            self._close(host, "idle", closed)
        elif rep.first_seen + cfg.max_age <= now:
            rep.flags.add("truncated")
            self.stats.reports_truncated += 1
            self._close(host, "max_age", closed)

    def _line(self, host: _Host, line: Line, closed: list[Report]) -> None:
        if line.lost:
            host.lost += line.lost
        if line.reboot:
            if host.report is not None:
                host.report.flags.add("reboot_seen")
                self._close(host, "reboot", closed)
            self._ring_bytes -= len(host.ctx)
            host.ctx = b""
            host.nctx = 0
        text = line.text
        if text.startswith("Linux version "):
            host.release = text.split(" ", 3)[2] if text.count(" ") >= 2 else host.release
        if line.release:
            host.release = line.release
        if text.startswith(SPECIAL_PREFIX) and (which := special(text)) is not None:
            # A client's test or heartbeat line: recorded on the host, never a report or context.
            host.special = text
            host.special_at = line.at
            if which == "test":
                self.stats.test_lines += 1
            else:
                self.stats.heartbeat_lines += 1
            if not host.dirty:
                self._queue(host)
            return
        kind = crash.classify(text)
        rep = host.report
        if rep is None:
            if kind == crash.START or kind == crash.PANIC:
                self._open(host, line, closed)
            else:
                self._keep(host, line)
            return
        joining = False
        if rep.grace_until is not None and kind == crash.START:
            if self._same_incident(rep, line) and not text.startswith("WARNING"):
                joining = True
                rep.grace_until = rep.ended_at = rep.end_ts = None
                rep.joined_at = len(rep.lines)
                # "cut here" or a lead-in line: the joined crash's header comes next
                rep.joined_pending = text.startswith("-") or crash.is_lead_in(text)
                self.stats.incidents_joined += 1
            else:
                # A new crash after the previous one's end: two reports.
                self._close(host, "end_marker", closed)
                self._open(host, line, closed)
                return
        if kind != crash.NONE and crash.is_new_detection(text, rep.start_line, rep.ended_at is not None):
            # Another soft lockup while one is open (each watchdog detection prints a whole
            # report, with no end marker), or a panic that is itself a crash after the last
            # one ended ("Kernel panic - not syncing: Watchdog detected hard LOCKUP"): two.
            self._close(host, "next_crash", closed)
            self._open(host, line, closed)
            return
        if kind == crash.PANIC:
            rep.grace_until = rep.ended_at = None  # the oops's own panic: one report
        elif rep.ended_at is not None:
            rep.lines_after_end += 1
            if rep.lines_after_end == 1 and not text.strip() and rep.grace_until is not None:
                rep.grace_until = max(rep.grace_until, rep.ended_at + self.config.slow_panic_grace)
            if kind == crash.NONE and _AFTERMATH.match(text) is None:
                # After the end marker, a line of another kind ("lkdtm: Overflow detected",
                # the next test's trigger, another CPU's message) is not this crash's: it is
                # kept as context for what comes next, while the report waits out its grace
                # for the panic that may still follow.
                self._keep(host, line)
                return
        elif rep.joined_pending and kind == crash.START and not joining and not crash.is_lead_in(text):
            rep.joined_pending = False
            if text.startswith("WARNING"):
                # Only the fatal crash a warning leads to is the same incident, not a second warning.
                self._split(host, closed)
                rep = host.report
                assert rep is not None
        if text.startswith("CPU: ") and (m := _PID.match(text)) is not None:
            if rep.pid is None:
                rep.pid = m.group(1)
            elif rep.joined_at is not None and m.group(1) != rep.pid:
                # The joined crash is another task's: two incidents after all.
                self._split(host, closed)
                rep = host.report
                assert rep is not None
        rep.add(line)
        self._open_bytes += len(text) + 1
        if kind == crash.END_NOW:
            self._close(host, "end_marker", closed)
            return
        if kind == crash.END_GRACE:
            rep.ended_at = line.at
            rep.end_ts = line.ts
            rep.lines_after_end = 0
            rep.grace_until = line.at + self.config.end_grace
        elif rep.ended_at is not None:
            # The tail after the end marker (an oops's second register dump, the panic that
            # follows) can trickle in line by line on a slow console: each line extends the
            # grace, but never past idle_timeout after the marker, so noise cannot keep it open.
            rep.grace_until = min(line.at + self.config.end_grace, rep.ended_at + self.config.idle_timeout)
        cfg = self.config
        if len(rep.lines) >= cfg.max_lines:
            self._truncate(host, "max_lines", closed)
        elif rep.nbytes >= cfg.max_bytes:
            self._truncate(host, "max_bytes", closed)

    def _same_incident(self, rep: _Open, line: Line) -> bool:
        """The crash starting at ``line`` follows ``rep``'s end marker at once, with no line
        between: in kernel time when both have it, else in arrival time."""
        if rep.lines_after_end or rep.ended_at is None:
            return False
        gap = self.config.same_incident_gap
        if rep.end_ts is not None and line.ts is not None:
            return 0 <= line.ts - rep.end_ts <= gap
        return line.at - rep.ended_at <= gap

    def _split(self, host: _Host, closed: list[Report]) -> None:
        rep = host.report
        assert rep is not None
        self._serial += 1
        rest = rep.split(self._serial)
        self.stats.incidents_split += 1
        self._open_bytes -= rest.nbytes
        self._close(host, "end_marker", closed)
        host.report = rest
        self._unlist(host)
        self._opened[host.key] = host
        self._open_bytes += rest.nbytes

    def _open(self, host: _Host, line: Line, closed: list[Report]) -> None:
        if self._opened_now:
            # One datagram opens at most one report: the kernel sends one record a datagram,
            # and a crash spans many. A datagram packed with crash starts and end markers
            # makes one report, not one per pair; the rest of its lines are context.
            self.stats.starts_ignored += 1
            self._keep(host, line)
            return
        if line.ts and host.crash_marks is not None and _crash_mark(line.ts, line.text) in host.crash_marks:
            # A crash this host already reported, at the same kernel time: the kernel sending
            # its log buffer again (netconsole loaded with the module option replays it to the
            # new console; the decoder saw the clock go back, as at a boot). Context, not a report.
            self.stats.crash_replays += 1
            self._keep(host, line)
            return
        self._opened_now = True
        if len(self._opened) >= self.config.max_open_reports:
            # The oldest open report closes whole, flagged, to make room.
            oldest = next(iter(self._opened.values()))
            assert oldest.report is not None
            oldest.report.flags.add("evicted")
            self.stats.open_reports_limited += 1
            self._close(oldest, "max_open_reports", closed)
        self._serial += 1
        # The ring becomes text only now; the journal takes it as it is (take_context).
        ring = host.opened_ctx = host.ctx
        context = self._context(ring, line.at)
        separator: Line | None = None
        if context and _SEPARATOR.match(context[-1][0]):
            text, ts = context.pop()
            separator = Line(text, line.at, ts)
        rep = _Open(self._serial, line, tuple(t for t, _ in context), host.release)
        if ring:
            rep.userdata = host.decoder.userdata
        self._ring_bytes -= len(ring)
        host.ctx = b""
        host.nctx = 0
        host.report = rep
        if separator is not None:
            rep.add(separator)
        rep.add(line)
        self._unlist(host)
        self._opened[host.key] = host
        self._open_bytes += rep.nbytes

    def _over_budget(self, closed: list[Report]) -> None:
        """The open reports hold more than open_bytes_budget: close the largest until they
        fit. O(open reports) per closing, which only a flood of huge reports triggers."""
        while self._open_bytes > self.config.open_bytes_budget and self._opened:
            largest = max(self._opened.values(), key=lambda h: h.report.nbytes if h.report else 0)
            assert largest.report is not None
            largest.report.flags.add("truncated")
            self.stats.open_bytes_limited += 1
            self.stats.reports_truncated += 1
            self._close(largest, "open_bytes_budget", closed)

    def _truncate(self, host: _Host, reason: str, closed: list[Report]) -> None:
        assert host.report is not None
        host.report.flags.add("truncated")
        self.stats.reports_truncated += 1
        self._close(host, reason, closed)

    def _close(self, host: _Host, reason: str, closed: list[Report]) -> None:
        rep = host.report
        assert rep is not None
        host.report = None
        del self._opened[host.key]
        tracked = self._hosts.get(host.key) is host  # not for a host being evicted
        if tracked:
            (self._idle if host.admitted else self._new)[host.key] = host
        self._open_bytes -= rep.nbytes
        if rep.start_line.startswith("-") and not crash.is_crash(rep.lines):
            # A lone "[ cut here ]" that no header followed: not a report. Its lines go back
            # to the host's context, where they would have been.
            self.stats.lone_separators += 1
            if tracked:
                for text, ts in zip(rep.lines, rep.timestamps, strict=True):
                    self._keep(host, Line(text, rep.last_seen, ts))
            return
        host.reports += 1
        if not host.dirty:
            self._queue(host)
        # Not lines stamped 0.000000: printed before the clock runs, the same crash in every
        # boot carries that stamp, and each boot's is a crash of its own.
        marks = [_crash_mark(ts, text) for text, ts in zip(rep.lines, rep.timestamps, strict=True)
                 if ts and crash.classify(text) in _OPENS][:CRASH_MARKS]
        if marks:
            old_marks = host.crash_marks
            host.crash_marks = array("q", marks + (list(old_marks) if old_marks is not None else []))[:CRASH_MARKS]
        release = rep.release
        if release is None:
            for text in rep.lines[:40]:
                for rx in _RELEASE_RES:
                    m = rx.search(text)
                    if m:
                        release = m.group(1)
                        break
                if release:
                    break
        self.stats.reports += 1
        closed.append(Report(
            host=host.ip, port=host.port, first_seen=rep.first_seen, last_seen=rep.last_seen,
            lines=tuple(rep.lines), timestamps=tuple(rep.timestamps), context=rep.context,
            start_line=rep.start_line, closed_by=reason, flags=tuple(sorted(rep.flags)),
            kernel_release=release, seq_gaps=rep.seq_gaps, lost_lines=rep.lost, userdata=rep.userdata or ()))
