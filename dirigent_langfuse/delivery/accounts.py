"""The worker's accounts: what became of every item it took, and of every request it made.

Promises:
- Every item is accepted once, and then delivered, dropped with a reason, or pending:
  `pending == accepted - delivered - sum(dropped)`, never below 0.
- Once a shutdown that timed out settled them (`settle`), the counts shown stay as settled: a
  request that lands after the deadline counts nowhere a second time.
- Not thread-safe: the worker reads and writes them holding its lock.
"""

from __future__ import annotations

import collections
from typing import Any, Dict, Optional, Tuple

__all__ = ["Accounts"]


class Accounts:
    def __init__(self) -> None:
        # items, unless said otherwise
        self.accepted = 0
        self.processed = 0  # taken from the queue and encoded (or dropped while encoding)
        self.delivered = 0
        self.dropped: Dict[str, int] = collections.Counter()
        self.truncated = 0  # records
        self.batches = 0  # requests that delivered something
        self.requests = 0
        self.retries = 0  # HTTP-level retries inside sends
        self.bytes_sent = 0
        self.failed_requests = 0
        self.refusing_requests = 0  # succeeded, but refused some records for now (a 207's 5xx)
        self.last_error: Optional[str] = None
        self.last_error_kind: Optional[str] = None
        self._settled: Optional[Tuple[int, Dict[str, int]]] = None  # (delivered, dropped), for good

    def _shown(self) -> Tuple[int, Dict[str, int]]:
        return self._settled or (self.delivered, self.dropped)

    @property
    def pending(self) -> int:
        delivered, dropped = self._shown()
        return self.accepted - delivered - sum(dropped.values())

    def drops_since(self, before: Dict[str, int]) -> Dict[str, int]:
        """Drops by reason since `before` (a copy of `dropped`), `queue_full` aside: the caller
        was told of those at once (FAILED(OVERFLOW))."""
        dropped = self._shown()[1]
        return {r: n - before.get(r, 0) for r, n in dropped.items() if r != "queue_full" and n > before.get(r, 0)}

    def settle(self, queued: int, spool: bool) -> Tuple[int, int]:
        """A shutdown timed out with a request or a step in progress: what is not delivered yet is
        counted now, for good: the `queued` items as `shutdown`, and the rest as `shutdown` too,
        or, with a `spool`, as `spooled` (the step in progress writes it there, and the worker's
        end the observations still open). (items counted `shutdown`, items `spooled`)."""
        left = self.pending
        spooled = max(0, left - queued) if spool else 0
        dropped = collections.Counter(self.dropped)
        if left - spooled:
            dropped["shutdown"] += left - spooled
        if spooled:
            dropped["spooled"] += spooled
        self._settled = (self.delivered, dict(dropped))
        return left - spooled, spooled

    @property
    def settled(self) -> bool:
        return self._settled is not None

    def counts(self) -> Dict[str, Any]:
        delivered, dropped = self._shown()
        return {
            "accepted": self.accepted,
            "delivered": delivered,
            "dropped": dict(dropped),
            "pending": self.pending,
            "batches": self.batches,
            "requests": self.requests,
            "retries": self.retries,
            "bytes_sent": self.bytes_sent,
            "truncated": self.truncated,
            "last_error": self.last_error,
        }
