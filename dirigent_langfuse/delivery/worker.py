"""The delivery worker: a bounded queue in front of one daemon thread that owns all network I/O.

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

import collections
import contextlib
import logging
import os
import random
import threading
import time
import weakref
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Sequence, Tuple

from ..config import LangfuseConfig
from ..contracts import Health, HealthTracker, daemon
from ..errors import LangfuseError, LangfuseStatusError
from ..throttle import Throttled
from .accounts import Accounts
from .outbox import Outbox
from .pace import Pace
from .records import OPEN_WIRE, NotChosen, Record, Report, request_error

__all__ = ["Worker", "FlushResult"]

log = logging.getLogger(__name__)


def yield_gil() -> None:
    """Give the GIL to any thread waiting for it. The worker holds it at most one step at a stretch
    (encoding one batch, or building one request) instead of a whole switch interval (5 ms)."""
    time.sleep(0)


class Forks:
    """Fork hooks for every living object of a kind, registered once. Hooks cannot be
    unregistered: one set per stream would pile up (and all run at every fork) for the life of a
    host that makes streams and drops them. Objects are held weakly; the set's lock is held
    through the fork, so the child never finds it caught mid-change."""

    def __init__(self, before: str = "", after_in_parent: str = "", after_in_child: str = "") -> None:
        self._methods = (before, after_in_parent, after_in_child)
        self._members: "weakref.WeakSet[Any]" = weakref.WeakSet()
        self._lock = threading.RLock()  # re-entrant: a signal handler may make a stream inside add()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(before=self._before, after_in_parent=self._parent, after_in_child=self._child)

    def add(self, member: Any) -> None:
        with self._lock:
            self._members.add(member)

    def _call(self, which: int) -> None:
        name = self._methods[which]
        if not name:
            return
        for member in list(self._members):
            try:
                getattr(member, name)()
            except Exception:  # never log around a fork (see the module docstring); the others go on
                pass

    def _before(self) -> None:
        self._lock.acquire()
        self._call(0)

    def _parent(self) -> None:
        try:
            self._call(1)
        finally:
            self._lock.release()

    def _child(self) -> None:
        self._lock = threading.RLock()
        self._call(2)


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
        self.config = config
        self.transport = transport
        self.health = health
        self.name = name
        self.spool = spool
        self._clock = clock
        self._random = random
        self._throttled = Throttled(log)
        self._init_state()
        _forks.add(self)
        if spool is not None:
            self._spool_loaded = False
            self._start()  # re-send what an earlier process left, without waiting for an event

    # -- state ------------------------------------------------------------------------------------

    def _init_state(self) -> None:
        self._lock = threading.RLock()
        self._work = threading.Condition(self._lock)
        self._done = threading.Condition(self._lock)
        self._queue: Deque[Dict[str, Any]] = collections.deque()
        self._queue_since: Optional[float] = None  # when the oldest queued item arrived
        self._outbox = Outbox(self.config.max_buffer_items, self.config.max_buffer_bytes, lambda: self._clock())
        self._threads: List[threading.Thread] = []  # the worker thread first, then the senders
        self._alive = 0  # threads still running their loop
        self._main_looping = False  # the worker thread (the one that prepares) is in its loop
        self._inflight = 0  # requests being sent right now
        # Records Langfuse refused in a wire format it no longer takes (upgraded to v4 under an
        # "auto" stream): the main thread has the transport encode them again (`_rewire_step`).
        self._rewire: List[Record] = []
        self._closing = False
        self._deadline: Optional[float] = None
        self._stopped = False
        self._flush_requests = 0
        self._force = False
        self._busy = False
        self._stepping = 0  # threads of ours inside a step (encoding, sending, logging about it)
        self._forking = False  # a fork is under way: _before_fork holds the lock, no step may start
        self._forked_mid_step = False
        self._pace = Pace(self.config, self.health, self._random)
        self._seen_messages: Dict[str, int] = {}
        self.accounts = Accounts()
        # The items a spool held at start, once loaded (None until then): a flush() waits for them.
        self._spool_found: Optional[int] = None

    def _before_fork(self) -> None:
        """In the forking thread: wait (at most `fork_wait`) for the steps in progress to end, then
        hold the lock through the fork so that no step starts. Past the bound, fork anyway."""
        wait = self.config.fork_wait
        deadline = time.monotonic() + wait
        if not (self._lock.acquire(True, wait) if wait > 0 else self._lock.acquire(False)):
            return
        self._forking = True
        self._forked_mid_step = False
        while self._stepping:
            left = deadline - time.monotonic()
            if left <= 0:
                self._forked_mid_step = True  # logged once the lock is free: never log holding it
                break
            self._done.wait(left)

    def _after_fork_in_parent(self) -> None:
        if self._forking:
            self._forking = False
            self._work.notify_all()
            self._lock.release()
            if self._forked_mid_step:
                log.debug("stream %r: forked while a step was still in progress", self.name)

    @contextlib.contextmanager
    def _step(self) -> Iterator[None]:
        """A step that `_next_step` does not hand out (loading the spool, finishing)."""
        with self._lock:
            while self._forking:
                self._work.wait()
            self._stepping += 1
        try:
            yield
        finally:
            self._leave()

    def _leave(self) -> None:
        """A step ends (`_next_step` counted it in, or `_step`)."""
        with self._lock:
            self._stepping -= 1
            if self._forking and not self._stepping:
                self._done.notify_all()

    def _after_fork(self) -> None:
        # In the child: the parent's items are the parent's to deliver; start clean.
        self._init_state()
        self.health._reset_after_fork()
        reset = getattr(self.transport, "reset", None)
        if reset is not None:
            reset()
        if self.spool is not None:
            # The same file under an owner of our own: the parent's records stay the parent's; a
            # sibling killed before us left orphans, which our start takes over.
            self.spool = self.spool.forked()
            self._spool_loaded = False

    # -- caller side ------------------------------------------------------------------------------

    def submit(self, items: Sequence[Dict[str, Any]]) -> bool:
        """Queue `items`; False (and counted as dropped, `queue_full`) when the queue is full."""
        n = len(items)
        with self._lock:
            if self._closing:
                return False
            self.accounts.accepted += n
            if len(self._queue) + n > self.config.max_queue_items:
                self.accounts.dropped["queue_full"] += n
                full = True
            else:
                before = len(self._queue) + len(self._outbox.records)
                if not self._queue:
                    self._queue_since = self._clock()
                self._queue.extend(items)
                full = False
                if before < self._pace.batch_limit <= before + n:  # a batch just became ready
                    self._work.notify_all()
        if full:
            self._throttled(
                "queue_full", logging.WARNING,
                "stream %r: queue full (%d items); dropping new items", self.name, self.config.max_queue_items,
            )
            return False
        if not self._running():
            self._start()
        return True

    def _start(self) -> None:
        """The worker thread, and `max_inflight - 1` sender threads that only send (all daemons).
        Where no thread may start (Python 3.12 refuses new threads once the interpreter exits: a
        host's own exit hook), none runs: what is queued waits for `shutdown()`, which then works
        on the caller's thread."""
        with self._lock:
            if self._running():
                return
            if self._stopped:
                return
            started = []
            for role in ["main"] + ["sender"] * (self.config.max_inflight - 1):
                thread = daemon(self._run, f"dirigent-langfuse[{self.name}]:{role}", role)
                if thread is None:
                    break
                started.append(thread)  # (it waits for this lock before its first step)
                self._alive += 1
            self._threads = started
            self._main_looping = bool(started)  # (the thread clears it on its way out, under this lock)
        if not started:  # (asked again at each event: said once a minute)
            self._throttled("no_thread", logging.WARNING, "stream %r: cannot start the worker thread (the interpreter "
                            "is exiting?); what is queued is sent by shutdown()", self.name)

    def inside(self) -> bool:
        """True when this thread cannot wait for the worker: it is already inside one of the
        worker's critical sections (a signal handler interrupted it and called the stream), or it
        is one of the worker's own threads (the host's `mask`, or a logging handler, called the
        stream from there). Waiting would only spend the timeout: the step that waits is one the
        worker needs to finish first."""
        return self._lock._is_owned() or threading.current_thread() in self._threads  # type: ignore[attr-defined]

    def _running(self) -> bool:
        """True while the worker thread is in its loop in this process. A flag, not the thread's
        `is_alive()`: `submit` asks on every event."""
        return self._main_looping

    def join(self, timeout: float) -> bool:
        """Wait (at most `timeout`) for the threads to end after `shutdown`; True if they did."""
        deadline = self._clock() + timeout
        for thread in list(self._threads):
            thread.join(min(max(0.0, deadline - self._clock()), threading.TIMEOUT_MAX))  # an inf timeout
        return not any(t.is_alive() for t in self._threads)

    @property
    def pending(self) -> int:
        return self.accounts.pending

    @property
    def last_error_kind(self) -> Optional[str]:
        return self.accounts.last_error_kind

    def flush(self, timeout: float) -> FlushResult:
        """Wait until everything queued so far was attempted at least once since this call.

        A batch waiting out a backoff is tried once more at once. Returns within `timeout`.
        """
        deadline = self._clock() + timeout
        if self.inside():
            return FlushResult(False, False, self.pending, "flush() was called from inside the stream (a signal handler, "
                               "a mask, a log handler?), where it cannot wait")
        if not self._running():
            self._start()
            if not self._running() and not self._stopped:  # no thread may start (the interpreter is exiting)
                return FlushResult(False, False, self.pending, "no worker thread can start (the interpreter is "
                                   "exiting?): shutdown() sends what is queued")
        with self._lock:
            target = self.accounts.accepted - self.accounts.dropped.get("queue_full", 0)
            # What the spool held at start counts as accepted before this call, loaded or not yet.
            unloaded = self.spool is not None and self._spool_found is None
            failures = self.accounts.failed_requests
            refusals = self.accounts.refusing_requests
            drops = dict(self.accounts.dropped)
            self._flush_requests += 1
            self._force = True
            self._work.notify_all()
            try:
                while True:
                    attempted = self.accounts.failed_requests > failures or self.accounts.refusing_requests > refusals
                    if unloaded and self._spool_found is not None:
                        unloaded = False
                        target += self._spool_found
                    idle = not self._busy and self._inflight == 0
                    done = not unloaded and self.accounts.processed >= target and (not self._outbox.records or attempted)
                    if idle and (done or (attempted and self._unchosen)):
                        break
                    left = deadline - self._clock()
                    if left <= 0 or self._stopped:
                        return FlushResult(False, True, self.pending, self.accounts.last_error)
                    self._done.wait(min(left, 0.5))
            finally:
                self._flush_requests -= 1
            dropped = self.accounts.drops_since(drops)
            ok = not attempted and not dropped and not self._outbox.records
            open = (self.transport.open_count(), self._ask("open_items", 0))  # (the worker is idle: under our lock)
            return FlushResult(ok, False, self.pending, None if ok else self.accounts.last_error, dropped, open)

    def shutdown(self, timeout: float) -> FlushResult:
        """Deliver what can be delivered before `timeout`; drop (counted) or spool the rest."""
        deadline = self._clock() + timeout
        with self._lock:
            self._closing = True
            self._force = True
            if self._deadline is None or deadline < self._deadline:
                self._deadline = deadline
            self._work.notify_all()
            running = self._running()
            if not running:
                self._alive += 1
        if not running:
            self._run("main")  # no thread (never started, or forked away): finish inline, bounded by the deadline
        else:
            self.join(max(0.0, deadline - self._clock()) + 0.05)
        with self._lock:
            self._stopped = True
            timed_out = any(t.is_alive() for t in self._threads)
            if timed_out:
                settled = self.accounts.settle(len(self._queue), self.spool is not None)
                self._queue.clear()  # past the deadline no step takes it any more
            else:
                settled = None
            dropped = self.accounts.drops_since({})  # the whole life: the last word on what was accepted
            ok = self.pending == 0 and not dropped and not timed_out
            result = FlushResult(ok, timed_out, self.pending, None if ok else self.accounts.last_error, dropped)
        if settled:
            log.warning("stream %r: shutdown deadline reached with a request or a step in progress; %d items "
                        "counted as not delivered (shutdown)%s", self.name, settled[0],
                        f", {settled[1]} as left in the spool for the next start (spooled)" if settled[1] else "")
        return result

    # -- worker side ------------------------------------------------------------------------------

    def _run(self, role: str = "main") -> None:
        try:
            if role == "main" and self.spool is not None and not self._spool_loaded:
                self._spool_loaded = True
                with self._step():
                    self._load_spool()
            while True:
                step = self._next_step(role)
                if step is None:
                    break
                kind, payload = step
                yield_gil()  # let the host's threads run between steps: their latency waits on the GIL
                try:
                    if kind == "prepare":
                        self._prepare(payload)
                    elif kind == "rewire":
                        self._rewire_step(payload)
                    else:
                        self._send(payload)
                except Exception:  # never let a bug kill delivery: count and go on
                    log.exception("stream %r: unexpected error in the worker", self.name)
                    with self._lock:
                        if kind == "send":
                            self._landed(payload)
                            self.accounts.dropped["internal_error"] += sum(r.weight for r in payload)
                        elif kind == "rewire":
                            self._busy = False
                            self.accounts.dropped["internal_error"] += sum(r.weight for r in payload)
                        else:
                            self._busy = False
                            self.accounts.dropped["internal_error"] += len(payload or ())
                            self.accounts.processed += len(payload or ())
                        self._work.notify_all()
                        self._done.notify_all()
                finally:
                    self._leave()
        finally:
            with self._lock:
                self._alive -= 1
                if role == "main":
                    self._main_looping = False
                last = self._alive <= 0
            if last:  # the last thread out counts what is left
                try:
                    with self._step():
                        self._finish()
                finally:
                    if self.spool is not None and self._closing:
                        # What is left is the next start's as soon as the worker ends, in this
                        # process too (also when the shutdown timed out before that).
                        self.spool.release()

    def _allowed(self) -> int:
        return self._pace.allowed()

    def _next_step(self, role: str = "main") -> Optional[Tuple[str, Any]]:
        """The next thing to do: ("prepare", items), ("send", records) or None to stop. Only the
        main thread prepares (OTel folding needs the items in order); any thread may send."""
        main = role == "main"
        with self._lock:
            while True:
                if self._forking:  # held by _before_fork until the fork returns
                    self._work.wait()
                    continue
                now = self._clock()
                closing = self._closing
                if closing and self._deadline is not None and now >= self._deadline:
                    return None
                wake_for_due: Optional[float] = None
                if main and self._rewire:  # older than anything queued: folded first
                    records, self._rewire = self._rewire, []
                    self._busy = True
                    self._stepping += 1
                    return "rewire", records
                queued = len(self._queue) if main else 0
                waiting = queued and self._unchosen and now < self._pace.prepare_due and not (closing or self._force)
                if queued and not waiting:
                    # Encode in chunks, not item by item as they trickle in: only once a batch is
                    # ready, the oldest item has waited flush_interval, or someone waits for it.
                    since = self._queue_since if self._queue_since is not None else now
                    if (
                        closing
                        or self._force
                        or self._flush_requests > 0
                        or queued + len(self._outbox.records) >= self._pace.batch_limit
                        or now >= since + self.config.flush_interval
                    ):
                        take = min(queued, self._pace.batch_limit)
                        popleft = self._queue.popleft
                        items = [popleft() for _ in range(take)]
                        if not self._queue:
                            self._queue_since = None
                        self._busy = True
                        self._stepping += 1
                        return "prepare", items
                if main and not closing:  # (closing: sent with all that is open, below)
                    due_in = self._ask("due_in", None)  # over OTel: an end that waited for its start must go
                    if due_in is not None:
                        if due_in <= 0:
                            self._busy = True
                            self._stepping += 1
                            return "prepare", []
                        wake_for_due = now + due_in
                if main and self._spool_waits() and (closing or self._force or now >= self._pace.prepare_due):
                    # The spool is loaded once a transport is chosen: ask again, even with no new event.
                    self._busy = True
                    self._stepping += 1
                    return "prepare", []
                if main and closing and self.transport.open_count():
                    # Nothing more will end them: emit them now, so that what Langfuse cannot take
                    # before the deadline reaches the spool (or is counted), with the rest.
                    self._busy = True
                    self._stepping += 1
                    return "prepare", None
                if not self._outbox.records:
                    # (closing: the main thread took the queue above; it stays while a request is in
                    # flight, whose records may come back to be encoded again: `_rewire`)
                    if closing and ((main and not self._inflight) or (not main and not self._busy)):
                        return None
                    wake = now + self.config.flush_interval
                else:
                    ready = (
                        closing
                        or self._flush_requests > 0
                        or self._pace.failures_in_row > 0
                        or len(self._outbox.records) >= self._pace.batch_limit
                    )
                    since = self._outbox.since if self._outbox.since is not None else now
                    wake = max(self._pace.due, now if ready else since + self.config.flush_interval)
                    if self._force:  # flush() or shutdown(): one attempt at once, then the backoff again
                        wake = now
                    if wake <= now:
                        if self._inflight < self._allowed() and self._outbox.ready():
                            self._force = False
                            self._inflight += 1
                            self._stepping += 1
                            return "send", self._take_batch()
                        wake = now + self.config.flush_interval  # woken when a request ends
                if main and self._queue_since is not None:
                    due = self._queue_since + self.config.flush_interval
                    wake = min(wake, max(due, self._pace.prepare_due) if self._unchosen else due)
                if main and self._spool_waits():
                    wake = min(wake, self._pace.prepare_due)
                if wake_for_due is not None:
                    wake = min(wake, wake_for_due)
                if self._deadline is not None:
                    wake = min(wake, self._deadline)
                self._work.wait(max(wake - now, 0.001))

    @property
    def _unchosen(self) -> bool:
        """`transport = "auto"` has not chosen a transport yet (no health check answered so far)."""
        return getattr(self.transport, "chosen", True) is False

    def _failed(self, error: str, kind: Optional[str]) -> None:
        """A request failed as a whole (or "auto" got no answer): count it, drift health (lock held)."""
        self.accounts.failed_requests += 1
        self._pace.failures_in_row += 1
        self.accounts.last_error = error
        self.accounts.last_error_kind = kind
        self.health.failure()

    def _spool_waits(self) -> bool:
        """A spool found at start waits to be loaded until "auto" has chosen a transport."""
        return self.spool is not None and not self._spool_loaded

    def _take_batch(self) -> List[Record]:
        probe = self.health.state() is Health.UNAVAILABLE  # one small request before the rest
        return self._outbox.take(1 if probe else self._pace.batch_limit, self.config.max_request_bytes - 64)

    def _landed(self, batch: Sequence[Record]) -> None:
        """A request has ended (lock held): its records' keys may fly again, and the request's
        place is free."""
        self._inflight -= 1
        self._outbox.landed(batch)

    def _prepare(self, items: Optional[List[Dict[str, Any]]]) -> None:
        resolve = getattr(self.transport, "resolve", None)
        if resolve is not None and items is not None:
            try:
                resolve(guess=self._closing)
            except NotChosen as exc:
                self._not_chosen(items, exc)
                return
            if self._spool_waits():  # it waited for the choice
                self._spool_loaded = True
                self._load_spool()
        if items is None:
            records = self._close_open()
        else:
            records = self.transport.prepare(items)
        if self.spool is not None and records:
            self.spool.add(records, self.transport.name)
        with self._lock:
            if items is not None:
                self.accounts.processed += len(items)
            self.accounts.truncated += sum(1 for r in records if r.truncated)
            over = self._add_to_outbox(records)
            self._busy = False
            if records:
                self._work.notify_all()
            self._done.notify_all()
        self._overflowed(over)

    def _ask(self, method: str, default: Any) -> Any:
        """What a transport's optional method answers (a transport the host made may not have it:
        `prepare`, `send`, `close_open` and `open_count` are all one needs)."""
        found = getattr(self.transport, method, None)
        return found() if found is not None else default

    def _close_open(self) -> List[Record]:
        """Over OTel, at shutdown: the observations still open, sent now (snapshots, and end records
        for those whose start was not seen here); with a spool, the state of the started ones goes
        into it first, for the next start to end them as the same rows (see wire/otlp.py)."""
        if self.spool is not None:
            states = self._ask("open_states", [])
            if states:
                self.spool.add(states, OPEN_WIRE)
        return list(self.transport.close_open(self._clock()))

    def _rewire_step(self, records: List[Record]) -> None:
        """Records in a wire format Langfuse no longer takes, encoded again by the transport (the
        spool's rows move with them); refused for good, counted, if it cannot."""
        again = self.transport.rewire(records)
        if again is None:
            message = "Langfuse refused events of the ingestion API and still reports a version before 4"
            with self._lock:
                for record in records:
                    self.accounts.dropped["status_400"] += record.weight
                self.accounts.last_error = f"Langfuse refused item(s) for good (status_400): {message}"
                self._busy = False
                self._done.notify_all()
            if self.spool is not None:
                self.spool.remove(records)
            log.warning("stream %r: Langfuse refused %d items (status_400): %s", self.name, len(records), message)
            return
        if self.spool is not None:
            self.spool.add(again, self.transport.name)
            self.spool.remove(records)
        with self._lock:
            over = self._add_to_outbox(again, front=True)
            self._busy = False
            self._work.notify_all()
            self._done.notify_all()
        self._overflowed(over)

    def _not_chosen(self, items: List[Dict[str, Any]], exc: NotChosen) -> None:
        """No transport yet: the items go back to the front of the queue, in order, and the health
        check is asked again after a backoff; health drifts as for a failed request."""
        now = self._clock()
        with self._lock:
            if items:
                self._queue.extendleft(reversed(items))
                if self._queue_since is None:
                    self._queue_since = now
            self._force = False  # this was the attempt flush() asked for (nothing else is to send yet)
            self._busy = False
            self._failed(str(exc), "transport")
            self._pace.prepare_due = now + self._pace.backoff(None)
            waiting = len(self._queue)
            self._work.notify_all()
            self._done.notify_all()
        self._throttled(
            "not_chosen", logging.WARNING,
            "stream %r: %s; %d items wait for the choice of transport", self.name, exc, waiting,
        )

    def _add_to_outbox(self, records: Sequence[Record], front: bool = False) -> List[Record]:
        """Add `records` (lock held); the oldest records it pushed out of a full buffer, counted
        as dropped here, for `_overflowed` to take out of the spool and log once the lock is free."""
        over = self._outbox.add(records, front)
        for old in over:
            self.accounts.dropped["buffer_full"] += old.weight
        return over

    def _overflowed(self, over: Sequence[Record]) -> None:
        """After `_add_to_outbox`, without the lock: a disk write or a log line (whose handler may
        call back into the stream) must never run while the host's `on_event` waits for the lock."""
        if not over:
            return
        if self.spool is not None:
            self.spool.remove(over)
        self._throttled(
            "buffer_full", logging.WARNING,
            "stream %r: retry buffer full; dropped the %d oldest items", self.name, sum(r.weight for r in over),
        )

    def _send(self, batch: List[Record]) -> None:
        try:
            report = self.transport.send(batch)
        except LangfuseError as exc:
            report = Report(error=exc, retries=exc.retries)
        if not report.sent:
            with self._lock:  # no request was made: they all wait to be encoded again
                self._rewire.extend(report.rewire)
                self._landed(batch)
                self._work.notify_all()
                self._done.notify_all()
            return
        if report.error is not None:
            reason, retryable, retry_after = request_error(report.error)
            if getattr(report.error, "status", None) == 413 and len(batch) > 1:
                with self._lock:
                    self._landed(batch)
                    over = self._add_to_outbox(batch, front=True)
                    self._pace.split(len(batch))
                    self._work.notify_all()
                    self._done.notify_all()
                self._overflowed(over)
                log.info("stream %r: 413 for %d items; splitting", self.name, len(batch))
                return
            if retryable:
                report.retry = list(batch)
            else:
                if isinstance(report.error, LangfuseStatusError) and report.error.status == 413:  # one item alone
                    report.error = LangfuseStatusError(413, (
                        f"{report.error.message} (one item of {len(batch[0].data):,} bytes, too large on its own for "
                        f"Langfuse or a proxy in front of it: set max_item_bytes below that limit, now "
                        f"{self.config.max_item_bytes:,})"))
                message = str(report.error)
                report.dropped = [(r, reason, message) for r in batch]
            self._account(batch, report, reason, retry_after)
        else:
            self._account(batch, report, None, None)

    def _account(self, batch: List[Record], report: Report, reason: Optional[str], retry_after: Optional[float]) -> None:
        now = self._clock()
        delivered = sum(r.weight for r in report.delivered)
        to_log: Dict[Tuple[str, str], int] = {}  # (reason, message): items, for messages not said before
        over: List[Record] = []
        with self._lock:
            self.accounts.requests += 1
            self.accounts.retries += report.retries
            self.accounts.bytes_sent += report.bytes_sent
            self.accounts.delivered += delivered
            if delivered:
                self.accounts.batches += 1
            self._rewire.extend(report.rewire)
            for record, why, message in report.dropped:
                self.accounts.dropped[why] += record.weight
                self.accounts.last_error = f"Langfuse refused item(s) for good ({why}): {message or 'no message'}"
                key = f"{why}:{message}"
                if (why, message) in to_log:
                    to_log[(why, message)] += record.weight
                elif key not in self._seen_messages and len(self._seen_messages) < 1000:
                    self._seen_messages[key] = 1
                    to_log[(why, message)] = record.weight
            if report.error is not None:
                self._failed(str(report.error), reason)
            else:
                self._pace.succeeded(now, self.accounts.last_error_kind == "status_429")
                if self.accounts.last_error_kind == "status_429" and now >= self._pace.due:
                    self.accounts.last_error_kind = None
            if report.retry:
                over = self._add_to_outbox(report.retry, front=True)
                if report.error is None:  # some items of a 207 asked to be retried
                    self.accounts.refusing_requests += 1
                    if report.refused is not None:
                        self.accounts.last_error_kind, message = report.refused
                        self.accounts.last_error = f"Langfuse refused {len(report.retry)} item(s) for now: {message}"
                self._pace.retry(now, retry_after, answered=report.error is None)
            if reason == "status_429":
                self._pace.rate_limited(now, retry_after)
            elif report.error is None:
                self._pace.calm(now)
            self._landed(batch)
            self._work.notify_all()
            self._done.notify_all()
        self._overflowed(over)
        if self.spool is not None:
            finished = list(report.delivered) + [r for r, _, _ in report.dropped]
            if finished:
                self.spool.remove(finished)
        for (why, message), weight in to_log.items():
            log.warning("stream %r: Langfuse refused %d item(s) for good (%s): %s", self.name, weight, why,
                        message or "no message")
        if report.error is not None and report.retry:  # (refused for good: said above, once per message)
            self._throttled(
                "send_failed:" + (reason or ""), logging.WARNING,
                "stream %r: request failed (%s), %d items kept for retry: %s",
                self.name, reason, len(report.retry), report.error,
            )

    def _finish(self) -> None:
        """At shutdown: what is left is spooled (kept for the next start) or dropped, counted."""
        with self._lock:
            if not self._closing:
                return
        left_open: List[Record] = []
        if self.transport.open_count():  # OTel observations the deadline left open: not lost either
            try:
                left_open = self._close_open()
            except Exception:  # a bug of ours: logged, and what is left below is still counted
                log.exception("stream %r: could not close the observations still open", self.name)
            if left_open and self.spool is not None:
                self.spool.add(left_open, self.transport.name)
        with self._lock:
            left_queue = len(self._queue)
            # (the records to encode again are in the spool as they were written: encoded again at the next start)
            left_outbox = self._outbox.drain(left_open + self._rewire)
            self._rewire = []
            self._queue.clear()
            spooled = self.spool is not None
            if left_queue:
                self.accounts.dropped["shutdown"] += left_queue
            if left_outbox:
                self.accounts.dropped["spooled" if spooled else "shutdown"] += left_outbox
            self._done.notify_all()
            settled = self.accounts.settled
        if settled:  # counted, and said, by the shutdown that timed out
            return
        if left_queue or (left_outbox and not spooled):
            log.warning(
                "stream %r: shutdown deadline reached; %d items not delivered%s",
                self.name, left_queue + (0 if spooled else left_outbox), "",
            )
        if spooled and left_outbox:
            log.warning("stream %r: %d items left in the spool for the next start", self.name, left_outbox)

    def _load_spool(self) -> None:
        resolve = getattr(self.transport, "resolve", None)
        try:
            wire = resolve().name if resolve is not None else self.transport.name
        except NotChosen as exc:
            self._spool_loaded = False  # loaded by the first prepare once a transport is chosen
            self._not_chosen([], exc)
            return
        # Written for ingestion before this Langfuse moved to v4: encoded again, as spans (`auto`);
        # and over OTel, the observations an earlier process left open, taken up by the transport.
        also = (("ingestion",) if resolve is not None else ()) + (OPEN_WIRE,) if wire == "otel" else ()
        records, other = self.spool.load(wire, also)
        states = [r for r in records if r.wire == OPEN_WIRE]
        legacy = [r for r in records if r.wire != wire and r.wire != OPEN_WIRE]
        if legacy or states:
            records = [r for r in records if r.wire == wire]
        if states:
            resume = getattr(self.transport, "resume", None)
            resumed = resume(states) if resume is not None else 0
            self.spool.remove(states)  # held here now: written again if still open at this one's shutdown
            log.info("stream %r: took up %d observation(s) an earlier process left open", self.name, resumed)
        with self._lock:
            n = sum(r.weight for r in records) + sum(r.weight for r in legacy)
            self.accounts.accepted += n + other
            self.accounts.processed += n + other
            self._spool_found = n + other
            if other:
                self.accounts.dropped["spool_other_wire"] += other
            over = self._add_to_outbox(records)
            self._rewire.extend(legacy)
            self._done.notify_all()
        self._overflowed(over)
        if records:
            log.info("stream %r: re-sending %d items found in the spool", self.name, n)
        if other:
            log.warning(
                "stream %r: dropped %d spooled items written for another transport than %s", self.name, other, wire
            )

    def counts(self) -> Dict[str, Any]:
        with self._lock:
            return dict(self.accounts.counts(), queued=len(self._queue), outbox=len(self._outbox.records))
