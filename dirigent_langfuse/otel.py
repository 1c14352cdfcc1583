"""The OTLP/JSON transport: Langfuse Cloud and self-hosted v4 (`/api/public/otel/v1/traces`).

OTel spans are sent once, ended. The transport therefore keeps every observation in progress
(session, message, tool call) in a bounded table, folds the ingestion items' creates and
updates into it, and emits a span when its observation ends. What a user sees in Langfuse:

- one trace per scroll; its OTel trace id is the scroll_id's 32 hex digits when the scroll_id is
  a UUID, else uuid5(scroll_id). Trace attributes (`langfuse.trace.name`, `session.id`,
  `user.id`, `langfuse.trace.tags`, `langfuse.trace.metadata.*`) ride on every span, so the trace
  is named as soon as its first span lands;
- a root span of type `agent` for the session itself, from `SessionCreated` to `SessionEnded`;
  messages are `generation` spans under it, tool calls `tool` spans under their message, plans
  `event` spans;
- an observation still open at `shutdown()` (or pushed out of a full table) is emitted ended at
  that moment, with level WARNING, a status message saying so and
  `langfuse.observation.metadata.incomplete = "true"`: never silently lost.

Span and trace ids derive from the observation ids, so a replay re-sends the same spans.
"""

from __future__ import annotations

import collections
import json
import logging
import re
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Sequence

from . import __version__
from .client import LangfuseClient
from .config import LangfuseConfig
from .encoding import dumps, shrink_fields
from .mapping import merge_body
from .transport import IngestionTransport, Record, Report

__all__ = ["OtelTransport", "AutoTransport", "otel_trace_id", "span_id", "choose_transport"]

log = logging.getLogger(__name__)

_NS = uuid.UUID("0b8f1f67-8e0e-4f4f-a3c5-6f3c1d2e9a41")
_HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")

# Attribute keys (../shared/reference/langfuse-otel-attributes.json)
TRACE_NAME = "langfuse.trace.name"
TRACE_USER_ID = "user.id"
TRACE_SESSION_ID = "session.id"
TRACE_TAGS = "langfuse.trace.tags"
TRACE_METADATA = "langfuse.trace.metadata"
OBS_TYPE = "langfuse.observation.type"
OBS_METADATA = "langfuse.observation.metadata"
OBS_LEVEL = "langfuse.observation.level"
OBS_STATUS = "langfuse.observation.status_message"
OBS_INPUT = "langfuse.observation.input"
OBS_OUTPUT = "langfuse.observation.output"
OBS_MODEL = "langfuse.observation.model.name"
OBS_MODEL_PARAMS = "langfuse.observation.model.parameters"
OBS_USAGE = "langfuse.observation.usage_details"
OBS_COST = "langfuse.observation.cost_details"
OBS_COMPLETION_START = "langfuse.observation.completion_start_time"
ENVIRONMENT = "langfuse.environment"
RELEASE = "langfuse.release"

_KEEP_FIRST = ("startTime", "parentObservationId")  # the create's start and parent win
_TYPES = {"generation-create": "generation", "generation-update": "generation", "span-create": "span", "span-update": "span"}


def otel_trace_id(scroll_id: str) -> str:
    """32 lowercase hex digits for a scroll: its own when it is a UUID, else uuid5 of it."""
    text = scroll_id.replace("-", "")
    if _HEX32.match(text) and text.strip("0"):
        return text.lower()
    return uuid.uuid5(_NS, scroll_id).hex


def span_id(observation_id: str) -> str:
    """16 hex digits from an observation id (a UUID's first half, else uuid5 of it)."""
    text = observation_id.replace("-", "")
    if _HEX32.match(text):
        return text[:16].lower()
    return uuid.uuid5(_NS, observation_id).hex[:16]


def session_span_id(scroll_id: str) -> str:
    return uuid.uuid5(_NS, scroll_id + "\x1fsession").hex[:16]


def _nanos(iso: Optional[str]) -> Optional[str]:
    if not iso:
        return None
    text = iso[:-1] + "+00:00" if iso.endswith("Z") else iso
    at = datetime.fromisoformat(text)
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    seconds = int(at.timestamp())
    return str(seconds * 1_000_000_000 + at.microsecond * 1000)


def _now_iso(now: Optional[float] = None) -> str:
    at = datetime.fromtimestamp(time.time() if now is None else now, tz=timezone.utc)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else dumps(value).decode("utf-8")


def _kv(key: str, value: Any) -> Dict[str, Any]:
    """An OTLP `KeyValue`. Strings, booleans and floats are typed; everything else is JSON text
    (no `intValue`: OTLP/JSON wants int64 as a string, Langfuse's schema an integer)."""
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, float):
        return {"key": key, "value": {"doubleValue": value}}
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return {"key": key, "value": {"arrayValue": {"values": [{"stringValue": v} for v in value]}}}
    return {"key": key, "value": {"stringValue": _text(value)}}


class _Open:
    """An observation in progress: the merged body of its create and updates so far."""

    __slots__ = ("kind", "trace", "body", "weight")

    def __init__(self, kind: str, trace: str, body: Dict[str, Any], weight: int) -> None:
        self.kind = kind
        self.trace = trace
        self.body = body
        self.weight = weight


class OtelTransport:
    """Ingestion items in, ended OTLP spans out. Used from the worker thread only."""

    name = "otel"

    def __init__(self, client: LangfuseClient, config: LangfuseConfig, clock: Any = time.time) -> None:
        self.client = client
        self.config = config
        self.max_open = config.max_open_observations
        self.max_item_bytes = config.max_item_bytes
        self._clock = clock
        self._open: "collections.OrderedDict[str, _Open]" = collections.OrderedDict()
        self._traces: "collections.OrderedDict[str, Dict[str, Any]]" = collections.OrderedDict()
        resource = [
            _kv("service.name", "dirigent"),
            _kv("telemetry.sdk.name", "dirigent-langfuse"),
            _kv("telemetry.sdk.language", "python"),
            _kv("telemetry.sdk.version", __version__),
        ]
        head = {
            "resource": {"attributes": resource},
            "scopeSpans": [{"scope": {"name": "dirigent_langfuse", "version": __version__}, "spans": ["\x00"]}],
        }
        prefix, suffix = json.dumps({"resourceSpans": [head]}, separators=(",", ":")).split('"\\u0000"')
        self._prefix, self._suffix = prefix.encode(), suffix.encode()

    # -- folding items into observations -------------------------------------------------------

    def open_count(self) -> int:
        return len(self._open)

    def prepare(self, items: Sequence[Dict[str, Any]]) -> List[Record]:
        out: List[Record] = []
        for item in items:
            self._fold(item, out)
        while len(self._open) > self.max_open:
            key, obs = self._open.popitem(last=False)
            out.append(self._emit(key, obs, incomplete="evicted: too many observations open at once"))
        return out

    def _trace_info(self, trace: str) -> Dict[str, Any]:
        info = self._traces.get(trace)
        if info is None:
            info = self._traces[trace] = {}
            while len(self._traces) > self.max_open:
                self._traces.popitem(last=False)
        return info

    def _fold(self, item: Dict[str, Any], out: List[Record]) -> None:
        kind = item.get("type")
        body = item.get("body") or {}
        if kind == "trace-create":
            self._fold_trace(body, out)
            return
        trace = body.get("traceId")
        key = body.get("id")
        if not trace or not key:
            return
        if kind == "event-create":
            out.append(self._emit(key, _Open("event", trace, dict(body, endTime=body.get("startTime")), 1)))
            return
        obs = self._open.get(key)
        if obs is None:
            obs_type = str(body.get("type") or _TYPES.get(kind, "span")).lower()
            obs = _Open(obs_type, trace, dict(body), 1)
            if kind.endswith("-update"):
                obs.body.setdefault("startTime", body.get("endTime") or item.get("timestamp"))
                meta = dict(obs.body.get("metadata") or {})
                meta["partial"] = "update without a create in this process"
                obs.body["metadata"] = meta
            self._open[key] = obs
        else:
            obs.weight += 1
            obs.body = merge_body(obs.body, body, keep_first=_KEEP_FIRST)
        if obs.body.get("endTime"):
            del self._open[key]
            out.append(self._emit(key, obs))

    def _fold_trace(self, body: Dict[str, Any], out: List[Record]) -> None:
        scroll = body.get("id")
        if not scroll:
            return
        info = self._trace_info(scroll)
        meta = body.get("metadata") or {}
        for field in ("name", "userId", "sessionId", "tags"):
            if body.get(field) is not None:
                info[field] = body[field]
        if meta:
            merged = dict(info.get("metadata") or {})
            merged.update(meta)
            info["metadata"] = merged
        root_key = "session\x1f" + scroll
        root = self._open.get(root_key)
        ended = "end_reason" in meta and "name" not in body
        if root is None:
            start = body.get("timestamp") or meta.get("ended_at") or _now_iso(self._clock())
            root = _Open("agent", scroll, {"id": root_key, "name": body.get("name") or "session", "startTime": start}, 1)
            self._open[root_key] = root
        else:
            root.weight += 1
            if body.get("name"):
                root.body["name"] = body["name"]
        if ended:
            root.body["endTime"] = meta.get("ended_at")
            root.body["statusMessage"] = meta.get("end_reason")
            del self._open[root_key]
            out.append(self._emit(root_key, root))

    def close_open(self, now: Optional[float] = None) -> List[Record]:
        """Emit every observation still open, ended now and marked incomplete (at shutdown)."""
        out = []
        while self._open:
            key, obs = self._open.popitem(last=False)
            out.append(self._emit(key, obs, incomplete="incomplete: the stream shut down before this observation ended"))
        return out

    # -- spans ------------------------------------------------------------------------------------

    def _emit(self, key: str, obs: _Open, incomplete: Optional[str] = None) -> Record:
        body = obs.body
        if incomplete:
            body["endTime"] = _now_iso(self._clock())
            body.setdefault("level", "WARNING")
            body["statusMessage"] = incomplete
            meta = dict(body.get("metadata") or {})
            meta["incomplete"] = "true"
            body["metadata"] = meta
        span = self.span(key, obs)
        data = dumps(span)
        truncated = False
        if len(data) > self.max_item_bytes:
            fields = {"input": body.get("input"), "output": body.get("output"), "metadata": body.get("metadata")}
            shrink_fields(fields, ("input", "output", "metadata"), len(data) - self.max_item_bytes)
            body.update({k: v for k, v in fields.items() if v is not None})
            data = dumps(self.span(key, obs))
            truncated = True
        return Record(obs.trace + "/" + span["spanId"], data, obs.weight, truncated)

    def span(self, key: str, obs: _Open) -> Dict[str, Any]:
        body = obs.body
        scroll = obs.trace
        is_root = key.startswith("session\x1f")
        sid = session_span_id(scroll) if is_root else span_id(key)
        parent = None
        if not is_root:
            parent_id = body.get("parentObservationId")
            parent = span_id(parent_id) if parent_id else session_span_id(scroll)
        attrs: List[Dict[str, Any]] = [_kv(OBS_TYPE, obs.kind)]
        info = self._traces.get(scroll) or {}
        if info.get("name"):
            attrs.append(_kv(TRACE_NAME, info["name"]))
        if info.get("sessionId"):
            attrs.append(_kv(TRACE_SESSION_ID, info["sessionId"]))
        if info.get("userId"):
            attrs.append(_kv(TRACE_USER_ID, info["userId"]))
        if info.get("tags"):
            attrs.append(_kv(TRACE_TAGS, [str(t) for t in info["tags"]]))
        for mkey, mvalue in (info.get("metadata") or {}).items():
            attrs.append(_kv(f"{TRACE_METADATA}.{mkey}", mvalue if isinstance(mvalue, str) else _text(mvalue)))
        for field, attr in (("input", OBS_INPUT), ("output", OBS_OUTPUT), ("model", OBS_MODEL), ("level", OBS_LEVEL)):
            if body.get(field) is not None:
                attrs.append(_kv(attr, body[field] if isinstance(body[field], str) else _text(body[field])))
        if body.get("statusMessage"):
            attrs.append(_kv(OBS_STATUS, str(body["statusMessage"])))
        for field, attr in (("modelParameters", OBS_MODEL_PARAMS), ("usageDetails", OBS_USAGE), ("costDetails", OBS_COST)):
            if body.get(field):
                attrs.append(_kv(attr, _text(body[field])))
        for mkey, mvalue in (body.get("metadata") or {}).items():
            attrs.append(_kv(f"{OBS_METADATA}.{mkey}", mvalue if isinstance(mvalue, str) else _text(mvalue)))
        if self.config.environment:
            attrs.append(_kv(ENVIRONMENT, self.config.environment))
        if self.config.release:
            attrs.append(_kv(RELEASE, self.config.release))
        start = _nanos(body.get("startTime")) or _nanos(body.get("endTime")) or _nanos(_now_iso(self._clock()))
        end = _nanos(body.get("endTime")) or start
        span: Dict[str, Any] = {
            "traceId": otel_trace_id(scroll),
            "spanId": sid,
            "name": str(body.get("name") or obs.kind),
            "kind": 1,
            "startTimeUnixNano": start,
            "endTimeUnixNano": end,
            "attributes": attrs,
        }
        if parent:
            span["parentSpanId"] = parent
        if body.get("level") == "ERROR":
            span["status"] = {"code": 2, "message": str(body.get("statusMessage") or "error")}
        return span

    # -- the wire ---------------------------------------------------------------------------------

    def body(self, records: Sequence[Record]) -> bytes:
        return self._prefix + b",".join(r.data for r in records) + self._suffix

    def send(self, records: Sequence[Record]) -> Report:
        result = self.client.send_otlp(self.body(records))
        report = Report(retries=result.retries, bytes_sent=result.bytes_sent)
        rejected = min(result.rejected, len(records))
        keep = len(records) - rejected
        report.delivered.extend(records[:keep])
        for record in records[keep:]:
            report.dropped.append((record, "otel_rejected", result.message))
        return report

    def reset(self) -> None:
        self.client.reset()
        self._open.clear()
        self._traces.clear()


def major_version(version: Optional[str]) -> Optional[int]:
    match = re.match(r"^\s*v?(\d+)", version or "")
    return int(match.group(1)) if match else None


def choose_transport(version: Optional[str]) -> str:
    """`otel` for Langfuse v4 and later or an unknown version, `ingestion` before v4."""
    major = major_version(version)
    return "ingestion" if major is not None and major < 4 else "otel"


class AutoTransport:
    """Asks `GET /api/public/health` once, on the worker thread, then acts as the chosen one."""

    def __init__(self, client: LangfuseClient, config: LangfuseConfig) -> None:
        self.client = client
        self.config = config
        self._chosen: Any = None

    @property
    def name(self) -> str:
        return self._chosen.name if self._chosen is not None else "auto"

    def resolve(self) -> Any:
        if self._chosen is None:
            version = self.client.server_version()
            choice = choose_transport(version)
            log.info(
                "Langfuse at %s reports version %s: using the %s transport",
                self.config.host, version or "(unknown)", choice,
            )
            if choice == "ingestion":
                self._chosen = IngestionTransport(self.client, self.config.max_item_bytes)
            else:
                self._chosen = OtelTransport(self.client, self.config)
        return self._chosen

    def prepare(self, items: Sequence[Dict[str, Any]]) -> List[Record]:
        return self.resolve().prepare(items)

    def open_count(self) -> int:
        return self._chosen.open_count() if self._chosen is not None else 0

    def close_open(self, now: Optional[float] = None) -> List[Record]:
        return self._chosen.close_open(now) if self._chosen is not None else []

    def send(self, records: Sequence[Record]) -> Report:
        return self.resolve().send(records)

    def reset(self) -> None:
        self.client.reset()
        if self._chosen is not None and hasattr(self._chosen, "reset"):
            self._chosen.reset()
