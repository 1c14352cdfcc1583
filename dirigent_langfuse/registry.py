"""Stream factories, their registry, and `StreamSet`, which fans events out to streams.

A host loads factories from the `dirigent.streams` entry-point group, builds one stream per
enabled `StreamSpec`, and hands every event to the `StreamSet`. One stream's exception never
reaches another stream or the caller: it is logged and counted as a FAILED(INVALID) outcome.
"""

from __future__ import annotations

import abc
import logging
import sys
import threading
import time
from typing import Dict, Iterable, List, Optional

from .bus import BusEvent
from .contracts import OutcomeStatus, SessionStream, StreamError, StreamOutcome, daemon, seconds
from .errors import RegistryError
from .specs import StreamSpec

__all__ = ["StreamFactory", "StreamFactoryRegistry", "StreamSet", "ENTRY_POINT_GROUP"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "dirigent.streams"
_GRACE = 1.0  # seconds past a flush's or shutdown's timeout that StreamSet waits for the answers


class StreamFactory(abc.ABC):
    """Builds streams of one `kind` from their specs."""

    kind: str

    @abc.abstractmethod
    def create(self, spec: StreamSpec) -> SessionStream: ...


class StreamFactoryRegistry:
    """Factories by kind. Registering a kind twice, or asking for an unknown one, is an error."""

    def __init__(self) -> None:
        self._factories: Dict[str, StreamFactory] = {}
        self._broken: Dict[str, str] = {}  # entry points that could not be loaded: kind -> why

    def register(self, factory: StreamFactory) -> None:
        kind = getattr(factory, "kind", None)
        if not isinstance(kind, str) or not kind:
            raise RegistryError(f"{type(factory).__name__} has no 'kind'")
        if kind in self._factories:
            raise RegistryError(f"stream kind {kind!r} is already registered")
        self._factories[kind] = factory

    def get(self, kind: str) -> StreamFactory:
        try:
            return self._factories[kind]
        except KeyError:
            if kind in self._broken:
                raise RegistryError(f"stream kind {kind!r} is installed but could not be loaded: {self._broken[kind]}") from None
            known = ", ".join(sorted(self._factories)) or "none"
            raise RegistryError(f"unknown stream kind {kind!r} (known: {known})") from None

    def create(self, spec: StreamSpec) -> SessionStream:
        return self.get(spec.type).create(spec)

    def kinds(self) -> List[str]:
        return sorted(self._factories)

    @classmethod
    def from_entry_points(cls, group: str = ENTRY_POINT_GROUP) -> "StreamFactoryRegistry":
        """A registry with every factory installed packages declare under `group`.

        One package's broken entry point (its module raises on import, its factory on creation,
        or it declares a kind another package declared already) costs only that kind: it is
        logged at ERROR here, and asking for that kind raises `RegistryError` saying why. The
        other kinds, ours among them, load as ever."""
        from importlib import metadata

        registry = cls()
        if sys.version_info >= (3, 10):
            points = metadata.entry_points(group=group)
        else:  # pragma: no cover - Python 3.9
            points = metadata.entry_points().get(group, [])
        seen = set()
        for point in points:
            # one distribution found twice on sys.path (an install plus the source tree's
            # egg-info, say) lists its entry points twice: the same target is registered once
            if (point.name, point.value) in seen:
                continue
            seen.add((point.name, point.value))
            try:
                factory = point.load()
                registry.register(factory() if isinstance(factory, type) else factory)
            except Exception as exc:  # another package's bug: never the end of every stream
                why = f"{type(exc).__name__}: {exc} (entry point {point.name} = {point.value})"
                registry._broken.setdefault(point.name, why)
                log.error("stream kind %r cannot be loaded, so no stream of that kind can be made: %s", point.name, why)
        return registry


class StreamSet:
    """Every enabled stream of a configuration, fed from one place.

    `on_event` hands the event to each stream whose scope matches and returns their outcomes by
    stream name. A stream that raises is logged and answered FAILED(INVALID); the others go on.
    """

    def __init__(self, streams: Iterable[SessionStream], specs: Optional[Iterable[StreamSpec]] = None) -> None:
        self.streams: List[SessionStream] = list(streams)
        scopes = {spec.name: spec.scope for spec in specs or ()}
        self._scopes = [scopes.get(s.name) for s in self.streams]
        self._lock = threading.RLock()
        self.errors: Dict[str, int] = {s.name: 0 for s in self.streams}

    @classmethod
    def from_specs(cls, specs: Iterable[StreamSpec], registry: StreamFactoryRegistry) -> "StreamSet":
        enabled = [s for s in specs if s.enabled]
        return cls([registry.create(spec) for spec in enabled], enabled)

    def _guard(self, stream: SessionStream, call: str, *args: object) -> StreamOutcome:
        try:
            outcome: StreamOutcome = getattr(stream, call)(*args)
            return outcome
        except Exception as exc:  # a stream's bug must not reach the host
            with self._lock:
                self.errors[stream.name] = self.errors.get(stream.name, 0) + 1
            log.exception("stream %r raised in %s", stream.name, call)
            return StreamOutcome.failed(StreamError.INVALID, f"{type(exc).__name__} in {call}")

    def on_event(self, event: BusEvent) -> Dict[str, StreamOutcome]:
        out = {}
        for stream, scope in zip(self.streams, self._scopes):
            if scope is None or scope.matches(event):
                out[stream.name] = self._guard(stream, "on_event", event)
        return out

    def flush(self, timeout: Optional[float] = None) -> Dict[str, StreamOutcome]:
        return self._each("flush", timeout)

    def shutdown(self, timeout: Optional[float] = None) -> Dict[str, StreamOutcome]:
        return self._each("shutdown", timeout)

    def __enter__(self) -> "StreamSet":
        return self

    def __exit__(self, *exc: object) -> None:
        """`with StreamSet(...) as streams:` shuts every stream down on the way out."""
        self.shutdown()

    def _each(self, call: str, timeout: Optional[float]) -> Dict[str, StreamOutcome]:
        """`call` on every stream at once, each on a thread of its own, all with the same timeout:
        one stream whose backend hangs must not spend the time the others need to deliver. The
        wait is bounded by the timeout (and a second's grace for the answers); a stream that has
        not answered by then is FAILED and its call goes on on its thread. With no timeout, each
        stream's own default bounds its call.

        Where the calling thread is inside one of the streams (`busy_here`: a signal handler
        interrupted it), a call on another thread would wait for this one: then every call is made
        here, one after another, with one deadline, and such a stream answers at once."""
        timeout = None if timeout is None else seconds(timeout, 0.0)
        if len(self.streams) < 2 or self._busy_here():
            return self._one_by_one(call, timeout)
        answers: Dict[int, StreamOutcome] = {}
        threads = []
        for index, stream in enumerate(self.streams):
            thread = daemon(self._answer, f"dirigent-streamset[{stream.name}]:{call}", index, call, timeout, answers)
            if thread is None:
                self._answer(index, call, timeout, answers)
            else:
                threads.append(thread)
        deadline = None if timeout is None else time.monotonic() + timeout + _GRACE
        for thread in threads:
            left = None if deadline is None else min(max(0.0, deadline - time.monotonic()), threading.TIMEOUT_MAX)
            thread.join(left)
        # one key per thread, each written once: no lock, which a late thread could hold
        return {s.name: answers.get(i) or self._late(s, call, timeout) for i, s in enumerate(self.streams)}

    def _answer(self, index: int, call: str, timeout: Optional[float], answers: Dict[int, StreamOutcome]) -> None:
        answers[index] = self._guard(self.streams[index], call, timeout)

    def _busy_here(self) -> bool:
        if self._lock._is_owned():  # type: ignore[attr-defined]  # interrupted in _guard
            return True
        for stream in self.streams:
            check = getattr(stream, "busy_here", None)  # a duck-typed stream may not have it
            try:
                if check is not None and check():
                    return True
            except Exception:  # cannot tell: the calls that are safe anywhere
                log.exception("stream %r raised in busy_here", stream.name)
                return True
        return False

    @staticmethod
    def _late(stream: SessionStream, call: str, timeout: Optional[float]) -> StreamOutcome:
        log.warning("stream %r did not answer %s within its timeout (%s s); it goes on on its own thread",
                    stream.name, call, timeout)
        return StreamOutcome.failed(StreamError.TRANSPORT, f"{call} did not answer within {timeout} s")

    def _one_by_one(self, call: str, timeout: Optional[float]) -> Dict[str, StreamOutcome]:
        deadline = None if timeout is None else time.monotonic() + timeout
        out = {}
        for stream in self.streams:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            out[stream.name] = self._guard(stream, call, left)
        return out


def all_ok(outcomes: Dict[str, StreamOutcome]) -> bool:
    return all(o.status is not OutcomeStatus.FAILED for o in outcomes.values())
