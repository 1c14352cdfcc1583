"""End to end over loopback: 8 producer threads × 1,000 events, every item delivered exactly once."""

from __future__ import annotations

import threading
from typing import Any, Dict, List

import pytest

from dirigent_langfuse import OutcomeStatus
from dirigent_langfuse.mapping.ids import observation_id, span_id

from .helpers import completed, started, stream

THREADS = 8
EVENTS = 1000  # per thread: 500 messages, each started and completed


@pytest.mark.parametrize("transport", ["ingestion", "otel"])
def test_eight_threads_thousand_events_each_exactly_once(receiver, transport, no_secrets_logged):
    s = stream(receiver.url, transport=transport, flush_interval=0.05)
    go = threading.Barrier(THREADS)
    outcomes = [[] for _ in range(THREADS)]

    def produce(n: int) -> None:
        scroll = f"scroll-{n}"
        go.wait()
        for m in range(EVENTS // 2):
            outcomes[n].append(s.on_event(started(f"m{m}", scroll, native=f"native-{n}", t=m)).status)
            outcomes[n].append(s.on_event(completed(f"m{m}", scroll, native=f"native-{n}", t=m + 0.5)).status)

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(status is OutcomeStatus.ACCEPTED for per in outcomes for status in per)
    assert sum(len(per) for per in outcomes) == THREADS * EVENTS
    assert s.shutdown(30).status is OutcomeStatus.DELIVERED
    stats = s.stats()
    assert stats.items_accepted == stats.items_delivered == THREADS * EVENTS
    assert not stats.dropped and stats.items_pending == 0
    counters = receiver.store.counters()
    assert counters.get("resent", 0) == 0 and counters.get("duplicates", 0) == 0
    observations = receiver.store.observations()
    assert len(observations) == THREADS * EVENTS // 2
    assert all(o.get("endTime") for o in observations)
    if transport == "ingestion":
        assert receiver.store.envelope_count() == THREADS * EVENTS
    else:
        assert counters["spans_received"] == THREADS * EVENTS // 2
    assert {o["traceId"] for o in observations} == {t["id"] for t in receiver.store.traces()}
    assert len(receiver.store.traces()) == THREADS


def first_ten_unbound():
    from .helpers import bound, created, ended, tool_call, tool_update, update

    scroll = None
    early = [
        created(scroll, t=0),
        started("m1", scroll, t=1),
        tool_call("t1", scroll, t=2),
        tool_update("t1", "completed", scroll, t=3, rawOutput="ok"),
        tool_call("t2", scroll, t=4, title="Edit"),
        tool_update("t2", "failed", scroll, t=5, rawOutput={"error": "denied"}),
        update({"sessionUpdate": "plan", "entries": [{"content": "retry", "priority": "high", "status": "pending"}]},
               scroll, t=5.5),
        completed("m1", scroll, t=6),
        started("m2", scroll, t=7),
        tool_call("t3", scroll, t=8, title="Retry"),
    ]
    late = [bound("scroll-late", t=8.5), tool_update("t3", "completed", "scroll-late", t=9),
            completed("m2", "scroll-late", t=10), ended("scroll-late", t=11)]
    return early, late


@pytest.mark.parametrize("transport", ["ingestion", "otel"])
def test_a_session_whose_first_ten_events_arrive_unbound(receiver, transport, validate_item):
    from dirigent_langfuse.mapping.ids import observation_id

    early, late = first_ten_unbound()
    s = stream(receiver.url, transport=transport, flush_interval=0.05)
    for event in early:
        outcome = s.on_event(event)
        assert outcome.status is OutcomeStatus.ACCEPTED and "held" in outcome.detail
    assert s.stats().events_held == 10
    for event in late:
        assert s.on_event(event).status is OutcomeStatus.ACCEPTED
    assert s.shutdown(10).status is OutcomeStatus.DELIVERED
    stats = s.stats()
    assert stats.items_accepted == stats.items_delivered == 13 and not stats.events_dropped
    m1, m2 = (observation_id("scroll-late", "msg", m) for m in ("m1", "m2"))
    t1, t2, t3 = (observation_id("scroll-late", "tool", t) for t in ("t1", "t2", "t3"))
    if transport == "ingestion":
        items = receiver.store.items()
        for item in items:
            validate_item(item)
        order = [(i["type"], i["body"]["id"]) for i in items]
        assert order == [
            ("trace-create", "scroll-late"), ("generation-create", m1), ("span-create", t1),
            ("span-update", t1), ("span-create", t2), ("span-update", t2),
            ("event-create", order[6][1]), ("generation-update", m1), ("generation-create", m2),
            ("span-create", t3), ("span-update", t3), ("generation-update", m2),
            ("trace-create", "scroll-late"),
        ]
        parents = {o["id"]: o.get("parentObservationId") for o in receiver.store.observations()}
        assert parents[t1] == parents[t2] == m1 and parents[t3] == m2 and parents[order[6][1]] == m1
        trace = receiver.store.trace("scroll-late")
        assert trace["metadata"]["end_reason"] == "completed"
    else:
        from dirigent_langfuse.mapping.ids import span_id

        parents = {o["id"]: o.get("parentObservationId") for o in receiver.store.observations()}
        assert parents[span_id(t1)] == parents[span_id(t2)] == span_id(m1)
        assert parents[span_id(t3)] == span_id(m2)
        assert len(parents) == 7  # session, two messages, three tools, the plan


def _session_with_environment(receiver, transport):
    from .wire.test_otlp import session_events

    s = stream(receiver.url, transport=transport, environment="staging", release="v1.2.3")
    for event in session_events():
        assert s.on_event(event).status is OutcomeStatus.ACCEPTED
    assert s.shutdown(10).status is OutcomeStatus.DELIVERED


@pytest.mark.parametrize("transport", ["ingestion", "otel"])
def test_environment_and_release_reach_langfuse_on_both_transports(receiver, transport):
    _session_with_environment(receiver, transport)
    (trace,) = receiver.store.traces()
    assert trace["environment"] == "staging" and trace["release"] == "v1.2.3"
    observations = receiver.store.observations()
    assert observations and all(o.get("environment") == "staging" for o in observations)


def test_items_with_environment_and_release_are_valid_ingestion_events(receiver, validate_item):
    _session_with_environment(receiver, "ingestion")
    items = receiver.store.items()
    assert any("environment" in i["body"] for i in items) and any("release" in i["body"] for i in items)
    for item in items:
        validate_item(item)


@pytest.mark.parametrize("transport", ["ingestion", "otel"])
def test_an_answer_streamed_as_chunks_arrives_as_the_generation_s_output(receiver, transport):
    """ACP agents stream their answer; a host that sends no `output` of its own still shows it,
    also when the first chunks arrive before the scroll is bound."""
    from .helpers import bound, created, ended, update

    def chunk(text, scroll, t, kind="agent_message_chunk"):
        return update({"sessionUpdate": kind, "content": {"type": "text", "text": text}}, scroll, t=t)

    early = [created(None, t=0), started("m1", None, t=1), chunk("The cache ", None, 1.1)]
    late = [bound("scroll-c", t=1.2), chunk("expires too early.", "scroll-c", 1.3),
            chunk("check the clock", "scroll-c", 1.4, "agent_thought_chunk"), completed("m1", "scroll-c", t=2),
            ended("scroll-c", t=3)]
    s = stream(receiver.url, transport=transport, flush_interval=0.05)
    for event in early:
        assert s.on_event(event).status is OutcomeStatus.ACCEPTED
    outcomes = [s.on_event(event) for event in late]
    assert all(o.status is OutcomeStatus.ACCEPTED for o in outcomes), outcomes
    assert outcomes[1].detail == "text kept for the message's output"
    assert s.shutdown(10).status is OutcomeStatus.DELIVERED
    assert s.stats().events_skipped == 0
    (generation,) = [o for o in receiver.store.observations() if o["type"] == "GENERATION"]
    assert generation["output"] == "The cache expires too early."
    assert generation["metadata"]["thought"] == "check the clock"
    assert generation["completionStartTime"] == "2026-11-25T09:00:01.100Z"  # the first chunk's time


@pytest.mark.parametrize("transport", ["ingestion", "otel"])
def test_the_trace_shows_the_session_s_first_input_and_last_answer(receiver, transport):
    from .helpers import created, ended

    s = stream(receiver.url, transport=transport, flush_interval=0.05)
    for event in (created("scroll-io", t=0), started("m1", "scroll-io", t=1, input=[{"role": "user", "content": "why?"}]),
                  completed("m1", "scroll-io", t=2, output="because"), started("m2", "scroll-io", t=3, input="and?"),
                  completed("m2", "scroll-io", t=4, output="done"), ended("scroll-io", t=5)):
        s.on_event(event)
    assert s.shutdown(10).status is OutcomeStatus.DELIVERED
    (trace,) = receiver.store.traces()
    assert trace["input"] == [{"role": "user", "content": "why?"}] and trace["output"] == "done"


@pytest.mark.parametrize("transport", ["ingestion", "otel"])
def test_an_oversized_session_input_keeps_what_fits_and_never_cuts_the_small_answer(receiver, transport):
    """Over OTel the root span carried the input and output twice (as the observation's and the
    trace's) and the cut counted each once: the trace's input became the marker alone and its
    two-byte output `…[truncated by dirigent_langfuse: 2 bytes in all]`."""
    from .helpers import created, ended

    limit = 1_000_000
    prompt = 'say "ok"\n' * 220_000  # 2 MB, with quotes and line breaks that JSON escapes
    s = stream(receiver.url, transport=transport, flush_interval=0.05, max_item_bytes=limit)
    for event in (created("scroll-big", t=0), started("m1", "scroll-big", t=1, input=prompt),
                  completed("m1", "scroll-big", t=2, output="ok"), ended("scroll-big", t=3)):
        s.on_event(event)
    assert s.shutdown(20).status is OutcomeStatus.DELIVERED
    (trace,) = receiver.store.traces()
    (generation,) = [o for o in receiver.store.observations() if o["type"] == "GENERATION"]
    assert trace["output"] == "ok" and generation["output"] == "ok"  # a small field is never cut
    for shown in (trace["input"], generation["input"]):
        assert "…[truncated by dirigent_langfuse: " in shown
        kept = shown[: shown.index("…[truncated")]
        assert prompt.startswith(kept) and len(kept.encode()) >= limit // 2, len(kept)
    assert s.stats().items_truncated >= 2


def across_a_restart(receiver, transport, before, after, **kw):
    """`before` through a stream shut down cleanly, then `after` through a new one: a deploy."""
    for events in (before, after):
        s = stream(receiver.url, transport=transport, flush_interval=0.05, **kw)
        for event in events:
            s.on_event(event)
        assert s.shutdown(10).status is OutcomeStatus.DELIVERED


@pytest.mark.parametrize("transport", ["ingestion", "otel"])
def test_a_restart_in_the_middle_of_a_session_keeps_the_trace_s_first_input(receiver, transport):
    """A deploy restarts the host while a session runs. Before, the trace's input went out only at
    the session's end, from the state of the process that saw the end: the first prompt that
    process saw, not the session's."""
    from .helpers import created, ended

    across_a_restart(receiver, transport,
                     (created("scroll-deploy", t=0), started("m1", "scroll-deploy", t=1, input="the first prompt"),
                      completed("m1", "scroll-deploy", t=2, output="a")),
                     (started("m2", "scroll-deploy", t=3, input="a later prompt"),
                      completed("m2", "scroll-deploy", t=4, output="b"), ended("scroll-deploy", t=5)))
    (trace,) = receiver.store.traces()
    assert (trace["input"], trace["output"]) == ("the first prompt", "b")


@pytest.mark.parametrize("transport", ["ingestion", "otel"])
def test_what_a_restart_left_open_shows_as_ended_by_the_next_process_not_as_incomplete(receiver, transport, tmp_path):
    """The host shuts a stream down cleanly in the middle of a session (a deploy) and the next
    process sees the ends. Over OTel the first process sends what is open as incomplete spans
    (level WARNING, a status message saying so, metadata `incomplete`); the next one's span, which
    knows the end, left all three standing, as Langfuse merges a span sent again: a level it does
    not carry is DEFAULT there (the receiver kept WARNING), a status message it does not carry
    stays, and metadata merges key by key. (Over OTel the next process ends them as the same
    observations with a spool: see test_a_restart_mid_session_over_otel_v4_makes_one_row_per_observation.)"""
    from .helpers import created, ended, tool_call, tool_update

    across_a_restart(receiver, transport,
                     (created("scroll-open", t=0), started("m1", "scroll-open", t=1, input="go"),
                      tool_call("t1", "scroll-open", t=2, title="Run tests")),
                     (tool_update("t1", "completed", "scroll-open", t=3, rawOutput="ok"),
                      completed("m1", "scroll-open", t=4, output="done"), ended("scroll-open", t=5)),
                     spool_path=str(tmp_path / "spool.db"))
    shown = {o["id"]: o for o in receiver.store.observations()}
    tool = shown[observation_id("scroll-open", "tool", "t1") if transport == "ingestion"
                 else span_id(observation_id("scroll-open", "tool", "t1"))]
    message = shown[observation_id("scroll-open", "msg", "m1") if transport == "ingestion"
                    else span_id(observation_id("scroll-open", "msg", "m1"))]
    assert (tool["startTime"], tool["endTime"], tool["output"]) == \
           ("2026-11-25T09:00:02.000Z", "2026-11-25T09:00:03.000Z", "ok")
    assert (message["endTime"], message["output"]) == ("2026-11-25T09:00:04.000Z", "done")
    for obs in (tool, message):
        assert obs.get("level") in (None, "DEFAULT") and not obs.get("statusMessage"), obs
        assert (obs.get("metadata") or {}).get("incomplete") in (None, "false"), obs


def _deploy(scroll: str):
    """Process A sends a session, a message and a 12-minute tool call and shuts down cleanly; process
    B gets the tool call's end, the message's end and the session's end."""
    from .helpers import created, ended, tool_call, tool_update

    return ((created(scroll, t=0, title="the session"), started("m1", scroll, t=1, input="go"),
             tool_call("t1", scroll, t=2, title="Run tests")),
            (tool_update("t1", "completed", scroll, t=722, rawOutput="ok"),
             completed("m1", scroll, t=723, output="done"), ended(scroll, t=724)))


def _rows(receiver) -> Dict[str, List[Dict[str, Any]]]:
    """The receiver's rows by the observation they are of (a row's own id, or its duplicate's)."""
    rows: Dict[str, List[Dict[str, Any]]] = {}
    for obs in receiver.store.observations():
        rows.setdefault(obs.get("duplicateOf") or obs["id"], []).append(obs)
    return rows


def test_a_restart_mid_session_over_otel_v4_makes_one_row_per_observation(receiver_v4, tmp_path):
    """Langfuse v4 keeps a row per span id and start time. Before, the next process sent what it
    ended as spans starting at their ends, named by their type: 6 rows for 3 observations. With a
    spool, what the first process left open is kept with it, and the next one ends each as the
    same row: its real name, start, end and output."""
    scroll = "scroll-deploy-v4"
    before, after = _deploy(scroll)
    across_a_restart(receiver_v4, "otel", before, after, spool_path=str(tmp_path / "spool.db"),
                     late_start_wait=0.2)
    rows = _rows(receiver_v4)
    assert all(len(r) == 1 for r in rows.values()), rows
    assert receiver_v4.store.counters()["duplicates"] == 0
    shown = {r[0]["name"]: r[0] for r in rows.values()}
    assert set(shown) == {"the session", "assistant message", "Run tests"}, shown
    tool, message, root = shown["Run tests"], shown["assistant message"], shown["the session"]
    assert (tool["startTime"], tool["endTime"], tool["output"]) == ("2026-11-25T09:00:02.000Z", "2026-11-25T09:12:02.000Z", "ok")
    assert (message["startTime"], message["output"]) == ("2026-11-25T09:00:01.000Z", "done")
    assert root["startTime"] == "2026-11-25T09:00:00.000Z" and root["endTime"] == "2026-11-25T09:12:04.000Z"
    for obs in (tool, message, root):
        assert obs.get("level") in (None, "DEFAULT") and (obs.get("metadata") or {}).get("incomplete") in (None, "false")
    (trace,) = receiver_v4.store.traces()
    assert (trace["name"], trace["input"]) == ("the session", "go")


def test_a_restart_mid_session_over_otel_v4_without_a_spool_makes_no_second_row(receiver_v4):
    """Without a spool the next process cannot know where what it ends started: it sends each end
    as a record of its own (its own id, at the end), never as a second row of the observation;
    the first process's rows stand, marked incomplete, with their real names and starts."""
    scroll = "scroll-deploy-nospool"
    before, after = _deploy(scroll)
    across_a_restart(receiver_v4, "otel", before, after, late_start_wait=0.2)
    rows = _rows(receiver_v4)
    assert all(len(r) == 1 for r in rows.values()), rows
    assert receiver_v4.store.counters()["duplicates"] == 0
    shown = {r[0]["name"]: r[0] for r in rows.values()}
    for name, start in (("the session", "09:00:00"), ("assistant message", "09:00:01"), ("Run tests", "09:00:02")):
        first = shown[name]
        assert first["startTime"] == f"2026-11-25T{start}.000Z" and first["metadata"]["incomplete"] == "true"
    ends = {o["metadata"]["ends_observation"]: o for o in receiver_v4.store.observations()
            if (o.get("metadata") or {}).get("ends_observation")}
    assert set(ends) == {shown[n]["id"] for n in ("the session", "assistant message", "Run tests")}
    tool_end = ends[shown["Run tests"]["id"]]
    assert (tool_end["type"], tool_end["output"], tool_end["startTime"]) == ("EVENT", "ok", "2026-11-25T09:12:02.000Z")
    assert ends[shown["assistant message"]["id"]]["type"] == "GENERATION"  # its usage and cost count
    assert ends[shown["assistant message"]["id"]]["usageDetails"]["input"] == 10


@pytest.mark.parametrize("transport", ["ingestion", "otel"])
def test_a_tool_call_that_runs_for_an_hour_keeps_its_start_parent_and_the_session_its_input(receiver, transport):
    """Agents wait: a build runs for an hour, a user reads for a while before the next prompt.
    Before, the mapping forgot a session untouched for ten minutes (`pending_ttl`), so the
    tool call's end came as a new call (start = end, no parent) and the trace's input was a
    later message's."""
    from .helpers import TOOL_TYPE, created, ended, tool_call, tool_update

    now = [0.0]
    s = stream(receiver.url, transport=transport, flush_interval=0.05)
    s._state._clock = lambda: now[0]  # the mapping's clock: an hour passes without an event
    for event in (created("scroll-long", t=0), started("m1", "scroll-long", t=1, input="build it"),
                  tool_call("build", "scroll-long", t=2, title="make all")):
        s.on_event(event)
    now[0] = 3600.0
    s.on_event(started("m0", "scroll-other", t=3600))  # another session's event lets the expiry run
    for event in (tool_update("build", "completed", "scroll-long", t=3602, rawOutput="ok"),
                  completed("m1", "scroll-long", t=3603, output="built"), ended("scroll-long", t=3604)):
        s.on_event(event)
    assert s.shutdown(10).status is OutcomeStatus.DELIVERED
    trace = [t for t in receiver.store.traces() if t.get("name") == "a session"][0]
    assert trace["input"] == "build it"
    (tool,) = [o for o in receiver.store.observations(trace["id"]) if o["type"] == TOOL_TYPE[transport]]
    assert tool["name"] == "make all" and tool["startTime"] == "2026-11-25T09:00:02.000Z"
    assert tool["endTime"] == "2026-11-25T10:00:02.000Z" and tool.get("parentObservationId")


@pytest.mark.parametrize("transport", ["ingestion", "otel"])
def test_langfuse_shows_payloads_as_they_were_when_the_event_was_taken(receiver, transport):
    """A host keeps its conversation in one list and appends the answer once the message is
    sent; it keeps a metadata dict and a tool's arguments it updates later. Items are encoded on
    the worker thread, later: before, Langfuse showed the host's later changes (the message's
    input with its own answer in it), bound or held for the late bind."""
    from .helpers import bound, created, ended, tool_call, tool_update

    history = [{"role": "user", "content": "why?"}]
    meta = {"team": "a", "labels": ["x"]}
    args = {"command": "pytest", "flags": ["-q"]}
    result = {"stdout": "ok", "lines": ["1 passed"]}
    held_input = [{"role": "user", "content": "first"}]
    s = stream(receiver.url, transport=transport, flush_interval=30)  # nothing encoded before shutdown
    # held before the bind: changed before the bind releases it
    s.on_event(created(None, t=0, metadata=meta))
    s.on_event(started("m0", None, t=0.5, input=held_input))
    held_input.append({"role": "assistant", "content": "later"})
    meta["team"] = "changed"
    meta["labels"].append("y")
    s.on_event(bound("scroll-mut", t=0.6))
    s.on_event(completed("m0", "scroll-mut", t=0.7, output="zero"))
    s.on_event(started("m1", "scroll-mut", t=1, input=history))
    history.append({"role": "assistant", "content": "because"})  # the host's next turn
    s.on_event(tool_call("t1", "scroll-mut", t=2, rawInput=args))
    args["flags"].append("--lf")
    s.on_event(tool_update("t1", "completed", "scroll-mut", t=3, rawOutput=result))
    result["lines"].append("and more")
    s.on_event(completed("m1", "scroll-mut", t=4, output="because"))
    s.on_event(ended("scroll-mut", t=5))
    history.clear()
    assert s.shutdown(10).status is OutcomeStatus.DELIVERED
    (trace,) = receiver.store.traces()
    labels = ["x"] if transport == "ingestion" else '["x"]'  # OTel attributes carry JSON text
    assert trace["metadata"]["team"] == "a" and trace["metadata"]["labels"] == labels
    assert trace["input"] == [{"role": "user", "content": "first"}]
    by_name = {o.get("metadata", {}).get("message_id") or o["name"]: o for o in receiver.store.observations()}
    assert by_name["m0"]["input"] == [{"role": "user", "content": "first"}]
    assert by_name["m1"]["input"] == [{"role": "user", "content": "why?"}]
    tool = by_name["Run tests"]
    assert tool["input"] == {"command": "pytest", "flags": ["-q"]}
    assert tool["output"] == {"stdout": "ok", "lines": ["1 passed"]}



def test_a_log_handler_that_calls_back_into_the_stream_never_deadlocks(receiver):
    """Hosts mirror their log lines into the session as events, with a logging handler that calls
    `on_event` (and reads `stats()`) on whatever thread logged. Before, the stream logged some
    lines while holding a lock of its own (an unbound event dropped from a full late-bind buffer,
    the oldest items dropped from a full retry buffer): the handler's call waited for that lock
    for ever, on the host's thread or on the worker's."""
    import logging

    from .helpers import created

    calls = []
    s = stream(receiver.url, flush_interval=0.02, pending_max_events_per_key=1, max_buffer_items=2)

    class Mirror(logging.Handler):
        def emit(self, record):
            calls.append(threading.current_thread().name)
            s.on_event(started(f"log-{len(calls)}", "scroll-logs", t=len(calls)))
            s.stats()

    mirror = Mirror(logging.WARNING)
    logger = logging.getLogger("dirigent_langfuse")
    logger.addHandler(mirror)
    done = threading.Event()
    outcome = []

    def host():
        s.on_event(created(None, native="n-log", t=0))
        s.on_event(started("m0", None, native="n-log", t=1))  # the buffer holds one: the first is dropped
        for i in range(10):
            s.on_event(started(f"m{i}", "scroll-main", t=2 + i))  # ten items, a buffer of two
        outcome.append(s.shutdown(10))
        done.set()

    try:
        threading.Thread(target=host, daemon=True).start()
        finished = done.wait(30)
    finally:
        logger.removeHandler(mirror)
    assert finished, "a log handler calling back into the stream deadlocked it"
    assert "MainThread" not in calls and len(calls) >= 2  # the host's thread and the worker's both logged
    assert any(name.startswith("dirigent-langfuse") for name in calls)
    stats = s.stats()
    assert stats.events_dropped.get("pending_overflow") == 1 and stats.dropped.get("buffer_full", 0) > 0
    assert stats.items_accepted == stats.items_delivered + stats.items_pending + stats.items_failed
    assert outcome[0].status is OutcomeStatus.FAILED and "buffer_full" in outcome[0].detail


def test_calls_from_a_handler_that_interrupted_the_stream_answer_at_once(receiver):
    """What a signal handler may do when it lands inside one of the stream's critical sections
    (on_event, stats, flush), simulated by calling from there: each answers, none waits for a
    lock its own thread holds. (tests/test_cli.py sends a real SIGTERM to a real process.)"""
    s = stream(receiver.url, flush_interval=30)
    clock = s._worker.state.clock
    answers = []
    armed = [True]

    def clock_that_calls_in():
        if armed[0] and s._worker.inside():
            armed[0] = False
            answers.append(s.on_event(started("m-handler", "scroll-h", t=2)))
            answers.append(s.stats())
            answers.append(s.flush(5))
        return clock()

    s._worker.state.clock = clock_that_calls_in
    done = threading.Event()

    def host():
        s.on_event(started("m1", "scroll-h", t=1))  # its submit calls the clock, holding the lock
        done.set()

    threading.Thread(target=host, daemon=True).start()
    assert done.wait(10), "a call from inside the stream waited for its own thread"
    accepted, stats, flushed = answers
    assert accepted.status is OutcomeStatus.ACCEPTED and stats.items_accepted >= 1
    assert flushed.status is OutcomeStatus.FAILED and "cannot wait" in flushed.detail
    s._worker.state.clock = clock
    assert s.shutdown(10).status is OutcomeStatus.DELIVERED
    assert {o["id"] for o in receiver.store.observations()} and len(receiver.store.observations()) == 2


def test_timeouts_of_inf_wait_without_a_bound_and_bad_ones_raise_naming_timeout(receiver):
    """Before: shutdown(math.inf) raised OverflowError into the host after it had closed the
    stream; flush(nan) and shutdown(nan) waited without a bound; flush("5") raised a TypeError
    about adding a float to a str."""
    import math

    from dirigent_langfuse import StreamSet

    s = stream(receiver.url, flush_interval=30)
    s.on_event(started("m1", "scroll-inf", t=1))
    for bad, error in ((float("nan"), ValueError), ("5", TypeError), (True, TypeError)):
        with pytest.raises(error, match="timeout must be a number of seconds or None"):
            s.flush(bad)
        with pytest.raises(error, match="timeout must be a number of seconds or None"):
            s.shutdown(bad)
    assert s.flush(math.inf).status is OutcomeStatus.DELIVERED
    assert s.flush(10 ** 400).status is OutcomeStatus.DELIVERED  # past a float's range: as inf (was OverflowError)
    s.on_event(completed("m1", "scroll-inf", t=2))
    assert s.shutdown(math.inf).status is OutcomeStatus.DELIVERED
    other = stream(receiver.url, flush_interval=30)
    other.on_event(started("m2", "scroll-inf", t=3))
    assert StreamSet([other]).shutdown(math.inf)["test"].status is OutcomeStatus.DELIVERED
    late = stream(receiver.url, flush_interval=30)
    late.on_event(started("m3", "scroll-inf", t=4))
    assert "not yet delivered" in late.flush(-1).detail  # a negative timeout is 0
    assert "not yet delivered" in late.flush(-10 ** 400).detail
    late.shutdown(10)


@pytest.mark.parametrize("transport", ["ingestion", "otel"])
def test_a_tool_call_whose_end_was_mapped_before_its_start_shows_as_it_happened(receiver, transport):
    """Two host threads race and the tool call's end reaches the stream first. Langfuse merges
    ingestion events by id whatever their order; over OTel the stream itself must: before, the
    span ended at the shutdown's time, marked incomplete, with a WARNING."""
    from .helpers import TOOL_TYPE, created, ended, tool_call, tool_update

    s = stream(receiver.url, transport=transport, flush_interval=30)
    for event in (created("scroll-race", t=0), started("m1", "scroll-race", t=1),
                  tool_update("t1", "completed", "scroll-race", t=3, rawOutput="ok"),
                  tool_call("t1", "scroll-race", t=2, title="Run tests"), completed("m1", "scroll-race", t=4),
                  ended("scroll-race", t=5)):
        s.on_event(event)
    assert s.shutdown(10).status is OutcomeStatus.DELIVERED
    (tool,) = [o for o in receiver.store.observations() if o["type"] == TOOL_TYPE[transport]]
    assert (tool["name"], tool["startTime"], tool["endTime"]) == \
           ("Run tests", "2026-11-25T09:00:02.000Z", "2026-11-25T09:00:03.000Z")
    assert tool.get("level") in (None, "DEFAULT") and tool["output"] == "ok" and tool.get("parentObservationId")
    assert "incomplete" not in (tool.get("metadata") or {}) and "partial" not in (tool.get("metadata") or {})


@pytest.mark.parametrize("transport", ["ingestion", "otel"])
def test_a_tool_call_whose_end_ends_a_batch_and_whose_start_waits_behind_it_keeps_its_start(receiver, transport):
    """Two host threads raced, and the worker's batch ended between the tool call's end and its
    start. Over OTel the end went out alone, as a span starting at its end; Langfuse keeps an
    observation's first start, so the real one, sent with the next batch, never showed."""
    from .helpers import TOOL_TYPE, created, ended, tool_call, tool_update

    s = stream(receiver.url, transport=transport, batch_size=3, flush_interval=30)
    with s._worker.state.lock:  # the worker takes its batches once all is queued: created, started, the end | the start...
        for event in (created("scroll-cut", t=0), started("m1", "scroll-cut", t=1),
                      tool_update("t1", "completed", "scroll-cut", t=3, rawOutput="ok"),
                      tool_call("t1", "scroll-cut", t=2, title="Run tests"), completed("m1", "scroll-cut", t=4),
                      ended("scroll-cut", t=5)):
            assert s.on_event(event).status is OutcomeStatus.ACCEPTED
    assert s.shutdown(10).status is OutcomeStatus.DELIVERED
    (tool,) = [o for o in receiver.store.observations() if o["type"] == TOOL_TYPE[transport]]
    assert (tool["name"], tool["startTime"], tool["endTime"]) == \
           ("Run tests", "2026-11-25T09:00:02.000Z", "2026-11-25T09:00:03.000Z")
    assert "partial" not in (tool.get("metadata") or {})


@pytest.mark.parametrize("transport", ["ingestion", "otel"])
def test_a_replayed_session_whose_tool_call_end_raced_its_start_still_shows_how_it_failed(receiver, transport):
    """The host replays a session in which a failed tool call's end reached the stream before its
    start. Over OTel the replayed start re-sent the span with the start's metadata (status
    "pending", after the end's "failed") and an OTel status message of our own making ("error"),
    which Langfuse takes as the status message: both over what the end had said."""
    from .helpers import created, ended, tool_call, tool_update

    scroll = "scroll-replay-race"
    session = [created(scroll, t=0), started("m1", scroll, t=1),
               tool_update("t1", "failed", scroll, t=3, rawOutput="boom: exit status 1"),
               tool_call("t1", scroll, t=2, title="Run tests"), completed("m1", scroll, t=4), ended(scroll, t=5)]
    s = stream(receiver.url, transport=transport, flush_interval=30)
    for event in session + session:
        s.on_event(event)
        s.flush(5)  # each event in a batch of its own: the start comes after its end went out
    assert s.shutdown(10).status is OutcomeStatus.DELIVERED
    (tool,) = [o for o in receiver.store.observations() if o.get("name") == "Run tests"]
    assert (tool["level"], tool["statusMessage"]) == ("ERROR", "boom: exit status 1")
    assert tool["metadata"]["status"] == "failed" and tool["output"] == "boom: exit status 1"


def test_events_replayed_during_an_outage_are_counted_once_each_across_a_restart(receiver, tmp_path):
    """The host replays events while Langfuse is down, and the process stops before it is back.
    Before, the spool kept one record per id: the next start re-sent one where the first process
    had counted two as left in the spool."""
    from dirigent_langfuse.receiver.faults import Fault

    spool = str(tmp_path / "spool.db")
    receiver.faults.add(Fault.status(503, seconds=60))
    first = stream(receiver.url, spool_path=spool, flush_interval=0.02, name="svc")
    events = [started("m1", "scroll-replay", t=1), completed("m1", "scroll-replay", t=2)]
    for event in events + events:  # the host replays both
        first.on_event(event)
    first.flush(1)  # encoded and spooled; Langfuse answers 503
    assert first.shutdown(0.2).status is OutcomeStatus.FAILED
    for thread in list(first._worker.state.threads):  # (on a slow machine the worker may end past the deadline)
        thread.join(30)
    assert first.stats().items_pending == 0
    left = first.stats().dropped["spooled"]
    assert left == 4
    receiver.faults.clear()
    second = stream(receiver.url, spool_path=spool, flush_interval=0.02, name="svc")
    assert second.shutdown(10).status is OutcomeStatus.DELIVERED
    assert second.stats().items_accepted == second.stats().items_delivered == left
    assert receiver.store.envelope_count() == 2  # Langfuse keeps each once


def test_a_shutdown_that_timed_out_leaves_its_spool_to_the_next_start_once_its_worker_ends(receiver, tmp_path):
    """A request still in flight at the deadline: shutdown() answers timed out, and the worker
    ends a moment later. Before, its owner lock stayed held until the process exited, so a
    stream started again in the same process (same spool, same name) took nothing."""
    from dirigent_langfuse.receiver.faults import Fault

    spool = str(tmp_path / "spool.db")
    receiver.faults.add(Fault.slow(5.0, seconds=60))  # longer than the read timeout
    first = stream(receiver.url, spool_path=spool, flush_interval=0.02, name="svc", read_timeout=0.5, max_retries=0)
    first.on_event(started("m1", "scroll-late", t=1))
    first.flush(0.2)  # encoded and spooled; the request hangs
    outcome = first.shutdown(0.1)
    assert outcome.status is OutcomeStatus.FAILED and "timed out" in outcome.detail
    for thread in list(first._worker.state.threads):
        thread.join(30)
    receiver.faults.clear()
    second = stream(receiver.url, spool_path=spool, flush_interval=0.02, name="svc")
    assert second.shutdown(10).status is OutcomeStatus.DELIVERED
    assert second.stats().items_delivered == 1


def test_with_shuts_a_stream_and_a_stream_set_down_also_after_an_exception(receiver):
    from dirigent_langfuse import StreamSet

    with stream(receiver.url, flush_interval=30) as s:
        s.on_event(started("m1", "scroll-with", t=1))
    assert s.stats().items_delivered == 1 and s.on_event(started("m2", "scroll-with")).error is not None
    other = stream(receiver.url, flush_interval=30)
    with pytest.raises(KeyError):
        with StreamSet([other]) as streams:
            streams.on_event(started("m3", "scroll-with", t=3))
            raise KeyError("the host's own error goes on")
    assert other.stats().items_delivered == 1


def test_urllib3_says_nothing_at_warning_for_each_retry_of_our_requests_while_langfuse_is_down(caplog):
    """urllib3 logs a WARNING for every retry of a broken connection: three per request while
    Langfuse was down, against the one throttled WARNING a minute that delivery.md promises. Ours
    go to our logger at DEBUG now; another library's requests keep urllib3's line."""
    import logging
    import socket

    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"  # closed once the block ends: connections refused
    caplog.set_level(logging.DEBUG)
    down = stream(url, backoff_base=0.0, max_retries=3)
    try:
        down.on_event(started("m1"))
        assert not down.flush(5).ok
    finally:
        down.shutdown(0)
    ours = [r for r in caplog.records if r.name == "urllib3.connectionpool" and r.levelno >= logging.WARNING]
    assert ours == [], [r.getMessage() for r in ours]
    assert any(r.name == "dirigent_langfuse.delivery.client" and "Retrying" in r.getMessage() for r in caplog.records)
    assert any(r.name == "dirigent_langfuse.delivery.worker" and r.levelno == logging.WARNING for r in caplog.records)
    caplog.clear()
    other = requests.Session()
    other.mount("http://", HTTPAdapter(max_retries=Retry(total=1, backoff_factor=0)))
    with pytest.raises(requests.ConnectionError):
        other.post(url + "/elsewhere", timeout=2)
    assert any(r.name == "urllib3.connectionpool" and r.levelno == logging.WARNING for r in caplog.records)


def test_every_request_in_flight_keeps_its_connection(receiver, caplog):
    """The pool kept two connections whatever `max_inflight` said: with more requests in flight,
    urllib3 closed the extra connections after each request (a new TCP and TLS handshake every
    time) and logged 'Connection pool is full, discarding connection' for each."""
    import logging

    from dirigent_langfuse.receiver.faults import Fault

    s = stream(receiver.url, max_inflight=6, batch_size=4)
    adapter = s.client.session.get_adapter(receiver.url)
    assert adapter.poolmanager.connection_pool_kw["maxsize"] > 6
    receiver.faults.add(Fault.slow(0.2, times=30))
    with caplog.at_level(logging.WARNING):
        for i in range(200):
            s.on_event(started(f"m{i}"))
        assert s.shutdown(60).ok
    assert "Connection pool is full" not in caplog.text


def test_nothing_is_retried_past_the_shutdown_deadline(receiver):
    """Before, the request in flight at the shutdown deadline went on retrying on the daemon
    thread (max_retries more attempts of connect + read timeout each, and the waits between), so
    a stream that had said 'timed out' kept sending long after. Now the attempt in flight at the
    deadline is the last one."""
    from dirigent_langfuse.receiver.faults import Fault

    receiver.faults.add(Fault.slow(30.0, times=10))  # Langfuse hangs: every attempt times out
    s = stream(receiver.url, read_timeout=0.5, connect_timeout=0.5, max_retries=3, backoff_base=0.05,
               flush_interval=30)
    s.on_event(started("m1"))
    outcome = s.shutdown(0.2)
    assert not outcome.ok and "timed out" in outcome.detail
    for thread in s._worker.state.threads:
        thread.join(10)
    assert not any(t.is_alive() for t in s._worker.state.threads)
    assert receiver.faults.applied == 1  # one attempt, no retry after the deadline


def test_where_no_thread_may_start_shutdown_sends_on_the_caller_s_thread(receiver, monkeypatch, caplog):
    """Python 3.12 starts no new thread once the interpreter is exiting: a host's own exit hook
    that makes a stream, or sends its last events, met a RuntimeError, and the worker's count of
    its threads went wrong, so shutdown() never counted what was left. Now no thread runs, flush()
    says so at once, and shutdown() sends what is queued on the caller's thread; a StreamSet calls
    its streams one after another."""
    import threading

    from dirigent_langfuse import StreamSet

    start = threading.Thread.start

    def refuse(self):  # ours only: the receiver serves each connection on a thread of its own
        if self.name.startswith("dirigent-"):
            raise RuntimeError("can't create new thread at interpreter shutdown")
        start(self)

    monkeypatch.setattr(threading.Thread, "start", refuse)
    a, b = stream(receiver.url, name="a"), stream(receiver.url, name="b")
    for s, scroll in ((a, "scroll-a"), (b, "scroll-b")):
        assert s.on_event(started("m1", scroll)).status is OutcomeStatus.ACCEPTED
        assert s.on_event(completed("m1", scroll, t=1)).status is OutcomeStatus.ACCEPTED
    flushed = a.flush(30)
    assert not flushed.ok and "no worker thread can start" in flushed.detail
    said = [r for r in caplog.records if "cannot start the worker thread" in r.getMessage()]
    assert len(said) == 2  # once per stream, not once per event
    outcomes = StreamSet([a, b]).shutdown(10)
    assert all(o.ok for o in outcomes.values()), outcomes
    assert receiver.store.envelope_count() == 4
    assert a.stats().items_delivered == b.stats().items_delivered == 2


def test_an_end_flushed_before_its_start_is_one_row_in_langfuse_v4(receiver_v4):
    """Two host threads raced: a tool call's end reached the stream first and a flush came before
    its start. Before, the end went out alone as a span starting at its end, and the start then
    made a second row (v4 keys a row by span id and start time)."""
    from .helpers import created, ended, tool_call, tool_update

    scroll = "scroll-raced-v4"
    s = stream(receiver_v4.url, transport="otel", flush_interval=0.05)
    for event in (created(scroll, t=0), started("m1", scroll, t=1)):
        s.on_event(event)
    s.on_event(tool_update("t1", "completed", scroll, t=3, rawOutput="ok"))
    flushed = s.flush(5)
    assert flushed.status is OutcomeStatus.DELIVERED and "wait in" in flushed.detail  # said, not sent
    s.on_event(tool_call("t1", scroll, t=2, title="Run tests"))
    for event in (completed("m1", scroll, t=4, output="done"), ended(scroll, t=5)):
        s.on_event(event)
    assert s.shutdown(10).status is OutcomeStatus.DELIVERED
    rows = _rows(receiver_v4)
    assert all(len(r) == 1 for r in rows.values()) and len(rows) == 3, rows
    (tool,) = [r[0] for r in rows.values() if r[0]["name"] == "Run tests"]
    assert (tool["startTime"], tool["endTime"], tool["output"]) == ("2026-11-25T09:00:02.000Z", "2026-11-25T09:00:03.000Z", "ok")


def test_a_living_process_never_takes_up_what_another_left_open_in_a_shared_spool(receiver_v4, tmp_path):
    """Two processes share a spool (the same stream name). What A leaves open at its shutdown is
    taken up by a later start only: B, which started before, sends the end it gets as an end
    record; C, started after, ends the observation as its row."""
    from .helpers import created, tool_call, tool_update

    spool = str(tmp_path / "spool.db")
    scroll = "scroll-shared-spool"
    b = stream(receiver_v4.url, transport="otel", flush_interval=0.05, spool_path=spool, late_start_wait=0.1, name="svc")
    a = stream(receiver_v4.url, transport="otel", flush_interval=0.05, spool_path=spool, name="svc")
    for event in (created(scroll, t=0), started("m1", scroll, t=1), tool_call("t1", scroll, t=2, title="Run tests"),
                  tool_call("t2", scroll, t=2.5, title="Lint")):
        a.on_event(event)
    assert a.shutdown(10).status is OutcomeStatus.DELIVERED
    b.on_event(tool_update("t1", "completed", scroll, t=3, rawOutput="by b"))
    assert b.shutdown(10).status is OutcomeStatus.DELIVERED
    c = stream(receiver_v4.url, transport="otel", flush_interval=0.05, spool_path=spool, name="svc")
    c.on_event(tool_update("t2", "completed", scroll, t=4, rawOutput="by c"))
    assert c.shutdown(10).status is OutcomeStatus.DELIVERED
    rows = _rows(receiver_v4)
    assert all(len(r) == 1 for r in rows.values()), rows
    shown = {r[0]["name"]: r[0] for r in rows.values()}
    assert shown["Lint"]["output"] == "by c" and shown["Lint"]["startTime"] == "2026-11-25T09:00:02.500Z"  # C ended it
    assert (shown["Run tests"].get("metadata") or {}).get("incomplete") == "true"  # B did not take A's state
    assert shown["tool (end)"]["output"] == "by b"
