"""OTLP/JSON spans as text: an observation (`_Open`, folded by `otlp.OtelTransport`) written as
one `Span`, with Langfuse's attributes, the trace's riding on each.

Spans are built as JSON text, not objects (the hot path), each attribute a `KeyValue` with a
`stringValue` (values that are not strings as their JSON text: OTLP/JSON wants int64 as a string,
Langfuse's schema an integer). A span larger than `max_item_bytes` has its input, output and
metadata cut to fit (`encoding.fit`); a bug of ours while writing one still sends it, with a
marker, and counts it. Times outside 1970 to 2262 are clamped (OTLP's 64-bit nanoseconds).
"""

from __future__ import annotations

import collections
import functools
import json
import json.encoder
import re
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Dict, List, Optional, Sequence

from .._version import __version__
from ..config import LangfuseConfig
from ..delivery.records import Record
from ..mapping.ids import otel_trace_id, session_span_id, span_id
from ..mapping.masking import Masker
from ..mapping.values import iso_time
from .encoding import as_text, dumps, fit, key_text, unencodable, utf8

__all__ = ["SpanWriter"]

# What an end record (`SpanWriter.end_record`) carries of what the updates said, and its key's prefix.
_END_FIELDS = ("input", "output", "model", "modelParameters", "usageDetails", "costDetails", "level",
               "statusMessage", "completionStartTime")
_END = "end\x1f"


# Attribute keys (../shared/reference/langfuse-otel-attributes.json)
TRACE_NAME = "langfuse.trace.name"
TRACE_USER_ID = "user.id"
TRACE_SESSION_ID = "session.id"
TRACE_TAGS = "langfuse.trace.tags"
TRACE_METADATA = "langfuse.trace.metadata"
TRACE_OUTPUT = "langfuse.trace.output"
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
# Metadata that a mask made into something other than a mapping. Langfuse's OTel endpoint reads
# `langfuse.*.metadata` itself as a JSON object and drops anything else; its ingestion API keeps
# such metadata as {"metadata": <its text>}. Under these keys it shows the same over both.
TRACE_WHOLE_METADATA = TRACE_METADATA + ".metadata"
OBS_WHOLE_METADATA = OBS_METADATA + ".metadata"

_OBS_FIELDS = (
    ("input", "langfuse.observation.input"),
    ("output", "langfuse.observation.output"),
    ("model", "langfuse.observation.model.name"),
    ("level", "langfuse.observation.level"),
    ("statusMessage", "langfuse.observation.status_message"),
    ("modelParameters", "langfuse.observation.model.parameters"),
    ("usageDetails", "langfuse.observation.usage_details"),
    ("costDetails", "langfuse.observation.cost_details"),
)
_OBS_MAPS = frozenset({"modelParameters", "usageDetails", "costDetails"})
_quote: Callable[[str], str] = getattr(json.encoder, "c_encode_basestring", None) or json.encoder.py_encode_basestring


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# OTLP times are 64-bit nanoseconds since 1970, which most readers (Langfuse's receiver among them)
# take as signed: 1970 to 2262. A host's time outside (a clock or a parser gone wrong: datetime.min,
# year 9999) is clamped into that range; otherwise the whole request it is in would be refused, and
# every other span with it.
_MAX_NANOS = 2**63 - 1
_LAST = _EPOCH + timedelta(seconds=_MAX_NANOS // 1_000_000_000 - 1)


def _nanos(iso: Optional[str]) -> Optional[str]:
    """Unix nanoseconds, as OTLP/JSON writes them (a string), from an ISO-8601 time."""
    if not iso:
        return None
    # The mapping's own format, "2026-11-30T02:04:40.123Z": the second's nanoseconds are written
    # as its Unix seconds (cached: a burst of events shares its seconds) and then the 9 digits.
    if len(iso) == 24 and iso[23] == "Z" and iso[19] == "." and iso[20:23].isdigit():
        seconds = _unix_seconds(iso[:19])
        if seconds is not None:
            return seconds + iso[20:23] + "000000"
    text = iso[:-1] + "+00:00" if iso.endswith("Z") else iso
    try:
        at = datetime.fromisoformat(text)
    except ValueError:  # Python 3.9 reads only 3 or 6 fraction digits
        at = datetime.fromisoformat(_six_digits(text))
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    delta = at - _EPOCH
    nanos = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    return str(min(max(nanos, 0), _MAX_NANOS))  # a time OTLP cannot carry would refuse the whole request


@functools.lru_cache(maxsize=1024)
def _unix_seconds(second: str) -> Optional[str]:
    """Unix seconds of a "YYYY-MM-DDTHH:MM:SS" UTC time, as text; None before 1970-01-01T00:00:01
    or when it is not such a time (the caller takes the general path)."""
    try:
        at = datetime.fromisoformat(second + "+00:00")
    except ValueError:
        return None
    if second[10] != "T" or at <= _EPOCH or at >= _LAST:
        return None
    delta = at - _EPOCH
    return str(delta.days * 86_400 + delta.seconds)


def _six_digits(text: str) -> str:
    match = re.match(r"^(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(.*)$", text)
    if not match:
        raise ValueError(f"not an ISO-8601 time: {text!r}")
    head, frac, tail = match.groups()
    return f"{head}.{((frac or '') + '000000')[:6]}{tail}"


def _now_iso(now: Optional[float] = None) -> str:
    return iso_time(datetime.fromtimestamp(time.time() if now is None else now, tz=timezone.utc))


def _head(key: str) -> str:
    """An OTLP `KeyValue` with a `stringValue`, as JSON text up to the value (spans are built as
    text: the hot path)."""
    return '{"key":' + _quote(key) + ',"value":{"stringValue":'


def _attribute_bytes(value: Any) -> int:
    """What `value` costs as a span's string attribute: its text, quoted as a JSON string."""
    return len(utf8(_quote(as_text(value))))


def _str_kv(key: str, value: Any) -> str:
    """The whole `KeyValue`. Values that are not strings go as JSON text (no `intValue`:
    OTLP/JSON wants int64 as a string, Langfuse's schema an integer)."""
    return _head(key) + _quote(as_text(value)) + "}}"


# The heads a span writes each time: its type, and (body field, head, a map left out when empty).
_TYPE_HEAD = _head(OBS_TYPE)
_OBS_HEADS = tuple((field, _head(attr), field in _OBS_MAPS) for field, attr in _OBS_FIELDS)
_NO_STATUS = _str_kv(OBS_STATUS, "")  # an empty status message, which the heads above leave out
_meta_heads: Dict[Any, str] = {}


def _meta_head(key: Any) -> str:
    """The head of `langfuse.observation.metadata.<key>`, remembered (bounded: the keys are the host's)."""
    head = _head(f"{OBS_METADATA}.{key if type(key) is str else key_text(key)}")
    if len(_meta_heads) < 4096:
        _meta_heads[key] = head
    return head


def _items(value: Any) -> Optional[List[Any]]:
    """A metadata mapping's (key, value) pairs; None for anything else, or for a mapping that
    cannot be read (a mask's answer whose items() raises): the caller sends it whole, as the
    encoder writes it."""
    if not isinstance(value, dict):
        return None
    try:
        return list(value.items())
    except Exception:
        return None


def _list_kv(key: str, values: Sequence[str]) -> str:
    inner = ",".join('{"stringValue":' + _quote(v) + "}" for v in values)
    return '{"key":' + _quote(key) + ',"value":{"arrayValue":{"values":[' + inner + "]}}}"


class _Open:
    """An observation in progress: the merged body of its create and updates so far.

    `late` is set while only updates were seen (no create in this process yet): their merged
    bodies as they came, so that a create arriving after them (two host threads racing, the end
    mapped first) rebuilds the observation with its own start, name and parent."""

    __slots__ = ("kind", "trace", "body", "weight", "late")

    def __init__(self, kind: str, trace: str, body: Dict[str, Any], weight: int,
                 late: Optional[Dict[str, Any]] = None) -> None:
        self.kind = kind
        self.trace = trace
        self.body = body
        self.weight = weight
        self.late = late

    def state(self, key: str, trace_info: Optional[Dict[str, Any]], now: float) -> bytes:
        """What a next process needs to end this observation as the same row (the spool keeps it)."""
        info = {k: v for k, v in (trace_info or {}).items() if not k.startswith("\x00")}
        return dumps({"key": key, "kind": self.kind, "trace": self.trace, "body": self.body, "traceInfo": info,
                      "savedAt": now})


class SpanWriter:
    """Writes observations as OTLP/JSON spans and spans into a request body. `traces`: the
    trace attributes the transport folds (shared, by scroll), read when a span is written."""

    def __init__(self, config: LangfuseConfig, traces: "collections.OrderedDict[str, Dict[str, Any]]",
                 masker: Optional[Masker] = None, clock: Any = time.time) -> None:
        self.masker = masker
        self.max_item_bytes = config.max_item_bytes
        self._traces = traces
        self._clock = clock
        resource = ",".join([
            _str_kv("service.name", "dirigent"),
            _str_kv("telemetry.sdk.name", "dirigent-langfuse"),
            _str_kv("telemetry.sdk.language", "python"),
            _str_kv("telemetry.sdk.version", __version__),
        ])
        self._prefix: bytes = (
            '{"resourceSpans":[{"resource":{"attributes":[' + resource + ']},"scopeSpans":[{"scope":'
            '{"name":"dirigent_langfuse","version":' + _quote(__version__) + '},"spans":['
        ).encode()
        self._suffix: bytes = b"]}]}]}"
        static = []
        if config.environment:
            static.append(_str_kv(ENVIRONMENT, config.environment))
        if config.release:
            static.append(_str_kv(RELEASE, config.release))
        self._static = ",".join(static)

    def emit(self, key: str, obs: _Open, incomplete: Optional[str] = None) -> Record:
        body = obs.body
        if incomplete:
            body["endTime"] = _now_iso(self._clock())
            body.setdefault("level", "WARNING")
            body["statusMessage"] = incomplete
            meta = dict(body.get("metadata") or {})
            meta["incomplete"] = "true"
            body["metadata"] = meta
        is_root = key.startswith("session\x1f")
        sid = session_span_id(obs.trace) if is_root else span_id(key)
        if self.masker is not None:  # the span is written from a masked copy; the fold keeps its own
            masked = self.masker.body(body)
            if masked is not body:
                obs, body = _Open(obs.kind, obs.trace, masked, obs.weight), masked
        try:
            data = utf8(self.span(obs, sid, is_root))
            truncated = False
            if len(data) > self.max_item_bytes:
                fields = {"input": body.get("input"), "output": body.get("output"), "metadata": body.get("metadata")}

                def encode() -> bytes:
                    body.update({k: v for k, v in fields.items() if v is not None})
                    return utf8(self.span(obs, sid, is_root))

                data = fit(data, encode, fields, ("input", "output", "metadata"), self.max_item_bytes, _attribute_bytes)
                truncated = True
        except Exception as exc:  # a bug of ours: the span still goes (and counts), without those fields
            obs = _Open(obs.kind, obs.trace, unencodable(body, exc), obs.weight)
            try:
                data = utf8(self.span(obs, sid, is_root))
            except Exception:  # not even that: its ids, type and times, so that it still lands and counts
                bare = {f: body[f] for f in ("startTime", "endTime", "parentObservationId") if type(body.get(f)) is str}
                data = utf8(self.span(_Open(obs.kind, obs.trace, bare, obs.weight), sid, is_root, trace=False))
            truncated = True
        return Record(obs.trace + "/" + sid, data, obs.weight, truncated, wire="otel")

    def trace_attrs(self, scroll: str) -> str:
        """The trace's attributes as JSON text, built once per change of the trace."""
        info = self._traces.get(scroll)
        if not info:
            return self._static
        cached: Optional[str] = info.get("\x00text")
        if cached is not None:
            return cached
        parts = []
        if info.get("name"):
            parts.append(_str_kv(TRACE_NAME, info["name"]))
        if info.get("sessionId"):
            parts.append(_str_kv(TRACE_SESSION_ID, info["sessionId"]))
        if info.get("userId"):
            parts.append(_str_kv(TRACE_USER_ID, info["userId"]))
        if info.get("tags"):
            parts.append(_list_kv(TRACE_TAGS, [str(t) for t in info["tags"]]))
        meta = info.get("metadata")
        if meta is not None and self.masker is not None:
            meta = self.masker.value(meta)
        items = _items(meta)
        if items is not None:
            for mkey, mvalue in items:
                parts.append(_str_kv(f"{TRACE_METADATA}.{mkey if type(mkey) is str else key_text(mkey)}", mvalue))
        elif meta is not None:  # a mask answered something else than a readable mapping
            parts.append(_str_kv(TRACE_WHOLE_METADATA, meta))
        if self._static:
            parts.append(self._static)
        text = ",".join(parts)
        info["\x00text"] = text
        return text

    def span(self, obs: _Open, sid: str, is_root: bool, trace: bool = True) -> str:
        """One OTLP/JSON `Span` with span id `sid`, as text; a root (the session) has no parent.
        `trace=False`: without the trace's attributes (the last resort of `_emit`)."""
        body = obs.body
        get = body.get
        scroll = obs.trace
        attrs = [_TYPE_HEAD + _quote(obs.kind) + "}}"]
        trace_attrs = self.trace_attrs(scroll) if trace else self._static
        if trace_attrs:
            attrs.append(trace_attrs)
        for field, head, is_map in _OBS_HEADS:
            value = get(field)
            if value is not None and value != "" and (not is_map or value):
                attrs.append(head + _quote(value if type(value) is str else as_text(value)) + "}}")
        if get("traceOutput") is not None:  # (an end record of the session: `_emit_end`)
            attrs.append(_str_kv(TRACE_OUTPUT, get("traceOutput")))
        if get("statusMessage") == "":  # (left out above) one said before no longer stands
            attrs.append(_NO_STATUS)
        first = get("completionStartTime")
        if first:  # JSON text of the time, as Langfuse's SDKs write it and its server reads it
            attrs.append(_str_kv(OBS_COMPLETION_START, _quote(str(first))))
        meta = get("metadata")
        if meta is not None:
            items = _items(meta)
            if items is None:  # a mask answered something else than a readable mapping
                attrs.append(_str_kv(OBS_WHOLE_METADATA, meta))
            else:
                for mkey, mvalue in items:
                    head = _meta_heads.get(mkey) or _meta_head(mkey)
                    attrs.append(head + _quote(mvalue if type(mvalue) is str else as_text(mvalue)) + "}}")
        start = _nanos(get("startTime")) or _nanos(get("endTime")) or _nanos(_now_iso(self._clock())) or "0"
        end = _nanos(get("endTime")) or start
        text: str = '{"traceId":"' + otel_trace_id(scroll) + '","spanId":"' + sid + '"'
        if not is_root:
            parent_id = get("parentObservationId")
            text += ',"parentSpanId":"' + (span_id(parent_id) if parent_id else session_span_id(scroll)) + '"'
        name = get("name") or obs.kind
        text += (
            ',"name":' + _quote(name if type(name) is str else as_text(name)) + ',"kind":1,"startTimeUnixNano":"' + start
            + '","endTimeUnixNano":"' + end + '","attributes":[' + ",".join(attrs) + "]"
        )
        if get("level") == "ERROR":
            # No message of our own making: Langfuse reads the status's message as the status
            # message, and a span re-sent without one (a replay) keeps the one it had.
            message = get("statusMessage")
            if message:
                text += ',"status":{"code":2,"message":' + _quote(message if type(message) is str else as_text(message)) + "}"
            else:
                text += ',"status":{"code":2}'
        return text + "}"

    def body(self, records: Sequence[Record]) -> bytes:
        return self._prefix + b",".join(r.data for r in records) + self._suffix

    def end_record(self, key: str, obs: _Open, incomplete: Optional[str] = None) -> Record:
        """An observation whose start this process never saw (a restart without a spool, or a start
        later than `late_wait`): what its updates said, as a record of its own beside it. Its own id
        and the time of its end, so that it can never be a second row of the observation (whose
        start another process may have sent): a `generation` (its usage and cost count) or an
        `event`, named "<name> (end)", under the observation's parent (else the session's span),
        with metadata `ends_observation` (the observation's id) and `start_not_seen`."""
        body = obs.body
        end = body.get("endTime") or _now_iso(self._clock())
        root = key.startswith("session\x1f")
        meta = body.get("metadata")
        meta = dict(meta) if isinstance(meta, dict) else {} if meta is None else {"metadata": meta}
        meta["ends_observation"] = session_span_id(obs.trace) if root else span_id(key)
        meta["start_not_seen"] = "a restart without a spool, or a start later than late_start_wait after its end"
        record = {f: v for f, v in body.items() if f in _END_FIELDS}
        record.update(name=f"{body.get('name') or obs.kind} (end)", startTime=end, endTime=end, metadata=meta)
        if not root and body.get("parentObservationId"):
            record["parentObservationId"] = body["parentObservationId"]
        if root and body.get("output") is not None:  # the trace's output, where Langfuse reads it from a
            record["traceOutput"] = body["output"]  # span that is not the root (not on its v4 path)
        if incomplete:
            meta["incomplete"] = "true"
            record["statusMessage"] = incomplete
            record.setdefault("level", "WARNING")
        kind = "generation" if obs.kind == "generation" else "event"
        return self.emit(_END + key, _Open(kind, obs.trace, record, obs.weight))
