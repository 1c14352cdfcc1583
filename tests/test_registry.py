import logging

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
