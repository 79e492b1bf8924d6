"""Every benchmark, one table: each figure beside its ceiling measured in the same run.

    python tests/benchmarks/run_all.py            # several minutes on 2 cores
    python tests/benchmarks/run_all.py --only udp,latency

Needs what tests/run.sh installs (rsyslogd, Bugsink). Absolute numbers depend on the
machine; the ratios to the ceilings are what to compare. The load generator is
Python too and pinned to the other core, so a ceiling may be sender-bound (said so).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent.parent))

import bench_assembler
import bench_fleet
import bench_hostile
import bench_latency
import bench_memory
import bench_rsyslog
import bench_shards
import bench_storm
import bench_udp
from common import Row, machine_speed

BENCHES = {
    "udp": bench_udp.run,
    "workers": bench_udp.run_workers,
    "rsyslog": bench_rsyslog.run,
    "shards": bench_shards.run,
    "assembler": bench_assembler.rows,
    "latency": bench_latency.run,
    "memory": bench_memory.run,
    "fleet": bench_fleet.run,
    "storm": bench_storm.run,
    "hostile": bench_hostile.run,
}


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    return f"{v:,.3f}" if unit == "s" else f"{v:,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="", help="comma-separated subset of: " + ", ".join(BENCHES))
    names = [n for n in ap.parse_args().only.split(",") if n] or list(BENCHES)
    rows: list[Row] = []
    started = time.monotonic()
    speed = machine_speed()
    print(f"machine: a bare Python recvfrom loop drains {speed:,.0f} datagrams/s on one core", flush=True)
    for name in names:
        print(f"== {name}", flush=True)
        rows.extend(BENCHES[name]())  # type: ignore[operator]
    after = machine_speed()
    print(f"\nkpr-omprog benchmarks, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"{time.monotonic() - started:.0f} s; machine speed (a bare recvfrom loop draining its socket "
          f"buffer, one core): {speed:,.0f} datagrams/s before, {after:,.0f} after. Scale the figures by it.\n")
    print("| benchmark | kpr-omprog | ceiling (same run) | ratio | unit | target | met | note |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        met = "-" if r.met is None else ("yes" if r.met else "**no**")
        print(f"| {r.name} | {fmt(r.ours, r.unit)} | {fmt(r.ceiling, r.unit)} | {r.ratio} | {r.unit} | {r.target} "
              f"| {met} | {r.note} |")


if __name__ == "__main__":
    main()
