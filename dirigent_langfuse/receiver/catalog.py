"""The receiver's catalog: one indexed row per trace, so that its pages list 100,000 traces a
page at a time without merging the whole log.

Promises:
- Every log row carries its trace's id (`log.trace`, indexed), so a trace is merged from its own
  rows alone, exactly as the whole store merges it (Langfuse merges each body on its own).
- A write only marks its traces stale (one indexed upsert per trace of the request): the
  receiver stays cheap to write to. A read brings the stale rows up to date first, a chunk at a
  time, so writers wait at most one chunk.
- Pages go by keyset over (timestamp, id), newest first: no OFFSET, so page 2,000 costs what
  page 1 does. A filter by session or user uses its own index; the text filter scans the
  ordering index, which carries the `search` text (never the wide rows).
- A page is read with no stale row left: the last chunk is brought up to date under the same
  hold of the store's lock as the query.
- Not thread-safe: the store calls it holding its lock.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import attrs

from .traces import summary

__all__ = ["SCHEMA", "TABLES", "Page", "prepare", "traces_of_items", "mark", "stale", "update", "page", "session"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS catalog (
    id TEXT PRIMARY KEY,
    stale INTEGER NOT NULL DEFAULT 1,
    ts TEXT NOT NULL DEFAULT '',
    session TEXT,
    user TEXT,
    search TEXT NOT NULL DEFAULT '',
    summary TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS catalog_order ON catalog (ts, id, search);
CREATE INDEX IF NOT EXISTS catalog_session ON catalog (session, ts, id);
CREATE INDEX IF NOT EXISTS catalog_user ON catalog (user, ts, id);
CREATE INDEX IF NOT EXISTS catalog_stale ON catalog (stale) WHERE stale = 1;
CREATE TABLE IF NOT EXISTS owners (
    observation TEXT PRIMARY KEY,
    trace TEXT NOT NULL
);
"""
TABLES = frozenset({"catalog", "owners"})
_VERSION = 1  # `PRAGMA user_version` once every log row has its trace (an earlier version's database gets them)
_OBSERVATION_KINDS = frozenset({
    "span-create", "span-update", "generation-create", "generation-update", "event-create",
    "observation-create", "observation-update",
})


def prepare(db: sqlite3.Connection, read: Callable[[str, Any], Dict[str, Any]]) -> None:
    """The catalog's tables, and `log.trace` (given to the rows of an earlier version's log)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(log)")}
    if "trace" not in columns:
        db.execute("ALTER TABLE log ADD COLUMN trace TEXT")
    db.executescript(SCHEMA)
    db.execute("CREATE INDEX IF NOT EXISTS log_trace ON log (trace, seq)")
    if db.execute("PRAGMA user_version").fetchone()[0] >= _VERSION:
        return
    rows = db.execute("SELECT seq, key, kind, json FROM log WHERE trace IS NULL ORDER BY seq").fetchall()
    found: List[Tuple[str, int]] = []
    for seq, key, kind, text in rows:
        trace = key.split(":")[1] if key.startswith("span:") else traces_of_items(db, [read(kind, text)])[0]
        if trace is not None:
            found.append((trace, seq))
    db.executemany("UPDATE log SET trace = ? WHERE seq = ?", found)
    mark(db, (trace for trace, _ in found))
    db.execute(f"PRAGMA user_version = {_VERSION}")


def traces_of_items(db: sqlite3.Connection, items: Sequence[Dict[str, Any]]) -> List[Optional[str]]:
    """The trace each ingestion item belongs to, as the store merges it: a trace's own id; the
    trace an observation's body names, or, for an update that names none, its observation's trace
    seen before (None when there is none: the item is on no page)."""
    traces: List[Optional[str]] = []
    owners: List[Tuple[str, str]] = []
    for item in items:
        body: Dict[str, Any] = item["body"] if isinstance(item.get("body"), dict) else {}
        kind = item.get("type")
        trace: Any = None
        if kind == "trace-create":
            trace = body.get("id") or item.get("id")
        elif kind in _OBSERVATION_KINDS:
            obs = body.get("id") or item.get("id")
            trace = body.get("traceId")
            if isinstance(trace, str) and trace:
                if isinstance(obs, str):
                    owners.append((obs, trace))
            elif isinstance(obs, str):
                known = db.execute("SELECT trace FROM owners WHERE observation = ?", (obs,)).fetchone()
                trace = known[0] if known else None
                if known is None:  # (its create may be in this very request)
                    trace = next((t for o, t in owners if o == obs), None)
        traces.append(trace if isinstance(trace, str) else None)
    db.executemany("INSERT OR IGNORE INTO owners (observation, trace) VALUES (?, ?)", owners)
    return traces


def mark(db: sqlite3.Connection, traces: Iterable[str]) -> None:
    """These traces changed: their rows are brought up to date at the next read."""
    db.executemany(
        "INSERT INTO catalog (id, stale) VALUES (?, 1) ON CONFLICT(id) DO UPDATE SET stale = 1",
        [(trace,) for trace in set(traces)],
    )


def stale(db: sqlite3.Connection, limit: int) -> List[str]:
    return [row[0] for row in db.execute("SELECT id FROM catalog WHERE stale = 1 LIMIT ?", (limit,))]


def update(db: sqlite3.Connection, trace_id: str, merged: Optional[Tuple[Dict[str, Any], List[Dict[str, Any]]]]) -> None:
    """A stale row brought up to date from its trace merged (None: nothing of it is left to show)."""
    if merged is None:
        db.execute("DELETE FROM catalog WHERE id = ?", (trace_id,))
        return
    line = summary(*merged)
    search = " ".join(str(v) for v in (line["id"], line["name"], line["sessionId"], line["userId"], *line["tags"]) if v)
    db.execute(
        "UPDATE catalog SET stale = 0, ts = ?, session = ?, user = ?, search = ?, summary = ? WHERE id = ?",
        (line["timestamp"] or "", line["sessionId"], line["userId"], search.lower(),
         json.dumps(line, separators=(",", ":")), trace_id),
    )


@attrs.frozen
class Page:
    """A page of the trace list, newest first (`lines`: their summaries), the cursors of its
    neighbours (None at an end), and how many traces the filters match."""

    lines: List[Dict[str, Any]]
    newer: Optional[str]
    older: Optional[str]
    total: int


def _cursor(row: Sequence[Any]) -> str:
    return f"{row[0]}|{row[1]}"


def _position(cursor: str) -> Tuple[str, str]:
    """(timestamp, id) of a cursor; ValueError for one this catalog did not write."""
    ts, sep, trace = cursor.partition("|")
    if not sep or not trace:
        raise ValueError(f"not a page cursor: {cursor!r}")
    return ts, trace


def page(
    db: sqlite3.Connection, limit: int, before: Optional[str] = None, after: Optional[str] = None,
    text: str = "", session: Optional[str] = None, user: Optional[str] = None,
) -> Page:
    """Up to `limit` traces older than `before` (or newer than `after`; else the newest), with
    the filters given, none of them stale. ValueError for a cursor that is not one."""
    where = ["1"]
    args: List[Any] = []
    if session is not None:
        where.append("session = ?")
        args.append(session)
    if user is not None:
        where.append("user = ?")
        args.append(user)
    if text:
        escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append("search LIKE ? ESCAPE '\\'")
        args.append(f"%{escaped}%")
    filters = " AND ".join(where)
    total = db.execute(f"SELECT COUNT(*) FROM catalog WHERE {filters}", args).fetchone()[0]
    if after is not None:
        rows = db.execute(
            f"SELECT ts, id, summary FROM catalog WHERE {filters} AND (ts, id) > (?, ?) ORDER BY ts, id LIMIT ?",
            [*args, *_position(after), limit + 1],
        ).fetchall()
        more_newer = len(rows) > limit
        rows = rows[:limit][::-1]
        more_older = bool(rows)  # (we came from an older page)
    else:
        bound = "AND (ts, id) < (?, ?)" if before is not None else ""
        rows = db.execute(
            f"SELECT ts, id, summary FROM catalog WHERE {filters} {bound} ORDER BY ts DESC, id DESC LIMIT ?",
            [*args, *(_position(before) if before is not None else ()), limit + 1],
        ).fetchall()
        more_older = len(rows) > limit
        rows = rows[:limit]
        more_newer = before is not None and bool(rows)
    return Page(
        [json.loads(row[2]) for row in rows],
        _cursor(rows[0]) if rows and more_newer else None,
        _cursor(rows[-1]) if rows and more_older else None,
        total,
    )


def session(db: sqlite3.Connection, session_id: str, limit: int) -> Tuple[List[Dict[str, Any]], int]:
    """The first `limit` traces of a session, oldest first, and how many it has."""
    total = db.execute("SELECT COUNT(*) FROM catalog WHERE session = ?", (session_id,)).fetchone()[0]
    rows = db.execute("SELECT summary FROM catalog WHERE session = ? ORDER BY ts, id LIMIT ?", (session_id, limit)).fetchall()
    return [json.loads(row[0]) for row in rows], total
