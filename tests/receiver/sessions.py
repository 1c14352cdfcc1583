"""Sessions for the page tests, as ingestion items a client posts to the receiver: the bundled
examples through a real stream, or made up to any size (a thousand observations, hostile titles)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, List, Optional

import requests

from dirigent_langfuse import LangfuseConfig, LangfuseStream
from dirigent_langfuse.bus import event_from_json
from dirigent_langfuse.receiver.server import DEFAULT_PUBLIC_KEY, DEFAULT_SECRET_KEY, Receiver

from ..conftest import ROOT

EXAMPLE = ROOT / "dirigent_langfuse" / "examples" / "coding_session.jsonl"
T0 = datetime(2026, 11, 25, 9, 0, tzinfo=timezone.utc)


def stamp(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def mirror_examples(receiver: Receiver, transport: str = "ingestion") -> None:
    """The bundled example sessions, through a real stream (two traces, one failed tool call)."""
    stream = LangfuseStream(LangfuseConfig(host=receiver.url, public_key=DEFAULT_PUBLIC_KEY, secret_key=DEFAULT_SECRET_KEY,
                                           transport=transport, atexit_flush=False), name="pages")
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        stream.on_event(event_from_json(json.loads(line)))
    assert stream.shutdown(10).ok


def session(
    trace_id: str, observations: int = 3, *, name: str = "a session", session_id: Optional[str] = "s-1",
    user: Optional[str] = "dev@example.com", tags: Optional[List[str]] = None, title: str = "Run tests",
    at: float = 0.0, failed: Optional[int] = None,
) -> List[Dict[str, Any]]:
    """A trace with a generation and `observations - 1` tool spans under it, one after another
    (the `failed`-th of them with level ERROR); every input says which observation it is."""
    items: List[Dict[str, Any]] = [{
        "id": str(uuid.uuid4()), "type": "trace-create", "timestamp": stamp(at),
        "body": {"id": trace_id, "name": name, "sessionId": session_id, "userId": user, "tags": tags or ["demo"],
                 "timestamp": stamp(at), "input": {"ask": f"input of {name}"}, "output": "done",
                 "metadata": {"repo": "shop-api"}},
    }]
    parent = f"{trace_id}-gen"
    items.append({
        "id": str(uuid.uuid4()), "type": "generation-create", "timestamp": stamp(at),
        "body": {"id": parent, "traceId": trace_id, "name": "assistant message", "startTime": stamp(at),
                 "endTime": stamp(at + observations), "completionStartTime": stamp(at + 0.4),
                 "model": "claude-sonnet-4-5", "input": [{"role": "user", "content": "fix it"}],
                 "output": "fixed", "usageDetails": {"input": 1200, "output": 300},
                 "costDetails": {"total": 0.0081}},
    })
    for index in range(1, observations):
        body: Dict[str, Any] = {
            "id": f"{trace_id}-tool-{index}", "traceId": trace_id, "parentObservationId": parent,
            "name": f"{title} #{index}", "startTime": stamp(at + index * 0.9), "endTime": stamp(at + index * 0.9 + 0.5),
            "input": {"observation": index}, "output": {"ok": index != failed},
            "metadata": {"toolCallId": f"toolu_{index}"},
        }
        if index == failed:
            body.update(level="ERROR", statusMessage="EACCES: permission denied")
        items.append({"id": str(uuid.uuid4()), "type": "span-create", "timestamp": stamp(at + index), "body": body})
    return items


def post(receiver: Receiver, items: List[Dict[str, Any]], chunk: int = 500) -> None:
    for start in range(0, len(items), chunk):
        answer = requests.post(f"{receiver.url}/api/public/ingestion", json={"batch": items[start:start + chunk]},
                               auth=(DEFAULT_PUBLIC_KEY, DEFAULT_SECRET_KEY), timeout=30)
        assert answer.status_code == 207 and not answer.json()["errors"], answer.text
