"""Benchmark dirigent_langfuse against Langfuse's own Python SDKs, in one run, on this machine.

    python benchmarks/run.py                  # 20 sessions x 10 messages x 5 tool calls
    python benchmarks/run.py --smoke          # a tiny run that only proves the script works (CI)
    python benchmarks/run.py --help

Each system runs in its own process against a fresh receiver (`dirigent-langfuse receive`) in
another process, both on loopback:

  dirigent-ingestion  our stream, POST /api/public/ingestion        vs  sdk2 (langfuse<3, same endpoint)
  dirigent-otel       our stream, OTLP/JSON /api/public/otel/...    vs  sdk  (current Langfuse SDK, OTel)
  floor               the same ingestion items, JSON-encoded and POSTed by a bare http.client loop

Langfuse's SDKs are installed into their own venvs under `benchmarks/.venvs/` on first use (from
PyPI); `--no-sdks` skips them. The receiver needs `opentelemetry-proto` to decode the current SDK's
protobuf exports (`pip install '.[test]'` brings it). Nothing here asserts a speed: it prints.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

SDKS = {"sdk2": "langfuse<3", "sdk": "langfuse>=3"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> Dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("LANGFUSE_", "OTEL_"))}
    out["PYTHONPATH"] = str(ROOT)
    return out


def sdk_python(system: str, venvs: Path, log: Any) -> Optional[str]:
    """The venv's python for one of Langfuse's SDKs, created and installed on first use."""
    venv = venvs / system
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    if marker.exists():
        return str(python)
    log(f"installing {SDKS[system]!r} into {venv} (first use) ...")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", SDKS[system]], check=True, capture_output=True,
                       text=True, timeout=600)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        log(f"  {system}: cannot install {SDKS[system]}: {detail.strip().splitlines()[-1] if detail.strip() else exc}")
        return None
    marker.write_text(SDKS[system])
    return str(python)


class ReceiverProcess:
    """`dirigent-langfuse receive` in its own process, with a fresh database."""

    runs = 0

    def __init__(self, tmp: Path, name: str, version: str) -> None:
        ReceiverProcess.runs += 1
        self.db = tmp / f"{name}-{ReceiverProcess.runs}.db"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dirigent_langfuse", "receive", "--listen", f"127.0.0.1:{self.port}",
             "--db", str(self.db), "--server-version", version],
            stderr=subprocess.PIPE, text=True, env=env(), cwd=str(ROOT))
        banner = self.proc.stderr.readline() if self.proc.stderr else ""
        if "receiver on" not in banner:
            raise SystemExit(f"the receiver did not start: {banner}")

    def stop(self) -> Dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        from dirigent_langfuse.receiver.store import Store

        store = Store(str(self.db))
        try:
            counters = store.counters()
            counters["envelopes"] = store.envelope_count()
            counters["observations"] = len(store.observations())
        finally:
            store.close()
        return counters


def run_system(system: str, python: str, args: argparse.Namespace, tmp: Path) -> Dict[str, Any]:
    version = "4.0.0" if system in ("sdk", "dirigent-otel") else "3.120.0"
    receiver = ReceiverProcess(tmp, system, version)
    try:
        result = subprocess.run(
            [python, str(HERE / "drive.py"), system, "--url", receiver.url, "--sessions", str(args.sessions),
             "--messages", str(args.messages), "--tools", str(args.tools), "--run-id", f"{system}-{os.getpid()}"],
            capture_output=True, text=True, env=env(), cwd=str(ROOT), timeout=1800)
    finally:
        counters = receiver.stop()
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        return {"system": system, "error": f"exit {result.returncode}: {tail}"}
    data = json.loads(result.stdout.strip().splitlines()[-1])
    data["receiver"] = counters
    return data


def instructions(system: str, python: str, args: argparse.Namespace, tmp: Path) -> Optional[float]:
    """Instructions per event under valgrind's callgrind: the whole process (every thread) at
    `args.sessions` sessions minus the same run with none (start-up, imports, shutdown). Unlike
    CPU time it does not drift with the machine, so the ratios it gives are repeatable."""
    counts = []
    for sessions in (args.sessions, 0):
        version = "4.0.0" if system in ("sdk", "dirigent-otel") else "3.120.0"
        receiver = ReceiverProcess(tmp, system, version)
        try:
            result = subprocess.run(
                ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", python, str(HERE / "drive.py"),
                 system, "--url", receiver.url, "--sessions", str(sessions), "--messages", str(args.messages),
                 "--tools", str(args.tools), "--run-id", f"{system}-ir-{sessions}-{os.getpid()}"],
                capture_output=True, text=True, env=env(), cwd=str(ROOT), timeout=3600)
        finally:
            receiver.stop()
        found = [line for line in result.stderr.splitlines() if "Collected :" in line]
        if result.returncode != 0 or not found:
            return None
        counts.append(int(found[-1].split(":")[-1].strip()))
    events = args.sessions * (2 + 2 * args.messages + 2 * args.messages * args.tools)
    return (counts[0] - counts[1]) / max(1, events)


def expected(system: str, s: int, m: int, k: int) -> int:
    if system in ("sdk", "dirigent-otel"):
        return s * (1 + m + m * k)  # spans: a session, its messages, their tool calls
    if system in ("dirigent-ingestion", "floor"):  # our mapping's items: one per event, and the trace's
        return s * (3 + 2 * m + 2 * m * k)  # input with the session's first message
    return s * (2 + 2 * m + 2 * m * k)  # SDK v2's items: one per event


def pct(values: List[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def summarize(data: Dict[str, Any], args: argparse.Namespace) -> Dict[str, Any]:
    system = data["system"]
    rec = data.get("receiver", {})
    otel = system in ("sdk", "dirigent-otel")
    received = rec.get("observations", 0) if otel else rec.get("envelopes", 0)
    calls = data.get("calls_us") or []
    items = expected(system, args.sessions, args.messages, args.tools)
    return {
        "system": system,
        "p50_us": pct(calls, 0.50), "p99_us": pct(calls, 0.99), "max_us": max(calls) if calls else float("nan"),
        "events_s": data["events"] / data["elapsed"],
        "cpu_ms_event": data["cpu"] * 1000 / data["events"],
        "cpu_s_1k_items": data["cpu"] * 1000 / max(1, items),
        "rss_mb": data["rss_kb"] / 1024,
        "bytes": rec.get("bytes_received", 0),
        "requests": rec.get("requests", 0),
        "received": received, "expected": items, "duplicates": rec.get("duplicates", 0),
        "version": data.get("version", ""),
        "retained": data.get("retained"),
        "objects_after": data.get("objects_after", 0),
    }


def median_row(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Each figure's median over the runs (runs are noisy on a shared 2-core machine)."""
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = statistics.median(r[key] for r in runs)
    out["received"] = min(r["received"] for r in runs)
    return out


def table(rows: List[Dict[str, Any]]) -> str:
    head = (f"{'system':<20} {'p50 µs':>8} {'p99 µs':>8} {'max µs':>9} {'events/s':>10} {'CPU ms/ev':>9} "
            f"{'CPU s/1k':>8} {'RSS MB':>7} {'bytes':>10} {'reqs':>6} {'received/expected':>18}")
    lines = [head, "-" * len(head)]
    for r in rows:
        name = r["system"] + (f" {r['version']}" if r["version"] else "")
        lines.append(
            f"{name:<20} {r['p50_us']:>8.1f} {r['p99_us']:>8.1f} {r['max_us']:>9.0f} {r['events_s']:>10.0f} "
            f"{r['cpu_ms_event']:>9.3f} {r['cpu_s_1k_items']:>8.3f} {r['rss_mb']:>7.1f} {r['bytes']:>10} "
            f"{r['requests']:>6} {str(r['received']) + '/' + str(r['expected']):>18}")
    return "\n".join(lines)


def ratios(by: Dict[str, Dict[str, Any]]) -> List[str]:
    out = []
    pairs = [("dirigent-ingestion", "sdk2"), ("dirigent-otel", "sdk"), ("dirigent-ingestion", "floor"),
             ("dirigent-otel", "floor")]
    for ours, theirs in pairs:
        if ours not in by or theirs not in by:
            continue
        a, b = by[ours], by[theirs]
        parts = [f"events/s {a['events_s'] / b['events_s']:.2f}x"]
        if theirs != "floor":
            parts.append(f"CPU/event {a['cpu_ms_event'] / b['cpu_ms_event']:.3f}x")
            parts.append(f"caller p99 {a['p99_us'] / b['p99_us']:.3f}x")
        else:
            parts.append(f"CPU/item {a['cpu_s_1k_items'] / b['cpu_s_1k_items']:.2f}x")
        out.append(f"{ours} vs {theirs}: " + ", ".join(parts))
    return out


def print_instructions(systems: List[str], args: argparse.Namespace, tmp: Path, log: Any) -> None:
    if shutil.which("valgrind") is None:
        log("--instructions: valgrind is not installed; skipped")
        return
    counted: Dict[str, float] = {}
    for system in systems:
        python = sys.executable if system not in SDKS else sdk_python(system, Path(args.venvs), log)
        if python is None:
            continue
        log(f"counting instructions of {system} under valgrind ...")
        value = instructions(system, python, args, tmp)
        if value is None:
            log(f"  {system}: valgrind run failed")
            continue
        counted[system] = value
    print()
    print("instructions per event (valgrind callgrind, all threads):")
    for system, value in counted.items():
        print(f"  {system:<20} {value:>10,.0f}")
    for ours, theirs in (("dirigent-ingestion", "sdk2"), ("dirigent-otel", "sdk")):
        if ours in counted and theirs in counted:
            print(f"  {ours} vs {theirs}: {counted[ours] / counted[theirs]:.3f}x")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", "-S", type=int, default=20, help="sessions (default 20)")
    parser.add_argument("--messages", "-M", type=int, default=10, help="messages per session (default 10)")
    parser.add_argument("--tools", "-K", type=int, default=5, help="tool calls per message (default 5)")
    parser.add_argument("--systems", default="dirigent-ingestion,sdk2,dirigent-otel,sdk,floor",
                        help="comma-separated subset of: dirigent-ingestion, sdk2, dirigent-otel, sdk, floor")
    parser.add_argument("--no-sdks", action="store_true", help="skip Langfuse's SDKs (no install)")
    parser.add_argument("--venvs", default=str(HERE / ".venvs"), help="where the SDKs' venvs live")
    parser.add_argument("--memory", action="store_true",
                        help="also run dirigent-ingestion with 5x the sessions, to show memory stays flat")
    parser.add_argument("--repeat", type=int, default=5,
                        help="runs per system; the table shows each figure's median (default 5)")
    parser.add_argument("--smoke", action="store_true", help="2 x 2 x 2, one run, our systems and the floor only (CI)")
    parser.add_argument("--instructions", action="store_true",
                        help="also count instructions per event under valgrind (slow: minutes; repeatable "
                             "where CPU time drifts)")
    parser.add_argument("--json", help="also write the raw results to this file")
    args = parser.parse_args(argv)
    if args.smoke:
        args.sessions, args.messages, args.tools, args.no_sdks, args.repeat = 2, 2, 2, True, 1
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if args.no_sdks:
        systems = [s for s in systems if s not in SDKS]

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    log(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.platform()}")
    log(f"workload: {args.sessions} sessions x {args.messages} messages x {args.tools} tool calls "
        f"({args.sessions * (2 + 2 * args.messages + 2 * args.messages * args.tools)} events)")
    rows: List[Dict[str, Any]] = []
    raw: List[Dict[str, Any]] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="dirigent-langfuse-bench-") as tmpdir:
        tmp = Path(tmpdir)
        for system in systems:
            python = sys.executable
            if system in SDKS:
                found = sdk_python(system, Path(args.venvs), log)
                if found is None:
                    continue
                python = found
            log(f"running {system} x{args.repeat} ...")
            runs = []
            for _ in range(max(1, args.repeat)):
                data = run_system(system, python, args, tmp)
                raw.append(data)
                if "error" in data:
                    log(f"  {system} failed: {data['error']}")
                    failed = True
                    break
                runs.append(summarize(data, args))
            if not runs or len(runs) < max(1, args.repeat):
                continue
            row = median_row(runs)
            if any(r["received"] != r["expected"] for r in runs):
                log(f"  {system}: received {[r['received'] for r in runs]} of {row['expected']}")
                failed = failed or system.startswith("dirigent")
            if any(r["duplicates"] for r in runs):
                log(f"  {system}: the receiver saw the same content under another id {[r['duplicates'] for r in runs]} times")
                failed = failed or system.startswith("dirigent")
            rows.append(row)
        print()
        print(table(rows))
        print()
        for line in ratios({r["system"]: r for r in rows}):
            print(line)
        for r in rows:
            if not r["objects_after"]:
                continue
            line = f"{r['system']}: {r['objects_after']:.0f} live Python objects after shutdown"
            if r.get("retained"):
                line += f"; state retained after every session ended: {r['retained']}"
            print(line)
        if args.memory:
            big = argparse.Namespace(**vars(args))
            big.sessions = args.sessions * 5
            data = run_system("dirigent-ingestion", sys.executable, big, tmp)
            if "error" not in data:
                small = next((r for r in rows if r["system"] == "dirigent-ingestion"), None)
                row = summarize(data, big)
                print(f"memory: dirigent-ingestion at {args.sessions} sessions: peak RSS "
                      f"{small['rss_mb'] if small else float('nan'):.1f} MB, {small['objects_after'] if small else 0} "
                      f"live objects after shutdown; at {big.sessions} sessions: peak RSS {row['rss_mb']:.1f} MB "
                      f"(the queue's backlog while the caller outruns the sender), {row['objects_after']} live "
                      f"objects after shutdown; retained {row['retained']}")
        if args.instructions:
            print_instructions([s for s in systems if s != "floor"], args, tmp, log)
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
