"""BusEvent → Langfuse ingestion items, as a pure function over an explicit, bounded state.

`bus_event_to_items(event, state)` returns the items `{"id", "timestamp", "type", "body"}` of
`POST /api/public/ingestion` for one bound event, and nothing for events it skips. Ids are
deterministic, so a replayed or retried event never makes a duplicate in Langfuse:

- a trace's id is the scroll_id;
- a message's observation id is uuid5(scroll_id, message_id); a tool call's, uuid5(scroll_id,
  toolCallId); a plan event's, uuid5(event_id);
- an item's envelope id is the event_id for an event's first item (every event yields one), else
  uuid5(event_id, index of the item within the event).

`MappingState` remembers, per scroll, the message in progress (the parent of tool calls started
during it) and which tool calls were seen. It is bounded (`max_scrolls`, `ttl`) and forgets a
scroll at `SessionEnded`. Without a state the function still works: tool calls hang off the trace.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from ..bus import BusEvent, MessageCompleted, MessageStarted, SessionCreated, SessionEnded, SessionUpdate
from ..wire.encoding import as_text, to_jsonable
from ..wire.limits import TRACE_NAME_MAX, fits, takes_as_id
from .ids import envelope_id, observation_id, uuid5_id
from .snapshot import own
from .state import MappingState, _Scroll
from .values import _map_value, _prune, iso_time, merge_body

__all__ = [
    "bus_event_to_items", "maps", "streams_text", "merge_body", "MappingState", "observation_id", "envelope_id",
    "iso_time", "Item",
]

Item = Dict[str, Any]


def _trace_name(name: str) -> str:
    """`name` as Langfuse takes a trace's name (itself when it fits): at most 1,000 characters, as
    JavaScript counts them, else cut there and ended with "…". A longer one made Langfuse refuse
    the trace."""
    if fits(name, TRACE_NAME_MAX):
        return name
    cut = name[: TRACE_NAME_MAX - 1]
    while not fits(cut, TRACE_NAME_MAX - 1):
        cut = cut[:-1]
    return cut + "…"




def _item(event: BusEvent, index: int, type_: str, body: Dict[str, Any]) -> Item:
    return {"id": envelope_id(event.event_id, index), "timestamp": iso_time(event.at), "type": type_, "body": body}


def _trace(event: SessionCreated, scroll_id: str, state: Optional[MappingState]) -> List[Item]:
    metadata: Any = own(event.metadata) if event.metadata is not None else {}
    if metadata is event.metadata:  # the host's own object (its code raised while copied): never changed
        metadata = dict(metadata) if type(metadata) is dict else {"metadata": to_jsonable(metadata)}
    metadata.update(
        _prune(
            {
                "connector_id": event.connector_id,
                "native_session_id": event.native_session_id,
                "cwd": event.cwd,
                "agent": event.agent,
                "agent_version": event.agent_version,
                "model": event.model,
            }
        )
    )
    name = event.title or (f"{event.agent} session" if event.agent else "agent session")
    fitted = _trace_name(name)
    if fitted is not name:
        metadata["title"] = name  # whole, where Langfuse takes it
        name = fitted
    body = _prune(
        {
            "id": scroll_id,
            "timestamp": iso_time(event.at),
            "name": name,
            "userId": event.user_id,
            "sessionId": event.native_session_id or None,
            "tags": list(event.tags) or None,
            "metadata": metadata,
        }
    )
    if state is not None:
        entry = state.scroll(scroll_id)
        entry.began = True
        if entry.held_input is not None and not entry.has_input:  # its first message came first
            body["input"] = entry.held_input
            entry.has_input, entry.held_input = True, None
    return [_item(event, 0, "trace-create", body)]


def _message_started(event: MessageStarted, scroll_id: str, state: Optional[MappingState]) -> List[Item]:
    obs = observation_id(scroll_id, "msg", event.message_id)
    value = own(event.input)
    first = False
    if state is not None:
        entry = state.scroll(scroll_id)
        if obs in entry.early:  # it completed already (two host threads raced): not in progress
            entry.early = tuple(e for e in entry.early if e != obs)
        else:
            if entry.message != obs:
                state.take_text(entry)  # chunks of a message that never completed
            entry.message = obs
        if not entry.has_input and value is not None:
            if entry.began:
                entry.has_input = first = True
            elif entry.held_input is None:
                entry.held_input = value
    params = event.model_parameters
    body = _prune(
        {
            "id": obs,
            "traceId": scroll_id,
            "name": f"{event.role} message",
            "startTime": iso_time(event.at),
            "model": event.model,
            "modelParameters": {k: _map_value(v) for k, v in params.items() if v is not None} or None
            if params
            else None,
            "input": value,
            "metadata": {"message_id": event.message_id, "role": event.role},
        }
    )
    if first:  # the session's first input is the trace's: said now, so that a restart keeps it
        return [_item(event, 0, "generation-create", body), _item(event, 1, "trace-create", {"id": scroll_id, "input": value})]
    return [_item(event, 0, "generation-create", body)]


def _usage_details(event: MessageCompleted) -> Optional[Dict[str, int]]:
    usage = event.usage
    if usage is None:
        return None
    details = {"input": usage.input_tokens, "output": usage.output_tokens}
    if usage.cache_read_tokens:
        details["input_cache_read"] = usage.cache_read_tokens
    if usage.cache_write_tokens:
        details["input_cache_write"] = usage.cache_write_tokens
    details["total"] = usage.total
    return details


def _message_completed(event: MessageCompleted, scroll_id: str, state: Optional[MappingState]) -> List[Item]:
    obs = observation_id(scroll_id, "msg", event.message_id)
    streamed: Dict[str, str] = {}
    entry: Optional[_Scroll] = None
    if state is not None:
        entry = state.scroll(scroll_id)
        if entry.message == obs:
            entry.message = None
            streamed = state.take_text(entry)
        else:  # completed before its start was mapped: that start must not make it "in progress"
            entry.early = (entry.early + (obs,))[-8:]
    output = own(event.output)
    if output is None:
        output = streamed.get("output") or None  # the host sent the answer only as chunks
    if output is not None and entry is not None:
        entry.output = output
    metadata = {"stop_reason": event.stop_reason} if event.stop_reason else {}
    if streamed.get("thought"):
        metadata["thought"] = streamed["thought"]
    body = _prune(
        {
            "id": obs,
            "traceId": scroll_id,
            "endTime": iso_time(event.at),
            "output": output,
            "completionStartTime": streamed.get("first"),
            "usageDetails": _usage_details(event),
            "costDetails": {"total": float(event.cost_usd)} if event.cost_usd is not None else None,
            "level": "ERROR" if event.error else None,
            "statusMessage": event.error,
            "metadata": metadata or None,
        }
    )
    return [_item(event, 0, "generation-update", body)]


def _tool_metadata(event: SessionUpdate, update: Dict[str, Any]) -> Dict[str, Any]:
    meta: Dict[str, Any] = {}
    get = update.get
    for key in ("kind", "locations", "status", "toolCallId"):
        value = get(key)
        if value is not None:
            meta[key] = value if type(value) is str else own(value)
    meta["connector_id"] = event.connector_id
    meta["native_session_id"] = event.native_session_id
    return meta


def _tool_output(update: Dict[str, Any]) -> Any:
    if update.get("rawOutput") is not None:
        return own(update["rawOutput"])
    return own(update.get("content"))


def _tool_call(event: SessionUpdate, scroll_id: str, state: Optional[MappingState], is_update: bool) -> List[Item]:
    update = event.update
    call_id = update.get("toolCallId")
    if not isinstance(call_id, str) or not call_id:
        return []
    obs = observation_id(scroll_id, "tool", call_id)
    seen = False
    parent: Optional[str] = None
    if state is not None:
        entry = state.scroll(scroll_id)
        seen = call_id in entry.tools
        parent = entry.tools[call_id] if seen else entry.message
        if not seen and len(entry.tools) < state.max_tools:
            entry.tools[call_id] = parent
    status = update.get("status")
    at = iso_time(event.at)
    body: Dict[str, Any] = {"id": obs, "traceId": scroll_id}
    title = _title(update.get("title"))
    if not is_update:
        body["name"] = title or "tool call"
        body["startTime"] = at
        if parent is not None:
            body["parentObservationId"] = parent
    elif title:
        body["name"] = title
    if update.get("rawInput") is not None:
        body["input"] = own(update["rawInput"])
    if status in ("completed", "failed"):
        body["endTime"] = at
        output = _tool_output(update)
        if output is not None:
            body["output"] = output
        if status == "failed":
            body["level"] = "ERROR"
            body["statusMessage"] = _failure_message(output)
    elif update.get("content") is not None and is_update:
        body["output"] = own(update["content"])
    body["metadata"] = _tool_metadata(event, update)
    # An update is an update even when its tool_call is unknown here (sent by an earlier process,
    # or before a restart): a create would overwrite the call's start, name and parent in Langfuse.
    # Spans, not `observation-create` of type TOOL: Langfuse's ingestion API takes only GENERATION,
    # SPAN and EVENT there and refuses the rest (its OpenAPI spec says otherwise). Over OTel they
    # are `tool` spans (wire/otlp.py).
    kind = "span-update" if is_update else "span-create"
    return [_item(event, 0, kind, body)]


def _title(title: Any) -> Any:
    """A tool call's title as Langfuse's `name`, which must be a string (a title of another type
    made Langfuse refuse the whole item): text as it is, anything else as its JSON text."""
    return title if title is None or type(title) is str else as_text(title)


def _failure_message(output: Any) -> str:
    """A short statusMessage for a failed tool call, from its output when that is text."""
    try:
        return _failure_text(output)
    except Exception:  # the host's object (kept by reference: its code raised while copied) raised again
        return "tool call failed"


def _failure_text(output: Any) -> str:
    if isinstance(output, str) and output.strip():
        text = output.strip()
    elif isinstance(output, dict) and isinstance(output.get("error"), str):
        text = output["error"]
    elif isinstance(output, list):
        texts = [b.get("content", {}).get("text") for b in output if isinstance(b, dict) and isinstance(b.get("content"), dict)]
        text = next((t for t in texts if isinstance(t, str) and t.strip()), "tool call failed")
    else:
        text = "tool call failed"
    return text if len(text) <= 500 else text[:497] + "..."


def _plan(event: SessionUpdate, scroll_id: str, state: Optional[MappingState]) -> List[Item]:
    entries = own(event.update.get("entries"))
    parent = state.scroll(scroll_id).message if state is not None else None
    body = _prune(
        {
            "id": uuid5_id(f"{event.event_id}\x1fplan"),
            "traceId": scroll_id,
            "name": "plan",
            "startTime": iso_time(event.at),
            "input": entries if isinstance(entries, list) else None,
            "parentObservationId": parent,
            "metadata": {"connector_id": event.connector_id, "native_session_id": event.native_session_id},
        }
    )
    return [_item(event, 0, "event-create", body)]


_CHUNKS = {"agent_message_chunk": "output", "agent_thought_chunk": "thought"}


def _chunk_text(block: Any) -> str:
    """An ACP `ContentBlock` as text: its text, or a short marker for an image, audio or resource."""
    if not isinstance(block, dict):
        return ""
    kind = block.get("type")
    if kind == "text":
        text = block.get("text")
        return text if isinstance(text, str) else ""
    if kind == "resource_link":
        return f"[resource_link: {block.get('uri') or block.get('name') or '?'}]"
    if kind == "resource":
        inner = block.get("resource")
        if isinstance(inner, dict) and isinstance(inner.get("text"), str):
            inner_text: str = inner["text"]
            return inner_text
        return f"[resource: {inner.get('uri') if isinstance(inner, dict) else '?'}]"
    if isinstance(kind, str) and kind:
        return f"[{kind}: {block.get('mimeType') or '?'}]"
    return ""


def _chunk(event: SessionUpdate, scroll_id: str, state: Optional[MappingState], field: str) -> List[Item]:
    """Keeps the chunk's text for the message in progress; it goes out with `MessageCompleted`."""
    if state is not None:
        entry = state.scroll(scroll_id)
        if entry.message is not None:
            if entry.first is None:
                entry.first = iso_time(event.at)
            text = _chunk_text(event.update.get("content"))
            if text:
                state.add_text(entry, field, text)
    return []


def _session_ended(event: SessionEnded, scroll_id: str, state: Optional[MappingState]) -> List[Item]:
    body: Dict[str, Any] = {
        "id": scroll_id,
        "metadata": _prune({"ended_at": iso_time(event.at), "end_reason": event.reason or "ended"}),
    }
    if state is not None:
        entry = state.get(scroll_id)
        # The session's last answer: the trace's output, as Langfuse lists it (its input went with
        # the first message).
        if entry is not None and entry.output is not None:
            body["output"] = entry.output
        state.forget(scroll_id)
    return [_item(event, 0, "trace-create", body)]


def bus_event_to_items(event: BusEvent, state: Optional[MappingState] = None) -> List[Item]:
    """The ingestion items for one event; `[]` for unbound, unknown and skipped events."""
    scroll_id = event.scroll_id
    if not scroll_id:
        return []
    if state is not None:
        with state.lock:
            items = _map(event, scroll_id, state)
    else:
        items = _map(event, scroll_id, None)
    if not takes_as_id(scroll_id):
        _retrace(items, scroll_id)
    return items


def _retrace(items: List[Item], scroll_id: str) -> None:
    """A scroll_id Langfuse would refuse as an id (it would refuse the trace and every observation
    in it) gives way to uuid5 of it; the trace's metadata keeps it as `scroll_id`."""
    trace = uuid5_id(f"{scroll_id}\x1ftrace")
    for item in items:
        body = item["body"]
        if item["type"] == "trace-create":
            body["id"] = trace
            if isinstance(body.get("metadata"), dict):
                body["metadata"]["scroll_id"] = scroll_id
        elif body.get("traceId") == scroll_id:
            body["traceId"] = trace


def _map(event: BusEvent, scroll_id: str, state: Optional[MappingState]) -> List[Item]:
    if isinstance(event, MessageStarted):
        return _message_started(event, scroll_id, state)
    if isinstance(event, MessageCompleted):
        return _message_completed(event, scroll_id, state)
    if isinstance(event, SessionUpdate):
        kind = event.kind
        if kind == "tool_call":
            return _tool_call(event, scroll_id, state, is_update=False)
        if kind == "tool_call_update":
            return _tool_call(event, scroll_id, state, is_update=True)
        if kind == "plan":
            return _plan(event, scroll_id, state)
        field = _CHUNKS.get(kind)
        if field is not None:
            return _chunk(event, scroll_id, state, field)
        return []
    if isinstance(event, SessionCreated):
        return _trace(event, scroll_id, state)
    if isinstance(event, SessionEnded):
        return _session_ended(event, scroll_id, state)
    return []


_MAPPED_UPDATES = frozenset({"tool_call", "tool_call_update", "plan", *_CHUNKS})


def maps(event: BusEvent) -> bool:
    """True when the event yields items once bound, or text for its message's output (so an
    unbound one is worth holding)."""
    if isinstance(event, (SessionCreated, MessageStarted, MessageCompleted, SessionEnded)):
        return True
    return isinstance(event, SessionUpdate) and event.kind in _MAPPED_UPDATES


def invalid(event: BusEvent) -> Optional[str]:
    """Why an event cannot be mirrored as the ACP schema says it must be (None when it can): a
    tool call without its `toolCallId`, which every tool call's span derives from."""
    if isinstance(event, SessionUpdate) and event.kind in ("tool_call", "tool_call_update"):
        call_id = event.update.get("toolCallId")
        if not isinstance(call_id, str) or not call_id:
            return (f"session_update {event.kind}: field 'update.toolCallId' must be a non-empty string, as ACP "
                    f"requires (got {call_id!r:.40}); not mirrored")
    return None


def streams_text(event: BusEvent) -> bool:
    """True for the ACP chunks whose text the mapping keeps for the message in progress."""
    return isinstance(event, SessionUpdate) and event.kind in _CHUNKS
