"""Wire formats: how queued ingestion items become requests, and what a response means per item.

A transport turns items into `Record`s (encoded once, kept for retries and the spool) and sends
a list of records as one request, answering with a `Report` that sorts every record into
delivered, to retry, or dropped. Both transports share the worker, its retry buffer and health.

- `IngestionTransport`: the seed's `POST /api/public/ingestion`, one record per item.
- `otel.OtelTransport`: OTLP/JSON spans, one record per ended observation.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import attrs

from .client import LangfuseClient
from .config import LangfuseConfig
from .encoding import encode_item
from .errors import LangfuseError, LangfuseStatusError, LangfuseTransportError
from .masking import Masker

__all__ = ["Record", "Report", "IngestionTransport", "NotChosen"]

# The spool's wire for the state of OTel observations a process left open (otel.py, `open_states`):
# never sent, taken up by the next start.
OPEN_WIRE = "otel-open"

log = logging.getLogger(__name__)


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


class IngestionTransport:
    """`POST /api/public/ingestion` with `{"batch": [...]}`; Langfuse answers 207 per item.

    An item refused with a retryable status (5xx, 429) is re-sent, at most `max_retries` times
    (the client's, as for a whole request): one that Langfuse refuses every time (a poison item)
    is then dropped, counted by its status, instead of being re-sent for ever."""

    name = "ingestion"
    envelope = (b'{"batch":[', b"]}")

    def __init__(self, client: LangfuseClient, config: LangfuseConfig, masker: Optional[Masker] = None) -> None:
        self.client = client
        self.masker = masker
        self.max_item_bytes = config.max_item_bytes
        self.max_retries = config.max_retries
        self.environment = config.environment
        self.release = config.release

    def prepare(self, items: Sequence[Dict[str, Any]]) -> List[Record]:
        """The records of `items`."""
        out = []
        stamp = self.environment or self.release
        masker = self.masker
        for item in items:
            if masker is not None and isinstance(item.get("body"), dict):
                item = dict(item, body=masker.body(item["body"]))
            if stamp:
                _stamp(item, self.environment, self.release)
            data, truncated = encode_item(item, self.max_item_bytes)
            out.append(Record(item["id"], data, 1, truncated, wire="ingestion"))
        return out

    def close_open(self, now: Optional[float] = None) -> List[Record]:
        return []

    def open_count(self) -> int:
        return 0

    def open_items(self) -> int:
        return 0

    def due_in(self) -> Optional[float]:
        """Over OTel: seconds until what waits for its start must go (see otel.py); never here."""
        return None

    def open_states(self) -> List[Record]:
        return []

    def body(self, records: Sequence[Record]) -> bytes:
        return b'{"batch":[' + b",".join(r.data for r in records) + b"]}"

    def send(self, records: Sequence[Record]) -> Report:
        body = self.body(records)
        result = self.client.send_ingestion_body(body, len(records))
        report = Report(retries=result.retries, bytes_sent=result.bytes_sent)
        failed = {e.id: e for e in result.errors}
        limit = self.max_retries
        for record in records:
            error = failed.get(record.key)
            if error is None:
                report.delivered.append(record)
                continue
            reason = f"status_{error.status}"
            if not error.retryable:
                report.dropped.append((record, reason, error.message))
                continue
            record.refusals += 1
            if record.refusals > limit:
                report.dropped.append((record, reason, f"{error.message} (refused {record.refusals} times)"))
            else:
                report.retry.append(record)
                if report.refused is None:
                    report.refused = (reason, error.message)
        return report

    def reset(self) -> None:
        self.client.reset()


def _stamp(item: Dict[str, Any], environment: Optional[str], release: Optional[str]) -> None:
    """The configured environment on traces and observations, the release on traces, as the OTel
    transport sets `langfuse.environment` and `langfuse.release` (the mapping knows no config)."""
    body = item.get("body")
    if not isinstance(body, dict):
        return
    kind = item.get("type")
    if kind == "trace-create":
        if environment:
            body.setdefault("environment", environment)
        if release:
            body.setdefault("release", release)
    elif environment and kind in _OBSERVATION_ITEMS:
        body.setdefault("environment", environment)


_OBSERVATION_ITEMS = frozenset((
    "span-create", "span-update", "generation-create", "generation-update", "event-create",
    "observation-create", "observation-update",
))


def request_error(exc: LangfuseError) -> Tuple[str, bool, Optional[float]]:
    """(reason, retryable, retry_after) for a request that failed as a whole."""
    if isinstance(exc, LangfuseStatusError):
        return f"status_{exc.status}", exc.retryable, exc.retry_after
    return "transport", True, None
