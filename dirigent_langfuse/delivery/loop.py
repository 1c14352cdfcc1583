"""The worker's threads: a short loop that asks the schedule for its next step, does it, and
hands what came of it to the parts that own it.

Promises:
- One main thread encodes (`preparing`), in order; every thread may send (`sending`), at most
  `Pace.allowed()` requests at once. Between two steps a thread gives up the GIL, so that the
  host's threads never wait a whole switch interval behind us.
- Items are encoded in chunks, not one by one as they trickle in: once a batch is ready, the
  oldest item has waited `flush_interval`, or `flush()`/`shutdown()` waits for them.
- A step that raises (a bug of ours) never ends the thread: its items are counted as dropped
  (`internal_error`) and the loop goes on.
- Past the shutdown's deadline no step starts; the last thread out counts what is left
  (`spooling.finish`) and hands the spool to the next start.
- No step starts while a fork is under way (the forking thread holds the lock until it returns).
"""

from __future__ import annotations

import time
from typing import Any, List, Optional, Tuple

from ..contracts import Health
from . import preparing, sending, spooling
from .records import Record
from .state import State, log

__all__ = ["run"]


def yield_gil() -> None:
    """Give the GIL to any thread waiting for it. The worker holds it at most one step at a stretch
    (encoding one batch, or building one request) instead of a whole switch interval (5 ms)."""
    time.sleep(0)


def run(s: State, role: str = "main") -> None:
    """A thread's life (or, with no thread, `shutdown()`'s work on the caller's thread)."""
    try:
        if role == "main" and s.spool is not None and not s.spool_loaded:
            s.spool_loaded = True
            with s.step():
                spooling.load(s)
        while True:
            step = next_step(s, role)
            if step is None:
                break
            kind, payload = step
            yield_gil()  # let the host's threads run between steps: their latency waits on the GIL
            try:
                if kind == "prepare":
                    preparing.prepare(s, payload)
                elif kind == "rewire":
                    preparing.rewire(s, payload)
                else:
                    sending.send(s, payload)
            except Exception:  # never let a bug kill delivery: count and go on
                log.exception("stream %r: unexpected error in the worker", s.name)
                _lost(s, kind, payload)
            finally:
                s.leave()
    finally:
        with s.lock:
            s.alive -= 1
            if role == "main":
                s.main_looping = False
            last = s.alive <= 0
        if last:  # the last thread out counts what is left
            try:
                with s.step():
                    spooling.finish(s)
            finally:
                if s.spool is not None and s.closing:
                    # What is left is the next start's as soon as the worker ends, in this
                    # process too (also when the shutdown timed out before that).
                    s.spool.release()


def _lost(s: State, kind: str, payload: Any) -> None:
    """A step raised: what it held is counted as dropped, and the schedule may go on."""
    with s.lock:
        if kind == "send":
            s.landed(payload)
            s.accounts.dropped["internal_error"] += sum(r.weight for r in payload)
        elif kind == "rewire":
            s.busy = False
            s.accounts.dropped["internal_error"] += sum(r.weight for r in payload)
        else:
            s.busy = False
            s.accounts.dropped["internal_error"] += len(payload or ())
            s.accounts.processed += len(payload or ())
        s.wake()


def next_step(s: State, role: str = "main") -> Optional[Tuple[str, Any]]:
    """The next thing to do: ("prepare", items), ("rewire", records), ("send", records) or None to
    stop. Only the main thread prepares (OTel folding needs the items in order); any thread may
    send. The step is counted in `stepping` (a fork waits for it) until `State.leave`."""
    main = role == "main"
    config, pace = s.config, s.pace
    with s.lock:
        while True:
            if s.forking:  # held by the forking thread until the fork returns
                s.work.wait()
                continue
            now = s.clock()
            closing = s.closing
            if closing and s.deadline is not None and now >= s.deadline:
                return None
            wake_for_due: Optional[float] = None
            if main and s.rewire:  # older than anything queued: folded first
                records, s.rewire = s.rewire, []
                return _begin(s, "rewire", records)
            queued = len(s.queue) if main else 0
            waiting = queued and s.unchosen and now < pace.prepare_due and not (closing or s.force)
            if queued and not waiting:
                # Encode in chunks, not item by item as they trickle in: only once a batch is
                # ready, the oldest item has waited flush_interval, or someone waits for it.
                since = s.queue_since if s.queue_since is not None else now
                if (
                    closing
                    or s.force
                    or s.flush_requests > 0
                    or queued + len(s.outbox.records) >= pace.batch_limit
                    or now >= since + config.flush_interval
                ):
                    take = min(queued, pace.batch_limit)
                    popleft = s.queue.popleft
                    items = [popleft() for _ in range(take)]
                    if not s.queue:
                        s.queue_since = None
                    return _begin(s, "prepare", items)
            if main and not closing:  # (closing: sent with all that is open, below)
                due_in = s.ask("due_in", None)  # over OTel: an end that waited for its start must go
                if due_in is not None:
                    if due_in <= 0:
                        return _begin(s, "prepare", [])
                    wake_for_due = now + due_in
            if main and s.spool_waits() and (closing or s.force or now >= pace.prepare_due):
                # The spool is loaded once a transport is chosen: ask again, even with no new event.
                return _begin(s, "prepare", [])
            if main and closing and s.transport.open_count():
                # Nothing more will end them: emit them now, so that what Langfuse cannot take
                # before the deadline reaches the spool (or is counted), with the rest.
                return _begin(s, "prepare", None)
            if not s.outbox.records:
                # (closing: the main thread took the queue above; it stays while a request is in
                # flight, whose records may come back to be encoded again: `rewire`)
                if closing and ((main and not s.inflight) or (not main and not s.busy)):
                    return None
                wake = now + config.flush_interval
            else:
                ready = (
                    closing
                    or s.flush_requests > 0
                    or pace.failures_in_row > 0
                    or len(s.outbox.records) >= pace.batch_limit
                )
                since = s.outbox.since if s.outbox.since is not None else now
                wake = max(pace.due, now if ready else since + config.flush_interval)
                if s.force:  # flush() or shutdown(): one attempt at once, then the backoff again
                    wake = now
                if wake <= now:
                    if s.inflight < pace.allowed() and s.outbox.ready():
                        s.force = False
                        s.inflight += 1
                        s.stepping += 1
                        return "send", _take_batch(s)
                    wake = now + config.flush_interval  # woken when a request ends
            if main and s.queue_since is not None:
                due = s.queue_since + config.flush_interval
                wake = min(wake, max(due, pace.prepare_due) if s.unchosen else due)
            if main and s.spool_waits():
                wake = min(wake, pace.prepare_due)
            if wake_for_due is not None:
                wake = min(wake, wake_for_due)
            if s.deadline is not None:
                wake = min(wake, s.deadline)
            s.work.wait(max(wake - now, 0.001))


def _begin(s: State, kind: str, payload: Any) -> Tuple[str, Any]:
    """The main thread takes an encoding step (lock held)."""
    s.busy = True
    s.stepping += 1
    return kind, payload


def _take_batch(s: State) -> List[Record]:
    probe = s.health.state() is Health.UNAVAILABLE  # one small request before the rest
    return s.outbox.take(1 if probe else s.pace.batch_limit, s.config.max_request_bytes - 64)
