"""The durable spool (opt-in, `spool_path`): encoded records survive a crash until Langfuse took them.

Promises:
- The worker adds a batch of records in one transaction before their first send and removes
  them once Langfuse accepted them (or refused them for good). A process killed with `kill -9`
  therefore loses at most what was still in the in-memory queue, not yet encoded by the worker.
- Records are stored with the stream's name, their wire format (`ingestion` or `otel`) and their
  owner. A stream that starts with the same spool re-sends the records of its own name that no
  living process owns. Records of the other wire format (the server was upgraded in between) are
  counted as dropped, never sent to an endpoint that cannot read them.
- Owners: every `Spool` (and every forked child's) takes a fresh owner token and holds an
  exclusive `flock` on the file `<spool_path>.owners/<token>` for as long as it lives. The kernel
  drops that lock when the process dies, however it dies, so a record whose owner's lock can be
  taken is an orphan: the taker claims it (in one transaction, holding the dead owner's lock, so
  two takers never both claim it) and re-sends it. A living process's records are never taken: two
  processes sharing a spool never send each other's records, and a gunicorn `--preload` worker
  killed with `kill -9` has its records re-sent by the worker that replaces it. Without `fcntl`
  (Windows) there are no owners: a stream takes every record of its name found at start.
- SQLite in WAL mode, one connection per worker thread, all closed when the stream releases the
  spool (none stays open on the caller's thread); a spool that cannot be written is
  logged once and delivery goes on without it (the spool never stops the stream).
"""

from __future__ import annotations

import itertools
import logging
import os
import sqlite3
import threading
from typing import Any, List, Optional, Sequence, Tuple

try:
    import fcntl
except ImportError:  # Windows: no owners
    fcntl = None  # type: ignore[assignment]

from ..errors import ConfigError
from .records import OPEN_WIRE, Record

__all__ = ["Spool"]

log = logging.getLogger(__name__)

_SLOT = "\x1f"  # a row's key: the record's key, this separator, then the writer's owner and a count

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    stream TEXT NOT NULL,
    key TEXT NOT NULL,
    wire TEXT NOT NULL,
    data BLOB NOT NULL,
    weight INTEGER NOT NULL,
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    owner TEXT NOT NULL DEFAULT '',
    UNIQUE (stream, key)
);
"""


def _has_owners(db: sqlite3.Connection) -> bool:
    return "owner" in {row[1] for row in db.execute("PRAGMA table_info(spool)")}


def _lock(path: str) -> Optional[int]:
    """An fd holding the exclusive lock on `path`, or None when a living process holds it (or
    when the file is another user's: whether its owner lives cannot be told, so it is left alone)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except PermissionError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def foreign_tables(db: sqlite3.Connection, ours: "frozenset[str]") -> List[str]:
    """The tables of another program's database, sorted: those `db` holds when none of them is
    one of `ours` (SQLite's own aside); else none. The spool and the receiver's store never
    write into such a database."""
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    tables.discard("sqlite_sequence")
    return sorted(tables) if tables and not tables & ours else []


class Spool:
    """A SQLite table of records not yet accepted by Langfuse, per stream."""

    def __init__(self, path: str, stream: str = "langfuse") -> None:
        self.path = os.fspath(path)
        self.stream = stream
        self._local = threading.local()
        self._broken = False
        self._pid = os.getpid()
        self.owner = ""
        self._owner_fd: Optional[int] = None
        self._slots = itertools.count()
        self._release_lock = threading.Lock()
        if self.path == ":memory:" or not self.path.strip():
            raise ConfigError(f"must be a file path (a spool in memory would not survive a crash), got {self.path!r}",
                              stream=stream, key="spool_path")
        self._conns: List[sqlite3.Connection] = []  # every thread's, closed by release()
        self._generation = 0
        try:
            self._refuse_foreign()
            self._db()  # fail early, on the caller's thread, for a path that cannot be opened
            self._take_owner()
        except (sqlite3.Error, OSError) as exc:
            self._close_all()
            raise ConfigError(f"cannot be opened as a spool: {self.path} ({exc})", stream=stream, key="spool_path") from None
        self._close_all()  # the worker's threads open their own: none stays open on the caller's

    def _refuse_foreign(self) -> None:
        """A database that holds tables, none of them a spool, is another program's (a path
        mistyped, or the receiver's): no table of ours, and no WAL mode, is ever put into it."""
        db = sqlite3.connect(self.path, timeout=5.0)
        try:
            others = foreign_tables(db, frozenset({"spool"}))
        finally:
            db.close()
        if others:
            raise ConfigError(f"{self.path} is another program's database (it holds {', '.join(others)}), "
                              "not a spool", stream=self.stream, key="spool_path")

    def _owners(self) -> str:
        return self.path + ".owners"

    def _take_owner(self) -> None:
        if fcntl is None:
            return
        os.makedirs(self._owners(), exist_ok=True)
        token = f"{os.getpid()}-{os.urandom(6).hex()}"
        fd = _lock(os.path.join(self._owners(), token))
        if fd is None:  # cannot happen for a fresh token; be explicit rather than share one
            raise OSError(f"the owner lock {token} is held by another process")
        self.owner, self._owner_fd = token, fd

    def release(self) -> None:
        """Give the records left here to the next start (the stream has shut down; called by the
        worker's last thread). Idempotent and thread-safe."""
        with self._release_lock:
            fd, self._owner_fd = self._owner_fd, None
        if fd is not None:
            os.close(fd)
        self._close_all()

    def _close_all(self) -> None:
        """Close the connections the threads opened (the threads are done with them)."""
        with self._release_lock:
            conns, self._conns = self._conns, []
            self._generation += 1  # a thread that comes back opens a new one
        for db in conns:
            try:
                db.close()
            except sqlite3.Error:
                pass

    def __repr__(self) -> str:
        return f"Spool({self.path!r}, stream={self.stream!r})"

    def _db(self) -> sqlite3.Connection:
        db, generation = getattr(self._local, "db", (None, -1))
        if db is None or self._pid != os.getpid() or generation != self._generation:
            self._pid = os.getpid()
            db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
            with self._release_lock:
                self._conns.append(db)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            if not _has_owners(db):  # a spool from 0.x
                try:
                    db.execute("ALTER TABLE spool ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
                except sqlite3.OperationalError:  # another process added it first
                    if not _has_owners(db):
                        raise
            self._local.db = (db, self._generation)
        return db

    def _write(self, what: str, sql: str, rows: Sequence[Tuple[Any, ...]]) -> None:
        if self._broken or not rows:
            return
        try:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(sql, rows)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self._broken = True
            log.error("spool %s: cannot %s (%s); going on without the spool", self.path, what, exc)

    def add(self, records: Sequence[Record], wire: str) -> None:
        """Each record in a row of its own (its `slot`): two records with one key (an item the host
        replayed, a span sent again) are two rows, each removed when it is done, and counted."""
        for record in records:
            if record.slot is None:
                record.slot = f"{record.key}{_SLOT}{self.owner}.{next(self._slots)}"
        self._write(
            "add records",
            "INSERT OR REPLACE INTO spool (stream, key, wire, data, weight, owner) VALUES (?, ?, ?, ?, ?, ?)",
            [(self.stream, r.slot, wire, r.data, r.weight, self.owner) for r in records],
        )

    def remove(self, records: Sequence[Record]) -> None:
        self._write("remove records", "DELETE FROM spool WHERE stream = ? AND key = ?",
                    [(self.stream, r.slot) for r in records if r.slot is not None])

    def load(self, wire: str, also: Sequence[str] = ()) -> Tuple[List[Record], int]:
        """Claims the orphans of this stream (records whose owner is dead); returns those of this
        wire format (and of the formats in `also`), each marked with its own, in their original
        order, and the count of the others, removed."""
        try:
            db = self._db()
            self._claim(db)
            rows = db.execute(
                "SELECT key, wire, data, weight FROM spool WHERE stream = ? AND owner = ? ORDER BY seq",
                (self.stream, self.owner),
            ).fetchall()
        except (sqlite3.Error, OSError) as exc:
            self._broken = True
            log.error("spool %s: cannot read (%s); going on without the spool", self.path, exc)
            return [], 0
        # (a row written before slots holds the record's key alone)
        keep = [Record(slot.rpartition(_SLOT)[0] or slot, bytes(data), weight, slot=slot, wire=w)
                for slot, w, data, weight in rows if w == wire or w in also]
        other = [Record(slot, b"", weight, slot=slot) for slot, w, _, weight in rows if w != wire and w not in also]
        if other:
            self.remove(other)
        return keep, sum(r.weight for r in other)

    def _claim(self, db: sqlite3.Connection) -> None:
        """Make every record of this stream whose owner is dead ours, and remove dead owners' lock
        files (a missing lock file means a dead owner too: a clean exit, or a spool from 0.x)."""
        if fcntl is None:
            db.execute("UPDATE spool SET owner = ? WHERE stream = ?", (self.owner, self.stream))
            return
        owners = {row[0] for row in db.execute("SELECT DISTINCT owner FROM spool WHERE stream = ?", (self.stream,))}
        try:
            files = set(os.listdir(self._owners()))
        except FileNotFoundError:
            files = set()
        for owner in sorted((owners | files) - {self.owner}):
            path = os.path.join(self._owners(), owner)
            fd = _lock(path) if owner in files else -1
            if fd is None:
                continue  # alive
            try:
                if owner in owners:
                    db.execute(
                        "UPDATE spool SET owner = ? WHERE stream = ? AND owner = ?", (self.owner, self.stream, owner)
                    )
                if fd >= 0:
                    os.unlink(path)
            except FileNotFoundError:
                pass
            finally:
                if fd >= 0:
                    os.close(fd)

    def count(self) -> int:
        """The records waiting to be sent (not the state of observations left open: `OPEN_WIRE`)."""
        return int(self._db().execute("SELECT count(*) FROM spool WHERE stream = ? AND wire != ?",
                                      (self.stream, OPEN_WIRE)).fetchone()[0])

    def forked(self) -> "Spool":
        """The spool for a forked child: the same file under an owner of its own. The child's copy
        of the parent's lock is closed (never unlocked: that would release the parent's lock), so
        the parent's records stay the parent's, and the child's outlive it if it is killed."""
        if self._owner_fd is not None:
            os.close(self._owner_fd)
            self._owner_fd = None
        if fcntl is None:
            return _NoSpool()
        try:
            return Spool(self.path, self.stream)
        except Exception as exc:  # in a fork hook: never leave the child writing under the parent's owner
            log.error("stream %r: the forked child goes on without the spool: %s", self.stream, exc)
            return _NoSpool()  # type: ignore[return-value]


class _NoSpool:
    """A forked child's spool where owners cannot be told apart (no `fcntl`), or the file cannot
    be opened: the child must not take the parent's records, so it goes without."""

    def add(self, records: Sequence[Record], wire: str) -> None:
        pass

    def remove(self, records: Sequence[Record]) -> None:
        pass

    def load(self, wire: str, also: Sequence[str] = ()) -> Tuple[List[Record], int]:
        return [], 0

    def count(self) -> int:
        return 0

    def release(self) -> None:
        pass

    def forked(self) -> "_NoSpool":
        return self
