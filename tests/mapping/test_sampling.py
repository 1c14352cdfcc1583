"""Sampling: whole sessions kept or left out, the same answer everywhere, every event counted."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest

from dirigent_langfuse import ConfigError, LangfuseConfig, OutcomeStatus
from dirigent_langfuse.mapping.sampling import sampled_in

from ..helpers import completed, created, ended, started, stream, tool_call, tool_update
from ..test_e2e import first_ten_unbound


def session(scroll: str) -> list:
    return [created(scroll, t=0), started("m1", scroll, t=1), tool_call("c1", scroll, t=1.1),
            tool_update("c1", "completed", scroll, t=1.2), completed("m1", scroll, t=2), ended(scroll, t=3)]


@pytest.mark.parametrize("rate", [0.0, 0.05, 0.3, 0.5, 0.9, 1.0])
def test_the_kept_share_follows_the_rate_for_uuid_and_other_scroll_ids(rate):
    names = [f"scroll-{n}" for n in range(10_000)]
    uuids = [str(uuid.uuid5(uuid.NAMESPACE_URL, name)) for name in names]  # fixed: the test cannot flake
    for ids in (names, uuids):
        share = sum(sampled_in(i, rate) for i in ids) / len(ids)
        assert abs(share - rate) < 0.02, (rate, share)


def test_the_answer_depends_on_the_session_only():
    assert [sampled_in(f"s{n}", 0.5) for n in range(200)] == [sampled_in(f"s{n}", 0.5) for n in range(200)]
    kept_low = {n for n in range(2000) if sampled_in(f"s{n}", 0.2)}
    kept_high = {n for n in range(2000) if sampled_in(f"s{n}", 0.6)}
    assert kept_low <= kept_high  # raising the rate only adds sessions


@pytest.mark.parametrize("transport", ["ingestion", "otel"])
def test_sessions_arrive_whole_or_not_at_all_and_every_event_is_counted(receiver, transport, no_secrets_logged):
    s = stream(receiver.url, transport=transport, sample_rate=0.5, flush_interval=0.02)
    scrolls = [f"scroll-{n}" for n in range(40)]
    outcomes = Counter()
    for scroll in scrolls:
        for event in session(scroll):
            outcome = s.on_event(event)
            outcomes[outcome.status] += 1
            if not sampled_in(scroll, 0.5):
                assert outcome.status is OutcomeStatus.SKIPPED and "sampled out" in outcome.detail
    assert s.shutdown(10).status is OutcomeStatus.DELIVERED
    kept = [c for c in scrolls if sampled_in(c, 0.5)]
    assert 0 < len(kept) < len(scrolls)
    stats = s.stats()
    assert stats.events_sampled_out == 6 * (len(scrolls) - len(kept)) == outcomes[OutcomeStatus.SKIPPED]
    assert stats.events_skipped == 0 and stats.items_accepted == stats.items_delivered and not stats.dropped
    traces = receiver.store.traces()
    assert len(traces) == len(kept)
    per_trace = Counter(o["traceId"] for o in receiver.store.observations())
    assert set(per_trace.values()) == {2 if transport == "ingestion" else 3}  # every kept session whole


def test_events_held_for_a_late_bind_follow_their_session_s_answer(receiver):
    early, late = first_ten_unbound()
    rate = 0.5
    assert not sampled_in("scroll-late", rate), "the fixture's scroll must be one that is left out"
    s = stream(receiver.url, sample_rate=rate)
    for event in early:
        s.on_event(event)
    assert s.stats().events_held == 10
    for event in late:
        assert s.on_event(event).status is OutcomeStatus.SKIPPED
    assert s.shutdown(10).ok
    stats = s.stats()
    assert stats.events_held == 0 and stats.events_sampled_out == len(early) + len(late)
    assert stats.items_accepted == 0 and receiver.store.traces() == []


@pytest.mark.parametrize("value", [1.5, -0.1, True, "half", None])
def test_a_sample_rate_outside_0_to_1_is_a_config_error_naming_it(value):
    with pytest.raises(ConfigError) as info:
        LangfuseConfig(host="http://x", public_key="pk", secret_key="sk", sample_rate=value)
    assert info.value.key == "sample_rate"


def test_langfuse_sample_rate_is_read_from_the_environment():
    base = {"host": "http://x", "public_key": "pk", "secret_key": "sk"}
    assert LangfuseConfig.from_params(base, env={"LANGFUSE_SAMPLE_RATE": "0.25"}).sample_rate == 0.25
    assert LangfuseConfig.from_params(dict(base, sample_rate=1), env={"LANGFUSE_SAMPLE_RATE": "0.25"}).sample_rate == 1
    with pytest.raises(ConfigError) as info:
        LangfuseConfig.from_params(base, env={"LANGFUSE_SAMPLE_RATE": "most"})
    assert info.value.key == "sample_rate" and "LANGFUSE_SAMPLE_RATE" in str(info.value)
