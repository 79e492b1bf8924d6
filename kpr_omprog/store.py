"""The state store: one SQLite database (WAL) in the state directory.

* ``reports``: the durable outbox. A finished report is written here before
  anything is sent, and its row leaves the ``pending`` state only when Sentry
  answered 2xx (``delivered``) or refused it for good (``dead``). Without a DSN
  reports stay ``local``. Each row names its route (``[[route]]`` label, ``default``
  for the top-level DSN) and the DSN it goes to. ``kpr-omprog reports`` lists this table.
* ``hosts``: every sender the receiver heard more than once (its coverage: first and
  last heard, datagrams, kernel release, formats, userdata tags, lines lost, the last
  test or heartbeat line, reports and the last one's title), written in batches and
  bounded (:meth:`Store.put_hosts`); ``host_minutes`` counts them by the minute they were
  last heard, so "heard in the last hour / day / week" and "silent" are sums over at most
  a week of minutes, never a pass over the hosts. ``kpr-omprog hosts`` lists them.
* ``journal``: where version 0.1 journaled the datagrams of open reports;
  now only read once, at start, to move them to the journal file
  (:mod:`kpr_omprog.journal`).

Every method is safe to call from several threads.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .logs import get_logger

__all__ = ["Outgoing", "Store", "StoreError", "StoreFull", "state_dir_holder"]

log = get_logger()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reports (
    event_id   TEXT PRIMARY KEY,
    created    REAL NOT NULL,
    host       TEXT NOT NULL,
    title      TEXT NOT NULL,
    level      TEXT NOT NULL,
    state      TEXT NOT NULL,            -- pending, delivered, dead, local
    event      BLOB,                     -- JSON; NULL once delivered
    attachment BLOB,
    size       INTEGER NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    next_try   REAL NOT NULL DEFAULT 0,
    trim       INTEGER NOT NULL DEFAULT 0,
    status     INTEGER,
    last_error TEXT,
    updated    REAL NOT NULL,
    route      TEXT NOT NULL DEFAULT 'default',  -- the [[route]] label (see routes.py)
    dsn        TEXT                      -- where it goes; NULL: the top-level DSN
);
CREATE INDEX IF NOT EXISTS reports_due ON reports(state, next_try);
CREATE TABLE IF NOT EXISTS journal (
    id    INTEGER PRIMARY KEY,
    key   TEXT NOT NULL,
    at    REAL NOT NULL,
    ip    TEXT NOT NULL,
    port  INTEGER NOT NULL,
    data  BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_key ON journal(key);
CREATE TABLE IF NOT EXISTS hosts (
    key         TEXT PRIMARY KEY,          -- the sender (ip, or ip:port with group_by = ip-port)
    ip          TEXT NOT NULL,
    first_heard REAL NOT NULL,
    last_heard  REAL NOT NULL,
    datagrams   INTEGER NOT NULL,
    release     TEXT,
    formats     INTEGER NOT NULL,          -- 1 classic, 2 extended, 3 both
    tags        TEXT NOT NULL,             -- JSON array of [key, value]: its netconsole userdata
    lost        INTEGER NOT NULL,          -- lines lost (gaps in its msgid sysdata)
    special     TEXT,                      -- the last test or heartbeat line
    special_at  REAL,
    reports     INTEGER NOT NULL,
    title       TEXT,                      -- of its last report
    crash_marks BLOB                       -- its last crash lines' marks (the assembler's), 8 bytes each
);
CREATE INDEX IF NOT EXISTS hosts_last_heard ON hosts(last_heard);
CREATE TABLE IF NOT EXISTS host_minutes (  -- hosts by the minute they were last heard (0: before a week)
    minute INTEGER PRIMARY KEY,
    n      INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS kernel_releases (  -- seen in reports, for `kpr-omprog symbols`
    release     TEXT PRIMARY KEY,
    first_seen  REAL NOT NULL,
    last_seen   REAL NOT NULL,
    reports     INTEGER NOT NULL,
    symbolized  INTEGER NOT NULL             -- reports that got source lines
);
"""

#: the bytes counted against disk_cap_bytes: every row that still holds its event
_HELD_BYTES = "SELECT COALESCE(SUM(size), 0) FROM reports WHERE state IN ('pending', 'local', 'dead')"
#: the columns `reports` and `report` return, in order
_ROW_KEYS = ("event_id", "created", "host", "title", "level", "state", "attempts", "status", "last_error", "updated",
             "route", "dsn")
#: the rows delivery may send (a NULL dsn is the top-level one, the second parameter), not
#: those of a DSN in the JSON array of the third (rate-limited or backing off)
_SENDABLE = ("state = 'pending' AND COALESCE(dsn, ?) IS NOT NULL AND COALESCE(dsn, ?) NOT IN "
             "(SELECT value FROM json_each(?))")

#: delivered rows kept for ``kpr-omprog reports``; older ones are pruned
KEEP_DELIVERED = 10000
#: the write-ahead log is checkpointed (and cut back) at disk_cap_bytes / WAL_SHARE (64 KiB to 4 MiB)
WAL_SHARE = 16
#: host_minutes keeps single minutes this far back; older ones are summed into minute 0
HOST_MINUTES = 7 * 24 * 60 + 60
#: the hosts table's columns, in order
HOST_KEYS = ("key", "ip", "first_heard", "last_heard", "datagrams", "release", "formats", "tags", "lost", "special",
             "special_at", "reports", "title")


_WRITABLE = "the state directory must be writable by this user"
#: how the command and its config set the state directory (what a StoreError says by default)
CLI_STATE_DIR = "state_dir in the config, or --state-dir"
#: how a library user sets it
LIBRARY_STATE_DIR = "KernelPanicReceiver(state_dir=...)"


class StoreFull(Exception):
    """The outbox reached its disk cap, or the disk is full."""


class StoreError(Exception):
    """The store cannot be opened; the message names the file, the cause and the fix.

    Where the fix is another state directory, how to set one depends on who runs it: the
    command's config and ``--state-dir``, or the library's ``state_dir=`` keyword
    (:meth:`explain`); ``str()`` is the command's."""

    def __init__(self, message: str, set_state_dir: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.set_state_dir = set_state_dir

    def explain(self, how: str = CLI_STATE_DIR) -> str:
        """The message, ending with ``how`` the state directory is set where that is the fix."""
        return f"{self.message} ({how})" if self.set_state_dir else self.message

    def __str__(self) -> str:
        return self.explain()


def state_dir_holder(folder: str) -> str | None:
    """The pid of the receiver holding ``folder`` (see :func:`lock_state_dir`), or None."""
    import fcntl

    path = os.path.join(folder, "lock")
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 20, 0).decode(errors="replace").strip() or "?"
    finally:
        os.close(fd)  # closing releases a lock taken just now
    return None


def make_state_dir(folder: str) -> None:
    if not os.path.isdir(folder):
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
        except PermissionError as e:
            raise StoreError(f"{folder}: cannot create ({e.strerror}): {_WRITABLE}", set_state_dir=True) from None


def lock_state_dir(folder: str, name: str = "lock", wait: float = 5.0) -> int:
    """One receiver per state directory: two would journal and replay each other's open
    reports. Waits a little for a predecessor that is still shutting down (rsyslog starts
    the next program about a second after the last one ended). The lock is the open file's:
    a child forked with it holds it too, until both have exited."""
    import fcntl

    path = os.path.join(folder, name)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except PermissionError as e:
        raise StoreError(f"{path}: cannot open ({e.strerror}): {_WRITABLE}", set_state_dir=True) from None
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                holder = os.pread(fd, 20, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise StoreError(f"{folder}: in use by another kpr-omprog receiver (pid {holder}); give this one a "
                                 "state directory of its own", set_state_dir=True) from None
            time.sleep(0.1)


@dataclass(frozen=True, slots=True)
class Outgoing:
    event_id: str
    event: dict[str, Any]
    attachment: bytes | None
    attempts: int
    trim: int
    created: float
    title: str
    host: str
    #: the route's label and the DSN to send to
    route: str = "default"
    dsn: str = ""


class Store:
    """The outbox. Rows that hold an event (pending, local, dead) count toward
    ``disk_cap_bytes``; dead-lettered ones are pruned, oldest first, once older than
    ``dead_retention`` seconds. Files are created 0600 in a 0700 directory."""

    def __init__(self, path: str, disk_cap_bytes: int = 1 << 30, dead_retention: float = 7 * 86400.0,
                 exclusive: bool = False) -> None:
        folder = os.path.dirname(os.path.abspath(path))
        make_state_dir(folder)
        self._lock_fd: int | None = None
        if exclusive:
            self._lock_fd = lock_state_dir(folder)
        self.path = path
        self.disk_cap_bytes = disk_cap_bytes
        self.dead_retention = dead_retention
        self._lock = threading.Lock()
        try:
            if not os.path.exists(path):
                # SQLite gives its -wal and -shm files the database file's mode.
                os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
            # The files, not only the rows, stay near disk_cap_bytes: a new store gives pages
            # freed by pruning back to the file system (prune_dead), and the write-ahead log is
            # checkpointed at 1/WAL_SHARE of the cap (4 MiB at most) and cut back to that. SQLite's
            # defaults (checkpoint every 1,000 pages, a log never cut) let a 1 MiB outbox whose
            # retries rewrite its rows take 4.9 MB.
            self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # a new, empty file only
            self._db.execute("PRAGMA journal_mode=WAL")
            wal = min(4 << 20, max(64 << 10, disk_cap_bytes // WAL_SHARE))  # 4 MiB: SQLite's own
            page = int(self._db.execute("PRAGMA page_size").fetchone()[0])
            self._db.execute(f"PRAGMA wal_autocheckpoint={max(16, wal // page)}")
            self._db.execute(f"PRAGMA journal_size_limit={wal}")
            # NORMAL in WAL mode survives a process crash (what kill -9 tests); FULL would
            # add an fsync per commit for power loss, at a cost per journaled line.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._migrate()
            self._pending_bytes = self._scalar(_HELD_BYTES)
        except PermissionError as e:
            self._unlock()
            raise StoreError(f"{path}: cannot open ({e.strerror}): {_WRITABLE}", set_state_dir=True) from None
        except sqlite3.DatabaseError as e:
            self._unlock()
            if "unable to open" in str(e) or "readonly" in str(e):
                raise StoreError(f"{path}: cannot open ({e}): {_WRITABLE}", set_state_dir=True) from None
            raise StoreError(f"{path}: not a usable kpr-omprog store ({e}): move it aside, and a new one is "
                             "created at the next start") from None
        self.prune_dead(time.time())

    def _migrate(self) -> None:
        """Stores from before [[route]]: their rows go to the top-level DSN (route ``default``);
        from before crash marks: the hosts table gets the column, empty."""
        if "crash_marks" not in {r[1] for r in self._db.execute("PRAGMA table_info(hosts)")}:
            self._db.execute("ALTER TABLE hosts ADD COLUMN crash_marks BLOB")
        # the few hosts with marks, read at every start, without a scan of a million rows
        self._db.execute("CREATE INDEX IF NOT EXISTS hosts_crash_marks ON hosts(last_heard) "
                         "WHERE crash_marks IS NOT NULL")
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(reports)")}
        if "route" not in columns:
            self._db.execute("ALTER TABLE reports ADD COLUMN route TEXT NOT NULL DEFAULT 'default'")
        if "dsn" not in columns:
            self._db.execute("ALTER TABLE reports ADD COLUMN dsn TEXT")

    def close(self) -> None:
        with self._lock:
            self._db.close()
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _scalar(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        with self._lock:
            return self._db.execute(sql, args).fetchone()[0]

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- outbox -------------------------------------------------------------------------

    def put(self, event: dict[str, Any], attachment: bytes, *, host: str, title: str, level: str,
            created: float, now: float, local: bool, route: str = "default", dsn: str | None = None) -> bool:
        """Store a report durably; False if it was already stored (same event id).

        ``route``: its label; ``dsn``: where it goes (None: the top-level DSN).

        Raises :class:`StoreFull` at the disk cap or when SQLite cannot write.
        """
        blob = json.dumps(event, ensure_ascii=False).encode()
        size = len(blob) + len(attachment)
        if self._pending_bytes + size > self.disk_cap_bytes:
            # At the cap: count again (another process, `kpr-omprog reports`, may have pruned)
            self.prune_dead(now)
            with self._lock:  # delivery threads change it too
                self._pending_bytes = self._db.execute(_HELD_BYTES).fetchone()[0]
        if self._pending_bytes + size > self.disk_cap_bytes:
            raise StoreFull(f"outbox holds {self._pending_bytes} bytes, cap is {self.disk_cap_bytes}")
        try:
            with self._tx() as db:
                cur = db.execute(
                    "INSERT OR IGNORE INTO reports (event_id, created, host, title, level, state, event, "
                    "attachment, size, next_try, updated, route, dsn) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (event["event_id"], created, host, title, level, "local" if local else "pending", blob,
                     attachment, size, now, now, route, dsn))
                inserted = cur.rowcount == 1
                if inserted:  # under the store's lock: delivery threads change it too
                    self._pending_bytes += size
                    release = event.get("contexts", {}).get("os", {}).get("kernel_version")
                    if release and release != "unknown":
                        sym = 1 if "source" in event.get("contexts", {}) else 0
                        db.execute("INSERT INTO kernel_releases VALUES (?,?,?,1,?) ON CONFLICT(release) DO UPDATE "
                                   "SET last_seen = MAX(last_seen, excluded.last_seen), reports = reports + 1, "
                                   "symbolized = symbolized + excluded.symbolized", (release, created, created, sym))
        except sqlite3.OperationalError as e:
            raise StoreFull(f"cannot write {self.path}: {e}") from None
        return inserted

    def due(self, now: float, limit: int, exclude: set[str] | frozenset[str] = frozenset(),
            default_dsn: str | None = None, skip_dsns: Iterable[str] = ()) -> list[Outgoing]:
        """Pending rows due by ``now``, oldest first: not the event ids in ``exclude`` (in
        flight), nor rows of a DSN in ``skip_dsns``; a row without a DSN goes to ``default_dsn``
        (skipped if that is None)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT event_id, event, attachment, attempts, trim, created, title, host, route, "
                f"COALESCE(dsn, ?) FROM reports WHERE {_SENDABLE} AND next_try <= ? ORDER BY next_try, created "
                "LIMIT ?", (default_dsn, *self._sendable(default_dsn, skip_dsns), now,
                            limit + len(exclude))).fetchall()
        out = [Outgoing(r[0], json.loads(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9]) for r in rows
               if r[0] not in exclude]
        return out[:limit]

    @staticmethod
    def _sendable(default_dsn: str | None, skip_dsns: Iterable[str]) -> tuple[Any, ...]:
        return default_dsn, default_dsn, json.dumps(sorted(skip_dsns))

    def next_due(self, default_dsn: str | None = None, skip_dsns: Iterable[str] = ()) -> float | None:
        """When the next row :meth:`due` would give is due (None: there is none)."""
        value = self._scalar(f"SELECT MIN(next_try) FROM reports WHERE {_SENDABLE}",
                             self._sendable(default_dsn, skip_dsns))
        return None if value is None else float(value)

    def delivered(self, event_id: str, status: int, now: float) -> None:
        with self._tx() as db:
            size = db.execute("SELECT size FROM reports WHERE event_id = ? AND state = 'pending'",
                              (event_id,)).fetchone()
            db.execute("UPDATE reports SET state = 'delivered', event = NULL, attachment = NULL, status = ?, "
                       "updated = ?, last_error = NULL WHERE event_id = ?", (status, now, event_id))
            db.execute("DELETE FROM reports WHERE state = 'delivered' AND event_id NOT IN (SELECT event_id FROM "
                       "reports WHERE state = 'delivered' ORDER BY updated DESC LIMIT ?)", (KEEP_DELIVERED,))
            if size:
                self._pending_bytes -= size[0]

    def retry(self, event_id: str, next_try: float, error: str, now: float, trim: int | None = None) -> None:
        with self._tx() as db:
            db.execute("UPDATE reports SET attempts = attempts + 1, next_try = ?, last_error = ?, updated = ?, "
                       "trim = COALESCE(?, trim) WHERE event_id = ?", (next_try, error[:500], now, trim, event_id))

    def dead(self, event_id: str, status: int | None, error: str, now: float) -> None:
        # The row keeps its event (for `kpr-omprog show`) and its bytes still count toward
        # the cap until prune_dead removes it.
        with self._tx() as db:
            db.execute("UPDATE reports SET state = 'dead', status = ?, last_error = ?, updated = ?, "
                       "attempts = attempts + 1 WHERE event_id = ?", (status, error[:500], now, event_id))

    def prune_dead(self, now: float) -> int:
        """Remove dead-lettered rows older than ``dead_retention``, oldest first; how many."""
        with self._tx() as db:
            rows = db.execute("SELECT event_id, size FROM reports WHERE state = 'dead' AND updated < ? "
                              "ORDER BY updated", (now - self.dead_retention,)).fetchall()
            db.executemany("DELETE FROM reports WHERE event_id = ?", [(r[0],) for r in rows])
            self._pending_bytes -= sum(r[1] for r in rows)
        if rows:
            with self._lock:  # the freed pages back to the file system (a store made with auto_vacuum)
                self._db.execute("PRAGMA incremental_vacuum")
            log.warning("dead_reports_pruned", count=len(rows), bytes=sum(r[1] for r in rows),
                        bound="delivery.dead_retention")
        return len(rows)

    def apply_routes(self, dsns: Mapping[str, str | None], now: float) -> tuple[int, int]:
        """At start: waiting reports of each route in ``dsns`` (label -> its DSN now, None:
        local only) follow the config. Reports kept locally become pending when their route
        has a DSN now, pending ones local when it has none, and pending ones whose route's
        DSN changed (a typo fixed, a key rotated) go to the new one at once. Rows of a route
        not in ``dsns`` keep the DSN they had. Returns (made pending, made local)."""
        released = held = 0
        with self._tx() as db:
            for route, dsn in dsns.items():
                if dsn:
                    released += db.execute("UPDATE reports SET state = 'pending', dsn = ?, next_try = ?, updated = ? "
                                           "WHERE route = ? AND state = 'local'", (dsn, now, now, route)).rowcount
                    db.execute("UPDATE reports SET dsn = ?, next_try = ? WHERE route = ? AND state = 'pending' "
                               "AND dsn IS NOT ?", (dsn, now, route, dsn))
                else:
                    held += db.execute("UPDATE reports SET state = 'local', updated = ? WHERE route = ? "
                                       "AND state = 'pending'", (now, route)).rowcount
        return released, held

    def reports(self, limit: int = 100, host: str | None = None, since: float | None = None,
                title: str | None = None, hosts: Callable[[str], bool] | None = None) -> list[dict[str, Any]]:
        """The newest reports first; ``title`` matches a part of the title, ``hosts`` is a
        test a row's host must pass (an address or a network, see ``kpr-omprog reports``)."""
        return [r for _, r in self._select(limit, host, since, title, hosts, None)]

    def newer_reports(self, after: int, limit: int = 1000) -> list[tuple[int, dict[str, Any]]]:
        """(rowid, row) of the reports stored after the row ``after`` (0: all), in the order
        they were stored: what ``kpr-omprog reports --follow`` prints next."""
        return self._select(limit, None, None, None, None, after)

    def last_rowid(self) -> int:
        """The rowid of the report stored last (0: none), where ``--follow`` starts."""
        return int(self._scalar("SELECT COALESCE(MAX(rowid), 0) FROM reports"))

    def _select(self, limit: int, host: str | None, since: float | None, title: str | None,
                hosts: Callable[[str], bool] | None, after: int | None) -> list[tuple[int, dict[str, Any]]]:
        where: list[str] = []
        args: list[Any] = []
        if host:
            where.append("host = ?")
            args.append(host)
        if since is not None:
            where.append("created >= ?")
            args.append(since)
        if title:
            where.append("instr(title, ?) > 0")
            args.append(title)
        if after is not None:
            where.append("rowid > ?")
            args.append(after)
        sql = (f"SELECT rowid, {', '.join(_ROW_KEYS)} FROM reports" + (" WHERE " + " AND ".join(where) if where else "")
               + (" ORDER BY rowid" if after is not None else " ORDER BY created DESC"))
        out: list[tuple[int, dict[str, Any]]] = []
        with self._lock:
            # a host test runs here, row by row, so that the limit counts the rows that pass it
            for r in self._db.execute(sql, args):
                if hosts is not None and not hosts(r[1 + _ROW_KEYS.index("host")]):
                    continue
                out.append((r[0], dict(zip(_ROW_KEYS, r[1:], strict=True))))
                if len(out) >= limit:
                    break
        return out

    def report(self, event_id: str) -> dict[str, Any] | None:
        """One report by its event id (or a unique prefix of it): its row, the event and the
        full log. The event and log are gone once delivered (Sentry has them)."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(_ROW_KEYS)}, event, attachment FROM reports WHERE substr(event_id, 1, ?) = ? "
                "LIMIT 2", (len(event_id), event_id)).fetchall()
        if len(rows) != 1:
            return None
        r = rows[0]
        n = len(_ROW_KEYS)
        out = dict(zip(_ROW_KEYS, r[:n], strict=True))
        out["event"] = json.loads(r[n]) if r[n] else None
        out["log"] = bytes(r[n + 1]).decode("utf-8", "replace") if r[n + 1] is not None else None
        return out

    def kernel_releases(self) -> list[dict[str, Any]]:
        """The kernel releases of the reports stored so far, newest first."""
        keys = ("release", "first_seen", "last_seen", "reports", "symbolized")
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(keys)} FROM kernel_releases ORDER BY last_seen DESC").fetchall()
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def oldest(self, state: str) -> float | None:
        """When the oldest row in ``state`` was created (None if there is none)."""
        value = self._scalar("SELECT MIN(created) FROM reports WHERE state = ?", (state,))
        return None if value is None else float(value)

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM reports GROUP BY state").fetchall()
        return {state: n for state, n in rows}

    @property
    def pending_bytes(self) -> int:
        return int(self._pending_bytes)

    # -- hosts --------------------------------------------------------------------------

    def crash_marks(self, limit: int) -> list[tuple[str, bytes]]:
        """The hosts' crash marks kept here, most recently heard first (for the assembler at a start)."""
        with self._lock:
            return [(str(k), bytes(b)) for k, b in self._db.execute(
                "SELECT key, crash_marks FROM hosts WHERE crash_marks IS NOT NULL ORDER BY last_heard DESC LIMIT ?",
                (limit,))]

    def put_hosts(self, records: Iterable[Any], now: float, max_rows: int, new_cap: int) -> tuple[int, int, int]:
        """Write a batch of :class:`kpr_omprog.coverage.HostRecord` (their counters are what
        was added since the last write) in one transaction; returns (written, new hosts not
        admitted, hosts dropped).

        New hosts are added while the table has room; once it is full (``max_rows``), at
        most ``new_cap`` a batch, each dropping the least recently heard host (the rest wait
        for their next line): a flood of spoofed senders cannot turn the table over faster
        than that. O(batch)."""
        recs = list(records)
        if not recs:
            return 0, 0, 0
        cutoff = int(now // 60) - HOST_MINUTES
        with self._tx() as db:
            room = max_rows - db.execute("SELECT COALESCE(SUM(n), 0) FROM host_minutes").fetchone()[0]
            old: dict[str, float] = {}
            keys = [r.key for r in recs]
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                old.update(db.execute(f"SELECT key, last_heard FROM hosts WHERE key IN ({','.join('?' * len(chunk))})",
                                      chunk).fetchall())
            added = deferred = 0
            minutes: dict[int, int] = {}
            for r in recs:
                was = old.get(r.key)
                if was is None:
                    if added >= room + new_cap:
                        deferred += 1
                        continue
                    added += 1
                else:
                    m = int(was // 60)
                    m = m if m >= cutoff else 0
                    minutes[m] = minutes.get(m, 0) - 1
                m = int(max(r.last_heard, was or 0.0) // 60)
                m = m if m >= cutoff else 0
                minutes[m] = minutes.get(m, 0) + 1
                db.execute(
                    "INSERT INTO hosts (key, ip, first_heard, last_heard, datagrams, release, formats, tags, lost, "
                    "special, special_at, reports, title, crash_marks) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET ip = excluded.ip, "
                    "first_heard = MIN(first_heard, excluded.first_heard), "
                    "last_heard = MAX(last_heard, excluded.last_heard), datagrams = datagrams + excluded.datagrams, "
                    "release = COALESCE(excluded.release, release), formats = formats | excluded.formats, "
                    "tags = CASE WHEN excluded.tags = '[]' THEN tags ELSE excluded.tags END, "
                    "lost = lost + excluded.lost, special = COALESCE(excluded.special, special), "
                    "special_at = COALESCE(excluded.special_at, special_at), reports = reports + excluded.reports, "
                    "title = COALESCE(excluded.title, title), "
                    "crash_marks = COALESCE(excluded.crash_marks, crash_marks)",
                    (r.key, r.ip, r.first_heard, r.last_heard, r.datagrams, r.release, r.formats,
                     json.dumps([list(t) for t in r.tags]), r.lost, r.special, r.special_at, r.reports, r.title,
                     getattr(r, "crash_marks", b"") or None))
            self._add_minutes(db, minutes)
            # Minutes older than a week fold into minute 0: the table stays a week of minutes.
            folded = db.execute("SELECT COALESCE(SUM(n), 0) FROM host_minutes WHERE minute > 0 AND minute < ?",
                                (cutoff,)).fetchone()[0]
            if folded:
                db.execute("DELETE FROM host_minutes WHERE minute > 0 AND minute < ?", (cutoff,))
                self._add_minutes(db, {0: folded})
            total = db.execute("SELECT COALESCE(SUM(n), 0) FROM host_minutes").fetchone()[0]
            dropped = 0
            if total > max_rows:
                gone = db.execute("SELECT key, last_heard FROM hosts ORDER BY last_heard LIMIT ?",
                                  (total - max_rows,)).fetchall()
                minutes = {}
                for _, heard in gone:
                    m = int(heard // 60)
                    m = m if m >= cutoff else 0
                    minutes[m] = minutes.get(m, 0) - 1
                db.executemany("DELETE FROM hosts WHERE key = ?", [(k,) for k, _ in gone])
                self._add_minutes(db, minutes)
                dropped = len(gone)
        return len(recs) - deferred, deferred, dropped

    @staticmethod
    def _add_minutes(db: sqlite3.Connection, minutes: dict[int, int]) -> None:
        db.executemany("INSERT INTO host_minutes (minute, n) VALUES (?, ?) ON CONFLICT(minute) DO UPDATE SET "
                       "n = n + excluded.n", [(m, n) for m, n in minutes.items() if n])

    def host_counts(self, now: float, silent_after: float) -> dict[str, int]:
        """Hosts heard in the last hour, day and week, silent (not heard within
        ``silent_after``, at most a week) and all: sums over at most a week of minutes."""
        minute = int(now // 60)
        with self._lock:
            rows = self._db.execute("SELECT minute, n FROM host_minutes").fetchall()

        def since(seconds: float) -> int:
            first = minute - int(seconds // 60)
            return sum(n for m, n in rows if m > 0 and m >= first)
        total = sum(n for _, n in rows)
        return {"hosts_stored": total, "hosts_heard_hour": since(3600), "hosts_heard_day": since(86400),
                "hosts_heard_week": since(7 * 86400), "hosts_silent": total - since(min(silent_after, 7 * 86400.0))}

    def hosts(self, silent: float | None = None, release: str | None = None, tag: tuple[str, str] | None = None,
              now: float | None = None, limit: int = 100_000) -> list[dict[str, Any]]:
        """Hosts, most recently heard first. ``silent``: only those not heard within that
        many seconds; ``release``: only that kernel release; ``tag``: only those with that
        userdata entry."""
        where: list[str] = []
        args: list[Any] = []
        if silent is not None:
            where.append("last_heard < ?")
            args.append((time.time() if now is None else now) - silent)
        if release is not None:
            where.append("release = ?")
            args.append(release)
        if tag is not None:
            where.append("EXISTS (SELECT 1 FROM json_each(hosts.tags) WHERE json_extract(value, '$[0]') = ? "
                         "AND json_extract(value, '$[1]') = ?)")
            args.extend(tag)
        sql = (f"SELECT {', '.join(HOST_KEYS)} FROM hosts" + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY last_heard DESC LIMIT ?")
        with self._lock:
            rows = self._db.execute(sql, (*args, limit)).fetchall()
        out = []
        for r in rows:
            d = dict(zip(HOST_KEYS, r, strict=True))
            d["tags"] = {k: v for k, v in json.loads(d["tags"])}
            out.append(d)
        return out

    # -- legacy journal -----------------------------------------------------------------

    def legacy_journal_take(self) -> list[tuple[str, float, str, int, bytes]]:
        """Rows journaled here by versions before the journal file; they are removed."""
        with self._tx() as db:
            rows = [(r[0], r[1], r[2], r[3], bytes(r[4])) for r in
                    db.execute("SELECT key, at, ip, port, data FROM journal ORDER BY id")]
            if rows:
                db.execute("DELETE FROM journal")
        return rows
