"""The parser registry: user hooks ``f(addr, klogs)`` and their defaults.

This is the contract of the original Kernel Panic Receiver, kept exactly:
``addr`` is ``[ip, port]``, ``klogs`` the report's whole text. Title, user,
fingerprint and message parsers replace the default; tag and extra parsers are
added (each returns ``[name, value]`` or ``None``)::

    def parse_kernel_version(addr, klogs):
        return ["kernel_version", klogs.split(" #", 1)[0].rsplit(" ", 1)[-1]]

    parsers = Parsers()
    parsers.register_parser_tag(parse_kernel_version)
    parsed = parsers.run(["10.0.0.7", 6665], report_text)

A hook that raises or returns the wrong type is logged with its name, and the
field falls back to the default: a report is never lost because of a hook.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from . import crash
from .logs import get_logger

__all__ = ["DEFAULTS", "Parsed", "Parser", "Parsers", "default_fingerprint", "default_message", "default_title",
           "default_user", "load_hook"]

Parser = Callable[[list[Any], str], Any]

log = get_logger()

#: Sentry trims messages at 8192 characters; stay under it with the title on top.
MESSAGE_LIMIT = 8000
TAG_LIMIT = 200


@lru_cache(maxsize=64)
def analyze_text(klogs: str) -> crash.CrashInfo:
    """:func:`kpr_omprog.crash.analyze` of a report's text (cached: every default parser needs it)."""
    return crash.analyze(klogs.split("\n"))


def default_title(addr: list[Any], klogs: str) -> str:
    """``<kind> in <guilty function>``, e.g. ``kernel BUG in lkdtm_BUG``."""
    return analyze_text(klogs).title


def default_fingerprint(addr: list[Any], klogs: str) -> list[str]:
    """Same bug, same fingerprint: ``["linux-kernel", kind, guilty function]``."""
    return list(analyze_text(klogs).fingerprint)


def default_user(addr: list[Any], klogs: str) -> str:
    """The sending host's IP: Sentry's "users affected" counts affected hosts."""
    return str(addr[0])


def default_message(addr: list[Any], klogs: str) -> str:
    """The title, then the log within Sentry's message limit: all of it when it fits, else
    the crash header and the call trace first (servers that keep no attachment, such as
    Bugsink, show only this), then as much of the rest as fits, with the cuts marked."""
    head = f"{default_title(addr, klogs)}\n\n"
    room = MESSAGE_LIMIT - len(head)
    if len(klogs) <= room:
        return head + klogs
    lines = klogs.split("\n")
    trace = next((i for i, x in enumerate(lines) if "Call Trace:" in x or "Call trace:" in x), None)
    wanted = list(range(min(len(lines), 24)))  # the header: what, where, registers
    if trace is not None:
        wanted += range(trace, min(len(lines), trace + 48))
    wanted += range(len(lines))  # then the rest, in order, as it fits
    chosen: set[int] = set()
    used = 60  # the cut markers
    for i in dict.fromkeys(wanted):
        cost = len(lines[i]) + 1
        if used + cost > room:
            continue
        chosen.add(i)
        used += cost
    out: list[str] = []
    skipped = 0
    for i, line in enumerate(lines):
        if i in chosen:
            if skipped:
                out.append(f"[... {skipped} lines, in the full log ...]")
                skipped = 0
            out.append(line)
        else:
            skipped += 1
    if skipped:
        out.append(f"[... {skipped} lines, in the full log ...]")
    return (head + "\n".join(out))[:MESSAGE_LIMIT]


DEFAULTS: dict[str, Parser] = {
    "title": default_title,
    "user": default_user,
    "fingerprint": default_fingerprint,
    "message": default_message,
}


@dataclass(slots=True)
class Parsed:
    title: str
    user: str
    fingerprint: list[str]
    message: str
    tags: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    #: names of hooks that failed for this report (their default was used)
    failed: list[str] = field(default_factory=list)


def _name(f: Callable[..., Any]) -> str:
    return f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', repr(f))}"


def _remove(hooks: list[Parser], function: Parser) -> bool:
    if function in hooks:
        hooks.remove(function)
        return True
    return False


def _clean_tag(value: Any) -> str:
    text = " ".join(str(value).split())
    return text[:TAG_LIMIT]


class Parsers:
    """Registered hooks and the defaults; :meth:`run` applies them to one report."""

    def __init__(self) -> None:
        self.title: Parser = default_title
        self.user: Parser = default_user
        self.fingerprint: Parser = default_fingerprint
        self.message: Parser = default_message
        self.check: Parser | None = None
        self.tags: list[Parser] = []
        self.extras: list[Parser] = []

    # The original API, name for name.
    def register_parser_title(self, function: Parser) -> None:
        self.title = function

    def register_parser_user(self, function: Parser) -> None:
        self.user = function

    def register_parser_fingerprint(self, function: Parser) -> None:
        self.fingerprint = function

    def register_parser_message(self, function: Parser) -> None:
        self.message = function

    def register_check_hook(self, function: Parser) -> None:
        """Called first; returning ``None`` discards the report (logged), anything else keeps it."""
        self.check = function

    def register_parser_tag(self, function: Parser) -> None:
        self.tags.append(function)

    def register_parser_extra(self, function: Parser) -> None:
        self.extras.append(function)

    def unregister_parser_tag(self, function: Parser) -> bool:
        return _remove(self.tags, function)

    def unregister_parser_extra(self, function: Parser) -> bool:
        return _remove(self.extras, function)

    def _one(self, kind: str, f: Parser, addr: list[Any], klogs: str, failed: list[str]) -> Any:
        default = DEFAULTS[kind]
        try:
            value = f(list(addr), klogs)
        except Exception as e:
            log.error("hook_failed", hook=_name(f), field=kind, host=addr[0], error=f"{type(e).__name__}: {e}")
            failed.append(_name(f))
            return default(list(addr), klogs)
        ok = isinstance(value, str) and value.strip() != ""
        if kind == "fingerprint" and isinstance(value, (list, tuple)) and value:
            ok = all(isinstance(x, str) for x in value)
            value = list(value) if ok else value
        if not ok:
            log.error("hook_bad_result", hook=_name(f), field=kind, host=addr[0],
                      why=f"returned {type(value).__name__}, expected a non-empty string"
                      + (" or list of strings" if kind == "fingerprint" else ""))
            failed.append(_name(f))
            return default(list(addr), klogs)
        return value

    def _pairs(self, kind: str, hooks: list[Parser], addr: list[Any], klogs: str,
               failed: list[str]) -> list[tuple[str, Any]]:
        out = []
        for f in hooks:
            try:
                value = f(list(addr), klogs)
            except Exception as e:
                log.error("hook_failed", hook=_name(f), field=kind, host=addr[0], error=f"{type(e).__name__}: {e}")
                failed.append(_name(f))
                continue
            if value is None:
                continue
            if isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], str) and value[0]:
                out.append((value[0], value[1]))
            else:
                log.error("hook_bad_result", hook=_name(f), field=kind, host=addr[0],
                          why=f"returned {value!r:.80}, expected [name, value] or None")
                failed.append(_name(f))
        return out

    def keep(self, addr: list[Any], klogs: str) -> bool:
        """Run the check hook; a failing check keeps the report."""
        if self.check is None:
            return True
        try:
            return self.check(list(addr), klogs) is not None
        except Exception as e:
            log.error("hook_failed", hook=_name(self.check), field="check", host=addr[0],
                      error=f"{type(e).__name__}: {e}")
            return True

    def run(self, addr: list[Any], klogs: str) -> Parsed:
        failed: list[str] = []
        fp = self._one("fingerprint", self.fingerprint, addr, klogs, failed)
        parsed = Parsed(
            title=" ".join(str(self._one("title", self.title, addr, klogs, failed)).split())[:1000],
            user=str(self._one("user", self.user, addr, klogs, failed)),
            fingerprint=[fp] if isinstance(fp, str) else fp,
            message=str(self._one("message", self.message, addr, klogs, failed))[:MESSAGE_LIMIT + 192],
            failed=failed,
        )
        for name, value in self._pairs("tag", self.tags, addr, klogs, failed):
            parsed.tags[_clean_tag(name)[:32]] = _clean_tag(value)
        for name, value in self._pairs("extra", self.extras, addr, klogs, failed):
            parsed.extra[name] = value if isinstance(value, (str, int, float, bool)) or value is None else str(value)
        return parsed


def load_hook(spec: str, dirs: Sequence[str] = ()) -> Parser:
    """Import ``module:function``, its module looked for in ``dirs`` first (``hooks.dirs``),
    then on Python's path; raises ValueError naming what is missing and where it looked."""
    mod_name, _, func_name = spec.partition(":")
    for d in reversed(dirs):
        if d not in sys.path:
            sys.path.insert(0, d)  # kept: the module's own later imports find their siblings
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        where = ""
        if isinstance(e, ModuleNotFoundError) and e.name and mod_name.startswith(e.name):
            where = (f" (looked in {', '.join(dirs)} (hooks.dirs), then Python's path)" if dirs else
                     " (looked on Python's path; hooks.dirs in a config file adds directories)")
        raise ValueError(f"hook {spec!r}: cannot import module {mod_name!r}: {e}{where}") from None
    f = getattr(mod, func_name, None)
    if not callable(f):
        raise ValueError(f"hook {spec!r}: module {mod_name!r} has no function {func_name!r}")
    return f  # type: ignore[no-any-return]
