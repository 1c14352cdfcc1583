"""HTML built from small functions, escaped by default: the receiver has no template engine.

Promises:
- Every value that is not `Safe` is escaped (`html.escape`, quotes too) wherever it lands: text,
  attribute values, URLs' ids (quoted first). Only what these functions built is `Safe`.
- A page loads nothing but the receiver's own stylesheet, script and icon: no inline script, no
  inline style (the Content-Security-Policy forbids both), nothing from another host.
"""

from __future__ import annotations

import html
import json
import math
from datetime import datetime, timezone
from typing import Any, Iterable, Optional
from urllib.parse import quote, urlencode

__all__ = ["Safe", "esc", "tag", "join", "layout", "link", "pretty", "when", "span_of", "tokens", "money", "CSP"]

# What every page may load: the receiver's own files, nothing inline, nothing from elsewhere.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


class Safe(str):
    """HTML this module built: never escaped again."""


def esc(value: Any) -> Safe:
    if isinstance(value, Safe):
        return value
    return Safe(html.escape("" if value is None else str(value), quote=True))


def join(parts: Iterable[Any]) -> Safe:
    """The parts escaped (or joined, for a list or generator of parts) one after another."""
    return Safe("".join(esc(p) if isinstance(p, (str, int, float, type(None))) else join(p) for p in parts))


def tag(name: str, /, *content: Any, **attrs: Any) -> Safe:
    """`<name attrs>content</name>`; `class_` is `class`, `data_x` is `data-x`; an attribute that
    is None or False is left out, True stands alone."""
    written = []
    for key, value in attrs.items():
        if value is None or value is False:
            continue
        key = key.rstrip("_").replace("_", "-")
        written.append(f" {key}" if value is True else f' {key}="{esc(value)}"')
    opening = f"<{name}{''.join(written)}>"
    if name in ("meta", "link", "input", "br", "col", "rect", "line"):
        return Safe(opening[:-1] + ("/>" if name in ("rect", "line") else ">"))
    return Safe(f"{opening}{join(content)}</{name}>")


def link(path: str, *ids: str, **query: Optional[str]) -> str:
    """A path with ids quoted into it, and a query of the values that are not None."""
    url = path + "".join("/" + quote(i, safe="") for i in ids)
    kept = {k: v for k, v in query.items() if v is not None}
    return url + ("?" + urlencode(kept) if kept else "")


def layout(title: str, *body: Any) -> bytes:
    page = Safe("<!doctype html>") + tag(
        "html",
        tag("head",
            tag("meta", charset="utf-8"),
            tag("meta", name="viewport", content="width=device-width, initial-scale=1"),
            tag("title", title, " · dirigent-langfuse receiver"),
            tag("link", rel="icon", href="/static/icon.svg", type="image/svg+xml"),
            tag("link", rel="stylesheet", href="/static/pages.css"),
            tag("script", src="/static/pages.js", defer=True)),
        tag("body",
            tag("header", tag("a", "dirigent-langfuse receiver", href="/", class_="home"),
                tag("span", "what a Langfuse project would hold", class_="muted")),
            tag("main", *body)),
        lang="en",
    )
    return page.encode("utf-8")


def pretty(value: Any) -> Safe:
    """A stored value as formatted JSON (a string as it is), escaped."""
    if isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)
    return tag("pre", text, class_="json")


def when(value: Optional[str]) -> str:
    """A stored time as people read it, in UTC, to the millisecond."""
    if not value:
        return "—"
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def span_of(seconds: Optional[float]) -> str:
    """A duration: 340 ms, 2.10 s, 3 min 05 s."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def tokens(count: Optional[float]) -> str:
    return "—" if not count else f"{int(count):,}"


def money(amount: Optional[float]) -> str:
    if amount is None:
        return "—"
    return f"${amount:.4f}" if abs(amount) < 100 else f"${amount:,.2f}"
