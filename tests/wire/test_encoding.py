"""Safe encoding: every odd payload value has a documented fallback; oversized items are cut, not refused."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import json
import pathlib
import uuid

import attrs
import pytest

from dirigent_langfuse import MessageStarted, OutcomeStatus
from dirigent_langfuse.mapping.items import bus_event_to_items
from dirigent_langfuse.wire.encoding import TRUNCATION_MARKER, dumps, encode_item

from ..helpers import HostileText, LenRaises, Unreadable, UnreadableList, common, started, stream


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: int


@attrs.frozen
class Box:
    size: int


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque thing>"


class Pydanticish:
    def model_dump(self):
        return {"a": 1}


@pytest.mark.parametrize(
    "value, expected",
    [
        (dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.timezone.utc), "2026-11-25T09:00:00+00:00"),
        (dt.date(2026, 11, 25), "2026-11-25"),
        (decimal.Decimal("1.5"), 1.5),
        (decimal.Decimal("NaN"), "NaN"),
        (float("nan"), "NaN"),
        (float("inf"), "Infinity"),
        (float("-inf"), "-Infinity"),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        (b"hello", "hello"),
        (b"\xff\x00", "base64:/wA="),
        ({3, 1, 2}, [1, 2, 3]),
        (frozenset({"b", "a"}), ["a", "b"]),
        (Color.RED, "red"),
        (Point(1, 2), {"x": 1, "y": 2}),
        (Box(3), {"size": 3}),
        (Pydanticish(), {"a": 1}),
        (Opaque(), "<Opaque thing>"),
        ({1: "int key", None: "none key"}, {"1": "int key", "null": "none key"}),
        (pathlib.PurePosixPath("/repo/tests"), "/repo/tests"),
        # keys as json writes them, also when something else (a NaN, a tuple key) needs the slow path
        ({None: 1, True: 2, 1.5: 3, 7: 4, "nan": float("nan")},
         {"null": 1, "true": 2, "1.5": 3, "7": 4, "nan": "NaN"}),
        ({None: 1, False: 2, ("t", 1): 3}, {"null": 1, "false": 2, "('t', 1)": 3}),
    ],
    ids=lambda v: type(v).__name__,
)
def test_fallbacks(value, expected):
    assert json.loads(dumps({"v": value}))["v"] == expected


def test_circular_and_deep_structures_do_not_fail():
    loop: list = []
    loop.append(loop)
    assert "<circular>" in dumps(loop).decode()
    deep: list = []
    node = deep
    for _ in range(5000):
        node.append([])
        node = node[0]
    json.loads(dumps(deep))  # valid JSON, whatever depth it was cut at


def test_a_repr_that_raises_still_encodes():
    class Hostile:
        def __repr__(self):
            raise RuntimeError("no repr for you")

    assert json.loads(dumps({"v": Hostile()}))["v"]


@pytest.mark.parametrize("value, expected", [
    (10 ** 5000, hex(10 ** 5000)),  # past Python's 4,300 digits: json itself raises ValueError
    ({10 ** 5000: 1}, {hex(10 ** 5000): 1}),
    ({HostileText(): 1}, {"<HostileText>": 1}),  # a key whose __str__ raises
    (Unreadable(a=1), "<Unreadable that could not be read: RuntimeError>"),
    (UnreadableList([1]), "<UnreadableList that could not be read: RuntimeError>"),
], ids=["huge-int", "huge-int-key", "hostile-key", "unreadable-dict", "unreadable-list"])
def test_dumps_never_raises_for_a_value_python_or_its_own_code_cannot_write(value, expected):
    """Before, each raised out of `dumps` (its docstring promised it never fails). On the OTel
    path a trace's metadata is written outside the span's own fallback: the worker caught the
    error and the session's spans were neither delivered nor counted as dropped."""
    assert json.loads(dumps({"v": value}))["v"] == expected


def test_oversized_item_is_truncated_with_a_marker_and_stays_valid(validate_item):
    huge = "x" * 2_000_000
    event = MessageStarted(**common(), message_id="m1", input=[{"role": "user", "content": huge}], model="m")
    (item,) = bus_event_to_items(event)
    data, truncated = encode_item(item, 100_000)
    assert truncated and len(data) <= 100_000
    decoded = json.loads(data)
    assert TRUNCATION_MARKER.split("{")[0] in decoded["body"]["input"]
    validate_item(decoded)


def test_small_items_are_untouched():
    (item,) = bus_event_to_items(started("m1"))
    data, truncated = encode_item(item, 1_000_000)
    assert not truncated and json.loads(data) == json.loads(json.dumps(item))


def test_odd_payloads_through_a_live_stream_all_arrive(receiver, validate_item):
    s = stream(receiver.url, max_item_bytes=50_000)
    odd = [Opaque(), {1, 2}, b"\x00\xff", decimal.Decimal("NaN"), float("nan"), Point(1, 2), "y" * 200_000,
           "a lone \ud800 surrogate", {"key \udcff": 1}]
    for i, value in enumerate(odd):
        outcome = s.on_event(started(f"m{i}", input={"value": value}, model_parameters={"temperature": 0.5}))
        assert outcome.status is OutcomeStatus.ACCEPTED
    assert s.shutdown(5).status is OutcomeStatus.DELIVERED
    stats = s.stats()
    assert stats.items_delivered == len(odd) and stats.items_truncated == 1
    for item in receiver.store.items():
        validate_item(item)


@pytest.mark.parametrize("transport", ["ingestion", "otel"])
def test_hostile_payloads_and_odd_titles_reach_langfuse_over_both_transports(request, transport, validate_item):
    """Payloads whose own code raises, numbers Python cannot write, and a tool title that is not
    text. Before: over OTel, trace metadata holding such a value made the worker fail on every span
    of the session, at shutdown too, and they were neither delivered nor counted as dropped
    ("N item(s) not delivered", dropped {'internal_error': 0}); a list whose len() raised failed
    on_event on the host's thread; and over ingestion a tool call titled with a number was refused
    by Langfuse ("body.name must be a string") and lost."""
    from ..helpers import completed, created, ended, tool_call, tool_update

    receiver = request.getfixturevalue("receiver" if transport == "ingestion" else "receiver_v4")
    s = stream(receiver.url, transport=transport)
    host_meta = Unreadable(a=1)
    events = [created(metadata={"huge": 10 ** 5000, HostileText(): "hostile key"}),
              started("m1", input=LenRaises([1]), model_parameters={"u": Unreadable(a=1), "mixed": {1: "a", "b": 2},
                                                                    "huge": 10 ** 400}),
              tool_call("t1", title=42), tool_update("t1", "completed", rawOutput={10 ** 5000: HostileText()}),
              tool_call("t2", title={"verb": "edit"}), tool_update("t2", "failed", title=["x"]),
              tool_call("t3", title=LenRaises(["x"])), tool_update("t3", "failed", rawOutput=UnreadableList([1])),
              completed("m1", output=UnreadableList([1])), ended(),
              created("scroll-2", metadata=host_meta), ended("scroll-2")]
    for event in events:
        assert s.on_event(event).status is OutcomeStatus.ACCEPTED, event
    assert list(dict.keys(host_meta)) == ["a"]  # the host's object is never changed
    outcome = s.shutdown(10)
    stats = s.stats()
    assert outcome.status is OutcomeStatus.DELIVERED, outcome
    assert stats.items_delivered == stats.items_accepted and not stats.dropped
    names = {o["name"] for o in receiver.store.observations()}
    assert {"42", '["x"]'} <= names, names  # t2's title as its last update gave it
    if transport == "ingestion":
        for item in receiver.store.items():
            validate_item(item)


def test_an_oversized_item_with_a_lone_surrogate_elsewhere_is_still_truncated():
    """Found by tests/test_random.py: measuring the fields to cut encoded them strictly."""
    from dirigent_langfuse.wire.encoding import encode_item

    item = {"id": "i", "type": "span-create", "body": {"input": "x" * 100_000, "output": "bad \ud800 text"}}
    data, truncated = encode_item(item, 10_000)
    assert truncated and len(data) < 12_000


def test_a_bug_while_encoding_sends_the_item_without_the_fields_never_drops_it(monkeypatch, caplog):
    """Whatever fails while encoding input, output or metadata (here: the truncation itself),
    the item or span still goes, counted, with a marker, and the traceback is logged."""
    from dirigent_langfuse.wire import encoding
    from dirigent_langfuse.wire.encoding import encode_item

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(encoding, "shrink_fields", broken)
    item = {"id": "i", "type": "span-create", "body": {"id": "b", "input": "x" * 5000, "name": "kept"}}
    data, truncated = encode_item(item, 1000)
    body = json.loads(data)["body"]
    assert truncated and body["name"] == "kept" and "could not encode" in body["input"]
    assert "RuntimeError" in caplog.text


def test_over_otel_a_bug_while_encoding_a_span_still_sends_it(monkeypatch, caplog):
    from dirigent_langfuse.delivery.client import LangfuseClient
    from dirigent_langfuse.mapping.items import MappingState, bus_event_to_items
    from dirigent_langfuse.wire import otlp as otel
    from dirigent_langfuse.wire import spans

    from ..helpers import completed, config, started

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(spans, "fit", broken)
    cfg = config("http://127.0.0.1:9", transport="otel", max_item_bytes=2000, max_request_bytes=100_000)
    transport = otel.OtelTransport(LangfuseClient(cfg), cfg)
    state = MappingState()
    items = bus_event_to_items(started("m1", input="x" * 5000), state) + bus_event_to_items(completed("m1", t=1), state)
    (record,) = transport.prepare(items)
    assert record.weight == 2 and record.truncated and b"could not encode" in record.data
    assert "RuntimeError" in caplog.text


def test_over_otel_a_span_that_fails_even_without_its_fields_still_goes_with_its_ids_and_times(monkeypatch, caplog):
    """The last resort: before, a failure outside input, output and metadata (the trace's own
    attributes) escaped the fallback, and the worker left the span neither delivered nor dropped."""
    from dirigent_langfuse.delivery.client import LangfuseClient
    from dirigent_langfuse.mapping.items import MappingState, bus_event_to_items
    from dirigent_langfuse.wire import otlp as otel
    from dirigent_langfuse.wire import spans

    from ..helpers import completed, config, started

    def broken(self, scroll):
        raise RuntimeError("a bug")

    monkeypatch.setattr(spans.SpanWriter, "trace_attrs", broken)
    cfg = config("http://127.0.0.1:9", transport="otel")
    transport = otel.OtelTransport(LangfuseClient(cfg), cfg)
    state = MappingState()
    items = bus_event_to_items(started("m1", input="x"), state) + bus_event_to_items(completed("m1", t=1), state)
    (record,) = transport.prepare(items)
    span = json.loads(record.data)
    assert record.weight == 2 and record.truncated
    assert span["spanId"] == spans.span_id(items[0]["body"]["id"]) and span["endTimeUnixNano"] > span["startTimeUnixNano"]
    assert [a["key"] for a in span["attributes"]] == ["langfuse.observation.type"]
    assert "RuntimeError" in caplog.text


@pytest.mark.parametrize("broken", ["missing", "signature"])
def test_without_cpython_s_private_c_encoder_encoding_still_works(monkeypatch, broken):
    """`c_make_encoder` is private to CPython: a Python that lacks it, or calls it otherwise, must
    cost speed, not the import of the package (before, a changed signature raised TypeError when
    encoding.py was imported)."""
    import json.encoder

    from dirigent_langfuse.wire import encoding

    if broken == "missing":
        monkeypatch.setattr(json.encoder, "c_make_encoder", None)
    else:  # a Python whose private encoder takes other arguments than ours (its own JSONEncoder's work)
        real = json.encoder.c_make_encoder

        def other(markers, *args):
            if markers is None:
                raise TypeError("make_encoder() takes other arguments")
            return real(markers, *args)

        monkeypatch.setattr(json.encoder, "c_make_encoder", other)
    fast = encoding._make_fast()
    assert fast({"k": [1, 2.5, None, True, "é"], "t": dt.date(2026, 1, 1)}) == '{"k":[1,2.5,null,true,"é"],"t":"2026-01-01"}'
