"""The embedded receiver over real loopback sockets: auth, 207 per item, 400, OTLP, reads, faults."""

from __future__ import annotations

import base64
import gzip
import json
import logging
import socket
from typing import Any, Dict, List

import pytest
import requests

from dirigent_langfuse.mapping.items import bus_event_to_items
from dirigent_langfuse.receiver.faults import Fault, FaultPlan, parse_fault
from dirigent_langfuse.receiver.server import Receiver

from ..helpers import completed, created, started

AUTH = ("pk-lf-local", "sk-lf-local")


def post(receiver: Receiver, items: List[Dict[str, Any]], auth: Any = AUTH) -> requests.Response:
    return requests.post(receiver.url + "/api/public/ingestion", json={"batch": items}, auth=auth, timeout=5)


def session_items() -> List[Dict[str, Any]]:
    return [i for e in (created(), started("m1", t=1), completed("m1", t=2)) for i in bus_event_to_items(e)]


def test_wrong_or_missing_keys_get_401(receiver):
    assert post(receiver, [], auth=("pk-lf-local", "wrong")).status_code == 401
    assert requests.post(receiver.url + "/api/public/ingestion", json={"batch": []}, timeout=5).status_code == 401
    assert requests.get(receiver.url + "/api/public/traces", timeout=5).status_code == 401
    assert receiver.store.envelope_count() == 0


def test_a_body_that_is_not_a_batch_gets_400(receiver):
    url = receiver.url + "/api/public/ingestion"
    assert requests.post(url, data=b"{not json", auth=AUTH, timeout=5).status_code == 400
    assert requests.post(url, json={"items": []}, auth=AUTH, timeout=5).status_code == 400
    assert requests.post(url, json=[1, 2], auth=AUTH, timeout=5).status_code == 400


def test_207_per_item_with_invalid_items_refused(receiver):
    good = session_items()
    bad = [{"id": "bad-1", "type": "generation-create", "timestamp": "not a time", "body": {}},
           {"id": "bad-2", "type": "no-such-type", "timestamp": "2026-11-25T09:00:00.000Z", "body": {}},
           "not even an object"]
    response = post(receiver, good + bad)
    assert response.status_code == 207
    answer = response.json()
    assert sorted(s["id"] for s in answer["successes"]) == sorted(i["id"] for i in good)
    assert [e["status"] for e in answer["errors"]] == [400, 400, 400]
    assert all(e["message"] for e in answer["errors"])
    assert receiver.store.envelope_count() == len(good)


def test_observation_events_of_a_type_the_ingestion_api_refuses_get_400(receiver):
    """Langfuse's spec lists ten types for `observation-create`, but its ingestion API takes only
    GENERATION, SPAN and EVENT and answers the others with a 400 in its 207. The receiver took
    them, so a client sending tool calls that way (ours did) rehearsed cleanly and lost every tool
    call on a real Langfuse v3. A `span-create` shows as a SPAN whatever type its body carries."""
    ts = "2026-11-25T09:00:00.000Z"
    items = [
        {"id": "r1", "timestamp": ts, "type": "observation-create", "body": {"id": "o1", "traceId": "t", "type": "TOOL"}},
        {"id": "r2", "timestamp": ts, "type": "observation-update", "body": {"id": "o2", "traceId": "t", "type": "AGENT"}},
        {"id": "r3", "timestamp": ts, "type": "observation-create", "body": {"id": "o3", "traceId": "t", "type": "SPAN"}},
        {"id": "r4", "timestamp": ts, "type": "span-create", "body": {"id": "o4", "traceId": "t", "type": "TOOL"}},
    ]
    answer = post(receiver, items).json()
    assert [(e["id"], e["status"]) for e in answer["errors"]] == [("r1", 400), ("r2", 400)]
    assert all(e["error"] == 'body.type: Invalid option: expected one of "GENERATION"|"SPAN"|"EVENT"'
               for e in answer["errors"])
    assert {o["id"]: o["type"] for o in receiver.store.observations()} == {"o3": "SPAN", "o4": "SPAN"}


_TS = "2026-11-25T09:00:00.000Z"


def _item(kind: str, body: Dict[str, Any], **envelope: Any) -> Dict[str, Any]:
    return dict({"id": "r1", "timestamp": _TS, "type": kind, "body": body}, **envelope)


@pytest.mark.parametrize("item, field", [
    (_item("trace-create", {"id": "t"}, id="e" * 801), "id"),
    (_item("trace-create", {"id": "t"}, id="e\r1"), "id"),
    (_item("trace-create", {"id": "t"}, timestamp="2026-11-25T09:00:00"), "timestamp"),  # no offset
    (_item("trace-create", {"id": "t\r"}), "body.id"),
    (_item("trace-create", {"id": "t", "name": "n" * 1001}), "body.name"),
    (_item("trace-create", {"id": "t", "name": "\U0001F600" * 501}), "body.name"),  # 1,002 as JavaScript counts
    (_item("trace-create", {"id": "t", "environment": "Production"}), "body.environment"),
    (_item("trace-create", {"id": "t", "environment": "langfuse-prompt-experiment"}), "body.environment"),
    (_item("trace-create", {"id": "t", "environment": None}), "body.environment"),
    (_item("span-create", {"traceId": "t", "name": "no id"}), "body.id"),
    (_item("span-update", {"id": "o", "traceId": "t" * 801}), "body.traceId"),
    (_item("generation-update", {"id": "o", "costDetails": {"total": -0.01}}), "body.costDetails"),
    (_item("generation-update", {"id": "o", "usageDetails": {"input": -1}}), "body.usageDetails"),
    (_item("generation-update", {"id": "o", "usageDetails": {"input": 1.5}}), "body.usageDetails"),
    (_item("generation-update", {"id": "o", "usage": "TOKENS"}), "body.usage"),
    (_item("generation-update", {"id": "o", "usage": {"input": 1, "unit": "WORDS"}}), "body.usage.unit"),
    (_item("generation-create", {"id": "o", "promptName": "p"}), "body.promptName"),
    (_item("generation-create", {"id": "o", "promptName": "p", "promptVersion": True}), "body.promptVersion"),
    (_item("generation-create", {"id": "o", "modelParameters": {"tools": [{"name": "x"}]}}), "body.modelParameters"),
    (_item("score-create", {"name": "q", "value": True}), "body.value"),
    (_item("score-create", {"name": "q", "value": {"a": 1}}), "body.value"),
    (_item("score-create", {"name": "q", "value": 2, "dataType": "BOOLEAN"}), "body.value"),
    (_item("score-create", {"name": "", "value": 1}), "body.name"),
    (_item("score-create", {"name": "q", "value": 1, "traceId": 7}), "body.traceId"),
    # found by checking the receiver against Langfuse's own schema (zod) on 100,000 mutated items
    # past JavaScript's safe integers
    (_item("generation-update", {"id": "o", "usageDetails": {"input": 2 ** 53}}), "body.usageDetails"),
    (_item("generation-update", {"id": "o", "usageDetails": {"input_tokens": 1, "output_tokens": 2, "total_tokens": 3,
                                                             "input_tokens_details": {"cached": 1}, "note": "x"}}),
     "body.usageDetails"),  # an OpenAI usage object with something else in it
    (_item("trace-create", {"id": "t"}, timestamp="2026-11-25T09:00:00+0200"), "timestamp"),
    (_item("observation-create", {"id": "o", "type": "SPAN", "modelParameters": {"stop": ["x"]}}), "body.modelParameters"),
])
def test_items_langfuse_s_server_refuses_get_400_naming_the_field(receiver, item, field):
    """Langfuse's server checks more than its OpenAPI spec says: ids of 1 to 800 characters without
    a carriage return, a trace name of at most 1,000, times with an offset, costs and token counts
    of at least 0, its environment rule, prompts named with their version, a score's value by its
    type. The receiver took all these, so a client rehearsed cleanly what Langfuse would refuse."""
    (error,) = post(receiver, [item]).json()["errors"]
    assert error["status"] == 400 and error["error"].startswith(field + " "), error


def test_what_langfuse_s_server_takes_beyond_the_spec_s_letter_is_taken(receiver):
    """And the other way: what its server takes although the spec reads stricter."""
    items = [
        _item("trace-create", {"id": "t", "name": "n" * 1000, "environment": "prod-eu_1"}, id="a" * 800),
        _item("span-create", {"id": "o1", "traceId": "t"}, id="r2", timestamp="2026-11-25T11:00:00.5+02:00"),
        _item("generation-create", {"id": "o2", "traceId": "t", "modelParameters": {"n": 3, "stop": ["x"],
                                                                                     "thinking": {"type": "enabled"}},
                                    "promptName": "p", "promptVersion": 2.0}, id="r3"),
        _item("generation-update", {"id": "o2", "usageDetails": {"prompt_tokens": 5, "completion_tokens": 2,
                                                                 "total_tokens": 7, "prompt_tokens_details":
                                                                 {"cached_tokens": 1, "audio_tokens": None}},
                                    "costDetails": {"total": 0.0, "input": None}}, id="r4"),
        _item("generation-update", {"id": "o2", "usage": {"input": 1, "output": 2, "total": 3, "unit": "TOKENS"}},
              id="r5"),  # Langfuse SDK v2's usage
        _item("score-create", {"name": "q", "value": "good", "dataType": "CATEGORICAL", "traceId": "t"}, id="r6"),
        _item("score-create", {"name": "q", "value": 1, "dataType": "BOOLEAN", "traceId": ""}, id="r7"),
        # fields an event's schema has not are dropped, whatever they hold: a span has no usage or
        # model, a trace no traceId, a legacy observation event no environment
        _item("span-create", {"id": "o3", "traceId": "t", "usageDetails": "junk", "model": 5, "promptVersion": "x"},
              id="r8"),
        _item("trace-create", {"id": "t3", "traceId": 7}, id="r9"),
        _item("observation-create", {"id": "o4", "traceId": "t", "type": "SPAN", "environment": "PROD"}, id="r10"),
    ]
    answer = post(receiver, items).json()
    assert answer["errors"] == [] and len(answer["successes"]) == len(items)
    shown = {o["id"]: o for o in receiver.store.observations()}
    assert not {"usageDetails", "model", "promptVersion"} & set(shown["o3"]) and "environment" not in shown["o4"]


def test_a_start_time_trace_and_environment_keep_their_first_value_as_in_langfuse(receiver):
    """Langfuse keeps an observation's first start time, trace and environment, and a trace's first
    environment, whatever later events say; the receiver let the last one win."""
    later = "2026-11-25T09:00:05.000Z"
    items = [
        _item("trace-create", {"id": "t", "environment": "first"}),
        _item("span-create", {"id": "o", "traceId": "t", "startTime": _TS, "environment": "first"}, id="r2"),
        _item("span-update", {"id": "o", "traceId": "t2", "startTime": later, "endTime": later, "environment": "second"},
              id="r3", timestamp=later),
        _item("trace-create", {"id": "t", "environment": "second", "name": "renamed"}, id="r4", timestamp=later),
    ]
    assert post(receiver, items).json()["errors"] == []
    (obs,) = receiver.store.observations()
    assert (obs["startTime"], obs["traceId"], obs["environment"], obs["endTime"]) == (_TS, "t", "first", later)
    trace = receiver.store.trace("t")
    assert (trace["environment"], trace["name"]) == ("first", "renamed")
    assert [t["id"] for t in receiver.store.traces()] == ["t"]  # no trace "t2" made by the update


def test_metadata_that_is_not_an_object_is_kept_as_langfuse_keeps_it(receiver):
    """Langfuse keeps an event's metadata that is not a JSON object as {"metadata": its text}, and
    merges that into what the trace or observation holds; the receiver let it replace the rest."""
    items = [
        _item("trace-create", {"id": "t", "metadata": {"a": "1"}}),
        _item("trace-create", {"id": "t", "metadata": "REDACTED"}, id="r2"),
        _item("span-create", {"id": "o1", "traceId": "t", "startTime": _TS, "metadata": ["x", 1]}, id="r3"),
        _item("span-create", {"id": "o2", "traceId": "t", "startTime": _TS, "metadata": 42.0}, id="r4"),
        _item("span-create", {"id": "o3", "traceId": "t", "startTime": _TS, "metadata": True}, id="r5"),
    ]
    assert post(receiver, items).json()["errors"] == []
    assert receiver.store.trace("t")["metadata"] == {"a": "1", "metadata": "REDACTED"}
    shown = {o["id"]: o["metadata"] for o in receiver.store.observations()}
    assert shown == {"o1": {"metadata": '["x",1]'}, "o2": {"metadata": "42"}, "o3": {"metadata": "true"}}


def test_items_are_deduplicated_and_merged_into_traces(receiver):
    items = session_items()
    post(receiver, items)
    post(receiver, items)  # a retry with the same envelope ids
    assert receiver.store.envelope_count() == len(items)
    assert receiver.store.counters()["resent"] == len(items)
    listing = requests.get(receiver.url + "/api/public/traces", auth=AUTH, timeout=5).json()
    assert listing["meta"]["totalItems"] == 1 and listing["data"][0]["id"] == "scroll-1"
    trace = requests.get(receiver.url + "/api/public/traces/scroll-1", auth=AUTH, timeout=5).json()
    (generation,) = trace["observations"]
    assert generation["type"] == "GENERATION" and generation["endTime"] and generation["startTime"]
    assert generation["usageDetails"]["input"] == 10
    assert requests.get(receiver.url + "/api/public/traces/nope", auth=AUTH, timeout=5).status_code == 404


def test_health_answers_the_configured_version():
    with Receiver(version="4.7.1") as receiver:
        answer = requests.get(receiver.url + "/api/public/health", timeout=5).json()
    assert answer == {"status": "OK", "version": "4.7.1"}


def test_otlp_json_gzip_or_not_and_bad_exports(receiver):
    span = {"traceId": "ab" * 16, "spanId": "cd" * 8, "name": "s", "startTimeUnixNano": "1764061200000000000",
            "endTimeUnixNano": "1764061201000000000",
            "attributes": [{"key": "langfuse.observation.type", "value": {"stringValue": "tool"}},
                           {"key": "langfuse.trace.name", "value": {"stringValue": "t"}}]}
    body = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).encode()
    url = receiver.url + "/api/public/otel/v1/traces"
    headers = {"Content-Type": "application/json"}
    assert requests.post(url, data=body, headers=headers, auth=AUTH, timeout=5).status_code == 200
    zipped = dict(headers, **{"Content-Encoding": "gzip"})
    assert requests.post(url, data=gzip.compress(body), headers=zipped, auth=AUTH, timeout=5).status_code == 200
    assert receiver.store.counters()["resent"] == 1
    (obs,) = receiver.store.observations()
    assert obs["type"] == "TOOL" and obs["traceId"] == "ab" * 16
    bad = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [dict(span, spanId="xyz")]}]}]}).encode()
    answer = requests.post(url, data=bad, headers=headers, auth=AUTH, timeout=5)
    assert answer.status_code == 400 and "spanId" in answer.json()["message"]
    assert requests.post(url, data=body, headers=headers, auth=("pk", "no"), timeout=5).status_code == 401
    assert requests.post(url, data=body, headers={"Content-Type": "text/plain"}, auth=AUTH, timeout=5).status_code == 415


def test_faults_in_order_then_normal(receiver):
    receiver.faults.add(Fault.status(503, times=2), Fault.status(429, retry_after=3), Fault.status(502))
    answers = [post(receiver, []) for _ in range(5)]
    assert [a.status_code for a in answers] == [503, 503, 429, 502, 207]
    assert answers[2].headers["Retry-After"] == "3"
    assert answers[3].text.startswith("<html>")  # a proxy's HTML body
    assert receiver.store.counters()["faults_applied"] == 4


def test_partial_fault_fails_every_nth_item(receiver):
    receiver.faults.add(Fault.partial(500, every=3))
    items = session_items() + session_items()[:0]
    items = [dict(i, id=f"{i['id']}-{n}") for n in range(2) for i in items]
    answer = post(receiver, items).json()
    assert len(answer["errors"]) == len(items) // 3 and {e["status"] for e in answer["errors"]} == {500}


def test_reset_fault_closes_the_connection(receiver):
    receiver.faults.add(Fault.reset())
    with pytest.raises(requests.exceptions.ConnectionError):
        post(receiver, [])
    assert post(receiver, []).status_code == 207


def test_slow_fault_delays_the_answer(receiver):
    receiver.faults.add(Fault.slow(0.3))
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(receiver.url + "/api/public/ingestion", json={"batch": []}, auth=AUTH, timeout=(1, 0.05))


def test_timed_fault_uses_its_clock():
    now = [0.0]
    plan = FaultPlan(clock=lambda: now[0]).add(Fault.status(503, seconds=30))
    assert plan.next().code == 503
    now[0] = 29.9
    assert plan.next().code == 503
    now[0] = 30.0
    assert plan.next() is None


def test_parse_fault_forms():
    assert parse_fault("503*5") == Fault.status(503, 5)
    assert parse_fault("429:2*3") == Fault.status(429, 3, retry_after=2.0)
    assert parse_fault("slow:1.5*2") == Fault.slow(1.5, 2)
    assert parse_fault("reset*1") == Fault.reset(1)
    assert parse_fault("partial:500/3*1") == Fault.partial(500, 3, 1)
    assert parse_fault("page*2") == Fault.page(2)
    assert parse_fault("trickle:0.2*2") == Fault.trickle(0.2, 2)
    assert parse_fault("trickle") == Fault.trickle(0.5, 1)
    assert parse_fault("503~30") == Fault.status(503, seconds=30.0)
    for bad in ("boom", "503*x", "slow:fast"):
        with pytest.raises(ValueError, match="bad fault"):
            parse_fault(bad)


def test_pause_refuses_then_resume_serves_on_the_same_port(receiver):
    port = receiver.port
    receiver.pause()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    receiver.resume()
    assert receiver.port == port and post(receiver, []).status_code == 207


def test_events_merge_in_timestamp_order_whatever_order_they_arrive(receiver):
    items = session_items()  # trace-create, generation-create, generation-update
    post(receiver, [items[2]])  # the update first (two requests in flight can do this)
    post(receiver, items[:2])
    (generation,) = receiver.store.observations()
    assert generation["endTime"] and generation["startTime"] and generation["usageDetails"]["input"] == 10
    assert generation["metadata"]["message_id"] == "m1"


def test_store_reads_rows_written_whole_by_earlier_versions(tmp_path):
    """Earlier versions stored each item or span's JSON in its log row; such a database still reads."""
    from dirigent_langfuse.receiver.store import Store

    db = str(tmp_path / "old.db")
    store = Store(db)
    item = session_items()[0]
    span = {"traceId": "ab" * 16, "spanId": "cd" * 8, "name": "s", "startTimeUnixNano": "1764061200000000000",
            "endTimeUnixNano": "1764061201000000000",
            "attributes": [{"key": "langfuse.observation.type", "value": {"stringValue": "tool"}}]}
    store._db.executemany("INSERT INTO log (key, kind, received, json) VALUES (?, ?, ?, ?)", [
        (item["id"], item["type"], 1.0, json.dumps(item).encode()),
        ("span:" + "ab" * 16 + ":" + "cd" * 8, "otel-span", 1.0, json.dumps(span).encode()),
    ])
    store.close()
    store = Store(db)
    try:
        assert store.items() == [item]
        assert {t["id"] for t in store.traces()} == {item["body"]["id"], "ab" * 16}
        assert [o["type"] for o in store.observations()] == ["TOOL"]
    finally:
        store.close()


@pytest.mark.parametrize("nanos", ["soon", "-5", str(1 << 63), 1.5e30])
def test_otlp_times_that_are_not_unix_nanoseconds_get_400(receiver, nanos):
    span = {"traceId": "ab" * 16, "spanId": "cd" * 8, "name": "s", "startTimeUnixNano": nanos}
    body = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).encode()
    answer = requests.post(receiver.url + "/api/public/otel/v1/traces", data=body,
                           headers={"Content-Type": "application/json"}, auth=AUTH, timeout=5)
    assert answer.status_code == 400 and "startTimeUnixNano" in answer.json()["message"]


def test_spans_within_one_millisecond_are_not_duplicates_but_a_span_resent_under_a_new_id_is(receiver):
    def span(span_id: str, start: int) -> Dict[str, Any]:
        return {"traceId": "ab" * 16, "spanId": span_id, "parentSpanId": "ef" * 8, "name": "assistant message",
                "startTimeUnixNano": str(start), "endTimeUnixNano": str(start + 5000),
                "attributes": [{"key": "langfuse.observation.type", "value": {"stringValue": "generation"}}]}

    def export(*spans: Dict[str, Any]) -> int:
        body = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": list(spans)}]}]}).encode()
        return requests.post(receiver.url + "/api/public/otel/v1/traces", data=body, auth=AUTH, timeout=5,
                             headers={"Content-Type": "application/json"}).status_code

    t = 1764061200_000_000_000
    assert export(span("01" * 8, t + 1000), span("02" * 8, t + 201_000)) == 200  # 0.2 ms apart, same name
    assert len(receiver.store.observations()) == 2
    assert receiver.store.counters()["duplicates"] == 0
    assert export(span("03" * 8, t + 1000)) == 200  # the first one again under another span id: a client's bug
    assert receiver.store.counters()["duplicates"] == 1


def test_a_span_id_sent_again_with_other_content_is_an_upsert_and_the_trace_keeps_its_name(receiver):
    """Found by tests/test_random.py: the receiver kept the first version of a span id and ignored
    the rest, so when a version without the trace's name arrived first (two requests in flight),
    the trace stayed nameless. Langfuse upserts: later non-null fields win, the trace keeps its name."""
    def span(name_attr: bool, output: str) -> Dict[str, Any]:
        attributes = [{"key": "langfuse.observation.type", "value": {"stringValue": "generation"}},
                      {"key": "langfuse.observation.output", "value": {"stringValue": output}}]
        if name_attr:
            attributes.append({"key": "langfuse.trace.name", "value": {"stringValue": "named"}})
        return {"traceId": "ab" * 16, "spanId": "cd" * 8, "name": "g", "startTimeUnixNano": "1764061200000000000",
                "endTimeUnixNano": "1764061201000000000", "attributes": attributes}

    def export(one: Dict[str, Any]) -> None:
        body = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [one]}]}]}).encode()
        assert requests.post(receiver.url + "/api/public/otel/v1/traces", data=body, auth=AUTH, timeout=5,
                             headers={"Content-Type": "application/json"}).status_code == 200

    export(span(False, "later version, arrived first"))
    export(span(True, "earlier version"))
    export(span(True, "earlier version"))  # the same content again: a re-send, changes nothing
    (trace,) = receiver.store.traces()
    assert trace["name"] == "named"
    (obs,) = receiver.store.observations()
    assert obs["output"] == "earlier version"  # the last one processed wins, as in Langfuse
    assert receiver.store.counters()["resent"] == 1 and receiver.store.counters()["duplicates"] == 0


# -- request limits and odd bodies ------------------------------------------------------------------


def raw_post(receiver: Receiver, head: str, body: bytes = b"") -> bytes:
    """One request written by hand on a socket (what `requests` would refuse to send); the answer."""
    with socket.create_connection((receiver.host, receiver.port), timeout=5) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while True:
            got = sock.recv(65536)
            if not got:
                return answer
            answer += got


AUTH_HEADER = "Authorization: Basic " + base64.b64encode(b"pk-lf-local:sk-lf-local").decode()


@pytest.mark.parametrize("length", ["abc", "-5"])
def test_a_content_length_that_is_not_a_size_gets_400(receiver, length):
    answer = raw_post(receiver, f"POST /api/public/ingestion HTTP/1.1\nHost: x\n{AUTH_HEADER}\nContent-Length: {length}\n")
    assert answer.startswith(b"HTTP/1.1 400") and b"Content-Length" in answer


def test_a_body_over_the_limit_gets_413_as_sent_or_once_inflated():
    with Receiver(max_request_bytes=10_000) as receiver:
        url = receiver.url + "/api/public/ingestion"
        big = json.dumps({"batch": [{"x": "y" * 20_000}]}).encode()
        response = requests.post(url, data=big, auth=AUTH, timeout=5)
        assert response.status_code == 413 and "10000" in response.json()["message"]
        bomb = gzip.compress(b'{"batch": [' + b" " * 5_000_000 + b"]}", 9)  # 5 MB inflated, 5 kB sent
        assert len(bomb) < 10_000
        response = requests.post(url, data=bomb, auth=AUTH, headers={"Content-Encoding": "gzip"}, timeout=5)
        assert response.status_code == 413 and "decompressed" in response.json()["message"]
        small = gzip.compress(json.dumps({"batch": session_items()}).encode())
        response = requests.post(url, data=small, auth=AUTH, headers={"Content-Encoding": "gzip"}, timeout=5)
        assert response.status_code == 207 and not response.json()["errors"]


def test_truncated_gzip_gets_400(receiver):
    body = gzip.compress(json.dumps({"batch": session_items()}).encode())[:-10]
    response = requests.post(receiver.url + "/api/public/ingestion", data=body, auth=AUTH,
                             headers={"Content-Encoding": "gzip"}, timeout=5)
    assert response.status_code == 400 and "gzip" in response.json()["message"]


def test_a_chunked_body_is_read(receiver):
    items = session_items()

    def chunks():
        text = json.dumps({"batch": items}).encode()
        for start in range(0, len(text), 100):
            yield text[start:start + 100]

    response = requests.post(receiver.url + "/api/public/ingestion", data=chunks(), auth=AUTH, timeout=5)
    assert response.status_code == 207 and len(response.json()["successes"]) == len(items)
    assert receiver.store.envelope_count() == len(items)


def test_a_page_that_is_not_a_number_gets_400(receiver):
    response = requests.get(receiver.url + "/api/public/traces?page=two", auth=AUTH, timeout=5)
    assert response.status_code == 400


def test_completion_start_time_is_read_from_spans_as_langfuse_reads_it():
    from dirigent_langfuse.receiver.checks import _completion_start

    assert _completion_start('"2026-11-25T09:00:01.100Z"') == "2026-11-25T09:00:01.100Z"  # JSON text, as SDKs write
    assert _completion_start("2026-11-25T09:00:01.100Z") is None  # a bare time is not JSON: Langfuse keeps none
    assert _completion_start(None) is None


def test_as_v4_the_legacy_endpoint_takes_score_events_only():
    """Langfuse v4 (its default events_only write mode) answers 207 with a 400 per trace or
    observation event on /api/public/ingestion; the receiver does the same, so a rehearsal of
    `transport = "ingestion"` against v4 sees what Langfuse would do."""
    from dirigent_langfuse.wire.limits import V4_REFUSAL

    score = {"id": "s1", "type": "score-create", "timestamp": "2026-11-30T10:00:00.000Z",
             "body": {"traceId": "scroll-1", "name": "quality", "value": 1}}
    with Receiver(version="4.2.0") as receiver:
        answer = post(receiver, session_items() + [score]).json()
    assert [s["id"] for s in answer["successes"]] == ["s1"]
    assert {e["status"] for e in answer["errors"]} == {400} and len(answer["errors"]) == len(session_items())
    assert all(e["message"] == V4_REFUSAL and "OTLP" in e["error"] for e in answer["errors"])


def test_show_renders_every_observation_also_in_a_cycle_of_parents_a_deep_chain_or_naive_times():
    """Observations stored by any client (the receiver takes what Langfuse takes). Before: those
    whose parents formed a cycle were left out of the tree without a word; a chain deeper than
    Python's stack raised RecursionError; a naive start time beside an aware one raised TypeError."""
    from dirigent_langfuse.receiver.render import render_trace

    def obs(oid, parent=None, start="2026-11-25T09:00:00Z", name=None):
        return {"id": oid, "type": "SPAN", "name": name or oid, "parentObservationId": parent, "startTime": start}

    cycle = [obs("a", "b"), obs("b", "a"), obs("c", "c"), obs("root"), obs("kid", "root")]
    text = render_trace({"id": "t", "name": "x"}, cycle)
    for name in ("a", "b", "c", "root", "kid"):
        assert f"SPAN {name} " in text, text
    assert "SPAN a  +0.00s  … (not ended)  ⟲ in a cycle of parents (its parent: b)" in text
    assert "   └─ SPAN b " in text  # under a, once
    deep = [obs(f"d{i}", f"d{i - 1}" if i else None) for i in range(3000)]
    assert len(render_trace({"id": "t"}, deep).splitlines()) == 3001
    naive = [obs("n", start="2026-11-25T09:00:01"), obs("z", start="2026-11-25T09:00:02Z")]
    assert render_trace({"id": "t"}, naive).splitlines()[1:] == [
        "├─ SPAN n  +0.00s  … (not ended)", "└─ SPAN z  +1.00s  … (not ended)"]


def test_a_body_nested_too_deeply_gets_400_and_an_odd_attribute_value_still_reads_back(receiver):
    """Before: JSON nested past the decoder's depth killed the handler (the connection closed with
    no answer); and a span accepted with an intValue that is no integer ("12a") made every later
    read of the store raise, so `show`, the traces API and counters() all failed from then on."""
    deep = b'{"batch":' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    for path in ("/api/public/ingestion", "/api/public/otel/v1/traces"):
        answer = requests.post(receiver.url + path, data=deep, auth=AUTH, timeout=5,
                               headers={"Content-Type": "application/json"})
        assert answer.status_code == 400 and "nested too deeply" in answer.text
    odd = [{"key": "a", "value": {"intValue": "12a"}}, {"key": "b", "value": {"arrayValue": 5}},
           {"key": "c", "value": {"kvlistValue": {"values": [1, {"key": "k"}]}}}, {"key": "d", "value": {"doubleValue": "x"}},
           {"key": "langfuse.observation.metadata.n", "value": {"intValue": "7"}}]
    span = {"traceId": "ab" * 16, "spanId": "cd" * 8, "name": "s", "startTimeUnixNano": "1764061200000000000",
            "endTimeUnixNano": "1764061201000000000", "status": "not an object", "attributes": odd}
    export = {"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}
    answer = requests.post(receiver.url + "/api/public/otel/v1/traces", json=export, auth=AUTH, timeout=5)
    assert answer.status_code == 200
    (obs,) = receiver.store.observations()
    assert obs["metadata"] == {"n": 7} and receiver.store.counters()["spans_received"] == 1
    assert requests.get(receiver.url + "/api/public/traces", auth=AUTH, timeout=5).status_code == 200


def test_a_protobuf_body_that_does_not_parse_gets_400(receiver):
    """Before, protobuf's DecodeError (not a ValueError) killed the handler: no answer at all."""
    pytest.importorskip("opentelemetry.proto", reason="protobuf exports need the optional opentelemetry-proto")
    for body in (b"\xff\xff\xff\xff garbage", b"\x0a" + b"\xff" * 20):
        answer = requests.post(receiver.url + "/api/public/otel/v1/traces", data=body, auth=AUTH, timeout=5,
                               headers={"Content-Type": "application/x-protobuf"})
        assert answer.status_code == 400 and "not an ExportTraceServiceRequest in protobuf" in answer.text


def test_a_bug_of_the_receiver_answers_500_not_silence(receiver, monkeypatch, caplog):
    """Before, any exception in a handler closed the connection with no answer, which a client
    takes for a network failure; Langfuse, like any server, answers 500."""

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(receiver.store, "add_items", broken)
    answer = post(receiver, session_items())
    assert answer.status_code == 500 and "RuntimeError" in answer.json()["message"]
    assert "receiver: POST /api/public/ingestion failed" in caplog.text
    monkeypatch.setattr(receiver.store, "traces", broken)
    assert requests.get(receiver.url + "/api/public/traces", auth=AUTH, timeout=5).status_code == 500


def test_items_of_odd_types_get_400_and_whatever_was_accepted_reads_back(receiver):
    """Found by fuzzing the receiver with items of random field types. Before: a level, type or
    observation type that is a list or dict raised TypeError in the check (no answer, later a
    500); a trace-create without a body id (the spec allows it) or an update without one made
    every later read raise KeyError; a trace whose metadata is a string (Langfuse's metadata is
    any JSON) broke `show`; a trace timestamp that is no time was taken."""
    from dirigent_langfuse.receiver.render import render_all

    ts = "2026-11-25T09:00:00.000Z"
    refused = [
        {"id": "r1", "timestamp": ts, "type": "span-create", "body": {"id": "o1", "traceId": "t1", "level": {"a": 1}}},
        {"id": "r2", "timestamp": ts, "type": "observation-create", "body": {"id": "o2", "traceId": "t1", "type": ["SPAN"]}},
        {"id": "r3", "timestamp": ts, "type": ["trace-create"], "body": {"id": "t1"}},
        {"id": "r4", "timestamp": ts, "type": "trace-create", "body": {"id": "t1", "timestamp": "not a time"}},
    ]
    answer = post(receiver, refused)
    assert answer.status_code == 207
    assert [e["id"] for e in answer.json()["errors"]] == ["r1", "r2", "r3", "r4"]
    assert all(e["status"] == 400 for e in answer.json()["errors"])
    taken = [
        {"id": "a1", "timestamp": ts, "type": "trace-create", "body": {"name": "no id", "metadata": "a string"}},
        {"id": "a2", "timestamp": ts, "type": "observation-create",  # the one kind that may leave out its id
         "body": {"traceId": "a1", "type": "SPAN", "name": "kid", "startTime": ts, "metadata": [1, 2],
                  "usageDetails": {"input": 3}}},
        {"id": "a3", "timestamp": ts, "type": "trace-create", "body": {"id": "t2", "tags": ["x"], "metadata": ["list"]}},
    ]
    answer = post(receiver, taken)
    assert answer.status_code == 207 and not answer.json()["errors"]
    assert {t["id"] for t in receiver.store.traces()} == {"a1", "t2"}
    text = render_all(receiver.store)
    assert "trace 'no id' (a1)" in text and "SPAN kid" in text and "in 3 / out 0" in text
    assert requests.get(receiver.url + "/api/public/traces", auth=AUTH, timeout=5).status_code == 200


def test_a_request_cut_off_by_stop_ends_with_its_connection_and_logs_no_error(caplog):
    """b137edf's 500-for-a-bug also caught what stop() does to a request still being handled (its
    store closed under it: ProgrammingError) and logged it at ERROR, from a thread that outlived
    its test: the next test's log check saw it (test_random, now and then in the full suite)."""
    import threading

    receiver = Receiver().start()
    inside = threading.Event()
    next_fault = receiver.faults.next

    def seen():
        inside.set()
        return next_fault()

    receiver.faults.next = seen
    receiver.faults.add(Fault.slow(1.0))  # the handler sleeps here while the receiver stops (well within 1 s)
    handled = threading.Event()
    said: list = []

    class Told(logging.Handler):  # the handler's last word on the request, whatever its level
        def emit(self, record):
            text = record.getMessage()
            if "POST /api/public/ingestion" in text and ("ended with its connection" in text or " failed" in text):
                said.append(record.levelname)
                handled.set()

    caplog.set_level(logging.DEBUG, logger="dirigent_langfuse.receiver")
    told = Told()
    logging.getLogger("dirigent_langfuse.receiver").addHandler(told)
    answers: list = []

    def client():
        try:
            answers.append(post(receiver, session_items()).status_code)
        except requests.ConnectionError as exc:
            answers.append(type(exc).__name__)

    thread = threading.Thread(target=client)
    thread.start()
    assert inside.wait(5)
    receiver.stop()
    thread.join(5)
    assert answers == ["ConnectionError"]
    try:
        assert handled.wait(5)  # the handler met the closed store and said so
    finally:
        logging.getLogger("dirigent_langfuse.receiver").removeHandler(told)
    assert said == ["DEBUG"]


_ODD = [None, "", "x", 0, -1, 1.5, True, [], [1, "a"], {}, {"a": 1}, {"a": {"b": [1]}}, "2026-11-25T09:00:00Z",
        "2026-11-25T09:00:00", "not a time", 10 ** 20, [{"a": None}]]
_BODY_FIELDS = ["id", "traceId", "name", "startTime", "endTime", "metadata", "input", "output", "level", "statusMessage",
                "parentObservationId", "usageDetails", "costDetails", "modelParameters", "model", "tags", "userId",
                "sessionId", "timestamp", "completionStartTime", "type", "environment", "public", "release", "version"]
_ATTRIBUTES = ["langfuse.observation.type", "langfuse.observation.input", "langfuse.observation.usage_details",
               "langfuse.observation.metadata", "langfuse.observation.metadata.x", "langfuse.trace.metadata.y",
               "langfuse.trace.tags", "langfuse.trace.name", "user.id", "langfuse.observation.level",
               "langfuse.observation.completion_start_time", "langfuse.observation.model.parameters"]


def _any_value(rng, depth=0):
    pick = rng.randint(0, 8 if depth < 2 else 5)
    if pick == 0:
        return {"stringValue": rng.choice(["x", "", '{"a": 1}', "[1]", '"2026-11-25T09:00:00Z"', "null", "ERROR"])}
    if pick == 1:
        return {"intValue": rng.choice(["5", 5, "x", "99999999999999999999999"])}
    if pick == 2:
        return {"doubleValue": rng.choice([1.5, "x", 1e308])}
    if pick == 3:
        return {"boolValue": rng.choice([True, "x"])}
    if pick in (4, 5):
        return rng.choice([{}, {"bytesValue": "!!"}])
    if pick in (6, 7):
        return {"arrayValue": rng.choice([{"values": [_any_value(rng, depth + 1)]}, {}, {"values": 5}, None])}
    return {"kvlistValue": rng.choice([{"values": [{"key": "k", "value": _any_value(rng, depth + 1)}]}, {"values": [5]}])}


@pytest.mark.parametrize("seed", range(3))
def test_items_and_spans_of_any_shape_are_answered_and_always_read_back(receiver, seed):
    """What found the receiver's last bugs, kept: random ingestion items and OTLP spans of odd field
    types. Every request gets an answer below 500, and the store reads back and renders after each."""
    import random

    from dirigent_langfuse.receiver.render import render_all

    rng = random.Random(seed)
    kinds = ["trace-create", "span-create", "span-update", "generation-create", "generation-update", "event-create",
             "observation-create", "observation-update", "sdk-log", "score-create", ["x"]]
    for n in range(60):
        batch = []
        for i in range(4):
            body = {f: rng.choice(_ODD) for f in rng.sample(_BODY_FIELDS, rng.randint(0, 8))}
            if rng.random() < 0.8:
                body["id"] = rng.choice(["o1", "o2", "t1"])
            if rng.random() < 0.7:
                body["traceId"] = "t1"
            batch.append({"id": f"e{n}-{i}", "timestamp": "2026-11-25T09:00:00.000Z", "type": rng.choice(kinds), "body": body})
        assert post(receiver, batch).status_code < 500
        span = {"traceId": rng.choice(["ab" * 16, "cd" * 16]), "spanId": rng.choice(["01" * 8, "02" * 8]),
                "name": rng.choice(["s", None, 5]), "startTimeUnixNano": rng.choice(["1764061200000000000", None, "0"]),
                "status": rng.choice([{"code": 2}, "s", None]),
                "attributes": [{"key": rng.choice(_ATTRIBUTES), "value": _any_value(rng)} for _ in range(rng.randint(0, 5))]}
        if rng.random() < 0.5:
            span["parentSpanId"] = rng.choice(["01" * 8, "02" * 8])
        export = {"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}
        answer = requests.post(receiver.url + "/api/public/otel/v1/traces", json=export, auth=AUTH, timeout=5)
        assert answer.status_code < 500, answer.text
        receiver.store.traces(), receiver.store.observations(), receiver.store.counters()
        render_all(receiver.store)
    assert requests.get(receiver.url + "/api/public/traces", auth=AUTH, timeout=5).status_code == 200


@pytest.mark.parametrize("spec, problem", [
    ("partial:500/0", "every must be a whole number of at least 1"),  # before: ZeroDivisionError in each handler
    ("slow:nan", "delay must be a finite number of seconds"),  # before: ValueError from time.sleep in the handler
    ("slow:-1", "delay must be a finite number of seconds"),
    ("999", "code must be an HTTP status from 100 to 599"),
    ("503*0", "times must be a whole number of at least 1"),  # before: applied to every request, for ever
])
def test_a_fault_the_receiver_could_not_act_on_is_refused_when_made(spec, problem):
    with pytest.raises(ValueError, match=problem):
        parse_fault(spec)


@pytest.mark.parametrize("version", ["3.120.0", "4.16.0"])
def test_a_span_exported_again_is_kept_as_the_server_it_poses_as_would(version, tmp_path):
    """v4 keeps a row per span id and start time, the last export replacing it whole, and another
    start time is a second row for good (shown as a duplicate); before 4, exports merge."""
    from dirigent_langfuse.receiver.render import render_all
    from dirigent_langfuse.receiver.store import Store

    def span(start: int, **attrs: str) -> Dict[str, Any]:
        return {"traceId": "ab" * 16, "spanId": "cd" * 8, "name": "tool", "startTimeUnixNano": str(start),
                "endTimeUnixNano": str(start + 10**9),
                "attributes": [{"key": k.replace("_", "."), "value": {"stringValue": v}} for k, v in attrs.items()]}

    def export(one: Dict[str, Any]) -> None:
        body = {"resourceSpans": [{"scopeSpans": [{"spans": [one]}]}]}
        assert requests.post(r.url + "/api/public/otel/v1/traces", json=body, auth=AUTH, timeout=5).status_code == 200

    db = str(tmp_path / "lf.db")
    with Receiver(db=db, version=version) as r:
        t0 = 1764061200 * 10**9
        export(span(t0, langfuse_observation_input="in", langfuse_observation_level="WARNING"))
        export(span(t0, langfuse_observation_output="out"))  # the same row, exported again
        rows = r.store.observations()
        if version.startswith("4"):
            (row,) = rows
            assert row.get("input") is None and row["output"] == "out" and row["level"] == "DEFAULT"  # replaced whole
        else:
            (row,) = rows
            assert (row["input"], row["output"]) == ("in", "out")  # merged
        export(span(t0 + 5 * 10**9, langfuse_observation_output="late"))  # another start
        rows = r.store.observations()
        if version.startswith("4"):
            assert len(rows) == 2 and rows[1]["duplicateOf"] == "cd" * 8
            assert r.store.counters()["duplicates"] == 1
        else:
            assert len(rows) == 1 and rows[0]["output"] == "late" and rows[0]["startTime"].endswith("00:00.000Z")
    shown = render_all(Store(db))  # `show` reads the database as the receiver kept it
    assert ("⚠ duplicate row of " + "cd" * 8 in shown) is version.startswith("4")
