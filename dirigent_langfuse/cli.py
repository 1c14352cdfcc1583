"""The `dirigent-langfuse` command (also `python -m dirigent_langfuse`).

    demo      mirror the bundled example sessions into an embedded receiver and show the traces
    mirror    run BusEvents (JSON Lines, a file or stdin) through every enabled stream of a config
    receive   run the Langfuse-compatible receiver in the foreground
    show      print the traces a receiver stored, as trees
    check     validate a config and test each Langfuse stream's host and keys with one request

Exit codes: 0 success; 1 something failed or was dropped; 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import math
import os
import signal
import sys
import tempfile
import time
from importlib import resources
from typing import IO, Any, Counter, Iterable, Iterator, List, Optional, Sequence, TextIO, Tuple, Union

from ._version import __version__
from .bus import KNOWN_TYPES, BusEvent, UnknownEvent, event_from_json
from .config import LangfuseConfig
from .contracts import OutcomeStatus, StreamStats
from .delivery.client import LangfuseClient
from .delivery.records import Record, Report
from .errors import BusEventError, ConfigError, DirigentLangfuseError
from .preflight import check_stream
from .receiver.faults import parse_fault
from .receiver.html import link
from .receiver.render import render_all
from .receiver.server import DEFAULT_PUBLIC_KEY, DEFAULT_SECRET_KEY, MAX_REQUEST_BYTES, Receiver, parse_listen
from .registry import StreamFactoryRegistry, StreamSet
from .specs import load_stream_specs
from .stream import LangfuseStream
from .wire.ingestion import IngestionTransport

__all__ = ["main"]

log = logging.getLogger(__name__)

EXAMPLE = "coding_session.jsonl"


def _example_lines() -> List[str]:
    return resources.files("dirigent_langfuse").joinpath("examples").joinpath(EXAMPLE).read_text(encoding="utf-8").splitlines()


def _read_events(
    lines: Iterable[Union[bytes, str]], errors: List[Tuple[int, str]], show: Optional[TextIO] = None
) -> Iterator[Tuple[int, BusEvent]]:
    """Decode JSON Lines; a bad line is recorded (and shown at once on `show`), never fatal.

    Lines given as bytes are read as UTF-8 (JSON Lines' encoding) one by one, so that a line that
    is not UTF-8 text is one malformed line, not the end of the run; a byte order mark at the
    start (as Windows tools write) is skipped."""
    for number, line in enumerate(lines, 1):
        try:
            text = line.decode("utf-8") if isinstance(line, bytes) else line
            if number == 1 and text.startswith("\ufeff"):
                text = text[1:]
            if not text.strip():
                continue
            yield number, event_from_json(json.loads(text))
        except UnicodeDecodeError as exc:
            _malformed(errors, show, number, f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at byte {exc.start + 1})")
        except (ValueError, BusEventError) as exc:
            _malformed(errors, show, number, str(exc))
        except RecursionError:  # nested deeper than the JSON decoder goes
            _malformed(errors, show, number, "nested too deeply to decode")
        except Exception as exc:  # anything else a line can make the codec raise: that line's, not the run's
            _malformed(errors, show, number, f"{type(exc).__name__}: {exc}")


def _malformed(errors: List[Tuple[int, str]], show: Optional[TextIO], number: int, problem: str) -> None:
    errors.append((number, problem))
    if show is not None:
        show.write(f"mirror: line {number}: {problem}\n")


def _summary(stats: StreamStats) -> str:
    dropped = ", ".join(f"{k}={v}" for k, v in sorted(stats.dropped.items())) or "none"
    return (
        f"events={stats.events_seen} items={stats.items_accepted} delivered={stats.items_delivered} "
        f"batches={stats.batches} requests={stats.requests} retries={stats.retries} "
        f"dropped={dropped} health={stats.health.value} transport={stats.transport}"
    )


def _failed(stats: StreamStats) -> bool:
    return bool(stats.items_dropped or stats.items_pending or stats.events_failed or stats.events_dropped)


# -- demo ------------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    started = time.monotonic()
    errors: List[Tuple[int, str]] = []
    version = "4.0.0" if args.transport == "otel" else "3.120.0"
    try:
        host, port = parse_listen(args.listen)
    except ValueError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="dirigent-langfuse-demo-") as tmp:
        try:
            receiver = Receiver(host, port, db=os.path.join(tmp, "demo.db"), version=version).start()
        except OSError as exc:
            print(f"demo: cannot listen on {args.listen}: {exc}", file=sys.stderr)
            return 2
        try:
            config = LangfuseConfig(
                host=receiver.url,
                public_key=DEFAULT_PUBLIC_KEY,
                secret_key=DEFAULT_SECRET_KEY,
                transport=args.transport,
                flush_interval=0.2,
                atexit_flush=False,
            )
            stream = LangfuseStream(config, name="demo")
            failures = 0
            for _, event in _read_events(iter(_example_lines()), errors):
                if stream.on_event(event).status is OutcomeStatus.FAILED:
                    failures += 1
            outcome = stream.shutdown(10.0)
            stats = stream.stats()
            print(render_all(receiver.store))
            print()
            elapsed = time.monotonic() - started
            ok = outcome.ok and not _failed(stats) and not errors and failures == 0
            print(
                f"{'ok' if ok else 'FAILED'}: events={stats.events_seen} items={stats.items_accepted} "
                f"delivered={stats.items_delivered} batches={stats.batches} failures={failures + stats.items_dropped} "
                f"transport={stats.transport} elapsed={elapsed:.2f}s"
            )
            if not ok:
                print(f"  {outcome.detail}; {_summary(stats)}", file=sys.stderr)
            _pages(receiver, serving=args.serve)
            if args.serve:
                _serve_until_stopped("serving these pages until Ctrl-C", sys.stdout)
            return 0 if ok else 1
        finally:
            receiver.stop()


def _pages(receiver: Receiver, serving: bool) -> None:
    """Where to look at what the demo sent (the receiver's pages, docs/receiver.md)."""
    for trace in receiver.store.traces():
        print(f"page: {receiver.url}{link('/traces', trace['id'])}  ({trace.get('name') or 'unnamed'})")
    print(f"page: {receiver.url}/  (every trace)")
    if not serving:
        print("(the receiver stops with the demo: `dirigent-langfuse demo --serve` keeps it running to open them)")


def _serve_until_stopped(ready: str, out: TextIO) -> None:
    """Say `ready` once Ctrl-C and SIGTERM are caught (a supervisor that waits for the line may
    stop us at once), then wait for one of them."""
    try:
        with _terminable():
            print(ready, file=out, flush=True)
            while True:
                time.sleep(3600)
    except (KeyboardInterrupt, _Terminated):
        pass


# -- mirror ----------------------------------------------------------------------------------------


class _PrintTransport(IngestionTransport):
    """`--dry-run`: the ingestion items are printed (one JSON per line) instead of sent."""

    name = "dry-run"

    def __init__(self, out: TextIO, config: LangfuseConfig) -> None:
        super().__init__(LangfuseClient(config), config)  # (the client never sends: `send` prints)
        self.out = out

    def send(self, records: Sequence[Record]) -> Report:
        for record in records:
            self.out.write(record.data.decode("utf-8") + "\n")
        self.out.flush()
        return Report(delivered=list(records))

    def reset(self) -> None:
        pass


def _registry() -> StreamFactoryRegistry:
    registry = StreamFactoryRegistry.from_entry_points()
    if "langfuse" not in registry.kinds():  # running from a source tree that is not installed
        from .factory import LangfuseFactory

        registry.register(LangfuseFactory())
    return registry


def _build_streams(config_path: str, dry_run: bool) -> StreamSet:
    specs = load_stream_specs(config_path)
    if not dry_run:
        return StreamSet.from_specs(specs, _registry())
    streams = []
    enabled = [s for s in specs if s.enabled]
    for spec in enabled:
        if spec.type != "langfuse":
            continue
        params = dict(spec.params)
        params.setdefault("host", "http://dry-run.invalid")
        params.setdefault("public_key", "pk-dry-run")
        params.setdefault("secret_key", "sk-dry-run")
        config = LangfuseConfig.from_params(params, env={}, stream=spec.name)
        streams.append(
            LangfuseStream(config, name=spec.name, transport=_PrintTransport(sys.stdout, config))
        )
    return StreamSet(streams, enabled)


class _Progress:
    def __init__(self, out: TextIO, every: float = 2.0) -> None:
        self.out = out
        self.live = out.isatty()
        self.every = every
        self.last = 0.0

    def __call__(self, events: int, bad: int, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < (0.1 if self.live else self.every):
            return
        self.last = now
        text = f"mirror: {events} events, {bad} malformed lines"
        if self.live:
            self.out.write("\r" + text + ("\n" if final else ""))
        else:
            self.out.write(text + "\n")
        self.out.flush()


class _Terminated(BaseException):
    """SIGTERM, raised on the main thread as Ctrl-C raises KeyboardInterrupt. A handler that set a
    `threading.Event` could hang the process for good: the signal may land while that same thread
    holds the Event's lock, inside its `wait()`, and the handler then waits for that lock."""


def _terminate(signum: int, frame: Any) -> None:
    raise _Terminated()


@contextlib.contextmanager
def _terminable() -> Iterator[None]:
    """Inside, SIGTERM raises `_Terminated` on the main thread; on the way out the handler that was
    there before is back (by default SIGTERM ends the process: a second one while stopping does)."""
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (embedded use): signals are the host's
        yield
        return
    try:
        yield
    finally:  # (None: a handler installed from C, which Python cannot put back)
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def cmd_mirror(args: argparse.Namespace) -> int:
    stdin = args.file in (None, "-")
    try:  # bytes: each line is decoded on its own (see _read_events)
        source: IO[Any] = getattr(sys.stdin, "buffer", sys.stdin) if stdin else open(args.file, "rb")
    except OSError as exc:
        print(f"mirror: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        return _mirror(args, source)
    finally:
        if not stdin:
            source.close()


def _mirror(args: argparse.Namespace, source: IO[Any]) -> int:
    try:
        streams = _build_streams(args.config, args.dry_run)
    except DirigentLangfuseError as exc:
        print(f"mirror: {exc}", file=sys.stderr)
        return 2
    if not streams.streams:
        print("mirror: the config has no enabled stream", file=sys.stderr)
        return 2
    errors: List[Tuple[int, str]] = []
    progress = _Progress(sys.stderr)
    events = 0
    failed_outcomes = 0
    unknown: Counter[str] = collections.Counter()  # types this version does not know: skipped, said once
    stopped_by: Optional[Tuple[str, int]] = None
    try:
        with _terminable():
            for _, event in _read_events(source, errors, show=sys.stderr):
                events += 1
                if isinstance(event, UnknownEvent):
                    unknown[event.type] += 1
                outcomes = streams.on_event(event)
                failed_outcomes += sum(1 for o in outcomes.values() if o.status is OutcomeStatus.FAILED)
                progress(events, len(errors))
    except KeyboardInterrupt:  # (a mirror of `tail -f` ends this way): what was read is still delivered
        stopped_by = ("Ctrl-C", 130)
    except _Terminated:
        stopped_by = ("SIGTERM", 143)
    progress(events, len(errors), final=True)
    if stopped_by is not None:
        print(f"mirror: stopped by {stopped_by[0]}; delivering the events read so far (within --timeout "
              f"{args.timeout:g} s)", file=sys.stderr, flush=True)
    if unknown:
        print(f"mirror: {sum(unknown.values())} events of types this version does not know were skipped: "
              + ", ".join(f"{name} {n}" for name, n in unknown.most_common())
              + f" (known: {', '.join(sorted(KNOWN_TYPES))})", file=sys.stderr)
    outcomes = streams.shutdown(args.timeout)
    bad = bool(errors) or failed_outcomes > 0
    for stream in streams.streams:
        stats = stream.stats()
        outcome = outcomes.get(stream.name)
        print(f"mirror: {stream.name}: {_summary(stats)}", file=sys.stderr)
        if outcome is not None and not outcome.ok:
            print(f"mirror: {stream.name}: {outcome.detail}", file=sys.stderr)
            bad = True
        bad = bad or _failed(stats)
    print(f"mirror: {'FAILED' if bad else 'ok'}: {events} events, {len(errors)} malformed lines", file=sys.stderr)
    if stopped_by is not None:
        return stopped_by[1]
    return 1 if bad else 0


# -- receive / show ----------------------------------------------------------------------------------


def cmd_receive(args: argparse.Namespace) -> int:
    try:
        host, port = parse_listen(args.listen)
        faults = [parse_fault(f) for f in args.fault or []]
    except ValueError as exc:
        print(f"receive: {exc}", file=sys.stderr)
        return 2
    if bool(args.tls_cert) != bool(args.tls_key):
        print("receive: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    try:
        receiver = Receiver(host, port, db=args.db, public_key=args.public_key, secret_key=args.secret_key,
                            version=args.server_version, max_request_bytes=args.max_request_bytes,
                            tls=(args.tls_cert, args.tls_key) if args.tls_cert else None)
    except OSError as exc:  # ssl.SSLError too
        print(f"receive: cannot load the TLS certificate and key: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:  # the database (its message names it), or the body limit
        option = "" if exc.key == "db" else f"--{(exc.key or '').replace('_', '-')}: "
        print(f"receive: {option}{exc.problem}", file=sys.stderr)
        return 2
    receiver.faults.add(*faults)
    try:
        receiver.start()
    except OSError as exc:
        print(f"receive: cannot listen on {args.listen}: {exc}", file=sys.stderr)
        return 2
    try:
        _serve_until_stopped(f"receive: Langfuse-compatible receiver on {receiver.url} (public key {args.public_key}, "
                             f"version {args.server_version}, db {args.db}, {len(faults)} fault(s) scheduled); its "
                             f"pages at {receiver.url}/; Ctrl-C stops", sys.stderr)
    finally:
        receiver.stop()
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from .receiver.store import Store

    if not os.path.exists(args.db):
        print(f"show: no database at {args.db}", file=sys.stderr)
        return 2
    try:
        store = Store(args.db)
    except ConfigError as exc:
        print(f"show: {exc.problem}", file=sys.stderr)
        return 2
    try:
        text = render_all(store, args.trace_id)
    finally:
        store.close()
    if not text:
        print("show: no traces" + (f" with id {args.trace_id}" if args.trace_id else ""), file=sys.stderr)
        return 1
    print(text)
    return 0


# -- check -----------------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    try:
        specs = load_stream_specs(args.config)
    except ConfigError as exc:
        print(f"check: {exc}", file=sys.stderr)
        return 2
    worst = 0  # 2 (bad configuration) over 1 (Langfuse said no, or was not reached) over 0
    for spec in specs:
        if spec.type != "langfuse":
            print(f"{spec.name}: type {spec.type!r} is not checked here")
            continue
        if not spec.enabled:
            print(f"{spec.name}: disabled, not checked")
            continue
        code, text = check_stream(spec.name, spec.params)
        worst = max(worst, code)
        print(f"{spec.name}: {text}")
    return worst


# -- main ------------------------------------------------------------------------------------------


def _seconds(text: str) -> float:
    """A finite number of seconds, at least 0: `nan` ended `mirror` in a traceback after reading the
    whole input, and `inf` waited for ever on a Langfuse that is down."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds, at least 0 (got {text!r})")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dirigent-langfuse", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"dirigent-langfuse {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv: debug)")
    # -v also after the command (`check --config x -v`); not given there, the one before it stands
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="log more (-vv: debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[verbose], **kw)

    demo = command("demo", help="mirror the bundled example sessions into an embedded receiver")
    demo.add_argument("--transport", choices=("auto", "ingestion", "otel"), default="auto",
                      help="auto asks the receiver (which answers version 3.x, or 4.0 with --transport otel)")
    demo.add_argument("--serve", action="store_true",
                      help="keep the receiver running after the demo, to open its pages (Ctrl-C stops)")
    demo.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT of the receiver (default: a free port on 127.0.0.1)")
    demo.set_defaults(func=cmd_demo)

    mirror = command("mirror", help="run BusEvents (JSON Lines) through the configured streams")
    mirror.add_argument("--config", required=True, help="TOML file with [[streams]]")
    mirror.add_argument("file", nargs="?", default="-", help="JSON Lines file, or - for stdin (default)")
    mirror.add_argument("--dry-run", action="store_true", help="print the items instead of sending them")
    mirror.add_argument("--timeout", type=_seconds, default=30.0, help="seconds to deliver at the end (default 30)")
    mirror.set_defaults(func=cmd_mirror)

    receive = command("receive", help="run the Langfuse-compatible receiver in the foreground")
    receive.add_argument("--listen", default="127.0.0.1:3000", help="HOST:PORT (default 127.0.0.1:3000)")
    receive.add_argument("--db", required=True, help="SQLite file to store into")
    receive.add_argument("--public-key", default=DEFAULT_PUBLIC_KEY)
    receive.add_argument("--secret-key", default=DEFAULT_SECRET_KEY)
    receive.add_argument("--server-version", default="3.120.0", help="version /api/public/health reports")
    receive.add_argument("--tls-cert", metavar="PEM", help="serve https:// with this certificate (and --tls-key)")
    receive.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    receive.add_argument("--max-request-bytes", type=int, default=MAX_REQUEST_BYTES, metavar="N",
                         help=f"larger request bodies get 413 (default {MAX_REQUEST_BYTES}, Langfuse Cloud's 5 MB)")
    receive.add_argument("--fault", action="append", metavar="SPEC",
                         help="schedule a fault: 503*5, 429:2*3, slow:1.5*2, reset*1, partial:500/3*1, page*2, "
                              "trickle:0.2*2, 503~30")
    receive.set_defaults(func=cmd_receive)

    show = command("show", help="print stored traces as trees")
    show.add_argument("--db", required=True)
    show.add_argument("trace_id", nargs="?")
    show.set_defaults(func=cmd_show)

    check = command("check", help="validate a config and test each Langfuse stream's host and keys")
    check.add_argument("--config", required=True)
    check.set_defaults(func=cmd_check)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
