"""The OTLP/JSON transport: payload shape (checked against OTLP's protobuf definitions), the
attribute names Langfuse reads, `auto`, open observations at shutdown, errors, loopback."""

from __future__ import annotations

import base64
import gzip
import json
import logging
from typing import Any, Dict, List

import pytest
import requests
import responses

from dirigent_langfuse import Health, LangfuseConfig, LangfuseStream, OutcomeStatus, StreamError, Usage
from dirigent_langfuse.delivery.client import LangfuseClient
from dirigent_langfuse.mapping.ids import otel_trace_id, session_span_id, span_id
from dirigent_langfuse.mapping.items import MappingState, bus_event_to_items, observation_id
from dirigent_langfuse.wire.auto import choose_transport
from dirigent_langfuse.wire.otlp import OtelTransport

from ..conftest import OTEL_ATTRIBUTES
from ..helpers import completed, created, ended, started, tool_call, tool_update, update

HOST = "http://lf.test"
OTEL_URL = HOST + "/api/public/otel/v1/traces"
INGESTION_URL = HOST + "/api/public/ingestion"
HEALTH_URL = HOST + "/api/public/health"


def session_events(scroll: str = "scroll-1") -> List[Any]:
    return [
        created(scroll, user_id="ana", tags=["ci", "demo"], metadata={"repo": "dirigent"}),
        started("m1", scroll, t=1, input=[{"role": "user", "content": "fix the test"}], model_parameters={"max_tokens": 1024}),
        tool_call("t1", scroll, t=2),
        tool_update("t1", "completed", scroll, t=3, rawOutput={"exit": 0}),
        tool_call("t2", scroll, t=4, title="Edit file"),
        tool_update("t2", "failed", scroll, t=5, content=[{"type": "content", "content": {"type": "text", "text": "denied"}}]),
        update({"sessionUpdate": "plan", "entries": [{"content": "run tests", "priority": "high", "status": "pending"}]},
               scroll, t=5.5),
        completed("m1", scroll, t=6, output="done", usage=Usage(input_tokens=100, output_tokens=20, cache_read_tokens=5),
                  cost_usd=0.0123, stop_reason="end_turn"),
        ended(scroll, t=7),
    ]


def spans_for(events: List[Any], **config: Any) -> List[Dict[str, Any]]:
    cfg = LangfuseConfig(host=HOST, public_key="pk", secret_key="sk-secret-value", **config)
    transport = OtelTransport(LangfuseClient(cfg), cfg)
    state = MappingState()
    items = [item for event in events for item in bus_event_to_items(event, state)]
    records = transport.prepare(items) + transport.close_open()
    return json.loads(transport.body(records))["resourceSpans"][0]["scopeSpans"][0]["spans"]


def export(events: List[Any]) -> Dict[str, Any]:
    cfg = LangfuseConfig(host=HOST, public_key="pk", secret_key="sk-secret-value")
    transport = OtelTransport(LangfuseClient(cfg), cfg)
    state = MappingState()
    items = [item for event in events for item in bus_event_to_items(event, state)]
    return json.loads(transport.body(transport.prepare(items) + transport.close_open()))


def attr(span: Dict[str, Any], key: str) -> Any:
    for kv in span["attributes"]:
        if kv["key"] == key:
            value = kv["value"]
            if "arrayValue" in value:
                return [v["stringValue"] for v in value["arrayValue"]["values"]]
            return next(iter(value.values()))
    return None


def by_name(spans: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    return {s["name"]: s for s in spans}


# -- the payload's shape -----------------------------------------------------------------------


def test_payload_parses_strictly_as_an_otlp_export_request():
    json_format = pytest.importorskip("google.protobuf.json_format", reason="protobuf is a test extra")
    trace_service = pytest.importorskip(
        "opentelemetry.proto.collector.trace.v1.trace_service_pb2", reason="opentelemetry-proto is a test extra"
    )
    payload = export(session_events())
    # OTLP/JSON writes ids as hex; protobuf's generic JSON mapping wants bytes as base64.
    for resource in payload["resourceSpans"]:
        for scope in resource["scopeSpans"]:
            for span in scope["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
    message = trace_service.ExportTraceServiceRequest()
    json_format.Parse(json.dumps(payload), message, ignore_unknown_fields=False)
    spans = message.resource_spans[0].scope_spans[0].spans
    assert len(spans) == 5  # session, generation, two tools, the plan event
    for span in spans:
        assert len(span.trace_id) == 16 and len(span.span_id) == 8
        assert span.end_time_unix_nano >= span.start_time_unix_nano > 1_700_000_000 * 10**9


def test_the_strict_check_can_fail():
    json_format = pytest.importorskip("google.protobuf.json_format")
    trace_service = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
    attributes = [{"key": "a", "value": {"intValue": "x"}}]
    bad = {"resourceSpans": [{"scopeSpans": [{"spans": [{"name": "x", "attributes": attributes}]}]}]}
    with pytest.raises(json_format.ParseError):
        json_format.Parse(json.dumps(bad), trace_service.ExportTraceServiceRequest())


def test_ids_are_hex_deterministic_and_times_are_nano_strings():
    events = session_events()  # a replay is the same events again (same event ids)
    first, second = spans_for(events), spans_for(events)
    assert [(s["traceId"], s["spanId"]) for s in first] == [(s["traceId"], s["spanId"]) for s in second]
    for span in first:
        assert len(span["traceId"]) == 32 and int(span["traceId"], 16)
        assert len(span["spanId"]) == 16 and int(span["spanId"], 16)
        assert isinstance(span["startTimeUnixNano"], str) and span["startTimeUnixNano"].isdigit()
    assert {s["traceId"] for s in first} == {otel_trace_id("scroll-1")}


@pytest.mark.parametrize("iso", ["2026-11-25T09:00:00.123Z", "1970-01-01T00:00:00.000Z", "1970-01-01T00:00:00.007Z",
                                 "1969-12-31T23:59:59.500Z", "2024-02-29T23:59:59.999Z", "2026-11-25 09:00:00.123Z",
                                 "2026-11-25T09:00:00.123456+00:00", "2026-11-25T10:00:00.500+01:00"])
def test_span_times_are_the_exact_unix_nanoseconds(iso):
    from datetime import datetime, timezone

    from dirigent_langfuse.wire.spans import _nanos

    delta = datetime.fromisoformat(iso.replace("Z", "+00:00")) - datetime(1970, 1, 1, tzinfo=timezone.utc)
    exact = ((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds) * 1000
    assert int(_nanos(iso)) == max(exact, 0)  # before 1970: clamped (OTLP cannot carry it)


def test_every_langfuse_attribute_we_set_is_one_langfuse_reads():
    if not OTEL_ATTRIBUTES.exists():
        pytest.skip(f"{OTEL_ATTRIBUTES} is absent; CI always has it")
    known = set(json.loads(OTEL_ATTRIBUTES.read_text())["attributes"].values())
    prefixes = ("langfuse.trace.metadata.", "langfuse.observation.metadata.")
    spans = spans_for(session_events(), environment="staging", release="1.2.3")
    keys = {kv["key"] for span in spans for kv in span["attributes"]}
    for key in keys:
        if key.startswith(prefixes):
            continue
        assert key in known or key.startswith("gen_ai."), f"{key} is not an attribute Langfuse reads"
    assert "bogus.attribute" not in known  # the check can fail


def test_mapping_to_spans_types_parents_and_trace_attributes():
    spans = by_name(spans_for(session_events()))
    session, generation = spans["a session"], spans["claude-sonnet-4-5"] if "claude-sonnet-4-5" in spans else None
    generation = next(s for s in spans.values() if attr(s, "langfuse.observation.type") == "generation")
    run, edit = spans["Run tests"], spans["Edit file"]
    plan = next(s for s in spans.values() if attr(s, "langfuse.observation.type") == "event")
    assert attr(session, "langfuse.observation.type") == "agent" and "parentSpanId" not in session
    assert session["spanId"] == session_span_id("scroll-1")
    assert generation["parentSpanId"] == session["spanId"]
    assert generation["spanId"] == span_id(observation_id("scroll-1", "msg", "m1"))
    assert run["parentSpanId"] == edit["parentSpanId"] == generation["spanId"]
    assert attr(run, "langfuse.observation.type") == attr(edit, "langfuse.observation.type") == "tool"
    assert attr(edit, "langfuse.observation.level") == "ERROR" and edit["status"]["code"] == 2
    assert attr(edit, "langfuse.observation.status_message")
    assert "run tests" in attr(plan, "langfuse.observation.input") or "run tests" in json.dumps(plan)
    # generation details
    assert attr(generation, "langfuse.observation.model.name") == "claude-sonnet-4-5"
    usage = json.loads(attr(generation, "langfuse.observation.usage_details"))
    assert usage["input"] == 100 and usage["output"] == 20
    assert json.loads(attr(generation, "langfuse.observation.cost_details"))["total"] == pytest.approx(0.0123)
    assert attr(generation, "langfuse.observation.output") == "done"
    assert json.loads(attr(generation, "langfuse.observation.model.parameters")) == {"max_tokens": 1024}
    # trace attributes ride on every span
    for span in spans.values():
        assert attr(span, "langfuse.trace.name") == "a session"
        assert attr(span, "session.id") == "native-1" or attr(span, "session.id")
        assert attr(span, "user.id") == "ana"
        assert attr(span, "langfuse.trace.tags") == ["ci", "demo"]
        assert attr(span, "langfuse.trace.metadata.repo") == "dirigent"
    assert attr(session, "langfuse.observation.status_message") == "completed"


def test_open_observations_at_shutdown_are_emitted_and_marked_incomplete():
    events = [created(), started("m1", t=1), tool_call("t1", t=2)]
    spans = by_name(spans_for(events))
    assert set(spans) >= {"a session", "Run tests"} and len(spans) == 3
    for span in spans.values():
        assert attr(span, "langfuse.observation.metadata.incomplete") == "true"
        assert attr(span, "langfuse.observation.level") == "WARNING"
        assert "shut down" in attr(span, "langfuse.observation.status_message")
        assert int(span["endTimeUnixNano"]) >= int(span["startTimeUnixNano"])


def test_the_open_table_is_bounded_and_evictions_are_marked():
    events = [created()] + [started(f"m{i}", t=i) for i in range(10)]
    cfg = LangfuseConfig(host=HOST, public_key="pk", secret_key="sk", max_open_observations=4)
    transport = OtelTransport(LangfuseClient(cfg), cfg)
    state = MappingState()
    records = transport.prepare([i for e in events for i in bus_event_to_items(e, state)])
    assert transport.open_count() == 4
    evicted = [json.loads(r.data) for r in records]
    assert len(evicted) == 7 and all(attr(s, "langfuse.observation.metadata.incomplete") == "true" for s in evicted)


def test_choose_transport():
    assert choose_transport("3.120.0") == "ingestion"
    assert choose_transport("v2.9") == "ingestion"
    assert choose_transport("4.0.0") == "otel"
    assert choose_transport("10.1") == "otel"
    assert choose_transport(None) == "otel" and choose_transport("unknown") == "otel"


# -- over `responses` ----------------------------------------------------------------------------


def make(**kw: Any) -> LangfuseStream:
    kw.setdefault("atexit_flush", False)
    kw.setdefault("flush_interval", 30)
    return LangfuseStream(LangfuseConfig(host=HOST, public_key="pk-x", secret_key="sk-secret-value", **kw), name="o")


def test_otel_request_headers_auth_and_gzip():
    with responses.RequestsMock() as rs:
        rs.add(responses.POST, OTEL_URL, json={}, status=200)
        stream = make(transport="otel")
        for event in session_events():
            stream.on_event(event)
        assert stream.flush(5).status is OutcomeStatus.DELIVERED
        request = rs.calls[0].request
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["Content-Encoding"] == "gzip"
        assert request.headers["x-langfuse-ingestion-version"] == "4"
        assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"pk-x:sk-secret-value").decode()
        payload = json.loads(gzip.decompress(request.body))
        assert len(payload["resourceSpans"][0]["scopeSpans"][0]["spans"]) == 5
        stats = stream.stats()
        assert stats.items_delivered == stats.items_accepted and stats.transport == "otel"
        stream.shutdown(1)


@pytest.mark.parametrize(
    "health, expected",
    [
        ({"json": {"status": "OK", "version": "3.120.0"}}, "ingestion"),
        ({"json": {"status": "OK", "version": "4.1.0"}}, "otel"),
        ({"json": {"status": "OK"}}, "otel"),
        ({"status": 404, "body": "<html>not here</html>"}, "otel"),
        ({"body": ValueError("odd failure")}, "otel"),
    ],
    ids=["v3", "v4", "no-version", "404", "odd-error"],
)
def test_auto_asks_health_once_and_chooses(health, expected, caplog):
    caplog.set_level(logging.INFO, logger="dirigent_langfuse")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rs:
        rs.add(responses.GET, HEALTH_URL, **health)
        rs.add(responses.POST, OTEL_URL, json={}, status=200)
        rs.add(responses.POST, INGESTION_URL, json={"successes": [], "errors": []}, status=207)
        stream = make(transport="auto")
        for event in session_events():
            stream.on_event(event)
        assert stream.flush(5).ok
        stream.on_event(started("m2", t=8))
        stream.shutdown(5)
        health_calls = [c for c in rs.calls if c.request.url == HEALTH_URL]
        posts = {c.request.url for c in rs.calls if c.request.method == "POST"}
        assert len(health_calls) == 1
        assert posts == {OTEL_URL if expected == "otel" else INGESTION_URL}
        assert stream.stats().transport == expected
    chosen = [r for r in caplog.records if "transport" in r.getMessage() and "using" in r.getMessage()]
    assert len(chosen) == 1


def test_auto_waits_for_an_answer_before_it_chooses(caplog):
    # Langfuse starting up (no answer, then a 503) must not make "auto" guess the wrong API for good
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rs:
        rs.add(responses.GET, HEALTH_URL, body=requests.exceptions.ConnectionError("refused"))
        for _ in range(4):  # a 503, and the 3 retries of that one health check
            rs.add(responses.GET, HEALTH_URL, status=503)
        rs.add(responses.GET, HEALTH_URL, json={"status": "OK", "version": "3.120.0"})
        rs.add(responses.POST, INGESTION_URL, json={"successes": [], "errors": []}, status=207)
        stream = make(transport="auto", retry_backoff_max=60, backoff_base=0.001, backoff_max=0.001)
        events = session_events()
        for event in events:
            assert stream.on_event(event).status is OutcomeStatus.ACCEPTED
        for _ in range(2):  # each flush asks once more at once, whatever the backoff
            outcome = stream.flush(5)
            assert outcome.error is StreamError.TRANSPORT and "health check" in outcome.detail, outcome
            assert stream.stats().items_pending == stream.stats().items_accepted
        assert stream.health() is Health.DEGRADED and stream.stats().transport == "auto"
        assert stream.flush(5).status is OutcomeStatus.DELIVERED
        posts = [c.request for c in rs.calls if c.request.method == "POST"]
        assert {p.url for p in posts} == {INGESTION_URL}
        sent = [i for p in posts for i in json.loads(p.body)["batch"]]
        expected = [i for i in bus_event_to_items_all(events)]
        assert [(i["type"], i["body"]["id"]) for i in sent] == [(i["type"], i["body"]["id"]) for i in expected]
        assert stream.stats().transport == "ingestion" and stream.health() is Health.HEALTHY
        assert len([c for c in rs.calls if c.request.url == HEALTH_URL]) == 1 + 4 + 1
        stream.shutdown(1)
    waits = [r for r in caplog.records if "does not answer its health check" in r.getMessage()]
    assert len(waits) == 1  # throttled: one line, not one per attempt


def test_auto_guesses_otel_at_shutdown_if_langfuse_never_answered(caplog):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rs:
        rs.add(responses.GET, HEALTH_URL, body=requests.exceptions.ConnectionError("refused"))
        rs.add(responses.POST, OTEL_URL, json={}, status=200)
        stream = make(transport="auto")
        for event in session_events():
            stream.on_event(event)
        assert stream.shutdown(5).status is OutcomeStatus.DELIVERED
        assert {c.request.url for c in rs.calls if c.request.method == "POST"} == {OTEL_URL}
    assert any("never answered its health check" in r.getMessage() for r in caplog.records)


def bus_event_to_items_all(events: List[Any]) -> List[Dict[str, Any]]:
    state = MappingState()
    return [item for event in events for item in bus_event_to_items(event, state)]


def test_a_400_rejecting_the_export_is_final_and_logged_with_the_reason(caplog):
    with responses.RequestsMock() as rs:
        rs.add(responses.POST, OTEL_URL, json={"message": "Invalid OTLP: spanId must be 16 hex"}, status=400)
        stream = make(transport="otel")
        stream.on_event(created())
        stream.on_event(ended(t=1))
        outcome = stream.flush(5)
        assert outcome.status is OutcomeStatus.FAILED and outcome.error is StreamError.STATUS
        assert "spanId must be 16 hex" in outcome.detail
        assert len(rs.calls) == 1  # never retried
        assert stream.stats().dropped == {"status_400": 2}
        stream.shutdown(1)
    assert any("spanId must be 16 hex" in r.getMessage() for r in caplog.records)


def test_5xx_is_retried_and_health_drifts_for_otel():
    with responses.RequestsMock() as rs:
        rs.add(responses.POST, OTEL_URL, json={"message": "down"}, status=503)
        stream = make(transport="otel", backoff_base=0.001, retry_backoff_max=60)
        stream.on_event(created())
        stream.on_event(ended(t=1))
        assert stream.flush(5).error is StreamError.STATUS
        assert len(rs.calls) == 4  # one try and three retries
        assert stream.health() is Health.DEGRADED
        assert stream.stats().items_pending == 2
        rs.replace(responses.POST, OTEL_URL, json={}, status=200)
        assert stream.flush(5).status is OutcomeStatus.DELIVERED
        assert stream.health() is Health.HEALTHY
        stream.shutdown(1)


def test_partial_success_counts_rejected_spans():
    with responses.RequestsMock() as rs:
        rs.add(responses.POST, OTEL_URL, json={"partialSuccess": {"rejectedSpans": "1", "errorMessage": "bad span"}})
        stream = make(transport="otel")
        stream.on_event(created())
        stream.on_event(ended(t=1))
        stream.on_event(started("m1", t=1))
        stream.on_event(completed("m1", t=2))
        outcome = stream.flush(5)
        stats = stream.stats()
        assert stats.items_delivered + sum(stats.dropped.values()) == 4
        assert stats.dropped.get("otel_rejected")
        assert not outcome.ok
        stream.shutdown(1)


# -- over loopback, into our receiver ---------------------------------------------------------------


def test_loopback_otel_session_lands_as_one_trace(receiver_v4, no_secrets_logged):
    from ..helpers import stream as make_stream

    stream = make_stream(receiver_v4.url, transport="auto")
    for event in session_events():
        assert stream.on_event(event).status is OutcomeStatus.ACCEPTED
    assert stream.shutdown(5).status is OutcomeStatus.DELIVERED
    traces = receiver_v4.store.traces()
    assert len(traces) == 1 and traces[0]["name"] == "a session" and traces[0]["userId"] == "ana"
    observations = receiver_v4.store.observations(traces[0]["id"])
    kinds = sorted(o["type"] for o in observations)
    assert kinds == ["AGENT", "EVENT", "GENERATION", "TOOL", "TOOL"]
    generation = next(o for o in observations if o["type"] == "GENERATION")
    tools = [o for o in observations if o["type"] == "TOOL"]
    assert all(t["parentObservationId"] == generation["id"] for t in tools)
    assert [t.get("level") for t in tools].count("ERROR") == 1
    assert generation["usageDetails"]["input"] == 100


def test_a_flush_over_otel_says_what_waits_in_observations_still_open(receiver_v4):
    """Before, a flush with a session and a message still open answered "everything delivered"
    while their items were pending and nothing had reached Langfuse."""
    from ..helpers import stream as make_stream

    stream = make_stream(receiver_v4.url, transport="otel")
    stream.on_event(created())
    stream.on_event(started("m1"))
    outcome = stream.flush(5)
    assert outcome.status is OutcomeStatus.DELIVERED  # nothing failed...
    assert outcome.detail == (  # ...and it says exactly what waits, and for what
        "flush: delivered all that could be sent; 2 item(s) wait in 2 observation(s) not sent yet (over OTel a span "
        "is sent once its observation has ended and its start is known: an end waits for its start up to "
        "late_start_wait; shutdown() sends those still open, marked incomplete)")
    assert stream.stats().items_pending == 2
    stream.on_event(completed("m1", t=1))
    stream.on_event(ended(t=2))
    assert stream.flush(5).detail == "flush: everything delivered"
    assert stream.stats().items_pending == 0 and len(receiver_v4.store.observations()) == 2
    stream.shutdown(1)


def test_loopback_replay_does_not_duplicate(receiver_v4):
    from ..helpers import stream as make_stream

    events = session_events()
    for _ in range(2):
        stream = make_stream(receiver_v4.url, transport="otel")
        for event in events:
            stream.on_event(event)
        assert stream.shutdown(5).ok
    assert len(receiver_v4.store.traces()) == 1
    assert len(receiver_v4.store.observations()) == 5
    assert receiver_v4.store.counters().get("resent") == 5


def test_ended_sessions_leave_nothing_behind():
    cfg = LangfuseConfig(host=HOST, public_key="pk", secret_key="sk")
    transport = OtelTransport(LangfuseClient(cfg), cfg)
    state = MappingState()
    for n in range(50):
        items = [i for e in session_events(f"s{n}") for i in bus_event_to_items(e, state)]
        transport.prepare(items)
    assert transport.open_count() == 0 and transport.trace_count() == 0 and len(state) == 0


def test_a_replayed_end_re_sends_the_span_as_it_was_not_one_starting_at_its_end():
    """A host that re-sends an event (a retry on its side, a replay of a session's tail) after
    the observation ended: the same span id must come with the same start, parent and name, or
    Langfuse's upsert would move the observation's start to its end."""
    events = session_events("scroll-r")
    cfg = LangfuseConfig(host=HOST, public_key="pk", secret_key="sk-secret-value")
    transport = OtelTransport(LangfuseClient(cfg), cfg)
    state = MappingState()

    def spans(evts: List[Any]) -> Dict[str, Dict[str, Any]]:
        items = [item for event in evts for item in bus_event_to_items(event, state)]
        records = transport.prepare(items)
        return {s["spanId"]: s for s in json.loads(transport.body(records))["resourceSpans"][0]["scopeSpans"][0]["spans"]}

    first = spans(events)
    ends = [e for e in events if type(e).__name__ in ("MessageCompleted", "SessionEnded")
            or getattr(e, "kind", "") == "tool_call_update"]
    again = spans(ends)  # the tails replayed, after everything ended
    assert again and set(again) <= set(first)
    for sid, span in again.items():
        before = first[sid]
        assert (span["startTimeUnixNano"], span.get("parentSpanId"), span["name"]) == \
               (before["startTimeUnixNano"], before.get("parentSpanId"), before["name"]), span["name"]
        assert attr(span, "langfuse.observation.metadata.partial") is None


def _racing(scroll: str) -> List[Any]:
    """A tool call whose end the host mapped before its start (two of its threads raced)."""
    return [created(scroll), started("m1", scroll, t=1), tool_update("t1", "completed", scroll, t=3, rawOutput="ok"),
            tool_call("t1", scroll, t=2, title="Run tests"), completed("m1", scroll, t=4, output="a"), ended(scroll, t=5)]


@pytest.mark.parametrize("batches", ["one", "two", "two, a flush between"])
def test_an_end_mapped_before_its_start_still_makes_the_span_that_happened(batches):
    """Before, the end made a span starting at its end ("update without a create"), and the
    start then opened the observation again; later, the end went out alone when its batch was the
    last queued, and its start made a second row in Langfuse v4 (a row is a span id and a start).
    Now the end waits for its start (`late_start_wait`), across batches and flushes."""
    events = _racing("scroll-race")
    cfg = LangfuseConfig(host=HOST, public_key="pk", secret_key="sk-secret-value")
    transport = OtelTransport(LangfuseClient(cfg), cfg)
    state = MappingState()
    items = [item for event in events for item in bus_event_to_items(event, state)]
    cut = 3 if batches.startswith("two") else len(items)  # the end in one batch, its start in the next
    records = transport.prepare(items[:cut])
    if batches == "two, a flush between":
        records += transport.prepare([])  # what a flush does: nothing waits that can go
    records += transport.prepare(items[cut:]) + transport.close_open()
    spans = json.loads(transport.body(records))["resourceSpans"][0]["scopeSpans"][0]["spans"]
    tool_id = span_id(observation_id("scroll-race", "tool", "t1"))
    (last,) = [s for s in spans if s["spanId"] == tool_id]  # one version: one row
    assert last["name"] == "Run tests" and last["parentSpanId"] == span_id(observation_id("scroll-race", "msg", "m1"))
    assert (last["startTimeUnixNano"], last["endTimeUnixNano"]) == ("1795597202000000000", "1795597203000000000")
    assert attr(last, "langfuse.observation.output") == "ok"
    for key in ("partial", "incomplete", "start_not_seen"):
        assert attr(last, f"langfuse.observation.metadata.{key}") is None
    assert attr(last, "langfuse.observation.level") in (None, "DEFAULT")
    assert not [s for s in spans if attr(s, "langfuse.observation.metadata.ends_observation")]  # no end record
    assert sum(r.weight for r in records) == len(items)  # every item in exactly one record


def test_an_end_whose_start_is_later_than_late_start_wait_goes_as_an_end_record_never_a_second_row():
    """The start comes past the bound: the end went out as a record of its own (its own id, at its
    end), so the span that the start then completes is the observation's only row."""
    now = [1000.0]
    cfg = LangfuseConfig(host=HOST, public_key="pk", secret_key="sk-secret-value", late_start_wait=2.0)
    transport = OtelTransport(LangfuseClient(cfg), cfg, clock=lambda: now[0])
    state = MappingState()
    events = _racing("scroll-late")
    items = [item for event in events for item in bus_event_to_items(event, state)]
    records = transport.prepare(items[:3])
    assert transport.due_in() == 2.0 and not [r for r in records if b"Run tests" in r.data]
    now[0] += 1.9
    assert transport.prepare([]) == []  # not yet
    now[0] += 0.2
    (end,) = transport.prepare([])
    records += [end] + transport.prepare(items[3:]) + transport.close_open()
    spans = json.loads(transport.body(records))["resourceSpans"][0]["scopeSpans"][0]["spans"]
    tool_id = span_id(observation_id("scroll-late", "tool", "t1"))
    (record,) = [s for s in spans if attr(s, "langfuse.observation.metadata.ends_observation") == tool_id]
    assert record["spanId"] != tool_id and attr(record, "langfuse.observation.type") == "event"
    assert record["startTimeUnixNano"] == record["endTimeUnixNano"] == "1795597203000000000"  # at its end
    assert attr(record, "langfuse.observation.output") == "ok" and record["name"] == "tool (end)"
    (span,) = [s for s in spans if s["spanId"] == tool_id]  # the observation's one row, whole
    assert span["name"] == "Run tests" and span["startTimeUnixNano"] == "1795597202000000000"
    assert attr(span, "langfuse.observation.output") == "ok"
    assert sum(r.weight for r in records) == len(items)


def test_updates_before_the_start_that_did_not_end_it_are_kept_when_it_comes():
    scroll = "scroll-early"
    events = [created(scroll), started("m1", scroll, t=1),
              tool_update("t1", "in_progress", scroll, t=2.5,
                          content=[{"type": "content", "content": {"type": "text", "text": "half"}}]),
              tool_call("t1", scroll, t=2, title="Build"), tool_update("t1", "completed", scroll, t=3, rawOutput="built"),
              completed("m1", scroll, t=4), ended(scroll, t=5)]
    spans = by_name(spans_for(events))
    build = spans["Build"]
    assert (build["startTimeUnixNano"], build["endTimeUnixNano"]) == ("1795597202000000000", "1795597203000000000")
    assert attr(build, "langfuse.observation.output") == "built"
    assert attr(build, "langfuse.observation.metadata.partial") is None


def test_a_start_replayed_after_its_end_re_sends_the_span_as_it_was():
    """A host replays a session whose tool call's end had been mapped before its start: the
    replayed start comes after the replayed end. Before, it opened the observation again, which
    nothing ended: at shutdown it went out as incomplete, over the span that was right."""
    events = _racing("scroll-replayed")
    spans = spans_for(events + events)  # the session, then its replay
    tool_id = span_id(observation_id("scroll-replayed", "tool", "t1"))
    versions = [s for s in spans if s["spanId"] == tool_id]
    assert len(versions) >= 2
    for span in versions:
        assert (span["startTimeUnixNano"], span["endTimeUnixNano"]) == ("1795597202000000000", "1795597203000000000")
        assert attr(span, "langfuse.observation.metadata.incomplete") is None
        assert span["name"] == "Run tests"


def test_what_is_kept_for_late_starts_is_bounded_and_a_start_past_it_keeps_its_own_time():
    """Observations ended by updates alone keep all their updates said (output too) for a start
    that may come late, but only the last 64: after a restart mid-session every open tool call
    ends that way. A start past the bound still takes its own start time, with the known end."""
    scroll = "scroll-many"
    now = [1000.0]
    cfg = LangfuseConfig(host=HOST, public_key="pk", secret_key="sk-secret-value")
    transport = OtelTransport(LangfuseClient(cfg), cfg, clock=lambda: now[0])
    state = MappingState()
    ends = [tool_update(f"t{i}", "completed", scroll, t=100 + i, rawOutput="x" * 1000) for i in range(70)]
    for event in ends:
        transport.prepare(bus_event_to_items(event, state))
    now[0] += cfg.late_start_wait
    assert len(transport.prepare([])) == 70  # they went without their start, as end records
    assert len(transport._late) == 64
    late_start = tool_call("t0", scroll, t=1, title="First")
    (record,) = transport.prepare(bus_event_to_items(late_start, state))
    (span,) = json.loads(transport.body([record]))["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert span["name"] == "First"
    assert (span["startTimeUnixNano"], span["endTimeUnixNano"]) == ("1795597201000000000", "1795597300000000000")


@pytest.mark.parametrize("year", [1, 1969, 2300, 9999])
def test_a_time_otlp_cannot_carry_is_clamped_so_the_request_is_not_refused(receiver, year):
    """A host whose clock or parser went wrong (datetime.min, year 9999). Before, the span's
    nanoseconds fell outside a signed 64-bit integer (or below zero), and Langfuse refused the
    whole request: every other span in it was dropped with it."""
    from datetime import datetime, timezone

    from dirigent_langfuse import MessageCompleted, MessageStarted

    from ..helpers import common, config

    stream = LangfuseStream(config(receiver.url, transport="otel", flush_interval=30), name="t")
    for event in (started("m1", "scroll-good", t=1), completed("m1", "scroll-good", t=2)):
        stream.on_event(event)
    odd = dict(common("scroll-odd"), at=datetime(year, 6, 1, tzinfo=timezone.utc))
    stream.on_event(MessageStarted(**odd, message_id="mx"))
    stream.on_event(MessageCompleted(**odd, message_id="mx"))
    assert stream.shutdown(10).status is OutcomeStatus.DELIVERED
    assert len([o for o in receiver.store.observations() if o["type"] == "GENERATION"]) == 2


def test_auto_moves_to_otel_when_langfuse_is_upgraded_to_v4_under_it(receiver, no_secrets_logged, caplog):
    """Langfuse v4 refuses the legacy ingestion API's events (a 400 each, in a 207). Before, an
    `auto` stream that had chosen ingestion against v3 kept it for good: once Langfuse was upgraded
    under it, everything it sent, and the backlog it had encoded during the upgrade's downtime,
    was dropped. Now it asks the version again, moves to OTel, and sends that backlog as spans."""
    from ..helpers import stream as make_stream

    stream = make_stream(receiver.url, transport="auto", flush_interval=30)
    for event in session_events("scroll-1"):
        stream.on_event(event)
    assert stream.flush(5).ok and stream.stats().transport == "ingestion"
    receiver.pause()  # the upgrade: Langfuse is down...
    for event in session_events("scroll-2"):
        stream.on_event(event)
    assert not stream.flush(2).ok  # encoded for ingestion, kept for a retry
    receiver.version = "4.2.0"  # ...and comes back as v4
    receiver.resume()
    with caplog.at_level(logging.WARNING):
        outcome = stream.shutdown(10)
    stats = stream.stats()
    assert outcome.ok, outcome.detail
    assert stats.transport == "otel" and stats.dropped == {}
    assert stats.items_accepted == stats.items_delivered
    assert "now reports version 4.2.0" in caplog.text
    trace = next(t for t in receiver.store.traces() if t["id"] == otel_trace_id("scroll-2"))
    kinds = sorted(o["type"] for o in receiver.store.observations(trace["id"]))
    assert kinds == ["AGENT", "EVENT", "GENERATION", "TOOL", "TOOL"]  # the whole session, as spans


def test_auto_sends_a_spool_written_for_ingestion_as_spans_once_langfuse_is_v4(receiver, tmp_path):
    """A process spooled records for ingestion (Langfuse v3, down at its shutdown); the next one
    finds Langfuse upgraded to v4. Before, those records were dropped (`spool_other_wire`)."""
    from ..helpers import stream as make_stream

    spool = str(tmp_path / "spool.db")
    first = make_stream(receiver.url, transport="auto", spool_path=spool, flush_interval=30)
    first.on_event(created("scroll-0"))
    assert first.flush(5).ok and first.stats().transport == "ingestion"
    receiver.pause()
    for event in session_events("scroll-2"):
        first.on_event(event)
    first.shutdown(1)  # Langfuse is down: left in the spool, encoded for ingestion
    receiver.version = "4.2.0"
    receiver.resume()
    second = make_stream(receiver.url, transport="auto", spool_path=spool, flush_interval=30)
    outcome = second.shutdown(10)
    stats = second.stats()
    assert outcome.ok, outcome.detail
    assert stats.transport == "otel" and stats.dropped == {} and stats.items_delivered == stats.items_accepted > 0
    kinds = sorted(o["type"] for o in receiver.store.observations(otel_trace_id("scroll-2")))
    assert kinds == ["AGENT", "EVENT", "GENERATION", "TOOL", "TOOL"]


def test_an_ingestion_stream_against_v4_is_told_why_and_what_to_do(receiver_v4, caplog):
    """`transport = "ingestion"` is taken at its word: v4 refuses the events, counted and logged
    with Langfuse's reason (its `error`, which says to send OTLP), not only 'Event type not accepted'."""
    from ..helpers import stream as make_stream

    stream = make_stream(receiver_v4.url, transport="ingestion")
    stream.on_event(created())
    with caplog.at_level(logging.WARNING):
        outcome = stream.shutdown(5)
    assert not outcome.ok and stream.stats().dropped == {"status_400": 1}
    assert "Event type not accepted" in caplog.text and "OTLP" in caplog.text


def test_a_v4_refusal_from_a_langfuse_that_still_says_v3_stands(caplog):
    """Asked again, Langfuse still reports a version before 4: nothing to move to; the refused
    items are dropped and counted as refused (status_400), with the reason."""
    from dirigent_langfuse.wire.limits import V4_REFUSAL

    def refuse(request):
        batch = json.loads(request.body)["batch"]
        return 207, {}, json.dumps({"successes": [], "errors": [
            {"id": i["id"], "status": 400, "message": V4_REFUSAL, "error": "events_only"} for i in batch]})

    with responses.RequestsMock() as rs:
        rs.add(responses.GET, HEALTH_URL, json={"status": "OK", "version": "3.120.0"})
        rs.add_callback(responses.POST, INGESTION_URL, callback=refuse)
        stream = make(transport="auto")
        stream.on_event(created())
        with caplog.at_level(logging.WARNING):
            outcome = stream.shutdown(5)
        health_calls = [c for c in rs.calls if c.request.url == HEALTH_URL]
    assert not outcome.ok and stream.stats().dropped == {"status_400": 1}
    assert stream.stats().transport == "ingestion" and len(health_calls) == 2  # chosen, then asked again
    assert "still reports a version before 4" in caplog.text
