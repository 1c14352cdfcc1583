"""The host's stream contracts: what a stream is, what it answers, and how healthy it is.

A `SessionStream` receives every BusEvent of its scope on the host's thread. It must answer
quickly (no network I/O on that thread), never raise for a bad event or a dead backend, and say
what it did with a `StreamOutcome`. `HealthTracker` implements the seed's drift:
one failure → DEGRADED, five in a row → UNAVAILABLE, one success → HEALTHY.

The public module is `streams`, which also gives the configuration (`specs`) and the factories
(`registry`); the factories build on these contracts, so they live here, apart, without a cycle.
"""

from __future__ import annotations

import abc
import enum
import math
import numbers
import threading
from typing import Any, Callable, Dict, Mapping, Optional

import attrs

from .bus import BusEvent

__all__ = [
    "OutcomeStatus",
    "StreamError",
    "StreamOutcome",
    "Health",
    "HealthTracker",
    "StreamStats",
    "SessionStream",
    "daemon",
    "seconds",
]


class OutcomeStatus(enum.Enum):
    ACCEPTED = "accepted"
    """Taken: queued for delivery (or held until its scroll is bound)."""
    DELIVERED = "delivered"
    """Everything asked about has reached the backend (flush/shutdown)."""
    SKIPPED = "skipped"
    """Nothing to do for this event; not a failure."""
    FAILED = "failed"
    """See `StreamOutcome.error` and `detail`."""


class StreamError(enum.Enum):
    TRANSPORT = "transport"
    """The backend could not be reached, or did not take what was sent (yet)."""
    STATUS = "status"
    """The backend refused what was sent (an HTTP status)."""
    OVERFLOW = "overflow"
    """A bound was reached: the event was not taken."""
    CLOSED = "closed"
    """The stream is shut down."""
    INVALID = "invalid"
    """The event cannot be mirrored."""
    DROPPED = "dropped"
    """flush/shutdown: events answered ACCEPTED were dropped before they could be sent (held for a
    late bind that did not come in time); counted in `StreamStats.events_dropped`."""


@attrs.frozen
class StreamOutcome:
    status: OutcomeStatus
    error: Optional[StreamError] = None
    detail: str = ""

    @classmethod
    def accepted(cls, detail: str = "") -> "StreamOutcome":
        return cls(OutcomeStatus.ACCEPTED, None, detail)

    @classmethod
    def delivered(cls, detail: str = "") -> "StreamOutcome":
        return cls(OutcomeStatus.DELIVERED, None, detail)

    @classmethod
    def skipped(cls, detail: str = "") -> "StreamOutcome":
        return cls(OutcomeStatus.SKIPPED, None, detail)

    @classmethod
    def failed(cls, error: StreamError, detail: str = "") -> "StreamOutcome":
        return cls(OutcomeStatus.FAILED, error, detail)

    @property
    def ok(self) -> bool:
        return self.status is not OutcomeStatus.FAILED


class Health(enum.Enum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNAVAILABLE = "unavailable"


class HealthTracker:
    """Thread-safe health drift: any failure → DEGRADED, `unavailable_after` consecutive
    failures → UNAVAILABLE, any success → HEALTHY."""

    def __init__(self, degraded_after: int = 1, unavailable_after: int = 5) -> None:
        if degraded_after < 1 or unavailable_after < degraded_after:
            raise ValueError("need 1 <= degraded_after <= unavailable_after")
        self.degraded_after = degraded_after
        self.unavailable_after = unavailable_after
        self._lock = threading.RLock()
        self._failures = 0

    def failure(self) -> Health:
        with self._lock:
            self._failures += 1
            return self._state()

    def success(self) -> Health:
        with self._lock:
            self._failures = 0
            return Health.HEALTHY

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def state(self) -> Health:
        with self._lock:
            return self._state()

    def _state(self) -> Health:
        if self._failures >= self.unavailable_after:
            return Health.UNAVAILABLE
        if self._failures >= self.degraded_after:
            return Health.DEGRADED
        return Health.HEALTHY

    def _reset_after_fork(self) -> None:
        self._lock = threading.RLock()


@attrs.frozen(kw_only=True)
class StreamStats:
    """A snapshot of a stream's counters. `dropped` maps a reason to a count of items.

    The accounting invariant: `items_accepted == items_delivered + items_dropped + items_pending`
    (pending: queued, in the retry buffer, in flight, or kept open by the OTel transport).
    Items refused at once because the queue was full count as accepted and dropped
    (`queue_full`). Events held for a late bind are not items yet: what happens to them is in
    `events_held` (still held) and `events_dropped` (by reason). Events of sessions left out by
    sampling never become items: they are counted in `events_sampled_out`.
    """

    events_seen: int = 0
    events_skipped: int = 0
    events_sampled_out: int = 0
    events_held: int = 0
    events_failed: int = 0
    events_dropped: Mapping[str, int] = attrs.field(factory=dict)
    items_accepted: int = 0
    items_delivered: int = 0
    items_pending: int = 0
    items_failed: int = 0
    items_truncated: int = 0
    mask_failures: int = 0
    payloads_uncopied: int = 0
    dropped: Mapping[str, int] = attrs.field(factory=dict)
    batches: int = 0
    requests: int = 0
    retries: int = 0
    bytes_sent: int = 0
    health: Health = Health.HEALTHY
    last_error: Optional[str] = None
    transport: str = ""

    @property
    def items_dropped(self) -> int:
        return sum(self.dropped.values())

    def as_dict(self) -> Dict[str, Any]:
        out = attrs.asdict(self, recurse=False)
        out["dropped"] = dict(self.dropped)
        out["events_dropped"] = dict(self.events_dropped)
        out["items_dropped"] = self.items_dropped
        out["health"] = self.health.value
        return out


class SessionStream(abc.ABC):
    """A destination for BusEvents. Implementations promise:

    - `on_event` returns within a bounded time, does no network I/O and never raises for a bad
      event or an unreachable backend; it answers with a `StreamOutcome`.
    - `flush(timeout)` and `shutdown(timeout)` return within `timeout` (or a configured bound when
      None), from any thread, and say whether everything reached the backend.
    - `with stream:` shuts it down on the way out.
    """

    name: str

    @abc.abstractmethod
    def on_event(self, event: BusEvent) -> StreamOutcome: ...

    @abc.abstractmethod
    def flush(self, timeout: Optional[float] = None) -> StreamOutcome: ...

    @abc.abstractmethod
    def shutdown(self, timeout: Optional[float] = None) -> StreamOutcome: ...

    @abc.abstractmethod
    def health(self) -> Health: ...

    @abc.abstractmethod
    def stats(self) -> StreamStats: ...

    def busy_here(self) -> bool:
        """True when the calling thread is inside this stream: a signal handler interrupted one
        of its calls, or the stream called back into the host from a thread of its own. A flush
        or shutdown made for it on another thread would then wait for this one, so `StreamSet`
        makes its calls here instead. A stream that takes no locks on the host's thread keeps
        this default."""
        return False

    def __enter__(self) -> "SessionStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        """`with stream:` shuts it down on the way out (its default timeout), also after an
        exception, which goes on (the shutdown never raises)."""
        self.shutdown()


def daemon(target: Callable[..., Any], name: str, *args: Any) -> Optional[threading.Thread]:
    """`target(*args)` on a daemon thread, started; None where no thread may start (Python 3.12
    starts none once the interpreter is exiting: an exit hook), and the caller does the work itself."""
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    try:
        thread.start()
    except RuntimeError:
        return None
    return thread


def seconds(timeout: Optional[float], default: float) -> float:
    """A call's timeout: None is the config's default, a negative one is 0, and `math.inf` waits
    without a bound. Anything but a real number (NaN included) is the caller's mistake: it raises,
    naming `timeout`, rather than wait for ever or not at all."""
    if timeout is None:
        return default
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(f"timeout must be a number of seconds or None, got {type(timeout).__name__}")
    try:
        value = float(timeout)
    except OverflowError:  # an int past a float's range: as long as math.inf, or 0
        value = math.inf if timeout > 0 else 0.0
    if math.isnan(value):
        raise ValueError("timeout must be a number of seconds or None, got nan")
    return max(0.0, value)
