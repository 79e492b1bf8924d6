"""A fleet on one receiver: 1,000 / 10,000 / 100,000 sources, the same traffic from each.

    python tests/benchmarks/bench_fleet.py                       # about 2 minutes on 2 cores
    python tests/benchmarks/bench_fleet.py --sizes 1000,100000 --datagrams 200000

For each fleet size N, a warm-up (sent at 5,000/s, not measured): ten "crash hosts" print
twelve context lines each, every other host two noise lines (every second host classic,
the others extended, each with its own sequence), and the receiver writes its hosts table.
Then the measured part, ``--datagrams`` (300,000) at a paced ``--rate`` (20,000/s): the
other N - 10 hosts print noise round-robin, then the ten crash hosts, quiet all that time,
send a real oops (tests/data/lkdtm-BUG_classic_oopspanic). Sent by tests/benchmarks/csender.c
from N loopback sources (127.x.y.z; one socket, the source set per datagram with
IP_PKTINFO). The measured part also goes to a bare ``recvfrom`` loop, pinned to the same
core. Prints, per N: the receiver's RSS before and after (and MB per 1,000 hosts), CPU per
datagram of both (the scheduler's count), datagrams lost (the socket's drop counter), and
whether every crash report holds its host's last ten lines. Then, in this process, the
assembler's bytes per idle host by tracemalloc for the largest N.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench_udp import BARE_LOOP, cpu_seconds
from common import (
    PY,
    RECEIVER_CPU,
    SENDER_CPU,
    Row,
    csender,
    free_port,
    json_logs,
    kpr,
    rss_mb,
    udp_queue,
    wait_drained,
    wait_log,
)
from sender import crash_datagrams, host_addr, kernel_time

CRASH_HOSTS = 10
#: the warm-up (every host's first lines: a new record each, the hosts table written) is
#: sent at most this fast: its cost is once a host, not the steady state measured
WARM_RATE = 5_000
CONTEXT = 12  # lines each crash host prints before falling quiet; the report keeps the last 10


def crash_hosts(n: int) -> list[int]:
    return [i * (n // CRASH_HOSTS) for i in range(CRASH_HOSTS)]


def context_line(h: int, i: int) -> bytes:
    return b"mce: [Hardware Error]: fleet context line %d of host %d" % (i, h)


def plan(n: int, total: int) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
    """(warm-up, measured): in the warm-up the crash hosts print their context and every
    other host two noise lines (a fleet already running: each host known); then ``total``
    datagrams, noise round-robin, the crashes last."""
    crash = crash_datagrams()[3:]  # the capture's own context lines left out: ours are the context
    t0 = next(t for t in map(kernel_time, crash) if t is not None)
    crashers = crash_hosts(n)
    warm: list[tuple[int, bytes]] = []
    for i in range(CONTEXT):
        for h in crashers:
            warm.append((h, b"[%5d.%06d] %s\n" % (int(t0 - 1), i, context_line(h, i))))
    quiet = set(crashers)
    others = [h for h in range(n) if h not in quiet]
    seq = [0] * n

    def noise(out: list[tuple[int, bytes]], count: int) -> None:
        k = 0
        while k < count:
            for h in others:
                if k >= count:
                    break
                seq[h] += 1
                r = seq[h]
                if h % 2:
                    out.append((h, b"[%5d.%06d] e1000: eth0 NIC Link is Up 1000 Mbps Full Duplex, Flow Control: "
                                b"RX %d\n" % (10 + r, h % 1_000_000, r)))
                else:
                    out.append((h, b"6,%d,%d,-;audit: type=1400 audit(1700000000.123:%d): apparmor=\"DENIED\" "
                                b"operation=\"open\"\n" % (r, (10 + r) * 1_000_000 + h % 1_000_000, r)))
                k += 1

    noise(warm, 2 * len(others))
    main: list[tuple[int, bytes]] = []
    noise(main, total - len(crash) * CRASH_HOSTS)
    for d in crash:
        for h in crashers:
            main.append((h, d))
    return warm, main


def write_plan(path: str, items: list[tuple[int, bytes]]) -> None:
    with open(path, "wb") as f:
        for h, d in items:
            f.write(struct.pack("<IH", h, len(d)) + d)


def send(exe: str, port: int, rate: float, path: str, hosts: int, max_seconds: float) -> int:
    out = subprocess.run([exe, str(port), str(rate), str(max_seconds), path, str(hosts), str(SENDER_CPU), "pktinfo"],
                         capture_output=True, text=True, check=True, timeout=max_seconds + 60)
    return int(json.loads(out.stdout)["sent"])


def bare(exe: str, rate: float, path: str, hosts: int, max_seconds: float) -> tuple[float, int, int]:
    """CPU microseconds per datagram of a bare recvfrom loop (the measured part only: it
    keeps nothing a warm-up could prepare), datagrams sent and received."""
    port = free_port()
    p = subprocess.Popen([PY, "-c", BARE_LOOP % (RECEIVER_CPU, port)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        before = cpu_seconds(p.pid)
        sent = send(exe, port, rate, path, hosts, max_seconds)
        wait_drained(port)
        used = cpu_seconds(p.pid) - before
        p.send_signal(signal.SIGTERM)
        got = int(json.loads(p.stdout.readline())["datagrams"])
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(10)
    return used / max(got, 1) * 1e6, sent, got


def reports(db: Path) -> list[tuple[str, str]]:
    """(host, attachment text) of every stored report."""
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return [(h, bytes(a).decode(errors="replace")) for h, a in
                con.execute("SELECT host, attachment FROM reports WHERE attachment IS NOT NULL")]
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def stored_hosts(db: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return int(con.execute("SELECT COALESCE(SUM(n), 0) FROM host_minutes").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def ours(exe: str, rate: float, warm: str, path: str, n: int, max_seconds: float) -> dict[str, Any]:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "udp.log"
        # The hosts table is written within the warm-up (every second, 20,000 rows a step),
        # so the measured part is the steady state: each host written once per
        # assembler.heard_resolution (5 min), about one row per 75 datagrams at this load.
        conf = Path(tmp) / "config.toml"
        conf.write_text("[hosts]\nflush_interval = 1.0\nflush_batch = 20000\n")
        p = kpr("udp", "--listen", f"127.0.0.1:{port}", "--state-dir", tmp, "--config", str(conf), log=log)
        try:
            wait_log(log, "udp_started")
            db = Path(tmp) / "kpr-omprog.sqlite3"
            rss0 = rss_mb(p.pid)
            warm_sent = send(exe, port, min(rate, WARM_RATE), warm, n, max_seconds)
            wait_drained(port)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and stored_hosts(db) < n * 0.99:
                time.sleep(0.2)
            hosts_stored = stored_hosts(db)
            time.sleep(1.5)  # the last write step
            drops0 = udp_queue(port)[1]
            before = cpu_seconds(p.pid)
            sent = send(exe, port, rate, path, n, max_seconds)
            wait_drained(port)
            used = cpu_seconds(p.pid) - before
            dropped = udp_queue(port)[1] - drops0
            rss1 = rss_mb(p.pid)
            want = {host_addr(h) for h in crash_hosts(n)}
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not want <= {h for h, _ in reports(db)}:
                time.sleep(0.2)
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(120)
        stop = next(x for x in json_logs(log) if x["event"] == "udp_stopped")
        got = sent - dropped
        received_warm = int(stop["datagrams"]) - got
        stored = reports(db)
    by_host: dict[str, str] = {}
    for host, text in stored:
        by_host.setdefault(host, text)
    lost_context = 0
    for h in crash_hosts(n):
        text = by_host.get(host_addr(h), "")
        lost_context += sum(1 for i in range(CONTEXT - 10, CONTEXT) if context_line(h, i).decode() not in text)
    strays = sum(1 for host, _ in stored if host not in {host_addr(h) for h in crash_hosts(n)})
    return {"sent": sent, "got": got, "warm_lost": warm_sent - received_warm, "hosts_stored": hosts_stored,
            "cpu_us": used / max(got, 1) * 1e6, "rss0": rss0, "rss1": rss1,
            "reports": sum(1 for h in crash_hosts(n) if host_addr(h) in by_host), "lost_context": lost_context,
            "strays": strays}


def tracemalloc_bytes_per_host(n: int, items: list[tuple[int, bytes]]) -> float:
    """Bytes the assembler holds per host after ``items`` (noise only), by tracemalloc."""
    from kpr_omprog.assembler import Assembler

    asm = Assembler()
    addrs = [host_addr(h) for h in range(n)]
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        at = 1.0
        for h, d in items:
            at += 1e-5
            asm.feed(d, (addrs[h], 6666), at)
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    return used / asm.hosts


def run(sizes: tuple[int, ...] = (1_000, 10_000, 100_000), datagrams: int = 300_000, rate: float = 20_000) -> list[Row]:
    exe = csender()
    if exe is None:
        raise SystemExit("bench_fleet needs a C compiler (csender.c sends from 100,000 sources)")
    max_seconds = max(datagrams / rate, 2 * max(sizes) / min(rate, WARM_RATE)) * 2 + 10
    results: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            warm_items, items = plan(n, datagrams)
            warm, path = os.path.join(tmp, f"warm-{n}.bin"), os.path.join(tmp, f"fleet-{n}.bin")
            write_plan(warm, warm_items)
            write_plan(path, items)
            bare_us, bare_sent, bare_got = bare(exe, rate, path, n, max_seconds)
            r = ours(exe, rate, warm, path, n, max_seconds)
            r["bare_us"] = bare_us
            r["per_k"] = (r["rss1"] - r["rss0"]) / n * 1000
            results[n] = r
            print(f"  {n:>7,} hosts: RSS {r['rss0']:.0f} -> {r['rss1']:.0f} MB ({r['per_k']:.2f} MB per 1,000 hosts); "
                  f"CPU per datagram {r['cpu_us']:.1f} us (bare loop {bare_us:.1f} us, same schedule); "
                  f"{r['sent'] - r['got']:,} of {r['sent']:,} lost (bare loop {bare_sent - bare_got:,}; warm-up "
                  f"{r['warm_lost']:,}); hosts table {r['hosts_stored']:,} rows; "
                  f"crash reports {r['reports']}/{CRASH_HOSTS}, context lines lost {r['lost_context']}, "
                  f"other reports {r['strays']}", flush=True)
        big = max(sizes)
        warm_items, items = plan(big, datagrams)
        noise = [x for x in warm_items + items if x[0] not in set(crash_hosts(big))]
        per_host = tracemalloc_bytes_per_host(big, noise)
        print(f"  tracemalloc: the assembler holds {per_host:,.0f} bytes per idle host ({big:,} hosts, in process)")
    small, large = results[min(sizes)], results[big]
    ratio = large["cpu_us"] / small["cpu_us"]
    lost = sum(r["lost_context"] + (CRASH_HOSTS - r["reports"]) for r in results.values())
    return [
        Row(f"10. fleet: RSS with {big:,} hosts, every crash's context kept (`bench_fleet.py`)", large["rss1"], None,
            "MB", "<= 400 MB, no context lost", large["rss1"] <= 400 and lost == 0,
            f"{large['per_k'] * 1000 / 1024:,.2f} KiB per host by RSS, {per_host:,.0f} B by tracemalloc; "
            f"context lines lost: {lost}"),
        Row(f"10b. fleet: CPU per datagram, {big:,} hosts (ceiling: {min(sizes):,} hosts, same traffic)",
            large["cpu_us"], small["cpu_us"], "us", "<= 1.2 x", ratio <= 1.2,
            f"bare loop {large['bare_us']:.1f} / {small['bare_us']:.1f} us; {datagrams:,} datagrams at "
            f"{rate:,.0f}/s; lost {large['sent'] - large['got']:,} / {small['sent'] - small['got']:,}"),
    ]


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--datagrams", type=int, default=300_000)
    ap.add_argument("--rate", type=float, default=20_000)
    a = ap.parse_args()
    for row in run(tuple(int(x) for x in a.sizes.split(",")), a.datagrams, a.rate):
        print(row)
