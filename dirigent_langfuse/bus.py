"""The host's events (Dirigent `BusEvent`s) and their JSON codec.

Events are frozen `attrs` classes. Every event carries where it came from (`connector_id`,
`native_session_id`), the scroll it belongs to once the host's late bind found it (`scroll_id`,
None or "" before), when it happened (`at`, timezone-aware UTC) and a unique `event_id`.

The codec is forward compatible: an unknown `type` decodes to `UnknownEvent` (streams skip it),
while a known type with a missing or mistyped field raises `BusEventError` naming both.
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timezone
from typing import Any, Dict, List, Mapping, Optional, Tuple, Type

import attrs

from .errors import BusEventError
from .wire.limits import SAFE_INT

__all__ = [
    "BusEvent",
    "SessionCreated",
    "MessageStarted",
    "MessageCompleted",
    "Usage",
    "SessionUpdate",
    "SessionEnded",
    "ScrollBound",
    "ConnectorStatus",
    "UnknownEvent",
    "event_from_json",
    "event_to_json",
    "parse_time",
]


def _now() -> datetime:
    return datetime.now(timezone.utc)


_bits = random.getrandbits  # no system call: os.urandom would hand the GIL over on every event
_V4 = ~((0xF << 76) | (0x3 << 62))


def _new_id() -> str:
    """A random (version 4) UUID as 32 hex digits, like `uuid.uuid4().hex`. From `random`'s
    generator, which is seeded from the OS and re-seeded in a forked child."""
    return "%032x" % ((_bits(128) & _V4) | (0x4 << 76) | (0x2 << 62))


def parse_time(value: Any) -> datetime:
    """An aware UTC datetime from a datetime or an ISO-8601 string; naive values are taken as UTC."""
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        value = datetime.fromisoformat(text)
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime or an ISO-8601 string, got {type(value).__name__}")
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    if value.tzinfo is timezone.utc:
        return value
    return value.astimezone(timezone.utc)


# Validators as plain functions: every event runs several on the host's thread, and these cost a
# fifth of attrs' `optional(instance_of(...))`. They raise as attrs' own do (the attribute, the
# expected type and the value in `args`), which `_field_problem` reads.


def _wrong_type(attribute: "attrs.Attribute[Any]", expected: Any, value: Any) -> TypeError:
    return TypeError(
        f"'{attribute.name}' must be {_kind_name(expected)} (got {type(value).__name__})", attribute, expected, value
    )


def _str(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    if type(value) is not str and not isinstance(value, str):
        raise _wrong_type(attribute, str, value)


def _opt_str(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    if value is not None and type(value) is not str and not isinstance(value, str):
        raise _wrong_type(attribute, str, value)


def _opt_dict(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    if value is not None and not isinstance(value, dict):
        raise _wrong_type(attribute, dict, value)


def _dict(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    if not isinstance(value, dict):
        raise _wrong_type(attribute, dict, value)


def _cost(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _wrong_type(attribute, (int, float), value)
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int past a float's range
        finite = False
    # JSON has no NaN, and Langfuse refuses a negative cost: either way the item that carries it
    # (a message's end, with its output and usage) would be lost.
    if not finite or value < 0:
        shown = f"{value!r}" if finite or isinstance(value, float) else f"an int of {value.bit_length()} bits"
        raise ValueError(f"'{attribute.name}' must be a finite number, at least 0 (got {shown})")


def _tags(value: Any) -> Tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        raise TypeError("'tags' must be a list of strings, not a string")
    try:
        return tuple(value)
    except TypeError:
        raise TypeError(f"'tags' must be a list of strings (got {type(value).__name__})") from None


def _id(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    """An id that others derive from (items' envelope ids, a message's observation id): empty,
    two events or messages would share theirs, and Langfuse keep only one."""
    if type(value) is not str and not isinstance(value, str):
        raise _wrong_type(attribute, str, value)
    if not value or value.isspace():
        hint = " (leave it out for a fresh one)" if attribute.name == "event_id" else ""
        raise ValueError(f"'{attribute.name}' must not be empty{hint}")


def _non_negative_int(instance: Any, attribute: "attrs.Attribute[int]", value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{attribute.name!r} must be an integer (got {type(value).__name__})")
    if value < 0:
        raise ValueError(f"{attribute.name!r} must not be negative (got {value if value > -2 ** 63 else 'a huge number'})")
    if value > SAFE_INT:  # Langfuse reads counts as JavaScript numbers and refuses larger ones
        raise ValueError(f"{attribute.name!r} must be below 2**53 (got an int of {value.bit_length()} bits)")


@attrs.frozen(kw_only=True)
class BusEvent:
    """Fields every event has. Not emitted on its own; use one of the subclasses."""

    connector_id: str = attrs.field(validator=_str)
    native_session_id: str = attrs.field(validator=_str)
    scroll_id: Optional[str] = attrs.field(default=None, validator=_opt_str)
    at: datetime = attrs.field(factory=_now, converter=parse_time)
    event_id: str = attrs.field(factory=_new_id, validator=_id)

    @property
    def bound(self) -> bool:
        """True once the host has bound this event to a scroll."""
        return bool(self.scroll_id)


@attrs.frozen(kw_only=True)
class SessionCreated(BusEvent):
    title: Optional[str] = attrs.field(default=None, validator=_opt_str)
    cwd: Optional[str] = attrs.field(default=None, validator=_opt_str)
    agent: Optional[str] = attrs.field(default=None, validator=_opt_str)
    agent_version: Optional[str] = attrs.field(default=None, validator=_opt_str)
    model: Optional[str] = attrs.field(default=None, validator=_opt_str)
    user_id: Optional[str] = attrs.field(default=None, validator=_opt_str)
    tags: Tuple[str, ...] = attrs.field(
        default=(), converter=_tags, validator=attrs.validators.deep_iterable(_str)
    )
    metadata: Optional[Dict[str, Any]] = attrs.field(default=None, validator=_opt_dict)


@attrs.frozen(kw_only=True)
class MessageStarted(BusEvent):
    message_id: str = attrs.field(validator=_id)
    role: str = attrs.field(default="assistant", validator=_str)
    model: Optional[str] = attrs.field(default=None, validator=_opt_str)
    input: Any = None
    model_parameters: Optional[Dict[str, Any]] = attrs.field(default=None, validator=_opt_dict)


@attrs.frozen(kw_only=True)
class Usage:
    """Token counts of one message; `total` is derived, never stored."""

    input_tokens: int = attrs.field(default=0, validator=_non_negative_int)
    output_tokens: int = attrs.field(default=0, validator=_non_negative_int)
    cache_read_tokens: int = attrs.field(default=0, validator=_non_negative_int)
    cache_write_tokens: int = attrs.field(default=0, validator=_non_negative_int)

    def __attrs_post_init__(self) -> None:
        if self.total > SAFE_INT:  # sent as usageDetails.total: Langfuse would refuse it, and the message's end
            raise ValueError(f"'usage' total must be below 2**53 (got an int of {self.total.bit_length()} bits)")

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens


def _usage(value: Any) -> Optional[Usage]:
    if value is None or isinstance(value, Usage):
        return value
    if isinstance(value, Mapping):
        unknown = set(value) - {"input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"}
        if unknown:
            raise TypeError(f"'usage' has unknown keys {sorted(unknown)}")
        try:
            return Usage(**value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"'usage' {exc}") from None
    raise TypeError(f"'usage' must be a Usage or a mapping (got {type(value).__name__})")


@attrs.frozen(kw_only=True)
class MessageCompleted(BusEvent):
    message_id: str = attrs.field(validator=_id)
    output: Any = None
    usage: Optional[Usage] = attrs.field(default=None, converter=_usage)
    cost_usd: Optional[float] = attrs.field(default=None, validator=_cost)
    stop_reason: Optional[str] = attrs.field(default=None, validator=_opt_str)
    error: Optional[str] = attrs.field(default=None, validator=_opt_str)


@attrs.frozen(kw_only=True)
class SessionUpdate(BusEvent):
    """An ACP `session/update` notification's `update`, exactly as ACP writes it."""

    update: Dict[str, Any] = attrs.field(validator=_dict)

    @property
    def kind(self) -> str:
        """The ACP `sessionUpdate` discriminator ("tool_call", "plan", ...), or "" when absent."""
        kind = self.update.get("sessionUpdate")
        return kind if isinstance(kind, str) else ""


@attrs.frozen(kw_only=True)
class SessionEnded(BusEvent):
    reason: Optional[str] = attrs.field(default=None, validator=_opt_str)


@attrs.frozen(kw_only=True)
class ScrollBound(BusEvent):
    """The host's late bind found the scroll of `(connector_id, native_session_id)`."""

    def __attrs_post_init__(self) -> None:
        if not self.scroll_id:
            raise BusEventError("scroll_bound", "scroll_id", "is required")


@attrs.frozen(kw_only=True)
class ConnectorStatus(BusEvent):
    status: str = attrs.field(validator=_str)
    detail: Optional[str] = attrs.field(default=None, validator=_opt_str)


@attrs.frozen(kw_only=True)
class UnknownEvent(BusEvent):
    """An event whose `type` this version does not know: kept whole in `data`, skipped by streams."""

    type: str = attrs.field(validator=_str)
    data: Dict[str, Any] = attrs.field(factory=dict)


_TYPES: Dict[str, Type[BusEvent]] = {
    "session_created": SessionCreated,
    "message_started": MessageStarted,
    "message_completed": MessageCompleted,
    "session_update": SessionUpdate,
    "session_ended": SessionEnded,
    "scroll_bound": ScrollBound,
    "connector_status": ConnectorStatus,
}
_NAMES: Dict[Type[BusEvent], str] = {cls: name for name, cls in _TYPES.items()}
KNOWN_TYPES = frozenset(_TYPES)  # the JSON `type`s this version decodes
_COMMON = ("connector_id", "native_session_id", "scroll_id", "at", "event_id")


def event_to_json(event: BusEvent) -> Dict[str, Any]:
    """A JSON-ready dict with `"type"`; `at` as ISO-8601. The inverse of `event_from_json`."""
    if isinstance(event, UnknownEvent):
        out = dict(event.data)
        out.update({k: getattr(event, k) for k in _COMMON})
        out["type"] = event.type
    else:
        out = {"type": _NAMES[type(event)]}
        for field in attrs.fields(type(event)):
            value = getattr(event, field.name)
            if isinstance(value, Usage):
                value = attrs.asdict(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[field.name] = value
    out["at"] = event.at.isoformat()
    return out


def _field_problem(exc: BaseException) -> Tuple[str, str]:
    """(field, problem) from an attrs validator's or converter's error."""
    if isinstance(exc, BusEventError):
        return exc.field, exc.problem
    args = exc.args
    if len(args) >= 2 and isinstance(args[1], attrs.Attribute):
        attribute = args[1]
        kind = _kind_name(args[2]) if len(args) > 2 else "valid"
        got = type(args[3]).__name__ if len(args) > 3 else "a bad value"
        return attribute.name, f"must be {kind} (got {got})"
    text = str(exc)
    if text.startswith("'") and "'" in text[1:]:
        name = text[1 : text.index("'", 1)]
        return name, text[len(name) + 3 :] or "is invalid"
    return "?", text


def _kind_name(kind: Any) -> str:
    if isinstance(kind, tuple):
        return " or ".join(getattr(k, "__name__", str(k)) for k in kind)
    return getattr(kind, "__name__", str(kind))


def event_from_json(obj: Mapping[str, Any]) -> BusEvent:
    """Decode one event. Unknown `type` → `UnknownEvent`; bad field → `BusEventError`."""
    if not isinstance(obj, Mapping):
        raise BusEventError("?", "(event)", f"must be a JSON object, got {type(obj).__name__}")
    type_name = obj.get("type")
    if not isinstance(type_name, str) or not type_name:
        raise BusEventError("?", "type", "is missing or not a string")
    cls = _TYPES.get(type_name)
    data = {k: v for k, v in obj.items() if k != "type"}
    if cls is None:
        common = {k: data.pop(k) for k in _COMMON if k in data}
        cls, data = UnknownEvent, dict(common, type=type_name, data=data)
    names = {f.name: f for f in attrs.fields(cls)}
    for name, field in names.items():
        if field.default is attrs.NOTHING and name not in data:
            raise BusEventError(type_name, name, "is required")
    kwargs = {k: v for k, v in data.items() if k in names}
    if "at" in kwargs:
        try:
            kwargs["at"] = parse_time(kwargs["at"])
        except (TypeError, ValueError) as exc:
            raise BusEventError(type_name, "at", f"is not an ISO-8601 time ({exc})") from None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        field, problem = _field_problem(exc)
        raise BusEventError(type_name, field, problem) from None


def events_from_lines(lines: List[str]) -> List[BusEvent]:
    """Decode JSON Lines (blank lines skipped); the first bad line raises with its number."""
    import json

    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(event_from_json(json.loads(line)))
        except (ValueError, BusEventError) as exc:
            raise BusEventError("?", f"line {number}", str(exc)) from None
    return out
