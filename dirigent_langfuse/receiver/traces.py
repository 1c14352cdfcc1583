"""What a stored trace adds up to, for every way the receiver shows one (the text trees of
`render.py`, the web pages of `pages.py`): its observations in tree order, its time axis, its
totals.

Whatever a client stored is read leniently: a field of the wrong type counts as absent, times
without an offset are UTC, an observation whose parent is not in the trace hangs off the trace,
and parents that form a cycle are listed after the tree, never hidden.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Set

__all__ = ["Row", "as_time", "seconds", "mapping", "number", "tree", "origin", "summary", "failed", "incomplete"]

_NEVER = datetime.max.replace(tzinfo=timezone.utc)  # observations without a start sort last


def as_time(value: Any) -> Optional[datetime]:
    """An aware time (naive ones are UTC, as Langfuse reads them), or None for what is not one."""
    if not value or not isinstance(value, str):
        return None
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=timezone.utc)


def seconds(a: Optional[datetime], b: Optional[datetime]) -> Optional[float]:
    if a is None or b is None:
        return None
    return (b - a).total_seconds()


def mapping(value: Any) -> Dict[str, Any]:
    """A field that should be a mapping; anything else a client stored there (Langfuse's
    metadata may be any JSON) is read as empty."""
    return value if isinstance(value, dict) else {}


def number(value: Any) -> Optional[float]:
    """A count or an amount a client stored, or None for what is not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if value == value and abs(value) != float("inf") else None


def failed(obs: Dict[str, Any]) -> bool:
    return obs.get("level") == "ERROR"


def incomplete(obs: Dict[str, Any]) -> bool:
    """Sent at a shutdown while it was still open (see docs/transports.md)."""
    return str(mapping(obs.get("metadata")).get("incomplete", "")).lower() == "true"


class Row(NamedTuple):
    """An observation in tree order: how deep, whether it is last among its siblings, and whether
    it stands in a cycle of parents (listed after the tree)."""

    obs: Dict[str, Any]
    depth: int
    last: bool
    cycle: bool


def tree(observations: List[Dict[str, Any]]) -> List[Row]:
    """Depth first, children in start order, without recursion (a chain of observations may be
    deeper than Python's stack)."""
    ids = {o.get("id") for o in observations}
    children: Dict[Optional[str], List[Dict[str, Any]]] = {}
    ordered = sorted(observations, key=lambda o: (as_time(o.get("startTime")) or _NEVER, str(o.get("name") or "")))
    for obs in ordered:
        parent = obs.get("parentObservationId")
        children.setdefault(parent if parent in ids else None, []).append(obs)
    rows: List[Row] = []
    shown: Set[int] = set()

    def walk(kids: List[Dict[str, Any]], depth: int, cycle: bool) -> None:
        stack = [(kids, depth, 0)]
        while stack:
            kids, depth, i = stack.pop()
            if i >= len(kids):
                continue
            stack.append((kids, depth, i + 1))
            obs = kids[i]
            if id(obs) in shown:
                continue
            shown.add(id(obs))
            rows.append(Row(obs, depth, i == len(kids) - 1, cycle))
            cycle = False
            stack.append((children.get(obs.get("id"), []), depth + 1, 0))

    walk(children.get(None, []), 0, False)
    for obs in ordered:  # parents that form a cycle (a client's bug): shown, never hidden
        if id(obs) not in shown:
            walk([obs], 0, True)
    return rows


def origin(trace: Dict[str, Any], observations: Iterable[Dict[str, Any]]) -> Optional[datetime]:
    """The start of the trace's time axis: its earliest start, its own timestamp included."""
    starts = [as_time(o.get("startTime")) for o in observations] + [as_time(trace.get("timestamp"))]
    return min((s for s in starts if s is not None), default=None)


def summary(trace: Dict[str, Any], observations: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The trace's line in a list: who, when, how long, how much, and whether anything failed.
    `duration` runs from the axis' start to the latest end or start seen (None without either)."""
    first = origin(trace, observations)
    times = [as_time(o.get(key)) for o in observations for key in ("endTime", "startTime")]
    last = max((t for t in times if t is not None), default=None)
    tokens = {"input": 0.0, "output": 0.0}
    cost = 0.0
    costed = False
    for obs in observations:
        usage = mapping(obs.get("usageDetails"))
        for key in tokens:
            tokens[key] += number(usage.get(key)) or 0
        total = number(mapping(obs.get("costDetails")).get("total"))
        if total is not None:
            cost += total
            costed = True
    tags = trace.get("tags")
    return {
        "id": trace.get("id"),
        "name": trace.get("name") if isinstance(trace.get("name"), str) else None,
        "timestamp": first.isoformat().replace("+00:00", "Z") if first is not None else None,
        "duration": seconds(first, last),
        "sessionId": trace.get("sessionId") if isinstance(trace.get("sessionId"), str) else None,
        "userId": trace.get("userId") if isinstance(trace.get("userId"), str) else None,
        "tags": [str(t) for t in tags] if isinstance(tags, list) else [],
        "observations": len(observations),
        "inputTokens": int(tokens["input"]),
        "outputTokens": int(tokens["output"]),
        "cost": cost if costed else None,
        "errors": sum(1 for o in observations if failed(o)),
    }
