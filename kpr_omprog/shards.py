"""Shards: several receivers on one machine, each with a state directory of its own.

Under rsyslog the sharded drop-in runs one ``kpr-omprog omprog --shard K`` per omprog
action; ``hash64mod(sender ip, N)`` picks the action, so every line of a host reaches
the same process. Shard K keeps its journal, in-flight file, outbox and metrics in
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

__all__ = ["MAX_SHARDS", "STORE_FILE", "shard_dir", "shard_metrics_file", "store_dirs"]

#: the outbox file in every state directory (the unsharded one and each shard's)
STORE_FILE = "kpr-omprog.sqlite3"
#: shards per machine: each is a process and an rsyslog action; more than the cores buys nothing
MAX_SHARDS = 64

_SHARD = re.compile(r"shard-(\d+)")


def shard_dir(state_dir: str, shard: int) -> str:
    """The state directory of shard ``shard`` below ``state_dir``."""
    return os.path.join(state_dir, f"shard-{shard}")


def shard_metrics_file(metrics_file: str, shard: int) -> str:
    """A configured metrics file, per shard (``kpr.prom`` -> ``kpr-shard-1.prom``), so that
    N processes do not overwrite one file."""
    stem, ext = os.path.splitext(metrics_file)
    return f"{stem}-shard-{shard}{ext}"


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
