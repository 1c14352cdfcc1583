import threading

import pytest

from dirigent_langfuse import (
    Health,
    HealthTracker,
    OutcomeStatus,
    StreamError,
    StreamOutcome,
    StreamScope,
    StreamStats,
    streams,
)

from .helpers import created


def test_seed_drift_one_failure_degrades_five_make_unavailable_one_success_heals():
    health = HealthTracker()
    assert health.state() is Health.HEALTHY
    assert health.failure() is Health.DEGRADED
    for _ in range(3):
        assert health.failure() is Health.DEGRADED
    assert health.failure() is Health.UNAVAILABLE
    assert health.success() is Health.HEALTHY
    assert health.consecutive_failures == 0


def test_thresholds_are_configurable_and_checked():
    health = HealthTracker(degraded_after=2, unavailable_after=3)
    assert health.failure() is Health.HEALTHY
    assert health.failure() is Health.DEGRADED
    assert health.failure() is Health.UNAVAILABLE
    with pytest.raises(ValueError):
        HealthTracker(degraded_after=3, unavailable_after=2)


def test_health_tracker_is_thread_safe():
    health = HealthTracker(unavailable_after=10_000_000)
    go = threading.Event()

    def hammer():
        go.wait()
        for _ in range(5000):
            health.failure()

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join()
    assert health.consecutive_failures == 40_000


def test_outcomes():
    assert StreamOutcome.accepted().status is OutcomeStatus.ACCEPTED
    failed = StreamOutcome.failed(StreamError.OVERFLOW, "full")
    assert failed.error is StreamError.OVERFLOW and not failed.ok
    assert StreamOutcome.skipped("x").ok
    assert {e.name for e in StreamError} == {"TRANSPORT", "STATUS", "OVERFLOW", "CLOSED", "INVALID", "DROPPED"}


def test_scope_matches():
    event = created(connector="conn-A")
    assert StreamScope().matches(event)
    assert StreamScope(kind="connector", connector_uid="conn-A").matches(event)
    assert not StreamScope(kind="connector", connector_uid="conn-B").matches(event)


def test_stats_invariant_fields_and_dict():
    stats = StreamStats(items_accepted=5, items_delivered=3, items_pending=1, dropped={"status_400": 1})
    assert stats.items_dropped == 1
    assert stats.items_accepted == stats.items_delivered + stats.items_dropped + stats.items_pending
    assert stats.as_dict()["health"] == "healthy"


def test_contract_names_importable_from_streams_module():
    for name in ("SessionStream", "StreamOutcome", "StreamError", "Health", "HealthTracker", "StreamScope",
                 "StreamSpec", "load_stream_specs", "StreamFactory", "StreamFactoryRegistry", "StreamSet"):
        assert getattr(streams, name) is not None
