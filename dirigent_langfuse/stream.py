"""`LangfuseStream`: the `SessionStream` that mirrors BusEvents into one Langfuse project.

On the caller's thread `on_event` only validates, maps (a pure function over bounded state) and
appends to a bounded queue: no network I/O, no waiting on the worker, no exception for a bad
event or a dead backend. Everything else — encoding, the transport choice, requests, retries,
the retry buffer, the spool — happens on the stream's daemon worker thread.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import attrs

from .bus import BusEvent, UnknownEvent
from .config import LangfuseConfig
from .contracts import Health, HealthTracker, SessionStream, StreamError, StreamOutcome, StreamStats, daemon, seconds
from .delivery.client import LangfuseClient
from .delivery.forks import Forks
from .delivery.worker import FlushResult, Worker
from .errors import ConfigError
from .mapping.items import MappingState, bus_event_to_items, invalid, maps, streams_text
from .mapping.masking import Masker
from .mapping.masking import resolve as resolve_mask
from .mapping.pending import PendingBuffer
from .mapping.sampling import sampled_in
from .mapping.snapshot import LIMIT, uncopied
from .throttle import Throttled
from .wire.ingestion import IngestionTransport

__all__ = ["LangfuseStream", "make_transport"]

log = logging.getLogger(__name__)

_ONE_QUEUED = StreamOutcome.accepted("1 item(s) queued")  # the usual answer; outcomes are immutable
_TEXT_KEPT = StreamOutcome.accepted("text kept for the message's output")
_DISABLED = StreamOutcome.skipped("tracing is disabled (tracing_enabled = false)")


class _Exits:
    """The streams not shut down yet, and the one exit hook that shuts them down together.

    Held strongly until `shutdown()`: a host that drops its stream without one (a script's
    `main()` returned) must not lose what was queued without a word. At exit each stream's hook
    runs on a thread of its own, all at once, so N streams whose backend hangs cost one
    `shutdown_timeout`, not N."""

    def __init__(self) -> None:
        self._lock = threading.RLock()  # re-entrant: a signal handler may shut a stream down in add()
        self._streams: Dict[int, "LangfuseStream"] = {}
        self._hooked = False

    def add(self, stream: "LangfuseStream") -> None:
        with self._lock:
            self._streams[id(stream)] = stream
            if not self._hooked:
                atexit.register(self.run)
                self._hooked = True

    def remove(self, stream: "LangfuseStream") -> None:
        with self._lock:
            self._streams.pop(id(stream), None)

    def run(self) -> None:
        with self._lock:
            streams = list(self._streams.values())
        if len(streams) == 1:
            streams[0]._at_exit()
            return
        threads = []
        for stream in streams:
            thread = daemon(stream._at_exit, f"dirigent-langfuse[{stream.name}]:exit")
            if thread is None:  # no thread at exit (Python 3.12): one after another, here
                stream._at_exit()
            else:
                threads.append(thread)
        for thread in threads:
            thread.join()  # each bounded by its stream's shutdown_timeout

    def _after_fork(self) -> None:
        self._lock = threading.RLock()


_forks = Forks(after_in_child="_after_fork")  # after the workers' (imported first): a child resets them first
_exits = _Exits()
_forks.add(_exits)


def make_transport(config: LangfuseConfig, client: LangfuseClient, masker: Optional[Masker] = None) -> Any:
    """The transport `config.transport` names; "auto" decides on the worker thread, once."""
    if config.transport == "ingestion":
        return IngestionTransport(client, config, masker)
    from .wire.auto import AutoTransport
    from .wire.otlp import OtelTransport

    if config.transport == "otel":
        return OtelTransport(client, config, masker)
    return AutoTransport(client, config, masker)


class LangfuseStream(SessionStream):
    """Mirrors BusEvents into Langfuse; see the module docstring for what runs where."""

    def __init__(
        self,
        config: LangfuseConfig,
        name: str = "langfuse",
        *,
        client: Optional[LangfuseClient] = None,
        transport: Any = None,
        clock: Callable[[], float] = time.monotonic,
        mask: Optional[Callable[..., Any]] = None,
    ) -> None:
        """`mask`: a function called as `mask(data=value)` on every input, output, metadata and
        status message before it leaves the process (see mapping/masking.py); it wins over `config.mask`."""
        self.name = name
        self.config = config
        if config.debug:  # (LANGFUSE_DEBUG, as Langfuse's SDKs read it) the package's own logger only
            logging.getLogger(__package__).setLevel(logging.DEBUG)
        try:
            self.client = client or LangfuseClient(config)
        except ConfigError as exc:  # (what requests reads from the environment)
            raise ConfigError(exc.problem, stream=name, key=exc.key) from None
        self._health = HealthTracker(config.degraded_after, config.unavailable_after)
        self._state = MappingState(max_scrolls=config.max_sessions, ttl=config.session_ttl, clock=clock)
        self._pending = PendingBuffer(
            config.pending_max_keys, config.pending_max_events_per_key, config.pending_ttl, clock=clock, name=name
        )
        if mask is None and config.mask:
            mask = resolve_mask(config.mask, stream=name)
        self._masker = Masker(mask, name) if mask is not None else None
        if transport is None:
            transport = make_transport(config, self.client, self._masker)
        elif getattr(transport, "masker", False) is None:  # a transport made by the caller masks too
            transport.masker = self._masker
        self.transport = transport
        spool = None
        if config.spool_path and config.tracing_enabled:  # disabled: not even an old spool is re-sent
            from .delivery.spool import Spool

            spool = Spool(config.spool_path, stream=name)
        self._worker = Worker(config, self.transport, self._health, name=name, spool=spool, clock=clock)
        self._lock = threading.RLock()
        self._closed = False
        self._final: Optional[StreamOutcome] = None
        self._finisher: Optional[threading.Thread] = None  # a shutdown that could not wait where it was called
        self.events_seen = 0
        self.events_skipped = 0
        self.events_sampled_out = 0
        self.events_held = 0
        self.events_failed = 0
        self.payloads_uncopied = 0
        self._held_answered: Dict[str, int] = {}  # the held events' drops by reason, at the last flush/shutdown
        self._throttled = Throttled(log)  # events refused as invalid: said once a minute, with a count
        _forks.add(self)
        if config.tracing_enabled:  # a disabled stream has nothing to deliver: not held for the exit
            _exits.add(self)

    def _at_exit(self) -> None:
        if self.config.atexit_flush:
            self.shutdown(self.config.shutdown_timeout)  # also waits for a shutdown going on on its own thread
            return
        left, held = self._worker.pending, len(self._pending)
        if (left or held) and not self._closed:
            log.warning("stream %r: exiting with %d item(s) not delivered and %d event(s) held for a bind: "
                        "atexit_flush is off and shutdown() was not called", self.name, left, held)

    def busy_here(self) -> bool:
        """True when this thread holds one of the stream's locks (a signal handler interrupted
        the stream on it) or is one of the stream's own threads (a `mask` or a log handler)."""
        locks = (self._lock, self._pending._lock, self._state.lock)  # and the worker's, in inside()
        return self._worker.inside() or any(lock._is_owned() for lock in locks)  # type: ignore[attr-defined]

    def _after_fork(self) -> None:
        # Locks held by the parent's threads at fork time would never be released here.
        self._lock = threading.RLock()
        self._pending._reset_after_fork()
        self._state._reset_after_fork()

    def __repr__(self) -> str:
        return f"LangfuseStream(name={self.name!r}, host={self.config.host!r}, transport={self.config.transport!r})"

    # -- the host's thread ------------------------------------------------------------------------

    def on_event(self, event: BusEvent) -> StreamOutcome:
        before = uncopied()
        try:
            outcome = self._on_event(event)
        except Exception as exc:  # the host's thread is sacred
            with self._lock:
                self.events_failed += 1
            log.exception("stream %r: could not handle %s", self.name, type(event).__name__)
            outcome = StreamOutcome.failed(StreamError.INVALID, f"{type(exc).__name__}: {exc}")
        kept = uncopied() - before
        if kept:
            self._uncopied(kept, event)
        return outcome

    def _uncopied(self, n: int, event: BusEvent) -> None:
        """Payloads too large to copy on the host's thread were kept by reference (mapping/snapshot.py)."""
        with self._lock:
            self.payloads_uncopied += n
        self._throttled(
            "uncopied", logging.WARNING,
            "stream %r: a payload of a %s is larger than the copy made on the caller's thread takes (%d members of "
            "containers, 100 levels): kept by reference, so a change the host makes to it after on_event may "
            "reach Langfuse", self.name, type(event).__name__, LIMIT,
        )

    def _count(self, attr: str) -> None:
        with self._lock:
            setattr(self, attr, getattr(self, attr) + 1)

    def _on_event(self, event: BusEvent) -> StreamOutcome:
        with self._lock:
            self.events_seen += 1
            closed = self._closed
        if closed:
            self._count("events_failed")
            return StreamOutcome.failed(StreamError.CLOSED, "stream is shut down")
        if not self.config.tracing_enabled:
            self._count("events_skipped")
            return _DISABLED
        if not isinstance(event, BusEvent):
            self._count("events_failed")
            return StreamOutcome.failed(StreamError.INVALID, f"not a BusEvent: {type(event).__name__}")
        if isinstance(event, UnknownEvent):
            self._count("events_skipped")
            return StreamOutcome.skipped(f"unknown event type {event.type!r}")
        if not event.scroll_id:
            if not self.config.late_bind_buffer:
                self._count("events_skipped")
                return StreamOutcome.skipped("no scroll_id (late-bind buffering is off)")
            if not maps(event):
                self._count("events_skipped")
                return StreamOutcome.skipped("no scroll_id, and nothing to send for this event")
            problem = invalid(event)
            if problem is not None:
                return self._refuse(problem)
            self._pending.hold(event)
            self._count("events_held")
            return StreamOutcome.accepted("held until the host binds its scroll")
        events: List[BusEvent] = self._pending.release(event)
        released = len(events)
        if self.config.sample_rate < 1.0 and not sampled_in(event.scroll_id, self.config.sample_rate):
            with self._lock:
                self.events_sampled_out += released + 1
            return StreamOutcome.skipped(f"session sampled out (sample_rate {self.config.sample_rate:g})")
        refused = None
        if released:
            events = [attrs.evolve(e, scroll_id=event.scroll_id) for e in events]
            refused = invalid(event)  # the held events go; this one is refused
        if refused is None:
            events.append(event)
        items: List[Dict[str, Any]] = []
        for each in events:
            items.extend(bus_event_to_items(each, self._state))
        if not items:
            if streams_text(event) and self._state.in_message(event.scroll_id):
                return _TEXT_KEPT
            problem = invalid(event)  # asked only here: an event that made items was not invalid
            if problem is not None:
                return self._refuse(problem)
            self._count("events_skipped")
            return StreamOutcome.skipped("nothing to send for this event")
        if not self._worker.submit(items):
            self._count("events_failed")
            if self._closed:
                return StreamOutcome.failed(StreamError.CLOSED, "stream is shut down")
            return StreamOutcome.failed(StreamError.OVERFLOW, f"queue full ({self.config.max_queue_items} items); dropped")
        if refused is not None:
            return self._refuse(refused)
        if len(items) == 1 and not released:
            return _ONE_QUEUED
        detail = f"{len(items)} item(s) queued"
        if released:
            detail += f", {released} held event(s) released"
        return StreamOutcome.accepted(detail)

    def _refuse(self, problem: str) -> StreamOutcome:
        """FAILED(INVALID) for an event that cannot be mirrored: counted, said once a minute."""
        self._count("events_failed")
        self._throttled("invalid", logging.WARNING, "stream %r: %s", self.name, problem)
        return StreamOutcome.failed(StreamError.INVALID, problem)

    # -- waiting ----------------------------------------------------------------------------------

    def flush(self, timeout: Optional[float] = None) -> StreamOutcome:
        """Send what is queued now and wait (at most `timeout`, default `config.flush_timeout`)."""
        timeout = seconds(timeout, self.config.flush_timeout)
        self._pending.expire()
        if self._closed:
            return self._final or StreamOutcome.failed(StreamError.CLOSED, "stream is shut down")
        return self._held_dropped(_outcome(self._worker.flush(timeout), "flush", self._worker.last_error_kind))

    def _held_dropped(self, outcome: StreamOutcome) -> StreamOutcome:
        """`outcome`, saying which held events were dropped since the last answer: they were
        answered ACCEPTED, so a DELIVERED would hide them; it becomes FAILED(DROPPED)."""
        now = self._pending.drops()
        with self._lock:
            since = {r: n - self._held_answered.get(r, 0) for r, n in now.items() if n > self._held_answered.get(r, 0)}
            self._held_answered = now
        if not since:
            return outcome
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(since.items()))
        said = (f"{sum(since.values())} accepted event(s) held for a late bind were dropped since the last answer, "
                f"never bound to a scroll in time ({reasons}; see stats().events_dropped)")
        if outcome.ok:
            return StreamOutcome.failed(StreamError.DROPPED, f"{outcome.detail}; but {said}")
        return attrs.evolve(outcome, detail=f"{outcome.detail}; {said}")

    def shutdown(self, timeout: Optional[float] = None) -> StreamOutcome:
        """Stop accepting, deliver what can be delivered within `timeout`, count the rest.

        Called where it cannot wait (from a signal handler that interrupted this stream on the
        same thread: Python runs handlers on the main thread, between two bytecodes; or from the
        stream's own worker thread, in a `mask` or a logging handler), it answers at once, and the
        shutdown goes on on a thread of its own within `timeout`; a later `shutdown()`, and the
        exit, wait for that thread and answer its outcome."""
        timeout = seconds(timeout, self.config.shutdown_timeout)
        with self._lock:
            closed, self._closed = self._closed, True
            finisher = self._finisher
        if closed:
            if finisher is not None:
                finisher.join(min(timeout, threading.TIMEOUT_MAX))
            return self._final or StreamOutcome.failed(StreamError.CLOSED, "shutdown already running")
        if self._worker.inside():
            finisher = daemon(self._shutdown, f"dirigent-langfuse[{self.name}]:shutdown", timeout)
            if finisher is None:
                return StreamOutcome.failed(StreamError.TRANSPORT, "shutdown cannot go on from here: no thread may "
                                            "start (the interpreter is exiting)")
            self._finisher = finisher
            return StreamOutcome.failed(
                StreamError.TRANSPORT,
                "shutdown was called from inside the stream (a signal handler, a mask, a log handler?), where it "
                f"cannot wait: it goes on on a thread of its own for at most {timeout:g} s; a later shutdown() and "
                "the exit wait for it",
            )
        return self._shutdown(timeout)

    def _shutdown(self, timeout: float) -> StreamOutcome:
        self.client.stop_retrying_at(time.monotonic() + min(timeout, threading.TIMEOUT_MAX))
        self._pending.drain("unbound_at_shutdown")
        result = self._worker.shutdown(timeout)
        if not result.timed_out:
            self.client.close()
        outcome = self._held_dropped(_outcome(result, "shutdown", self._worker.last_error_kind))
        self._final = outcome
        _exits.remove(self)
        return outcome

    # -- observing --------------------------------------------------------------------------------

    def health(self) -> Health:
        return self._health.state()

    def stats(self) -> StreamStats:
        self._pending.expire()
        counts = self._worker.counts()
        dropped = dict(counts["dropped"])
        return StreamStats(
            events_seen=self.events_seen,
            events_skipped=self.events_skipped,
            events_sampled_out=self.events_sampled_out,
            events_held=len(self._pending),
            events_failed=self.events_failed,
            events_dropped=self._pending.drops(),
            items_accepted=counts["accepted"],
            items_delivered=counts["delivered"],
            items_pending=counts["pending"],
            items_failed=sum(dropped.values()),
            items_truncated=counts["truncated"],
            mask_failures=self._masker.failures if self._masker is not None else 0,
            payloads_uncopied=self.payloads_uncopied,
            dropped=dropped,
            batches=counts["batches"],
            requests=counts["requests"],
            retries=counts["retries"],
            bytes_sent=counts["bytes_sent"],
            health=self._health.state(),
            last_error=counts["last_error"],
            transport=getattr(self.transport, "name", ""),
        )


def _waiting(result: FlushResult) -> str:
    """A DELIVERED flush's detail while items are still pending: what was sent, and what waits for what."""
    observations, folded = result.open
    parts = []
    if folded:
        parts.append(f"{folded} item(s) wait in {observations} observation(s) not sent yet (over OTel a span is "
                     "sent once its observation has ended and its start is known: an end waits for its start "
                     "up to late_start_wait; shutdown() sends those still open, marked incomplete)")
    later = result.pending - folded
    if later > 0:
        parts.append(f"{later} item(s) accepted since the call, not waited for")
    return "delivered all that could be sent; " + "; ".join(parts) if parts else "everything delivered"


def _outcome(result: FlushResult, what: str, last_error_kind: Optional[str]) -> StreamOutcome:
    """What a flush or shutdown answers for the worker's `result`."""
    if result.ok:
        if result.pending:  # a flush's: never a shutdown's, which answers DELIVERED only with none
            return StreamOutcome.delivered(f"{what}: {_waiting(result)}")
        return StreamOutcome.delivered(f"{what}: everything delivered")
    kinds = [last_error_kind or ""] + list(result.dropped)
    refused = any((k.startswith("status_") and k != "status_429") or k == "otel_rejected" for k in kinds)
    error = StreamError.STATUS if refused else StreamError.TRANSPORT
    if result.timed_out:
        detail = f"{what} timed out"
        if result.pending:
            detail += f"; {result.pending} item(s) not yet delivered"
    else:
        detail = f"{what}: {result.pending} item(s) not delivered" if result.pending else \
            f"{what}: not everything was delivered"
    lost = {reason: n for reason, n in result.dropped.items() if reason != "spooled"}
    if lost:
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(lost.items()))
        detail += f"; {sum(lost.values())} item(s) dropped ({reasons})"
    if result.dropped.get("spooled"):
        detail += f"; {result.dropped['spooled']} item(s) left in the spool for the next start (spooled)"
    if result.error and not result.timed_out:
        detail += f"; last error: {result.error}"
    return StreamOutcome.failed(error, detail)
