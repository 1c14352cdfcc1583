import logging
import threading

import pytest

from dirigent_langfuse import (
    LangfuseFactory,
    LangfuseStream,
    RegistryError,
    SessionStream,
    StreamError,
    StreamFactory,
    StreamFactoryRegistry,
    StreamOutcome,
    StreamSet,
    StreamStats,
    load_stream_specs,
)
from dirigent_langfuse.streams import Health

from .helpers import created


class Recording(SessionStream):
    def __init__(self, name, fail=False):
        self.name = name
        self.fail = fail
        self.events = []
        self.flushed = self.closed = 0

    def on_event(self, event):
        if self.fail:
            raise RuntimeError("boom")
        self.events.append(event)
        return StreamOutcome.accepted()

    def flush(self, timeout=None):
        self.flushed += 1
        return StreamOutcome.delivered()

    def shutdown(self, timeout=None):
        self.closed += 1
        return StreamOutcome.delivered()

    def health(self):
        return Health.HEALTHY

    def stats(self):
        return StreamStats()


class RecordingFactory(StreamFactory):
    kind = "recording"

    def create(self, spec):
        return Recording(spec.name, fail=spec.params.get("fail", False))


def test_register_get_create_and_errors():
    registry = StreamFactoryRegistry()
    registry.register(RecordingFactory())
    assert registry.kinds() == ["recording"]
    with pytest.raises(RegistryError, match="already registered"):
        registry.register(RecordingFactory())
    with pytest.raises(RegistryError, match=r"unknown stream kind 'nope' \(known: recording\)"):
        registry.get("nope")


def test_entry_point_registers_langfuse():
    registry = StreamFactoryRegistry.from_entry_points()
    if "langfuse" not in registry.kinds():
        pytest.skip("the package is not installed (entry points come from `pip install .`)")
    assert isinstance(registry.get("langfuse"), LangfuseFactory)


def test_a_broken_entry_point_costs_only_its_own_kind(monkeypatch, caplog):
    """Another installed package's entry point raises on import, or declares our kind again.
    Before, from_entry_points raised, and no stream of any kind could be made."""
    from importlib import metadata

    points = [
        metadata.EntryPoint("langfuse", "dirigent_langfuse.factory:LangfuseFactory", "dirigent.streams"),
        metadata.EntryPoint("kafka", "no_such_package.streams:KafkaFactory", "dirigent.streams"),
        metadata.EntryPoint("langfuse", "dirigent_langfuse:LangfuseFactory", "dirigent.streams"),  # a fork of ours, say
    ]

    class Points(list):  # what Python 3.9's entry_points() answers: group -> points
        def get(self, group, default=None):
            return self if group == "dirigent.streams" else default

    monkeypatch.setattr(metadata, "entry_points", lambda **kw: points if kw else Points(points))
    with caplog.at_level(logging.ERROR, logger="dirigent_langfuse.registry"):
        registry = StreamFactoryRegistry.from_entry_points()
    assert isinstance(registry.get("langfuse"), LangfuseFactory)  # the first of the two, as installed
    assert registry.kinds() == ["langfuse"]
    with pytest.raises(RegistryError, match=r"stream kind 'kafka' is installed but could not be loaded: "
                                            r"ModuleNotFoundError: No module named 'no_such_package'"):
        registry.get("kafka")
    said = [r.getMessage() for r in caplog.records]
    assert any("'kafka' cannot be loaded" in m and "no_such_package.streams:KafkaFactory" in m for m in said), said
    assert any("'langfuse' cannot be loaded" in m and "already registered" in m for m in said), said


def test_factory_builds_a_langfuse_stream():
    (spec,) = load_stream_specs('[[streams]]\nname = "lf"\ntype = "langfuse"\n[streams.params]\n'
                                'host = "http://127.0.0.1:9"\npublic_key = "p"\nsecret_key = "s"\natexit_flush = false\n')
    stream = LangfuseFactory().create(spec)
    assert isinstance(stream, LangfuseStream) and stream.name == "lf"
    assert stream.shutdown(1).ok


TOML = '''
[[streams]]
name = "a"
type = "recording"
[[streams]]
name = "b"
type = "recording"
[streams.scope]
kind = "connector"
connector_uid = "conn-B"
[[streams]]
name = "off"
type = "recording"
enabled = false
[[streams]]
name = "bad"
type = "recording"
[streams.params]
fail = true
'''


def test_stream_set_fans_out_by_scope_and_isolates_failures(caplog):
    registry = StreamFactoryRegistry()
    registry.register(RecordingFactory())
    streams = StreamSet.from_specs(load_stream_specs(TOML), registry)
    assert [s.name for s in streams.streams] == ["a", "b", "bad"]
    with caplog.at_level(logging.ERROR):
        outcomes = streams.on_event(created(connector="conn-A"))
    assert set(outcomes) == {"a", "bad"}
    assert outcomes["a"].ok and outcomes["bad"].error is StreamError.INVALID
    assert streams.errors["bad"] == 1 and "bad" in caplog.text
    streams.on_event(created(connector="conn-B"))
    a, b, _ = streams.streams
    assert len(a.events) == 2 and len(b.events) == 1
    assert all(o.ok for o in streams.flush(1).values())
    streams.shutdown(1)
    assert a.closed == b.closed == 1


class Gated(Recording):
    """Notes each shutdown's timeout. One that `opens` sets the gate and answers at once (FAILED
    with no time left); the other's backend hangs: it waits for the gate, at most its timeout."""

    def __init__(self, name, gate, opens=False):
        super().__init__(name)
        self.gate, self.opens = gate, opens
        self.timeouts = []

    def shutdown(self, timeout=None):
        self.timeouts.append(timeout)
        if self.opens:
            self.gate.set()
            ok = bool(timeout)
        else:
            ok = self.gate.wait(timeout)
        return StreamOutcome.delivered() if ok else StreamOutcome.failed(StreamError.TRANSPORT, "no time")


def test_a_stream_set_shuts_its_streams_down_at_once_so_a_hanging_one_costs_the_others_nothing():
    """Before, the set shut its streams down one after another with one deadline: a first stream
    whose backend hung spent all of it, and the next got no time at all to deliver (its items
    dropped although its backend was fine). Now every stream gets the whole timeout, at once."""
    release = threading.Event()
    hanging, healthy = Gated("hanging", release), Gated("healthy", release, opens=True)
    outcomes = StreamSet([hanging, healthy]).shutdown(5)
    assert healthy.timeouts == [5.0] and hanging.timeouts == [5.0]
    assert outcomes["healthy"].ok and outcomes["hanging"].ok  # released while it waited: both ran at once


def test_a_stream_set_answers_for_a_stream_that_does_not_answer_and_goes_on(caplog):
    never = threading.Event()
    stuck, other = Gated("stuck", never), Recording("other")
    stuck.shutdown = lambda timeout=None: never.wait() or StreamOutcome.delivered()  # ignores its timeout
    with caplog.at_level(logging.WARNING):
        outcomes = StreamSet([stuck, other]).shutdown(0)
    never.set()
    assert outcomes["other"].ok and other.closed == 1
    assert outcomes["stuck"].error is StreamError.TRANSPORT and "did not answer" in outcomes["stuck"].detail
    assert "'stuck' did not answer shutdown" in caplog.text


class Inside(Recording):
    def __init__(self, name):
        super().__init__(name)
        self.threads = []

    def busy_here(self):
        return True

    def shutdown(self, timeout=None):
        self.threads.append(threading.current_thread())
        return StreamOutcome.delivered()


def test_a_stream_set_makes_its_calls_on_the_callers_thread_when_that_thread_is_inside_a_stream():
    """From a signal handler that interrupted a stream on this thread, a call on another thread
    would wait for this one; the set calls every stream here instead (each answers at once)."""
    inside, other = Inside("inside"), Inside("other")
    other.busy_here = lambda: False
    StreamSet([other, inside]).shutdown(1)
    assert inside.threads == other.threads == [threading.current_thread()]
    plain = Inside("plain")
    plain.busy_here = lambda: False
    StreamSet([plain, Recording("x")]).shutdown(1)
    assert plain.threads[0] is not threading.current_thread()


def test_a_langfuse_stream_is_busy_here_while_this_thread_holds_one_of_its_locks():
    (spec,) = load_stream_specs('[[streams]]\nname = "lf"\ntype = "langfuse"\n[streams.params]\n'
                                'host = "http://127.0.0.1:9"\npublic_key = "p"\nsecret_key = "s"\natexit_flush = false\n')
    stream = LangfuseFactory().create(spec)
    try:
        assert not stream.busy_here()
        for lock in (stream._lock, stream._pending._lock, stream._state.lock, stream._worker.state.lock):
            with lock:
                assert stream.busy_here()
        seen = []
        thread = threading.Thread(target=lambda: seen.append(stream.busy_here()))
        with stream._lock:  # held by this thread, not by that one
            thread.start()
            thread.join()
        assert seen == [False]
    finally:
        stream.shutdown(1)


def test_a_stream_set_shutdown_from_inside_a_langfuse_stream_never_hangs():
    """The interrupted frame holds the stream's lock on this thread (as a signal handler's call
    finds it); a shutdown made for that stream on another thread would wait for it for ever."""
    (spec,) = load_stream_specs('[[streams]]\nname = "lf"\ntype = "langfuse"\n[streams.params]\n'
                                'host = "http://127.0.0.1:9"\npublic_key = "p"\nsecret_key = "s"\natexit_flush = false\n')
    stream, other = LangfuseFactory().create(spec), Recording("other")
    answers = []

    def handler():
        with stream._lock:
            answers.append(StreamSet([stream, other]).shutdown())

    thread = threading.Thread(target=handler, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "the set's shutdown waited for a lock its own thread held"
    assert set(answers[0]) == {"lf", "other"} and other.closed == 1
