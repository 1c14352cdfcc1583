"""The receiver's web pages: look at a session instead of reading it.

- `/`: the traces, newest first, a page at a time, filtered by text, session or user;
- `/traces/<id>`: the trace's timeline (a waterfall), `?o=<observation id>` selecting one;
  `/traces/<id>/observations/<id>` is that observation's panel alone (the script swaps it in);
- `/sessions/<id>`: the traces of one session in order, with totals;
- `/static/...`: the stylesheet, the script and the icon, all a page loads.

Promises: everything a client sent is escaped (`html.py`); a missing trace or session is a 404
page, a bad id or cursor a 400 page, never a traceback. The server adds the security headers and
asks for credentials where the receiver is not bound to a loopback address.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple
from urllib.parse import unquote

from ..wire.limits import takes_as_id
from .html import CSP, Safe, layout, link, money, pretty, span_of, tag, tokens, when
from .store import Store
from .traces import as_time, failed, incomplete, mapping, number, seconds, summary, tree

__all__ = ["Answer", "answer", "not_found", "CSP", "PAGE_SIZE"]

PAGE_SIZE = 50
_STATIC = {
    "pages.css": "text/css; charset=utf-8",
    "pages.js": "text/javascript; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
_HERE = Path(__file__).parent / "static"
_MAX_DEPTH = 24  # deeper rows are drawn at this indent, their depth written beside them


class Answer(NamedTuple):
    status: int
    content_type: str
    body: bytes


def answer(store: Store, path: str, query: Dict[str, List[str]]) -> Optional[Answer]:
    """The page at `path` (raw, its ids still quoted), or None when `path` is not a page's."""
    parts = path.split("/")
    if path in ("", "/"):
        return _guard(lambda: _list(store, query))
    if len(parts) == 3 and parts[1] == "static":
        return _static(parts[2])
    if len(parts) == 3 and parts[1] == "traces":
        return _guard(lambda: _trace(store, _id(parts[2], "trace"), _param(query, "o")))
    if len(parts) == 5 and parts[1] == "traces" and parts[3] == "observations":
        return _guard(lambda: _panel(store, _id(parts[2], "trace"), _id(parts[4], "observation")))
    if len(parts) == 3 and parts[1] == "sessions":
        return _guard(lambda: _session(store, _id(parts[2], "session")))
    return None


class _Refused(Exception):
    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


def _guard(build: Callable[[], Tuple[int, bytes]]) -> Answer:
    """The page `build` makes, or the 404 or 400 page it refused with."""
    try:
        status, body = build()
    except _Refused as refused:
        status, body = refused.status, layout(refused.title, tag("h1", refused.title), tag("p", refused.message),
                                              tag("p", tag("a", "All traces", href="/")))
    return Answer(status, "text/html; charset=utf-8", body)


def _id(raw: str, what: str) -> str:
    """A path's id, unquoted and checked."""
    try:
        value = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        value = ""
    return _checked(value, what)


def _checked(value: str, what: str) -> str:
    if not takes_as_id(value):
        raise _Refused(400, "Bad request", f"Not a {what} id Langfuse would take (1 to 800 characters of UTF-8 "
                                           "text, no carriage return).")
    return value


def _param(query: Dict[str, List[str]], name: str) -> Optional[str]:
    values = query.get(name)
    if not values or not values[0]:
        return None
    if name == "o":
        return _checked(values[0], "observation")
    return values[0]


def _static(name: str) -> Answer:
    kind = _STATIC.get(name)
    if kind is None:
        return _guard(lambda: _missing("No such file."))
    return Answer(200, kind, (_HERE / name).read_bytes())


def not_found() -> Answer:
    """The page for a path that is none of the above."""
    return _guard(lambda: _missing("No page here."))


def _missing(message: str) -> Tuple[int, bytes]:
    raise _Refused(404, "Not found", message)


# -- the list -------------------------------------------------------------------------------------


def _list(store: Store, query: Dict[str, List[str]]) -> Tuple[int, bytes]:
    text = (_param(query, "q") or "").strip()
    session, user = _param(query, "session"), _param(query, "user")
    before, after = _param(query, "before"), _param(query, "after")
    try:
        page = store.page(PAGE_SIZE, before=before, after=after, text=text, session=session, user=user)
    except ValueError as exc:
        raise _Refused(400, "Bad request", str(exc)) from None
    kept = {"q": text or None, "session": session, "user": user}
    form = tag(
        "form",
        tag("label", "Text ", tag("input", type="search", name="q", value=text, placeholder="name, id, tag…")),
        tag("label", "Session ", tag("input", name="session", value=session or "")),
        tag("label", "User ", tag("input", name="user", value=user or "")),
        tag("button", "Filter", type="submit"),
        tag("a", "Clear", href="/") if any(kept.values()) else "",
        method="get", action="/", class_="filters",
    )
    paging = tag(
        "nav",
        tag("a", "← Newer", href=link("/", **kept, after=page.newer), rel="prev") if page.newer else "",
        tag("a", "Older →", href=link("/", **kept, before=page.older), rel="next") if page.older else "",
        class_="paging",
    )
    count = f"{page.total:,} trace{'s' if page.total != 1 else ''}" + (" match" if any(kept.values()) else "")
    table = _trace_table(page.lines, with_session=True) if page.lines else tag("p", "No traces yet.", class_="empty")
    return 200, layout("Traces", tag("h1", "Traces"), form, tag("p", count, class_="muted"), table, paging)


def _trace_table(lines: List[Dict[str, Any]], with_session: bool) -> Safe:
    head = ["Name", "Started", "Duration"] + (["Session"] if with_session else []) + \
        ["User", "Tags", "Observations", "Tokens in / out", "Cost", "Errors"]
    rows = []
    for line in lines:
        errors = line.get("errors") or 0
        cells: List[Any] = [
            tag("a", line.get("name") or "(unnamed)", href=link("/traces", line["id"])),
            when(line.get("timestamp")),
            span_of(line.get("duration")),
        ]
        if with_session:
            sid = line.get("sessionId")
            cells.append(tag("a", sid, href=link("/sessions", sid)) if sid else "—")
        uid = line.get("userId")
        cells += [
            tag("a", uid, href=link("/", user=uid)) if uid else "—",
            [tag("span", t, class_="tag") for t in line.get("tags") or []],
            f"{line.get('observations', 0):,}",
            f"{tokens(line.get('inputTokens'))} / {tokens(line.get('outputTokens'))}",
            money(line.get("cost")),
            tag("span", f"✗ {errors}", class_="error-mark", title="observations with level ERROR") if errors else "",
        ]
        rows.append(tag("tr", [tag("td", c) for c in cells], class_="has-error" if errors else None))
    return tag("table", tag("thead", tag("tr", [tag("th", h) for h in head])), tag("tbody", rows), class_="traces")


# -- a trace ---------------------------------------------------------------------------------------


def _found(store: Store, trace_id: str) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    found = store.trace_detail(trace_id)
    if found is None:
        raise _Refused(404, "Trace not found", f"No trace {trace_id!r} is stored here.")
    return found


def _trace(store: Store, trace_id: str, selected: Optional[str]) -> Tuple[int, bytes]:
    trace, observations = _found(store, trace_id)
    line = summary(trace, observations)
    chosen = _observation(trace_id, observations, selected) if selected else None
    sid, uid = line["sessionId"], line["userId"]
    facts: List[Tuple[str, Any]] = [
        ("Trace id", tag("code", trace_id)),
        ("Started", when(line["timestamp"])),
        ("Duration", span_of(line["duration"])),
        ("Session", tag("a", sid, href=link("/sessions", sid)) if sid else "—"),
        ("User", tag("a", uid, href=link("/", user=uid)) if uid else "—"),
        ("Tags", [tag("span", t, class_="tag") for t in line["tags"]] or "—"),
        ("Environment", trace.get("environment") or "default"),
        ("Release", trace.get("release") or "—"),
        ("Observations", f"{line['observations']:,}"),
        ("Tokens in / out", f"{tokens(line['inputTokens'])} / {tokens(line['outputTokens'])}"),
        ("Cost", money(line["cost"])),
        ("Errors", tag("span", f"✗ {line['errors']}", class_="error-mark") if line["errors"] else "none"),
    ]
    body = [
        tag("h1", trace.get("name") or "(unnamed trace)"),
        _facts(facts),
        tag("div", [_section(label, trace.get(key)) for label, key in
                    (("Input", "input"), ("Output", "output"), ("Metadata", "metadata"))], class_="trace-io"),
        tag("h2", "Timeline"),
        tag("div",
            _timeline(observations, line, trace_id, selected),
            tag("aside", _panel_body(chosen) if chosen else
                tag("p", "Select an observation to see its input, output, metadata and usage.", class_="muted"),
                id="detail", class_="detail", aria_live="polite"),
            class_="waterfall-with-detail"),
    ]
    return 200, layout(trace.get("name") or trace_id, *body)


def _facts(facts: List[Tuple[str, Any]]) -> Safe:
    return tag("dl", [tag("div", tag("dt", k), tag("dd", v)) for k, v in facts], class_="facts")


def _section(label: str, value: Any) -> Safe:
    if value is None or value == {} or value == []:
        return tag("section", tag("h3", label), tag("p", "—", class_="muted"))
    return tag("section", tag("details", tag("summary", label), pretty(value), open=True))


_TYPES = {"GENERATION": "generation", "SPAN": "span", "TOOL": "tool", "EVENT": "event", "AGENT": "agent"}


def _kind(obs: Dict[str, Any]) -> str:
    return _TYPES.get(str(obs.get("type") or "SPAN").upper(), "other")


def _timeline(observations: List[Dict[str, Any]], line: Dict[str, Any], trace_id: str, selected: Optional[str]) -> Safe:
    """The waterfall, on the axis the trace's `summary` line measured (its start, its duration)."""
    start = as_time(line["timestamp"])
    axis = max(line["duration"] or 0.0, 0.001)
    rows = []
    for row in tree(observations):
        obs = row.obs
        obs_id = str(obs.get("id") or "")
        kind = _kind(obs)
        began, ended = as_time(obs.get("startTime")), as_time(obs.get("endTime"))
        offset = seconds(start, began)
        took = seconds(began, ended)
        x = 0.0 if offset is None else max(0.0, min(1000.0, offset / axis * 1000))
        if kind == "event":
            width = 4.0
        elif took is None:
            width = 1000.0 - x  # not ended: to the end of the axis
        else:
            width = max(2.0, took / axis * 1000)
        bar = tag("svg", tag("rect", x=f"{min(x, 996.0):.1f}", y="3", width=f"{min(width, 1000.0 - min(x, 996.0)):.1f}",
                             height="10", class_=f"b-{kind}" + (" b-open" if took is None and kind != "event" else "")),
                  viewBox="0 0 1000 16", preserveAspectRatio="none", class_="bar", aria_hidden="true")
        depth = min(row.depth, _MAX_DEPTH)
        usage = mapping(obs.get("usageDetails"))
        first_token = seconds(began, as_time(obs.get("completionStartTime")))
        name_cell = [
            [tag("span", class_="pad") for _ in range(depth)],
            tag("span", kind, class_=f"type t-{kind}"),
            " ",
            tag("a", obs.get("name") or "(unnamed)", href=link("", o=obs_id) + "#detail", class_="obs-link",
                data_detail=link("/traces", trace_id, "observations", obs_id)),
            tag("span", f" (depth {row.depth})", class_="muted") if row.depth > _MAX_DEPTH else "",
            tag("span", " ⟲ in a cycle of parents", class_="warn") if row.cycle else "",
            tag("span", " … incomplete", class_="warn") if incomplete(obs) else "",
            tag("span", " ⚠ duplicate row", class_="warn", title=f"another start of {obs['duplicateOf']}")
            if obs.get("duplicateOf") else "",
            tag("div", "✗ ", obs.get("statusMessage") or "failed", class_="status-message") if failed(obs) else "",
        ]
        cells = [
            tag("td", name_cell, class_="name"),
            tag("td", obs.get("model") or ""),
            tag("td", f"{tokens(number(usage.get('input')))} / {tokens(number(usage.get('output')))}" if usage else ""),
            tag("td", money(number(mapping(obs.get("costDetails")).get("total"))) if obs.get("costDetails") else ""),
            tag("td", span_of(first_token) if first_token is not None else ""),
            tag("td", span_of(took) if kind != "event" else ""),
            tag("td", bar, class_="axis"),
        ]
        classes = ["obs"] + (["has-error"] if failed(obs) else []) + (["selected"] if obs.get("id") == selected else [])
        rows.append(tag("tr", cells, class_=" ".join(classes), data_id=obs.get("id")))
    head = ["Observation", "Model", "Tokens in / out", "Cost", "First token", "Duration", f"0 – {span_of(axis)}"]
    if not rows:
        return tag("p", "No observations.", class_="empty")
    columns = tag("colgroup", [tag("col", class_=c) for c in ("name", "model", "tokens", "num", "num", "num", "axis")])
    return tag("table", columns, tag("thead", tag("tr", [tag("th", h) for h in head])), tag("tbody", rows),
               class_="waterfall")


def _panel(store: Store, trace_id: str, obs_id: str) -> Tuple[int, bytes]:
    _, observations = _found(store, trace_id)
    return 200, _panel_body(_observation(trace_id, observations, obs_id)).encode("utf-8")


def _observation(trace_id: str, observations: List[Dict[str, Any]], obs_id: str) -> Dict[str, Any]:
    for obs in observations:
        if obs.get("id") == obs_id:
            return obs
    raise _Refused(404, "Observation not found", f"Trace {trace_id!r} has no observation {obs_id!r}.")


def _panel_body(obs: Dict[str, Any]) -> Safe:
    began, ended = as_time(obs.get("startTime")), as_time(obs.get("endTime"))
    first_token = seconds(began, as_time(obs.get("completionStartTime")))
    kind = _kind(obs)
    facts = [
        ("Id", tag("code", obs.get("id"))),
        ("Type", tag("span", kind, class_=f"type t-{kind}")),
        ("Started", when(obs.get("startTime"))),
        ("Ended", when(obs.get("endTime"))),
        ("Duration", span_of(seconds(began, ended))),
        ("First token", span_of(first_token) if first_token is not None else "—"),
        ("Model", obs.get("model") or "—"),
        ("Level", obs.get("level") or "DEFAULT"),
        ("Status message", obs.get("statusMessage") or "—"),
        ("Parent", tag("code", obs.get("parentObservationId")) if obs.get("parentObservationId") else "the trace"),
    ]
    sections = [_section(label, obs.get(key)) for label, key in (
        ("Input", "input"), ("Output", "output"), ("Metadata", "metadata"), ("Usage", "usageDetails"),
        ("Cost", "costDetails"), ("Model parameters", "modelParameters"))]
    return tag("div",
               tag("h3", obs.get("name") or "(unnamed)", class_="failed" if failed(obs) else None),
               _facts(facts),
               sections, class_="panel", data_id=obs.get("id"))


# -- a session -------------------------------------------------------------------------------------


def _session(store: Store, session_id: str) -> Tuple[int, bytes]:
    lines, total = store.session(session_id)
    if not lines:
        raise _Refused(404, "Session not found", f"No trace of session {session_id!r} is stored here.")
    costs = [line["cost"] for line in lines if line.get("cost") is not None]
    starts = [as_time(line.get("timestamp")) for line in lines]
    first = min((s for s in starts if s is not None), default=None)
    finishes = [began.timestamp() + line["duration"] for line, began in zip(lines, starts)
                if began is not None and line.get("duration") is not None]
    wall = max(finishes) - first.timestamp() if first is not None and finishes else None
    errors = sum(line.get("errors") or 0 for line in lines)
    facts = [
        ("Traces", f"{total:,}" + (f" (the first {len(lines):,} shown)" if total > len(lines) else "")),
        ("Started", when(first.isoformat()) if first is not None else "—"),
        ("Wall time", span_of(wall)),
        ("Observations", f"{sum(line.get('observations', 0) for line in lines):,}"),
        ("Tokens in / out", f"{tokens(sum(line.get('inputTokens') or 0 for line in lines))} / "
                            f"{tokens(sum(line.get('outputTokens') or 0 for line in lines))}"),
        ("Cost", money(sum(costs)) if costs else "—"),
        ("Errors", tag("span", f"✗ {errors}", class_="error-mark") if errors else "none"),
    ]
    return 200, layout(f"Session {session_id}", tag("h1", "Session ", tag("code", session_id)),
                       _facts(facts),
                       _trace_table(lines, with_session=False))
