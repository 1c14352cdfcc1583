"""Masking: the host's `mask(data=...)` over inputs, outputs, metadata and status messages, on
the worker thread, over both transports; a mask that raises never lets the value through."""

from __future__ import annotations

import json
import logging
from typing import Any, List

import pytest

from dirigent_langfuse import ConfigError, LangfuseConfig, LangfuseStream, OutcomeStatus
from dirigent_langfuse.mapping.masking import FAILED, Masker

from ..helpers import completed, config, created, ended, started, tool_call, tool_update

SECRET = "sk-live-4c1d2e"
TRANSPORTS = ["ingestion", "otel"]


def scrub(data: Any) -> Any:
    """A mask as Langfuse's docs write one: recursive, strings rewritten."""
    if isinstance(data, str):
        return data.replace(SECRET, "[redacted]")
    if isinstance(data, dict):
        return {k: scrub(v) for k, v in data.items()}
    if isinstance(data, list):
        return [scrub(v) for v in data]
    return data


def broken(data: Any) -> Any:
    raise ValueError(f"cannot mask {data!r}")  # quotes the data: it must never reach a log


def session(scroll: str) -> List[Any]:
    return [
        created(scroll, t=0, metadata={"deploy_key": SECRET}),
        started("m1", scroll, t=1, input=[{"role": "user", "content": f"deploy with {SECRET}"}]),
        tool_call("c1", scroll, t=1.1, title="Run deploy", rawInput={"command": f"deploy --token {SECRET}"}),
        tool_update("c1", "failed", scroll, t=1.2, rawOutput={"stderr": f"bad token {SECRET}"}),
        completed("m1", scroll, t=2, output=f"I used {SECRET}", error=f"the key {SECRET} expired"),
        ended(scroll, t=3),
    ]


def everything(receiver: Any) -> str:
    return json.dumps([receiver.store.traces(), receiver.store.observations()], default=str)


def test_the_masker_masks_only_what_is_set_and_leaves_the_original_alone(caplog):
    body = {"name": "n", "input": {"k": SECRET}, "output": None, "metadata": {"m": SECRET}}
    masked = Masker(scrub).body(body)
    assert masked == {"name": "n", "input": {"k": "[redacted]"}, "output": None, "metadata": {"m": "[redacted]"}}
    assert body["input"] == {"k": SECRET}  # the host's object and the mapping's are untouched
    plain = {"name": "n", "startTime": "t"}
    assert Masker(broken).body(plain) is plain  # nothing to mask: no call, no copy
    masker = Masker(broken, "s")
    with caplog.at_level(logging.ERROR):
        assert masker.body(body) == {"name": "n", "input": FAILED, "output": None, "metadata": FAILED}
    assert masker.failures == 2
    text = caplog.text
    assert "ValueError" in text and SECRET not in text


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_nothing_masked_leaves_the_process_over_either_transport(receiver, transport, no_secrets_logged):
    stream = LangfuseStream(config(receiver.url, transport=transport, flush_interval=0.02), mask=scrub)
    for event in session("s1"):
        assert stream.on_event(event).status is OutcomeStatus.ACCEPTED
    assert stream.shutdown(10).status is OutcomeStatus.DELIVERED
    stored = everything(receiver)
    assert SECRET not in stored and "[redacted]" in stored
    assert "Run deploy" in stored  # names are not masked
    observations = receiver.store.observations()
    assert len(observations) == (2 if transport == "ingestion" else 3)  # OTel adds the session's root span
    assert all(o.get("endTime") for o in observations)
    assert stream.stats().mask_failures == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_mask_that_raises_sends_the_fallback_counts_and_logs_without_the_data(receiver, transport, caplog):
    stream = LangfuseStream(config(receiver.url, transport=transport, flush_interval=0.02), mask=broken)
    for event in session("s2"):
        stream.on_event(event)
    assert stream.shutdown(10).status is OutcomeStatus.DELIVERED
    stored = everything(receiver)
    assert SECRET not in stored and FAILED in stored
    stats = stream.stats()
    assert stats.mask_failures > 0 and stats.items_delivered == stats.items_accepted
    assert "ValueError" in caplog.text and SECRET not in caplog.text
    # the metadata shows the fallback too (over OTel it was dropped by Langfuse, and the receiver)
    (trace,) = receiver.store.traces()
    assert trace["metadata"] == {"metadata": FAILED}
    # the sessions still end as sessions: the transport reads its own fields, not the masked ones
    assert all(o.get("endTime") and "incomplete" not in json.dumps(o) for o in receiver.store.observations())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_metadata_a_mask_answers_as_a_string_shows_in_langfuse_the_same_over_either_transport(receiver, transport):
    """Langfuse's OTel endpoint drops `langfuse.*.metadata` that is not a JSON object, where its
    ingestion API keeps it as {"metadata": <text>}: over OTel a mask's "REDACTED" vanished."""

    def redact(data: Any) -> Any:
        return "REDACTED" if isinstance(data, dict) else data

    stream = LangfuseStream(config(receiver.url, transport=transport, flush_interval=0.02), mask=redact)
    for event in session("s5"):
        stream.on_event(event)
    assert stream.shutdown(10).status is OutcomeStatus.DELIVERED
    (trace,) = receiver.store.traces()
    assert trace["metadata"] == {"metadata": "REDACTED"}
    shown = [o["metadata"] for o in receiver.store.observations() if o.get("metadata") is not None]
    assert shown and all(m == {"metadata": "REDACTED"} for m in shown)


def test_over_otel_a_mask_that_answers_a_string_for_metadata_still_ends_the_session(receiver):
    stream = LangfuseStream(config(receiver.url, transport="otel", flush_interval=0.02), mask=lambda data: "REDACTED")
    for event in session("s3"):
        stream.on_event(event)
    assert stream.shutdown(10).status is OutcomeStatus.DELIVERED
    assert SECRET not in everything(receiver)
    observations = receiver.store.observations()
    assert len(observations) == 3  # the session's root span, the message and the tool call
    assert all("incomplete" not in json.dumps(o) for o in observations)


@pytest.mark.parametrize("answer", ["REDACTED", {"masked": True}, 42, None])
def test_masked_ingestion_items_are_still_valid_events(receiver, validate_item, answer):
    stream = LangfuseStream(config(receiver.url, transport="ingestion", flush_interval=0.02), mask=lambda data: answer)
    for event in session("s4"):
        stream.on_event(event)
    assert stream.shutdown(10).status is OutcomeStatus.DELIVERED
    items = receiver.store.items()
    assert items and SECRET not in json.dumps(items)
    for item in items:
        validate_item(item)


def test_mask_from_the_config_names_a_function(receiver):
    cfg = LangfuseConfig.from_params(
        {"host": receiver.url, "public_key": "pk-lf-local", "secret_key": "sk-lf-local",
         "transport": "ingestion", "mask": "tests.mapping.test_masking:scrub"}, env={})
    stream = LangfuseStream(cfg)
    for event in session("s5"):
        stream.on_event(event)
    assert stream.shutdown(10).ok
    assert SECRET not in everything(receiver)


@pytest.mark.parametrize("spec, problem", [
    ("no_colon", "package.module:function"),
    ("tests.mapping.test_masking", "package.module:function"),
    ("no.such.module:f", "cannot import"),
    ("tests.mapping.test_masking:nope", "cannot import"),
    ("tests.mapping.test_masking:SECRET", "not callable"),
    ("tests.mask_that_raises:scrub", "importing 'tests.mask_that_raises' raised ZeroDivisionError"),
    ("tests.mapping.test_masking:positional", "cannot be called as mask(data=value)"),
])
def test_a_mask_that_cannot_be_used_is_a_config_error_naming_it(spec, problem):
    with pytest.raises(ConfigError) as info:  # a bad form fails in the config, the rest when the stream is made
        LangfuseStream(LangfuseConfig(host="http://x", public_key="pk", secret_key="sk", mask=spec), name="s")
    assert info.value.key == "mask" and problem in str(info.value)


def positional(value: Any) -> Any:  # a mask written with another parameter name: every value would be FAILED
    return value


@pytest.mark.parametrize("mask", [positional, lambda a, b: a, len])
def test_a_mask_function_that_cannot_take_data_is_a_config_error_when_the_stream_is_made(mask):
    """Before, such a mask was taken, raised TypeError on every call, and every input and output
    reached Langfuse as FAILED: found in the logs of a deployed service, not when it started."""
    with pytest.raises(ConfigError) as info:
        LangfuseStream(LangfuseConfig(host="http://x", public_key="pk", secret_key="sk"), name="s", mask=mask)
    assert info.value.key == "mask" and info.value.stream == "s"
    assert "cannot be called as mask(data=value)" in str(info.value)
    for fits in (scrub, broken, lambda data: data, lambda *, data, **kw: data, lambda **kw: kw["data"]):
        LangfuseStream(LangfuseConfig(host="http://x", public_key="pk", secret_key="sk", tracing_enabled=False),
                       mask=fits)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_mask_that_changes_its_argument_never_changes_the_host_s_payload(receiver, transport):
    """The mask is given the stream's own copy of the payload, taken when the event was."""
    def in_place(data):
        if isinstance(data, dict) and "password" in data:
            data["password"] = "***"  # as a quick mask does
        return data

    secret = {"user": "ada", "password": "hunter2"}
    stream = LangfuseStream(config(receiver.url, transport=transport, flush_interval=30), mask=in_place)
    stream.on_event(started("m1", "scroll-mask", t=1, input=secret))
    stream.on_event(completed("m1", "scroll-mask", t=2, output="ok"))
    assert stream.shutdown(10).status is OutcomeStatus.DELIVERED
    assert secret == {"user": "ada", "password": "hunter2"}
    (generation,) = [o for o in receiver.store.observations() if o["type"] == "GENERATION"]
    assert generation["input"] == {"user": "ada", "password": "***"}


@pytest.mark.parametrize("call", ["flush", "shutdown"])
def test_a_mask_that_calls_flush_or_shutdown_never_waits_for_its_own_thread(receiver, call):
    """The mask runs on the stream's worker thread. Before, a flush() there waited its whole
    timeout for the worker (itself), and a shutdown() there raised 'cannot join current thread'."""
    answers: List[Any] = []
    stream: Any = None

    def mask(data):
        if not answers:
            answers.append(getattr(stream, call)(5))
        return data

    stream = LangfuseStream(config(receiver.url, flush_interval=30), mask=mask)
    stream.on_event(started("m1", "scroll-own", t=1, input="q"))
    stream.on_event(completed("m1", "scroll-own", t=2, output="a"))
    stream.flush(10)  # the worker encodes, and calls the mask
    final = stream.shutdown(10)
    (answer,) = answers
    assert answer.status is OutcomeStatus.FAILED and "cannot wait" in answer.detail, answer
    assert final.status is OutcomeStatus.DELIVERED, final
    assert stream.stats().mask_failures == 0
    assert len(receiver.store.observations()) == 1


def test_over_otel_a_mask_answering_a_mapping_that_cannot_be_read_costs_only_that_mapping(receiver_v4, caplog):
    """Before, the span of every observation went through the encoder's last fallback (an ERROR
    each), and the trace's metadata, written beside its name and user, cost every span of the
    session its trace attributes: the trace had no user or session in Langfuse."""
    from ..helpers import Unreadable

    def unreadable(*, data, **kwargs):
        return Unreadable(a=1) if isinstance(data, dict) else data

    stream = LangfuseStream(config(receiver_v4.url, transport="otel"), mask=unreadable)
    for event in session("s9"):
        stream.on_event(event)
    assert stream.shutdown(10).ok
    (trace,) = receiver_v4.store.traces()
    assert trace.get("name") == "a session" and trace.get("sessionId") == "native-1"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
