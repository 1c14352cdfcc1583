"""The delivery worker: a bounded queue in front of one daemon thread that owns all network I/O.
This module is the caller's side (`submit`, `flush`, `shutdown`, `counts`) and fork safety; the
thread's loop is `loop.py`, its steps `preparing.py` and `sending.py`, the spool's start and end
`spooling.py`, and what they all share `state.py`.

Promises:
- `submit` never blocks on the network and never waits for the thread: it appends to a bounded
  deque under a lock the worker only holds for O(1) steps; a full queue refuses (the caller counts).
- Every item submitted ends in exactly one of: delivered, dropped with a reason, or pending
  (queued, in the outbox, in flight, or open in the OTel transport). `counts()` shows all four.
- Records wait in the outbox (the retry buffer) until Langfuse took them. A failed request puts
  its records back at the front and backs off (capped exponential, with jitter, at least what a
  429 asked); while UNAVAILABLE one small probe request goes first. Only a full outbox drops,
  oldest first.
- `flush` and `shutdown` are timed waits on a condition: they can never hang. The locks are
  re-entrant: a signal handler runs on the main thread between two bytecodes, maybe inside one of
  our critical sections, and may call the stream; `inside()` tells the stream so (see stream.py).
- Fork safety: a forked child gets fresh locks (`os.register_at_fork`), an empty queue and its
  own thread on first use. Before a fork, the parent waits (at most `fork_wait`) until no thread
  of ours is inside a step, and keeps them out until the fork returns: a thread writing a log
  line at the instant of a fork leaves that handler's stream locked forever in the child (a
  CPython limitation), and the child's first log line, ours or the host's, would hang on it.
"""


from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from ..config import LangfuseConfig
from ..contracts import HealthTracker, daemon
from . import loop
from .accounts import Accounts
from .forks import Forks
from .state import State, log

__all__ = ["Worker", "FlushResult"]

_forks = Forks("_before_fork", "_after_fork_in_parent", "_after_fork")


class FlushResult:
    """`dropped`: the items dropped (by reason, `queue_full` aside) since the flush began, or for
    a shutdown in the stream's whole life: what the caller was told ACCEPTED and did not arrive."""

    __slots__ = ("ok", "timed_out", "pending", "error", "dropped", "open")

    def __init__(
        self, ok: bool, timed_out: bool, pending: int, error: Optional[str], dropped: Optional[Dict[str, int]] = None,
        open: Tuple[int, int] = (0, 0),
    ) -> None:
        self.ok = ok
        self.timed_out = timed_out
        self.pending = pending
        self.error = error
        self.dropped = dropped or {}
        self.open = open  # (observations still open over OTel, the items folded into them): a flush's


class Worker:
    """Queue → prepare (encode) → outbox → send, on one daemon thread per process."""

    def __init__(
        self,
        config: LangfuseConfig,
        transport: Any,
        health: HealthTracker,
        *,
        name: str = "langfuse",
        spool: Any = None,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = random.random,
    ) -> None:
        self.state = State(config, transport, health, name, spool, clock, random)
        _forks.add(self)
        if spool is not None:
            self._start()  # re-send what an earlier process left, without waiting for an event

    @property
    def spool(self) -> Any:
        return self.state.spool

    @property
    def accounts(self) -> Accounts:
        return self.state.accounts

    @property
    def pending(self) -> int:
        return self.state.accounts.pending

    @property
    def last_error_kind(self) -> Optional[str]:
        return self.state.accounts.last_error_kind

    # -- forks ------------------------------------------------------------------------------------

    def _before_fork(self) -> None:
        """In the forking thread: wait (at most `fork_wait`) for the steps in progress to end, then
        hold the lock through the fork so that no step starts. Past the bound, fork anyway."""
        s = self.state
        wait = s.config.fork_wait
        deadline = time.monotonic() + wait
        if not (s.lock.acquire(True, wait) if wait > 0 else s.lock.acquire(False)):
            return
        s.forking = True
        s.forked_mid_step = False
        while s.stepping:
            left = deadline - time.monotonic()
            if left <= 0:
                s.forked_mid_step = True  # logged once the lock is free: never log holding it
                break
            s.done.wait(left)

    def _after_fork_in_parent(self) -> None:
        s = self.state
        if s.forking:
            s.forking = False
            s.work.notify_all()
            s.lock.release()
            if s.forked_mid_step:
                log.debug("stream %r: forked while a step was still in progress", s.name)

    def _after_fork(self) -> None:
        # In the child: the parent's items are the parent's to deliver; start clean.
        s = self.state
        s.reset()
        s.health._reset_after_fork()
        reset = getattr(s.transport, "reset", None)
        if reset is not None:
            reset()
        if s.spool is not None:
            # The same file under an owner of our own: the parent's records stay the parent's; a
            # sibling killed before us left orphans, which our start takes over.
            s.spool = s.spool.forked()

    # -- caller side ------------------------------------------------------------------------------

    def submit(self, items: Sequence[Dict[str, Any]]) -> bool:
        """Queue `items`; False (and counted as dropped, `queue_full`) when the queue is full."""
        n = len(items)
        s = self.state
        with s.lock:
            if s.closing:
                return False
            s.accounts.accepted += n
            queue = s.queue
            if len(queue) + n > s.config.max_queue_items:
                s.accounts.dropped["queue_full"] += n
                full = True
            else:
                before = len(queue) + len(s.outbox.records)
                if not queue:
                    s.queue_since = s.clock()
                queue.extend(items)
                full = False
                if before < s.pace.batch_limit <= before + n:  # a batch just became ready
                    s.work.notify_all()
        if full:
            s.throttled(
                "queue_full", logging.WARNING,
                "stream %r: queue full (%d items); dropping new items", s.name, s.config.max_queue_items,
            )
            return False
        if not s.main_looping:
            self._start()
        return True

    def _start(self) -> None:
        """The worker thread, and `max_inflight - 1` sender threads that only send (all daemons).
        Where no thread may start (Python 3.12 refuses new threads once the interpreter exits: a
        host's own exit hook), none runs: what is queued waits for `shutdown()`, which then works
        on the caller's thread."""
        s = self.state
        with s.lock:
            # (`main_looping`, not the thread's `is_alive()`: `submit` asks on every event)
            if s.main_looping or s.stopped:
                return
            started = []
            for role in ["main"] + ["sender"] * (s.config.max_inflight - 1):
                thread = daemon(loop.run, f"dirigent-langfuse[{s.name}]:{role}", s, role)
                if thread is None:
                    break
                started.append(thread)  # (it waits for this lock before its first step)
                s.alive += 1
            s.threads = started
            s.main_looping = bool(started)  # (the thread clears it on its way out, under this lock)
        if not started:  # (asked again at each event: said once a minute)
            s.throttled("no_thread", logging.WARNING, "stream %r: cannot start the worker thread (the interpreter "
                        "is exiting?); what is queued is sent by shutdown()", s.name)

    def inside(self) -> bool:
        """True when this thread cannot wait for the worker: it is already inside one of the
        worker's critical sections (a signal handler interrupted it and called the stream), or it
        is one of the worker's own threads (the host's `mask`, or a logging handler, called the
        stream from there). Waiting would only spend the timeout: the step that waits is one the
        worker needs to finish first."""
        s = self.state
        return s.lock._is_owned() or threading.current_thread() in s.threads  # type: ignore[attr-defined]

    def join(self, timeout: float) -> bool:
        """Wait (at most `timeout`) for the threads to end after `shutdown`; True if they did."""
        s = self.state
        deadline = s.clock() + timeout
        for thread in list(s.threads):
            thread.join(min(max(0.0, deadline - s.clock()), threading.TIMEOUT_MAX))  # an inf timeout
        return not any(t.is_alive() for t in s.threads)

    def flush(self, timeout: float) -> FlushResult:
        """Wait until everything queued so far was attempted at least once since this call.

        A batch waiting out a backoff is tried once more at once. Returns within `timeout`.
        """
        s, accounts = self.state, self.state.accounts
        deadline = s.clock() + timeout
        if self.inside():
            return FlushResult(False, False, self.pending, "flush() was called from inside the stream (a signal handler, "
                               "a mask, a log handler?), where it cannot wait")
        if not s.main_looping:
            self._start()
            if not s.main_looping and not s.stopped:  # no thread may start (the interpreter is exiting)
                return FlushResult(False, False, self.pending, "no worker thread can start (the interpreter is "
                                   "exiting?): shutdown() sends what is queued")
        with s.lock:
            target = accounts.accepted - accounts.dropped.get("queue_full", 0)
            # What the spool held at start counts as accepted before this call, loaded or not yet.
            unloaded = s.spool is not None and s.spool_found is None
            failures = accounts.failed_requests
            refusals = accounts.refusing_requests
            drops = dict(accounts.dropped)
            s.flush_requests += 1
            s.force = True
            s.work.notify_all()
            try:
                while True:
                    attempted = accounts.failed_requests > failures or accounts.refusing_requests > refusals
                    if unloaded and s.spool_found is not None:
                        unloaded = False
                        target += s.spool_found
                    idle = not s.busy and s.inflight == 0
                    done = not unloaded and accounts.processed >= target and (not s.outbox.records or attempted)
                    if idle and (done or (attempted and s.unchosen)):
                        break
                    left = deadline - s.clock()
                    if left <= 0 or s.stopped:
                        return FlushResult(False, True, self.pending, accounts.last_error)
                    s.done.wait(min(left, 0.5))
            finally:
                s.flush_requests -= 1
            dropped = accounts.drops_since(drops)
            ok = not attempted and not dropped and not s.outbox.records
            open = (s.transport.open_count(), s.ask("open_items", 0))  # (the worker is idle: under our lock)
            return FlushResult(ok, False, self.pending, None if ok else accounts.last_error, dropped, open)

    def shutdown(self, timeout: float) -> FlushResult:
        """Deliver what can be delivered before `timeout`; drop (counted) or spool the rest."""
        s, accounts = self.state, self.state.accounts
        deadline = s.clock() + timeout
        with s.lock:
            s.closing = True
            s.force = True
            if s.deadline is None or deadline < s.deadline:
                s.deadline = deadline
            s.work.notify_all()
            running = s.main_looping
            if not running:
                s.alive += 1
        if not running:
            loop.run(s, "main")  # no thread (never started, or forked away): finish inline, bounded by the deadline
        else:
            self.join(max(0.0, deadline - s.clock()) + 0.05)
        with s.lock:
            s.stopped = True
            timed_out = any(t.is_alive() for t in s.threads)
            if timed_out:
                settled = accounts.settle(len(s.queue), s.spool is not None)
                s.queue.clear()  # past the deadline no step takes it any more
            else:
                settled = None
            dropped = accounts.drops_since({})  # the whole life: the last word on what was accepted
            ok = self.pending == 0 and not dropped and not timed_out
            result = FlushResult(ok, timed_out, self.pending, None if ok else accounts.last_error, dropped)
        if settled:
            log.warning("stream %r: shutdown deadline reached with a request or a step in progress; %d items "
                        "counted as not delivered (shutdown)%s", s.name, settled[0],
                        f", {settled[1]} as left in the spool for the next start (spooled)" if settled[1] else "")
        return result

    def counts(self) -> Dict[str, Any]:
        s = self.state
        with s.lock:
            return dict(s.accounts.counts(), queued=len(s.queue), outbox=len(s.outbox.records))
