"""Shards' outboxes: one SQLite file (WAL) written by N processes, or one file each.

    python tests/benchmarks/bench_outbox.py [--writers 2] [--reports 2000]

Each writer process stores ``--reports`` reports (a 4 KiB log and its event, the size
of a typical oops) with the store's own ``put`` (one transaction each, as the receiver
does), all writers at once. Printed: reports/s over all writers, and the slowest single
``put`` (a writer waiting for another's lock). The receiver writes one row per report,
not per line, so either layout is far above any crash rate; the figures show what
sharing costs.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent.parent))
from kpr_omprog.store import Store


def writer(path: str, n: int, start: float, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    store = Store(path)
    log = os.urandom(2048).hex().encode()
    while time.time() < start:
        time.sleep(0.001)
    worst = 0.0
    t0 = time.perf_counter()
    for i in range(n):
        event = {"event_id": uuid.uuid4().hex, "message": f"report {i}", "tags": {"host": "10.0.0.1"}}
        t = time.perf_counter()
        store.put(event, log, host="10.0.0.1", title="kernel BUG in x", level="fatal", created=time.time(),
                  now=time.time(), local=True)
        worst = max(worst, time.perf_counter() - t)
    out.put((time.perf_counter() - t0, worst))
    store.close()


def trial(writers: int, reports: int, shared: bool) -> tuple[float, float]:
    """(reports/s over all writers, slowest put in seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        q: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
        start = time.time() + 0.5
        paths = [os.path.join(tmp, "" if shared else f"shard-{k}", "kpr-omprog.sqlite3") for k in range(writers)]
        procs = [multiprocessing.Process(target=writer, args=(path, reports, start, q)) for path in paths]
        for p in procs:
            p.start()
        results = [q.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(30)
        span = max(r[0] for r in results)
        return writers * reports / span, max(r[1] for r in results)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--writers", type=int, default=2)
    ap.add_argument("--reports", type=int, default=2000)
    a = ap.parse_args()
    print(f"cores: {os.cpu_count()}")
    for name, writers, shared in (("1 writer, 1 file", 1, False),
                                  (f"{a.writers} writers, 1 shared file (WAL)", a.writers, True),
                                  (f"{a.writers} writers, 1 file each", a.writers, False)):
        rate, worst = trial(writers, a.reports, shared)
        print(f"  {name}: {rate:,.0f} reports/s, slowest put {worst * 1000:.1f} ms")


if __name__ == "__main__":
    main()
