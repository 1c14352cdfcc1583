"""The worker's parts on their own: what a request's answer does (`sending`), when and how large
the next request is (`pace`), and what the loop's schedule hands out (`loop.next_step`). A fake
transport and an injected clock; no thread, no network."""

from __future__ import annotations

import logging
from typing import Any, Callable, List, Optional

import pytest

from dirigent_langfuse import LangfuseConfig
from dirigent_langfuse.contracts import Health, HealthTracker
from dirigent_langfuse.delivery import loop, sending
from dirigent_langfuse.delivery.records import Record, Report
from dirigent_langfuse.delivery.state import State
from dirigent_langfuse.errors import LangfuseStatusError, LangfuseTransportError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Transport:
    """Answers each `send` with what `answer(batch)` makes; remembers the batches."""

    name = "ingestion"

    def __init__(self, answer: Callable[[List[Record]], Report]) -> None:
        self.answer = answer
        self.sent: List[List[Record]] = []

    def send(self, batch: List[Record]) -> Report:
        self.sent.append(list(batch))
        return self.answer(batch)

    def prepare(self, items: List[Any]) -> List[Record]:
        return [Record(f"k{i}", b"{}") for i, _ in enumerate(items)]

    def close_open(self, now: float) -> List[Record]:
        return []

    def open_count(self) -> int:
        return 0


class Spool:
    def __init__(self) -> None:
        self.removed: List[str] = []

    def remove(self, records: List[Record]) -> None:
        self.removed += [r.key for r in records]


def state(answer: Callable[[List[Record]], Report], spool: Any = None, **config: Any) -> State:
    cfg = LangfuseConfig(host="http://127.0.0.1:1", public_key="pk-lf-1", secret_key="sk-secret-value",
                         atexit_flush=False, **config)
    return State(cfg, Transport(answer), HealthTracker(1, 3), "t", spool, Clock(), lambda: 0.5)


def records(n: int, size: int = 10) -> List[Record]:
    return [Record(f"r{i}", b"x" * size) for i in range(n)]


def in_flight(s: State, batch: List[Record]) -> List[Record]:
    """As the loop hands a batch out: taken from the retry buffer, one request in flight."""
    s.add_to_outbox(batch)
    s.inflight += 1
    return s.outbox.take(len(batch), 10**9)


def test_a_delivered_batch_is_counted_and_leaves_the_buffer_and_the_spool():
    spool = Spool()
    s = state(lambda batch: Report(delivered=list(batch), bytes_sent=123), spool)
    batch = in_flight(s, records(3))
    sending.send(s, batch)
    assert (s.accounts.delivered, s.accounts.requests, s.accounts.batches, s.accounts.bytes_sent) == (3, 1, 1, 123)
    assert not s.outbox.records and s.inflight == 0 and spool.removed == ["r0", "r1", "r2"]
    assert s.health.state() is Health.HEALTHY


def test_a_failed_request_keeps_its_records_in_front_and_backs_off(caplog):
    s = state(lambda batch: Report(error=LangfuseTransportError("connection refused")))
    batch = in_flight(s, records(2))
    s.add_to_outbox([Record("later", b"{}")])  # encoded while the request was in flight
    sending.send(s, batch)
    assert [r.key for r in s.outbox.records] == ["r0", "r1", "later"]  # back in front, in their order
    assert s.accounts.failed_requests == 1 and s.accounts.last_error_kind == "transport"
    assert s.pace.failures_in_row == 1 and s.pace.due > s.clock() and s.health.state() is Health.DEGRADED
    assert not s.accounts.dropped
    assert "request failed (transport), 2 items kept for retry" in caplog.text


def test_a_413_for_several_records_splits_the_batch_and_drops_nothing(caplog):
    caplog.set_level(logging.INFO)
    s = state(lambda batch: Report(error=LangfuseStatusError(413, "too large")))
    batch = in_flight(s, records(8))
    sending.send(s, batch)
    assert s.pace.batch_limit == 4 and len(s.outbox.records) == 8 and not s.accounts.dropped
    assert s.accounts.failed_requests == 0  # not a failure: the next request is smaller
    assert "413 for 8 items; splitting" in caplog.text


def test_a_413_for_one_record_drops_it_saying_the_limit_to_set(caplog):
    s = state(lambda batch: Report(error=LangfuseStatusError(413, "too large")), max_item_bytes=500_000)
    sending.send(s, in_flight(s, records(1, 2048)))
    assert s.accounts.dropped == {"status_413": 1} and not s.outbox.records
    assert "one item of 2,048 bytes" in s.accounts.last_error and "now 500,000" in s.accounts.last_error
    assert caplog.text.count("refused 1 item(s) for good (status_413)") == 1


def test_a_207_settles_each_record_on_its_own_and_says_each_message_once(caplog):
    def answer(batch: List[Record]) -> Report:
        return Report(delivered=batch[:2], retry=batch[2:3], refused=("status_500", "try later"),
                      dropped=[(batch[3], "status_400", "bad field"), (batch[4], "status_400", "bad field")])

    spool = Spool()
    s = state(answer, spool)
    sending.send(s, in_flight(s, records(5)))
    assert s.accounts.delivered == 2 and s.accounts.dropped == {"status_400": 2}
    assert [r.key for r in s.outbox.records] == ["r2"] and s.accounts.refusing_requests == 1
    assert s.accounts.last_error_kind == "status_500"
    s.outbox.drain()
    s.transport.answer = lambda batch: Report(dropped=[(r, "status_400", "bad field") for r in batch])
    sending.send(s, in_flight(s, records(5)[3:]))  # the same message again: not said again
    assert s.accounts.dropped == {"status_400": 4}
    assert caplog.text.count("Langfuse refused 2 item(s) for good (status_400): bad field") == 1
    assert sorted(spool.removed) == ["r0", "r1", "r3", "r3", "r4", "r4"]  # delivered and refused; not the retried


def test_records_not_sent_wait_to_be_encoded_again():
    s = state(lambda batch: Report(sent=False, rewire=list(batch)))
    batch = in_flight(s, records(2))
    sending.send(s, batch)
    assert s.rewire == batch and s.inflight == 0 and s.accounts.requests == 0


def test_a_429_makes_fewer_fuller_requests_until_a_calm_minute():
    s = state(lambda batch: Report(error=LangfuseStatusError(429, "slow down", retry_after=2.0)))
    sending.send(s, in_flight(s, records(2)))
    assert s.pace.batch_limit == 64 and s.pace.due >= s.clock() + 2.0
    s.transport.answer = lambda batch: Report(delivered=list(batch))
    s.clock.now += 30
    sending.send(s, in_flight(s, records(1)))
    assert s.pace.batch_limit == 64  # not yet a minute after the 429
    s.clock.now += 31
    sending.send(s, in_flight(s, records(1)))
    assert s.pace.batch_limit == 32 and s.accounts.last_error_kind is None


@pytest.mark.parametrize("failures, expected", [(1, 0.1875), (3, 0.75), (30, 22.5)])
def test_the_backoff_doubles_from_flush_interval_up_to_its_cap_with_jitter(failures, expected):
    s = state(lambda batch: Report(), flush_interval=0.25, retry_backoff_max=30.0)
    s.pace.failures_in_row = failures
    assert s.pace.backoff(None) == pytest.approx(expected)  # random 0.5: three quarters of the base
    assert s.pace.backoff(60.0) == 60.0  # at least what Langfuse asked


def test_the_schedule_encodes_a_full_batch_at_once_and_sends_it():
    s = state(lambda batch: Report())
    s.queue.extend({"n": i} for i in range(40))
    s.queue_since = s.clock()
    kind, items = loop.next_step(s)
    assert kind == "prepare" and len(items) == 32 and s.busy and s.stepping == 1
    s.busy, s.stepping = False, 0
    s.add_to_outbox(records(32))
    kind, batch = loop.next_step(s, "sender")  # a sender never encodes; a full batch goes
    assert kind == "send" and len(batch) == 32 and s.inflight == 1


def test_the_schedule_stops_at_the_shutdown_deadline():
    s = state(lambda batch: Report())
    s.queue.append({"n": 1})
    s.closing, s.deadline = True, s.clock() - 1
    assert loop.next_step(s) is None


def test_a_probe_goes_alone_while_langfuse_is_unavailable():
    s = state(lambda batch: Report())
    for _ in range(3):
        s.health.failure()
    s.add_to_outbox(records(10))
    s.force = True
    kind, batch = loop.next_step(s)
    assert kind == "send" and len(batch) == 1


def test_a_step_that_raises_is_counted_and_the_loop_goes_on(caplog):
    s = state(lambda batch: Report())
    s.transport.prepare = _raise  # type: ignore[method-assign]
    s.queue.extend({"n": i} for i in range(3))
    s.closing, s.deadline, s.alive, s.main_looping = True, s.clock() + 60, 1, True
    loop.run(s)
    assert s.accounts.dropped == {"internal_error": 3} and s.accounts.processed == 3 and not s.busy
    assert "unexpected error in the worker" in caplog.text


def _raise(items: Optional[List[Any]]) -> List[Record]:
    raise RuntimeError("a bug of ours")
