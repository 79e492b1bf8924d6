"""omprog's lockstep without rsyslog: where the round trip goes, by CPU placement.

    python tests/benchmarks/bench_lockstep.py [--count 30000] [--rounds 3] [--noise 0.5]

``lockstep.c`` (built with the system compiler) plays rsyslog's part at C speed: it
writes one line of row 2's traffic (1,000 hosts, crash + noise, as the drop-in's
template renders it: ``received`` shared by 8 lines in a row, as one recvmmsg batch)
and waits for ``OK``. It drives the OK-only program and ``kpr-omprog omprog`` in turn,
three ways: unpinned (the scheduler places both), both pinned to one CPU, and pinned
to different CPUs. Prints microseconds per line (the whole round trip) per round, and
the medians. The pinned rows separate the program's own work (same CPU: the round trip
is the sum of both sides' work) from the cost of a wake-up on the other CPU. A fourth
placement, "one CPU + 1", pins the driver and kpr-omprog's reader to one CPU and its
processor to the other: the lockstep pays no wake-up across CPUs (as on a machine
whose idle CPUs wake fast), and the round trip is the reader's work beside the OK-only
program's. First it times the program's work a line after its OK in process, stage by
stage.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent.parent))
from common import HERE, PY
from sender import host_addr, schedule


def lines_file(path: str, count: int, noise: float = 0.5) -> None:
    t0 = time.time() - 60
    with open(path, "wb") as f:
        for i, (h, d) in enumerate(schedule(1000, count, noise)):
            at = t0 + (i // 8) * 1e-4
            received = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1e6):06d}+00:00"
            f.write(json.dumps({"ip": host_addr(h), "received": received,
                                "raw": d.decode("utf-8", "surrogateescape")}, ensure_ascii=False)
                    .encode("utf-8", "surrogateescape") + b"\n")


def stages(path: str) -> dict[str, float]:
    """The post-OK work of one line, in process (no pipes, no scheduler), us a line:
    the parse, Intake.feed without the assembler, the assembler, the journal write."""
    from dataclasses import replace

    from kpr_omprog.assembler import Assembler
    from kpr_omprog.config import load
    from kpr_omprog.logs import configure
    from kpr_omprog.runtime import Intake, open_journal, open_runtime, parsers_from_config
    from kpr_omprog.sources.omprog import parse_omprog_line

    configure("json", "error")
    lines = Path(path).read_bytes().splitlines()
    with tempfile.TemporaryDirectory() as state:
        cfg = replace(load(None), state_dir=state)
        store, delivery, pipeline = open_runtime(cfg, parsers_from_config(cfg))
        journal = open_journal(cfg)
        asm = Assembler(cfg.assembler)
        intake = Intake(pipeline, asm, journal, None, cfg.metrics_interval, resends=True)
        intake.recover(time.time())
        in_asm = 0.0
        feed = asm.feed

        def timed(*args: Any) -> Any:
            nonlocal in_asm
            t = time.perf_counter()
            try:
                return feed(*args)
            finally:
                in_asm += time.perf_counter() - t

        asm.feed = timed  # type: ignore[method-assign,assignment]
        parse = intake_all = flush = 0.0
        pc = time.perf_counter
        for line in lines:
            t0 = pc()
            data, ip, at = parse_omprog_line(line)
            t1 = pc()
            intake.feed(data, (ip, 0), at if at is not None else time.time(), time.time())
            t2 = pc()
            intake.flush()
            t3 = pc()
            parse, intake_all, flush = parse + t1 - t0, intake_all + t2 - t1, flush + t3 - t2
        if delivery is not None:
            delivery.stop(2.0)
        pipeline.close()
        store.close()
        journal.close()
    n = len(lines)
    return {"parse": 1e6 * parse / n, "intake without the assembler": 1e6 * (intake_all - in_asm) / n,
            "assembler": 1e6 * in_asm / n, "journal write": 1e6 * flush / n}


# kpr-omprog with its reader on one CPU and its processor (the process that forks the
# reader) moved to another right after the fork: argv[1] and argv[2] are the CPUs.
SPLIT_PINNED = """
import os, sys
reader_cpu, processor_cpu = int(sys.argv.pop(1)), int(sys.argv.pop(1))
os.sched_setaffinity(0, {reader_cpu})
fork = os.fork
def pinned_fork():
    pid = fork()
    if pid:
        os.sched_setaffinity(0, {processor_cpu})
    return pid
os.fork = pinned_fork
from kpr_omprog.cli import main
sys.exit(main())
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=30_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--noise", type=float, default=0.5,
                    help="the share of noise lines (0.5: row 2's traffic, a report per ~150 lines; 1: no crash)")
    a = ap.parse_args()
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("bench_lockstep: needs a C compiler (cc or gcc)")
    cpus = sorted(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        exe, lines = os.path.join(tmp, "lockstep"), os.path.join(tmp, "lines.jsonl")
        subprocess.run([cc, "-O2", "-o", exe, str(HERE / "lockstep.c")], check=True)
        lines_file(lines, a.count, a.noise)
        placements: dict[str, tuple[int | None, int | None]] = {"unpinned": (None, None)}
        if len(cpus) > 1:
            placements["one CPU"] = (cpus[-1], cpus[-1])
            placements["two CPUs"] = (cpus[0], cpus[-1])
            placements["one CPU + 1"] = (cpus[-1], cpus[-1])
        work: dict[str, list[float]] = {}
        for _ in range(a.rounds):
            for k, v in stages(lines).items():
                work.setdefault(k, []).append(v)
        print("the program's work a line after its OK, in process (us; min-max of rounds): " + ", ".join(
            f"{k} {min(v):.2f}-{max(v):.2f}" for k, v in work.items()), flush=True)
        results: dict[tuple[str, str], list[float]] = {}
        for r in range(a.rounds):
            for place, (cpu_driver, cpu_program) in placements.items():
                for name in ("OK-only", "kpr-omprog"):
                    state = tempfile.mkdtemp(dir=tmp)
                    program = ([PY, str(HERE / "ok_sink.py")] if name == "OK-only" else
                               [PY, "-m", "kpr_omprog.cli", "omprog", "--state-dir", state, "--log-format", "json"])
                    if place == "one CPU + 1" and name == "kpr-omprog":
                        program = [PY, "-c", SPLIT_PINNED, str(cpus[-1]), str(cpus[0]), *program[3:]]
                    elif cpu_program is not None:
                        program = ["taskset", "-c", str(cpu_program), *program]
                    cmd = [exe, lines, str(a.count), *program]
                    if cpu_driver is not None:
                        cmd = ["taskset", "-c", str(cpu_driver), *cmd]
                    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True,
                                         cwd=HERE.parent.parent)
                    us = float(json.loads(out.stdout)["us_per_line"])
                    results.setdefault((place, name), []).append(us)
                    print(f"  round {r + 1} {place:9s} {name:10s} {us:7.2f} us a line", flush=True)
    print(f"\nmedians of {a.rounds} rounds, {a.count:,} lines each (us a line, the whole round trip):")
    for place in placements:
        ok, ours = statistics.median(results[(place, "OK-only")]), statistics.median(results[(place, "kpr-omprog")])
        print(f"  {place:9s} OK-only {ok:7.2f}  kpr-omprog {ours:7.2f}  ratio of rates {100 * ok / ours:4.0f} %")


if __name__ == "__main__":
    main()
