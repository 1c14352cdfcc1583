"""The worker thread's encoding steps: items from the queue become records in the retry buffer.

Promises:
- Only the worker thread encodes, in the order items were queued (OTel folds an observation's
  events into one span, so order matters); the transport is never called under the lock.
- Under `auto`, nothing is encoded before a transport is chosen: the items go back to the front
  of the queue (`State.not_chosen`), and a spool found at start is loaded once it is.
- A record goes into the spool before the retry buffer, so a crash after this step loses nothing.
- Records refused in a wire format Langfuse no longer takes are encoded again (`rewire`); when
  they cannot be, they are refused for good, counted as `status_400`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from . import spooling
from .records import NotChosen, Record
from .state import State, log

__all__ = ["prepare", "rewire"]


def prepare(s: State, items: Optional[List[Dict[str, Any]]]) -> None:
    """Encode `items` (an empty list: only what the transport says is due; None, at shutdown: the
    observations still open) into the retry buffer."""
    resolve = getattr(s.transport, "resolve", None)
    if resolve is not None and items is not None:
        try:
            resolve(guess=s.closing)
        except NotChosen as exc:
            s.not_chosen(items, exc)
            return
        if s.spool_waits():  # it waited for the choice
            s.spool_loaded = True
            spooling.load(s)
    if items is None:
        records = spooling.close_open(s)
    else:
        records = s.transport.prepare(items)
    if s.spool is not None and records:
        s.spool.add(records, s.transport.name)
    with s.lock:
        if items is not None:
            s.accounts.processed += len(items)
        s.accounts.truncated += sum(1 for r in records if r.truncated)
        over = s.add_to_outbox(records)
        s.busy = False
        if records:
            s.work.notify_all()
        s.done.notify_all()
    s.overflowed(over)


def rewire(s: State, records: List[Record]) -> None:
    """Records in a wire format Langfuse no longer takes, encoded again by the transport (the
    spool's rows move with them); refused for good, counted, if it cannot."""
    again = s.transport.rewire(records)
    if again is None:
        message = "Langfuse refused events of the ingestion API and still reports a version before 4"
        with s.lock:
            for record in records:
                s.accounts.dropped["status_400"] += record.weight
            s.accounts.last_error = f"Langfuse refused item(s) for good (status_400): {message}"
            s.busy = False
            s.done.notify_all()
        if s.spool is not None:
            s.spool.remove(records)
        log.warning("stream %r: Langfuse refused %d items (status_400): %s", s.name, len(records), message)
        return
    if s.spool is not None:
        s.spool.add(again, s.transport.name)
        s.spool.remove(records)
    with s.lock:
        over = s.add_to_outbox(again, front=True)
        s.busy = False
        s.wake()
    s.overflowed(over)
