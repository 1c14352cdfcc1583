"""One system under test, in its own process: drives the agent-session workload and prints JSON.

Run by `benchmarks/run.py`, never by hand (its options are internal). Systems:

- `dirigent-ingestion`, `dirigent-otel`: a `LangfuseStream` with that transport;
- `sdk2`: Langfuse's Python SDK v2 (`langfuse<3`, legacy `/api/public/ingestion`);
- `sdk`: the current Langfuse Python SDK (OpenTelemetry, `/api/public/otel/v1/traces`);
- `floor`: the same ingestion items, JSON-encoded and POSTed by a bare `http.client` loop.

The workload is S sessions × M messages × K tool calls; every fifth tool call fails. An *event*
is one start or end of a session, message or tool call: 2 + 2M + 2MK per session, the same
count for every system. The caller's cost is timed around each event's call(s).
"""

from __future__ import annotations

import argparse
import base64
import gc
import http.client
import json
import os
import resource
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, Tuple
from urllib.parse import urlsplit

PK, SK = "pk-lf-local", "sk-lf-local"
PROMPT = "Please look at tests/test_cache.py and find out why test_expiry fails about one run in ten. " * 2
ANSWER = "The expiry check compares wall-clock time with a monotonic deadline; I switched both to monotonic. " * 2
TOOL_OUTPUT = "collected 42 items\n\n" + "." * 42 + "\n\n42 passed in 1.23s\n"

Step = Tuple[str, int, int, int]


def steps(sessions: int, messages: int, tools: int) -> Iterator[Step]:
    for s in range(sessions):
        yield ("session_start", s, 0, 0)
        for m in range(messages):
            yield ("msg_start", s, m, 0)
            for k in range(tools):
                yield ("tool_start", s, m, k)
                yield ("tool_end", s, m, k)
            yield ("msg_end", s, m, 0)
        yield ("session_end", s, 0, 0)


def failed(m: int, k: int, tools: int) -> bool:
    return (m * tools + k) % 5 == 4


# -- dirigent_langfuse --------------------------------------------------------------------------------


def event_builder(args: argparse.Namespace) -> Callable[[Step], Any]:
    """The BusEvent a host would emit for each step."""
    from dirigent_langfuse import MessageCompleted, MessageStarted, SessionCreated, SessionEnded, SessionUpdate, Usage

    run = args.run_id

    def common(s: int) -> Dict[str, Any]:
        return {"connector_id": "bench", "native_session_id": f"{run}-n{s}", "scroll_id": f"{run}-s{s}"}

    def build(step: Step) -> Any:
        kind, s, m, k = step
        if kind == "session_start":
            return SessionCreated(**common(s), title=f"session {s}", agent="bench-agent", model="claude-sonnet-4-5",
                                  user_id="bench@example.com", tags=["bench"])
        if kind == "msg_start":
            return MessageStarted(**common(s), message_id=f"m{m}", model="claude-sonnet-4-5",
                                  input=[{"role": "user", "content": PROMPT}], model_parameters={"max_tokens": 4096})
        if kind == "tool_start":
            return SessionUpdate(**common(s), update={
                "sessionUpdate": "tool_call", "toolCallId": f"t{m}-{k}", "title": f"Run pytest ({k})", "kind": "execute",
                "status": "in_progress", "rawInput": {"command": "pytest -q tests/test_cache.py"}})
        if kind == "tool_end":
            bad = failed(m, k, args.tools)
            update: Dict[str, Any] = {"sessionUpdate": "tool_call_update", "toolCallId": f"t{m}-{k}",
                                      "status": "failed" if bad else "completed"}
            update["rawOutput"] = {"error": "exit status 1"} if bad else TOOL_OUTPUT
            return SessionUpdate(**common(s), update=update)
        if kind == "msg_end":
            return MessageCompleted(**common(s), message_id=f"m{m}", output=ANSWER, stop_reason="end_turn",
                                    usage=Usage(input_tokens=1200, output_tokens=180), cost_usd=0.0063)
        return SessionEnded(**common(s), reason="completed")

    return build


def dirigent(args: argparse.Namespace, transport: str) -> Tuple[Callable[[Step], None], Callable[[], Dict[str, Any]]]:
    from dirigent_langfuse import LangfuseConfig, LangfuseStream

    stream = LangfuseStream(LangfuseConfig(host=args.url, public_key=PK, secret_key=SK, transport=transport,
                                           atexit_flush=False), name="bench")
    build = event_builder(args)

    def call(step: Step) -> None:
        stream.on_event(build(step))

    def finish() -> Dict[str, Any]:
        outcome = stream.shutdown(120)
        stats = stream.stats()
        retained = {"mapping_scrolls": len(stream._state), "pending_keys": len(stream._pending),
                    "open_observations": stream.transport.open_count(),
                    "traces": getattr(stream.transport, "trace_count", lambda: 0)()}
        return {"ok": outcome.ok, "detail": outcome.detail, "accepted": stats.items_accepted,
                "delivered": stats.items_delivered, "dropped": stats.dropped, "transport": stats.transport,
                "retained": retained}

    return call, finish


def sdk_finish(lf: Any, module: Any, unknown: str) -> Dict[str, Any]:
    """Either SDK's end of a run: everything sent and acknowledged, then its version."""
    lf.flush()
    lf.shutdown()
    return {"ok": True, "version": getattr(module, "__version__", unknown)}


# -- Langfuse SDK v2 ---------------------------------------------------------------------------------------


def sdk2(args: argparse.Namespace) -> Tuple[Callable[[Step], None], Callable[[], Dict[str, Any]]]:
    import langfuse
    from langfuse import Langfuse

    lf = Langfuse(public_key=PK, secret_key=SK, host=args.url)
    traces: Dict[int, Any] = {}
    gens: Dict[Tuple[int, int], Any] = {}
    spans: Dict[Tuple[int, int, int], Any] = {}
    run = args.run_id

    def call(step: Step) -> None:
        kind, s, m, k = step
        if kind == "session_start":
            traces[s] = lf.trace(id=f"{run}-s{s}", name=f"session {s}", user_id="bench@example.com",
                                 session_id=f"{run}-n{s}", tags=["bench"], metadata={"agent": "bench-agent"})
        elif kind == "msg_start":
            gens[s, m] = traces[s].generation(name="assistant message", model="claude-sonnet-4-5",
                                              input=[{"role": "user", "content": PROMPT}],
                                              model_parameters={"max_tokens": 4096})
        elif kind == "tool_start":
            spans[s, m, k] = gens[s, m].span(name=f"Run pytest ({k})", input={"command": "pytest -q tests/test_cache.py"},
                                             metadata={"kind": "execute"})
        elif kind == "tool_end":
            span = spans.pop((s, m, k))
            if failed(m, k, args.tools):
                span.end(output={"error": "exit status 1"}, level="ERROR", status_message="exit status 1")
            else:
                span.end(output=TOOL_OUTPUT)
        elif kind == "msg_end":
            gens.pop((s, m)).end(output=ANSWER, usage={"input": 1200, "output": 180, "total": 1380, "unit": "TOKENS"},
                                 metadata={"stop_reason": "end_turn"})
        else:
            traces.pop(s).update(metadata={"end_reason": "completed"})

    return call, lambda: sdk_finish(lf, langfuse, "2.x")


# -- the current Langfuse SDK (OpenTelemetry) -----------------------------------------------------------


def sdk_current(args: argparse.Namespace) -> Tuple[Callable[[Step], None], Callable[[], Dict[str, Any]]]:
    import langfuse
    from langfuse import Langfuse

    propagate = getattr(langfuse, "propagate_attributes", None)
    lf = Langfuse(public_key=PK, secret_key=SK, host=args.url)
    roots: Dict[int, Any] = {}
    gens: Dict[Tuple[int, int], Any] = {}
    tools: Dict[Tuple[int, int, int], Any] = {}
    run = args.run_id

    def call(step: Step) -> None:
        kind, s, m, k = step
        if kind == "session_start":
            cm = lf.start_as_current_observation(name=f"session {s}", as_type="agent")
            root = cm.__enter__()
            contexts = [cm]
            if propagate is not None:
                pa = propagate(user_id="bench@example.com", session_id=f"{run}-n{s}", trace_name=f"session {s}",
                               tags=["bench"])
                pa.__enter__()
                contexts.append(pa)
            else:  # SDK 3.x
                root.update_trace(name=f"session {s}", user_id="bench@example.com", session_id=f"{run}-n{s}",
                                  tags=["bench"])
            roots[s] = contexts
        elif kind == "msg_start":
            gens[s, m] = lf.start_observation(name="assistant message", as_type="generation",
                                                  model="claude-sonnet-4-5",
                                                  input=[{"role": "user", "content": PROMPT}],
                                                  model_parameters={"max_tokens": 4096})
        elif kind == "tool_start":
            tools[s, m, k] = gens[s, m].start_observation(name=f"Run pytest ({k})", as_type="tool",
                                                          input={"command": "pytest -q tests/test_cache.py"},
                                                          metadata={"kind": "execute"})
        elif kind == "tool_end":
            tool = tools.pop((s, m, k))
            if failed(m, k, args.tools):
                tool.update(output={"error": "exit status 1"}, level="ERROR", status_message="exit status 1")
            else:
                tool.update(output=TOOL_OUTPUT)
            tool.end()
        elif kind == "msg_end":
            gen = gens.pop((s, m))
            gen.update(output=ANSWER, usage_details={"input": 1200, "output": 180}, cost_details={"total": 0.0063},
                       metadata={"stop_reason": "end_turn"})
            gen.end()
        else:
            for cm in reversed(roots.pop(s)):
                cm.__exit__(None, None, None)

    return call, lambda: sdk_finish(lf, langfuse, "?")


# -- the floor: a bare http.client loop ------------------------------------------------------------------


def floor(args: argparse.Namespace) -> Dict[str, Any]:
    """Map the workload with our mapping first (untimed), then time encoding and POSTing only."""
    from dirigent_langfuse.mapping.items import MappingState, bus_event_to_items

    build = event_builder(args)
    state = MappingState()
    items = [item for step in steps(args.sessions, args.messages, args.tools)
             for item in bus_event_to_items(build(step), state)]
    parts = urlsplit(args.url)
    auth = "Basic " + base64.b64encode(f"{PK}:{SK}".encode()).decode()
    cpu0, t0 = time.process_time(), time.perf_counter()
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    requests = 0
    sent = 0
    for start in range(0, len(items), 32):
        body = json.dumps({"batch": items[start:start + 32]}, separators=(",", ":")).encode()
        conn.request("POST", "/api/public/ingestion", body,
                     {"Content-Type": "application/json", "Authorization": auth})
        response = conn.getresponse()
        response.read()
        requests += 1
        sent += len(body)
        if response.status != 207:
            raise SystemExit(f"floor: HTTP {response.status}")
    conn.close()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    events = args.sessions * (2 + 2 * args.messages + 2 * args.messages * args.tools)
    return {"system": "floor", "ok": True, "elapsed": elapsed, "cpu": cpu, "items": len(items), "events": events,
            "calls_us": [], "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("system", choices=("dirigent-ingestion", "dirigent-otel", "sdk2", "sdk", "floor"))
    parser.add_argument("--url", required=True)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--messages", type=int, default=10)
    parser.add_argument("--tools", type=int, default=5)
    parser.add_argument("--run-id", default="bench")
    args = parser.parse_args()
    for key in list(os.environ):
        if key.startswith("LANGFUSE_") or key.startswith("OTEL_"):
            del os.environ[key]
    if args.system == "floor":
        print(json.dumps(floor(args)))
        return
    if args.system.startswith("dirigent"):
        call, finish = dirigent(args, args.system.split("-", 1)[1])
    elif args.system == "sdk2":
        call, finish = sdk2(args)
    else:
        call, finish = sdk_current(args)
    work = list(steps(args.sessions, args.messages, args.tools))
    calls: List[float] = []
    clock = time.perf_counter
    cpu0, t0, tcpu0 = time.process_time(), clock(), time.thread_time()
    for step in work:
        c0 = clock()
        call(step)
        calls.append(clock() - c0)
    t_calls = clock() - t0
    caller_cpu = time.thread_time() - tcpu0
    result = finish()
    elapsed, cpu = clock() - t0, time.process_time() - cpu0
    gc.collect()
    result["objects_after"] = len(gc.get_objects())  # what the process still holds once all ended
    result.update({"system": args.system, "elapsed": elapsed, "calls_elapsed": t_calls, "cpu": cpu,
                   "caller_cpu": caller_cpu,
                   "events": len(work), "calls_us": sorted(c * 1e6 for c in calls),
                   "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss})
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
