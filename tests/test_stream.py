"""LangfuseStream with `responses`: batching, flushing, shutdown, health, overflow, late bind."""

import json
import logging
import threading
import time

import attrs
import pytest
import responses

from dirigent_langfuse import Health, LangfuseConfig, LangfuseStream, OutcomeStatus, StreamError
from dirigent_langfuse.mapping.items import bus_event_to_items

from .helpers import bound, completed, created, ended, started, tool_call, tool_update

HOST = "http://lf.test"
URL = HOST + "/api/public/ingestion"


def make(**kw):
    kw.setdefault("transport", "ingestion")
    kw.setdefault("atexit_flush", False)
    kw.setdefault("flush_interval", 0.05)
    return LangfuseStream(LangfuseConfig(host=HOST, public_key="pk", secret_key="sk-secret-value", **kw), name="t")


class Server:
    """A `responses` callback that records batches and answers 207 (or what it is told)."""

    def __init__(self, rs):
        self.batches = []
        self.answers = []  # statuses to answer first, in order
        self.down = False  # while set, every request gets 503
        self.refuse = set()  # envelope ids refused with a 500 inside every 207
        self.offered = []  # every envelope id posted, refused or not
        self.got = threading.Condition()
        rs.add_callback("POST", URL, callback=self)

    def __call__(self, request):
        batch = json.loads(request.body)["batch"]
        refused = [i for i in batch if i["id"] in self.refuse]
        batch = [i for i in batch if i["id"] not in self.refuse]
        with self.got:
            status = 503 if self.down else self.answers.pop(0) if self.answers else 207
            if status == 207:
                self.offered.extend(i["id"] for i in refused + batch)
                self.batches.append(batch)
            self.got.notify_all()
        if status != 207:
            return status, {}, json.dumps({"message": f"status {status}"})
        return 207, {}, json.dumps({"successes": [{"id": i["id"], "status": 201} for i in batch],
                                    "errors": [{"id": i["id"], "status": 500, "message": "boom"} for i in refused]})

    def wait_items(self, n, timeout=5.0):
        deadline = time.monotonic() + timeout
        with self.got:
            while sum(len(b) for b in self.batches) < n:
                left = deadline - time.monotonic()
                assert left > 0, f"only {sum(len(b) for b in self.batches)} of {n} items arrived"
                self.got.wait(left)


@pytest.fixture
def server():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rs:
        yield Server(rs)


def test_33_events_make_a_batch_of_32_then_1(server):
    stream = make(flush_interval=30)
    outcomes = [stream.on_event(started(f"m{i}")) for i in range(33)]
    assert all(o.status is OutcomeStatus.ACCEPTED for o in outcomes)
    server.wait_items(32)
    assert [len(b) for b in server.batches] == [32]  # eager: it did not wait 30 s
    assert stream.flush(5).status is OutcomeStatus.DELIVERED
    assert [len(b) for b in server.batches] == [32, 1]
    assert stream.shutdown(5).ok


def test_partial_batch_goes_after_the_flush_interval(server):
    stream = make(flush_interval=0.05)
    for i in range(3):
        stream.on_event(started(f"m{i}"))
    server.wait_items(3)  # no flush() called: the interval sent it
    assert [len(b) for b in server.batches] == [3]
    stream.shutdown(5)


def test_shutdown_drains_everything(server):
    stream = make(flush_interval=30)
    for i in range(70):
        stream.on_event(started(f"m{i}"))
    outcome = stream.shutdown(5)
    assert outcome.status is OutcomeStatus.DELIVERED, outcome
    assert sum(len(b) for b in server.batches) == 70
    stats = stream.stats()
    assert stats.items_delivered == 70 and stats.items_pending == 0 and not stats.dropped
    assert stream.on_event(started("late")).error is StreamError.CLOSED
    assert stream.shutdown(1).ok  # idempotent


def test_skipped_outcomes(server):
    stream = make(late_bind_buffer=False)
    assert stream.on_event(started("m1", scroll=None)).status is OutcomeStatus.SKIPPED
    assert stream.on_event(started("m1", scroll="")).status is OutcomeStatus.SKIPPED
    assert stream.on_event(bound()).status is OutcomeStatus.SKIPPED
    assert stream.on_event("not an event").error is StreamError.INVALID
    assert stream.stats().events_skipped == 3
    stream.shutdown(1)


@pytest.mark.parametrize("scroll", ["scroll-1", None])
def test_a_tool_call_without_its_id_fails_as_invalid_and_is_said(server, scroll, caplog):
    """ACP requires `toolCallId`; every tool span derives from it. Before, such an update was
    SKIPPED ("nothing to send"), or held unbound and then mapped to nothing, and nothing was logged:
    a host that dropped the id lost every tool call of its sessions without a word."""
    stream = make()
    bad = [tool_call(""), tool_call(None), tool_call(7), tool_update("", "completed")]
    for event in bad:
        event = attrs.evolve(event, scroll_id=scroll)
        outcome = stream.on_event(event)
        assert outcome.status is OutcomeStatus.FAILED and outcome.error is StreamError.INVALID, outcome
        assert "'update.toolCallId' must be a non-empty string" in outcome.detail
    warned = [r for r in caplog.records if "toolCallId" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelname == "WARNING"  # once, then once a minute with a count
    stats = stream.stats()
    assert stats.events_failed == 4 and stats.events_skipped == 0 and stats.events_held == 0
    assert stream.on_event(tool_call("t1", scroll=scroll)).status is not OutcomeStatus.FAILED
    stream.shutdown(1)


def test_an_invalid_tool_call_that_binds_the_session_releases_what_was_held_and_is_refused(server):
    stream = make()
    assert stream.on_event(started("m1", scroll=None)).detail.startswith("held")
    outcome = stream.on_event(tool_call(""))  # bound: it releases the held message
    assert outcome.status is OutcomeStatus.FAILED and "toolCallId" in outcome.detail
    assert stream.shutdown(5).ok
    stats = stream.stats()
    assert stats.items_delivered == 1 and stats.events_failed == 1 and stats.events_held == 0  # none left held


def test_health_drift_through_the_stream(server):
    stream = make(flush_interval=30, retry_backoff_max=60)
    server.answers = [503] * 4 * 5  # 5 sends, each 1 try + 3 HTTP retries
    stream.on_event(started("m1"))
    first = stream.flush(5)
    assert first.status is OutcomeStatus.FAILED and first.error is StreamError.STATUS
    assert stream.health() is Health.DEGRADED
    for _ in range(4):
        assert not stream.flush(5).ok
    assert stream.health() is Health.UNAVAILABLE
    assert stream.stats().items_pending == 1  # kept for retry, not thrown away
    assert stream.flush(5).status is OutcomeStatus.DELIVERED
    assert stream.health() is Health.HEALTHY
    assert stream.stats().items_delivered == 1
    stream.shutdown(1)


@pytest.mark.parametrize("status", [400, 413])
def test_4xx_is_final_and_reported_as_status(server, caplog, status):
    caplog.set_level(logging.WARNING, logger="dirigent_langfuse")
    stream = make(flush_interval=30)
    server.answers = [status]
    stream.on_event(started("m1"))
    outcome = stream.flush(5)
    assert outcome.error is StreamError.STATUS and str(status) in outcome.detail
    stats = stream.stats()
    assert stats.dropped == {f"status_{status}": 1} and stats.items_pending == 0
    assert len(server.batches) == 0
    stream.shutdown(1)
    # one refused request, one WARNING line (it also said "request failed ..., 0 items kept for retry")
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and f"Langfuse refused 1 item(s) for good (status_{status})" in lines[0], lines


def test_an_item_refused_in_every_207_is_dropped_after_max_retries(server, caplog):
    # A poison item (Langfuse answers 500 for it and only it, every time) must not be re-sent
    # for ever, nor keep the stream at one request at a time.
    stream = make(flush_interval=30, retry_backoff_max=0.01, max_retries=2)
    poison = started("poison")
    (item,) = bus_event_to_items(poison)
    server.refuse.add(item["id"])
    stream.on_event(poison)
    stream.on_event(started("fine"))
    for _ in range(10):
        if stream.stats().items_pending == 0:
            break
        stream.flush(5)
    assert server.offered.count(item["id"]) == 1 + 2  # sent, then re-sent max_retries times
    stats = stream.stats()
    assert stats.dropped == {"status_500": 1} and stats.items_delivered == 1 and stats.items_pending == 0
    stream.on_event(started("after"))
    assert stream.flush(5).status is OutcomeStatus.DELIVERED
    assert stream._worker.state.pace.allowed() == stream.config.max_inflight  # back to full speed
    final = stream.shutdown(5)  # (its threads joined: every log line is written)
    # the last word on the stream's life names what was accepted and never arrived
    assert final.status is OutcomeStatus.FAILED and final.error is StreamError.STATUS
    assert "1 item(s) dropped (status_500 1)" in final.detail and "boom" in final.detail
    assert stream.stats().last_error.startswith("Langfuse refused item(s) for good (status_500): boom")
    (line,) = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert "boom" in line and "3 times" in line


def test_flush_returns_once_a_refused_item_was_attempted(server):
    # Attempted, refused for now and kept for a retry after a backoff: flush() answers then, as
    # for a failed request, instead of waiting out its timeout.
    stream = make(flush_interval=30, retry_backoff_max=30)
    event = started("m1")
    server.refuse.add(bus_event_to_items(event)[0]["id"])
    stream.on_event(event)
    outcome = stream.flush(10)
    assert outcome.error is StreamError.STATUS and "timed out" not in outcome.detail, outcome
    assert "boom" in outcome.detail and stream.stats().items_pending == 1
    stream.shutdown(0.1)


def test_a_redirect_drops_the_batch_as_its_status_never_counts_it_delivered():
    with responses.RequestsMock() as rs:
        rs.add("POST", URL, status=301, headers={"Location": "https://lf.test/api/public/ingestion"})
        stream = make(flush_interval=30)
        stream.on_event(started("m1"))
        outcome = stream.flush(5)
        assert outcome.error is StreamError.STATUS and "https://lf.test" in outcome.detail
        stats = stream.stats()
        assert stats.items_delivered == 0 and stats.dropped == {"status_301": 1}
        stream.shutdown(1)


@pytest.mark.parametrize("garbage", [False, True])
def test_a_spool_that_cannot_be_opened_is_a_config_error_naming_it(tmp_path, garbage):
    from dirigent_langfuse import ConfigError

    path = tmp_path / "spool.db"
    if garbage:
        path.write_bytes(b"not a database at all " * 100)
    else:
        path = tmp_path / "no-such-dir" / "spool.db"
    with pytest.raises(ConfigError) as info:
        make(spool_path=str(path))
    assert info.value.key == "spool_path" and info.value.stream == "t" and str(path) in str(info.value)


def test_transport_error_reported_as_transport(server):
    stream = LangfuseStream(LangfuseConfig(host="http://127.0.0.1:9", public_key="p", secret_key="sk-secret-value",
                                           transport="ingestion", atexit_flush=False, backoff_base=0.001,
                                           connect_timeout=0.5), name="t")
    stream.on_event(started("m1"))
    outcome = stream.flush(5)
    assert outcome.error is StreamError.TRANSPORT, outcome
    assert stream.health() is Health.DEGRADED
    final = stream.shutdown(0.3)
    assert not final.ok and stream.stats().dropped == {"shutdown": 1}


def test_overflow_never_blocks_and_is_counted(server, caplog):
    stream = make(max_queue_items=5, flush_interval=30)
    start = stream._worker._start
    stream._worker._start = lambda: None  # keep the worker away so that the queue fills up
    outcomes = [stream.on_event(started(f"m{i}")) for i in range(8)]
    outcomes += [stream.on_event(started(f"x{i}")) for i in range(1000)]
    stream._worker._start = start
    assert caplog.text.count("queue full") == 1  # throttled: no log flood
    assert [o.status for o in outcomes].count(OutcomeStatus.ACCEPTED) == 5
    assert outcomes[-1].error is StreamError.OVERFLOW
    stats = stream.stats()
    assert stats.dropped == {"queue_full": 1003} and stats.events_failed == 1003
    stream.shutdown(5)
    assert stream.stats().items_delivered == 5


def test_late_bind_holds_then_releases_in_order(server):
    stream = make(flush_interval=30)
    unbound = [created(None), started("m1", None), tool_call("t1", None)]
    for event in unbound:
        outcome = stream.on_event(event)
        assert outcome.status is OutcomeStatus.ACCEPTED and "held" in outcome.detail
    assert stream.stats().events_held == 3 and not server.batches
    assert stream.on_event(bound("scroll-9")).status is OutcomeStatus.ACCEPTED
    stream.on_event(completed("m1", scroll="scroll-9"))
    assert stream.flush(5).ok
    (batch,) = server.batches
    assert [i["type"] for i in batch] == ["trace-create", "generation-create", "span-create", "generation-update"]
    assert all((i["body"].get("traceId") or i["body"]["id"]) == "scroll-9" for i in batch)
    assert batch[2]["body"]["parentObservationId"] == batch[1]["body"]["id"]
    stream.shutdown(1)


def test_late_bind_any_event_of_the_key_binds(server):
    stream = make(flush_interval=30)
    stream.on_event(started("m1", None))
    stream.on_event(completed("m1", "scroll-2"))
    stream.flush(5)
    assert [i["type"] for i in server.batches[0]] == ["generation-create", "generation-update"]
    stream.shutdown(1)


def test_unbound_at_shutdown_counted(server):
    stream = make()
    stream.on_event(started("m1", None))
    outcome = stream.shutdown(2)
    assert not outcome.ok and "never bound" in outcome.detail
    assert outcome.error is StreamError.DROPPED  # not TRANSPORT: nothing failed to reach Langfuse
    assert stream.stats().events_dropped == {"unbound_at_shutdown": 1}


def test_late_bind_overflow_is_counted_and_said_exactly_and_never_evicts_the_start(server, caplog):
    caplog.set_level(logging.WARNING, logger="dirigent_langfuse")
    stream = make(pending_max_events_per_key=3)
    stream.on_event(created(None))
    for i in range(5):  # 6 events for 3 places: 3 dropped, the oldest messages, never the start
        assert stream.on_event(started(f"m{i}", None, t=i)).status is OutcomeStatus.ACCEPTED
    assert stream.stats().events_dropped == {"pending_overflow": 3}
    lines = [r.getMessage() for r in caplog.records if "unbound event" in r.getMessage()]
    assert len(lines) == 1 and "dropped 1 unbound event(s) (pending_overflow" in lines[0]  # at once, then a minute's quiet
    flushed = stream.flush(5)
    assert flushed.error is StreamError.DROPPED and "3 accepted event(s)" in flushed.detail
    assert "pending_overflow 3" in flushed.detail
    assert stream.flush(5).status is OutcomeStatus.DELIVERED  # said once: since the last answer
    stream.on_event(bound())
    outcome = stream.shutdown(5)
    assert outcome.status is OutcomeStatus.DELIVERED, outcome
    bodies = [item["body"] for batch in server.batches for item in batch if item["type"] == "trace-create"]
    assert any(body.get("name") == "a session" for body in bodies)  # the start was kept: the trace has its name
    generations = {item["body"]["id"] for batch in server.batches for item in batch if item["type"] == "generation-create"}
    assert len(generations) == 2  # m3 and m4, the newest
    lines = [r.getMessage() for r in caplog.records if "unbound event" in r.getMessage()]
    assert len(lines) == 2 and "dropped 2 unbound event(s)" in lines[1] and "3 in all" in lines[1]  # the rest, at shutdown


def test_a_shutdown_after_held_events_were_dropped_is_not_a_bare_delivered(server):
    stream = make(pending_max_events_per_key=1)
    stream.on_event(started("m1", None))
    stream.on_event(started("m2", None))  # m1 goes
    stream.on_event(bound())
    outcome = stream.shutdown(5)
    assert outcome.status is OutcomeStatus.FAILED and outcome.error is StreamError.DROPPED
    assert "1 accepted event(s)" in outcome.detail and "pending_overflow 1" in outcome.detail


def test_pending_overflow_and_expiry_are_counted(caplog):
    now = [0.0]
    stream = LangfuseStream(LangfuseConfig(host=HOST, public_key="p", secret_key="s", transport="ingestion",
                                           atexit_flush=False, pending_max_keys=2, pending_max_events_per_key=3,
                                           pending_ttl=60), name="t", clock=lambda: now[0])
    for i in range(5):
        stream.on_event(started(f"m{i}", None, native="a"))
    assert stream.stats().events_dropped == {"pending_overflow": 2}
    stream.on_event(started("x", None, native="b"))
    stream.on_event(started("y", None, native="c"))  # a third key evicts the oldest ("a", 3 events)
    assert stream.stats().events_dropped == {"pending_overflow": 2, "pending_overflow_keys": 3}
    now[0] = 61.0
    assert stream.stats().events_dropped["pending_expired"] == 2
    assert stream.stats().events_held == 0
    assert caplog.text.count("pending_overflow ") <= 1  # once per key, not per event
    stream.shutdown(0.5)


def test_on_event_never_raises_for_a_broken_mapping(server, monkeypatch):
    import dirigent_langfuse.stream as module

    monkeypatch.setattr(module, "bus_event_to_items", lambda e, s: 1 / 0)
    stream = make()
    outcome = stream.on_event(started("m1"))
    assert outcome.error is StreamError.INVALID and "ZeroDivisionError" in outcome.detail
    stream.shutdown(1)


def test_stats_and_repr_never_show_the_secret(server):
    stream = make()
    stream.on_event(started("m1"))
    stream.flush(5)
    assert "sk-secret-value" not in repr(stream) and "sk-secret-value" not in str(stream.stats().as_dict())
    stream.shutdown(1)


def test_flush_returns_within_its_timeout_when_the_worker_is_stuck(server):
    stream = make()
    release = threading.Event()
    original = stream.transport.send

    def stuck(records):
        release.wait(10)
        return original(records)

    stream.transport.send = stuck
    stream.on_event(started("m1"))
    began = time.monotonic()
    outcome = stream.flush(0.3)
    assert time.monotonic() - began < 2.0
    assert outcome.status is OutcomeStatus.FAILED and "timed out" in outcome.detail
    release.set()
    assert stream.shutdown(5).ok


def test_end_of_session_maps_to_trace_update(server):
    stream = make(flush_interval=30)
    stream.on_event(created())
    stream.on_event(ended())
    stream.flush(5)
    assert [i["type"] for i in server.batches[0]] == ["trace-create", "trace-create"]
    stream.shutdown(1)


def test_shutdown_against_a_dead_host_backs_off_instead_of_hammering(server):
    stream = LangfuseStream(LangfuseConfig(host="http://127.0.0.1:9", public_key="p", secret_key="sk-secret-value",
                                           transport="ingestion", atexit_flush=False, backoff_base=0.0,
                                           flush_interval=0.05, retry_backoff_max=0.2), name="t")
    stream.on_event(started("m1"))
    assert stream.flush(5).error is StreamError.TRANSPORT
    outcome = stream.shutdown(0.6)
    stats = stream.stats()
    assert not outcome.ok and stats.dropped == {"shutdown": 1}  # no internal error, nothing lost silently
    assert stats.requests <= 8  # one at once, then with backoff: 0.05, 0.1, 0.2, 0.2, ...


def test_two_requests_in_flight_while_healthy_one_when_not():
    """`max_inflight` requests at once while healthy (a second sender thread); one after a failure."""
    both = threading.Barrier(2, timeout=5)
    seen = []
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rs:
        def answer(request):
            batch = json.loads(request.body)["batch"]
            seen.append(len(batch))
            if len(seen) <= 2:
                both.wait()  # passes only if the first two requests are in flight together
            return 207, {}, json.dumps({"successes": [{"id": i["id"], "status": 201} for i in batch], "errors": []})

        rs.add_callback("POST", URL, callback=answer)
        stream = make(flush_interval=30, batch_size=4)
        # Both batches queued at once: the worker thread prepares whatever is queued before it
        # sends, so neither thread can be waiting at the barrier while the other has nothing ready.
        # (One event at a time, the worker may take the first batch's request itself.)
        items = [item for i in range(8) for item in bus_event_to_items(started(f"m{i}"))]
        assert stream._worker.submit(items)
        assert stream.flush(10).status is OutcomeStatus.DELIVERED
        assert seen[:2] == [4, 4] and not both.broken
        stream.shutdown(1)


def test_one_request_at_a_time_after_a_failure(server):
    stream = make(flush_interval=30, batch_size=2, retry_backoff_max=60)
    server.down = True  # every send fails, so no concurrent success can end the failure early
    for i in range(6):
        stream.on_event(started(f"m{i}"))
    assert not stream.flush(5).ok
    assert stream._worker.state.pace.allowed() == 1  # degraded: one request (a probe) at a time
    server.down = False
    assert stream.flush(5).ok and stream._worker.state.pace.allowed() == 2
    stream.shutdown(1)


def _fork_hooks_in_a_thread(worker, go_on):
    """Runs the parent's side of a fork (before, then after) in a thread, as `os.fork` would."""
    state = {"entered": threading.Event()}

    def run():
        worker._before_fork()
        state["stepping"], state["queued"] = worker.state.stepping, len(worker.state.queue)
        state["entered"].set()
        go_on.wait(10)
        worker._after_fork_in_parent()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, state


def _stream_sending(fork_wait):
    """A stream whose first request is in flight and held there until `unblock` is set."""
    stream = make(flush_interval=30, batch_size=1, fork_wait=fork_wait)
    inside, unblock = threading.Event(), threading.Event()
    send = stream.transport.send

    def held(records):
        inside.set()
        unblock.wait(10)
        return send(records)

    stream.transport.send = held
    stream.on_event(started("m1"))
    assert inside.wait(5)
    return stream, unblock


def test_a_fork_waits_for_the_step_in_progress_and_no_step_starts_before_it_returns(server):
    stream, unblock = _stream_sending(fork_wait=10)
    go_on = threading.Event()
    thread, state = _fork_hooks_in_a_thread(stream._worker, go_on)
    assert not state["entered"].wait(0.2)  # the fork waits for the request
    stream.on_event(started("m2"))  # queued, but no step may start while the fork waits
    unblock.set()
    assert state["entered"].wait(5)
    assert state["stepping"] == 0 and state["queued"] == 1
    go_on.set()
    thread.join(5)
    assert stream.flush(5).ok and stream.stats().items_delivered == 2
    stream.shutdown(1)


def test_a_fork_goes_ahead_after_fork_wait_when_a_step_does_not_end(server):
    stream, unblock = _stream_sending(fork_wait=0.1)
    go_on = threading.Event()
    thread, state = _fork_hooks_in_a_thread(stream._worker, go_on)
    assert state["entered"].wait(5)  # bounded: it did not wait for the stuck request
    assert state["stepping"] == 1
    go_on.set()
    thread.join(5)
    unblock.set()
    assert stream.flush(5).ok
    stream.shutdown(1)


@pytest.mark.parametrize("value", ["false", "0", "off", "No"])
def test_tracing_disabled_from_the_environment_sends_nothing_and_starts_nothing(receiver, tmp_path, value):
    from dirigent_langfuse.delivery.records import Record
    from dirigent_langfuse.delivery.spool import Spool

    spool_path = str(tmp_path / "spool.db")
    left = Spool(spool_path, "off")
    left.add([Record("k", b'{"id":"k"}', 1)], "ingestion")
    left.release()  # an earlier run's record: a disabled stream must not send it either
    params = {"host": receiver.url, "public_key": "pk-lf-local", "secret_key": "sk-lf-local", "transport": "ingestion",
              "spool_path": spool_path, "atexit_flush": False}
    cfg = LangfuseConfig.from_params(params, env={"LANGFUSE_TRACING_ENABLED": value})
    assert cfg.tracing_enabled is False
    stream = LangfuseStream(cfg, name="off")
    before = threading.active_count()
    for event in (created(), started("m1", t=1), completed("m1", t=2)):
        outcome = stream.on_event(event)
        assert outcome.status is OutcomeStatus.SKIPPED and "disabled" in outcome.detail
    assert threading.active_count() == before
    assert stream.shutdown(5).ok
    stats = stream.stats()
    assert stats.events_skipped == 3 and stats.items_accepted == 0 and stats.requests == 0
    assert receiver.store.counters().get("requests", 0) == 0


def test_tracing_enabled_from_the_environment_must_be_a_boolean():
    from dirigent_langfuse import ConfigError

    with pytest.raises(ConfigError) as info:
        LangfuseConfig.from_params({"host": "http://x", "public_key": "pk", "secret_key": "sk"},
                                   env={"LANGFUSE_TRACING_ENABLED": "maybe"})
    assert info.value.key == "tracing_enabled" and "LANGFUSE_TRACING_ENABLED" in str(info.value)
    assert LangfuseConfig.from_params({"host": "http://x", "public_key": "pk", "secret_key": "sk", "tracing_enabled": True},
                                      env={"LANGFUSE_TRACING_ENABLED": "false"}).tracing_enabled is True


class OneKeyAtATime:
    """A transport whose records are keyed by observation, as OTel spans are: it notes a request
    that carries a key another request in flight carries too. Its first request waits (at most
    2 s) for a second one to start."""

    name = "keyed"
    masker = None

    def __init__(self):
        self.lock = threading.Lock()
        self.flying = []
        self.overlaps = []
        self.sent = []
        self.second = threading.Event()

    def prepare(self, items, more=False):
        from dirigent_langfuse.delivery.records import Record

        return [Record(item["body"]["id"], json.dumps(item).encode()) for item in items]

    def open_count(self):
        return 0

    def close_open(self):
        return []

    def send(self, batch):
        from dirigent_langfuse.delivery.records import Report

        keys = [r.key for r in batch]
        with self.lock:
            self.overlaps.extend(k for k in keys if k in self.flying)
            self.flying.extend(keys)
            first = len(self.sent) == 0
            self.sent.append([json.loads(r.data)["type"] for r in batch])
            if not first:
                self.second.set()
        if first:
            self.second.wait(2)
        with self.lock:
            for k in keys:
                self.flying.remove(k)
        return Report(delivered=list(batch))


def test_two_versions_of_one_observation_are_never_in_flight_at_once():
    """With requests in flight side by side, a span sent again (completed by a start that came
    late, or replayed) could travel beside the request carrying its earlier version, and
    Langfuse keep whichever arrived last. A record now waits while its key is in flight."""
    transport = OneKeyAtATime()
    config = LangfuseConfig(host=HOST, public_key="p", secret_key="s", atexit_flush=False, batch_size=1,
                            max_inflight=2, flush_interval=0.01)
    stream = LangfuseStream(config, transport=transport)
    stream.on_event(started("m1"))
    stream.on_event(completed("m1", t=1))
    assert stream.shutdown(10).ok
    assert transport.overlaps == []
    assert transport.sent == [["generation-create"], ["generation-update"]]


def test_streams_made_and_dropped_leave_no_fork_hooks_behind(monkeypatch):
    """Fork hooks cannot be unregistered. Before, every stream registered four (its own and its
    worker's): a host that made a stream per request and dropped it piled them up for its whole
    life, and ran them all at every fork. The hooks are registered once, at import."""
    import gc
    import os
    import weakref

    from dirigent_langfuse.delivery import worker as worker_module

    registered = []
    monkeypatch.setattr(os, "register_at_fork", lambda **hooks: registered.append(hooks), raising=False)
    streams = [make(atexit_flush=False) for _ in range(3)]
    assert registered == []
    workers = [s._worker for s in streams]
    assert all(w in worker_module._forks._members for w in workers)  # still reset in a forked child
    for s in streams:
        s.shutdown(1)
    gone = [weakref.ref(w) for w in workers]
    del streams, workers, s
    gc.collect()
    assert [ref() for ref in gone] == [None, None, None]  # nothing kept for the hooks' sake


def test_a_disabled_stream_dropped_without_shutdown_is_collected():
    """Before, the exit held every stream until shutdown(), a disabled one too: a host that made
    a stream per request with LANGFUSE_TRACING_ENABLED=false (tests, development) kept them all.
    A disabled stream has nothing to deliver; an enabled one is still held until shutdown()."""
    import gc
    import weakref

    off = weakref.ref(make(tracing_enabled=False))
    on = make()
    held = weakref.ref(on)
    del on
    gc.collect()
    assert off() is None
    assert held() is not None  # what it queued would be lost at exit otherwise
    held().shutdown(1)


def test_a_transport_the_host_made_needs_only_the_four_methods(monkeypatch):
    """A transport given to the stream needs prepare, send, close_open and open_count. The OTel
    transport's later methods (what waits for its start, the open observations' state, how many
    items they hold) are asked for only where a transport has them: before, a flush() raised
    AttributeError into the host, and the worker thread died on its first step."""
    from dirigent_langfuse.delivery.records import Report

    died = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_value))

    class Minimal:
        name = "minimal"

        def __init__(self):
            self.sent = 0

        def prepare(self, items):
            from dirigent_langfuse.delivery.records import Record
            return [Record(item["id"], b"{}") for item in items]

        def send(self, records):
            self.sent += len(records)
            return Report(delivered=list(records))

        def close_open(self, now=None):
            return []

        def open_count(self):
            return 0

    transport = Minimal()
    config = LangfuseConfig(host=HOST, public_key="p", secret_key="s", atexit_flush=False, flush_interval=0.01)
    stream = LangfuseStream(config, transport=transport)
    stream.on_event(started("m1"))
    assert stream.flush(5).status is OutcomeStatus.DELIVERED
    stream.on_event(completed("m1", t=1))
    assert stream.shutdown(5).status is OutcomeStatus.DELIVERED
    assert transport.sent == 2 and died == []
