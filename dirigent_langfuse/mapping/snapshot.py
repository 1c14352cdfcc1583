"""Copies of the host's payloads, taken on its thread when an event is taken.

Items are encoded later, on the worker thread. A host that changes a payload after `on_event`
(appends the answer to the message list it sent as a message's input, updates a metadata dict it
keeps) would otherwise see the change in Langfuse, or make the encoding fail half way ("dictionary
changed size during iteration"). So what the mapping puts into an item is a copy of the payload as
it was at the call: its dicts, lists, tuples and sets, recursively (dict and list subclasses become
plain ones, as JSON sees them; a `bytearray` becomes `bytes`).

The copy costs the host's thread about what `json.dumps` of the payload would (some 0.7 µs per
dict on the benchmark machine), and is bounded so that a huge payload cannot hold that thread: at
most `LIMIT` members of containers per payload, and 100 levels deep; a container that would go
past either is kept by reference and read when it is encoded, and counted (`uncopied`: the stream
shows it in `stats().payloads_uncopied` and says it in a WARNING once a minute), since a change
the host makes to it after the call may then reach Langfuse. A container inside itself is copied
as the encoder would write it, the string "<circular>" (not as 100 levels of copies). Other objects (dataclasses,
pydantic models, anything with `model_dump()`) are kept by reference too: turning them into JSON
runs their own code, which belongs on the worker thread. A container subclass whose own code
raises while it is copied (`len()`, `items()`) is kept by reference as well: the host's call never
fails for it, and the encoder writes what it can (see wire/encoding.py).
"""

from __future__ import annotations

import threading
from typing import Any, List, Set

import attrs

from ..wire.encoding import CIRCULAR

__all__ = ["own", "own_event", "LIMIT", "uncopied"]

LIMIT = 10_000
_DEPTH = 100  # deeper than this is kept by reference

# Values that never change: shared, not copied.
_LEAVES = frozenset({str, int, float, bool, type(None), bytes})


class _Kept(threading.local):
    n = 0  # (a class attribute: a thread that never kept one reads it without an exception)


_kept_here = _Kept()


def uncopied() -> int:
    """Containers this thread kept by reference so far because they went past `LIMIT` members or
    100 levels: the stream reads it before and after an event to count them (stats(), a log line)."""
    return _kept_here.n


def _kept() -> None:
    _kept_here.n += 1


def own(value: Any, limit: int = LIMIT) -> Any:
    """`value` as it is now: a copy of its containers (at most `limit` members), leaves shared."""
    if type(value) in _LEAVES:
        return value
    try:
        return _copy(value, [limit], 0, set())
    except Exception:  # a container subclass whose len() or items() raised: the encoder copes, later
        return value


def _copy(value: Any, left: List[int], depth: int, path: Set[int]) -> Any:
    """`left`: [members the copy may still take]; `path`: the ids of the containers above."""
    kind = type(value)
    if kind is not dict and kind is not list:  # the common two first: this runs on the host's thread
        if kind in _LEAVES or isinstance(value, frozenset):  # a frozenset's members are hashable
            return value
        if isinstance(value, dict):
            kind = dict
        elif isinstance(value, list):
            kind = list
        elif isinstance(value, tuple):
            kind = tuple
        elif isinstance(value, set):
            kind = set
        elif isinstance(value, bytearray):
            return bytes(value)
        else:
            return value  # another object: read on the worker thread
    size = len(value)
    if size > left[0] or depth >= _DEPTH:
        _kept()
        return value
    left[0] -= size
    if kind is set:
        return set(value)
    marker = id(value)
    if marker in path:  # its ancestors, not every container seen: a shared one is copied again
        return CIRCULAR
    path.add(marker)
    depth += 1
    leaves = _LEAVES
    if kind is dict:
        copied: Any = {k: v if type(v) in leaves else _copy(v, left, depth, path) for k, v in value.items()}
    else:
        out = [v if type(v) in leaves else _copy(v, left, depth, path) for v in value]
        if kind is list:
            copied = out
        else:  # a tuple of leaves stays
            copied = value if all(a is b for a, b in zip(out, value)) else tuple(out)
    path.discard(marker)
    return copied


def own_event(event: Any) -> Any:
    """`event` with its payload fields (`own`) copied; the event itself when it has none to copy.
    For events kept a while before they are mapped (the late-bind buffer)."""
    changes = {}
    for field in attrs.fields(type(event)):
        value = getattr(event, field.name)
        if type(value) not in _LEAVES:
            copied = own(value)
            if copied is not value:
                changes[field.name] = copied
    return attrs.evolve(event, **changes) if changes else event
