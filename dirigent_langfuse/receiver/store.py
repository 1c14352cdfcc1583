"""The receiver's SQLite store: what a Langfuse project would hold after our requests.

Writes are cheap and append-only, so that the receiver is never what a benchmark measures:
each request's body is kept whole in `bodies`, with one `log` row per accepted item (keyed by
envelope id) or OTLP span (keyed by trace and span id) pointing into it, in one transaction. A
key seen before is ignored and counted as `resent`, since Langfuse de-duplicates on it.

Reads merge the log the way Langfuse merges creates and updates for the same body id: in the
items' timestamp order (creates first on a tie), a later non-null field wins and `metadata` is
merged key by key (an event's metadata that is not an object counts as {"metadata": its text});
an observation whose trace was never created creates it. OTLP spans merge
into the same traces and observations (observation id = span id, trace id = OTel trace id).

Counters a delivery test needs: requests, items and spans received, `resent` (harmless), and
`duplicates`: the same content under another id (a bug in a client; computed on read): an
item's type and body, or a span whole but for its span id.
"""

from __future__ import annotations

import collections
import hashlib
import json
import sqlite3
import threading
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, TypeVar

from ..delivery.spool import foreign_tables
from ..errors import ConfigError
from ..mapping.values import merge_body
from . import catalog
from .checks import decode_span, dropped_fields, otlp_spans

__all__ = ["Store"]

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS log (
    seq INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    received REAL NOT NULL,
    json TEXT NOT NULL,
    trace TEXT
);
CREATE TABLE IF NOT EXISTS bodies (
    seq INTEGER PRIMARY KEY,
    json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""
_TABLES = frozenset({"log", "bodies", "counters"}) | catalog.TABLES

_SPAN = "otel-span"  # a span's own JSON (written by earlier versions; still read)
_SPAN_REF = "otel-ref"  # a span, "@<bodies.seq>:<index>": the index-th span of a stored export
_SPAN_KINDS = (_SPAN, _SPAN_REF)
_ROWS = "otel_rows"  # a counter set once: this database keeps OTel spans as Langfuse v4 does
# What Langfuse keeps from the first event of a trace or observation, whatever later ones say.
_TRACE_FIRST = ("environment",)  # and the earliest timestamp
_OBSERVATION_FIRST = ("startTime", "traceId", "environment")
_OBSERVATION_TYPES = {
    "span-create": "SPAN",
    "span-update": "SPAN",
    "generation-create": "GENERATION",
    "generation-update": "GENERATION",
    "event-create": "EVENT",
}


def _digest(value: Any) -> str:
    """A fingerprint of `value`'s content, whatever the order of its keys."""
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _as_record(metadata: Any) -> Any:
    """An event's metadata as Langfuse keeps it, before merging it into what it holds: a JSON
    object as it is; a string, number or boolean as {"metadata": its text}; a list as
    {"metadata": its JSON text}."""
    if metadata is None or isinstance(metadata, dict):
        return metadata
    if isinstance(metadata, list):
        return {"metadata": json.dumps(metadata, separators=(",", ":"), ensure_ascii=False)}
    if isinstance(metadata, bool):
        return {"metadata": "true" if metadata else "false"}
    if isinstance(metadata, float) and metadata.is_integer():
        metadata = int(metadata)  # as JavaScript writes a number
    return {"metadata": str(metadata)}


class _View:
    """Traces and observations merged from the log, as Langfuse would show them. `rows`: OTel spans
    as Langfuse v4 keeps them (see `span`). `count`: count `duplicates` (the whole log's view; a
    trace merged for a page needs no count, and fingerprints are most of its cost)."""

    def __init__(self, rows: bool = False, count: bool = True) -> None:
        self.traces: Dict[str, Dict[str, Any]] = {}
        self.observations: Dict[str, Dict[str, Any]] = {}
        self.duplicates = 0
        self.rows = rows
        self.count = count
        self._starts: Dict[str, Any] = {}  # v4: a span id's first start time (its row's)
        self._fingerprints: "set[str]" = set()

    def _fingerprint(self, value: Any) -> None:
        """Counts content seen before under another id."""
        if not self.count:
            return
        digest = _digest(value)
        if digest in self._fingerprints:
            self.duplicates += 1
        else:
            self._fingerprints.add(digest)

    def trace(self, trace_id: str, trace: Dict[str, Any]) -> None:
        old = self.traces.get(trace_id)
        if old is None:
            fresh = {k: v for k, v in trace.items() if v is not None}
            fresh["id"] = trace_id
            self.traces[trace_id] = fresh
            return
        merged = merge_body(old, trace, _TRACE_FIRST)
        if old.get("timestamp") and trace.get("timestamp"):
            merged["timestamp"] = min(old["timestamp"], trace["timestamp"])
        self.traces[trace_id] = merged

    def observation(self, obs: Dict[str, Any]) -> None:
        obs_id = obs["id"]
        old = self.observations.get(obs_id)
        merged = self.observations[obs_id] = obs if old is None else merge_body(old, obs, _OBSERVATION_FIRST)
        trace_id = merged.get("traceId")
        if trace_id and trace_id not in self.traces:
            # Langfuse creates the trace of an observation that arrives first.
            self.trace(trace_id, {"timestamp": obs.get("startTime")})

    def item(self, item: Dict[str, Any]) -> None:
        body = item.get("body") or {}
        kind = item.get("type")
        self._fingerprint([kind, body])
        # A body without an id (the spec allows it) gets one, as Langfuse gives it a fresh one:
        # here its envelope's, so that a read is the same every time.
        if kind == "trace-create":
            trace = dict(body)
            trace.setdefault("timestamp", item.get("timestamp"))
            trace["metadata"] = _as_record(body.get("metadata"))
            self.trace(body.get("id") or item["id"], trace)
        elif kind in _OBSERVATION_TYPES or kind in ("observation-create", "observation-update"):
            dropped = dropped_fields(kind)  # what Langfuse drops from this kind of event
            obs = {k: v for k, v in body.items() if k not in dropped} if dropped else dict(body)
            obs["metadata"] = _as_record(obs.get("metadata"))
            if kind in _OBSERVATION_TYPES:  # its body has no type: Langfuse drops one sent along
                obs["type"] = _OBSERVATION_TYPES[kind]
            if not obs.get("id"):
                obs["id"] = item["id"]
            self.observation(obs)

    def span(self, span: Dict[str, Any]) -> None:
        # The same span under another span id would be a duplicate in Langfuse. Its own times in
        # nanoseconds, not the milliseconds Langfuse keeps: two observations with one name and
        # parent often start within a millisecond.
        self._fingerprint({k: v for k, v in span.items() if k != "spanId"})
        trace, obs = decode_span(span)
        if not self.rows:  # Langfuse before v4: merged into the observation, as ingestion events are
            self.trace(trace["id"], trace)
            self.observation(obs)
            return
        # Langfuse v4 (its events store): one row per span id and start time, the export processed
        # last replacing it whole; another start time is another row, for good (a duplicate, shown
        # as one). A trace's input and output are its latest root span's; langfuse.trace.input and
        # .output are not read.
        span_id, start = obs["id"], obs.get("startTime")
        if self._starts.setdefault(span_id, start) != start:
            row = f"{span_id}@{start}"
            if row not in self.observations:
                self.duplicates += 1
            obs = dict(obs, id=row, duplicateOf=span_id)
        root = not span.get("parentSpanId")
        self.trace(trace["id"], {k: v for k, v in trace.items() if k not in ("input", "output")})
        self.observations[obs["id"]] = obs
        if root:
            self.traces[trace["id"]].update(input=obs.get("input"), output=obs.get("output"))


class Store:
    """Thread-safe: one connection, one lock (the receiver's threads take turns)."""

    def __init__(self, path: str = ":memory:", rows: Optional[bool] = None) -> None:
        """Raises `ConfigError` (key `db`) for a path that cannot be opened, a file that is not
        SQLite, or a database of something else (a spool, another program's): never writes
        our tables into it. `rows`: keep OTel spans as Langfuse v4 does (a receiver posing as 4 or
        later), said in the database for a later reader; None: as the database says."""
        self.path = path
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot be opened as the receiver's database: {path} ({exc})", key="db") from None
        try:
            others = foreign_tables(self._db, _TABLES)
            if others:
                raise ConfigError(f"{path} is another program's database (it holds {', '.join(others)}), "
                                  "not a receiver's", key="db")
            if path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            catalog.prepare(self._db, self._reader())
            self._counts: Dict[str, int] = collections.Counter(dict(self._db.execute("SELECT name, value FROM counters")))
        except sqlite3.Error as exc:
            self._db.close()
            raise ConfigError(f"cannot be opened as the receiver's database: {path} ({exc})", key="db") from None
        except ConfigError:
            self._db.close()
            raise
        self._dirty: Dict[str, int] = collections.Counter()
        self._view: Optional[_View] = None
        self._closed = False
        if rows and not self._counts.get(_ROWS):
            self.bump(_ROWS)
            with self._lock:
                self._save_counters()
        self.rows = bool(self._counts.get(_ROWS)) if rows is None else rows

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._save_counters()
            self._db.close()
            self._closed = True

    # -- counters -------------------------------------------------------------------------------

    def bump(self, name: str, by: int = 1) -> None:
        with self._lock:
            self._counts[name] += by
            self._dirty[name] += by

    def _save_counters(self) -> None:
        if self._dirty:
            self._db.executemany(
                "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
                [(name, by, by) for name, by in self._dirty.items()],
            )
            self._dirty.clear()

    def counters(self) -> Dict[str, int]:
        view = self._merged()
        with self._lock:
            out = dict(self._counts)
        out["duplicates"] = view.duplicates
        return out

    # -- writing --------------------------------------------------------------------------------

    def add_items(self, body: bytes, items: Iterable[Tuple[int, Dict[str, Any]]], received: float) -> None:
        """Store an ingestion request's body as it came and, per valid item (its index in the
        batch, the item), a log row pointing into it; an envelope id seen before changes nothing."""
        items = list(items)
        rows = [(item["id"], item["type"], index) for index, item in items]
        self._add_body(body, rows, received, "items_received",
                       lambda: catalog.traces_of_items(self._db, [item for _, item in items]))

    def add_export(self, export: bytes, spans: Iterable[Tuple[int, Dict[str, Any]]], received: float) -> None:
        """Store an OTLP/JSON export as it came (decompressed) and, per checked span (its index in
        `wire.otlp_spans(export)`, the span), a log row pointing into it.

        A span id seen before with the same content is a re-send (counted, changes nothing); with
        other content it is an upsert, as Langfuse takes it: merged over the earlier one (a later
        non-null field wins, and the trace keeps what earlier spans said of it)."""
        spans = list(spans)
        keys = [f"span:{span['traceId'].lower()}:{span['spanId'].lower()}" for _, span in spans]
        with self._lock:
            known = self._known(keys)
        rows = []
        for key, (index, span) in zip(keys, spans):
            earlier = known.get(key)
            if earlier is not None and earlier != span:
                key = f"{key}#{_digest(span)[:16]}"  # another version of the span: merged in arrival order
            rows.append((key, _SPAN_REF, index))
        self._add_body(export, rows, received, "spans_received", lambda: [span["traceId"].lower() for _, span in spans])

    def _known(self, keys: List[str]) -> Dict[str, Dict[str, Any]]:
        """The stored spans (their first version) of those of `keys` seen before."""
        found = self._db.execute(
            f"SELECT key, kind, json FROM log WHERE key IN ({','.join('?' * len(keys))})", keys
        ).fetchall() if keys else []
        if not found:
            return {}
        read = self._reader()
        return {key: read(kind, text) for key, kind, text in found}

    def _add_body(
        self, body: bytes, rows: List[Tuple[str, str, int]], received: float, counter: str,
        traces: Callable[[], List[Optional[str]]],
    ) -> None:
        """One transaction: the body, then its (key, kind, index) rows in the log, each saying
        "@<bodies.seq>:<index>" (nothing is re-encoded) and naming its trace (`traces()`, asked
        in the transaction); keys seen before are counted as resent. Their traces' catalog rows go
        stale."""
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN")
            try:
                seq = self._db.execute("INSERT INTO bodies (json) VALUES (?)", (body,)).lastrowid
                owners = traces()
                before = self._db.total_changes
                self._db.executemany(
                    "INSERT OR IGNORE INTO log (key, kind, received, json, trace) VALUES (?, ?, ?, ?, ?)",
                    [(key, kind, received, f"@{seq}:{index}", trace) for (key, kind, index), trace in zip(rows, owners)],
                )
                inserted = self._db.total_changes - before
                catalog.mark(self._db, (trace for trace in owners if trace is not None))
                self._counts[counter] += len(rows)
                self._dirty[counter] += len(rows)
                if len(rows) > inserted:
                    self._counts["resent"] += len(rows) - inserted
                    self._dirty["resent"] += len(rows) - inserted
                self._save_counters()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            if inserted:
                self._view = None

    # -- reading --------------------------------------------------------------------------------

    def _reader(self) -> Callable[[str, Any], Dict[str, Any]]:
        """(kind, log.json) → the item or OTLP span it stands for; bodies parsed once each."""
        bodies: Dict[str, List[Dict[str, Any]]] = {}

        def read(kind: str, text: Any) -> Dict[str, Any]:
            if not (isinstance(text, str) and text.startswith("@")):
                whole: Dict[str, Any] = json.loads(text)  # written whole by earlier versions
                return whole
            seq, index = text[1:].split(":")
            entries = bodies.get(seq)
            if entries is None:
                (raw,) = self._db.execute("SELECT json FROM bodies WHERE seq = ?", (int(seq),)).fetchone()
                payload = json.loads(raw)
                entries = bodies[seq] = otlp_spans(payload) if kind == _SPAN_REF else payload["batch"]
            return entries[int(index)]

        return read

    def _replay(
        self, rows: List[Tuple[str, Any]], read: Optional[Callable[[str, Any], Dict[str, Any]]] = None, count: bool = True,
    ) -> _View:
        """The log's (kind, json) rows, in arrival order, merged (lock held). `read`: a reader
        shared by several replays; `count`: count duplicates (see `_View`)."""
        view = _View(self.rows, count)
        read = read or self._reader()
        items = []
        for seq, (kind, text) in enumerate(rows):
            if kind in _SPAN_KINDS:
                view.span(read(kind, text))
            else:
                item = read(kind, text)
                create = 0 if str(kind).endswith("-create") else 1
                items.append((str(item.get("timestamp") or ""), create, seq, item))
        # Langfuse merges a body's events in timestamp order, creates first on a tie, whatever
        # order they arrived in (two requests in flight may arrive out of order).
        items.sort(key=lambda entry: entry[:3])
        for _, _, _, item in items:
            view.item(item)
        return view

    def _merged(self) -> _View:
        with self._lock:
            view = self._view
            if view is None:
                view = self._view = self._replay(self._db.execute("SELECT kind, json FROM log ORDER BY seq").fetchall())
            return view

    def _one(
        self, trace_id: str, read: Optional[Callable[[str, Any], Dict[str, Any]]] = None,
    ) -> Optional[Tuple[Dict[str, Any], List[Dict[str, Any]]]]:
        """One trace and its observations (in start order), merged from its own rows (lock held).
        `read`: a reader shared by several traces, whose requests' bodies it parses once."""
        rows = self._db.execute("SELECT kind, json FROM log WHERE trace = ? ORDER BY seq", (trace_id,)).fetchall()
        view = self._replay(rows, read, count=False)
        trace = view.traces.get(trace_id)
        if trace is None:
            return None
        observations = [o for o in view.observations.values() if o.get("traceId") == trace_id]
        observations.sort(key=lambda o: o.get("startTime") or "")
        return trace, observations

    # -- pages ----------------------------------------------------------------------------------

    def trace_detail(self, trace_id: str) -> Optional[Tuple[Dict[str, Any], List[Dict[str, Any]]]]:
        """(trace, observations) as `trace()` and `observations(trace_id)` give them, from the
        trace's own rows: as fast with 100,000 traces stored as with one."""
        with self._lock:
            return self._one(trace_id)

    def _fresh(self, query: Callable[[], _T]) -> _T:
        """`query()` of the catalog once no row of it is stale: stale rows are brought up to date
        a chunk at a time (writers wait at most one chunk), the last chunk and the query under one
        hold of the lock."""
        while True:
            with self._lock:
                ids = catalog.stale(self._db, 200)
                if not ids:
                    return query()
                read = self._reader()
                self._db.execute("BEGIN")
                try:
                    for trace_id in ids:
                        catalog.update(self._db, trace_id, self._one(trace_id, read))
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise

    def page(self, limit: int = 50, **where: Any) -> catalog.Page:
        """A page of traces, newest first (see `catalog.page` for `where`: before, after, text,
        session, user). ValueError for a cursor that is not one."""
        return self._fresh(lambda: catalog.page(self._db, limit, **where))

    def session(self, session_id: str, limit: int = 1000) -> Tuple[List[Dict[str, Any]], int]:
        """The first `limit` traces of a session (their summaries), oldest first, and how many it has."""
        return self._fresh(lambda: catalog.session(self._db, session_id, limit))

    def traces(self) -> List[Dict[str, Any]]:
        out = list(self._merged().traces.values())
        out.sort(key=lambda t: t.get("timestamp") or "")
        return out

    def trace(self, trace_id: str) -> Optional[Dict[str, Any]]:
        return self._merged().traces.get(trace_id)

    def observations(self, trace_id: Optional[str] = None) -> List[Dict[str, Any]]:
        out = [o for o in self._merged().observations.values() if trace_id is None or o.get("traceId") == trace_id]
        out.sort(key=lambda o: o.get("startTime") or "")
        return out

    def items(self) -> List[Dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT kind, json FROM log WHERE kind NOT IN (?, ?) ORDER BY seq", _SPAN_KINDS
            ).fetchall()
            read = self._reader()
            return [read(kind, text) for kind, text in rows]

    def envelope_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM log WHERE kind NOT IN (?, ?)", _SPAN_KINDS).fetchone()[0])
