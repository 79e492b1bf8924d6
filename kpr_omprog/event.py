"""A finished report, parsed, becomes one Sentry error event plus the full log.

Pure: no network, no clock. :func:`build_event` gives the event dict and the
attachment bytes; :mod:`kpr_omprog.delivery` wraps them in an envelope and sends.

* one exception whose ``type`` is the crash kind and ``value`` the rest of the
  title, so Sentry's issue title reads as ours (``kernel BUG: in lkdtm_BUG``);
* its stacktrace: the fault line's function (``RIP:``, ``pc :``...) innermost, then the
  Call Trace, oldest frame first, functions as the kernel printed them, modules in
  ``package``; the title's function is the innermost in-app frame (Sentry's culprit);
  the register dump in ``registers``; the task as the crashed thread (``threads``);
* ``contexts.os`` (the kernel release and build), ``contexts.device`` (the hardware name),
  ``modules`` (Modules linked in, with their taint flags), ``sdk``;
* our own ``fingerprint`` (Sentry's default grouping would split by call path);
* ``user.ip_address`` = the host, so "users affected" counts hosts;
* an ``event_id`` derived from host, first receive time and text, so sending the
  same report twice creates one event.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from . import __version__
from .assembler import Report
from .crash import CrashInfo, call_trace, canonical_function
from .frames import is_skipped, is_trace_start, pc_function, strip_clone_suffix
from .hooks import TAG_LIMIT, Parsed, analyze_text

__all__ = ["EXTRA_VALUE_LIMIT", "MAX_FRAMES", "MAX_MODULES", "MAX_REGISTERS", "OWN_TAGS", "StackFrame", "Task",
           "build_event", "build_string", "event_id_for", "fault_function", "header_index", "kernel_stack",
           "loaded_modules", "printed_function", "registers", "sentry_release", "task", "trim_event"]

#: Sentry keeps 16 kB per extra item.
EXTRA_VALUE_LIMIT = 16000


def event_id_for(report: Report) -> str:
    """Stable id: the same report (host, time, content) always gets the same event id."""
    h = hashlib.sha256()
    h.update(f"{report.host}\0{report.first_seen:.6f}\0".encode())
    h.update(report.text.encode("utf-8", "replace"))
    return h.hexdigest()[:32]


def _split_title(title: str) -> tuple[str, str]:
    kind, sep, frame = title.rpartition(" in ")
    if sep and kind and frame and " " not in frame:
        return kind, f"in {frame}"
    return title, ""


#: frames an event carries (Sentry keeps 250, but a kernel stack deeper than this is a loop)
MAX_FRAMES = 64


@dataclass(frozen=True, slots=True)
class StackFrame:
    """One frame of the stack an event shows, innermost first, as the kernel printed it."""

    function: str
    module: str | None
    #: how the kernel knew it, in Sentry's ``trust`` words: ``context`` (the fault line, read
    #: from the registers), ``trace`` (a reliable call-trace frame) or ``scan`` (a ``?`` frame:
    #: an address the unwinder found on the stack but cannot vouch for)
    trust: str


# The module of the fault line's function: "RIP: 0010:lkdtm_BUG+0x5/0x10 [lkdtm]",
# "Krnl PSW : ... (lkdtm_BUG+0x1a/0x20 [lkdtm])"; kept here because crash.py's is private.
_FAULT_MODULE = r"\+0x[0-9a-f]+(?:/0x[0-9a-f]+)?\)?\s+\[(\w+)(?:\s+[0-9a-f]+)?\]"
# Entry and syscall plumbing: every report has it, it is never what a kernel engineer looks for.
_PLUMBING = ("entry_", "do_syscall", "ret_from", "x64_sys_call", "el0_", "do_el0_svc", "invoke_syscall")


def header_index(lines: tuple[str, ...] | list[str], info: CrashInfo) -> int:
    """Where the report's header line is (where crash.analyze read from), or 0."""
    return info.header_index if info.header_index < len(lines) else 0


def fault_function(lines: tuple[str, ...] | list[str], start: int = 0) -> StackFrame | None:
    """The function the fault line names (``RIP:``, ``IP:``, ``EIP is at``, ``PC is at``,
    ``pc :``, ``NIP``, ``Krnl PSW``, as :func:`kpr_omprog.frames.pc_function` reads them),
    between the header at ``start`` and the first call trace: the fault line of that trace's
    task (a second CPU's registers come later, with their own trace).

    >>> fault_function(["kernel BUG at x.c:1!", "RIP: 0010:lkdtm_BUG+0x5/0x10 [lkdtm]", "Call Trace:"])
    StackFrame(function='lkdtm_BUG', module='lkdtm', trust='context')
    """
    for text in lines[start:start + 80]:
        if is_trace_start(text):
            return None
        name = pc_function(text)
        if name is not None:
            m = re.search(re.escape(name) + _FAULT_MODULE, text)
            return StackFrame(name, m.group(1) if m else None, "context")
    return None


def kernel_stack(lines: tuple[str, ...] | list[str], info: CrashInfo) -> list[StackFrame]:
    """The crashing task's stack, innermost first: the fault line's function (unless the
    trace starts with it), then the reliable call-trace frames; a trace of ``?`` frames only
    (executing data leaves nothing else) gives those, as stack-scanned frames."""
    start = header_index(lines, info)
    stack = [StackFrame(f.function, f.module, "trace") for f in info.frames]
    if not stack:
        stack = [StackFrame(f.function, f.module, "scan") for f in call_trace(lines[start:])[0]]
    fault = fault_function(lines, start)
    if fault is not None and not (stack and canonical_function(stack[0].function)
                                  == canonical_function(fault.function)):
        stack.insert(0, fault)
    return stack[:MAX_FRAMES]


# The task whose stack the trace is: "CPU: 1 PID: 140 Comm: sh Not tainted ..." (5.x-6.x;
# "CPU: 1 UID: 0 PID: 140 Comm: sh" since 6.12), or sched_show_task()'s "task:sh state:D
# stack:0 pid:147 ppid:1" (a hung task, whose report's CPU line is khungtaskd's, later).
_TASK = re.compile(r"^CPU: (?P<cpu>\d+) (?:UID: \d+ )?PID: (?P<pid>\d+) Comm: (?P<comm>.+?)"
                   r" +(?:Not tainted|Tainted:)"
                   r"|^task:(?P<name>\S+) +state:(?P<state>\S+) .*?\bpid: *(?P<tpid>\d+)")
# A register dump line is nothing but NAME: HEX pairs: "RAX: 0000000000000033 RBX: ...",
# "RSP: 0018:ff6712ca403dbb98 EFLAGS: 00000246", "FS:  0000000006aa63c0(0000)", arm64's
# "x29: ffff80000a3b3c50 x28: ...". Anything else on the line (Code:, pc : f+0x..) rejects it.
_REGISTER = re.compile(r"([A-Za-z][A-Za-z0-9_]{0,7})\s?:\s*(?:[0-9a-f]{4}:)?([0-9a-f]{4,16})"
                       r"(?:\([0-9a-f]{4}\))?(?=\s|$)")
#: registers an event carries (x86-64 prints 27, arm64 33)
MAX_REGISTERS = 64
_MODULES = re.compile(r"^Modules linked in:(.*?)(?:\s*\[last unloaded: [^\]]*\])?\s*$")
#: loaded modules an event lists (a distribution kernel's oops may print a few hundred)
MAX_MODULES = 500


def registers(lines: tuple[str, ...] | list[str], start: int = 0) -> dict[str, str]:
    """The register dump between the header at ``start`` and the first call trace: the CPU
    at the fault line (Sentry shows ``stacktrace.registers`` with the top frame).

    >>> registers(["RSP: 0018:ff6712ca403dbb98 EFLAGS: 00000246", "Code: 0f 0b", "Call Trace:", "RAX: 00000001"])
    {'rsp': '0xff6712ca403dbb98', 'eflags': '0x00000246'}
    """
    out: dict[str, str] = {}
    for text in lines[start:start + 80]:
        if is_trace_start(text):
            break
        if _REGISTER.match(text.lstrip()) is None:
            continue  # a dump line starts with a pair: most lines end here, without a scan of the whole line
        pairs = _REGISTER.findall(text)
        if pairs and not _REGISTER.sub("", text).strip():
            for name, value in pairs:
                if len(out) < MAX_REGISTERS:
                    out.setdefault(name.lower(), f"0x{value}")
    return out


@dataclass(frozen=True, slots=True)
class Task:
    """The task whose stack the event shows: Sentry's crashed thread."""

    pid: int
    comm: str
    cpu: int | None
    #: its scheduler state (``D``: uninterruptible sleep), when the kernel printed it
    state: str | None


def task(lines: tuple[str, ...] | list[str], start: int = 0) -> Task | None:
    """The task of the header at ``start``: the ``CPU: .. PID: .. Comm:`` or ``task:..
    pid:..`` line before the first call trace (a CPU line after it is another report's).

    >>> task(["INFO: task sh:147 blocked", "task:sh   state:D stack:0   pid:147   ppid:1", "Call Trace:"])
    Task(pid=147, comm='sh', cpu=None, state='D')
    """
    for text in lines[start:start + 80]:
        if is_trace_start(text):
            break
        m = _TASK.match(text)
        if m is None:
            continue
        if m.group("pid") is not None:
            return Task(int(m.group("pid")), m.group("comm").strip(), int(m.group("cpu")), None)
        return Task(int(m.group("tpid")), m.group("name"), None, m.group("state"))
    return None


def loaded_modules(lines: tuple[str, ...] | list[str], start: int = 0) -> dict[str, str]:
    """``Modules linked in:`` as Sentry's ``modules`` (name -> the kernel's taint flags for it,
    ``OE`` for an out-of-tree unsigned one, or ``-``).

    >>> loaded_modules(["Modules linked in: lkdtm(OE) netconsole e1000 [last unloaded: x]"])
    {'lkdtm': 'OE', 'netconsole': '-', 'e1000': '-'}
    """
    for text in lines[start:]:
        m = _MODULES.match(text)
        if m:
            out: dict[str, str] = {}
            for word in m.group(1).split()[:MAX_MODULES]:
                name, _, flags = word.partition("(")
                out[name] = flags.rstrip(")") or "-"
            return out
    return {}


def printed_function(name: str) -> str:
    """The symbol as the kernel printed it, without a compiler clone's suffix (a clone is the
    same function in the source; raw_function keeps the name as printed).

    >>> printed_function("direct_entry.cold"), printed_function("ksys_write")
    ('direct_entry', 'ksys_write')
    """
    return strip_clone_suffix(name) or name


def _frames(stack: list[StackFrame], info: CrashInfo) -> list[dict[str, Any]]:
    """Sentry frames, oldest first. The title's function is in-app and no frame inside it
    is: Sentry's culprit (and the frame servers open first) is the innermost in-app frame,
    and it must name what the title names, not the reporting code it called."""
    title_fn = info.frame.split("/")[0] if info.frame else None
    blamed = next((i for i, f in enumerate(stack) if canonical_function(f.function) == title_fn), None)
    out = []
    for i, f in enumerate(stack):
        if blamed is not None and i <= blamed:
            in_app = i == blamed
        else:
            # a stack-scanned frame may be a stale address: never the culprit unless the title says so
            in_app = f.trust != "scan" and not is_skipped(f.function) \
                and not canonical_function(f.function).startswith(_PLUMBING)
        frame: dict[str, Any] = {"function": printed_function(f.function), "raw_function": f.function,
                                 "package": f.module or "vmlinux", "in_app": in_app}
        if f.trust != "trace":
            frame["trust"] = f.trust
        out.append(frame)
    out.reverse()  # Sentry wants the oldest first
    return out


# "CPU: 0 PID: 1 Comm: sh Not tainted 6.1.0-56-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2":
# the build string after the release, which tells two builds of one release apart.
_BUILD_RE = re.compile(r"(?:Not tainted|Tainted: [A-Z ]+?)\s+\S+ (#\d+\b.*?)\s*$")


def sentry_release(kernel_release: str | None) -> str | None:
    """``linux@<release>`` as Sentry wants release names (global per organisation, so
    prefixed; no ``/``, ``\\``, tab or newline; at most 200 characters), or None.

    >>> sentry_release("6.1.0-57-amd64")
    'linux@6.1.0-57-amd64'
    >>> sentry_release("6.1/evil") is None and sentry_release(None) is None
    True
    """
    if not kernel_release or kernel_release in (".", "..", "latest"):
        return None
    name = f"linux@{kernel_release}"
    if len(name) > 200 or any(c in name for c in "/\\\t\n\r ") or not name.isprintable():
        return None
    return name


def build_string(lines: tuple[str, ...] | list[str]) -> str | None:
    """The kernel's build string (``#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2``) from the
    report's ``CPU: ... Not tainted <release> #...`` line, for Sentry's ``dist`` (64 characters)."""
    for text in lines[:60]:
        if "ainted" in text:
            m = _BUILD_RE.search(text)
            if m:
                return m.group(1)[:64]
    return None


#: tags kpr-omprog sets (here, for summaries and from source lines), and ones Sentry
#: derives from the event itself: a route's tags never replace them
OWN_TAGS = frozenset({"kernel_release", "crash_kind", "host", "tainted", "hardware", "comm", "panicked", "module",
                      "corrupted", "rate_limited", "source", "source_file", "environment", "release", "dist",
                      "level", "logger", "server_name", "user", "os", "os.name"})

#: userdata entries that become tags (the kernel allows 256 a target; Sentry wants few tags)
USERDATA_TAGS = 16
_TAG_KEY_BAD = re.compile(r"[^A-Za-z0-9_.:-]")


def userdata_tags(userdata: tuple[tuple[str, str], ...], ours: dict[str, str]) -> dict[str, str]:
    """A host's netconsole userdata (datacenter, rack, role...) as tags: keys cut to Sentry's
    32 characters of [A-Za-z0-9_.:-], at most USERDATA_TAGS of them, never replacing one of
    our own tags (such a key becomes ``userdata.<key>``)."""
    out: dict[str, str] = {}
    for key, value in userdata:
        if len(out) >= USERDATA_TAGS:
            break
        key = _TAG_KEY_BAD.sub("_", key)[:32]
        if not key:
            continue
        if key in ours:
            key = f"userdata.{key}"[:32]
        out[key] = _tag(value)
    return out


def _tag(value: Any) -> str:
    return " ".join(str(value).split())[:TAG_LIMIT] or "-"


def build_event(report: Report, parsed: Parsed, environment: str | None = None,
                release: str | None = None,
                route_tags: tuple[tuple[str, str], ...] = ()) -> tuple[dict[str, Any], bytes]:
    """The Sentry event for ``report`` and the full log to attach.

    ``route_tags`` (the sender's ``[[route]]``) come after our own tags, which they never
    replace, and before the sender's userdata, which never replaces them (a customer's
    machine cannot claim another customer's tag); parser hooks have the last word.
    """
    info = analyze_text(report.text)
    kind, value = _split_title(parsed.title)
    kernel_release = report.kernel_release or info.release
    tags = {
        "kernel_release": _tag(kernel_release or "unknown"),
        "crash_kind": _tag(info.category),
        "host": _tag(report.host),
        "tainted": _tag(info.tainted or "no"),
        "hardware": _tag(info.hardware or "unknown"),
        "comm": _tag(info.comm or "unknown"),
        "panicked": "yes" if info.panicked else "no",
    }
    if info.module:
        tags["module"] = _tag(info.module)
    if info.corrupted:
        tags["corrupted"] = "yes"
    for key, value in route_tags:
        tags.setdefault(key, value)
    tags.update(userdata_tags(report.userdata, tags))
    tags.update(parsed.tags)
    extra: dict[str, Any] = {
        "lines": len(report.lines),
        "context": "\n".join(report.context)[-EXTRA_VALUE_LIMIT:],
        "flags": ", ".join(report.flags) or "none",
        "closed_by": report.closed_by,
        "start_line": report.start_line[:1000],
    }
    if report.port:  # the UDP port it came in on; under omprog rsyslog received it (no port here)
        extra["receiver_port"] = report.port
    if report.seq_gaps:
        extra["seq_gaps"] = report.seq_gaps
    if report.lost_lines:
        extra["lost_lines"] = report.lost_lines
    if parsed.failed:
        extra["failed_hooks"] = ", ".join(parsed.failed)[:1000]
    for k, v in parsed.extra.items():
        extra[k] = v[:EXTRA_VALUE_LIMIT] if isinstance(v, str) else v
    # A WARNING is handled: the kernel said so and went on. Not synthetic: type and value
    # are the crash's own words (a synthetic exception would make Sentry title the issue
    # after the top frame and drop its culprit, as for sentry-native's "SIGSEGV").
    exception: dict[str, Any] = {
        "type": kind,
        "value": value,
        "mechanism": {"type": "linux-kernel", "handled": info.level == "warning", "synthetic": False,
                      "data": {"panicked": info.panicked, "tainted": info.tainted or "no"}},
    }
    start = header_index(report.lines, info)
    stack = kernel_stack(report.lines, info)
    frames = _frames(stack, info)
    if frames:
        exception["stacktrace"] = {"frames": frames}
        # the CPU's state at the fault (CR2 is the faulting address on x86)
        regs = registers(report.lines, start)
        if regs:
            exception["stacktrace"]["registers"] = regs
    crashed = task(report.lines, start)
    if crashed is not None:
        exception["thread_id"] = crashed.pid
        if crashed.cpu is not None:
            exception["mechanism"]["data"]["cpu"] = crashed.cpu
    event: dict[str, Any] = {
        "event_id": event_id_for(report),
        "timestamp": datetime.fromtimestamp(report.first_seen, UTC).isoformat(),
        "platform": "native",
        "level": info.level,
        "logger": "kpr-omprog",
        "server_name": report.host,
        "exception": {"values": [exception]},
        "logentry": {"formatted": parsed.message},
        "fingerprint": parsed.fingerprint,
        "tags": tags,
        "extra": extra,
        "user": {"id": parsed.user, "ip_address": report.host},
        "contexts": {"os": _os_context(kernel_release, build_string(report.lines))},
        "sdk": {"name": "kpr-omprog", "version": __version__},
    }
    if crashed is not None:
        # the task as the crashed thread: Sentry names it over the stack ("sh", its PID)
        thread: dict[str, Any] = {"id": crashed.pid, "name": crashed.comm, "crashed": True, "current": True}
        if crashed.state:
            thread["state"] = crashed.state
        event["threads"] = {"values": [thread]}
    if info.hardware:
        event["contexts"]["device"] = {"model": info.hardware}
    modules = loaded_modules(report.lines, start)
    if modules:
        event["modules"] = modules
    if environment:
        event["environment"] = environment
    # The kernel release as a Sentry release: "first seen in", release comparison and
    # regression detection work per kernel build. None in the text: none (never made up).
    release = release or sentry_release(kernel_release)
    if release:
        event["release"] = release
        dist = build_string(report.lines)
        if dist:
            event["dist"] = dist
    return event, report.render_log().encode("utf-8")


def _os_context(release: str | None, build: str | None) -> dict[str, str]:
    """Sentry's OS context as sentry-native fills it on Linux (uname: name, version, build),
    but with the whole release as the version: a distribution's "6.1.0" of 6.1.0-56-amd64 is
    its ABI name, not the kernel's version, and builds of one release differ in ``build``."""
    os_ctx = {"name": "Linux"}
    if release:
        os_ctx["version"] = os_ctx["kernel_version"] = release
    if build:
        os_ctx["build"] = build
    return os_ctx


def trim_event(event: dict[str, Any], step: int) -> dict[str, Any]:
    """A smaller event after a 413; never touches title, fingerprint or tags.

    Step 1 shortens the message and extra; step 2 also drops the stack trace (with its
    registers) and the module list.
    """
    ev = dict(event)
    ev["logentry"] = {"formatted": event["logentry"]["formatted"][:2000]}
    ev["extra"] = {k: (v[:1000] if isinstance(v, str) else v) for k, v in event["extra"].items()}
    ev["extra"]["trimmed"] = "event was over the server's size limit"
    if step >= 2:
        exc = dict(event["exception"]["values"][0])
        exc.pop("stacktrace", None)
        ev["exception"] = {"values": [exc]}
        ev.pop("modules", None)
    return ev
