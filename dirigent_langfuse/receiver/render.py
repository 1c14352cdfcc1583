"""Traces as text trees, the way Langfuse's trace view lays them out.

    trace "fix the flaky test" (scroll-1)  session=native-1  user=dev@example.com  tags=demo
    ├─ GENERATION assistant message   +0.00s   2.10s  first token 0.40s  claude-sonnet-4  in 1200 / out 310  $0.0081
    │  ├─ TOOL Run tests              +0.40s   1.20s
    │  └─ TOOL Edit file              +1.70s   0.10s  ✗ ERROR: permission denied
    └─ EVENT plan                     +2.20s

Offsets are from the trace's start; failures are marked with ✗, unfinished work with ….
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Dict, List, Optional

from .traces import as_time, failed, incomplete, mapping, number, origin, seconds, tree

__all__ = ["render_trace", "render_all"]


def _line(obs: Dict[str, Any], origin: Optional[datetime]) -> str:
    start = as_time(obs.get("startTime"))
    end = as_time(obs.get("endTime"))
    parts = [f"{obs.get('type') or 'SPAN'} {obs.get('name') or ''}".rstrip()]
    offset = seconds(origin, start)
    if offset is not None:
        parts.append(f"+{offset:.2f}s")
    duration = seconds(start, end)
    if duration is not None and (obs.get("type") or "") != "EVENT":
        parts.append(f"{duration:.2f}s")
    elif end is None and (obs.get("type") or "") != "EVENT":
        parts.append("… (not ended)")
    first_token = seconds(start, as_time(obs.get("completionStartTime")))
    if first_token is not None:
        parts.append(f"first token {first_token:.2f}s")
    if obs.get("model"):
        parts.append(str(obs["model"]))
    usage = mapping(obs.get("usageDetails"))
    if usage:
        tokens = f"in {usage.get('input', 0)} / out {usage.get('output', 0)}"
        cached = usage.get("input_cache_read")
        if cached:
            tokens += f" / cache {cached}"
        parts.append(tokens)
    cost = number(mapping(obs.get("costDetails")).get("total"))
    if cost is not None:
        parts.append(f"${cost:.4f}")
    if incomplete(obs):
        parts.append("… incomplete")
    if obs.get("duplicateOf"):  # Langfuse v4: the same span id with another start is a second row
        parts.append(f"⚠ duplicate row of {obs['duplicateOf']} (another start time)")
    if failed(obs):
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
    meta = mapping(trace.get("metadata"))
    if meta.get("end_reason"):
        head += f"  ended: {meta['end_reason']}"
    start = origin(trace, observations)
    lines = [head]
    prefixes = [""]  # by depth: what the rows at that depth are drawn after
    for row in tree(observations):
        prefix = prefixes[row.depth]
        del prefixes[row.depth + 1:]
        line = prefix + ("└─ " if row.last else "├─ ") + _line(row.obs, start)
        if row.cycle:
            line += f"  ⟲ in a cycle of parents (its parent: {row.obs.get('parentObservationId')})"
        lines.append(line)
        prefixes.append(prefix + ("   " if row.last else "│  "))
    if not observations:
        lines.append("└─ (no observations)")
    return "\n".join(lines)


def render_all(store: Any, trace_id: Optional[str] = None) -> str:
    traces = store.traces()
    if trace_id is not None:
        traces = [t for t in traces if t.get("id") == trace_id]
    return "\n\n".join(render_trace(t, store.observations(t["id"])) for t in traces)
