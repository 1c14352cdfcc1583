"""The retry buffer: records encoded and waiting to be sent, or sent again, oldest first.

Promises:
- Bounded in records (`max_items`) and bytes (`max_bytes`): a record that goes past either pushes
  the oldest out, and `add` hands those back for the worker to count (`buffer_full`) and log.
- Two versions of one span (or item) never travel side by side: while a request carries a key
  (`flying`), a record of that key waits at the front, and a batch stops before it (`take`).
- Not thread-safe: the worker calls it holding its lock, for O(1) steps (a batch at most).
"""

from __future__ import annotations

import collections
from typing import Callable, Deque, Dict, Iterable, List, Optional, Sequence

from .records import Record

__all__ = ["Outbox"]


class Outbox:
    def __init__(self, max_items: int, max_bytes: int, clock: Callable[[], float]) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._clock = clock
        # The records, oldest first: read `len(outbox.records)` on a hot path (no call); change
        # them only through the methods below.
        self.records: Deque[Record] = collections.deque()
        self._bytes = 0
        self.since: Optional[float] = None  # when the oldest record waiting came
        self._flying: Dict[str, int] = {}  # keys of the records in requests in flight, with their counts

    def add(self, records: Sequence[Record], front: bool = False) -> List[Record]:
        """Add `records` (at the front: back from a failed request, in their order); the oldest
        records this pushed out of a full buffer."""
        if not records:
            return []
        if self.since is None:
            self.since = self._clock()
        if front:
            self.records.extendleft(reversed(records))
        else:
            self.records.extend(records)
        self._bytes += sum(len(r.data) for r in records)
        over: List[Record] = []
        while len(self.records) > self.max_items or (self._bytes > self.max_bytes and len(self.records) > 1):
            old = self.records.popleft()
            self._bytes -= len(old.data)
            over.append(old)
        return over

    def ready(self) -> bool:
        """Something waits, and the first record's key is in no request in flight."""
        return bool(self.records) and self.records[0].key not in self._flying

    def take(self, limit: int, max_bytes: int) -> List[Record]:
        """The next batch: at most `limit` records and about `max_bytes`, stopping before a key in
        flight (it goes once that request has ended); its keys fly until `landed`."""
        batch: List[Record] = []
        size = 0
        records, flying = self.records, self._flying
        while records and len(batch) < limit:
            record = records[0]
            if batch and (size + len(record.data) + 1 > max_bytes or record.key in flying):
                break
            records.popleft()
            self._bytes -= len(record.data)
            batch.append(record)
            size += len(record.data) + 1
        for record in batch:
            flying[record.key] = flying.get(record.key, 0) + 1
        if not records:
            self.since = None
        return batch

    def landed(self, batch: Iterable[Record]) -> None:
        """A request has ended: its records' keys may fly again."""
        flying = self._flying
        for record in batch:
            left = flying.get(record.key, 0) - 1
            if left > 0:
                flying[record.key] = left
            else:
                flying.pop(record.key, None)

    def drain(self, also: Iterable[Record] = ()) -> int:
        """Empty it (at shutdown), with `also`; the items the records stood for."""
        weight = sum(r.weight for r in self.records) + sum(r.weight for r in also)
        self.records.clear()
        self._bytes = 0
        self.since = None
        return weight
