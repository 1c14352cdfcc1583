"""`LangfuseFactory`, registered as stream kind "langfuse" (entry point group `dirigent.streams`)."""

from __future__ import annotations

from .config import LangfuseConfig
from .registry import StreamFactory
from .specs import StreamSpec
from .stream import LangfuseStream

__all__ = ["LangfuseFactory"]


class LangfuseFactory(StreamFactory):
    """Builds a `LangfuseStream` from a spec's `params` (env fallbacks as `LangfuseConfig`)."""

    kind = "langfuse"

    def create(self, spec: StreamSpec) -> LangfuseStream:
        config = LangfuseConfig.from_params(spec.params, stream=spec.name)
        return LangfuseStream(config, name=spec.name)
