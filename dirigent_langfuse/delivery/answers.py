"""Langfuse's answers as the client reads them: bounded in time and size, whatever they hold.

An answer's body must come whole within `read_timeout` of its headers and be at most
`ANSWER_BYTES` (`read_answer`): a proxy that trickles its answer, or sends one without end, cannot
hold the sending thread longer. What an answer says (its message, its `Retry-After`, the retries
urllib3 made) is read here too, and never a header's or the secret's text.
"""

from __future__ import annotations

import email.utils
import re
import time
from datetime import datetime, timezone
from typing import Any, List, Optional, Tuple

import requests

from ..errors import LangfuseTransportError

__all__ = ["ANSWER_BYTES", "read_answer", "error_message"]

ANSWER_BYTES = 4 << 20  # of an answer's body, at most this is read: Langfuse's own are a few KiB
_CHUNK = 64 << 10


def _short(text: str, limit: int = 300) -> str:
    text = re.sub(r"<[^>]*>", " ", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_message(response: requests.Response) -> str:
    """What a server said, as one short line: a JSON `message`/`error`, else the body's text."""
    try:
        data = response.json()
    except ValueError:
        try:
            return _short(response.text)
        except Exception:
            return ""
    if isinstance(data, dict):
        for key in ("message", "error", "errorMessage"):
            value = data.get(key)
            if isinstance(value, str) and value:
                return _short(value)
            if isinstance(value, (dict, list)) and value:
                return _short(str(value))
    return _short(str(data))


def _retries(response: requests.Response) -> int:
    retries = getattr(response.raw, "retries", None)
    return len(retries.history) if retries is not None else 0


def _retry_after(response: requests.Response, cap: float) -> Optional[float]:
    """Seconds a `Retry-After` asked for (a number, or an HTTP date), capped; None if unreadable."""
    value = (response.headers.get("Retry-After") or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), cap)


def read_answer(raw: Any, seconds: float) -> Tuple[bytes, Optional[str]]:
    """The body of an answer (a urllib3 response) whose headers came: (what came, None) once it
    came whole; else (what came, up to `ANSWER_BYTES`, and why the rest did not).

    Read a piece at a time (`read1`: whatever the socket has) so that a trickle cannot hold the
    thread past `seconds`. urllib3 before 2.3 has no `read1`: there the body is read from the
    standard library's response beneath it, unless it is compressed, when the time is only
    checked between pieces of 64 KiB."""
    read = getattr(raw, "read1", None)
    if read is None:
        beneath: Any = getattr(raw, "_fp", None)
        if hasattr(beneath, "read1") and not raw.headers.get("Content-Encoding"):
            def read(size: int, decode_content: bool) -> bytes:
                return beneath.read1(size)  # type: ignore[no-any-return]
        else:
            read = raw.read
    deadline = time.monotonic() + seconds
    parts: List[bytes] = []
    size = 0
    try:
        while True:
            if time.monotonic() >= deadline:
                return b"".join(parts), f"did not complete within read_timeout ({seconds:g} s)"
            piece = read(_CHUNK, decode_content=True)
            if not piece:
                return b"".join(parts), None
            parts.append(piece)
            size += len(piece)
            if size > ANSWER_BYTES:
                return b"".join(parts)[:ANSWER_BYTES], f"is larger than {ANSWER_BYTES >> 20} MiB"
    except Exception as exc:  # the connection broke, or a body that does not decode
        return b"".join(parts), f"broke off ({_describe(exc)})"


def _read(response: requests.Response, seconds: float) -> Optional[str]:
    """Reads the body of `response` (sent with `stream=True`) into it, bounded as `read_answer`;
    returns why it is not whole, or None. The connection goes back to the pool only when whole."""
    response._content, problem = read_answer(response.raw, seconds)
    if problem is not None:
        response.raw.close()
    setattr(response, "_content_consumed", True)  # noqa: B010 (as requests marks a body it read; not in its types)
    response.close()
    return problem


def _entries(value: Any) -> List[Any]:
    """A 207's `successes` or `errors`: a list; anything else in its place is read as none."""
    return value if isinstance(value, list) else []


def _not_langfuse(response: requests.Response, path: str) -> LangfuseTransportError:
    """A 2xx that is not Langfuse's answer: the items must not count as delivered."""
    kind = _short(response.headers.get("Content-Type") or "no Content-Type", 60)
    start = _short(response.content[:80].decode("utf-8", "replace").strip(), 80)
    error = LangfuseTransportError(
        f"POST {path}: HTTP {response.status_code} with a body that is not Langfuse's answer ({kind}: {start!r}); "
        f"is host the URL Langfuse is served at, or does a proxy answer for it?"
    )
    error.retries = _retries(response)
    return error


def _describe(exc: BaseException) -> str:
    """A transport error as one line, without URLs' credentials or headers."""
    text = f"{type(exc).__name__}"
    reason = exc.args[0] if exc.args else None
    inner = getattr(reason, "reason", None)
    if inner is not None:
        text += f" ({type(inner).__name__})"
    elif isinstance(reason, str):
        text += f" ({_short(reason, 200)})"
    return text
