"""The late-bind buffer: events that arrived before the host bound their scroll.

Events are held per `(connector_id, native_session_id)` in arrival order until an event of the
same key brings a scroll_id (a `ScrollBound`, or any bound event). Bounded three ways, each drop
counted by reason, exactly (`drops()`):

- `max_keys` keys at most: a new key beyond that evicts the oldest key (`pending_overflow_keys`);
- `max_events_per_key`: a key's oldest event makes room for its newest (`pending_overflow`), but
  never its session's start (`SessionCreated`: the trace's name, user and tags): the oldest other
  one goes, or the newest itself when only starts are held;
- `ttl` seconds after a key's first held event, its events expire (`pending_expired`).

Drops are logged per reason, at once the first time and then at most once a minute, each line
with the exact count since the line before; what is left unsaid is said by `drain` (shutdown).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable, Deque, Dict, List, Tuple

from ..bus import BusEvent, SessionCreated
from .snapshot import own_event

__all__ = ["PendingBuffer"]

log = logging.getLogger(__name__)

Key = Tuple[str, str]


_SAY_EVERY = 60.0  # seconds between two lines of one reason


class _Held:
    __slots__ = ("events", "since")

    def __init__(self, since: float) -> None:
        self.events: Deque[BusEvent] = collections.deque()
        self.since = since


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
        self._unsaid: Dict[str, int] = collections.Counter()  # drops by reason not logged yet
        self._last_key: Dict[str, Key] = {}  # the key of each reason's latest drop, for its line
        self._said_at: Dict[str, float] = {}

    @staticmethod
    def key(event: BusEvent) -> Key:
        return (event.connector_id, event.native_session_id)

    def __len__(self) -> int:
        with self._lock:
            return sum(len(h.events) for h in self._keys.values())

    def _drop(self, key: Key, reason: str, count: int) -> None:
        if count:
            self.dropped[reason] += count
            self._unsaid[reason] += count
            self._last_key[reason] = key

    def drops(self) -> Dict[str, int]:
        """The events dropped so far, by reason."""
        with self._lock:
            return dict(self.dropped)

    def _log_drops(self, final: bool = False) -> None:
        """Log the drops not said yet, each reason at most once a minute (`final`: all of them), and
        without the lock: a log handler may call back into the stream (a host that mirrors its log
        lines as events) and would wait for the lock for ever."""
        if not self._unsaid:
            return
        lines = []
        with self._lock:
            now = self._clock()
            for reason, count in list(self._unsaid.items()):
                said = self._said_at.get(reason)
                if final or said is None or now - said >= _SAY_EVERY:
                    del self._unsaid[reason]
                    self._said_at[reason] = now
                    lines.append((count, reason, self._last_key[reason], self.dropped[reason]))
        for count, reason, key, total in lines:
            log.warning(
                "stream %r: dropped %d unbound event(s) (%s; the last of connector %r session %r); %d in all",
                self.name, count, reason, key[0], key[1], total,
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
            self._drop(key, "pending_expired", len(held.events))

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
                    self._drop(old_key, "pending_overflow_keys", len(old.events))
                held = self._keys[key] = _Held(now)
            room = True
            if len(held.events) >= self.max_events_per_key:
                self._drop(key, "pending_overflow", 1)
                room = _evict(held.events, event)  # False: only starts are held, the newest is dropped
            if room:
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
                self._drop(key, reason, len(held.events))
                total += len(held.events)
            self._keys.clear()
        self._log_drops(final=True)
        return total

    def _reset_after_fork(self) -> None:
        self._lock = threading.RLock()
        self._keys.clear()
        self._unsaid.clear()


def _evict(events: Deque[BusEvent], newest: BusEvent) -> bool:
    """Make room in a key's full queue for `newest`: its oldest event that is not a session's
    start goes (a start carries the trace's name, user and tags). False when only starts are held
    and `newest` is not one: `newest` is the one dropped."""
    for i, event in enumerate(events):
        if not isinstance(event, SessionCreated):
            del events[i]
            return True
    if isinstance(newest, SessionCreated):  # starts only, and another start (a replay): the oldest goes
        events.popleft()
        return True
    return False
