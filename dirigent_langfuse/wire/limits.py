"""Langfuse's limits, as its server enforces them, in one place: the mapping fits what it sends
to them, the config checks against them, and the receiver refuses what breaks them.

Past any of these Langfuse refuses the item (or, over OTel, the span): an id, a trace name, an
integer it reads as a JavaScript number, an environment name. Found in Langfuse's server code
(its ingestion schema), beyond what its OpenAPI spec says.
"""

from __future__ import annotations

import re

__all__ = ["ID_MAX", "TRACE_NAME_MAX", "SAFE_INT", "ENVIRONMENT", "V4_REFUSAL", "fits", "takes_as_id"]

ID_MAX = 800  # Langfuse refuses an id longer than this, or with a carriage return in it
TRACE_NAME_MAX = 1000  # ... and a trace whose name is longer than this
SAFE_INT = 2**53 - 1  # Langfuse reads integers as JavaScript numbers and refuses larger ones
# Its rule for environment names: lower-case letters, digits, '-' and '_', at most 40, not
# starting with "langfuse"; it refuses anything else (every span with it).
ENVIRONMENT = re.compile(r"(?!langfuse)[a-z0-9_-]{1,40}")
# The `message` of each event Langfuse v4 refuses on /api/public/ingestion (its default
# events_only write mode takes only `score-create` there; traces go over OTLP). Per event, in a 207.
V4_REFUSAL = "Event type not accepted"


def fits(text: str, limit: int) -> bool:
    """At most `limit` characters as JavaScript counts them (UTF-16 units), as Langfuse checks."""
    return len(text) <= limit // 2 or len(text.encode("utf-16-le", "surrogatepass")) // 2 <= limit


def takes_as_id(text: str) -> bool:
    """Whether Langfuse takes `text` as an id: 1 to 800 characters and no carriage return (it
    refuses the item otherwise). The mapping asks it of a scroll_id, the receiver of every id."""
    return 0 < len(text) and fits(text, ID_MAX) and "\r" not in text
