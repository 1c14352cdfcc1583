"""The receiver's read API, in Langfuse's response shapes: `GET /api/public/traces` (paged) and
`GET /api/public/traces/<id>` (with its observations). Enough for a script that reads back what a
client sent, as it would from Langfuse."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from .store import Store

__all__ = ["api_get", "trace_view"]


def api_get(store: Store, path: str, query: Dict[str, List[str]]) -> Tuple[int, Dict[str, Any]]:
    """(status, answer) for an authorized GET of `path`."""
    if path == "/api/public/traces":
        try:
            page = max(1, int((query.get("page") or ["1"])[0]))
            limit = max(1, min(100, int((query.get("limit") or ["50"])[0])))
        except ValueError:
            return 400, {"message": "page and limit must be integers"}
        traces = store.traces()
        chunk = traces[(page - 1) * limit : page * limit]
        return 200, {
            "data": [trace_view(store, t, with_observations=False) for t in chunk],
            "meta": {"page": page, "limit": limit, "totalItems": len(traces), "totalPages": -(-len(traces) // limit)},
        }
    if path.startswith("/api/public/traces/"):
        trace = store.trace(path.rsplit("/", 1)[1])
        if trace is None:
            return 404, {"message": "Trace not found"}
        return 200, trace_view(store, trace, with_observations=True)
    return 404, {"message": f"no route {path}"}


def trace_view(store: Store, trace: Dict[str, Any], with_observations: bool) -> Dict[str, Any]:
    """A trace as Langfuse's `GET /api/public/traces` answers it (with its observations: as `/traces/<id>`)."""
    observations = store.observations(trace["id"]) if with_observations else []
    view = {
        "id": trace["id"],
        "timestamp": trace.get("timestamp"),
        "name": trace.get("name"),
        "input": trace.get("input"),
        "output": trace.get("output"),
        "sessionId": trace.get("sessionId"),
        "release": trace.get("release"),
        "version": trace.get("version"),
        "userId": trace.get("userId"),
        "metadata": trace.get("metadata"),
        "tags": trace.get("tags") or [],
        "public": bool(trace.get("public")),
        "environment": trace.get("environment") or "default",
        "htmlPath": f"/trace/{trace['id']}",
        "latency": None,
        "totalCost": None,
        "observations": [],
        "scores": [],
    }
    if with_observations:
        view["observations"] = [_observation_view(o) for o in observations]
        costs = [o.get("costDetails", {}).get("total") for o in observations if isinstance(o.get("costDetails"), dict)]
        view["totalCost"] = sum(c for c in costs if isinstance(c, (int, float)))
    return view


def _observation_view(obs: Dict[str, Any]) -> Dict[str, Any]:
    usage = obs.get("usageDetails") or {}
    return {
        "id": obs.get("id"),
        "traceId": obs.get("traceId"),
        "type": obs.get("type") or "SPAN",
        "name": obs.get("name"),
        "startTime": obs.get("startTime"),
        "endTime": obs.get("endTime"),
        "completionStartTime": obs.get("completionStartTime"),
        "model": obs.get("model"),
        "modelParameters": obs.get("modelParameters"),
        "input": obs.get("input"),
        "output": obs.get("output"),
        "metadata": obs.get("metadata"),
        "level": obs.get("level") or "DEFAULT",
        "statusMessage": obs.get("statusMessage"),
        "parentObservationId": obs.get("parentObservationId"),
        "version": obs.get("version"),
        "environment": obs.get("environment") or "default",
        "usageDetails": usage,
        "costDetails": obs.get("costDetails") or {},
    }
