"""The ids the mapping derives: the same event always gets the same ids, so that a retry, a
re-send from the spool or a replay of the host's events never makes a duplicate in Langfuse.

- a message's observation id is uuid5(scroll_id, message_id); a tool call's uuid5(scroll_id,
  toolCallId) (`observation_id`); an event's first item carries the event's own id, any further
  one uuid5(event_id, index) (`envelope_id`);
- over OTel, a trace id is the scroll_id's 32 hex digits when it is a UUID, else uuid5 of it
  (`otel_trace_id`); a span id an observation id's first 16 (`span_id`); the session's span its
  own (`session_span_id`).
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
import uuid
from collections import OrderedDict

__all__ = ["NAMESPACE", "uuid5_hex", "uuid5_id", "observation_id", "envelope_id", "otel_trace_id", "span_id", "session_span_id"]

NAMESPACE = uuid.UUID("6f1d3a52-5c1e-4d8b-9a77-0c4e1b6a2f10")
_NS_BYTES = NAMESPACE.bytes
_OTEL = uuid.UUID("0b8f1f67-8e0e-4f4f-a3c5-6f3c1d2e9a41").bytes  # the OTel ids' namespace
_HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")


def uuid5_hex(namespace: bytes, name: str) -> str:
    """`uuid.uuid5(UUID(bytes=namespace), name).hex`, without building UUID objects (a hot path)."""
    raw = bytearray(hashlib.sha1(namespace + name.encode("utf-8")).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50
    raw[8] = (raw[8] & 0x3F) | 0x80
    return raw.hex()


def uuid5_id(name: str) -> str:
    """`str(uuid.uuid5(NAMESPACE, name))`."""
    h = uuid5_hex(_NS_BYTES, name)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_ids: "OrderedDict[str, str]" = OrderedDict()
_ids_lock = threading.RLock()  # re-entrant: a signal handler may call in while this thread holds it


def observation_id(scroll_id: str, kind: str, key: str) -> str:
    """The deterministic id of a message (`kind="msg"`) or tool call (`kind="tool"`).

    Each is asked for twice (its create and its end), so the last 4,096 are remembered."""
    name = f"{scroll_id}\x1f{kind}\x1f{key}"
    found = _ids.get(name)
    if found is not None:
        return found
    value = uuid5_id(name)
    with _ids_lock:
        _ids[name] = value
        if len(_ids) > 4096:
            _ids.popitem(last=False)
    return value


def envelope_id(event_id: str, index: int) -> str:
    """An event's first item carries the event's own id (unique and stable: a replay re-sends
    the same id); any further item, and an id too long for an envelope or with a carriage return
    (Langfuse refuses one), uuid5(event_id, index)."""
    if index == 0 and 0 < len(event_id) <= 64 and "\r" not in event_id:
        return event_id
    return uuid5_id(f"{event_id}\x1f{index}")


def _uuid5_hex(name: str) -> str:
    return uuid5_hex(_OTEL, name)


@functools.lru_cache(maxsize=4096)  # asked for once per span: a session's spans share it
def otel_trace_id(scroll_id: str) -> str:
    """32 lowercase hex digits for a scroll: its own when it is a UUID, else uuid5 of it."""
    text = scroll_id.replace("-", "")
    if _HEX32.match(text) and text.strip("0"):
        return text.lower()
    return _uuid5_hex(scroll_id)


@functools.lru_cache(maxsize=4096)  # a message's id is every one of its tool calls' parent
def span_id(observation_id: str) -> str:
    """16 hex digits from an observation id (a UUID's first half, else uuid5 of it)."""
    text = observation_id.replace("-", "")
    if _HEX32.match(text):
        return text[:16].lower()
    return _uuid5_hex(observation_id)[:16]


@functools.lru_cache(maxsize=4096)
def session_span_id(scroll_id: str) -> str:
    return _uuid5_hex(scroll_id + "\x1fsession")[:16]
