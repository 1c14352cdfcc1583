"""JSON encoding that never fails, and size limits that never reject.

`encode_item(item, max_bytes)` always returns UTF-8 JSON bytes. Values JSON cannot represent are
encoded by a documented fallback (see docs/delivery.md):

=====================  =========================================================
datetime, date, time   ISO-8601 string (naive datetimes as they are)
Decimal                number when finite, else its string ("NaN", "Infinity")
float NaN / ±Infinity  the strings "NaN", "Infinity", "-Infinity"
UUID                   its canonical string
os.PathLike            its path (`os.fspath`), as text
bytes, bytearray       UTF-8 text when valid, else "base64:" + base64
set, frozenset         list (sorted when the members sort)
Enum                   its value, encoded again
attrs / dataclass      dict of its fields
objects with           `model_dump()` (pydantic v2), `dict()` / `to_dict()` result
anything else          `repr()`, cut to 1,000 characters
circular reference     the string "<circular>"
int past Python's      its hex string ("0x..."): Python refuses to write more than
  digit limit          4,300 decimal digits (`sys.set_int_max_str_digits`)
a value whose own      "<TypeName>" (`repr` raised), or "<TypeName that could not be
  code raises          read: ErrorType>" (a container whose `items()`/iteration raised)
=====================  =========================================================

An item over `max_bytes` has its largest fields among `input`, `output` and `metadata` (of the
body, or of an OTel span's attributes) replaced by their text cut short and followed by
`TRUNCATION_MARKER`, until it fits (`fit`): the largest first, each keeping what fits as it is
written (escapes counted), so that a small field is cut only when the large ones cannot make room.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import decimal
import enum
import json
import logging
import math
import os
import uuid
from typing import Any, Callable, Dict, Optional, Tuple

import attrs

__all__ = ["encode_item", "dumps", "to_jsonable", "truncate_text", "TRUNCATION_MARKER"]

log = logging.getLogger(__name__)

TRUNCATION_MARKER = "…[truncated by dirigent_langfuse: {size} bytes in all]"
_REPR_LIMIT = 1000
_TRUNCATABLE = ("input", "output", "metadata")
UNENCODABLE = "<dirigent_langfuse could not encode this field ({error}); see its log>"
CIRCULAR = "<circular>"  # a container met again inside itself (also in the payload copies: mapping/snapshot.py)


def _float(value: float) -> Any:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def key_text(key: Any) -> str:
    """A dict key as `json` writes it ("null", "true", 1.5 as "1.5"), so the slow path writes the
    same keys as the fast one; a key `json` refuses (a tuple) is its `str()`."""
    if key is None or isinstance(key, bool):
        return json.dumps(key)
    if isinstance(key, float):
        return str(_float(key))
    if isinstance(key, int):
        return _int_text(key)
    try:
        return str(key)
    except Exception:  # the key's own __str__ raised
        return f"<{type(key).__name__}>"


def _int_text(value: int) -> str:
    try:
        return int.__repr__(value)
    except ValueError:  # past sys.get_int_max_str_digits(): hex has no such limit
        return hex(value)


def _fallback(value: Any) -> Any:
    """One step of the fallback for a value `json` cannot encode."""
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, os.PathLike):
        path = os.fspath(value)
        return path if isinstance(path, str) else _fallback(path)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(raw).decode("ascii")
    if isinstance(value, (set, frozenset)):
        try:
            return sorted(value)
        except TypeError:
            return list(value)
    if isinstance(value, enum.Enum):
        return value.value
    if attrs.has(type(value)):
        return attrs.asdict(value, recurse=False)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    for method in ("model_dump", "to_dict", "dict"):
        fn = getattr(value, method, None)
        if callable(fn) and not isinstance(value, type):
            try:
                result = fn()
            except Exception:
                continue
            if isinstance(result, dict):
                return result
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 1] + "…"


def to_jsonable(value: Any, _seen: Optional["set[int]"] = None, _depth: int = 0) -> Any:
    """A structure of plain JSON types equal to `value` under the fallback above."""
    if _seen is None:
        _seen = set()
    if _depth > 200:
        return "<too deep>"
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        text = _int_text(value)
        return text if text.startswith(("0x", "-0x")) else value  # (json writes the int itself)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, (dict, list, tuple)):
        marker = id(value)
        if marker in _seen:
            return CIRCULAR
        _seen.add(marker)
        try:
            if isinstance(value, dict):
                return {k if isinstance(k, str) else key_text(k): to_jsonable(v, _seen, _depth + 1) for k, v in value.items()}
            return [to_jsonable(v, _seen, _depth + 1) for v in value]
        except Exception as exc:  # a subclass whose items() or iteration raised
            return f"<{type(value).__name__} that could not be read: {type(exc).__name__}>"
        finally:
            _seen.discard(marker)
    try:
        replaced = _fallback(value)
    except Exception:  # the object's own code raised (a property read by attrs.asdict, say)
        return f"<{type(value).__name__}>"
    if replaced is value or isinstance(replaced, str):
        return replaced if isinstance(replaced, str) else repr(value)[:_REPR_LIMIT]
    return to_jsonable(replaced, _seen, _depth + 1)


def _make_fast() -> Callable[[Any], str]:
    """The C encoder made once (`JSONEncoder.encode` builds a new one per call). Without a
    circular-reference check: a cycle raises RecursionError, and `dumps` takes the slow path.

    `c_make_encoder` is CPython's private API: should a Python lack it, or call it otherwise than
    3.9 to 3.13 do, the public encoder is used (slower, same text), never an import error."""
    fallback = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_fallback).encode
    try:
        from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]

        encoder = c_make_encoder(None, _fallback, encode_basestring, None, ":", ",", False, False, False)
    except Exception:  # ImportError or None (no C accelerator), TypeError (another signature)
        return fallback
    join = "".join

    def encode(value: Any) -> str:
        if isinstance(value, str):
            return encode_basestring(value)
        return join(encoder(value, 0))

    return encode


_fast: Callable[[Any], str] = _make_fast()


def dumps(value: Any) -> bytes:
    """UTF-8 JSON for any value, never an exception: the fast path is the stdlib encoder, the
    slow path `to_jsonable`, which turns whatever the fast one could not write (or whose own code
    raised there) into plain JSON types."""
    try:
        text = _fast(value)
    except Exception:  # ValueError, TypeError, RecursionError, or the value's own code
        text = json.dumps(to_jsonable(value), separators=(",", ":"), ensure_ascii=False)
    return utf8(text)


def utf8(text: str) -> bytes:
    """`text` as UTF-8; lone surrogates (from badly decoded input) become "?" instead of raising."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


def truncate_text(text: str, limit: int) -> str:
    """`text` cut to about `limit` bytes of UTF-8, followed by the truncation marker."""
    size = len(text.encode("utf-8", "replace"))
    if size <= limit:
        return text
    keep = text.encode("utf-8", "replace")[: max(0, limit)].decode("utf-8", "ignore")
    return keep + TRUNCATION_MARKER.format(size=size)


def as_text(value: Any) -> str:
    """A string as it is; anything else as its JSON text."""
    return value if isinstance(value, str) else dumps(value).decode("utf-8")


def _json_bytes(value: Any) -> int:
    """What `value` costs in an ingestion item: its JSON text (a string's with its escapes)."""
    return len(dumps(value))


def shrink_fields(
    fields: Dict[str, Any], names: Tuple[str, ...], excess: int, cost: Callable[[Any], int] = _json_bytes
) -> bool:
    """Cut the largest of `names` in `fields` (in place), each to its text followed by the marker,
    until `excess` bytes are saved; `cost(value)`: the bytes a value takes where it is written (its
    JSON text in an item, a JSON string in a span's attribute), so that a field keeps as much text
    as fits, not what escapes (quotes, line breaks) would leave if counted as raw bytes. The
    smaller fields are cut only when the larger ones cannot save `excess`."""
    sizes = sorted(((cost(fields[n]), n) for n in names if fields.get(n) is not None), reverse=True)
    changed = False
    for size, name in sizes:
        if excess <= 0:
            break
        text = as_text(fields[name])
        raw = len(utf8(text))
        written = cost(text)  # the text as the string it becomes once cut
        room = size - excess - 2 * len(TRUNCATION_MARKER) - 16  # what this field may still take
        keep = int(room * raw / written) if room > 0 and written else 0
        fields[name] = truncate_text(text, keep)
        excess -= size - cost(fields[name])
        changed = True
    return changed


def fit(data: bytes, encode: Callable[[], bytes], fields: Dict[str, Any], names: Tuple[str, ...], max_bytes: int,
        cost: Callable[[Any], int] = _json_bytes) -> bytes:
    """`data` (what `encode()` made), encoded again once `fields` were cut (`shrink_fields`) so that
    it is at most `max_bytes` long: measured again after each cut, at most three rounds (the text a
    cut keeps is estimated from its average escaping), and as it is if nothing is left to cut."""
    for _ in range(3):
        if len(data) <= max_bytes or not shrink_fields(fields, names, len(data) - max_bytes, cost):
            break
        data = encode()
    return data


def encode_item(item: Dict[str, Any], max_bytes: int) -> Tuple[bytes, bool]:
    """(JSON bytes, truncated?) for one ingestion item, at most about `max_bytes` long."""
    try:
        data = dumps(item)
        if len(data) <= max_bytes:
            return data, False
        body = dict(item.get("body") or {})
        return fit(data, lambda: dumps(dict(item, body=body)), body, _TRUNCATABLE, max_bytes), True
    except Exception as exc:  # a bug of ours: the item still goes, without what could not be encoded
        body = unencodable(item.get("body"), exc)
        return dumps(dict(item, body=body)), True


def unencodable(body: Any, exc: BaseException) -> Dict[str, Any]:
    """`body` with input, output and metadata replaced by a marker, after encoding them failed:
    the observation still arrives (and is counted), and the failure is logged with its traceback."""
    log.error("could not encode an item's input, output or metadata (%s); they are sent as a marker",
              type(exc).__name__, exc_info=(type(exc), exc, exc.__traceback__))
    out = dict(body) if isinstance(body, dict) else {}
    for name in _TRUNCATABLE:
        if out.get(name) is not None:
            out[name] = UNENCODABLE.format(error=type(exc).__name__)
    return out
