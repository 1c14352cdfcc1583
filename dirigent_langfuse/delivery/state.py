"""What the worker's parts share: one lock, its two conditions, the queue, the retry buffer and
the flags that say where delivery stands.

The caller's side (`worker.py`), the thread's loop (`loop.py`), the encoding steps
(`preparing.py`), the answer handling (`sending.py`) and the spool keeper (`spooling.py`) each
take this one object. Promises:
- Every field below is read and written holding `lock` (re-entrant: a signal handler may call the
  stream inside one of our critical sections). `work` wakes the loop; `done` wakes the callers
  waiting in `flush()` and `shutdown()`.
- Nothing here does I/O or logs holding the lock: `overflowed` and the other I/O run after it is
  released, so the host's `on_event` never waits behind a disk write or a log handler.
- `reset()` gives a forked child fresh locks and empty state; the parts keep this object.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Sequence

from ..config import LangfuseConfig
from ..contracts import HealthTracker
from ..throttle import Throttled
from .accounts import Accounts
from .outbox import Outbox
from .pace import Pace
from .records import NotChosen, Record

__all__ = ["State", "log"]

# The worker's parts log under one name, the worker's: what a host filters on does not move with the code.
log = logging.getLogger("dirigent_langfuse.delivery.worker")


class State:
    def __init__(
        self, config: LangfuseConfig, transport: Any, health: HealthTracker, name: str, spool: Any,
        clock: Callable[[], float], random: Callable[[], float],
    ) -> None:
        self.config = config
        self.transport = transport
        self.health = health
        self.name = name
        self.spool = spool
        self.clock = clock
        self.random = random
        self.throttled = Throttled(log)
        self.reset()

    def reset(self) -> None:
        self.lock = threading.RLock()
        self.work = threading.Condition(self.lock)
        self.done = threading.Condition(self.lock)
        self.queue: Deque[Dict[str, Any]] = collections.deque()
        self.queue_since: Optional[float] = None  # when the oldest queued item arrived
        self.outbox = Outbox(self.config.max_buffer_items, self.config.max_buffer_bytes, lambda: self.clock())
        self.threads: List[threading.Thread] = []  # the worker thread first, then the senders
        self.alive = 0  # threads still running their loop
        self.main_looping = False  # the worker thread (the one that prepares) is in its loop
        self.inflight = 0  # requests being sent right now
        # Records Langfuse refused in a wire format it no longer takes (upgraded to v4 under an
        # "auto" stream): the main thread has the transport encode them again (preparing.rewire).
        self.rewire: List[Record] = []
        self.closing = False
        self.deadline: Optional[float] = None
        self.stopped = False
        self.flush_requests = 0
        self.force = False  # flush() or shutdown() asked for one attempt at once
        self.busy = False  # the main thread is encoding
        self.stepping = 0  # threads of ours inside a step (encoding, sending, logging about it)
        self.forking = False  # a fork is under way: the forking thread holds the lock, no step may start
        self.forked_mid_step = False
        self.pace = Pace(self.config, self.health, self.random)
        self.seen_messages: Dict[str, int] = {}
        self.accounts = Accounts()
        # A spool found at start is loaded once a transport is chosen; the items it held, once
        # loaded (None until then): a flush() waits for them.
        self.spool_loaded = False
        self.spool_found: Optional[int] = None

    # -- lock held --------------------------------------------------------------------------------

    def wake(self) -> None:
        """Something changed: the loop looks again, and so do the callers waiting on it."""
        self.work.notify_all()
        self.done.notify_all()

    def failed(self, error: str, kind: Optional[str]) -> None:
        """A request failed as a whole (or "auto" got no answer): count it, drift health."""
        self.accounts.failed_requests += 1
        self.pace.failures_in_row += 1
        self.accounts.last_error = error
        self.accounts.last_error_kind = kind
        self.health.failure()

    def add_to_outbox(self, records: Sequence[Record], front: bool = False) -> List[Record]:
        """Add `records`; the oldest records it pushed out of a full buffer, counted as dropped
        here, for `overflowed` to take out of the spool and log once the lock is free."""
        over = self.outbox.add(records, front)
        for old in over:
            self.accounts.dropped["buffer_full"] += old.weight
        return over

    def landed(self, batch: Sequence[Record]) -> None:
        """A request has ended: its records' keys may fly again, and the request's place is free."""
        self.inflight -= 1
        self.outbox.landed(batch)

    @property
    def unchosen(self) -> bool:
        """`transport = "auto"` has not chosen a transport yet (no health check answered so far)."""
        return getattr(self.transport, "chosen", True) is False

    def spool_waits(self) -> bool:
        """A spool found at start waits to be loaded until "auto" has chosen a transport."""
        return self.spool is not None and not self.spool_loaded

    def ask(self, method: str, default: Any) -> Any:
        """What a transport's optional method answers (a transport the host made may not have it:
        `prepare`, `send`, `close_open` and `open_count` are all one needs)."""
        found = getattr(self.transport, method, None)
        return found() if found is not None else default

    # -- without the lock -------------------------------------------------------------------------

    def overflowed(self, over: Sequence[Record]) -> None:
        """After `add_to_outbox`: a disk write or a log line (whose handler may call back into the
        stream) must never run while the host's `on_event` waits for the lock."""
        if not over:
            return
        if self.spool is not None:
            self.spool.remove(over)
        self.throttled(
            "buffer_full", logging.WARNING,
            "stream %r: retry buffer full; dropped the %d oldest items", self.name, sum(r.weight for r in over),
        )

    def not_chosen(self, items: List[Dict[str, Any]], exc: NotChosen) -> None:
        """No transport yet: the items go back to the front of the queue, in order, and the health
        check is asked again after a backoff; health drifts as for a failed request."""
        now = self.clock()
        with self.lock:
            if items:
                self.queue.extendleft(reversed(items))
                if self.queue_since is None:
                    self.queue_since = now
            self.force = False  # this was the attempt flush() asked for (nothing else is to send yet)
            self.busy = False
            self.failed(str(exc), "transport")
            self.pace.prepare_due = now + self.pace.backoff(None)
            waiting = len(self.queue)
            self.wake()
        self.throttled(
            "not_chosen", logging.WARNING,
            "stream %r: %s; %d items wait for the choice of transport", self.name, exc, waiting,
        )

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """A step the loop's schedule does not hand out (loading the spool, finishing)."""
        with self.lock:
            while self.forking:
                self.work.wait()
            self.stepping += 1
        try:
            yield
        finally:
            self.leave()

    def leave(self) -> None:
        """A step ends (the schedule counted it in, or `step`)."""
        with self.lock:
            self.stepping -= 1
            if self.forking and not self.stepping:
                self.done.notify_all()
