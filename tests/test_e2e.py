"""End to end over loopback: 8 producer threads × 1,000 events, every item delivered exactly once."""

from __future__ import annotations

import threading

import pytest

from dirigent_langfuse import OutcomeStatus

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
