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
record of its own id (`SpanWriter.end_record`), never as a second row of the observation. A clean shutdown
leaves the state of what is open in the spool (`open_states`), for the next start to end it as
the same rows (`resume`).
"""

from __future__ import annotations

import collections
import json
import json.encoder
import logging
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..config import LangfuseConfig
from ..delivery.client import LangfuseClient
from ..delivery.records import OPEN_WIRE, Record, Report
from ..mapping.masking import Masker
from ..mapping.values import merge_into
from .spans import SpanWriter, _Open

__all__ = ["OtelTransport"]

log = logging.getLogger(__name__)


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
# The observation type of an item without one: the mapping's only spans are tool calls.
_TYPES = {"generation-create": "generation", "generation-update": "generation", "span-create": "tool", "span-update": "tool"}


class OtelTransport:
    """Ingestion items in, ended OTLP spans out. Used from the worker thread only."""

    name = "otel"

    def __init__(
        self, client: LangfuseClient, config: LangfuseConfig, masker: Optional[Masker] = None, clock: Any = time.time
    ) -> None:
        self.client = client
        self.config = config
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
        self._writer = SpanWriter(config, self._traces, masker, clock)

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
                    out.append(self._writer.end_record(key, obs))
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
            out.append(self._writer.emit(key, _Open("event", trace, dict(body, endTime=body.get("startTime")), 1)))
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
        out.append(self._writer.emit(key, obs))

    def _remember(self, key: str, obs: _Open, fields: Sequence[str] = _KEPT, unstarted: bool = False) -> None:
        """`obs` ended (or went without its start, `late`: so marked, with all its updates said):
        what a replay, or a late create, needs to send it again as the same row. `unstarted`: mark
        it so all the same (its end, should it come here, goes as an end record)."""
        kept = {f: obs.body[f] for f in fields if obs.body.get(f) is not None}
        self._ended[key] = _Open(obs.kind, obs.trace, kept, 0, {} if unstarted or obs.late is not None else None)
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
            out.append(self._snapshot(key, obs, why) if why or obs.late is not None else self._writer.emit(key, obs))
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
        taken = 0
        for key, obs, info in _states(records, self._clock() - self.config.session_ttl):
            if key not in self._open:
                self._open[key] = obs
                if info and obs.trace not in self._traces:
                    self._trace_info(obs.trace).update(info)
                taken += 1
        return taken

    def _snapshot(self, key: str, obs: _Open, why: Optional[str]) -> Record:
        """An observation sent before its end (shutdown, or evicted from a full table). A started
        one as its own span, marked incomplete (`why`), with its real id, start, name and parent:
        its end re-sends it as that row, whole. Without usage and cost (an end carries them), so
        that while Langfuse v4 holds both rows (until it merges them) no total counts them twice.
        An unstarted one as an end record (`SpanWriter.end_record`)."""
        if obs.late is not None:
            return self._writer.end_record(key, obs, why)
        self._remember(key, obs, _IDENTITY, unstarted=True)
        body = {f: v for f, v in obs.body.items() if f not in _TOTALS}
        return self._writer.emit(key, _Open(obs.kind, obs.trace, body, obs.weight), incomplete=why)


    # -- spans ------------------------------------------------------------------------------------


    # -- the wire ---------------------------------------------------------------------------------


    @property
    def masker(self) -> Optional[Masker]:
        return self._writer.masker

    @masker.setter
    def masker(self, masker: Optional[Masker]) -> None:
        self._writer.masker = masker

    def body(self, records: Sequence[Record]) -> bytes:
        return self._writer.body(records)

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


def _states(records: Sequence[Record], horizon: float) -> List[Tuple[str, _Open, Dict[str, Any]]]:
    """(key, observation, trace attributes) of each state record (`_Open.state`) saved after
    `horizon`, the observation's snapshot marks cleared for a merge that keeps what a span leaves
    out (v3; on v4 its end replaces the snapshot's row whole)."""
    out = []
    for record in records:
        try:
            state = json.loads(record.data)
            key, kind, trace, body = state["key"], str(state["kind"]), str(state["trace"]), dict(state["body"])
            saved = float(state["savedAt"])
        except (ValueError, KeyError, TypeError):  # never: our own JSON
            continue
        if saved < horizon or not body.get("startTime"):
            continue
        meta = body.get("metadata")
        body["metadata"] = dict(meta, incomplete="false") if isinstance(meta, dict) else {"incomplete": "false"}
        body.setdefault("statusMessage", "")
        info = state.get("traceInfo")
        out.append((key, _Open(kind, trace, body, 0), info if isinstance(info, dict) else {}))
    return out
