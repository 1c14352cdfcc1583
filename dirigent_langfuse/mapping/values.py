"""How the mapping writes values as Langfuse reads them, and merges bodies as Langfuse does.

`iso_time`: a time in UTC with milliseconds and a `Z`, as Langfuse's schema wants it (cached per
second: the hot path). `merge_body`/`merge_into`: a later non-null field wins, metadata merges key
by key, `keep_first` fields stay as first said (the OTel transport folds items so, and the
receiver reads them so).
"""

from __future__ import annotations

import functools
import json
from datetime import datetime, timezone
from typing import Any, Dict, Optional, Tuple

from ..wire.encoding import as_text, key_text

__all__ = ["iso_time", "merge_body", "merge_into"]

_last_time: Tuple[Optional[datetime], str] = (None, "")


def iso_time(at: datetime) -> str:
    """UTC ISO-8601 with milliseconds and `Z`, as Langfuse's SDKs send it.

    An event's time is formatted for its envelope and again for its body: the last one is kept;
    and the text up to the second is shared by every event within that second."""
    global _last_time
    last = _last_time
    if last[0] is at:
        return last[1]
    seconds = at.timestamp()
    if seconds >= 0:
        text = _second_text(int(seconds)) + _MILLIS[at.microsecond // 1000]
    else:
        utc = at.astimezone(timezone.utc)
        text = _format_second(utc) + _MILLIS[utc.microsecond // 1000]
    _last_time = (at, text)
    return text


_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))


def _format_second(utc: datetime) -> str:
    return "%04d-%02d-%02dT%02d:%02d:%02d" % (utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second)


@functools.lru_cache(maxsize=1024)
def _second_text(seconds: int) -> str:
    return _format_second(datetime.fromtimestamp(seconds, timezone.utc))


def _map_value(value: Any) -> Any:
    """A `modelParameters` value as Langfuse's `MapValue` allows: scalar, list of strings, or text.

    Integers become floats (8192 → 8192.0): the spec's `MapValue` is a `oneOf` in which an
    integer matches both its integer and its number branch, so only a float validates.
    """
    if isinstance(value, bool) or isinstance(value, (str, float)):
        return value
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:  # past a float's range: its text
            return key_text(value)
    try:
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        return json.dumps(value, default=str, sort_keys=True)
    except Exception:  # keys that do not sort, or the value's own code raised: the encoder's text
        return as_text(value)


def merge_body(old: Dict[str, Any], new: Dict[str, Any], keep_first: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """How Langfuse merges a create and its updates for one body id: a later non-null field wins,
    `metadata` merges key by key, and fields in `keep_first` keep their first value."""
    return merge_into(dict(old), new, keep_first)


def merge_into(out: Dict[str, Any], new: Dict[str, Any], keep_first: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """`merge_body`, changing `out` in place (its nested `metadata` is replaced, never changed)."""
    for key, value in new.items():
        if value is None or (key in keep_first and out.get(key)):
            continue
        if key == "metadata" and isinstance(value, dict) and isinstance(out.get("metadata"), dict):
            merged = dict(out["metadata"])
            merged.update(value)
            out["metadata"] = merged
        else:
            out[key] = value
    return out


def _prune(body: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}
