"""Fault injection for the receiver: a schedule of answers to rehearse an outage with.

A `Fault` applies to the next `times` POST requests, or to every POST for `seconds` once it
starts. Kinds:

- `status`: answer `code` (with `Retry-After` when `retry_after` is set; an HTML body for 502);
- `slow`: wait `delay` seconds, then answer normally;
- `reset`: close the connection without an answer;
- `partial`: answer 207 with every `every`-th item failed with `code` (ingestion only);
- `page`: answer 200 with an HTML page, as a sign-in proxy or a captive portal answers for a host
  it stands in front of: not Langfuse's answer, so nothing in it was delivered.
- `trickle`: take the request as Langfuse would, then send the answer's body one byte every
  `delay` seconds, as a broken proxy or load balancer can: a client must give up on it (and
  re-send, since it cannot know what was taken), not wait for ever.

The command-line form (`receive --fault ...`, repeatable) is `KIND[:ARG][*N | ~S]`:
`503*5`, `429:2*3` (Retry-After 2), `slow:1.5*2`, `reset*1`, `partial:500/3*1`, `page*2`,
`trickle:0.2*2`, `503~30` (every POST for 30 s). Faults run in the order given.
"""

from __future__ import annotations

import collections
import re
import threading
import time
from typing import Any, Callable, Deque, Optional

import attrs

__all__ = ["Fault", "FaultPlan", "parse_fault"]


def _seconds(instance: "Fault", attribute: "attrs.Attribute[Any]", value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not 0 <= value < float("inf")):
        raise ValueError(f"{attribute.name} must be a finite number of seconds, at least 0 (got {value!r})")


def _at_least(least: int) -> Callable[..., None]:
    def check(instance: "Fault", attribute: "attrs.Attribute[Any]", value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{attribute.name} must be a whole number of at least {least} (got {value!r})")

    return check


def _http_status(instance: "Fault", attribute: "attrs.Attribute[Any]", value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 100 <= value <= 599:
        raise ValueError(f"code must be an HTTP status from 100 to 599 (got {value!r})")


@attrs.frozen(kw_only=True)
class Fault:
    """One scheduled answer. Checked when made: a value the receiver could not act on (a partial
    failure of every 0th item, a wait of NaN seconds) is a ValueError here, not a dead handler."""

    kind: str = attrs.field(validator=attrs.validators.in_(("status", "slow", "reset", "partial", "page", "trickle")))
    code: int = attrs.field(default=503, validator=_http_status)
    retry_after: Optional[float] = attrs.field(default=None, validator=_seconds)
    delay: float = attrs.field(default=0.0, validator=_seconds)
    every: int = attrs.field(default=2, validator=_at_least(1))
    times: int = attrs.field(default=1, validator=_at_least(1))
    seconds: Optional[float] = attrs.field(default=None, validator=_seconds)

    @classmethod
    def status(cls, code: int, times: int = 1, retry_after: Optional[float] = None, seconds: Optional[float] = None) -> "Fault":
        return cls(kind="status", code=code, times=times, retry_after=retry_after, seconds=seconds)

    @classmethod
    def slow(cls, delay: float, times: int = 1, seconds: Optional[float] = None) -> "Fault":
        return cls(kind="slow", delay=delay, times=times, seconds=seconds)

    @classmethod
    def reset(cls, times: int = 1, seconds: Optional[float] = None) -> "Fault":
        return cls(kind="reset", times=times, seconds=seconds)

    @classmethod
    def page(cls, times: int = 1, seconds: Optional[float] = None) -> "Fault":
        return cls(kind="page", code=200, times=times, seconds=seconds)

    @classmethod
    def trickle(cls, delay: float = 0.5, times: int = 1, seconds: Optional[float] = None) -> "Fault":
        return cls(kind="trickle", delay=delay, times=times, seconds=seconds)

    @classmethod
    def partial(cls, code: int = 500, every: int = 2, times: int = 1) -> "Fault":
        return cls(kind="partial", code=code, every=every, times=times)


_SPEC = re.compile(
    r"^(?P<kind>\d{3}|slow|reset|partial|page|trickle)(?::(?P<arg>[^*~]+))?(?:\*(?P<times>\d+)|~(?P<secs>[\d.]+))?$"
)


def parse_fault(text: str) -> Fault:
    """A `Fault` from its command-line form; ValueError saying what is wrong."""
    match = _SPEC.match(text.strip())
    if not match:
        raise ValueError(f"bad fault {text!r}: expected KIND[:ARG][*N|~S], e.g. 503*5, 429:2*3, slow:1.5*2, "
                         "reset*1, partial:500/3*1, page*2, trickle:0.2*2")
    kind, arg = match["kind"], match["arg"]
    times = int(match["times"]) if match["times"] else 1
    seconds = float(match["secs"]) if match["secs"] else None
    try:
        if kind.isdigit():
            return Fault.status(int(kind), times, float(arg) if arg else None, seconds)
        if kind == "slow":
            return Fault.slow(float(arg or 1.0), times, seconds)
        if kind == "reset":
            return Fault.reset(times, seconds)
        if kind == "page":
            return Fault.page(times, seconds)
        if kind == "trickle":
            return Fault.trickle(float(arg or 0.5), times, seconds)
        code, _, every = (arg or "500/2").partition("/")
        return Fault.partial(int(code), int(every or 2), times)
    except ValueError as exc:
        problem = str(exc) if "must be" in str(exc) else "its argument is not a number"
        raise ValueError(f"bad fault {text!r}: {problem}") from None


class FaultPlan:
    """The schedule, consumed one POST at a time; thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._faults: Deque[Fault] = collections.deque()
        self._left = 0
        self._until: Optional[float] = None
        self._lock = threading.Lock()
        self._clock = clock
        self.applied = 0

    def add(self, *faults: Fault) -> "FaultPlan":
        with self._lock:
            self._faults.extend(faults)
        return self

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self._left = 0
            self._until = None

    def __len__(self) -> int:
        return len(self._faults)

    def next(self) -> Optional[Fault]:
        """The fault for this request, if any."""
        with self._lock:
            while self._faults:
                fault = self._faults[0]
                now = self._clock()
                if fault.seconds is not None:
                    if self._until is None:
                        self._until = now + fault.seconds
                    if now < self._until:
                        self.applied += 1
                        return fault
                    self._faults.popleft()
                    self._until = None
                    continue
                if self._left == 0:
                    self._left = fault.times
                self._left -= 1
                if self._left == 0:
                    self._faults.popleft()
                self.applied += 1
                return fault
            return None
