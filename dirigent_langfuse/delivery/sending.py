"""One request, and what its answer does: the accounts, the retry buffer, the pace, the spool.

Promises:
- Every record of a request ends in one place: delivered, dropped with a reason, back at the
  front of the retry buffer, or handed back to be encoded again (`rewire`); never two of them.
- A 413 for several records splits the batch (`Pace.split`) and is not a failure; a 413 for one
  record alone is refused for good, with the size to set `max_item_bytes` below.
- A reason and message refused for good is logged once, with the count (at most 1,000 distinct
  messages remembered); retryable failures once a minute per reason.
- The spool forgets a record only once it arrived or was refused for good, after the lock is
  released.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Optional, Tuple

from ..errors import LangfuseError, LangfuseStatusError
from .records import Record, Report, request_error
from .state import State, log

__all__ = ["send"]


def send(s: State, batch: List[Record]) -> None:
    """Send `batch` (taken out of the retry buffer by the loop) and settle its answer."""
    try:
        report = s.transport.send(batch)
    except LangfuseError as exc:
        report = Report(error=exc, retries=exc.retries)
    if not report.sent:
        with s.lock:  # no request was made: they all wait to be encoded again
            s.rewire.extend(report.rewire)
            s.landed(batch)
            s.wake()
        return
    if report.error is None:
        _account(s, batch, report, None, None)
        return
    reason, retryable, retry_after = request_error(report.error)
    if getattr(report.error, "status", None) == 413 and len(batch) > 1:
        with s.lock:
            s.landed(batch)
            over = s.add_to_outbox(batch, front=True)
            s.pace.split(len(batch))
            s.wake()
        s.overflowed(over)
        log.info("stream %r: 413 for %d items; splitting", s.name, len(batch))
        return
    if retryable:
        report.retry = list(batch)
    else:
        if isinstance(report.error, LangfuseStatusError) and report.error.status == 413:  # one item alone
            report.error = LangfuseStatusError(413, (
                f"{report.error.message} (one item of {len(batch[0].data):,} bytes, too large on its own for "
                f"Langfuse or a proxy in front of it: set max_item_bytes below that limit, now "
                f"{s.config.max_item_bytes:,})"))
        message = str(report.error)
        report.dropped = [(r, reason, message) for r in batch]
    _account(s, batch, report, reason, retry_after)


def _account(s: State, batch: List[Record], report: Report, reason: Optional[str], retry_after: Optional[float]) -> None:
    now = s.clock()
    accounts = s.accounts
    delivered = sum(r.weight for r in report.delivered)
    to_log: Dict[Tuple[str, str], int] = {}  # (reason, message): items, for messages not said before
    over: List[Record] = []
    with s.lock:
        accounts.requests += 1
        accounts.retries += report.retries
        accounts.bytes_sent += report.bytes_sent
        accounts.delivered += delivered
        if delivered:
            accounts.batches += 1
        s.rewire.extend(report.rewire)
        for record, why, message in report.dropped:
            accounts.dropped[why] += record.weight
            accounts.last_error = f"Langfuse refused item(s) for good ({why}): {message or 'no message'}"
            key = f"{why}:{message}"
            if (why, message) in to_log:
                to_log[(why, message)] += record.weight
            elif key not in s.seen_messages and len(s.seen_messages) < 1000:
                s.seen_messages[key] = 1
                to_log[(why, message)] = record.weight
        if report.error is not None:
            s.failed(str(report.error), reason)
        else:
            s.pace.succeeded(now, accounts.last_error_kind == "status_429")
            if accounts.last_error_kind == "status_429" and now >= s.pace.due:
                accounts.last_error_kind = None
        if report.retry:
            over = s.add_to_outbox(report.retry, front=True)
            if report.error is None:  # some items of a 207 asked to be retried
                accounts.refusing_requests += 1
                if report.refused is not None:
                    accounts.last_error_kind, message = report.refused
                    accounts.last_error = f"Langfuse refused {len(report.retry)} item(s) for now: {message}"
            s.pace.retry(now, retry_after, answered=report.error is None)
        if reason == "status_429":
            s.pace.rate_limited(now, retry_after)
        elif report.error is None:
            s.pace.calm(now)
        s.landed(batch)
        s.wake()
    s.overflowed(over)
    if s.spool is not None:
        finished = list(report.delivered) + [r for r, _, _ in report.dropped]
        if finished:
            s.spool.remove(finished)
    for (why, message), weight in to_log.items():
        log.warning("stream %r: Langfuse refused %d item(s) for good (%s): %s", s.name, weight, why,
                    message or "no message")
    if report.error is not None and report.retry:  # (refused for good: said above, once per message)
        s.throttled(
            "send_failed:" + (reason or ""), logging.WARNING,
            "stream %r: request failed (%s), %d items kept for retry: %s",
            s.name, reason, len(report.retry), report.error,
        )
