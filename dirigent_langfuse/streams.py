"""The host's stream contracts, in one place: what a stream is and answers (`SessionStream`,
`StreamOutcome`, `StreamStats`, `Health`), how streams are configured (`StreamScope`,
`StreamSpec`, `load_stream_specs`) and made and fanned out (`StreamFactory`,
`StreamFactoryRegistry`, `StreamSet`).

They live in `contracts`, `specs` and `registry`; this module gathers them for a host
(`from dirigent_langfuse import streams`).
"""

from __future__ import annotations

from .contracts import (
    Health,
    HealthTracker,
    OutcomeStatus,
    SessionStream,
    StreamError,
    StreamOutcome,
    StreamStats,
)
from .registry import StreamFactory, StreamFactoryRegistry, StreamSet
from .specs import StreamScope, StreamSpec, load_stream_specs

__all__ = [
    "OutcomeStatus",
    "StreamError",
    "StreamOutcome",
    "Health",
    "HealthTracker",
    "StreamStats",
    "SessionStream",
    "StreamScope",
    "StreamSpec",
    "load_stream_specs",
    "StreamFactory",
    "StreamFactoryRegistry",
    "StreamSet",
]
