"""The durable spool (opt-in, `spool_path`): encoded records survive a crash until Langfuse took them.

Promises:
- The worker adds a batch of records in one transaction before their first send and removes
  them once Langfuse accepted them (or refused them for good). A process killed with `kill -9`
  therefore loses at most what was still in the in-memory queue, not yet encoded by the worker.
- Records are stored with the stream's name and their wire format (`ingestion` or `otel`); a
  stream that starts with the same spool re-sends the records of its own name. Records of the
  other wire format (the server was upgraded in between) are counted as dropped, never sent to an
  endpoint that cannot read them.
- SQLite in WAL mode, one short-lived connection per thread; a spool that cannot be written is
  logged once and delivery goes on without it (the spool never stops the stream).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from typing import List, Sequence, Tuple

from .errors import ConfigError
from .transport import Record

__all__ = ["Spool"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    stream TEXT NOT NULL,
    key TEXT NOT NULL,
    wire TEXT NOT NULL,
    data BLOB NOT NULL,
    weight INTEGER NOT NULL,
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    UNIQUE (stream, key)
);
"""


class Spool:
    """A SQLite table of records not yet accepted by Langfuse, per stream."""

    def __init__(self, path: str, stream: str = "langfuse") -> None:
        self.path = os.fspath(path)
        self.stream = stream
        self._local = threading.local()
        self._broken = False
        self._pid = os.getpid()
        try:
            self._db()  # fail early, on the caller's thread, for a path that cannot be opened
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot be opened as a spool: {self.path} ({exc})", stream=stream, key="spool_path") from None

    def __repr__(self) -> str:
        return f"Spool({self.path!r}, stream={self.stream!r})"

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None or self._pid != os.getpid():
            self._pid = os.getpid()
            db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            self._local.db = db
        return db

    def _write(self, what: str, sql: str, rows: Sequence[Tuple]) -> None:
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
        self._write(
            "add records",
            "INSERT OR REPLACE INTO spool (stream, key, wire, data, weight) VALUES (?, ?, ?, ?, ?)",
            [(self.stream, r.key, wire, r.data, r.weight) for r in records],
        )

    def remove(self, keys: Sequence[str]) -> None:
        self._write("remove records", "DELETE FROM spool WHERE stream = ? AND key = ?", [(self.stream, k) for k in keys])

    def load(self, wire: str) -> Tuple[List[Record], int]:
        """(records of this stream and wire format in their original order, count of others removed)."""
        try:
            db = self._db()
            rows = db.execute(
                "SELECT key, wire, data, weight FROM spool WHERE stream = ? ORDER BY seq", (self.stream,)
            ).fetchall()
        except sqlite3.Error as exc:
            self._broken = True
            log.error("spool %s: cannot read (%s); going on without the spool", self.path, exc)
            return [], 0
        keep = [Record(key, bytes(data), weight) for key, w, data, weight in rows if w == wire]
        other = [(key, weight) for key, w, _, weight in rows if w != wire]
        if other:
            self.remove([key for key, _ in other])
        return keep, sum(weight for _, weight in other)

    def count(self) -> int:
        return int(self._db().execute("SELECT count(*) FROM spool WHERE stream = ?", (self.stream,)).fetchone()[0])

    def detached(self) -> "Spool":
        """The spool for a forked child: the parent keeps the file; the child starts without one."""
        return _NoSpool()  # type: ignore[return-value]


class _NoSpool:
    """What a forked child gets: two processes must not re-send each other's records."""

    def add(self, records: Sequence[Record], wire: str) -> None:
        pass

    def remove(self, keys: Sequence[str]) -> None:
        pass

    def load(self, wire: str) -> Tuple[List[Record], int]:
        return [], 0

    def count(self) -> int:
        return 0

    def detached(self) -> "_NoSpool":
        return self
