"""Measure the three symbolizers on a real kernel debug file: start plus first answer,
answers per second once warm, and memory held (the figures in the README's
"Source lines in the stack" section).

    python tests/benchmarks/bench_symbolizers.py /usr/lib/debug/boot/vmlinux-6.1.0-57-amd64

binutils addr2line and llvm-symbolizer take addresses (symbol values from nm + offset);
eu-addr2line takes ``symbol+offset`` as the kernel prints it. Each tool reads addresses
on stdin, one process kept running, as the receiver runs it.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

FUNCS = ["proc_reg_write", "vfs_write", "ksys_write", "do_syscall_64", "entry_SYSCALL_64_after_hwframe",
         "tcp_sendmsg", "kmem_cache_alloc", "__schedule"]


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(x.split()[1]) * 1024 for x in f if x.startswith("VmRSS:"))


def ask(p: subprocess.Popen[bytes], query: str, until: bytes) -> float:
    t = time.monotonic()
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write(query.encode())
    p.stdin.flush()
    buf = b""
    fd = p.stdout.fileno()
    while until not in buf:
        select.select([fd], [], [], 120)
        chunk = os.read(fd, 65536)
        if not chunk:
            raise EOFError(buf.decode())
        buf += chunk
    return time.monotonic() - t


def main(path: str) -> None:
    syms = {}
    for line in subprocess.run(["nm", path], capture_output=True, text=True).stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] in FUNCS:
            syms[parts[2]] = int(parts[0], 16)
    offs = [(f, 0x20 + 7 * i) for i, f in enumerate(FUNCS) if f in syms]
    end = "0xffffffffffffffff"
    tools = {
        "eu-addr2line 0.188": (["eu-addr2line", "-a", "-f", "-i", "-e", path],
                               lambda f, o: f"{f}+{o:#x}\n{end}\n", b"??:0\n"),
        "addr2line (binutils 2.40)": (["addr2line", "-a", "-f", "-i", "-e", path],
                                      lambda f, o: f"{syms[f] + o:#x}\n{end}\n", b"??:0\n"),
        "llvm-symbolizer 14": (["llvm-symbolizer", "--inlining", "--functions=linkage", f"--obj={path}"],
                               lambda f, o: f"{syms[f] + o:#x}\n", b"\n\n"),
    }
    for name, (cmd, fmt, until) in tools.items():
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            first = ask(p, fmt(*offs[0]), until)
            first_total = time.monotonic() - t0
            times = [ask(p, fmt(f, o), until) for f, o in offs[1:]]
            again = [ask(p, fmt(f, o + 1), until) for f, o in offs]
            print(f"{name:28} first answer {first_total:6.2f} s (query {first:.2f} s), next {len(times)} new "
                  f"functions {sum(times) / len(times) * 1000:7.1f} ms each, warm {sum(again) / len(again) * 1000:6.2f}"
                  f" ms each, RSS {rss(p.pid) / 2**20:6.0f} MiB")
        finally:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main(sys.argv[1])
