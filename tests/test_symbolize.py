"""Source lines from real debug information: tests/kmod/kprcrash.c, built with -g against
the headers of the kernel the live test boots (tests/run.sh builds it into
``$KPR_KMOD_DIR``), and the oops that module gave in that kernel under QEMU
(tests/data/kprcrash-NULL_ext_oopspanic.jsonl, captured from netconsole).

No QEMU here: the symbolizer reads the built ``.ko`` directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from kpr_omprog.assembler import Assembler, Report
from kpr_omprog.config import Config, SymbolsConfig
from kpr_omprog.hooks import Parsers
from kpr_omprog.runtime import Pipeline
from kpr_omprog.sources.replay import read_captures, replay
from kpr_omprog.store import Store
from kpr_omprog.symbolizer import Symbolizer
from tests.bugsink import Bugsink
from tests.qemu import KERNEL_DIR

DATA = Path(__file__).parent / "data"
SOURCE = Path(__file__).parent / "kmod" / "kprcrash.c"
RELEASE = "6.1.0-57-amd64"  # the kernel the capture came from


def _kmod_dir() -> Path:
    if os.environ.get("KPR_KMOD_DIR"):
        return Path(os.environ["KPR_KMOD_DIR"])
    release = KERNEL_DIR / "RELEASE"
    return Path.home() / ".cache" / "kpr-omprog-kmod" / (release.read_text().strip() if release.exists() else RELEASE)


#: where tests/run.sh built the module (for the kernel the live test boots)
KMOD_DIR = _kmod_dir()


def line_of(marker: str) -> int:
    return next(i for i, text in enumerate(SOURCE.read_text().splitlines(), 1) if marker in text)


@pytest.fixture(scope="module")
def kmod(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A symbols.dirs directory holding the built module as ``<release of the capture>/kprcrash.ko``.

    Built for another release than the capture's (Debian moved on), its code is the same
    unless the compiler or kernel changed it; if the lines below then differ, recapture
    tests/data/kprcrash-NULL_ext_oopspanic.jsonl with the live test's guest."""
    ko = KMOD_DIR / "kprcrash.ko"
    assert ko.exists(), f"{ko} missing: tests/run.sh builds tests/kmod against the kernel's headers package"
    root = tmp_path_factory.mktemp("debug")
    (root / RELEASE).mkdir()
    (root / RELEASE / "kprcrash.ko").symlink_to(ko)
    return root


def crash() -> Report:
    [r] = replay(read_captures([str(DATA / "kprcrash-NULL_ext_oopspanic.jsonl")]), Assembler())
    return r


def stored_event(tmp: Path, symbols: SymbolsConfig, report: Report) -> tuple[dict[str, Any], Pipeline]:
    store = Store(str(tmp / "state.sqlite3"))
    pipe = Pipeline(Config(symbols=symbols), Parsers(), store)
    try:
        assert pipe.handle(report, time.time())
        [row] = store.reports()
        event = store.report(row["event_id"])["event"]  # type: ignore[index]
        return event, pipe
    finally:
        pipe.close()
        store.close()


def frames(event: dict[str, Any]) -> list[dict[str, Any]]:
    return list(event["exception"]["values"][0]["stacktrace"]["frames"])


def with_debug(kmod: Path, **kw: Any) -> SymbolsConfig:
    # the configured directory: <dir>/<release>/kprcrash.ko; no distribution layout here
    return SymbolsConfig(dirs=(str(kmod),), standard_root="/nonexistent", **kw)


def test_module_frames_get_the_module_source_file_and_line(kmod: Path, tmp_path: Path) -> None:
    event, pipe = stored_event(tmp_path, with_debug(kmod), crash())
    by_fn = {f["raw_function"]: f for f in frames(event)}
    src = str(KMOD_DIR / "kprcrash.c")  # where the module was compiled
    # return addresses: the line of the call, as decode_stacktrace.sh shows it
    assert (by_fn["kpr_crash_outer.isra.0"]["abs_path"], by_fn["kpr_crash_outer.isra.0"]["lineno"]) == (
        src, line_of("KPR_CALL_LINE"))
    assert by_fn["kpr_write"]["lineno"] == line_of("kpr_crash_outer((int)len);")
    assert by_fn["kpr_write"]["filename"] == src
    # no debug file for vmlinux here: its frames keep their function names only
    assert "lineno" not in by_fn["vfs_write"] and by_fn["vfs_write"]["function"] == "vfs_write"
    # the guilty frame (RIP: kpr_crash_deep+0x1d) is the line inside the inlined helper
    assert event["tags"]["source"] == f"{src}:{line_of('KPR_FAULT_LINE')}"
    assert event["tags"]["source_file"] == src
    ctx = event["contexts"]["source"]
    assert ctx["function"] == "kpr_poke" and ctx["line"] == line_of("KPR_FAULT_LINE")
    assert ctx["stack"] == [f"kpr_poke {src}:{line_of('KPR_FAULT_LINE')} [inline]",
                            f"kpr_crash_deep {src}:{line_of('return kpr_poke(')}"]
    assert ctx["debug_files"] == {"kprcrash.ko": str(kmod / RELEASE / "kprcrash.ko")}
    # the RIP frame (innermost, not in the call trace) has its line, and the helper inlined
    # into it follows as a frame that is not in-app: the culprit stays the title's function
    assert [(f["function"], f.get("lineno"), f["in_app"]) for f in frames(event)[-2:]] == [
        ("kpr_crash_deep", line_of("return kpr_poke("), True), ("kpr_poke", line_of("KPR_FAULT_LINE"), False)]
    assert pipe.symbolizer is not None and (pipe.symbolizer.hits, pipe.symbolizer.misses) == (1, 0)
    assert pipe.symbolizer.running == 0  # close() stopped its process


def test_an_inlined_function_becomes_a_frame_after_its_caller(kmod: Path) -> None:
    # kpr_crash_deep+0x1d with the return-address rule off: the faulting instruction
    # inside kpr_poke, inlined into kpr_crash_deep; decode_stacktrace.sh prints both.
    from kpr_omprog.event import build_event
    from kpr_omprog.hooks import analyze_text

    r = crash()
    text = r.text.replace("kpr_crash_outer.isra.0+0xc/0x1a", "kpr_crash_deep+0x1e/0x29")
    r = replace(r, lines=tuple(text.split("\n")))
    assert r.text == text
    event, _ = build_event(r, Parsers().run([r.host, r.port], r.text))
    sy = Symbolizer(with_debug(kmod))
    try:
        assert sy.symbolize(event, r.text.split("\n"), analyze_text(r.text), RELEASE) == "hit"
    finally:
        sy.close()
    names = [(f["function"], f.get("lineno"), f.get("data")) for f in frames(event)]
    i = names.index(("kpr_crash_deep", line_of("return kpr_poke("), None))
    assert names[i + 1] == ("kpr_poke", line_of("KPR_FAULT_LINE"), {"inlined": True})


def test_the_same_crash_groups_the_same_with_and_without_debug_info(kmod: Path, tmp_path: Path,
                                                                      fresh_bugsink: Bugsink) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain, _ = stored_event(tmp_path / "a", SymbolsConfig(dirs=(), standard_root="/nonexistent"), crash())
    rich, _ = stored_event(tmp_path / "b", with_debug(kmod), replace(crash(), host="10.9.9.9"))
    assert "source" not in plain["tags"] and not any("lineno" in f for f in frames(plain))
    assert rich["tags"]["source"].endswith(f"kprcrash.c:{line_of('KPR_FAULT_LINE')}")
    assert rich["fingerprint"] == plain["fingerprint"]
    exc_p, exc_r = plain["exception"]["values"][0], rich["exception"]["values"][0]
    assert (exc_r["type"], exc_r["value"]) == (exc_p["type"], exc_p["value"])
    assert [f["raw_function"] for f in frames(rich) if not f.get("data")] == [f["raw_function"] for f in frames(plain)]
    # and Sentry's side: one issue for both
    from kpr_omprog.delivery import Delivery

    store = Store(str(tmp_path / "send.sqlite3"))
    try:
        for ev in (plain, rich):
            store.put(ev, b"log", host=ev["server_name"], title="t", level="fatal", created=time.time(),
                      now=time.time(), local=False)
        assert Delivery(store, fresh_bugsink.dsn).send_due() == 2
    finally:
        store.close()
    events = fresh_bugsink.wait_events(2)
    assert len({e["issue"] for e in events}) == 1
    got = {e["data"]["server_name"]: e["data"] for e in events}
    assert "source" in got["10.9.9.9"]["tags"] and "source" not in got["127.0.0.1"]["tags"]


def test_missing_debug_info_is_normal_and_said_once_per_release(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    script = (
        "import sys, time\n"
        "from kpr_omprog.logs import configure\n"
        "configure('json')\n"
        "from tests.test_symbolize import crash, stored_event\n"
        "from kpr_omprog.config import SymbolsConfig\n"
        "from dataclasses import replace\n"
        "from pathlib import Path\n"
        "cfg = SymbolsConfig(standard_root=sys.argv[1])\n"
        "for i in range(3):\n"
        "    (Path(sys.argv[1]) / str(i)).mkdir()\n"
        "    ev, pipe = stored_event(Path(sys.argv[1]) / str(i), cfg, replace(crash(), host=f'10.0.0.{i}'))\n"
        "    assert 'source' not in ev['tags'], ev['tags']\n"
        "    print(pipe.symbolizer.misses, pipe.symbolizer.hits)\n"
    )
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1", "0"] * 3  # each pipeline: one miss
    logs = [json.loads(x) for x in r.stderr.splitlines() if x.startswith("{")]
    assert not [x for x in logs if x["level"] in ("error", "warning")], logs
    said = [x for x in logs if x["event"] == "no_debug_info"]
    assert len(said) == 3 and said[0]["release"] == RELEASE  # once per release per pipeline (here: 3 pipelines)
    assert f"{tmp_path}/boot/vmlinux-{RELEASE}" in said[0]["looked_in"]


def test_one_pipeline_says_a_missing_release_once(tmp_path: Path) -> None:
    sy = Symbolizer(SymbolsConfig(standard_root=str(tmp_path)))
    from kpr_omprog.event import build_event
    from kpr_omprog.hooks import analyze_text

    r = crash()
    for _ in range(3):
        event, _ = build_event(r, Parsers().run([r.host, r.port], r.text))
        assert sy.symbolize(event, r.text.split("\n"), analyze_text(r.text), RELEASE) == "miss"
    assert sy.misses == 3 and sy._logged == {RELEASE}
    assert sy.running == 0  # nothing started for a release without debug files


def test_a_symbolizer_that_does_not_answer_costs_at_most_the_time_limit(kmod: Path, tmp_path: Path) -> None:
    # Stands in for a symbolizer still reading a huge vmlinux: it takes the queries and says nothing.
    slow = tmp_path / "slow-addr2line"
    slow.write_text("#!/bin/sh\nexec sleep 600\n")
    slow.chmod(0o755)
    t = time.monotonic()
    event, pipe = stored_event(tmp_path, with_debug(kmod, tool=str(slow), time_limit=0.5), crash())
    took = time.monotonic() - t
    assert took < 0.5 + 1.5, took
    assert "source" not in event["tags"] and not any("lineno" in f for f in frames(event))
    assert pipe.symbolizer is not None and pipe.symbolizer.timeouts == 1
    assert pipe.symbolizer.running == 0  # close() killed it


def test_symbols_command_says_which_releases_have_symbols(kmod: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    store = Store(str(state / "kpr-omprog.sqlite3"))
    pipe = Pipeline(Config(symbols=with_debug(kmod)), Parsers(), store)
    try:
        pipe.handle(crash(), time.time())
        other = crash()
        other = replace(other, host="10.1.1.1", kernel_release=other.kernel_release and "6.1.0-99-amd64",
                        lines=tuple(x.replace(RELEASE, "6.1.0-99-amd64") for x in other.lines))
        pipe.handle(other, time.time())
    finally:
        pipe.close()
        store.close()
    conf = tmp_path / "c.toml"
    conf.write_text(f'[symbols]\ndirs = ["{kmod}"]\nstandard_root = "/nonexistent"\n')
    cmd = [sys.executable, "-m", "kpr_omprog.cli", "symbols", "--config", str(conf), "--state-dir", str(state)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3, r.stdout
    other_line = next(x for x in lines if x.startswith("6.1.0-99-amd64 "))
    ours = next(x for x in lines if x.startswith(f"{RELEASE} "))
    assert "no symbols" in other_line and "with source lines: 0" in other_line
    assert "no symbols" not in ours and "module debug files: 1" in ours and "with source lines: 1" in ours
    assert "install linux-image-<release>-dbg" in lines[2]
    r = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=60)
    rows = {x["release"]: x for x in map(json.loads, r.stdout.splitlines())}
    assert rows[RELEASE]["has_symbols"] and not rows["6.1.0-99-amd64"]["has_symbols"]
