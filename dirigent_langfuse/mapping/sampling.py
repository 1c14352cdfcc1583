"""Sampling (`sample_rate`): which sessions are mirrored at all.

Promises:
- The decision is per session (scroll), never per event: a session is kept whole or left out
  whole, so no trace in Langfuse is ever missing some of its observations because of sampling.
- It is deterministic: the same scroll gets the same answer in every process, after a restart
  and over both transports. It is the rule of OpenTelemetry's `TraceIdRatioBased` sampler (what
  Langfuse's current SDK uses), applied to the session's OTel trace id: kept when the id's lowest
  60 bits, read as a number, are below `sample_rate` × 2^60. Not the lowest 64 as OTel reads them:
  our trace ids are UUIDs (the scroll's own, or uuid5 of it), whose bits 62 and 63 are fixed (the
  variant), so 64 bits would keep every session at rates above 3/4 and none below 1/2.
"""

from __future__ import annotations

import functools

from .ids import otel_trace_id

__all__ = ["sampled_in"]

_SPAN = 2**60


@functools.lru_cache(maxsize=4096)  # asked once per event: a session's events share the answer
def sampled_in(scroll_id: str, rate: float) -> bool:
    """True when the session `scroll_id` is mirrored at `rate` (0 to 1)."""
    if rate >= 1.0:
        return True
    return int(otel_trace_id(scroll_id)[17:], 16) < round(rate * _SPAN)
