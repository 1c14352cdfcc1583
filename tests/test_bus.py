from datetime import datetime, timezone

import attrs
import pytest

from dirigent_langfuse import (
    BusEventError,
    ConnectorStatus,
    MessageCompleted,
    MessageStarted,
    ScrollBound,
    SessionCreated,
    SessionEnded,
    SessionUpdate,
    UnknownEvent,
    Usage,
    event_from_json,
    event_to_json,
)

from .helpers import at, common


def test_defaults_are_unique_ids_and_aware_utc_now():
    a = SessionEnded(connector_id="c", native_session_id="n")
    b = SessionEnded(connector_id="c", native_session_id="n")
    assert a.event_id != b.event_id and len(a.event_id) == 32
    assert a.at.tzinfo is not None and a.at.utcoffset().total_seconds() == 0
    assert a.scroll_id is None and not a.bound


def test_naive_and_offset_times_become_utc():
    naive = SessionEnded(connector_id="c", native_session_id="n", at=datetime(2026, 1, 1, 12, 0))
    assert naive.at == datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
    offset = event_from_json({"type": "session_ended", "connector_id": "c", "native_session_id": "n",
                              "at": "2026-01-01T14:00:00+02:00"})
    assert offset.at == datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def test_usage_total_is_derived_and_validated():
    usage = Usage(input_tokens=10, output_tokens=5, cache_read_tokens=100, cache_write_tokens=7)
    assert usage.total == 122
    with pytest.raises(ValueError):
        Usage(input_tokens=-1)
    with pytest.raises(TypeError):
        Usage(input_tokens="3")


ALL = [
    SessionCreated(**common(), title="t", cwd="/w", agent="a", agent_version="1", model="m", user_id="u",
                   tags=["x", "y"], metadata={"k": 1}),
    MessageStarted(**common(), message_id="m1", model="m", input=[{"role": "user", "content": "hi"}],
                   model_parameters={"temperature": 0.1}),
    MessageCompleted(**common(), message_id="m1", output="yo", usage=Usage(input_tokens=1, output_tokens=2),
                     cost_usd=0.5, stop_reason="end_turn", error=None),
    SessionUpdate(**common(), update={"sessionUpdate": "tool_call", "toolCallId": "t1", "title": "ls"}),
    SessionEnded(**common(), reason="done"),
    ScrollBound(**common()),
    ConnectorStatus(**common(), status="connected", detail="ok"),
]


@pytest.mark.parametrize("event", ALL, ids=lambda e: type(e).__name__)
def test_codec_round_trip(event):
    data = event_to_json(event)
    assert isinstance(data["type"], str) and isinstance(data["at"], str)
    assert event_from_json(data) == event


def test_type_names():
    assert [event_to_json(e)["type"] for e in ALL] == [
        "session_created", "message_started", "message_completed", "session_update", "session_ended",
        "scroll_bound", "connector_status",
    ]


def test_unknown_type_is_kept_not_fatal():
    event = event_from_json({"type": "workspace_snapshot", "connector_id": "c", "native_session_id": "n",
                             "scroll_id": "s", "at": "2026-11-25T09:00:00Z", "files": 3})
    assert isinstance(event, UnknownEvent)
    assert event.type == "workspace_snapshot" and event.data == {"files": 3} and event.scroll_id == "s"
    assert event_from_json(event_to_json(event)) == event


def test_unknown_fields_of_known_types_are_ignored():
    event = event_from_json({"type": "session_ended", "connector_id": "c", "native_session_id": "n",
                             "reason": "x", "added_in_a_later_host": True})
    assert event.reason == "x"


@pytest.mark.parametrize(
    "obj, field",
    [
        ({"type": "message_started", "connector_id": "c", "native_session_id": "n"}, "message_id"),
        ({"type": "message_started", "connector_id": "c", "native_session_id": "n", "message_id": 7}, "message_id"),
        ({"type": "session_created", "native_session_id": "n"}, "connector_id"),
        ({"type": "session_ended", "connector_id": "c", "native_session_id": "n", "at": "yesterday"}, "at"),
        ({"type": "session_update", "connector_id": "c", "native_session_id": "n", "update": "x"}, "update"),
        ({"type": "message_completed", "connector_id": "c", "native_session_id": "n", "message_id": "m",
          "usage": {"input_tokens": -3}}, "usage"),
        ({"type": "scroll_bound", "connector_id": "c", "native_session_id": "n"}, "scroll_id"),
        # a cost Langfuse cannot store as a number would cost the whole update (output, usage, end)
        ({"type": "message_completed", "connector_id": "c", "native_session_id": "n", "message_id": "m",
          "cost_usd": float("nan")}, "cost_usd"),
        ({"type": "message_completed", "connector_id": "c", "native_session_id": "n", "message_id": "m",
          "cost_usd": float("inf")}, "cost_usd"),
        ({"type": "message_completed", "connector_id": "c", "native_session_id": "n", "message_id": "m",
          "cost_usd": True}, "cost_usd"),
        # Langfuse refuses a negative cost (costDetails are at least 0), and with it the whole update
        ({"type": "message_completed", "connector_id": "c", "native_session_id": "n", "message_id": "m",
          "cost_usd": -0.01}, "cost_usd"),
        # a count past 64 bits, which Langfuse cannot store (before: sent as it was; past 4,300 digits, as hex text)
        ({"type": "message_completed", "connector_id": "c", "native_session_id": "n", "message_id": "m",
          "usage": {"input_tokens": 2 ** 63}}, "usage"),
        # past JavaScript's safe integers, which Langfuse refuses (and with it the message's end); the total too
        ({"type": "message_completed", "connector_id": "c", "native_session_id": "n", "message_id": "m",
          "usage": {"input_tokens": 2 ** 53}}, "usage"),
        ({"type": "message_completed", "connector_id": "c", "native_session_id": "n", "message_id": "m",
          "usage": {"input_tokens": 2 ** 52, "output_tokens": 2 ** 52}}, "usage"),
        # past a float's range (before: OverflowError, naming nothing), and past 4,300 digits
        ({"type": "message_completed", "connector_id": "c", "native_session_id": "n", "message_id": "m",
          "cost_usd": 10 ** 400}, "cost_usd"),
        ({"type": "message_completed", "connector_id": "c", "native_session_id": "n", "message_id": "m",
          "cost_usd": 10 ** 5000}, "cost_usd"),
        ({"type": "message_completed", "connector_id": "c", "native_session_id": "n", "message_id": "m",
          "cost_usd": "0.01"}, "cost_usd"),
        ({"type": "session_created", "connector_id": "c", "native_session_id": "n", "tags": "one"}, "tags"),
        ({"type": "session_created", "connector_id": "c", "native_session_id": "n", "tags": 5}, "tags"),
        # ids derive from it: every event with "" shared its items' ids, and all but one were lost
        ({"type": "session_created", "connector_id": "c", "native_session_id": "n", "event_id": ""}, "event_id"),
        ({"type": "session_created", "connector_id": "c", "native_session_id": "n", "event_id": " "}, "event_id"),
        # a message's observation id derives from it: every message with "" was one generation
        ({"type": "message_started", "connector_id": "c", "native_session_id": "n", "message_id": ""}, "message_id"),
        ({"type": "message_completed", "connector_id": "c", "native_session_id": "n", "message_id": ""}, "message_id"),
    ],
)
def test_bad_fields_name_the_type_and_the_field(obj, field):
    with pytest.raises(BusEventError) as info:
        event_from_json(obj)
    assert info.value.event_type == obj["type"]
    assert info.value.field == field and field in str(info.value), str(info.value)


def test_missing_type_or_non_object():
    with pytest.raises(BusEventError, match="type"):
        event_from_json({"connector_id": "c"})
    with pytest.raises(BusEventError):
        event_from_json(["not", "an", "object"])


def test_events_are_frozen():
    event = ALL[0]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        event.scroll_id = "other"  # type: ignore[misc]
    assert event.at == at(0)
