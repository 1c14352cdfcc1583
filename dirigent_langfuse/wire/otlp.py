"""The OTLP/JSON transport: Langfuse Cloud and self-hosted v4 (`/api/public/otel/v1/traces`).

OTel spans are sent once, ended. The transport therefore keeps every observation in progress
(session, message, tool call) in a bounded table, folds the ingestion items' creates and
updates into it, and emits a span when its observation ends. What a user sees in Langfuse:

- one trace per scroll; its OTel trace id is the scroll_id's 32 hex digits when the scroll_id is
  a UUID, else uuid5(scroll_id). Trace attributes (`langfuse.trace.name`, `session.id`,
  `user.id`, `langfuse.trace.tags`, `langfuse.trace.metadata.*`) ride on every span, so the trace
  is named as soon as its first span lands;
- a root span of type `agent` for the session itself, from `SessionCreated` to `SessionEnded`,
  with the session's first input and last answer as its own, which Langfuse takes for the
  trace's (sent once: `langfuse.trace.input` would double the span, and v4 does not read it);
  messages are `generation` spans under it (with `completion_start_time` when chunks streamed),
  tool calls `tool` spans under their message, plans
  `event` spans;
- an observation still open at `shutdown()` (or pushed out of a full table) is emitted ended at
  that moment, with level WARNING, a status message saying so and
  `langfuse.observation.metadata.incomplete = "true"`: never silently lost.

Span and trace ids derive from the observation ids, so a replay re-sends the same spans; an end
(or a start) replayed alone too, since the start, parent, name, end and level of the last 1,024
observations that ended are remembered.

Promise, for Langfuse v4 (a row per span id and start time, the last export replacing it whole):
every export of an observation carries the same span id, start, type, name and parent, and the
last one the whole observation. So a span is sent only once its start is known: an end whose
start this process has not seen waits for it (`late_start_wait`), and past that goes as an end
record of its own id (`_emit_end`), never as a second row of the observation. A clean shutdown
leaves the state of what is open in the spool (`open_states`), for the next start to end it as
the same rows (`resume`).
"""

from __future__ import annotations

import collections
import functools
import json
import json.encoder
import logging
import re
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from .._version import __version__
from ..config import LangfuseConfig
from ..delivery.client import LangfuseClient
from ..delivery.records import OPEN_WIRE, NotChosen, Record, Report
from ..mapping.ids import otel_trace_id, session_span_id, span_id
from ..mapping.masking import Masker
from ..mapping.values import iso_time, merge_into
from .encoding import as_text, dumps, fit, key_text, unencodable, utf8
from .ingestion import IngestionTransport
from .limits import V4_REFUSAL

__all__ = ["OtelTransport", "AutoTransport", "otel_trace_id", "span_id", "choose_transport"]

log = logging.getLogger(__name__)


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


_KEEP_FIRST = ("startTime", "parentObservationId")  # the create's start and parent win
# Remembered once an observation ended (small fields only: not a status message, which may be a
# whole traceback, and which Langfuse keeps when a re-sent span has none): a replayed end, or a
# replayed start after its end (a replay of events that had raced), re-sends the span as it was.
_KEPT = ("id", "startTime", "parentObservationId", "name", "type", "endTime", "level")
_ENDED_KEPT = 1024  # for that many: a bound, not a table growing with the sessions served
# Observations ended by updates alone (no create in this process: a race, or a restart) keep all
# their updates said, input and output too, for a create that comes late; only the last 64.
_LATE_KEPT = 64
# A snapshot's identity (what `_snapshot` remembers), and what it leaves out.
_IDENTITY = ("id", "startTime", "parentObservationId", "name", "type")
_TOTALS = ("usageDetails", "costDetails")
# What an end record (`_emit_end`) carries of what the updates said, and its key's prefix.
_END_FIELDS = ("input", "output", "model", "modelParameters", "usageDetails", "costDetails", "level",
               "statusMessage", "completionStartTime")
_END = "end\x1f"
# The observation type of an item without one: the mapping's only spans are tool calls.
_TYPES = {"generation-create": "generation", "generation-update": "generation", "span-create": "tool", "span-update": "tool"}


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


class OtelTransport:
    """Ingestion items in, ended OTLP spans out. Used from the worker thread only."""

    name = "otel"

    def __init__(
        self, client: LangfuseClient, config: LangfuseConfig, masker: Optional[Masker] = None, clock: Any = time.time
    ) -> None:
        self.client = client
        self.config = config
        self.masker = masker
        self.max_open = config.max_open_observations
        self.max_item_bytes = config.max_item_bytes
        self._clock = clock
        self.late_wait = config.late_start_wait
        self._open: "collections.OrderedDict[str, _Open]" = collections.OrderedDict()
        # Observations ended by updates alone, waiting for their start (two host threads raced),
        # by when they go without it (`late_wait` after their end came): in that order.
        self._waiting: "collections.OrderedDict[str, float]" = collections.OrderedDict()
        # The small fields (_KEPT) of the observations that ended lately, so that a replayed end
        # re-sends their span as it was, not one that starts at its end; and (_LATE_KEPT) all that
        # the updates said of those ended by updates alone, for a create that comes late.
        self._ended: "collections.OrderedDict[str, _Open]" = collections.OrderedDict()
        self._late: "collections.OrderedDict[str, Dict[str, Any]]" = collections.OrderedDict()
        self._traces: "collections.OrderedDict[str, Dict[str, Any]]" = collections.OrderedDict()
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

    # -- folding items into observations -------------------------------------------------------

    def open_count(self) -> int:
        return len(self._open)

    def open_items(self) -> int:
        """The items folded into the observations still open (sent once each ends)."""
        return sum(obs.weight for obs in list(self._open.values()))

    def trace_count(self) -> int:
        """Traces whose attributes are remembered (sessions not yet ended, at most `max_open`)."""
        return len(self._traces)

    def prepare(self, items: Sequence[Dict[str, Any]]) -> List[Record]:
        """The spans of what ended in `items`, and of what waited for its start past `late_wait`."""
        out: List[Record] = []
        for item in items:
            self._fold(item, out)
        if self._waiting:
            now = self._clock()
            while self._waiting:
                key, due = next(iter(self._waiting.items()))
                if due > now:
                    break
                del self._waiting[key]
                obs = self._open.pop(key, None)
                if obs is not None:
                    self._remember(key, obs)
                    out.append(self._emit_end(key, obs))
                    if key.startswith("session\x1f"):
                        self._traces.pop(obs.trace, None)
        while len(self._open) > self.max_open:
            key, obs = self._open.popitem(last=False)
            self._waiting.pop(key, None)
            out.append(self._snapshot(key, obs, "evicted: too many observations open at once"))
        return out

    def due_in(self) -> Optional[float]:
        """Seconds until an observation waiting for its start goes without it (a `prepare` sends
        it then), if one waits."""
        due = next(iter(self._waiting.values()), None)
        return None if due is None else due - self._clock()

    def _trace_info(self, trace: str) -> Dict[str, Any]:
        info = self._traces.get(trace)
        if info is None:
            info = self._traces[trace] = {}
            while len(self._traces) > self.max_open:
                self._traces.popitem(last=False)
        return info

    def _fold(self, item: Dict[str, Any], out: List[Record]) -> None:
        kind = str(item.get("type") or "")
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
        update = kind.endswith("-update")
        obs = self._open.get(key)
        if obs is None and key in self._ended:
            began = self._ended[key]  # ended already: a replayed or late end, or a late create
            late = self._late.pop(key, None)
            if late is None and began.late is not None:  # went without its start; what it said, past _LATE_KEPT
                late = dict(began.body)
            if update:
                obs = _Open(began.kind, trace, merge_into(dict(began.body), body, _KEEP_FIRST), 1, late)
                if late is not None:
                    merge_into(late, body, _KEEP_FIRST)
            elif late is not None:  # its updates came first and ended it: this create completes it
                obs = _Open(began.kind, trace, merge_into(dict(body), late, _KEEP_FIRST), 1)
            else:  # a replayed start: its own start, with the end that is known. Not its metadata,
                # which went out with it before, and would now come after what its end said (a tool
                # call's "pending" after its "failed": Langfuse merges metadata key by key).
                ended = {f: v for f, v in began.body.items() if f != "startTime"}
                start = {f: v for f, v in body.items() if f != "metadata"}
                obs = _Open(began.kind, trace, merge_into(start, ended, _KEEP_FIRST), 1)
            self._open[key] = obs
        elif obs is None:
            obs_type = str(body.get("type") or _TYPES.get(kind, "span")).lower()
            obs = _Open(obs_type, trace, dict(body), 1, dict(body) if update else None)
            self._open[key] = obs
        elif obs.late is not None and not update:  # the create, after updates that did not end it
            obs.weight += 1
            obs.body, obs.late = merge_into(dict(body), obs.late, _KEEP_FIRST), None
        else:
            obs.weight += 1
            merge_into(obs.body, body, _KEEP_FIRST)  # obs.body is our own copy
            if obs.late is not None:
                merge_into(obs.late, body, _KEEP_FIRST)
        if obs.body.get("endTime"):
            self._end(key, obs, out)

    def _end(self, key: str, obs: _Open, out: List[Record]) -> bool:
        """`obs` has ended: sent now (True), or, while only its updates were seen here (`late`: its
        create may follow, two host threads raced), left waiting for its start, `late_wait` at
        most (see `prepare`): a span of its own id sent now could only guess its start, and a row
        in Langfuse v4 is a span id and a start time, so the real start would make a second row."""
        if obs.late is not None:
            if key not in self._waiting:
                self._waiting[key] = self._clock() + self.late_wait
            return False
        if self._waiting:
            self._waiting.pop(key, None)
        self._close(key, obs, out)
        return True

    def _close(self, key: str, obs: _Open, out: List[Record]) -> None:
        """An observation ended: out of the open table, remembered, and emitted as its span."""
        del self._open[key]
        self._remember(key, obs)
        out.append(self._emit(key, obs))

    def _remember(self, key: str, obs: _Open, fields: Sequence[str] = _KEPT) -> None:
        """`obs` ended (or went without its start, `late`: so marked, with all its updates said):
        what a replay, or a late create, needs to send it again as the same row."""
        kept = {f: obs.body[f] for f in fields if obs.body.get(f) is not None}
        self._ended[key] = _Open(obs.kind, obs.trace, kept, 0, {} if obs.late is not None else None)
        self._ended.move_to_end(key)
        while len(self._ended) > _ENDED_KEPT:
            self._ended.popitem(last=False)
        if obs.late is not None:  # no create yet: all its updates said, for a create that comes late
            self._late[key] = dict(obs.late)
            while len(self._late) > _LATE_KEPT:
                self._late.popitem(last=False)

    def _fold_trace(self, body: Dict[str, Any], out: List[Record]) -> None:
        scroll = body.get("id")
        if not scroll:
            return
        info = self._trace_info(scroll)
        info.pop("\x00text", None)
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
        starts = body.get("timestamp") is not None and not ended  # the session's start (SessionCreated)
        if root is None:
            began = self._ended.get(root_key)  # ended already (a replay), or went without its start
            if began is not None and began.late is None and began.body.get("startTime"):
                root = _Open("agent", scroll, dict(began.body), 1)  # (its known end: sent again as it was)
            elif starts:  # (after its end went without it, too late: with the end that is known)
                known = began.body if began is not None else {}
                root = _Open("agent", scroll, dict(known, id=root_key, name=body.get("name") or known.get("name") or
                                                    "session", startTime=body["timestamp"]), 1)
            else:  # its start was not seen here (a restart, or two host threads raced): see _fold
                name = (began.body.get("name") if began is not None else None) or "session"
                root = _Open("agent", scroll, {"id": root_key, "name": name}, 1, {})
            self._open[root_key] = root
        else:
            root.weight += 1
            if starts and root.late is not None:  # its start, after what raced it
                root.late = None
                root.body["startTime"] = body["timestamp"]
            if body.get("name"):
                root.body["name"] = body["name"]
        if body.get("input") is not None and root.body.get("input") is None:
            root.body["input"] = body["input"]  # the session's first input (it came with its first message)
        if ended:
            root.body["endTime"] = meta.get("ended_at")
            root.body["statusMessage"] = meta.get("end_reason")
            if body.get("output") is not None:  # the session's last answer
                root.body["output"] = body["output"]
        if root.body.get("endTime") and self._end(root_key, root, out):
            # The session is over: its spans so far carried the trace's attributes; forget them.
            self._traces.pop(scroll, None)

    def close_open(self, now: Optional[float] = None) -> List[Record]:
        """Emit every observation still open, now (at shutdown): a started one as a snapshot, an
        unstarted one (only updates seen) as an end record."""
        out = []
        self._waiting.clear()
        while self._open:
            key, obs = self._open.popitem(last=False)
            ended = obs.body.get("endTime")  # (an unstarted one that waited for its create)
            why = None if ended else "incomplete: the stream shut down before this observation ended"
            out.append(self._snapshot(key, obs, why) if why or obs.late is not None else self._emit(key, obs))
        return out

    def open_states(self) -> List[Record]:
        """The started observations still open, each as a record of its state (weight 0), for the
        spool: the next process resumes them (`resume`) and ends each as the same row."""
        now = self._clock()
        return [Record(key, obs.state(key, self._traces.get(obs.trace), now), 0, wire=OPEN_WIRE)
                for key, obs in list(self._open.items()) if obs.late is None]

    def resume(self, records: Sequence[Record]) -> int:
        """Take up the observations an earlier process left open (`open_states`, from the spool):
        open again with their identity, start, name, parent and what their start said, so that
        their end here sends each as the row it already is. Those left more than `session_ttl`
        ago (the mapping forgets a session so), and those open here already, are left out. How
        many were taken."""
        horizon = self._clock() - self.config.session_ttl
        taken = 0
        for record in records:
            try:
                state = json.loads(record.data)
                key, kind, trace, body = state["key"], str(state["kind"]), str(state["trace"]), dict(state["body"])
                saved = float(state["savedAt"])
            except (ValueError, KeyError, TypeError):  # never: our own JSON
                continue
            if key in self._open or saved < horizon or not body.get("startTime"):
                continue
            # What the earlier process's snapshot said, cleared for a merge that keeps what a span
            # leaves out (v3); on v4 the end replaces the snapshot's row whole.
            meta = body.get("metadata")
            body["metadata"] = dict(meta, incomplete="false") if isinstance(meta, dict) else {"incomplete": "false"}
            body.setdefault("statusMessage", "")
            self._open[key] = _Open(kind, trace, body, 0)
            info = state.get("traceInfo")
            if isinstance(info, dict) and info and trace not in self._traces:
                self._trace_info(trace).update(info)
            taken += 1
        return taken

    def _snapshot(self, key: str, obs: _Open, why: Optional[str]) -> Record:
        """An observation sent before its end (shutdown, or evicted from a full table). A started
        one as its own span, marked incomplete (`why`), with its real id, start, name and parent:
        its end re-sends it as that row, whole. Without usage and cost (an end carries them), so
        that while Langfuse v4 holds both rows (until it merges them) no total counts them twice.
        An unstarted one as an end record (`_emit_end`)."""
        if obs.late is not None:
            return self._emit_end(key, obs, why)
        self._remember(key, obs, _IDENTITY)  # its end, should it come here, goes as an end record
        self._ended[key].late = {}
        body = {f: v for f, v in obs.body.items() if f not in _TOTALS}
        return self._emit(key, _Open(obs.kind, obs.trace, body, obs.weight), incomplete=why)

    def _emit_end(self, key: str, obs: _Open, incomplete: Optional[str] = None) -> Record:
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
        return self._emit(_END + key, _Open(kind, obs.trace, record, obs.weight))

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

    def _trace_attrs(self, scroll: str) -> str:
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
        trace_attrs = self._trace_attrs(scroll) if trace else self._static
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
        self._waiting.clear()
        self._traces.clear()
        self._ended.clear()
        self._late.clear()


def major_version(version: Optional[str]) -> Optional[int]:
    match = re.match(r"^\s*v?(\d+)", version or "")
    return int(match.group(1)) if match else None


def choose_transport(version: Optional[str]) -> str:
    """`otel` for Langfuse v4 and later or an unknown version, `ingestion` before v4."""
    major = major_version(version)
    return "ingestion" if major is not None and major < 4 else "otel"


class AutoTransport:
    """Asks `GET /api/public/health` on the worker thread, then acts as the chosen one.

    A version below 4 chooses `ingestion`; 4 and later, or an answer without a version, `otel`.
    No answer (Langfuse not up yet) chooses nothing: `resolve` raises `NotChosen` and the worker
    asks again later, unless `guess` (at shutdown), which takes `otel`.

    The one change of mind: a Langfuse that took ingestion and now refuses its events as v4 does
    (it was upgraded while this process ran, or a spool was written before) is asked again; at 4
    or later, auto moves to OTel for good, and what it had encoded for ingestion (refused, still
    to send, or spooled) is folded into spans instead of being lost (`rewire`).
    """

    def __init__(self, client: LangfuseClient, config: LangfuseConfig, masker: Optional[Masker] = None) -> None:
        self.client = client
        self.config = config
        self.masker = masker
        self._chosen: Optional[Union[IngestionTransport, OtelTransport]] = None

    @property
    def name(self) -> str:
        return self._chosen.name if self._chosen is not None else "auto"

    @property
    def chosen(self) -> bool:
        return self._chosen is not None

    def resolve(self, guess: bool = False) -> Union[IngestionTransport, "OtelTransport"]:
        if self._chosen is None:
            version, reached = self.client.health()
            if not reached and not guess:
                raise NotChosen(f"Langfuse at {self.config.host} does not answer its health check yet")
            choice = choose_transport(version)
            if reached:
                log.info(
                    "Langfuse at %s reports version %s: using the %s transport",
                    self.config.host, version or "(unknown)", choice,
                )
            else:
                log.warning(
                    "Langfuse at %s never answered its health check before shutdown: using the %s transport",
                    self.config.host, choice,
                )
            if choice == "ingestion":
                self._chosen = IngestionTransport(self.client, self.config, self.masker)
            else:
                self._chosen = OtelTransport(self.client, self.config, self.masker)
        return self._chosen

    def prepare(self, items: Sequence[Dict[str, Any]]) -> List[Record]:
        return self.resolve().prepare(items)

    def due_in(self) -> Optional[float]:
        return self._chosen.due_in() if self._chosen is not None else None

    def open_states(self) -> List[Record]:
        return self._chosen.open_states() if self._chosen is not None else []

    def resume(self, records: Sequence[Record]) -> int:
        return self._chosen.resume(records) if isinstance(self._chosen, OtelTransport) else 0

    def rewire(self, records: Sequence[Record]) -> Optional[List[Record]]:
        """`records`, encoded for ingestion, as OTel spans, once Langfuse is known to take OTel
        (asked again here the first time); None while it says it is older than 4 (the refusal
        stands). A `mask` sees their values a second time (masks that redact are unchanged by it)."""
        if isinstance(self._chosen, IngestionTransport):
            version, reached = self.client.health()
            if not reached or choose_transport(version) != "otel":
                return None
            log.warning(
                "Langfuse at %s now reports version %s and refuses ingestion events: moving to the otel "
                "transport; what was encoded for ingestion is sent as spans", self.config.host, version,
            )
            self._chosen = OtelTransport(self.client, self.config, self.masker)
        items = []
        for record in records:
            try:
                items.append(json.loads(record.data))
            except ValueError:  # never: our own JSON
                log.error("cannot read an item encoded for ingestion (%d bytes); dropped", len(record.data))
        return self.resolve().prepare(items)

    def open_count(self) -> int:
        return self._chosen.open_count() if self._chosen is not None else 0

    def open_items(self) -> int:
        return self._chosen.open_items() if self._chosen is not None else 0

    def close_open(self, now: Optional[float] = None) -> List[Record]:
        return self._chosen.close_open(now) if self._chosen is not None else []

    def send(self, records: Sequence[Record]) -> Report:
        chosen = self.resolve()
        if isinstance(chosen, IngestionTransport):
            report = chosen.send(records)
            refused = [d for d in report.dropped if d[1] == "status_400" and d[2].startswith(V4_REFUSAL)]
            if refused:  # this Langfuse is v4 now: not lost, encoded again (see rewire)
                report.dropped = [d for d in report.dropped if d not in refused]
                report.rewire = [record for record, _, _ in refused]
            return report
        legacy = [r for r in records if r.wire == "ingestion"]  # encoded before the move to OTel
        if not legacy:
            return chosen.send(records)
        rest = [r for r in records if r.wire != "ingestion"]
        report = chosen.send(rest) if rest else Report(sent=False)
        report.rewire.extend(legacy)
        return report

    def reset(self) -> None:
        self.client.reset()
        if self._chosen is not None and hasattr(self._chosen, "reset"):
            self._chosen.reset()
