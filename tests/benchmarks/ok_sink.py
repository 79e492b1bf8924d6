"""The trivial omprog program of ceiling B: answers OK to every line and does nothing else.

On end of input it prints the same figures as ``kpr-omprog omprog`` does on stopping
(``lines``, ``busy_seconds``) as one JSON line on stderr.

Its loop is the leanest Python can make it, the same reads and writes as kpr-omprog's
reader (``os.read`` of what is there, one ``os.write`` of ``OK`` a line), so that the
ratio to it measures what kpr-omprog adds, not a slower way of reading stdin.

With ``--spin`` it never sleeps: it polls stdin without blocking. On a VM whose idle
CPU is slow to wake (tens of microseconds), a program that sleeps between lines pays
that wake-up on every line, and a receiver kept busy (kpr-omprog's processor) does not;
the spinning sink is the ceiling without that cost.
"""

import json
import os
import signal
import sys
import time


def main() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # rsyslog closes stdin right after SIGTERM
    write, read = os.write, os.read
    write(1, b"OK\n")
    n = 0
    first = last = 0.0
    buf = b""
    spin = "--spin" in sys.argv
    if spin:
        os.set_blocking(0, False)
    while True:
        if b"\n" not in buf:
            try:
                chunk = read(0, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                break
            buf += chunk
            continue
        _, _, buf = buf.partition(b"\n")
        n += 1
        if n == 1:
            first = time.time()
        write(1, b"OK\n")
        last = time.time()
    sys.stderr.write(json.dumps({"event": "omprog_stopped", "lines": n, "busy_seconds": last - first,
                                 "first_line_at": first, "last_line_at": last}) + "\n")


if __name__ == "__main__":
    main()
