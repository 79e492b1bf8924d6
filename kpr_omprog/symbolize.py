"""Source lines for a report's stack: what to ask a symbolizer, where the debug files
of a kernel release lie, and how the answers go into the event.

Pure: no files opened, no processes; :mod:`kpr_omprog.symbolizer` does the I/O.

A kernel prints ``func+0x18/0x24 [mod]``: a symbol and an offset, no load address is
needed. The symbolizer (elfutils ``eu-addr2line``, see the README) takes exactly that
form, for ``vmlinux`` and for a module's relocatable ``.ko`` alike. Call-trace frames
hold return addresses, so they are asked one byte earlier (the call instruction), as
``decode_stacktrace.sh`` and syzkaller do; the faulting instruction (``RIP:``) is asked
as printed.

    >>> s = Site("kpr_write", "kprcrash", 9, True)
    >>> s.query
    'kpr_write+0x8'
    >>> parse_answer(["0x00000000000000aa",
    ...               "kpr_poke inlined at /src/m/kprcrash.c:26:9 in kpr_crash_deep",
    ...               "/src/m/kprcrash.c:20:18", "kpr_crash_deep", "/src/m/kprcrash.c:26:9"])
    [SourceLine(function='kpr_poke', path='/src/m/kprcrash.c', lineno=20, inlined=True), \
SourceLine(function='kpr_crash_deep', path='/src/m/kprcrash.c', lineno=26, inlined=False)]
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .crash import CrashInfo
from .event import header_index, kernel_stack
from .frames import canonical_function, is_trace_start, parse_frame, pc_function

__all__ = [
    "SENTINEL",
    "Site",
    "SourceLine",
    "apply",
    "clean_path",
    "debug_dirs",
    "module_names",
    "parse_answer",
    "sites",
    "vmlinux_candidates",
]

#: asked after every query: no kernel symbol lies there, and with ``-a`` its answer
#: starts with this line, so one query's answer ends where the next begins
SENTINEL = "0xffffffffffffffff"

_SITE = re.compile(r"(?:^|[\s:(])(?P<fn>[A-Za-z_$][\w.$]*)\+0x(?P<off>[0-9a-f]+)/0x[0-9a-f]+\)?"
                   r"(?:\s+\[(?P<mod>\w+)(?:\s+[0-9a-f]+)?\])?")
# Debian/Ubuntu (debian/build/build_<flavour>/, /build/[reproducible-path/]linux-<version>/)
# and RHEL (/usr/src/debug/kernel-*/linux-*/)
_BUILD_DIR = re.compile(r"^(?:.*?/)?debian/build/build_[^/]+/|^/build/(?:[^/]+/)?linux-[^/]+/"
                        r"|^/usr/src/debug/kernel-[^/]+/linux-[^/]+/")
_LOCATION = re.compile(r"^(?P<path>.+?):(?P<line>\d+)(?::\d+)?(?: \(discriminator \d+\))?$")


@dataclass(frozen=True, slots=True)
class Site:
    """One code address as the kernel printed it: ``function+offset [module]``."""

    function: str
    module: str | None
    offset: int
    #: a call-trace frame: the offset is a return address (asked one byte earlier)
    return_address: bool

    @property
    def query(self) -> str:
        off = self.offset - 1 if self.return_address and self.offset else self.offset
        return f"{self.function}+{off:#x}"


@dataclass(frozen=True, slots=True)
class SourceLine:
    """One answer line pair: innermost (inlined) first, the real function last."""

    function: str
    path: str
    lineno: int
    inlined: bool


def _site(line: str, return_address: bool) -> Site | None:
    m = _SITE.search(line)
    if m is None:
        return None
    return Site(m.group("fn"), m.group("mod"), int(m.group("off"), 16), return_address)


def sites(lines: list[str] | tuple[str, ...], info: CrashInfo) -> tuple[list[Site | None], Site | None]:
    """The address of each frame of the event's stack (:func:`kpr_omprog.event.kernel_stack`,
    innermost first; None where the text has none, e.g. an already symbolized inline frame or
    a stack-scanned ``?`` frame) and of the guilty frame.

    Only the offsets are read here, from the same lines, matched in order by function and module.
    """
    start = header_index(lines, info)
    after = lines[start:]
    pc: Site | None = None
    found: list[Site] = []
    in_trace = False
    for text in after:
        if pc is None and pc_function(text) is not None:
            pc = _site(text, False)
        if is_trace_start(text):
            if in_trace and found:
                break  # only the first trace, as frames.call_trace reads it
            in_trace = True
            continue
        if in_trace:
            f = parse_frame(text, inline=False)
            if f is not None and f.reliable:
                s = _site(text, True)
                if s is not None and s.function == f.function:
                    found.append(s)
    out: list[Site | None] = []
    j = 0
    for sf in kernel_stack(lines, info):
        if sf.trust == "context":
            # the fault line's own address: the faulting instruction, not a return address
            out.append(pc if pc is not None and pc.function == sf.function else None)
            continue
        if sf.trust != "trace":
            out.append(None)
            continue
        k = j
        while k < len(found) and (found[k].function, found[k].module) != (sf.function, sf.module):
            k += 1
        if k < len(found):
            out.append(found[k])
            j = k + 1
        else:
            out.append(None)
    guilty: Site | None = None
    if info.frame is not None:
        if pc is not None and canonical_function(pc.function) == info.frame:
            guilty = pc
        else:
            guilty = next((s for s in out if s is not None and canonical_function(s.function) == info.frame), None)
    return out, guilty


def parse_answer(lines: list[str]) -> list[SourceLine]:
    """``eu-addr2line -a -f -i`` output for one address (its address line first), as
    source lines innermost first; empty when it knows no line."""
    out: list[SourceLine] = []
    body = lines[1:] if lines and lines[0].startswith("0x") else lines
    for i in range(0, len(body) - 1, 2):
        fn_line, loc_line = body[i], body[i + 1]
        fn, sep, _ = fn_line.partition(" inlined at ")
        m = _LOCATION.match(loc_line)
        if m is None or m.group("path") == "??" or int(m.group("line")) == 0:
            continue
        out.append(SourceLine(fn.strip(), m.group("path"), int(m.group("line")), bool(sep)))
    if out and out[-1].inlined:
        out[-1] = SourceLine(out[-1].function, out[-1].path, out[-1].lineno, False)
    return out


def clean_path(path: str) -> str:
    """A path as the kernel tree names it (what ownership rules match): ``./`` and the
    distributions' build directories taken off; a path outside a kernel tree (an
    out-of-tree module's) stays as the compiler saw it.

    >>> clean_path("debian/build/build_amd64_none_amd64/fs/read_write.c")
    'fs/read_write.c'
    >>> clean_path("./include/linux/list.h"), clean_path("/build/linux-AbC12/mm/slub.c")
    ('include/linux/list.h', 'mm/slub.c')
    >>> clean_path("/build/reproducible-path/linux-6.1.192/arch/x86/entry/entry_64.S")
    'arch/x86/entry/entry_64.S'
    >>> clean_path("/usr/src/debug/kernel-5.14.0-427.el9/linux-5.14.0-427.el9.x86_64/fs/xfs/xfs_log.c")
    'fs/xfs/xfs_log.c'
    """
    while path.startswith("./"):
        path = path[2:]
    return _BUILD_DIR.sub("", path, count=1)


def _in_app(fn: str) -> bool:
    return not canonical_function(fn).startswith(("entry_", "do_syscall", "ret_from"))


def apply(event: dict[str, Any], per_frame: list[list[SourceLine]], guilty: list[SourceLine],
          debug_files: dict[str, str]) -> int:
    """Put the answers into ``event`` (its frames are :func:`kpr_omprog.event.kernel_stack`
    reversed, as :func:`kpr_omprog.event.build_event` makes them); returns the frames given a line.

    A frame gets ``filename``/``lineno`` of its own function (the outermost answer);
    the functions inlined into it become frames of their own right after it (newer),
    as ``decode_stacktrace.sh`` prints them. The guilty frame's innermost line goes
    into the ``source`` and ``source_file`` tags and the ``source`` context. Titles and
    fingerprints are not touched.
    """
    exc = event["exception"]["values"][0]
    frames = exc.get("stacktrace", {}).get("frames", [])
    hits = 0
    if frames and len(frames) == len(per_frame):
        out: list[dict[str, Any]] = []
        # The innermost in-app frame is the culprit a server shows (the title's function):
        # what was inlined into it is shown, but not in-app, so that it stays the culprit.
        culprit = max((i for i, f in enumerate(frames) if f.get("in_app")), default=None)
        for i, (frame, answer) in enumerate(zip(frames, reversed(per_frame), strict=True)):
            if not answer:
                out.append(frame)
                continue
            hits += 1
            own = answer[-1]
            out.append({**frame, "filename": clean_path(own.path), "abs_path": own.path, "lineno": own.lineno})
            for inl in reversed(answer[:-1]):
                out.append({"function": inl.function, "raw_function": inl.function, "package": frame["package"],
                            "filename": clean_path(inl.path), "abs_path": inl.path, "lineno": inl.lineno,
                            "in_app": frame["in_app"] and i != culprit and _in_app(inl.function),
                            "data": {"inlined": True}})
        exc["stacktrace"]["frames"] = out
    if guilty:
        inner = guilty[0]
        where = f"{clean_path(inner.path)}:{inner.lineno}"
        event["tags"]["source"] = where[-200:]
        event["tags"]["source_file"] = clean_path(inner.path)[-200:]
        event["contexts"]["source"] = {"type": "default", "file": clean_path(inner.path), "line": inner.lineno,
                                       "function": inner.function,
                                       "stack": [f"{s.function} {clean_path(s.path)}:{s.lineno}"
                                                 + (" [inline]" if s.inlined else "") for s in guilty]}
    if hits or guilty:
        event["contexts"].setdefault("source", {"type": "default"})["debug_files"] = debug_files
    return hits


def module_names(module: str) -> tuple[str, ...]:
    """File names a module's debug file may have: the kernel prints ``snd_hda_intel``
    for ``snd-hda-intel.ko``; distributions ship ``.ko`` (Debian, Ubuntu) or
    ``.ko.debug`` (RHEL, Fedora).

    >>> module_names("snd_hda_intel")
    ('snd_hda_intel.ko', 'snd_hda_intel.ko.debug', 'snd-hda-intel.ko', 'snd-hda-intel.ko.debug')
    """
    names = [module, module.replace("_", "-")]
    return tuple(dict.fromkeys(f"{n}{s}" for n in names for s in (".ko", ".ko.debug")))


def vmlinux_candidates(release: str, standard_root: str, dirs: tuple[str, ...]) -> list[str]:
    """Where the kernel's own debug file may be, first found wins.

    >>> vmlinux_candidates("6.1.0-57-amd64", "/usr/lib/debug", ("/srv/dbg",))
    ['/srv/dbg/6.1.0-57-amd64/vmlinux', '/srv/dbg/vmlinux-6.1.0-57-amd64', \
'/usr/lib/debug/boot/vmlinux-6.1.0-57-amd64', '/usr/lib/debug/lib/modules/6.1.0-57-amd64/vmlinux']
    """
    out = []
    for d in dirs:
        out += [f"{d}/{release}/vmlinux", f"{d}/vmlinux-{release}"]
    out += [f"{standard_root}/boot/vmlinux-{release}", f"{standard_root}/lib/modules/{release}/vmlinux"]
    return out


def debug_dirs(release: str, standard_root: str, dirs: tuple[str, ...]) -> list[str]:
    """Directories whose trees hold the modules' debug files of ``release``.

    >>> debug_dirs("6.1.0-57-amd64", "/usr/lib/debug", ("/srv/dbg",))
    ['/srv/dbg/6.1.0-57-amd64', '/usr/lib/debug/lib/modules/6.1.0-57-amd64']
    """
    return [f"{d}/{release}" for d in dirs] + [f"{standard_root}/lib/modules/{release}"]
