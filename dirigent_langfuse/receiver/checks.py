"""What the receiver accepts on the wire, checked with the standard library only.

`check_item` mirrors the constraints of Langfuse's `IngestionEvent` schema (the public OpenAPI
spec) that matter for a client: the envelope, the event type, field types, enums, required ids;
where Langfuse's ingestion API is stricter than its spec (the observation types it takes), it
follows the API.
The test suite checks our own items against the real spec with jsonschema; this module is the
receiver's runtime stand-in, so that a malformed item gets a 400 in its 207 as Langfuse would.
Langfuse's limits on ids, names and integers are `wire/limits.py`, which the mapping reads too.

`decode_otlp` turns an OTLP/JSON `ExportTraceServiceRequest` into (trace, observation) pairs,
reading the attributes Langfuse reads.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Tuple

from ..wire.limits import ENVIRONMENT, ID_MAX, SAFE_INT, TRACE_NAME_MAX, fits, takes_as_id

__all__ = ["check_item", "decode_otlp", "decode_span", "dropped_fields", "otlp_spans", "OtlpError", "INGESTION_TYPES"]


INGESTION_TYPES = frozenset(
    {
        "trace-create", "score-create", "span-create", "span-update", "generation-create",
        "generation-update", "event-create", "sdk-log", "observation-create", "observation-update",
    }
)
# The types `observation-create` and `observation-update` may carry. The OpenAPI spec lists ten
# (AGENT, TOOL, ...), but Langfuse's ingestion API refuses all but these three ("Invalid option");
# the other seven exist over OTel only.
OBSERVATION_TYPES = ("GENERATION", "SPAN", "EVENT")
LEVELS = frozenset({"DEBUG", "DEFAULT", "WARNING", "ERROR"})
_TRACE_STRINGS = ("id", "timestamp", "name", "userId", "sessionId", "release", "version", "environment")
_OBS_STRINGS = (
    "traceId", "name", "startTime", "endTime", "completionStartTime", "statusMessage",
    "parentObservationId", "version", "environment", "model", "promptName",
)


_OBS_STRINGS_ID = _OBS_STRINGS + ("id",)
_SCORE_STRINGS = ("id", "traceId", "sessionId", "observationId", "datasetRunId", "comment", "configId", "queueId")
_SCORE_TYPES = ("NUMERIC", "BOOLEAN", "CATEGORICAL", "CORRECTION", "TEXT")
_UNITS = frozenset({"CHARACTERS", "TOKENS", "MILLISECONDS", "SECONDS", "IMAGES", "REQUESTS"})
_USAGE_COUNTS = ("input", "output", "total", "promptTokens", "completionTokens", "totalTokens")
_USAGE_COSTS = ("inputCost", "outputCost", "totalCost")
_ID_RULE = f"a string of 1 to {ID_MAX} characters without a carriage return"
# OpenAI's usage objects, which Langfuse takes as `usageDetails` as they are: their counts, then
# their maps of counts.
_OPENAI_USAGE = (
    (("prompt_tokens", "completion_tokens", "total_tokens"), ("prompt_tokens_details", "completion_tokens_details")),
    (("input_tokens", "output_tokens", "total_tokens"), ("input_tokens_details", "output_tokens_details")),
)
# What only a generation has. Langfuse's schemas for the other events have no such field, and it
# drops one sent along (a legacy observation event keeps all but the prompt's, and has no
# environment either).
_GENERATION_FIELDS = (
    "completionStartTime", "model", "modelParameters", "usage", "usageDetails", "costDetails", "promptName",
    "promptVersion",
)


def _is_str(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _is_id(value: Any) -> bool:
    return isinstance(value, str) and takes_as_id(value)


def _is_int(value: Any) -> bool:
    """A JSON integer as Langfuse reads one: 5.0 is 5, and nothing past JavaScript's safe range."""
    return (type(value) is int or (type(value) is float and value.is_integer())) and -SAFE_INT <= value <= SAFE_INT


def _is_count(value: Any) -> bool:
    return value is None or (_is_int(value) and value >= 0)


def _usage_details_ok(details: Any) -> bool:
    if not isinstance(details, dict):
        return False
    if all(_is_count(v) for v in details.values()):
        return True
    for counts, maps in _OPENAI_USAGE:  # taken only whole, with nothing else in it
        if (set(details) <= set(counts + maps) and all(details.get(k) is not None and _is_count(details[k]) for k in counts)
                and all(details.get(k) is None
                        or (isinstance(details[k], dict) and all(_is_count(v) for v in details[k].values()))
                        for k in maps)):
            return True
    return False


def dropped_fields(kind: str) -> Tuple[str, ...]:
    """The body fields Langfuse drops from an ingestion event of `kind`: its schema has none of them."""
    if kind.startswith("generation-"):
        return ()
    if kind.startswith("observation-"):
        return _GENERATION_FIELDS[-2:] + ("environment",)
    return _GENERATION_FIELDS


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# Langfuse's server (zod's datetime with offsets): a T, seconds optional, and Z or an offset as
# +HH:MM (some zod versions take +HHMM or +HH too; not relied on). A time without an offset is
# refused, although the spec's `format: date-time` would not say so.
_TIME = re.compile(
    r"^\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])T(?:[01]\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:\.\d+)?)?"
    r"(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)$"
)


def _is_time(value: Any) -> bool:
    """An ISO-8601 date-time with its offset, as Langfuse's server takes it."""
    return isinstance(value, str) and _TIME.match(value) is not None


def _map_value_ok(value: Any) -> bool:
    if value is None or isinstance(value, (str, bool, int, float)):
        return True
    if isinstance(value, dict):
        return all(isinstance(v, str) for v in value.values())
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _check_common(body: Dict[str, Any], strings: Tuple[str, ...], ids: Tuple[str, ...] = ("id", "traceId")) -> Optional[str]:
    """What every body's checks share: its fields that must be text, its ids, its environment."""
    for key in strings:
        if not _is_str(body.get(key)):
            return f"body.{key} must be a string"
    for key in ids:
        if body.get(key) is not None and not _is_id(body[key]):
            return f"body.{key} must be {_ID_RULE}"
    if "environment" in body and not (isinstance(body["environment"], str) and ENVIRONMENT.fullmatch(body["environment"])):
        return "body.environment must be 1 to 40 of a-z, 0-9, - and _, not starting with 'langfuse'"
    return None


def _check_usage(body: Dict[str, Any]) -> Optional[str]:
    usage = body.get("usage")
    if usage is not None:
        if not isinstance(usage, dict):
            return "body.usage must be an object"
        if not all(usage.get(k) is None or _is_int(usage[k]) for k in _USAGE_COUNTS):
            return "body.usage counts must be whole numbers"
        if not all(usage.get(k) is None or _is_number(usage[k]) for k in _USAGE_COSTS):
            return "body.usage costs must be numbers"
        if usage.get("unit") is not None and usage["unit"] not in _UNITS:
            return f"body.usage.unit must be one of {sorted(_UNITS)}"
    details = body.get("usageDetails")
    if details is not None and not _usage_details_ok(details):
        return "body.usageDetails must map names to whole numbers, at least 0 (or be OpenAI's usage object)"
    cost = body.get("costDetails")
    if cost is not None and (
        not isinstance(cost, dict) or not all(v is None or (_is_number(v) and v >= 0) for v in cost.values())
    ):
        return "body.costDetails must map names to numbers, at least 0"
    return None


def _check_observation(kind: str, body: Dict[str, Any]) -> Optional[str]:
    dropped = dropped_fields(kind)
    if dropped:
        body = {k: v for k, v in body.items() if k not in dropped}
    get = body.get
    problem = _check_common(body, _OBS_STRINGS_ID)
    if problem:
        return problem
    for key in ("startTime", "endTime", "completionStartTime"):
        value = get(key)
        if value is not None and not _is_time(value):
            return f"body.{key} must be an ISO-8601 date-time with its offset"
    legacy = kind.startswith("observation-")
    if not legacy and get("id") is None:  # only the legacy observation events may leave it out
        return "body.id is required"
    if get("level") is not None and (not isinstance(body["level"], str) or body["level"] not in LEVELS):
        return f"body.level must be one of {sorted(LEVELS)}"
    if legacy and (not isinstance(get("type"), str) or body["type"] not in OBSERVATION_TYPES):
        return "body.type: Invalid option: expected one of " + "|".join(f'"{t}"' for t in OBSERVATION_TYPES)
    params = get("modelParameters")
    if params is not None and (not isinstance(params, dict) or not all(
        (v is None or isinstance(v, (str, bool, int, float))) if legacy else _map_value_ok(v) for v in params.values()
    )):
        return "body.modelParameters must map names to strings, numbers, booleans, lists of strings or maps of strings"
    problem = _check_usage(body)
    if problem:
        return problem
    version = get("promptVersion")
    if version is not None and not _is_int(version):
        return "body.promptVersion must be an integer"
    if kind.startswith("generation-") and bool(get("promptName")) != bool(version):
        return "body.promptName and body.promptVersion go together: both or neither"
    return None


def _check_trace(body: Dict[str, Any]) -> Optional[str]:
    problem = _check_common(body, _TRACE_STRINGS, ids=("id",))
    if problem:
        return problem
    name = body.get("name")
    if name is not None and not fits(name, TRACE_NAME_MAX):
        return f"body.name must be at most {TRACE_NAME_MAX} characters"
    if body.get("timestamp") is not None and not _is_time(body["timestamp"]):
        return "body.timestamp must be an ISO-8601 date-time with its offset"
    tags = body.get("tags")
    if tags is not None and (not isinstance(tags, list) or not all(isinstance(t, str) for t in tags)):
        return "body.tags must be a list of strings"
    if body.get("public") is not None and not isinstance(body["public"], bool):
        return "body.public must be a boolean"
    return None


def _check_score(body: Dict[str, Any]) -> Optional[str]:
    if not isinstance(body.get("name"), str) or not body["name"]:
        return "body.name is required (a string, not empty)"
    problem = _check_common(body, _SCORE_STRINGS, ids=("id",))
    if problem:
        return problem
    value, data_type = body.get("value"), body.get("dataType")
    if not (_is_number(value) or isinstance(value, str)):
        return "body.value is required (a number or a string)"
    if data_type is not None and data_type not in _SCORE_TYPES:
        return f"body.dataType must be one of {list(_SCORE_TYPES)}"
    if data_type in ("NUMERIC", "BOOLEAN") and not _is_number(value):
        return f"body.value must be a number for dataType {data_type}"
    if data_type == "BOOLEAN" and value not in (0, 1):
        return "body.value must be 0 or 1 for dataType BOOLEAN"
    if data_type in ("CATEGORICAL", "TEXT", "CORRECTION") and not isinstance(value, str):
        return f"body.value must be a string for dataType {data_type}"
    return None


def check_item(item: Any) -> Optional[str]:
    """None when `item` is a valid ingestion event, else why not (one short sentence)."""
    if not isinstance(item, dict):
        return "an item must be an object"
    if not _is_id(item.get("id")):
        return f"id is required: {_ID_RULE}"
    if not _is_time(item.get("timestamp")):
        return "timestamp is required (an ISO-8601 date-time with its offset)"
    kind = item.get("type")
    if not isinstance(kind, str) or kind not in INGESTION_TYPES:
        return f"type {kind!r} is not an ingestion event type"
    body = item.get("body")
    if not isinstance(body, dict):
        return "body is required (an object)"
    if kind == "trace-create":
        return _check_trace(body)
    if kind == "score-create":
        return _check_score(body)
    if kind == "sdk-log":
        return None if "log" in body else "body.log is required"
    return _check_observation(kind, body)


# -- OTLP/JSON -------------------------------------------------------------------------------------


class OtlpError(ValueError):
    """The export as a whole is malformed (Langfuse answers 400 and keeps nothing)."""


_HEX = re.compile(r"[0-9a-fA-F]+")


def _any_value(value: Any) -> Any:
    """The value of an AnyValue, read leniently: a span the receiver accepted must always read
    back (an intValue that is no integer is kept as it came, a malformed list or map is empty)."""
    if not isinstance(value, dict):
        raise OtlpError("attribute value must be an AnyValue object")
    if "stringValue" in value:
        return value["stringValue"]
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "intValue" in value:
        return _number(int, value["intValue"])
    if "doubleValue" in value:
        return _number(float, value["doubleValue"])
    if "arrayValue" in value:
        return [_any_value(v) for v in _values(value["arrayValue"]) if isinstance(v, dict)]
    if "kvlistValue" in value:
        return {kv["key"]: _any_value(kv["value"]) for kv in _values(value["kvlistValue"])
                if isinstance(kv, dict) and isinstance(kv.get("key"), str) and isinstance(kv.get("value"), dict)}
    if "bytesValue" in value:
        return value["bytesValue"]
    return None


def _values(container: Any) -> List[Any]:
    """An ArrayValue's or KeyValueList's `values`; empty when it is malformed."""
    values = container.get("values") if isinstance(container, dict) else None
    return values if isinstance(values, list) else []


def _number(kind: Any, value: Any) -> Any:
    try:
        return kind(value)
    except (TypeError, ValueError, OverflowError):
        return value


def _attributes(entries: Any) -> Dict[str, Any]:
    if entries is None:
        return {}
    if not isinstance(entries, list):
        raise OtlpError("attributes must be a list of KeyValue")
    out = {}
    for kv in entries:
        if not isinstance(kv, dict) or not isinstance(kv.get("key"), str):
            raise OtlpError("an attribute needs a string key")
        out[kv["key"]] = _any_value(kv.get("value"))
    return out


def _check_id(value: Any, length: int, what: str) -> None:
    if not isinstance(value, str) or len(value) != length or _HEX.fullmatch(value) is None:
        raise OtlpError(f"{what} must be {length} hex digits")


def _id(value: Any, length: int, what: str) -> str:
    """A checked id, lowercased (as Langfuse keys it)."""
    _check_id(value, length, what)
    checked: str = value
    return checked.lower()


def _iso(nanos: Any) -> Optional[str]:
    if nanos in (None, "", 0, "0"):
        return None
    try:
        value = int(nanos)
    except (TypeError, ValueError):
        raise OtlpError("times must be unix nanoseconds") from None
    at = datetime.fromtimestamp(value // 1_000_000_000, tz=timezone.utc).replace(
        microsecond=(value % 1_000_000_000) // 1000
    )
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _completion_start(value: Any) -> Optional[str]:
    """As Langfuse reads it: JSON text of a time (`"\"2026-...Z\""`, as its SDKs write it); a bare
    time is not JSON, and Langfuse then keeps none."""
    try:
        parsed = json.loads(value) if isinstance(value, str) else None
    except ValueError:
        return None
    return parsed if isinstance(parsed, str) else None


def _prefixed(attrs: Dict[str, Any], prefix: str) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    whole = attrs.get(prefix)
    if isinstance(_json(whole), dict):
        out.update(_json(whole))
    for key, value in attrs.items():
        if key.startswith(prefix + "."):
            out[key[len(prefix) + 1 :]] = value
    return out


def _check_nanos(value: Any, what: str) -> None:
    """Unix nanoseconds, as OTLP/JSON writes them (a decimal string or an integer), or absent."""
    if value is None or value == "" or value == 0:
        return
    try:
        nanos = int(value)
    except (TypeError, ValueError):
        raise OtlpError(f"{what} must be unix nanoseconds") from None
    if not 0 <= nanos < 1 << 63:
        raise OtlpError(f"{what} must be unix nanoseconds")


def otlp_spans(payload: Any) -> List[Dict[str, Any]]:
    """The spans of an OTLP/JSON export, checked (ids, times, attribute shapes) but not decoded:
    OtlpError for a malformed export. Cheap enough for the receiver's hot path."""
    if not isinstance(payload, dict) or not isinstance(payload.get("resourceSpans", []), list):
        raise OtlpError("body must be an ExportTraceServiceRequest with a resourceSpans list")
    out = []
    for resource_spans in payload.get("resourceSpans", []):
        if not isinstance(resource_spans, dict):
            raise OtlpError("resourceSpans entries must be objects")
        _attributes((resource_spans.get("resource") or {}).get("attributes"))
        for scope_spans in resource_spans.get("scopeSpans") or []:
            for span in (scope_spans or {}).get("spans") or []:
                if type(span) is not dict:
                    raise OtlpError("spans must be objects")
                get = span.get
                _check_id(get("traceId"), 32, "traceId")
                _check_id(get("spanId"), 16, "spanId")
                if get("parentSpanId"):
                    _check_id(span["parentSpanId"], 16, "parentSpanId")
                _check_nanos(get("startTimeUnixNano"), "startTimeUnixNano")
                _check_nanos(get("endTimeUnixNano"), "endTimeUnixNano")
                entries = get("attributes")
                if entries is not None:
                    if type(entries) is not list:
                        raise OtlpError("attributes must be a list of KeyValue")
                    for kv in entries:
                        if type(kv) is not dict or type(kv.get("key")) is not str or type(kv.get("value")) is not dict:
                            raise OtlpError("an attribute needs a string key and an AnyValue object")
                out.append(span)
    return out


def decode_otlp(payload: Any) -> List[Tuple[Dict[str, Any], Dict[str, Any]]]:
    """(trace fields, observation fields) per span; OtlpError for a malformed export."""
    return [decode_span(span) for span in otlp_spans(payload)]


def _first(*values: Any) -> Any:
    """The first that is not None (JavaScript's `??`)."""
    return next((v for v in values if v is not None), None)


def decode_span(span: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(trace fields, observation fields) of one checked span, as Langfuse reads its attributes."""
    trace_id = _id(span.get("traceId"), 32, "traceId")
    span_id = _id(span.get("spanId"), 16, "spanId")
    parent = span.get("parentSpanId") or None
    if parent is not None:
        parent = _id(parent, 16, "parentSpanId")
    attrs = _attributes(span.get("attributes"))
    root = parent is None or str(attrs.get("langfuse.internal.as_root")) == "true"
    status: Dict[str, Any] = span["status"] if isinstance(span.get("status"), dict) else {}
    start = _iso(span.get("startTimeUnixNano"))
    obs: Dict[str, Any] = {
        "id": span_id,
        "traceId": trace_id,
        "parentObservationId": parent,
        "name": span.get("name"),
        "type": str(attrs.get("langfuse.observation.type") or "span").upper(),
        "startTime": start,
        "endTime": _iso(span.get("endTimeUnixNano")),
        "input": _json(attrs.get("langfuse.observation.input")),
        "output": _json(attrs.get("langfuse.observation.output")),
        "model": attrs.get("langfuse.observation.model.name") or attrs.get("gen_ai.request.model"),
        "modelParameters": _json(attrs.get("langfuse.observation.model.parameters")),
        "usageDetails": _json(attrs.get("langfuse.observation.usage_details")),
        "costDetails": _json(attrs.get("langfuse.observation.cost_details")),
        # As Langfuse reads them: a span without a level is DEFAULT (or ERROR by its status), so a
        # span sent again without one sets it back; a status message, even empty, stands.
        "level": attrs.get("langfuse.observation.level") or ("ERROR" if status.get("code") == 2 else "DEFAULT"),
        "statusMessage": _first(attrs.get("langfuse.observation.status_message"), status.get("message")),
        "metadata": _prefixed(attrs, "langfuse.observation.metadata") or None,
        "environment": attrs.get("langfuse.environment"),
        "completionStartTime": _completion_start(attrs.get("langfuse.observation.completion_start_time")),
    }
    trace: Dict[str, Any] = {
        "id": trace_id,
        "timestamp": start,
        "name": attrs.get("langfuse.trace.name"),
        "userId": attrs.get("user.id") or attrs.get("langfuse.user.id"),
        "sessionId": attrs.get("session.id") or attrs.get("langfuse.session.id"),
        "tags": attrs.get("langfuse.trace.tags"),
        "metadata": _prefixed(attrs, "langfuse.trace.metadata") or None,
        # A root span's own input and output stand for the trace's when it sets none (Langfuse's
        # extractInputAndOutput, domain "trace"; on its v4 path a root span's are the trace's)
        "input": _json(attrs.get("langfuse.trace.input") or (attrs.get("langfuse.observation.input") if root else None)),
        "output": _json(attrs.get("langfuse.trace.output") or (attrs.get("langfuse.observation.output") if root else None)),
        "environment": attrs.get("langfuse.environment"),
        "release": attrs.get("langfuse.release"),
    }
    return trace, {k: v for k, v in obs.items() if v is not None}
