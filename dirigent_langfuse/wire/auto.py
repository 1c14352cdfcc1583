"""`transport = "auto"`: the wire format chosen by the version Langfuse reports, once.

Below 4 the ingestion API (self-hosted v3), 4 and later OTLP (Langfuse Cloud, v4): asked of
`/api/public/health` on the worker thread; without an answer yet, nothing is chosen on a guess
(`NotChosen`: the items wait), except at shutdown. A Langfuse upgraded to v4 under a running
stream refuses ingestion events: `auto` then moves to OTLP for good, and what it had encoded for
ingestion is encoded again as spans (`rewire`).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Dict, List, Optional, Sequence, Union

from ..config import LangfuseConfig
from ..delivery.client import LangfuseClient
from ..delivery.records import NotChosen, Record, Report
from ..mapping.masking import Masker
from .ingestion import IngestionTransport
from .limits import V4_REFUSAL
from .otlp import OtelTransport

__all__ = ["AutoTransport", "choose_transport", "major_version"]

log = logging.getLogger(__name__)


def major_version(version: Optional[str]) -> Optional[int]:
    match = re.match(r"^\s*v?(\d+)", version or "")
    return int(match.group(1)) if match else None


def choose_transport(version: Optional[str]) -> str:
    """`otel` for Langfuse v4 and later or an unknown version, `ingestion` before v4."""
    major = major_version(version)
    return "ingestion" if major is not None and major < 4 else "otel"


class AutoTransport:
    """Asks `GET /api/public/health` on the worker thread, then acts as the chosen one.

    A version below 4 chooses `ingestion`; 4 and later, or an answer without a version, `otel`.
    No answer (Langfuse not up yet) chooses nothing: `resolve` raises `NotChosen` and the worker
    asks again later, unless `guess` (at shutdown), which takes `otel`.

    The one change of mind: a Langfuse that took ingestion and now refuses its events as v4 does
    (it was upgraded while this process ran, or a spool was written before) is asked again; at 4
    or later, auto moves to OTel for good, and what it had encoded for ingestion (refused, still
    to send, or spooled) is folded into spans instead of being lost (`rewire`).
    """

    def __init__(self, client: LangfuseClient, config: LangfuseConfig, masker: Optional[Masker] = None) -> None:
        self.client = client
        self.config = config
        self.masker = masker
        self._chosen: Optional[Union[IngestionTransport, OtelTransport]] = None

    @property
    def name(self) -> str:
        return self._chosen.name if self._chosen is not None else "auto"

    @property
    def chosen(self) -> bool:
        return self._chosen is not None

    def resolve(self, guess: bool = False) -> Union[IngestionTransport, "OtelTransport"]:
        if self._chosen is None:
            version, reached = self.client.health()
            if not reached and not guess:
                raise NotChosen(f"Langfuse at {self.config.host} does not answer its health check yet")
            choice = choose_transport(version)
            if reached:
                log.info(
                    "Langfuse at %s reports version %s: using the %s transport",
                    self.config.host, version or "(unknown)", choice,
                )
            else:
                log.warning(
                    "Langfuse at %s never answered its health check before shutdown: using the %s transport",
                    self.config.host, choice,
                )
            if choice == "ingestion":
                self._chosen = IngestionTransport(self.client, self.config, self.masker)
            else:
                self._chosen = OtelTransport(self.client, self.config, self.masker)
        return self._chosen

    def prepare(self, items: Sequence[Dict[str, Any]]) -> List[Record]:
        return self.resolve().prepare(items)

    def due_in(self) -> Optional[float]:
        return self._chosen.due_in() if self._chosen is not None else None

    def open_states(self) -> List[Record]:
        return self._chosen.open_states() if self._chosen is not None else []

    def resume(self, records: Sequence[Record]) -> int:
        return self._chosen.resume(records) if isinstance(self._chosen, OtelTransport) else 0

    def rewire(self, records: Sequence[Record]) -> Optional[List[Record]]:
        """`records`, encoded for ingestion, as OTel spans, once Langfuse is known to take OTel
        (asked again here the first time); None while it says it is older than 4 (the refusal
        stands). A `mask` sees their values a second time (masks that redact are unchanged by it)."""
        if isinstance(self._chosen, IngestionTransport):
            version, reached = self.client.health()
            if not reached or choose_transport(version) != "otel":
                return None
            log.warning(
                "Langfuse at %s now reports version %s and refuses ingestion events: moving to the otel "
                "transport; what was encoded for ingestion is sent as spans", self.config.host, version,
            )
            self._chosen = OtelTransport(self.client, self.config, self.masker)
        items = []
        for record in records:
            try:
                items.append(json.loads(record.data))
            except ValueError:  # never: our own JSON
                log.error("cannot read an item encoded for ingestion (%d bytes); dropped", len(record.data))
        return self.resolve().prepare(items)

    def open_count(self) -> int:
        return self._chosen.open_count() if self._chosen is not None else 0

    def open_items(self) -> int:
        return self._chosen.open_items() if self._chosen is not None else 0

    def close_open(self, now: Optional[float] = None) -> List[Record]:
        return self._chosen.close_open(now) if self._chosen is not None else []

    def send(self, records: Sequence[Record]) -> Report:
        chosen = self.resolve()
        if isinstance(chosen, IngestionTransport):
            report = chosen.send(records)
            refused = [d for d in report.dropped if d[1] == "status_400" and d[2].startswith(V4_REFUSAL)]
            if refused:  # this Langfuse is v4 now: not lost, encoded again (see rewire)
                report.dropped = [d for d in report.dropped if d not in refused]
                report.rewire = [record for record, _, _ in refused]
            return report
        legacy = [r for r in records if r.wire == "ingestion"]  # encoded before the move to OTel
        if not legacy:
            return chosen.send(records)
        rest = [r for r in records if r.wire != "ingestion"]
        report = chosen.send(rest) if rest else Report(sent=False)
        report.rewire.extend(legacy)
        return report

    def reset(self) -> None:
        self.client.reset()
        if self._chosen is not None and hasattr(self._chosen, "reset"):
            self._chosen.reset()
