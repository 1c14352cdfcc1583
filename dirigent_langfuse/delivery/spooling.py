"""The spool keeper's two moments: what an earlier process left, taken up at start; what this one
leaves, counted (and kept in the spool, with one) at shutdown.

Promises:
- At start, the spool is loaded once a transport is chosen (`auto` waits for its health check):
  records of this wire go to the retry buffer, records written for ingestion before Langfuse moved
  to v4 are encoded again as spans, observations left open are taken up by the OTel transport,
  and records of another wire are dropped, counted (`spool_other_wire`). What was loaded counts as
  accepted, and `spool_found` tells a waiting `flush()` how much.
- At shutdown, what is left in the queue is dropped (`shutdown`); what is left in the retry buffer
  is `spooled` when there is a spool (the next start sends it), else `shutdown`. Over OTel the
  observations still open are sent first, and with a spool their state is kept for the next start
  to end them as the same rows (see wire/otlp.py). A shutdown that timed out has counted it all
  already: nothing is counted twice.
"""

from __future__ import annotations

from typing import List

from .records import OPEN_WIRE, NotChosen, Record
from .state import State, log

__all__ = ["load", "close_open", "finish"]


def load(s: State) -> None:
    """Take up what the spool holds (the worker thread, before its first step)."""
    resolve = getattr(s.transport, "resolve", None)
    try:
        wire = resolve().name if resolve is not None else s.transport.name
    except NotChosen as exc:
        s.spool_loaded = False  # loaded by the first prepare once a transport is chosen
        s.not_chosen([], exc)
        return
    # Written for ingestion before this Langfuse moved to v4: encoded again, as spans (`auto`);
    # and over OTel, the observations an earlier process left open, taken up by the transport.
    also = (("ingestion",) if resolve is not None else ()) + (OPEN_WIRE,) if wire == "otel" else ()
    records, other = s.spool.load(wire, also)
    states = [r for r in records if r.wire == OPEN_WIRE]
    legacy = [r for r in records if r.wire != wire and r.wire != OPEN_WIRE]
    if legacy or states:
        records = [r for r in records if r.wire == wire]
    if states:
        resume = getattr(s.transport, "resume", None)
        resumed = resume(states) if resume is not None else 0
        s.spool.remove(states)  # held here now: written again if still open at this one's shutdown
        log.info("stream %r: took up %d observation(s) an earlier process left open", s.name, resumed)
    with s.lock:
        n = sum(r.weight for r in records) + sum(r.weight for r in legacy)
        s.accounts.accepted += n + other
        s.accounts.processed += n + other
        s.spool_found = n + other
        if other:
            s.accounts.dropped["spool_other_wire"] += other
        over = s.add_to_outbox(records)
        s.rewire.extend(legacy)
        s.done.notify_all()
    s.overflowed(over)
    if records:
        log.info("stream %r: re-sending %d items found in the spool", s.name, n)
    if other:
        log.warning("stream %r: dropped %d spooled items written for another transport than %s", s.name, other, wire)


def close_open(s: State) -> List[Record]:
    """Over OTel, at shutdown: the observations still open, sent now (snapshots, and end records
    for those whose start was not seen here); with a spool, the state of the started ones goes
    into it first, for the next start to end them as the same rows (see wire/otlp.py)."""
    if s.spool is not None:
        states = s.ask("open_states", [])
        if states:
            s.spool.add(states, OPEN_WIRE)
    return list(s.transport.close_open(s.clock()))


def finish(s: State) -> None:
    """At shutdown, the last thread out: what is left is spooled (kept for the next start) or
    dropped, counted."""
    with s.lock:
        if not s.closing:
            return
    left_open: List[Record] = []
    if s.transport.open_count():  # OTel observations the deadline left open: not lost either
        try:
            left_open = close_open(s)
        except Exception:  # a bug of ours: logged, and what is left below is still counted
            log.exception("stream %r: could not close the observations still open", s.name)
        if left_open and s.spool is not None:
            s.spool.add(left_open, s.transport.name)
    with s.lock:
        left_queue = len(s.queue)
        # (the records to encode again are in the spool as they were written: encoded again at the next start)
        left_outbox = s.outbox.drain(left_open + s.rewire)
        s.rewire = []
        s.queue.clear()
        spooled = s.spool is not None
        if left_queue:
            s.accounts.dropped["shutdown"] += left_queue
        if left_outbox:
            s.accounts.dropped["spooled" if spooled else "shutdown"] += left_outbox
        s.done.notify_all()
        settled = s.accounts.settled
    if settled:  # counted, and said, by the shutdown that timed out
        return
    if left_queue or (left_outbox and not spooled):
        log.warning("stream %r: shutdown deadline reached; %d items not delivered", s.name,
                    left_queue + (0 if spooled else left_outbox))
    if spooled and left_outbox:
        log.warning("stream %r: %d items left in the spool for the next start", s.name, left_outbox)
