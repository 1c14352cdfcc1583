"""How the receiver's pages hold up with many traces: prints figures, asserts nothing.

    python benchmarks/pages.py [--traces 100000] [--observations 5] [--db PATH]

Fills a receiver's database with sessions (a trace, a generation and tool spans each, written
as a client's requests of 32 items would be), then times, over real HTTP on loopback:
- the first read of the list, which brings the catalog up to date for every trace written;
- the list's first page, a page 1,000 pages deep (keyset paging), a filter by session, by user
  and by text, a trace's page, a session's page.
Each figure is the median of 5 requests after the first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dirigent_langfuse.receiver.server import Receiver  # noqa: E402


def stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(1_764_061_200 + seconds)) + f".{int(seconds * 1000) % 1000:03d}Z"


def items_of(n: int, observations: int) -> List[Dict[str, Any]]:
    at = n * 7.0
    trace = f"trace-{n:07d}"
    out: List[Dict[str, Any]] = [{"id": f"{trace}-t", "type": "trace-create", "timestamp": stamp(at), "body": {
        "id": trace, "name": f"session {n}", "sessionId": f"session-{n // 4}", "userId": f"user-{n % 97}",
        "tags": ["bench", "even" if n % 2 == 0 else "odd"], "input": {"ask": "fix the flaky test"}, "output": "done"}}]
    gen = f"{trace}-g"
    out.append({"id": f"{trace}-g0", "type": "generation-create", "timestamp": stamp(at), "body": {
        "id": gen, "traceId": trace, "name": "assistant message", "startTime": stamp(at), "endTime": stamp(at + 5),
        "model": "claude-sonnet-4-5", "usageDetails": {"input": 1200, "output": 300}, "costDetails": {"total": 0.0081},
        "input": [{"role": "user", "content": "fix it"}], "output": "fixed"}})
    for k in range(1, observations - 1):
        out.append({"id": f"{trace}-s{k}", "type": "span-create", "timestamp": stamp(at + k), "body": {
            "id": f"{trace}-tool-{k}", "traceId": trace, "parentObservationId": gen, "name": f"tool {k}",
            "startTime": stamp(at + k), "endTime": stamp(at + k + 0.5), "input": {"k": k}, "output": {"ok": True}}})
    return out


def fill(receiver: Receiver, traces: int, observations: int) -> float:
    started = time.perf_counter()
    batch: List[Dict[str, Any]] = []
    for n in range(traces):
        batch += items_of(n, observations)
        while len(batch) >= 32:
            chunk, batch = batch[:32], batch[32:]
            receiver.store.add_items(json.dumps({"batch": chunk}).encode(), list(enumerate(chunk)), time.time())
    if batch:
        receiver.store.add_items(json.dumps({"batch": batch}).encode(), list(enumerate(batch)), time.time())
    return time.perf_counter() - started


def timed(url: str, repeat: int = 5) -> float:
    """The median of `repeat` requests after a first one, in milliseconds."""
    def once() -> float:
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=600) as answer:
            answer.read()
            assert answer.status == 200, url
        return (time.perf_counter() - started) * 1000

    once()
    return statistics.median(once() for _ in range(repeat))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=100_000)
    parser.add_argument("--observations", type=int, default=5, help="per trace (at least 2)")
    parser.add_argument("--db", help="SQLite file (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or os.path.join(tmp, "pages.db")
        with Receiver(db=db) as receiver:
            wrote = fill(receiver, args.traces, args.observations)
            items = args.traces * (args.observations)
            print(f"wrote {args.traces:,} traces ({items:,} items) in {wrote:.1f} s "
                  f"({wrote / items * 1e6:.0f} µs per item, the catalog's marks included)")
            started = time.perf_counter()
            with urllib.request.urlopen(receiver.url + "/", timeout=3600) as answer:
                answer.read()
            first = time.perf_counter() - started
            print(f"first read of the list (the catalog brought up to date for every trace): {first:.1f} s "
                  f"({first / args.traces * 1e6:.0f} µs per trace)")
            deep = receiver.store.page(50)
            for _ in range(min(1000, args.traces // 50 - 1)):
                deep = receiver.store.page(50, before=deep.older)
            middle = args.traces // 2
            figures = {
                "the list, first page": "/",
                "the list, 1,000 pages deep": "/?" + urllib.parse.urlencode({"before": deep.older or ""}),
                "filtered by session": "/?session=session-1234",
                "filtered by user": "/?user=user-42",
                "filtered by text (scans an index)": "/?q=session+4242",
                "a trace's page": f"/traces/trace-{middle:07d}",
                "a session's page": f"/sessions/session-{middle // 4}",
            }
            print(f"{'page':<34} {'ms (median of 5)':>16}")
            for label, path in figures.items():
                print(f"{label:<34} {timed(receiver.url + path):>16.1f}")
            size = os.path.getsize(db) / 1e6 if os.path.exists(db) else 0.0
            print(f"database: {size:,.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
