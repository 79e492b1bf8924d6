"""``kpr-omprog udp --workers N``: N receiving processes on one port, one supervisor.

Each worker is ``kpr-omprog udp`` itself (a fresh interpreter, started with the same
arguments and ``--worker K``): it binds the same addresses with ``SO_REUSEPORT`` and
keeps its journal, outbox and metrics in ``<state_dir>/shard-K``, as a shard under
rsyslog does (``kpr-omprog reports``/``status`` read them all). The kernel picks the
socket by a hash of the sender's address and port, so a host (netconsole sends from one
fixed port) reaches one worker, which assembles its reports whole.

The supervisor only starts, watches and stops: SIGTERM or SIGINT is passed to every
worker, which stops as ``kpr-omprog udp`` does (open reports stay in its journal); a
worker that has not stopped after ``STOP_GRACE`` s is killed. A worker that fails at
start (a port in use, a bad state directory) stops them all with its exit code; one
that dies later is started again after ``RESTART_DELAY`` s. While it is gone the kernel
hashes its hosts onto the others, and back when it returns: a report open across that
moment may be split in two.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from ..logs import get_logger

__all__ = ["MAX_WORKERS", "run_workers"]

log = get_logger()

#: more workers than this is a typo, not a machine
MAX_WORKERS = 64
#: a worker that exits with an error code sooner than this after its start failed at start:
#: everything stops (one killed by a signal is started again)
START_GRACE = 5.0
#: a worker that died later is started again after this long
RESTART_DELAY = 1.0
#: seconds a worker has to stop after SIGTERM before it is killed
STOP_GRACE = 30.0


def run_workers(argv: Sequence[str], workers: int) -> int:
    """Run ``kpr-omprog <argv> --worker K`` for K in 0..workers-1 until SIGTERM/SIGINT."""
    stop = {"signal": 0}

    def on_signal(signum: int, frame: object) -> None:
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def start(k: int) -> tuple[subprocess.Popen[bytes], float]:
        # stdout/stderr are the supervisor's: one log stream, each line names its pid
        return subprocess.Popen([sys.executable, "-m", "kpr_omprog.cli", *argv, "--worker", str(k)],
                                preexec_fn=_die_with_parent), time.monotonic()

    procs = {k: start(k) for k in range(workers)}
    log.info("udp_workers_started", workers=workers, pids=[p.pid for p, _ in procs.values()])
    restarts = 0
    code = 0
    try:
        while not stop["signal"]:
            time.sleep(0.1)
            if stop["signal"]:
                break  # a Ctrl-C reaches the workers too: their exits are not failures
            for k, (p, started) in list(procs.items()):
                rc = p.poll()
                if rc is None:
                    continue
                # A worker that could not start exits with its error's code (a port in use, a
                # bad state directory: 1 or 2); one killed by a signal died, whenever it was.
                if rc > 0 and time.monotonic() - started < START_GRACE:
                    log.error("udp_worker_failed_at_start", worker=k, pid=p.pid, exit_code=rc,
                              what_happens="every worker is stopped", fix="see the worker's error above")
                    code = rc or 1
                    return code
                restarts += 1
                log.error("udp_worker_died", worker=k, pid=p.pid, exit_code=rc, restarts=restarts,
                          what_happens=f"started again in {RESTART_DELAY:g} s; its hosts go to the others meanwhile")
                time.sleep(RESTART_DELAY)
                procs[k] = start(k)
    finally:
        for p, _ in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for k, (p, _) in procs.items():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("udp_worker_killed", worker=k, pid=p.pid, bound=f"{STOP_GRACE:g} s to stop")
                p.kill()
                p.wait()
        log.info("udp_workers_stopped", workers=workers, restarts=restarts, signal=stop["signal"] or None)
    return code



def _die_with_parent() -> None:
    """In the worker, before exec: SIGTERM when the supervisor dies, even by SIGKILL, so that
    no worker goes on holding the port and its state directory alone (Linux prctl)."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the supervisor's own stop still stops them
