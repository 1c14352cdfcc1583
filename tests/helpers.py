"""Small builders shared by the tests: events of one agent session, and a stream on a receiver."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, Optional

from dirigent_langfuse import (
    LangfuseConfig,
    LangfuseStream,
    MessageCompleted,
    MessageStarted,
    ScrollBound,
    SessionCreated,
    SessionEnded,
    SessionUpdate,
    Usage,
)

T0 = datetime(2026, 11, 25, 9, 0, 0, tzinfo=timezone.utc)
# What a tool call is in Langfuse: a SPAN over the ingestion API (which refuses TOOL), a TOOL over OTel.
TOOL_TYPE = {"ingestion": "SPAN", "otel": "TOOL"}
_tick = itertools.count()


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def common(
    scroll: Optional[str] = "scroll-1", native: str = "native-1", connector: str = "conn-1", t: float = 0.0
) -> Dict[str, Any]:
    return {"connector_id": connector, "native_session_id": native, "scroll_id": scroll, "at": at(t)}


def created(scroll: Optional[str] = "scroll-1", **kw: Any) -> SessionCreated:
    extra = {k: kw.pop(k) for k in ("native", "connector", "t") if k in kw}
    return SessionCreated(**common(scroll, **extra), title=kw.pop("title", "a session"), agent="claude-code", **kw)


def started(message_id: str, scroll: Optional[str] = "scroll-1", **kw: Any) -> MessageStarted:
    extra = {k: kw.pop(k) for k in ("native", "connector", "t") if k in kw}
    return MessageStarted(**common(scroll, **extra), message_id=message_id, model=kw.pop("model", "claude-sonnet-4-5"), **kw)


def completed(message_id: str, scroll: Optional[str] = "scroll-1", **kw: Any) -> MessageCompleted:
    extra = {k: kw.pop(k) for k in ("native", "connector", "t") if k in kw}
    kw.setdefault("usage", Usage(input_tokens=10, output_tokens=5))
    return MessageCompleted(**common(scroll, **extra), message_id=message_id, **kw)


def update(payload: Dict[str, Any], scroll: Optional[str] = "scroll-1", **kw: Any) -> SessionUpdate:
    return SessionUpdate(**common(scroll, **kw), update=payload)


def tool_call(call_id: str, scroll: Optional[str] = "scroll-1", title: str = "Run tests", **kw: Any) -> SessionUpdate:
    extra = {k: kw.pop(k) for k in ("native", "connector", "t") if k in kw}
    payload = {"sessionUpdate": "tool_call", "toolCallId": call_id, "title": title, "kind": "execute", "status": "pending",
               "rawInput": {"command": "pytest"}}
    payload.update(kw)
    return update(payload, scroll, **extra)


def tool_update(call_id: str, status: str, scroll: Optional[str] = "scroll-1", **kw: Any) -> SessionUpdate:
    extra = {k: kw.pop(k) for k in ("native", "connector", "t") if k in kw}
    payload = {"sessionUpdate": "tool_call_update", "toolCallId": call_id, "status": status}
    payload.update(kw)
    return update(payload, scroll, **extra)


def ended(scroll: Optional[str] = "scroll-1", reason: str = "completed", **kw: Any) -> SessionEnded:
    return SessionEnded(**common(scroll, **kw), reason=reason)


def bound(scroll: str = "scroll-1", **kw: Any) -> ScrollBound:
    return ScrollBound(**common(scroll, **kw))


def config(url: str, **kw: Any) -> LangfuseConfig:
    kw.setdefault("transport", "ingestion")
    kw.setdefault("flush_interval", 0.05)
    kw.setdefault("atexit_flush", False)
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("backoff_max", 0.02)
    kw.setdefault("connect_timeout", 1.0)
    kw.setdefault("read_timeout", 2.0)
    return LangfuseConfig(host=url, public_key=kw.pop("public_key", "pk-lf-local"),
                          secret_key=kw.pop("secret_key", "sk-lf-local"), **kw)


def stream(url: str, **kw: Any) -> LangfuseStream:
    name = kw.pop("name", "test")
    return LangfuseStream(config(url, **kw), name=name)


# Host objects whose own code raises (the encoder, the payload copy and the mapping must cope).


class HostileText:
    """Its own __str__ and __repr__ raise."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    __str__ = __repr__


class Unreadable(dict):
    """A dict whose items() raises."""

    def items(self) -> Any:
        raise RuntimeError("no items")


class UnreadableList(list):
    """A list whose iteration raises."""

    def __iter__(self) -> Any:
        raise RuntimeError("no iteration")


class LenRaises(list):
    """A list whose len() raises."""

    def __len__(self) -> int:
        raise RuntimeError("no len")
