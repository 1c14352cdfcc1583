"""The copies of the host's payloads taken on its thread (dirigent_langfuse/snapshot.py)."""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Any, List

from dirigent_langfuse.mapping.snapshot import LIMIT, own, own_event
from dirigent_langfuse.wire.encoding import dumps

from ..helpers import LenRaises, Unreadable, created, started, tool_call


def test_a_copy_shares_no_container_with_the_original():
    original = {"messages": [{"role": "user", "content": "hi", "parts": ("a", ["b"])}], "tags": {"x"}, "raw": bytearray(b"ab")}
    copy = own(original)
    assert copy == {"messages": [{"role": "user", "content": "hi", "parts": ("a", ["b"])}], "tags": {"x"}, "raw": b"ab"}
    original["messages"][0]["content"] = "changed"
    original["messages"][0]["parts"][1].append("c")
    original["messages"].append({})
    original["tags"].add("y")
    original["raw"].extend(b"cd")
    original["new"] = 1
    assert copy == {"messages": [{"role": "user", "content": "hi", "parts": ("a", ["b"])}], "tags": {"x"}, "raw": b"ab"}


def test_leaves_and_unchangeable_values_are_the_same_objects():
    for value in ("text", 3, 2.5, True, None, b"raw", frozenset({1}), ("a", 1, None)):
        assert own(value) is value


def test_subclasses_become_the_plain_containers_json_sees():
    copy = own(collections.OrderedDict(a=collections.defaultdict(list, b=[1])))
    assert type(copy) is dict and type(copy["a"]) is dict and copy == {"a": {"b": [1]}}
    Point = collections.namedtuple("Point", "x y")
    assert own([Point(1, [2])]) == [(1, [2])]


def test_other_objects_are_kept_by_reference_for_the_worker_to_encode():
    @dataclasses.dataclass
    class Message:
        text: str

    message = Message("hi")
    copy = own({"m": message})
    assert copy["m"] is message


def test_a_container_inside_itself_is_copied_as_the_encoder_writes_it():
    """Before, the copy followed the cycle 100 levels deep: Langfuse showed a hundred nested
    copies where the encoder of the original writes one "<circular>" (and a wide cycle spent the
    whole LIMIT on the host's thread)."""
    loop: List[Any] = [1]
    loop.append(loop)
    assert own(loop) == [1, "<circular>"]
    node: Any = {"name": "root"}
    node["children"] = [{"parent": node}, {"parent": node}]
    assert own(node) == {"name": "root", "children": [{"parent": "<circular>"}, {"parent": "<circular>"}]}
    assert dumps(own(node)) == dumps(node)
    shared = {"x": [1]}
    twice = own({"a": shared, "b": shared})  # shared, not circular: both copied
    assert twice == {"a": {"x": [1]}, "b": {"x": [1]}} and twice["a"] is not shared


def test_a_payload_deeper_than_the_bound_is_kept_by_reference_below_it():
    deep: Any = []
    top = deep
    for _ in range(150):
        deep.append([])
        deep = deep[0]
    node, original, depth = own(top), top, 0
    while node is not original:
        depth, node, original = depth + 1, node[0], original[0]
    assert depth == 100


def test_a_container_that_would_go_past_the_limit_is_kept_by_reference():
    """The host's thread copies at most LIMIT members of containers per payload."""
    big = [[i] for i in range(LIMIT)]
    payload = {"first": [1, 2], "big": big, "after": [3]}
    copy = own(payload)
    assert copy == payload
    assert copy["first"] is not payload["first"] and copy["after"] is not payload["after"]
    assert copy["big"] is big
    tiny = [[1]]
    assert own(tiny, limit=0) is tiny
    small = [[i] for i in range(100)]
    assert all(a is not b for a, b in zip(own(small, limit=200), small))
    assert sum(a is b for a, b in zip(own(small, limit=150), small)) == 50  # copied until the budget ran out


def test_own_event_copies_payload_fields_and_keeps_an_event_without_any():
    plain = created(None, t=0)
    assert own_event(plain) is plain
    history = [{"role": "user", "content": "hi"}]
    event = started("m1", None, input=history)
    copy = own_event(event)
    history.append({"role": "assistant"})
    assert copy.input == [{"role": "user", "content": "hi"}] and copy.event_id == event.event_id and copy.at == event.at
    update = tool_call("t1", None)
    assert own_event(update).update == update.update and own_event(update).update is not update.update


def test_a_container_whose_own_code_raises_is_kept_by_reference_never_raises():
    """Before, its len() or items() raised out of `own`, on the host's thread: on_event FAILED."""
    for value in (LenRaises([1]), Unreadable(a=1), {"inner": LenRaises([2])}):
        assert own(value) is value


def test_a_payload_past_the_copy_limit_is_counted_and_said_never_silent(caplog):
    """A 12,000-message history changed after on_event reached Langfuse changed, and nothing said so."""
    from dirigent_langfuse import LangfuseConfig, LangfuseStream

    from ..helpers import started

    caplog.set_level(logging.WARNING, logger="dirigent_langfuse")
    stream = LangfuseStream(LangfuseConfig(host="http://127.0.0.1:9", public_key="pk", secret_key="sk",
                                           transport="ingestion", atexit_flush=False, flush_interval=60), name="big")
    history = [{"role": "user", "content": f"message {i}"} for i in range(12_000)]
    stream.on_event(started("m1", input=history))
    stream.on_event(started("m2", input=history[:10]))  # small enough: copied, not counted
    stream.on_event(started("m3", input=history))
    assert stream.stats().payloads_uncopied == 2
    said = [r.getMessage() for r in caplog.records if "kept by reference" in r.getMessage()]
    assert len(said) == 1 and "MessageStarted" in said[0] and "10000 members" in said[0]  # once a minute, not per event
    stream.shutdown(0.1)
