"""What the worker and a transport hand each other: records on the wire, and what a request did.

A transport (`wire/`) turns queued items into `Record`s (encoded once, kept for retries and the
spool) and sends a list of records as one request, answering with a `Report` that sorts every
record into delivered, to retry, or dropped. The worker (`delivery/`) keeps records, sends them
through the transport and hands the report to its accounts.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import attrs

from ..errors import LangfuseError, LangfuseStatusError, LangfuseTransportError

__all__ = ["Record", "Report", "NotChosen", "request_error", "OPEN_WIRE"]

# The spool's wire for the state of OTel observations a process left open (wire/otlp.py,
# `open_states`): never sent, taken up by the next start.
OPEN_WIRE = "otel-open"


class NotChosen(LangfuseTransportError):
    """`transport = "auto"` cannot choose yet: Langfuse's health check got no answer. The worker
    keeps the items queued and asks again after a backoff (it guesses only at shutdown)."""


class Record:
    """One unit on the wire: `key` (envelope or span id), its encoded `data`, and how many
    queued items it stands for (`weight`; an OTel span merges its create and its updates).
    `refusals`: how many answers refused it alone with a retryable status (a 207's 5xx).
    `slot`: its row in the spool, once spooled (two records may share a key: a replayed item, a
    span sent again; each has a row of its own). `wire`: the format it was encoded in ("ingestion"
    or "otel"), so that `transport = "auto"`, once it has moved on, never sends a record in the
    other one."""

    __slots__ = ("key", "data", "weight", "truncated", "refusals", "slot", "wire")

    def __init__(self, key: str, data: bytes, weight: int = 1, truncated: bool = False,
                 slot: Optional[str] = None, wire: str = "") -> None:
        self.key = key
        self.data = data
        self.weight = weight
        self.truncated = truncated
        self.refusals = 0
        self.slot = slot
        self.wire = wire

    def __repr__(self) -> str:
        return f"Record({self.key!r}, {len(self.data)} bytes, weight={self.weight})"


@attrs.define
class Report:
    """A request's result, record by record. `error` is set when the whole request failed;
    `refused` (reason, message) when it succeeded but refused some records for now. `rewire`:
    records in a wire format Langfuse no longer takes (it was upgraded to v4): the transport may
    encode them again (`AutoTransport.rewire`). `sent`: False when no request was made (every
    record was for `rewire`): no answer of Langfuse's, so nothing for health or the counts."""

    delivered: List[Record] = attrs.field(factory=list)
    retry: List[Record] = attrs.field(factory=list)
    dropped: List[Tuple[Record, str, str]] = attrs.field(factory=list)
    rewire: List[Record] = attrs.field(factory=list)
    sent: bool = True
    error: Optional[LangfuseError] = None
    refused: Optional[Tuple[str, str]] = None
    retries: int = 0
    bytes_sent: int = 0


def request_error(exc: LangfuseError) -> Tuple[str, bool, Optional[float]]:
    """(reason, retryable, retry_after) for a request that failed as a whole."""
    if isinstance(exc, LangfuseStatusError):
        return f"status_{exc.status}", exc.retryable, exc.retry_after
    return "transport", True, None
