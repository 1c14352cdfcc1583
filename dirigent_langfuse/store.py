"""The receiver's SQLite store: what a Langfuse project would hold after our requests.

Ingestion items are kept once per envelope id (Langfuse de-duplicates on it) and merged into
traces and observations by body id the way Langfuse merges creates and updates: a later
non-null field wins, `metadata` is merged key by key. OTLP spans are merged into the same
tables (observation id = span id, trace id = OTel trace id).

It also counts what a delivery test needs: requests, items received, envelope ids received more
than once (`resent`, harmless), and logical duplicates — the same content under a different
envelope id (`duplicates`, a bug in a client).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from typing import Any, Dict, Iterable, List, Optional, Tuple

__all__ = ["Store"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    envelope_id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    body_id TEXT,
    fingerprint TEXT NOT NULL,
    received REAL NOT NULL,
    json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS items_fingerprint ON items (fingerprint);
CREATE TABLE IF NOT EXISTS traces (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS observations (
    id TEXT PRIMARY KEY,
    trace_id TEXT NOT NULL,
    source TEXT NOT NULL,
    json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS observations_trace ON observations (trace_id);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

_OBSERVATION_TYPES = {
    "span-create": "SPAN",
    "span-update": "SPAN",
    "generation-create": "GENERATION",
    "generation-update": "GENERATION",
    "event-create": "EVENT",
}


def _merge(old: Dict[str, Any], new: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(old)
    for key, value in new.items():
        if value is None:
            continue
        if key == "metadata" and isinstance(value, dict) and isinstance(out.get("metadata"), dict):
            merged = dict(out["metadata"])
            merged.update(value)
            out["metadata"] = merged
        else:
            out[key] = value
    return out


class Store:
    """Thread-safe: one connection, one lock (the receiver's threads take turns)."""

    def __init__(self, path: str = ":memory:") -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        if path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- counters -------------------------------------------------------------------------------

    def _bump(self, name: str, by: int = 1) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
            (name, by, by),
        )

    def bump(self, name: str, by: int = 1) -> None:
        with self._lock:
            self._bump(name, by)

    def counters(self) -> Dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT name, value FROM counters").fetchall())

    # -- ingestion ------------------------------------------------------------------------------

    def add_items(self, items: Iterable[Dict[str, Any]], received: float) -> None:
        """Store valid ingestion items; items seen before (same envelope id) change nothing."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for item in items:
                    self._add_item(item, received)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _add_item(self, item: Dict[str, Any], received: float) -> None:
        body = item.get("body") or {}
        text = json.dumps(item, sort_keys=True)
        fingerprint = hashlib.sha1(
            json.dumps([item.get("type"), body], sort_keys=True, default=str).encode()
        ).hexdigest()
        self._bump("items_received")
        exists = self._db.execute("SELECT 1 FROM items WHERE envelope_id = ?", (item["id"],)).fetchone()
        if exists:
            self._bump("resent")
            return
        if self._db.execute("SELECT 1 FROM items WHERE fingerprint = ?", (fingerprint,)).fetchone():
            self._bump("duplicates")
        self._db.execute(
            "INSERT INTO items (envelope_id, type, body_id, fingerprint, received, json) VALUES (?, ?, ?, ?, ?, ?)",
            (item["id"], item["type"], body.get("id"), fingerprint, received, text),
        )
        kind = item["type"]
        if kind == "trace-create":
            trace = dict(body)
            trace.setdefault("timestamp", item.get("timestamp"))
            self._upsert_trace(body["id"], trace, "ingestion")
        elif kind in _OBSERVATION_TYPES or kind in ("observation-create", "observation-update"):
            obs = dict(body)
            obs.setdefault("type", _OBSERVATION_TYPES.get(kind))
            if kind.endswith("-create") and not obs.get("id"):
                obs["id"] = item["id"]
            self._upsert_observation(obs, "ingestion")

    def _upsert_trace(self, trace_id: str, trace: Dict[str, Any], source: str) -> None:
        row = self._db.execute("SELECT json FROM traces WHERE id = ?", (trace_id,)).fetchone()
        if row:
            old = json.loads(row[0])
            merged = _merge(old, trace)
            if old.get("timestamp") and trace.get("timestamp"):
                merged["timestamp"] = min(old["timestamp"], trace["timestamp"])
            self._db.execute("UPDATE traces SET json = ? WHERE id = ?", (json.dumps(merged), trace_id))
        else:
            trace = {k: v for k, v in trace.items() if v is not None}
            trace["id"] = trace_id
            self._db.execute(
                "INSERT INTO traces (id, source, json) VALUES (?, ?, ?)", (trace_id, source, json.dumps(trace))
            )

    def _upsert_observation(self, obs: Dict[str, Any], source: str) -> None:
        obs_id = obs["id"]
        trace_id = obs.get("traceId")
        row = self._db.execute("SELECT json FROM observations WHERE id = ?", (obs_id,)).fetchone()
        if row:
            merged = _merge(json.loads(row[0]), obs)
            self._db.execute(
                "UPDATE observations SET json = ?, trace_id = ? WHERE id = ?",
                (json.dumps(merged), merged.get("traceId") or "", obs_id),
            )
        else:
            self._db.execute(
                "INSERT INTO observations (id, trace_id, source, json) VALUES (?, ?, ?, ?)",
                (obs_id, trace_id or "", source, json.dumps(obs)),
            )
        if trace_id and not self._db.execute("SELECT 1 FROM traces WHERE id = ?", (trace_id,)).fetchone():
            # Langfuse creates the trace of an observation that arrives first.
            self._upsert_trace(trace_id, {"timestamp": obs.get("startTime")}, source)

    # -- otel -----------------------------------------------------------------------------------

    def add_spans(self, spans: Iterable[Tuple[Dict[str, Any], Dict[str, Any]]], received: float) -> None:
        """Store decoded OTLP spans: pairs of (trace fields, observation fields)."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for trace, obs in spans:
                    self._bump("spans_received")
                    seen = self._db.execute("SELECT 1 FROM observations WHERE id = ?", (obs["id"],)).fetchone()
                    if seen:
                        self._bump("resent")
                    else:
                        # the same observation under another span id would be a duplicate in Langfuse
                        key = [obs.get(k) for k in ("traceId", "parentObservationId", "type", "name", "startTime")]
                        fingerprint = "span:" + hashlib.sha1(json.dumps(key).encode()).hexdigest()
                        if self._db.execute("SELECT 1 FROM items WHERE fingerprint = ?", (fingerprint,)).fetchone():
                            self._bump("duplicates")
                        else:
                            self._db.execute(
                                "INSERT INTO items (envelope_id, type, body_id, fingerprint, received, json) "
                                "VALUES (?, ?, ?, ?, ?, ?)",
                                ("span:" + obs["id"], "otel-span", obs["id"], fingerprint, received, "{}"),
                            )
                    self._upsert_trace(trace["id"], trace, "otel")
                    self._upsert_observation(obs, "otel")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # -- reading --------------------------------------------------------------------------------

    def traces(self) -> List[Dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT json FROM traces").fetchall()
        out = [json.loads(r[0]) for r in rows]
        out.sort(key=lambda t: t.get("timestamp") or "")
        return out

    def trace(self, trace_id: str) -> Optional[Dict[str, Any]]:
        with self._lock:
            row = self._db.execute("SELECT json FROM traces WHERE id = ?", (trace_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def observations(self, trace_id: Optional[str] = None) -> List[Dict[str, Any]]:
        with self._lock:
            if trace_id is None:
                rows = self._db.execute("SELECT json FROM observations").fetchall()
            else:
                rows = self._db.execute("SELECT json FROM observations WHERE trace_id = ?", (trace_id,)).fetchall()
        out = [json.loads(r[0]) for r in rows]
        out.sort(key=lambda o: o.get("startTime") or "")
        return out

    def items(self) -> List[Dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT json FROM items WHERE type != 'otel-span' ORDER BY received").fetchall()
        return [json.loads(r[0]) for r in rows]

    def envelope_count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM items WHERE type != 'otel-span'").fetchone()[0]
