"""The trivial omprog program of ceiling B: answers OK to every line and does nothing else.

On end of input it prints the same figures as ``kpr-omprog omprog`` does on stopping
(``lines``, ``busy_seconds``) as one JSON line on stderr.
"""

import json
import os
import signal
import sys
import time


def main() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # rsyslog closes stdin right after SIGTERM
    out = os.fdopen(1, "wb", buffering=0)
    out.write(b"OK\n")
    n = 0
    first = last = 0.0
    # readline, not iteration: iterating a buffered file waits for a full block, and
    # rsyslog sends the next line only after our OK.
    readline = sys.stdin.buffer.readline
    while readline():
        n += 1
        if n == 1:
            first = time.time()
        out.write(b"OK\n")
        last = time.time()
    sys.stderr.write(json.dumps({"event": "omprog_stopped", "lines": n, "busy_seconds": last - first,
                                 "first_line_at": first, "last_line_at": last}) + "\n")


if __name__ == "__main__":
    main()
