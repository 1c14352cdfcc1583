"""The pure mapping: every row of the seed's table, the deferred items, ids, and the spec."""

import json
from datetime import datetime, timedelta, timezone

import pytest

from dirigent_langfuse import ConnectorStatus, MappingState, UnknownEvent, Usage, bus_event_to_items, event_from_json
from dirigent_langfuse.mapping.ids import envelope_id, observation_id
from dirigent_langfuse.mapping.values import iso_time
from dirigent_langfuse.receiver.checks import check_item

from ..helpers import at, bound, completed, created, ended, started, tool_call, tool_update, update


def items_of(*events, state=None):
    state = state if state is not None else MappingState()
    out = []
    for e in events:
        out.extend(bus_event_to_items(e, state))
    return out


def test_session_created_is_trace_create_with_scroll_id(validate_item):
    (item,) = bus_event_to_items(created(user_id="u1", tags=["a", "b"], cwd="/w", metadata={"repo": "x"}))
    validate_item(item)
    assert item["type"] == "trace-create"
    body = item["body"]
    assert body["id"] == "scroll-1" and body["name"] == "a session" and body["userId"] == "u1"
    assert body["sessionId"] == "native-1" and body["tags"] == ["a", "b"]
    assert body["metadata"] == {"repo": "x", "connector_id": "conn-1", "native_session_id": "native-1",
                                "cwd": "/w", "agent": "claude-code"}
    assert item["timestamp"] == "2026-11-25T09:00:00.000Z"


def test_message_started_is_generation_create(validate_item):
    (item,) = bus_event_to_items(started("m1", input=[{"role": "user", "content": "hi"}],
                                         model_parameters={"temperature": 0.2, "max_tokens": 8192, "stop": ["x"],
                                                           "tools": {"a": 1}, "seed": None}, t=1.5))
    validate_item(item)
    body = item["body"]
    assert item["type"] == "generation-create"
    assert body["id"] == observation_id("scroll-1", "msg", "m1") and body["traceId"] == "scroll-1"
    assert body["startTime"] == "2026-11-25T09:00:01.500Z" and body["model"] == "claude-sonnet-4-5"
    assert body["modelParameters"] == {"temperature": 0.2, "max_tokens": 8192.0, "stop": ["x"], "tools": '{"a": 1}'}
    assert body["input"] == [{"role": "user", "content": "hi"}]


def test_message_completed_is_generation_update_of_the_same_observation(validate_item):
    create, = bus_event_to_items(started("m1"))
    (item,) = bus_event_to_items(completed("m1", output="done", usage=Usage(input_tokens=10, output_tokens=5,
                                                                             cache_read_tokens=100, cache_write_tokens=3),
                                           cost_usd=0.25, stop_reason="end_turn", t=2))
    validate_item(item)
    body = item["body"]
    assert item["type"] == "generation-update" and body["id"] == create["body"]["id"]
    assert body["endTime"] == "2026-11-25T09:00:02.000Z" and body["output"] == "done"
    assert body["usageDetails"] == {"input": 10, "output": 5, "input_cache_read": 100, "input_cache_write": 3, "total": 118}
    assert body["costDetails"] == {"total": 0.25}
    assert "level" not in body and body["metadata"] == {"stop_reason": "end_turn"}


def test_message_error_is_level_error_with_status_message(validate_item):
    (item,) = bus_event_to_items(completed("m1", error="overloaded"))
    validate_item(item)
    assert item["body"]["level"] == "ERROR" and item["body"]["statusMessage"] == "overloaded"


def test_skipped_rows():
    assert bus_event_to_items(update({"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": "x"}})) == []
    assert bus_event_to_items(update({"sessionUpdate": "brand_new_kind_from_a_later_acp"})) == []
    assert bus_event_to_items(update({})) == []
    assert bus_event_to_items(bound()) == []
    assert bus_event_to_items(ConnectorStatus(connector_id="c", native_session_id="n", scroll_id="s", status="up")) == []
    assert bus_event_to_items(UnknownEvent(connector_id="c", native_session_id="n", scroll_id="s", type="x")) == []


def test_unbound_events_map_to_nothing():
    for event in (created(None), started("m1", None), completed("m1", None), tool_call("t", None), ended(None)):
        assert bus_event_to_items(event) == []
    assert bus_event_to_items(created("")) == []


def test_ids_are_deterministic_so_replays_do_not_duplicate():
    event = started("m1")
    assert bus_event_to_items(event) == bus_event_to_items(event)
    (item,) = bus_event_to_items(event)
    assert item["id"] == envelope_id(event.event_id, 0)
    other = started("m1")  # same message, a different event: same observation, new envelope
    (item2,) = bus_event_to_items(other)
    assert item2["body"]["id"] == item["body"]["id"] and item2["id"] != item["id"]
    assert observation_id("scroll-1", "msg", "m1") != observation_id("scroll-2", "msg", "m1")


def test_envelope_id_is_the_event_id_unless_too_long_or_not_the_first_item():
    assert envelope_id("0f" * 16, 0) == "0f" * 16
    assert envelope_id("e1", 0) == "e1"
    long_id = "x" * 65
    assert envelope_id(long_id, 0) != long_id and len(envelope_id(long_id, 0)) == 36
    assert envelope_id("e1", 1) not in ("e1", envelope_id("e1", 2))


def test_iso_time_milliseconds_and_z():
    assert iso_time(at(0.1234)) == "2026-11-25T09:00:00.123Z"


@pytest.mark.parametrize("value, text", [
    (datetime(2026, 11, 25, 9, 0, 59, 999999, tzinfo=timezone.utc), "2026-11-25T09:00:59.999Z"),
    (datetime(2026, 11, 25, 10, 30, 0, 5000, tzinfo=timezone(timedelta(hours=1, minutes=30))), "2026-11-25T09:00:00.005Z"),
    (datetime(1970, 1, 1, tzinfo=timezone.utc), "1970-01-01T00:00:00.000Z"),
    (datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=timezone.utc), "1969-12-31T23:59:59.999Z"),
    (datetime(1, 1, 1, tzinfo=timezone.utc), "0001-01-01T00:00:00.000Z"),
])
def test_iso_time_is_utc_whatever_the_zone_and_the_year(value, text):
    assert iso_time(value) == text


# -- the deferred items: tool calls, plans, session end -------------------------------------------


def test_tool_call_nested_under_the_message_in_progress(validate_item):
    state = MappingState()
    gen, tool = items_of(started("m1"), tool_call("t1", title="Run tests", locations=[{"path": "/a.py"}], t=1), state=state)
    for item in (gen, tool):
        validate_item(item)
    assert tool["type"] == "span-create"  # the seed's SpanCreate: Langfuse's ingestion API refuses type TOOL
    body = tool["body"]
    assert "type" not in body and body["name"] == "Run tests" and body["input"] == {"command": "pytest"}
    assert body["id"] == observation_id("scroll-1", "tool", "t1")
    assert body["parentObservationId"] == gen["body"]["id"]
    assert body["startTime"] == "2026-11-25T09:00:01.000Z"
    assert body["metadata"]["kind"] == "execute" and body["metadata"]["locations"] == [{"path": "/a.py"}]
    assert body["metadata"]["connector_id"] == "conn-1"


def test_every_item_of_the_example_sessions_passes_langfuse_s_own_checks():
    """Langfuse's ingestion API is stricter than its OpenAPI spec: it refuses an `observation-create`
    of type TOOL (the spec lists it), so tool calls sent that way were all lost on a real Langfuse
    v3 while every spec check passed. The receiver's `check_item` holds those rules."""
    from pathlib import Path

    import dirigent_langfuse

    path = Path(dirigent_langfuse.__file__).parent / "examples" / "coding_session.jsonl"
    state = MappingState()
    items = [item for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
             for item in bus_event_to_items(event_from_json(json.loads(line)), state)]
    assert {i["type"] for i in items} >= {"trace-create", "generation-create", "span-create", "span-update"}
    assert [(i["type"], check_item(i)) for i in items if check_item(i)] == []


def test_a_title_longer_than_langfuse_takes_is_cut_and_kept_whole_in_metadata(validate_item):
    """Langfuse refuses a trace whose name is over 1,000 characters (as JavaScript counts them), and
    agents often title a session with its first prompt: the trace lost its name, user, session and
    tags. The name is cut to fit, ending in "…"; the whole title is in metadata.title."""
    for title, units in (("t" * 3000, 1000), ("\U0001F600" * 600, 999)):  # an emoji is two units
        (item,) = bus_event_to_items(created(title=title))
        name = item["body"]["name"]
        assert name.endswith("…") and len(name.encode("utf-16-le")) // 2 == units
        assert item["body"]["metadata"]["title"] == title
        assert check_item(item) is None
        validate_item(item)
    (item,) = bus_event_to_items(created(title="t" * 1000))  # fits: as it is
    assert item["body"]["name"] == "t" * 1000 and "title" not in item["body"]["metadata"]


@pytest.mark.parametrize("scroll", ["scroll\r1", "s" * 801, "\U0001F600" * 401])
def test_a_scroll_id_langfuse_cannot_take_as_an_id_gives_way_to_a_derived_one(scroll):
    """Langfuse refuses an id over 800 characters or with a carriage return in it; the trace id is
    the scroll_id, so it refused the trace and every observation of the session."""
    state = MappingState()
    events = [created(scroll=scroll), started("m1", scroll=scroll, t=1), tool_call("t1", scroll, t=2),
              tool_update("t1", "completed", scroll, t=3), completed("m1", scroll=scroll, t=4), ended(scroll, t=5)]
    items = [i for e in events for i in bus_event_to_items(e, state)]
    assert [(i["type"], check_item(i)) for i in items if check_item(i)] == []
    trace = items[0]["body"]["id"]
    assert trace != scroll and items[0]["body"]["metadata"]["scroll_id"] == scroll
    assert {i["body"].get("traceId", i["body"]["id"]) for i in items} == {trace}
    assert items[-1]["type"] == "trace-create" and items[-1]["body"]["metadata"]["scroll_id"] == scroll
    assert envelope_id("ev\r1", 0) != "ev\r1" and check_item(dict(items[0], id=envelope_id("ev\r1", 0))) is None


def test_tool_call_outside_a_message_hangs_off_the_trace(validate_item):
    state = MappingState()
    items = items_of(started("m1"), completed("m1"), tool_call("t1"), state=state)
    assert "parentObservationId" not in items[-1]["body"]
    assert "parentObservationId" not in bus_event_to_items(tool_call("t2"))[0]["body"]


def test_tool_update_completed_carries_end_and_output(validate_item):
    state = MappingState()
    items = items_of(started("m1"), tool_call("t1"), tool_update("t1", "in_progress", title="Run all tests", t=1),
                     tool_update("t1", "completed", rawOutput={"exit": 0}, t=2), state=state)
    for item in items:
        validate_item(item)
    progress, done = items[2], items[3]
    assert progress["type"] == done["type"] == "span-update"
    assert progress["body"]["name"] == "Run all tests" and "endTime" not in progress["body"]
    assert done["body"]["endTime"] == "2026-11-25T09:00:02.000Z" and done["body"]["output"] == {"exit": 0}
    assert done["body"]["id"] == items[1]["body"]["id"]
    content = [{"type": "content", "content": {"type": "text", "text": "ok"}}]
    (only_content,) = items_of(tool_update("t1", "completed", content=content), state=state)
    assert only_content["body"]["output"] == content


def test_in_progress_update_carries_new_title_input_and_content(validate_item):
    content = [{"type": "content", "content": {"type": "text", "text": "collected 42 items"}}]
    items = items_of(tool_call("t1"), tool_update("t1", "in_progress", title="Run all tests", t=1,
                                                  rawInput={"command": "pytest -q"}, content=content))
    update_ = items[1]
    validate_item(update_)
    assert update_["type"] == "span-update"
    assert update_["body"]["name"] == "Run all tests"
    assert update_["body"]["input"] == {"command": "pytest -q"}
    assert update_["body"]["output"] == content
    assert "endTime" not in update_["body"] and "level" not in update_["body"]


def test_failed_tool_call_is_level_error(validate_item):
    state = MappingState()
    items = items_of(tool_call("t1"), tool_update("t1", "failed", rawOutput="permission denied"), state=state)
    validate_item(items[1])
    assert items[1]["body"]["level"] == "ERROR" and items[1]["body"]["statusMessage"] == "permission denied"
    (failed_no_text,) = items_of(tool_update("t2", "failed"), state=state)
    assert failed_no_text["body"]["statusMessage"] == "tool call failed"


def test_an_update_whose_tool_call_is_unknown_here_is_still_an_update(validate_item):
    """Its tool_call went out from an earlier process (a restart mid-session): a create would
    overwrite the call's start time, name and parent in Langfuse with guesses."""
    (item,) = items_of(tool_update("never-seen", "completed", rawOutput="x", t=3))
    validate_item(item)
    body = item["body"]
    assert item["type"] == "span-update" and "type" not in body
    assert body["endTime"] == "2026-11-25T09:00:03.000Z" and body["output"] == "x"
    assert not {"startTime", "name", "parentObservationId"} & set(body)


def test_tool_call_without_id_is_skipped():
    assert bus_event_to_items(update({"sessionUpdate": "tool_call", "title": "x"})) == []


def test_plan_is_an_event_with_its_entries(validate_item):
    entries = [{"content": "Reproduce", "priority": "high", "status": "pending"}]
    state = MappingState()
    gen, plan = items_of(started("m1"), update({"sessionUpdate": "plan", "entries": entries}), state=state)
    validate_item(plan)
    assert plan["type"] == "event-create" and plan["body"]["name"] == "plan"
    assert plan["body"]["input"] == entries and plan["body"]["parentObservationId"] == gen["body"]["id"]


def test_session_ended_upserts_the_trace_and_forgets_state(validate_item):
    state = MappingState()
    items_of(started("m1"), state=state)
    assert len(state) == 1
    (item,) = items_of(ended(reason="cancelled", t=9), state=state)
    validate_item(item)
    assert item["type"] == "trace-create" and item["body"]["id"] == "scroll-1"
    assert item["body"]["metadata"] == {"ended_at": "2026-11-25T09:00:09.000Z", "end_reason": "cancelled"}
    assert len(state) == 0


def test_state_is_bounded_by_count_and_ttl():
    now = [0.0]
    state = MappingState(max_scrolls=3, ttl=10, clock=lambda: now[0])
    for i in range(5):
        bus_event_to_items(started("m", scroll=f"s{i}"), state)
    assert len(state) == 3
    now[0] = 100.0
    bus_event_to_items(started("m", scroll="fresh"), state)
    assert len(state) == 1


def test_every_acp_session_update_kind_maps_or_skips(validate_item):
    """Each SessionUpdate variant of the ACP schema: tool calls and plans map, the rest skip."""
    import pathlib

    from ..conftest import ACP_SCHEMA

    if not ACP_SCHEMA.exists():
        pytest.skip(f"ACP schema not at {ACP_SCHEMA}")
    schema = json.loads(pathlib.Path(ACP_SCHEMA).read_text())
    kinds = [v["properties"]["sessionUpdate"]["const"] for v in schema["$defs"]["SessionUpdate"]["oneOf"]]
    assert {"tool_call", "tool_call_update", "plan", "agent_message_chunk"} <= set(kinds)
    for kind in kinds:
        payload = {"sessionUpdate": kind, "toolCallId": "t", "title": "x", "entries": [],
                   "content": {"type": "text", "text": "x"}}
        items = bus_event_to_items(update(payload), MappingState())
        if kind in ("tool_call", "tool_call_update", "plan"):
            assert len(items) == 1
            validate_item(items[0])
        else:
            assert items == [], kind


def test_example_session_items_all_validate(validate_item):
    from importlib import resources

    text = resources.files("dirigent_langfuse").joinpath("examples", "coding_session.jsonl").read_text()
    state = MappingState()
    count = 0
    for line in text.splitlines():
        event = event_from_json(json.loads(line))
        for item in bus_event_to_items(event, state):
            validate_item(item)
            count += 1
    assert count > 10


@pytest.mark.parametrize(
    "item",
    [
        {"id": "x", "timestamp": "t", "type": "generation-update", "body": {"id": "o", "level": "LOUD"}},
        {"id": "x", "timestamp": "t", "type": "generation-create", "body": {"modelParameters": {"n": 3}}},
        {"id": "x", "timestamp": "t", "type": "observation-create", "body": {"type": "HAMMER"}},
        {"timestamp": "t", "type": "trace-create", "body": {}},
    ],
)
def test_the_spec_validator_can_fail(validate_item, item):
    with pytest.raises(AssertionError):
        validate_item(item)


# -- streamed text (ACP agent_message_chunk / agent_thought_chunk) -----------------------------------


def chunk(text, kind="agent_message_chunk", t=1.2, scroll="scroll-1", block=None):
    return update({"sessionUpdate": kind, "content": block or {"type": "text", "text": text}}, scroll, t=t)


def test_chunks_become_the_output_and_thought_when_the_host_sends_none(validate_item):
    state = MappingState()
    items = items_of(started("m1", t=1), chunk("Hel"), chunk("ponder", "agent_thought_chunk"), chunk("lo"),
                     completed("m1", t=2), state=state)
    *_, done = items
    assert [i["type"] for i in items] == ["generation-create", "generation-update"]
    assert done["body"]["output"] == "Hello" and done["body"]["metadata"]["thought"] == "ponder"
    assert done["body"]["completionStartTime"] == iso_time(at(1.2))  # the first chunk: time to first token
    validate_item(done)
    assert state.text_chars == 0  # given away with the message


def test_the_host_s_own_output_wins_and_the_chunks_are_forgotten():
    state = MappingState()
    *_, done = items_of(started("m1", t=1), chunk("streamed"), completed("m1", t=2, output="final"), state=state)
    assert done["body"]["output"] == "final" and "thought" not in (done["body"].get("metadata") or {})
    assert done["body"]["completionStartTime"] == iso_time(at(1.2))  # known from the chunks all the same
    assert state.text_chars == 0


def test_chunks_outside_a_message_are_not_kept_and_an_abandoned_message_s_text_is_dropped():
    state = MappingState()
    items_of(chunk("before any message"), state=state)
    assert state.text_chars == 0
    items_of(started("m1", t=1), chunk("never completed"), state=state)
    assert state.text_chars == len("never completed")
    *_, done = items_of(started("m2", t=3), chunk("second", t=3.5), completed("m2", t=4), state=state)
    assert done["body"]["output"] == "second" and state.text_chars == 0
    assert done["body"]["completionStartTime"] == iso_time(at(3.5))  # not the abandoned message's
    *_, plain = items_of(started("m3", t=5), completed("m3", t=6, output="x"), state=state)
    assert "completionStartTime" not in plain["body"]  # nothing streamed: nothing claimed


def test_kept_text_is_bounded_per_message_and_overall_and_says_so():
    from dirigent_langfuse.mapping.state import _CUT

    state = MappingState(max_message_chars=10, max_text_chars=15)
    *_, done = items_of(started("m1", t=1), chunk("abcdefgh"), chunk("ijklmnop"), chunk("more"), completed("m1", t=2),
                        state=state)
    assert done["body"]["output"] == "abcdefghij" + _CUT
    items_of(started("m1", "s-a", t=1), chunk("0123456789", scroll="s-a"), state=state)
    *_, other = items_of(started("m1", "s-b", t=1), chunk("0123456789", scroll="s-b"), completed("m1", "s-b", t=2),
                         state=state)
    assert other["body"]["output"] == "01234" + _CUT  # the overall budget left room for 5
    assert state.text_chars == 10


def test_a_forgotten_scroll_gives_its_text_back():
    now = [0.0]
    state = MappingState(ttl=10, clock=lambda: now[0])
    items_of(started("m1", "s-a", t=1), chunk("abandoned", scroll="s-a"), state=state)
    items_of(started("m1", "s-b", t=1), chunk("ended", scroll="s-b"), ended("s-b", t=2), state=state)
    assert state.text_chars == len("abandoned")
    now[0] = 20.0
    items_of(started("m1", "s-c", t=3), state=state)  # expiry runs on the next touch
    assert state.text_chars == 0


@pytest.mark.parametrize("block, text", [
    ({"type": "image", "data": "AAAA", "mimeType": "image/png"}, "[image: image/png]"),
    ({"type": "resource_link", "uri": "file:///a.py", "name": "a.py"}, "[resource_link: file:///a.py]"),
    ({"type": "resource", "resource": {"uri": "file:///b.py", "text": "print(1)"}}, "print(1)"),
    ({"type": "resource", "resource": {"uri": "file:///c.bin", "blob": "AA=="}}, "[resource: file:///c.bin]"),
    ("not a block", None),
])
def test_content_blocks_other_than_text(block, text):
    *_, done = items_of(started("m1", t=1), chunk(None, block=block), completed("m1", t=2))
    assert done["body"].get("output") == text


def test_the_session_s_first_input_goes_to_the_trace_with_its_first_message_and_its_last_answer_at_its_end(
    validate_item,
):
    state = MappingState()
    items = items_of(created(t=0), started("m1", t=1, input=[{"role": "user", "content": "fix the test"}]),
                     completed("m1", t=2, output="looking"), started("m2", t=3, input=[{"role": "user", "content": "go on"}]),
                     chunk("fixed", t=3.5), completed("m2", t=4), ended(t=5), state=state)
    opened, first, end = [i for i in items if i["type"] == "trace-create"]
    assert first["body"] == {"id": "scroll-1", "input": [{"role": "user", "content": "fix the test"}]}
    assert first["id"] != items[1]["id"] and first["timestamp"] == items[1]["timestamp"]  # the message's, own id
    assert "input" not in end["body"] and end["body"]["output"] == "fixed"  # the last answer, streamed as chunks
    for item in (first, end):
        validate_item(item)
    assert len(state) == 0
    (bare,) = bus_event_to_items(ended(t=5))  # without a state there is nothing to tell
    assert "input" not in bare["body"] and "output" not in bare["body"]


def test_a_first_message_mapped_before_its_session_s_start_still_gives_the_trace_its_input(validate_item):
    """Two host threads raced and the session's first message was mapped before its start. Only
    a state that saw the start claims a first input, so the start, when it comes, says it."""
    state = MappingState()
    items = items_of(started("m1", t=1, input="the first prompt"), created(t=0),
                     started("m2", t=2, input="a later prompt"), state=state)
    traces = [i for i in items if i["type"] == "trace-create"]
    assert [t["body"].get("input") for t in traces] == ["the first prompt"]  # on the start's own item
    validate_item(traces[0])


@pytest.mark.parametrize("why", ["restart", "replay"])
def test_a_state_that_did_not_map_the_session_s_start_claims_no_first_input(why):
    """A process restarted in the middle of a session, or a host replaying a session's tail: the
    first message this state maps is not the session's first. Before, its input went out as the
    trace's at the end, over the real one (which went nowhere before the end)."""
    earlier = MappingState()
    head = items_of(created(t=0), started("m1", t=1, input="the first prompt"), completed("m1", t=2, output="a"),
                    state=earlier)
    assert [i["body"].get("input") for i in head if i["type"] == "trace-create"] == [None, "the first prompt"]
    tail = (started("m2", t=3, input="a later prompt"), completed("m2", t=4, output="b"), ended(t=5))
    if why == "replay":
        items_of(*tail, state=earlier)  # the session ended, and the state forgot it
    items = items_of(*tail, state=MappingState() if why == "restart" else earlier)
    assert [i["type"] for i in items] == ["generation-create", "generation-update", "trace-create"]
    assert "input" not in items[-1]["body"] and items[-1]["body"]["output"] == "b"


def test_a_message_completed_before_its_start_was_mapped_is_not_left_in_progress():
    """Two host threads race and the completion is mapped first. Before, the start then made the
    message "in progress" for good: a tool call started after it had ended became its child, and
    chunks streamed later were kept for it, never to be sent."""
    state = MappingState()
    bus_event_to_items(created(), state)
    bus_event_to_items(completed("m1", t=2), state)
    bus_event_to_items(started("m1", t=1), state)
    assert not state.in_message("scroll-1")
    (item,) = bus_event_to_items(tool_call("t1", t=3), state)
    assert "parentObservationId" not in item["body"]
    bus_event_to_items(started("m2", t=4), state)  # the next message is in progress as usual
    (child,) = bus_event_to_items(tool_call("t2", t=5), state)
    assert child["body"]["parentObservationId"] == observation_id("scroll-1", "msg", "m2")
