"""Shards: several receivers on one machine, each with a state directory of its own.

Under rsyslog the sharded drop-in runs one ``kpr-omprog omprog --shard K`` per omprog
action; ``hash64mod(sender ip, N)`` picks the action, so every line of a host reaches
the same process. Shard K keeps its journal, ring of answered lines, outbox and metrics in
``<state_dir>/shard-K``: each process holds its own directory's lock, and no two
processes ever write one SQLite file or hand out one outbox row (see README, "A
fleet"). ``kpr-omprog reports``, ``show`` and ``status`` read every shard's outbox::

    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> shard_dir(root, 1) == os.path.join(root, "shard-1")
    True
    >>> os.makedirs(shard_dir(root, 1)); open(os.path.join(shard_dir(root, 1), STORE_FILE), "w").close()
    >>> [os.path.basename(d) for d in store_dirs(root)]
    ['shard-1']
"""

from __future__ import annotations

import os
import re
import sqlite3

from .logs import get_logger

__all__ = ["MAX_SHARDS", "STORE_FILE", "adopt_unsharded", "shard_dir", "shard_metrics_file", "shard_of", "store_dirs"]

log = get_logger()

#: the outbox file in every state directory (the unsharded one and each shard's)
STORE_FILE = "kpr-omprog.sqlite3"
#: shards per machine: each is a process and an rsyslog action; more than the cores buys nothing
MAX_SHARDS = 64

_SHARD = re.compile(r"shard-(\d+)")
_SHARD_FILE = re.compile(r".*-shard-(\d+)(\.[^.]*)?")


def shard_dir(state_dir: str, shard: int) -> str:
    """The state directory of shard ``shard`` below ``state_dir``."""
    return os.path.join(state_dir, f"shard-{shard}")


def shard_metrics_file(metrics_file: str, shard: int) -> str:
    """A configured metrics file, per shard (``kpr.prom`` -> ``kpr-shard-1.prom``), so that
    N processes do not overwrite one file."""
    stem, ext = os.path.splitext(metrics_file)
    return f"{stem}-shard-{shard}{ext}"


def shard_of(metrics_file: str) -> str | None:
    """The shard a metrics file belongs to (in ``shard-K/``, or named as by
    :func:`shard_metrics_file`), or None.

    >>> shard_of("/var/lib/kpr-omprog/shard-2/metrics.prom"), shard_of("/t/kpr-shard-3.prom"), shard_of("/t/m.prom")
    ('2', '3', None)
    """
    m = _SHARD.fullmatch(os.path.basename(os.path.dirname(metrics_file))) or _SHARD_FILE.fullmatch(
        os.path.basename(metrics_file))
    return m.group(1) if m else None


def store_dirs(state_dir: str) -> list[str]:
    """Every directory below (and including) ``state_dir`` that holds an outbox: the
    unsharded one first, then the shards in order."""
    out = []
    if os.path.exists(os.path.join(state_dir, STORE_FILE)):
        out.append(state_dir)
    try:
        names = os.listdir(state_dir)
    except OSError:
        names = []
    shards = sorted((int(m.group(1)), n) for n in names if (m := _SHARD.fullmatch(n)))
    out.extend(os.path.join(state_dir, n) for _, n in shards
               if os.path.exists(os.path.join(state_dir, n, STORE_FILE)))
    return out


#: the rows a receiver still has to send or keep: what a shard takes over
_UNDELIVERED = "state IN ('pending', 'local', 'dead')"


def adopt_unsharded(state_dir: str, own_dir: str) -> int:
    """Move the unsharded outbox's undelivered reports into this shard's; how many.

    An install that goes from one receiver to shards would otherwise leave them where no
    receiver delivers them. Under the unsharded directory's lock: none runs there, and
    one shard at a time takes them. Inserted, then deleted: a crash in between leaves a
    copy in both, and Sentry drops the second (same event id). Open reports in the old
    journal are not taken (a host's lines now go to one shard; see README).
    """
    old_path = os.path.join(state_dir, STORE_FILE)
    if not os.path.exists(old_path):
        return 0
    from .store import Store, StoreError

    try:
        old = Store(old_path, exclusive=True)
    except StoreError as e:
        log.warning("unsharded_outbox_not_adopted", error=str(e), what_happens="retried at the next start")
        return 0
    try:
        own_path = os.path.join(own_dir, STORE_FILE)
        Store(own_path).close()  # the directory, the file and the schema
        db = sqlite3.connect(own_path, isolation_level=None, timeout=30)
        try:
            db.execute("ATTACH DATABASE ? AS old", (old_path,))
            db.execute("BEGIN IMMEDIATE")
            moved = db.execute(f"INSERT OR IGNORE INTO main.reports SELECT * FROM old.reports WHERE {_UNDELIVERED}"
                               ).rowcount
            db.execute(f"DELETE FROM old.reports WHERE {_UNDELIVERED}")
            db.execute("COMMIT")
        finally:
            db.close()
    finally:
        old.close()
    if moved:
        log.info("unsharded_reports_adopted", count=moved, source=old_path, into=own_path)
    return int(moved)
