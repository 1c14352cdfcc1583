"""The seed's wire format: `POST /api/public/ingestion`, one record per queued item.

`IngestionTransport` encodes each item once (`encoding.encode_item`), sends a batch as
`{"batch": [...]}` and reads Langfuse's 207 item by item. `otlp.OtelTransport` is the other
transport; both share the worker, its retry buffer and health (`delivery/`).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from ..config import LangfuseConfig
from ..delivery.client import LangfuseClient
from ..delivery.records import Record, Report
from ..mapping.masking import Masker
from .encoding import encode_item

__all__ = ["IngestionTransport"]


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
        """Over OTel: seconds until what waits for its start must go (see wire/otlp.py); never here."""
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
