"""Randomised sessions against the receiver's faults, with fixed seeds (so a failure replays).

Each seed draws a transport, a mix of features (late binds, streamed chunks, plans, odd and
oversized payloads, a tool call's end raced before its start, payloads the host changes after
`on_event`, a mask, sampling, several producer threads) and a schedule of transient faults, then
checks what must hold whatever the mix: every accepted item delivered or counted, nothing pending
after shutdown, nothing duplicated, no bug in the worker, no unexpected error logged, every
session that was kept arrived as a trace, named, nothing the host changed later shows, and over
OTel an ended session leaves nothing incomplete. A second test restarts a stream on its spool
after a shutdown during an outage; a third upgrades Langfuse from v3 to v4 under an `auto` stream
at a random point, and checks that nothing is lost. They found seven bugs, each now with a test of its own
(tests/wire/test_encoding.py, receiver/test_receiver.py, test_stream.py, test_faults.py, wire/test_otlp.py,
delivery/test_spool.py); `RANDOM_SEEDS=1000 python -m pytest tests/test_random.py` searches wider.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from datetime import datetime, timezone
from typing import Any, Dict, List

import pytest

from dirigent_langfuse import LangfuseStream, OutcomeStatus
from dirigent_langfuse.mapping.ids import otel_trace_id
from dirigent_langfuse.mapping.items import maps
from dirigent_langfuse.mapping.sampling import sampled_in
from dirigent_langfuse.receiver.faults import Fault
from dirigent_langfuse.receiver.server import Receiver

from .helpers import bound, completed, config, created, ended, started, tool_call, tool_update, update

SEEDS = range(int(os.environ.get("RANDOM_SEEDS", "40")))  # RANDOM_SEEDS=1000 to search wider
KNOWN = {"otel_rejected"}  # the only drop a transient fault may cause (a span fault: OTLP rejects, no retry)


def scrub(data: Any) -> Any:
    if isinstance(data, str):
        return "[masked]"
    if isinstance(data, dict):
        return {k: scrub(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [scrub(v) for v in data]
    return data


def broken(data: Any) -> Any:
    raise RuntimeError("mask failed")


def odd(rng: random.Random) -> Any:
    return rng.choice([
        {"text": "plain"},
        {"set": {1, 2}, "bytes": b"\x00\xff", "when": datetime(2026, 1, 1, tzinfo=timezone.utc)},
        "lone surrogate \ud800 here",
        {"deep": [[[[{"x": [1, 2, {"y": None}]}]]]]},
        "x" * rng.choice([10, 100_000]),
        [1, 2.5, True, None, float("inf")],
    ])


def one_session(rng: random.Random, n: int) -> List[Any]:
    scroll, native = f"r{n}", f"native-{n}"
    late = rng.random() < 0.3  # the first events arrive before the scroll is bound
    binding = rng.randint(1, 4) if late else 0
    t = 0.0
    events: List[Any] = []
    bound_yet = not late

    def sid() -> Any:
        return scroll if bound_yet else None

    def bind() -> None:
        nonlocal bound_yet
        events.append(bound(scroll, native=native, t=t))
        bound_yet = True

    def add(make: Any, *args: Any, **kw: Any) -> None:
        nonlocal t
        t += rng.uniform(0.001, 0.5)
        if not bound_yet and len(events) == binding:
            bind()
        events.append(make(*args, native=native, t=t, **kw))

    add(lambda native, t: created(sid(), native=native, t=t, metadata={"n": n}))
    for m in range(rng.randint(0, 4)):
        add(lambda native, t, m=m: started(f"m{m}", sid(), native=native, t=t, input=odd(rng)))
        for c in range(rng.randint(0, 3)):
            kind = rng.choice(["agent_message_chunk", "agent_thought_chunk"])
            add(lambda native, t, kind=kind, c=c: update(
                {"sessionUpdate": kind, "content": {"type": "text", "text": f"chunk {c} "}}, sid(), native=native, t=t))
        for k in range(rng.randint(0, 3)):
            call = f"{scroll}-m{m}-t{k}"
            add(lambda native, t, call=call: tool_call(call, sid(), native=native, t=t, rawInput=odd(rng)))
            status = rng.choice(["completed", "failed", "completed"])
            add(lambda native, t, call=call, status=status: tool_update(call, status, sid(), native=native, t=t,
                                                                        rawOutput=odd(rng)))
            if rng.random() < 0.1 and events[-2].scroll_id and events[-1].scroll_id:
                events[-2], events[-1] = events[-1], events[-2]  # two host threads raced: the end came first
        if rng.random() < 0.2:
            add(lambda native, t: update({"sessionUpdate": "plan", "entries": [
                {"content": "next", "priority": "low", "status": "pending"}]}, sid(), native=native, t=t))
        if rng.random() < 0.2:  # a kind we skip, and an update whose tool_call never came
            add(lambda native, t: update({"sessionUpdate": "current_mode_update", "currentModeId": "x"}, sid(),
                                         native=native, t=t))
            add(lambda native, t, m=m: tool_update(f"{scroll}-orphan-{m}", "completed", sid(), native=native, t=t))
        output = rng.choice([None, "done", odd(rng)])
        add(lambda native, t, m=m, output=output: completed(f"m{m}", sid(), native=native, t=t, output=output,
                                                            cost_usd=rng.choice([None, 0.0012])))
    if not bound_yet:  # a session too short to reach its bind still gets bound
        bind()
    if rng.random() < 0.8:  # some sessions never end: their observations close at shutdown
        add(lambda native, t: ended(sid(), native=native, t=t))
        if rng.random() < 0.15:  # the host replays the session (same events, same ids)
            events.extend([e for e in events if e.scroll_id])
    return events


MUTATED = "changed-after-on_event"


def change_payloads(event: Any) -> None:
    """What a host does to the containers it passed once `on_event` returned."""
    payloads = [getattr(event, "input", None), getattr(event, "output", None), getattr(event, "metadata", None)]
    update = getattr(event, "update", None)
    if isinstance(update, dict):
        payloads += [update.get("rawInput"), update.get("rawOutput")]
    for value in payloads:
        if isinstance(value, list):
            value.append(MUTATED)
        elif isinstance(value, dict):
            value[MUTATED] = MUTATED


def faults(rng: random.Random) -> List[Fault]:
    pool = [
        Fault.status(503, times=rng.randint(1, 3)),
        Fault.status(429, retry_after=0),
        Fault.status(502),
        Fault.reset(),
        Fault.page(),
        Fault.partial(500, every=rng.randint(2, 5)),
        Fault.slow(0.05),
        Fault.trickle(0.3),  # (the test's read timeout is 1 s with it: each costs that much)
    ]
    return rng.sample(pool, rng.randint(0, 4))


@pytest.mark.parametrize("seed", SEEDS)
def test_random_sessions_and_faults_keep_every_promise(seed, caplog):
    rng = random.Random(seed)
    transport = rng.choice(["ingestion", "otel", "auto"])
    version = rng.choice(["3.120.0", "4.2.0"])  # what the receiver says it is, for "auto"
    if transport == "ingestion":  # v4 refuses the legacy API's events (the receiver does too)
        version = "3.120.0"
    mask = rng.choice([None, None, scrub, broken])
    rate = rng.choice([1.0, 1.0, 0.5])
    knobs: Dict[str, Any] = dict(
        transport=transport, sample_rate=rate, batch_size=rng.choice([1, 4, 32]), max_inflight=rng.choice([1, 2, 3]),
        max_item_bytes=rng.choice([64_000, 1_000_000]), flush_interval=0.02, backoff_base=0.001, backoff_max=0.002,
        retry_backoff_max=0.05, connect_timeout=0.5, read_timeout=2.0,
    )
    sessions = [one_session(rng, n) for n in range(rng.randint(1, 6))]
    threads = rng.randint(1, 3)
    with Receiver(version=version) as receiver:
        chosen = faults(rng)
        receiver.faults.add(*chosen)
        if any(f.kind == "trickle" for f in chosen):
            knobs["read_timeout"] = 1.0
        stream = LangfuseStream(config(receiver.url, **knobs), name=f"seed{seed}", mask=mask)
        lanes: List[List[Any]] = [[] for _ in range(threads)]
        for n, events in enumerate(sessions):
            lanes[n % threads].append(events)
        errors: List[BaseException] = []

        once = {id(e) for events in sessions for e in events if sum(x is e for x in events) == 1}

        def produce(lane: List[List[Any]]) -> None:
            local = random.Random(seed * 100 + len(lane))
            cursors = [0] * len(lane)
            try:
                while any(c < len(e) for c, e in zip(cursors, lane)):  # interleave this lane's sessions
                    i = local.choice([i for i, e in enumerate(lane) if cursors[i] < len(e)])
                    event = lane[i][cursors[i]]
                    outcome = stream.on_event(event)
                    assert outcome.status is not OutcomeStatus.FAILED, outcome  # no overflow, no bad event here
                    if id(event) in once:
                        change_payloads(event)  # the host's next turn: Langfuse must not see it
                    cursors[i] += 1
            except BaseException as exc:  # re-raised below, on the test's thread
                errors.append(exc)

        workers = [threading.Thread(target=produce, args=(lane,)) for lane in lanes]
        done = threading.Event()

        def flusher() -> None:  # a host that flushes now and then, from another thread
            while not done.wait(0.01):
                stream.flush(0.05)

        extra = [threading.Thread(target=flusher)] if rng.random() < 0.3 else []
        for w in workers + extra:
            w.start()
        for w in workers:
            w.join(60)
        done.set()
        for w in extra:
            w.join(10)
        assert not errors, errors
        outcome = stream.shutdown(20)
        stats = stream.stats()
        what = dict(seed=seed, transport=transport, outcome=outcome.detail, stats=stats.as_dict())
        assert stats.items_pending == 0, what
        assert stats.items_accepted == stats.items_delivered + sum(stats.dropped.values()), what
        assert set(stats.dropped) <= KNOWN, what
        assert outcome.ok == (not stats.dropped), what  # shutdown's word covers the stream's whole life
        if stats.dropped:
            assert "dropped" in outcome.detail and (stats.last_error or ""), what
        counters = receiver.store.counters()
        assert counters.get("duplicates", 0) == 0, what
        if transport == "auto" and stats.items_accepted:  # (with nothing to send it never asks)
            assert stats.transport == ("ingestion" if version.startswith("3.") else "otel"), what
        if stats.transport == "ingestion":
            # Each delivery counted landed; a replayed item lands again and Langfuse keeps it once. (A
            # replay can put one envelope id twice in a batch: when a 207 refuses one of the two, both
            # are re-sent, so the receiver may see one landing more than was counted, never one less.)
            landed = receiver.store.envelope_count() + counters.get("resent", 0)
            assert receiver.store.envelope_count() <= stats.items_delivered <= landed, what
        kept = {f"r{n}" for n in range(len(sessions)) if sampled_in(f"r{n}", rate)}
        # every event of a session left out, but those skipped before their session is known (an
        # unbound event that maps to nothing)
        left_out = [e for n, events in enumerate(sessions) if f"r{n}" not in kept for e in events]
        assert stats.events_sampled_out == sum(1 for e in left_out if e.scroll_id or maps(e)), what
        if not stats.dropped:
            traces = receiver.store.traces()
            assert len(traces) == len(kept), (what, traces)
            nameless = [t for t in traces if not t.get("name")]
            story = {n: [(type(e).__name__, e.scroll_id) for e in events] for n, events in enumerate(sessions)}
            assert not nameless, (what, nameless, story)  # every trace named, whatever the order
        unexpected = [r.getMessage() for r in caplog.records
                      if r.name.startswith("dirigent_langfuse") and r.levelno >= logging.ERROR
                      and "mask function raised" not in r.getMessage()]
        assert not unexpected, (what, unexpected)
        if mask is scrub:
            assert "chunk 0" not in str(receiver.store.observations())
        shown = str(receiver.store.observations()) + str(receiver.store.traces())
        assert MUTATED not in shown, what  # payloads as they were at on_event
        if stats.transport == "otel" and not stats.dropped:  # an ended session leaves nothing incomplete
            ended_traces = {otel_trace_id(f"r{n}") for n, events in enumerate(sessions)
                            if any(type(e).__name__ == "SessionEnded" for e in events)}
            incomplete = [o for o in receiver.store.observations()
                          if o.get("traceId") in ended_traces and (o.get("metadata") or {}).get("incomplete") == "true"]
            assert not incomplete, (what, incomplete)


@pytest.mark.parametrize("seed", range(int(os.environ.get("RANDOM_SEEDS", "40")) // 4))
def test_random_restarts_with_a_spool_deliver_everything_once(seed, tmp_path):
    """A stream shuts down while Langfuse is down (its deadline short), leaving records in the
    spool; the next start (same spool, same name) sends them once Langfuse is back. Across both,
    every accepted item is delivered once or counted."""
    rng = random.Random(10_000 + seed)
    transport = rng.choice(["ingestion", "otel"])
    spool = str(tmp_path / "spool.db")
    knobs: Dict[str, Any] = dict(
        transport=transport, spool_path=spool, batch_size=rng.choice([1, 4, 32]), max_inflight=rng.choice([1, 2]),
        flush_interval=0.02, backoff_base=0.001, backoff_max=0.002, retry_backoff_max=0.05,
        connect_timeout=0.5, read_timeout=2.0,
    )
    sessions = [one_session(rng, n) for n in range(rng.randint(1, 4))]  # replays too: a row per record
    with Receiver() as receiver:
        first = LangfuseStream(config(receiver.url, **knobs), name="svc")
        up_to = rng.randint(0, sum(len(s) for s in sessions))
        events = [e for s in sessions for e in s]
        for event in events[:up_to]:  # some go through while Langfuse is up
            first.on_event(event)
        first.flush(5)
        receiver.faults.add(Fault.status(503, seconds=60))  # then it goes down for good
        for event in events[up_to:]:
            first.on_event(event)
        first.shutdown(rng.choice([0.05, 0.3]))
        for thread in list(first._worker.state.threads):  # past its deadline, the worker still counts and spools
            thread.join(30)
        a = first.stats()
        receiver.faults.clear()
        second = LangfuseStream(config(receiver.url, **knobs), name="svc")
        assert second.shutdown(20).ok
        b = second.stats()
        what = dict(seed=seed, transport=transport, first=a.as_dict(), second=b.as_dict())
        # what the first left undelivered and undropped was in the spool, and the second sent it all
        assert a.items_pending == 0, what  # after shutdown() the counts add up: nothing is left pending
        assert b.items_accepted == a.dropped.get("spooled", 0) == b.items_delivered, what
        assert set(a.dropped) <= {"shutdown", "spooled"}, what  # lost: only what never reached the spool (the queue)
        assert second._worker.spool.count() == 0, what
        assert receiver.store.counters().get("duplicates", 0) == 0, what
        if transport == "ingestion":
            landed = receiver.store.envelope_count() + receiver.store.counters().get("resent", 0)
            assert receiver.store.envelope_count() <= a.items_delivered + b.items_delivered <= landed, what


@pytest.mark.parametrize("seed", range(int(os.environ.get("RANDOM_SEEDS", "40")) // 4))
def test_random_sessions_across_an_upgrade_to_v4_lose_nothing(seed):
    """An `auto` stream meets Langfuse v3, which is upgraded to v4 at a random point of the
    sessions (down for a while, or not; with faults). v4 refuses the ingestion API's events;
    whatever had been encoded for ingestion is sent again as spans: every accepted item is
    delivered, none dropped, nothing left pending."""
    rng = random.Random(20_000 + seed)
    knobs: Dict[str, Any] = dict(
        transport="auto", batch_size=rng.choice([1, 4, 32]), max_inflight=rng.choice([1, 2, 3]),
        flush_interval=0.02, backoff_base=0.001, backoff_max=0.002, retry_backoff_max=0.05,
        connect_timeout=0.5, read_timeout=2.0,
    )
    events = [e for n in range(rng.randint(1, 5)) for e in one_session(rng, n)]
    cut = rng.randint(0, len(events))
    with Receiver(version="3.120.0") as receiver:
        receiver.faults.add(*faults(rng))
        stream = LangfuseStream(config(receiver.url, **knobs), name=f"up{seed}")
        for event in events[:cut]:
            stream.on_event(event)
        if rng.random() < 0.5:
            stream.flush(2)
        down = rng.random() < 0.5
        if down:
            receiver.pause()
        receiver.version = "4.2.0"
        for event in events[cut:]:
            stream.on_event(event)
        if down:
            stream.flush(0.2)  # encoded for ingestion while Langfuse is down
            receiver.resume()
        outcome = stream.shutdown(20)
        stats = stream.stats()
        what = dict(seed=seed, cut=cut, down=down, outcome=outcome.detail, stats=stats.as_dict())
        assert stats.items_pending == 0, what
        assert set(stats.dropped) <= {"otel_rejected"}, what  # (a span fault may reject some)
        assert stats.items_accepted == stats.items_delivered + sum(stats.dropped.values()), what
        assert receiver.store.counters().get("duplicates", 0) == 0, what


def hostile(rng: random.Random, depth: int = 0) -> Any:
    """A payload value of any kind a host may hand over, those whose own code raises among them."""
    import decimal
    import uuid

    from .helpers import HostileText, LenRaises, Unreadable, UnreadableList

    pick = rng.randint(0, 17 if depth < 2 else 12)
    leaves = [None, "", "text", 5, -1.5, float("nan"), True, 10 ** 5000, HostileText(), decimal.Decimal("1.1"),
              uuid.UUID(int=7), b"\xff", {1, 2}]
    if pick < len(leaves):
        return leaves[pick]
    return [lambda: [hostile(rng, depth + 1) for _ in range(3)],
            lambda: {rng.choice(["a", 1, None, HostileText(), (1, 2)]): hostile(rng, depth + 1) for _ in range(3)},
            lambda: Unreadable(a=1), lambda: LenRaises([1]), lambda: UnreadableList([1])][pick - len(leaves)]()


@pytest.mark.parametrize("seed", range(int(os.environ.get("RANDOM_SEEDS", "40")) // 10))
@pytest.mark.parametrize("transport", ["ingestion", "otel"])
def test_random_events_with_hostile_payloads_never_fail_the_host_and_every_item_is_accounted_for(seed, transport, caplog):
    """Random events, in random order, bound and not, whose payloads include values whose own code
    raises, numbers Python cannot write and titles that are not text. The fuzzing that found the
    payload bugs of 2026-11-30 (b0c58bd, 34465aa), kept: `on_event` never raises, the host's objects
    are never changed, nothing is logged at ERROR but the encoder's own report, and every item
    accepted is delivered (or held unbound at the end, and counted)."""
    rng = random.Random(30_000 + seed)
    with Receiver(version="3.120.0" if transport == "ingestion" else "4.2.0") as receiver:
        stream = LangfuseStream(config(receiver.url, transport=transport, flush_interval=0.02, max_item_bytes=20_000),
                                name=f"hostile{seed}")
        metas = []
        for n in range(120):
            scroll = rng.choice(["h1", "h2", None])
            kw = dict(scroll=scroll, native=rng.choice(["n1", "n2"]))
            pick = rng.randint(0, 6)
            if pick == 0:
                metas.append(hostile(rng))
                event = created(**kw, metadata=metas[-1] if isinstance(metas[-1], dict) else {"m": metas[-1]})
            elif pick == 1:
                event = started(rng.choice(["m1", "m2"]), **kw, input=hostile(rng), model_parameters={"p": hostile(rng)})
            elif pick == 2:
                event = completed(rng.choice(["m1", "m2"]), **kw, output=hostile(rng))
            elif pick in (3, 4):
                make = tool_call if pick == 3 else (lambda i, **k: tool_update(i, rng.choice(["completed", "failed"]), **k))
                event = make(rng.choice(["t1", "t2"]), **kw, title=hostile(rng), rawInput=hostile(rng),
                             rawOutput=hostile(rng), content=hostile(rng), kind=hostile(rng))
            elif pick == 5:
                event = update({"sessionUpdate": rng.choice(["plan", "agent_message_chunk", "weird"]),
                                "entries": hostile(rng), "content": {"type": "text", "text": hostile(rng)}}, scroll)
            else:
                event = ended(**kw)
            outcome = stream.on_event(event)
            assert outcome.status is not OutcomeStatus.FAILED, (seed, n, outcome)
        outcome = stream.shutdown(10)
        stats = stream.stats()
    what = dict(seed=seed, outcome=outcome.detail, stats=stats.as_dict())
    assert stats.items_pending == 0 and set(stats.dropped) <= {"unbound_at_shutdown"}, what
    assert stats.items_accepted == stats.items_delivered + sum(stats.dropped.values()), what
    for meta in metas:  # the host's own objects, as they were
        if isinstance(meta, dict) and type(meta) is dict:
            assert "connector_id" not in meta, what
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR
              and "could not encode" not in r.getMessage()]
    assert not errors, (what, errors)
