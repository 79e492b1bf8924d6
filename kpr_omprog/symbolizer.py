"""Finding a kernel release's debug files on this host and keeping symbolizer processes.

The I/O half of symbolization (:mod:`kpr_omprog.symbolize` is the pure half). The
runtime calls :meth:`Symbolizer.symbolize` after a report has closed, once its event
is built and before it is stored; never per datagram. One ``eu-addr2line`` process per
debug file (``vmlinux`` or a module's ``.ko``), kept running for the next report, at
most ``symbols.max_processes`` of them (least recently used one stopped first), each
restarted once it holds more than ``symbols.max_memory_bytes``. A report waits at most
``symbols.time_limit`` seconds for answers; what has not come by then is left out (the
report goes out with the lines known so far, or none), and the late answers are read
and thrown away before that process is asked again.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .config import SymbolsConfig
from .crash import CrashInfo
from .logs import get_logger
from .symbolize import (
    SENTINEL,
    Site,
    SourceLine,
    apply,
    debug_dirs,
    module_names,
    parse_answer,
    sites,
    vmlinux_candidates,
)

__all__ = ["DebugFiles", "Symbolizer", "find_debug_files"]

log = get_logger()

#: module debug files indexed per release at most (a distribution kernel has about 4000)
MAX_INDEXED = 50000
#: releases whose debug files are remembered
MAX_RELEASES = 64
#: a release with no debug files is looked for again after this many seconds (installed later)
RECHECK_MISSING = 300.0


@dataclass
class DebugFiles:
    release: str
    vmlinux: str | None = None
    #: file name (``ext4.ko``, ``ext4.ko.debug``) -> path
    modules: dict[str, str] = field(default_factory=dict)
    looked_in: list[str] = field(default_factory=list)
    checked: float = 0.0

    @property
    def found(self) -> bool:
        return self.vmlinux is not None or bool(self.modules)

    def module(self, name: str) -> str | None:
        for candidate in module_names(name):
            path = self.modules.get(candidate)
            if path is not None:
                return path
        return None


def find_debug_files(release: str, cfg: SymbolsConfig) -> DebugFiles:
    """Look in the standard layouts and the configured directories (first found wins)."""
    files = DebugFiles(release, checked=time.monotonic())
    if not release or "/" in release or release in (".", ".."):
        return files
    for path in vmlinux_candidates(release, cfg.standard_root, cfg.dirs):
        files.looked_in.append(path)
        if os.path.isfile(path):
            files.vmlinux = path
            break
    for top in debug_dirs(release, cfg.standard_root, cfg.dirs):
        files.looked_in.append(top + "/")
        for dirpath, _dirnames, filenames in os.walk(top):
            for name in filenames:
                if name.endswith((".ko", ".ko.debug")) and name not in files.modules:
                    files.modules[name] = os.path.join(dirpath, name)
            if len(files.modules) >= MAX_INDEXED:
                break
    return files


class _Process:
    """One ``eu-addr2line`` reading ``symbol+offset`` lines for one debug file."""

    def __init__(self, tool: str, path: str) -> None:
        self.path = path
        self.proc = subprocess.Popen([tool, "-a", "-f", "-i", "-e", path], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self._out = self.proc.stdout.fileno()
        os.set_blocking(self._out, False)
        self._buf = b""
        self._lines: list[str] = []
        #: answers asked for and not read yet (late ones of an earlier report)
        self.pending = 0

    def _line(self, deadline: float) -> str | None:
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line, self._buf = self._buf[:nl], self._buf[nl + 1:]
                return line.decode("utf-8", "replace")
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self._out], [], [], left)
            if not ready:
                return None
            try:
                chunk = os.read(self._out, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                raise EOFError(f"symbolizer for {self.path} exited")
            self._buf += chunk

    def _answer(self, deadline: float) -> list[str] | None:
        """The next answer's lines (the sentinel's own answer consumed); None at the deadline."""
        while True:
            line = self._line(deadline)
            if line is None:
                return None
            if line == SENTINEL:
                # its "??" and "??:0" follow
                for _ in range(2):
                    if self._line(deadline) is None:
                        return None  # torn: this process is restarted by the caller
                self.pending -= 1
                lines, self._lines = self._lines, []
                return lines
            self._lines.append(line)

    def ask(self, queries: list[str], deadline: float) -> dict[str, list[str]]:
        """Answers to ``queries`` that came before ``deadline`` (all of them, normally)."""
        while self.pending:
            if self._answer(deadline) is None:
                return {}
        assert self.proc.stdin is not None
        self.proc.stdin.write("".join(f"{q}\n{SENTINEL}\n" for q in queries).encode())
        self.proc.stdin.flush()
        self.pending += len(queries)
        out: dict[str, list[str]] = {}
        for q in queries:
            lines = self._answer(deadline)
            if lines is None:
                break
            out[q] = lines
        return out

    def rss(self) -> int:
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


class Symbolizer:
    """Symbolizes events in place; keeps processes and the debug files found per release."""

    def __init__(self, cfg: SymbolsConfig) -> None:
        self.cfg = cfg
        self.tool = shutil.which(cfg.tool) or cfg.tool
        self._files: OrderedDict[str, DebugFiles] = OrderedDict()
        self._procs: OrderedDict[str, _Process] = OrderedDict()
        self._logged: set[str] = set()
        #: reports given at least one source line / reports that had none (no debug info,
        #: or none matched) / reports that reached the time limit
        self.hits = 0
        self.misses = 0
        self.timeouts = 0
        self._tool_missing_logged = False

    def files(self, release: str) -> DebugFiles:
        files = self._files.get(release)
        if files is None or (not files.found and time.monotonic() - files.checked > RECHECK_MISSING):
            files = find_debug_files(release, self.cfg)
            self._files[release] = files
            while len(self._files) > MAX_RELEASES:
                self._files.popitem(last=False)
        self._files.move_to_end(release)
        return files

    def _process(self, path: str) -> _Process:
        proc = self._procs.get(path)
        if proc is not None and proc.proc.poll() is not None:
            self._stop(path)
            proc = None
        if proc is None:
            while len(self._procs) >= self.cfg.max_processes:
                self._stop(next(iter(self._procs)))
            proc = self._procs[path] = _Process(self.tool, path)
        self._procs.move_to_end(path)
        return proc

    def _stop(self, path: str) -> None:
        proc = self._procs.pop(path, None)
        if proc is not None:
            proc.stop()

    def close(self) -> None:
        for path in list(self._procs):
            self._stop(path)

    @property
    def running(self) -> int:
        return len(self._procs)

    def symbolize(self, event: dict[str, Any], lines: list[str] | tuple[str, ...], info: CrashInfo,
                  release: str | None) -> str:
        """Add source lines to ``event``; returns ``hit``, ``miss``, ``timeout`` or ``skipped``
        (nothing to do: no release or no addresses in the text)."""
        if not release:
            return "skipped"
        frame_sites, guilty = sites(lines, info)
        frame_sites = frame_sites[:64]  # as many as the event has
        wanted = [s for s in (*frame_sites, guilty) if s is not None]
        if not wanted:
            return "skipped"
        files = self.files(release)
        if not files.found:
            self.misses += 1
            if release not in self._logged and len(self._logged) < 10000:
                self._logged.add(release)
                log.info("no_debug_info", release=release, looked_in=files.looked_in,
                         what_happens="reports of this release are sent with function names only",
                         fix=f"install linux-image-{release}-dbg (Debian, Ubuntu: -dbgsym) or kernel-debuginfo "
                             "(RHEL), or put its vmlinux and .ko files under a symbols.dirs directory")
            return "miss"
        by_file: dict[str, list[str]] = {}
        where: dict[Site, str] = {}
        for s in wanted:
            path = files.module(s.module) if s.module else files.vmlinux
            if path is not None:
                where[s] = path
                by_file.setdefault(path, [])
                if s.query not in by_file[path]:
                    by_file[path].append(s.query)
        deadline = time.monotonic() + self.cfg.time_limit
        answers: dict[tuple[str, str], list[SourceLine]] = {}
        late = False
        for path, queries in by_file.items():
            try:
                proc = self._process(path)
                got = proc.ask(queries, deadline)
            except (OSError, EOFError, ValueError) as e:
                self._stop(path)
                if not self._tool_missing_logged:
                    self._tool_missing_logged = True
                    log.error("symbolizer_failed", tool=self.tool, file=path, error=f"{type(e).__name__}: {e}",
                              fix="install elfutils (eu-addr2line), or set symbols.tool")
                continue
            if len(got) < len(queries):
                late = True
                if proc.pending > 1000:
                    self._stop(path)  # hopelessly behind: start afresh next time
            for q, ans in got.items():
                answers[(path, q)] = parse_answer(ans)
            if proc.rss() > self.cfg.max_memory_bytes:
                log.info("symbolizer_restarted", file=path, rss=proc.rss(), bound="symbols.max_memory_bytes")
                self._stop(path)

        def answer(s: Site | None) -> list[SourceLine]:
            if s is None or s not in where:
                return []
            return answers.get((where[s], s.query), [])

        used = {where[s] for s in wanted if s in where and answer(s)}
        hits = apply(event, [answer(s) for s in frame_sites], answer(guilty),
                     {("vmlinux" if p == files.vmlinux else os.path.basename(p)): p for p in sorted(used)})
        if late:
            self.timeouts += 1
            log.warning("symbolization_late", release=release, time_limit=self.cfg.time_limit,
                        bound="symbols.time_limit", what_happens="the report is sent with the lines known so far")
        if hits or answer(guilty):
            self.hits += 1
            return "timeout" if late else "hit"
        self.misses += 1
        return "timeout" if late else "miss"
