"""Traces as text trees, the way Langfuse's trace view lays them out.

    trace "fix the flaky test" (scroll-1)  session=native-1  user=dev@example.com  tags=demo
    ├─ GENERATION assistant message   +0.00s   2.10s  first token 0.40s  claude-sonnet-4  in 1200 / out 310  $0.0081
    │  ├─ TOOL Run tests              +0.40s   1.20s
    │  └─ TOOL Edit file              +1.70s   0.10s  ✗ ERROR: permission denied
    └─ EVENT plan                     +2.20s

Offsets are from the trace's start; failures are marked with ✗, unfinished work with ….
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Set

__all__ = ["render_trace", "render_all"]

_NEVER = datetime.max.replace(tzinfo=timezone.utc)  # observations without a start sort last


def _time(value: Any) -> Optional[datetime]:
    """An aware time (naive ones are UTC, as Langfuse reads them), or None for what is not one."""
    if not value or not isinstance(value, str):
        return None
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=timezone.utc)


def _seconds(a: Optional[datetime], b: Optional[datetime]) -> Optional[float]:
    if a is None or b is None:
        return None
    return (b - a).total_seconds()


def _map(value: Any) -> Dict[str, Any]:
    """A field that should be a mapping; anything else a client stored there (Langfuse's
    metadata may be any JSON) is read as empty."""
    return value if isinstance(value, dict) else {}


def _line(obs: Dict[str, Any], origin: Optional[datetime]) -> str:
    start = _time(obs.get("startTime"))
    end = _time(obs.get("endTime"))
    parts = [f"{obs.get('type') or 'SPAN'} {obs.get('name') or ''}".rstrip()]
    offset = _seconds(origin, start)
    if offset is not None:
        parts.append(f"+{offset:.2f}s")
    duration = _seconds(start, end)
    if duration is not None and (obs.get("type") or "") != "EVENT":
        parts.append(f"{duration:.2f}s")
    elif end is None and (obs.get("type") or "") != "EVENT":
        parts.append("… (not ended)")
    first_token = _seconds(start, _time(obs.get("completionStartTime")))
    if first_token is not None:
        parts.append(f"first token {first_token:.2f}s")
    if obs.get("model"):
        parts.append(str(obs["model"]))
    usage = _map(obs.get("usageDetails"))
    if usage:
        tokens = f"in {usage.get('input', 0)} / out {usage.get('output', 0)}"
        cached = usage.get("input_cache_read")
        if cached:
            tokens += f" / cache {cached}"
        parts.append(tokens)
    cost = _map(obs.get("costDetails")).get("total")
    if isinstance(cost, (int, float)) and not isinstance(cost, bool):
        parts.append(f"${cost:.4f}")
    if str(_map(obs.get("metadata")).get("incomplete", "")).lower() == "true":
        parts.append("… incomplete")
    if obs.get("duplicateOf"):  # Langfuse v4: the same span id with another start is a second row
        parts.append(f"⚠ duplicate row of {obs['duplicateOf']} (another start time)")
    if obs.get("level") == "ERROR":
        parts.append(f"✗ ERROR: {obs.get('statusMessage') or 'failed'}")
    return "  ".join(parts)


def render_trace(trace: Dict[str, Any], observations: List[Dict[str, Any]]) -> str:
    """One trace and its observations as an indented tree (children in start order)."""
    head = f"trace {trace.get('name') or '(unnamed)'!r} ({trace.get('id')})"
    for label, key in (("session", "sessionId"), ("user", "userId")):
        if trace.get(key):
            head += f"  {label}={trace[key]}"
    tags = trace.get("tags")
    if tags:
        head += "  tags=" + (",".join(str(t) for t in tags) if isinstance(tags, list) else str(tags))
    meta = _map(trace.get("metadata"))
    if meta.get("end_reason"):
        head += f"  ended: {meta['end_reason']}"
    ids = {o.get("id") for o in observations}
    children: Dict[Optional[str], List[Dict[str, Any]]] = {}
    ordered = sorted(observations, key=lambda o: (_time(o.get("startTime")) or _NEVER, str(o.get("name") or "")))
    for obs in ordered:
        parent = obs.get("parentObservationId")
        children.setdefault(parent if parent in ids else None, []).append(obs)
    starts = [_time(o.get("startTime")) for o in observations] + [_time(trace.get("timestamp"))]
    origin = min((s for s in starts if s is not None), default=None)
    lines = [head]
    shown: Set[int] = set()

    def walk(kids: List[Dict[str, Any]], prefix: str) -> None:
        """Depth first, without recursion (a chain of observations may be deeper than Python's stack)."""
        stack = [(kids, prefix, 0)]
        while stack:
            kids, prefix, i = stack.pop()
            if i >= len(kids):
                continue
            stack.append((kids, prefix, i + 1))
            obs, last = kids[i], i == len(kids) - 1
            if id(obs) in shown:
                continue
            shown.add(id(obs))
            lines.append(prefix + ("└─ " if last else "├─ ") + _line(obs, origin))
            stack.append((children.get(obs.get("id"), []), prefix + ("   " if last else "│  "), 0))

    walk(children.get(None, []), "")
    for obs in ordered:  # parents that form a cycle (a client's bug): shown, never hidden
        if id(obs) not in shown:
            shown.add(id(obs))
            lines.append(f"└─ {_line(obs, origin)}  ⟲ in a cycle of parents (its parent: {obs.get('parentObservationId')})")
            walk(children.get(obs.get("id"), []), "   ")
    if not observations:
        lines.append("└─ (no observations)")
    return "\n".join(lines)


def render_all(store: Any, trace_id: Optional[str] = None) -> str:
    traces = store.traces()
    if trace_id is not None:
        traces = [t for t in traces if t.get("id") == trace_id]
    return "\n\n".join(render_trace(t, store.observations(t["id"])) for t in traces)
