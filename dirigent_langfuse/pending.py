"""The late-bind buffer: events that arrived before the host bound their scroll.

Events are held per `(connector_id, native_session_id)` in arrival order until an event of the
same key brings a scroll_id (a `ScrollBound`, or any bound event). Bounded three ways, each drop
counted by reason and logged once per key:

- `max_keys` keys at most: a new key beyond that evicts the oldest key (`pending_overflow_keys`);
- `max_events_per_key`: a key's oldest event makes room for its newest (`pending_overflow`);
- `ttl` seconds after a key's first held event, its events expire (`pending_expired`).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable, Deque, Dict, List, Tuple

from .bus import BusEvent
from .snapshot import own_event

__all__ = ["PendingBuffer"]

log = logging.getLogger(__name__)

Key = Tuple[str, str]


class _Held:
    __slots__ = ("events", "since", "logged")

    def __init__(self, since: float) -> None:
        self.events: Deque[BusEvent] = collections.deque()
        self.since = since
        self.logged = False


class PendingBuffer:
    def __init__(
        self,
        max_keys: int = 1000,
        max_events_per_key: int = 1000,
        ttl: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        name: str = "langfuse",
    ) -> None:
        self.max_keys = max_keys
        self.max_events_per_key = max_events_per_key
        self.ttl = ttl
        self.name = name
        self._clock = clock
        self._keys: "collections.OrderedDict[Key, _Held]" = collections.OrderedDict()
        self._lock = threading.RLock()
        self.dropped: Dict[str, int] = collections.Counter()
        self.held_total = 0
        self._notices: List[Tuple[int, Key, str]] = []  # drops to log once the lock is free

    @staticmethod
    def key(event: BusEvent) -> Key:
        return (event.connector_id, event.native_session_id)

    def __len__(self) -> int:
        with self._lock:
            return sum(len(h.events) for h in self._keys.values())

    def _drop(self, key: Key, held: _Held, reason: str, count: int) -> None:
        self.dropped[reason] += count
        if not held.logged:
            held.logged = True
            self._notices.append((count, key, reason))

    def _log_drops(self) -> None:
        """Log the drops noted under the lock, without it: a log handler may call back into the
        stream (a host that mirrors its log lines as events) and would wait for the lock for ever."""
        if not self._notices:
            return
        with self._lock:
            notices, self._notices = self._notices, []
        for count, key, reason in notices:
            log.warning(
                "stream %r: dropped %d unbound event(s) of connector %r session %r (%s)",
                self.name, count, key[0], key[1], reason,
            )

    def expire(self) -> None:
        with self._lock:
            self._expire(self._clock())
        self._log_drops()

    def _expire(self, now: float) -> None:
        while self._keys:
            key, held = next(iter(self._keys.items()))
            if now - held.since < self.ttl:
                break
            del self._keys[key]
            self._drop(key, held, "pending_expired", len(held.events))

    def hold(self, event: BusEvent) -> None:
        """Keep `event` (its payloads copied as they are now: the host may change them before
        the bind) until its key is bound."""
        key = self.key(event)
        event = own_event(event)
        with self._lock:
            now = self._clock()
            self._expire(now)
            held = self._keys.get(key)
            if held is None:
                if len(self._keys) >= self.max_keys:
                    old_key, old = self._keys.popitem(last=False)
                    self._drop(old_key, old, "pending_overflow_keys", len(old.events))
                held = self._keys[key] = _Held(now)
            if len(held.events) >= self.max_events_per_key:
                held.events.popleft()
                self._drop(key, held, "pending_overflow", 1)
            held.events.append(event)
            self.held_total += 1
        self._log_drops()

    def release(self, event: BusEvent) -> List[BusEvent]:
        """The events held for `event`'s key, in arrival order, now removed from the buffer."""
        if not self._keys:
            return []
        with self._lock:
            held = self._keys.pop(self.key(event), None)
        return list(held.events) if held is not None else []

    def drain(self, reason: str) -> int:
        """Drop everything still held (at shutdown); the count of events dropped."""
        with self._lock:
            total = 0
            for key, held in self._keys.items():
                self._drop(key, held, reason, len(held.events))
                total += len(held.events)
            self._keys.clear()
        self._log_drops()
        return total

    def _reset_after_fork(self) -> None:
        self._lock = threading.RLock()
        self._keys.clear()
        self._notices = []
