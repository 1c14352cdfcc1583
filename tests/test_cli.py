"""The command as a subprocess: demo, mirror (malformed line, 503 burst), receive + show, check."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Union

import pytest

from dirigent_langfuse.receiver.faults import Fault

from .conftest import ROOT, SECRETS

EXAMPLE = ROOT / "dirigent_langfuse" / "examples" / "coding_session.jsonl"


def run(*args: str, stdin: Union[str, bytes, None] = None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for key in [k for k in env if k.startswith("LANGFUSE_")]:  # what LangfuseConfig would read
        env.pop(key)
    result = subprocess.run([sys.executable, "-m", "dirigent_langfuse", *args], input=stdin, capture_output=True,
                            text=not isinstance(stdin, bytes), timeout=timeout, env=env, cwd=str(ROOT))
    if isinstance(stdin, bytes):  # bytes in, text out all the same
        result.stdout, result.stderr = (out.decode("utf-8", "replace") for out in (result.stdout, result.stderr))
    for secret in SECRETS[:-1]:
        assert secret not in result.stdout + result.stderr, "a secret was printed"
    return result


def write_config(path: Path, url: str, secret: str = "sk-lf-local", **params: object) -> Path:
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in params.items())
    path.write_text(
        '[[streams]]\nname = "local"\ntype = "langfuse"\n\n[streams.params]\n'
        f'host = "{url}"\npublic_key = "pk-lf-local"\nsecret_key = "{secret}"\n{extra}'
    )
    return path


@pytest.mark.parametrize("transport", ["auto", "otel"])
def test_demo_prints_trees_and_a_summary(transport):
    result = run("demo", "--transport", transport)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Fix the flaky cache test" in out  # the trace's name
    assert re.search(r"GENERATION assistant message  \+0\.20s  6\.80s  first token 1\.40s  "
                     r"claude-sonnet-4-5  in 4210 / out 388 .*\$0\.0243", out)
    tool = "TOOL" if transport == "otel" else "SPAN"  # the ingestion API takes no type TOOL
    assert re.search(tool + r" Run pytest -q  \+9\.00s  3\.50s", out)  # a tool span with offset and duration
    assert tool + " Edit shop_api/cache.py  +8.00s  0.30s  ✗ ERROR: EACCES" in out  # the failed tool call
    assert "EVENT plan" in out and "ended: error" in out
    assert re.search(r"^ok: events=27 items=\d+ delivered=\d+ batches=\d+ failures=0", out, re.MULTILINE)
    # where to look at it: a page per trace and the list, and how to keep them open
    assert re.search(r"^page: http://127\.0\.0\.1:\d+/traces/\S+  \(Fix the flaky cache test\)$", out, re.MULTILINE)
    assert re.search(r"^page: http://127\.0\.0\.1:\d+/  \(every trace\)$", out, re.MULTILINE)
    assert out.splitlines()[-1].startswith("(the receiver stops with the demo: `dirigent-langfuse demo --serve`")


def test_demo_serve_keeps_the_pages_open_until_ctrl_c():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "dirigent_langfuse", "demo", "--serve"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        pages = []
        for line in proc.stdout:  # the trees, the summary, the pages, then the line once it serves
            pages += re.findall(r"^page: (\S+)", line)
            if line.startswith("serving these pages until Ctrl-C"):
                break
        trace = next(url for url in pages if "/traces/" in url)
        with urllib.request.urlopen(trace, timeout=10) as answer:
            assert answer.status == 200 and "Fix the flaky cache test" in answer.read().decode()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0, proc.stderr.read()


def test_mirror_reports_a_malformed_line_and_absorbs_a_503_burst(tmp_path, receiver):
    receiver.faults.add(Fault.status(503, times=3))  # within the three HTTP-level retries
    lines = EXAMPLE.read_text().splitlines()
    lines.insert(5, "{this is not json")
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(lines) + "\n")
    config = write_config(tmp_path / "streams.toml", receiver.url, transport="ingestion", flush_interval=0.1)
    result = run("mirror", "--config", str(config), str(source))
    assert result.returncode == 1, result.stderr  # a malformed line is a failure of the run...
    assert "line 6" in result.stderr
    assert "1 malformed lines" in result.stderr
    summary = re.search(r"items=(\d+) delivered=(\d+).*dropped=(\S+)", result.stderr)
    assert summary and summary.group(1) == summary.group(2) and summary.group(3) == "none"  # ...nothing else was lost
    assert receiver.store.counters()["faults_applied"] == 3
    assert len(receiver.store.traces()) == 2


def test_mirror_from_stdin_clean_run_exits_0(tmp_path, receiver):
    config = write_config(tmp_path / "streams.toml", receiver.url, transport="ingestion")
    result = run("mirror", "--config", str(config), "-", stdin=EXAMPLE.read_text())
    assert result.returncode == 0, result.stderr
    assert "mirror: ok: 27 events, 0 malformed lines" in result.stderr


@pytest.mark.parametrize("how, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_mirror_of_a_pipe_that_never_ends_stops_on_ctrl_c_or_sigterm_and_delivers_what_it_read(tmp_path, receiver, how, code):
    """`tail -f events.jsonl | dirigent-langfuse mirror -` ends with Ctrl-C (or a service manager's
    SIGTERM). Ctrl-C gave a traceback and no summary; SIGTERM ended the process at once, and the
    events it had read but not sent were lost."""
    config = write_config(tmp_path / "streams.toml", receiver.url, transport="ingestion")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # (a shell running the suite in the background ignores SIGINT, and its children with it: Ctrl-C
    # would never reach a terminal's foreground job so, and Python then raises no KeyboardInterrupt)
    proc = subprocess.Popen([sys.executable, "-m", "dirigent_langfuse", "mirror", "--config", str(config), "-"],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = len(EXAMPLE.read_text().splitlines())
    try:
        proc.stdin.write(EXAMPLE.read_text() + "{a line it reports at once, once it has read all before it\n")
        proc.stdin.flush()  # and the pipe stays open, as tail -f keeps it
        for line in iter(proc.stderr.readline, ""):  # (until it reports that line, or ends)
            if f"line {lines + 1}:" in line:
                break
        proc.send_signal(how)
        assert proc.wait(60) == code
        said = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        proc.stderr.close()
    assert "Traceback" not in said, said
    assert f"mirror: stopped by {'Ctrl-C' if how == signal.SIGINT else 'SIGTERM'}" in said, said
    summary = re.search(r"mirror: local: events=(\d+) items=(\d+) delivered=(\d+) .* dropped=none", said)
    assert summary and summary.group(1) == str(lines), said
    assert summary.group(2) == summary.group(3) != "0", said  # all it read, delivered
    assert len(receiver.store.traces()) == 2


@pytest.mark.parametrize("timeout", ["nan", "inf", "-1", "1e400", "soon"])
def test_mirror_refuses_a_timeout_that_is_not_a_finite_number_of_seconds(tmp_path, timeout):
    """`--timeout nan` read the whole input and then ended in a traceback; `inf` waited for ever on
    a Langfuse that is down."""
    config = write_config(tmp_path / "streams.toml", "http://127.0.0.1:9")
    result = run("mirror", "--config", str(config), "--timeout", timeout, str(EXAMPLE))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"argument --timeout: must be a finite number of seconds, at least 0 (got '{timeout}')" in result.stderr


def test_mirror_dry_run_prints_items(tmp_path):
    config = write_config(tmp_path / "streams.toml", "http://127.0.0.1:9")
    result = run("mirror", "--config", str(config), "--dry-run", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    items = [json.loads(line) for line in result.stdout.splitlines()]
    assert {i["type"] for i in items} >= {"trace-create", "generation-create", "generation-update"}


def test_mirror_says_which_event_types_it_skipped_as_unknown(tmp_path):
    """Events of a type this version does not know are skipped (forward compatible). Before, the
    run said nothing of it: a file written with the class names as types (`SessionCreated`)
    mirrored nothing and still said ok."""
    config = write_config(tmp_path / "streams.toml", "http://127.0.0.1:9")
    line = '{"type": "%s", "connector_id": "c", "native_session_id": "n", "scroll_id": "s", "at": "2026-01-01T00:00:00Z"}'
    stdin = "\n".join([line % "SessionCreated", line % "SessionCreated", line % "session_created"]) + "\n"
    result = run("mirror", "--config", str(config), "--dry-run", "-", stdin=stdin)
    assert result.returncode == 0, result.stderr
    assert "2 events of types this version does not know were skipped: SessionCreated 2" in result.stderr
    assert "known: connector_status, message_completed" in result.stderr


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_mirror_reads_a_bom_crlf_and_a_line_that_is_not_utf8_as_one_bad_line(tmp_path, receiver, source):
    """JSON Lines from a Windows tool (a byte order mark, CRLF) and one line that is not UTF-8
    (a log's stray latin-1 byte). Before, the BOM made line 1 malformed and the byte ended the run
    with a UnicodeDecodeError traceback: the events after it were never read."""
    lines = EXAMPLE.read_bytes().splitlines()
    lines.insert(3, b'{"type": "session_updated", "title": "caf\xe9"}')
    data = b"\xef\xbb\xbf" + b"\r\n".join(lines) + b"\r\n"
    config = write_config(tmp_path / "streams.toml", receiver.url, transport="ingestion", flush_interval=0.1)
    if source == "file":
        (tmp_path / "events.jsonl").write_bytes(data)
        result = run("mirror", "--config", str(config), str(tmp_path / "events.jsonl"))
    else:
        result = run("mirror", "--config", str(config), "-", stdin=data)
    assert result.returncode == 1, result.stderr  # the bad line is a failure of the run...
    assert "Traceback" not in result.stderr
    assert "mirror: line 4: not UTF-8 text (byte 0xe9 at byte 42)" in result.stderr
    assert "FAILED: 27 events, 1 malformed lines" in result.stderr  # ...and every other line was read
    summary = re.search(r"items=(\d+) delivered=(\d+).*dropped=(\S+)", result.stderr)
    assert summary and summary.group(1) == summary.group(2) and summary.group(3) == "none"
    assert len(receiver.store.traces()) == 2


def test_a_line_nested_too_deeply_is_one_malformed_line():
    """Before, json's RecursionError came out of the loop: a traceback, and the lines after it unread."""
    from dirigent_langfuse.cli import _read_events

    errors: list = []
    good = EXAMPLE.read_text().splitlines()[0]
    events = list(_read_events(["[" * 100_000 + "]" * 100_000, good], errors))
    assert errors == [(1, "nested too deeply to decode")]
    assert [n for n, _ in events] == [2]


def test_whatever_a_line_makes_the_codec_raise_is_that_line_s_problem(monkeypatch):
    """A bug of the codec's own (here: an OverflowError, as a huge cost_usd raised before
    25eb25d) costs the line, not the run's remaining lines."""
    from dirigent_langfuse import cli

    def codec(obj):
        if obj.get("boom"):
            raise OverflowError("int too large to convert to float")
        return real(obj)

    real = cli.event_from_json
    monkeypatch.setattr(cli, "event_from_json", codec)
    errors: list = []
    good = EXAMPLE.read_text().splitlines()[0]
    events = list(cli._read_events(['{"boom": 1}', good], errors))
    assert errors == [(1, "OverflowError: int too large to convert to float")] and [n for n, _ in events] == [2]


def test_mirror_a_file_it_cannot_read_exits_2(tmp_path):
    config = write_config(tmp_path / "streams.toml", "http://127.0.0.1:9")
    for path, reason in ((tmp_path / "missing.jsonl", "No such file or directory"), (tmp_path, "Is a directory")):
        result = run("mirror", "--config", str(config), str(path))
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert f"mirror: cannot read {path}: {reason}" in result.stderr


def test_mirror_bad_config_exits_2(tmp_path):
    bad = tmp_path / "streams.toml"
    bad.write_text('[[streams]]\nname = "x"\ntype = "langfuse"\n[streams.params]\nhost = "http://x"\n'
                   'public_key = "p"\nsecret_key = "s"\nbatch_size = "many"\n')
    result = run("mirror", "--config", str(bad), str(EXAMPLE))
    assert result.returncode == 2 and "batch_size" in result.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_receive_then_show(tmp_path):
    db = tmp_path / "lf.db"
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "dirigent_langfuse", "receive", "--listen", f"127.0.0.1:{port}",
                             "--db", str(db), "--fault", "503*1"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        banner = proc.stderr.readline()  # printed once it listens
        assert f"http://127.0.0.1:{port}" in banner and "1 fault(s)" in banner
        config = write_config(tmp_path / "streams.toml", f"http://127.0.0.1:{port}", transport="ingestion")
        mirrored = run("mirror", "--config", str(config), str(EXAMPLE))
        assert mirrored.returncode == 0, mirrored.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    shown = run("show", "--db", str(db))
    assert shown.returncode == 0 and "Fix the flaky cache test" in shown.stdout
    one = run("show", "--db", str(db), "sess-none")
    assert one.returncode == 1
    assert run("show", "--db", str(tmp_path / "missing.db")).returncode == 2


AWKWARD_SIGTERM = r"""
import os, signal, sys, threading
sys.path.insert(0, sys.argv[1])


class Awkward(threading.Event):
    # The main thread's first timed wait() (receive's, between two looks at whether to stop) runs
    # the SIGTERM handler while this thread holds the Event's own lock, as a signal landing at that
    # instant would.
    fired = False

    def wait(self, timeout=None):
        if timeout is not None and threading.current_thread() is threading.main_thread() and not Awkward.fired:
            Awkward.fired = True
            with self._cond:
                handler = signal.getsignal(signal.SIGTERM)
                if callable(handler):
                    handler(signal.SIGTERM, None)
        return super().wait(timeout)


threading.Event = Awkward
from dirigent_langfuse import cli
sys.exit(cli.main(["receive", "--listen", "127.0.0.1:0", "--db", sys.argv[2]]))
"""


def test_receive_stops_on_sigterm_whenever_it_lands(tmp_path):
    """`receive` set an Event from its SIGTERM handler; a SIGTERM landing while the main thread held
    that Event's lock (inside its wait(), which it called every half second) hung the process for
    good: one run of the suite in many timed out waiting for it to exit."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", AWKWARD_SIGTERM, str(ROOT), str(tmp_path / "lf.db")],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        proc.stderr.readline()  # the banner: it listens (or it hung before printing it)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_receive_and_show_refuse_a_database_they_cannot_use_with_exit_2(tmp_path):
    """Before, each of these ended in a traceback (sqlite3's or bind()'s), and `show` pointed at a
    spool wrote the receiver's tables into it."""
    from dirigent_langfuse.delivery.spool import Spool

    not_sqlite = tmp_path / "notes.db"
    not_sqlite.write_text("not a database\n")
    spool = tmp_path / "spool.db"
    Spool(str(spool), "s").release()
    cases = [
        (("show", "--db", str(not_sqlite)),
         f"show: cannot be opened as the receiver's database: {not_sqlite} (file is not a database)"),
        (("receive", "--db", str(not_sqlite)),
         f"receive: cannot be opened as the receiver's database: {not_sqlite} (file is not a database)"),
        (("receive", "--db", str(tmp_path / "no" / "such" / "dir.db")), "receive: cannot be opened as the receiver's database"),
        (("show", "--db", str(spool)), f"show: {spool} is another program's database (it holds spool), not a receiver's"),
        (("receive", "--db", str(tmp_path / "lf.db"), "--listen", "127.0.0.1:65536"), "a port from 0 to 65535"),
        # every request would have been refused with 413
        (("receive", "--db", str(tmp_path / "lf.db"), "--max-request-bytes", "-5"),
         "receive: --max-request-bytes: must be a whole number of bytes, at least 1 (got -5)"),
    ]
    for args, said in cases:
        listen = () if "--listen" in args else ("--listen", "127.0.0.1:0")
        result = run(*args, *(listen if args[0] == "receive" else ()), timeout=20)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (args, result.stderr)
        assert said in result.stderr, (args, result.stderr)
    with sqlite3.connect(str(spool)) as db:
        assert {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} <= {"spool", "sqlite_sequence"}


def test_check_good_keys_bad_keys_unreachable(tmp_path, receiver):
    good = run("check", "--config", str(write_config(tmp_path / "good.toml", receiver.url)))
    assert good.returncode == 0 and "keys accepted" in good.stdout, good.stdout + good.stderr
    bad = run("check", "--config", str(write_config(tmp_path / "bad.toml", receiver.url, secret="sk-lf-wrong")))
    assert bad.returncode == 1 and "refused the keys (HTTP 401)" in bad.stdout
    assert "sk-lf-wrong" not in bad.stdout + bad.stderr
    port = free_port()
    gone = run("check", "--config", str(write_config(tmp_path / "gone.toml", f"http://127.0.0.1:{port}")), "-v")
    assert gone.returncode == 1 and f"cannot reach http://127.0.0.1:{port}: GET /api/public/health" in gone.stdout
    assert "otel" not in gone.stdout and "ingestion" not in gone.stdout  # (auto chose no transport to blame)
    unmaskable = run("check", "--config", str(write_config(tmp_path / "mask.toml", receiver.url, mask="no_such.module:scrub")))
    assert unmaskable.returncode == 2 and "mask" in unmaskable.stdout and "cannot import" in unmaskable.stdout
    # a bad stream among good ones: every stream is checked, and the exit code is configuration's
    mixed = tmp_path / "mixed.toml"
    mixed.write_text(write_config(tmp_path / "one.toml", receiver.url).read_text()
                     + write_config(tmp_path / "two.toml", receiver.url, batch_size=0).read_text().replace('"local"', '"second"'))
    result = run("check", "--config", str(mixed))
    assert result.returncode == 2 and "keys accepted" in result.stdout and "key 'batch_size'" in result.stdout, result.stdout
    broken = tmp_path / "broken.toml"
    broken.write_text("[[streams]]\nname = 3\n")
    result = run("check", "--config", str(broken))
    assert result.returncode == 2 and "name" in result.stderr


def test_check_names_a_ca_bundle_from_the_environment_that_does_not_exist(tmp_path, monkeypatch):
    """It ended in a traceback; a stream made with it dropped every batch as internal_error."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "gone.pem"))
    result = run("check", "--config", str(write_config(tmp_path / "tls.toml", "https://127.0.0.1:9")))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "key 'ca_bundle'" in result.stdout and "REQUESTS_CA_BUNDLE does not exist" in result.stdout


ATEXIT = r"""
import sys
sys.path.insert(0, sys.argv[1])
from tests.helpers import config, created, started, completed, ended
from dirigent_langfuse import LangfuseStream
stream = LangfuseStream(config(sys.argv[2], atexit_flush=True, flush_interval=30, shutdown_timeout=float(sys.argv[3]),
                               connect_timeout=0.5, read_timeout=0.5), name="exit")
for event in (created(), started("m1", t=1), completed("m1", t=2), ended(t=3)):
    stream.on_event(event)
# no flush(), no shutdown(): the interpreter exits and the atexit hook delivers, bounded
"""


def test_atexit_delivers_what_was_queued(receiver):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", ATEXIT, str(ROOT), receiver.url, "5"], capture_output=True,
                            text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert receiver.store.envelope_count() == 4


def test_exit_is_bounded_when_langfuse_hangs(receiver):
    from dirigent_langfuse.receiver.faults import Fault

    receiver.faults.add(Fault.slow(30.0, times=50))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # the hook's shutdown_timeout (1 s) plus one request's timeouts bound the exit; 60 s would mean a hang
    result = subprocess.run([sys.executable, "-c", ATEXIT, str(ROOT), receiver.url, "1"], capture_output=True,
                            text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr


EXITS = r"""
import logging, sys, threading
sys.path.insert(0, sys.argv[1])
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
from tests.helpers import config, created, started, completed, ended
from dirigent_langfuse import LangfuseStream

gate = threading.Event()

def waits(data):  # stream a's backend hangs until stream b sends
    gate.wait(20)
    return data

def opens(data):
    gate.set()
    return data

streams = [LangfuseStream(config(sys.argv[2], atexit_flush=True, flush_interval=30, shutdown_timeout=5), name=name,
                          mask=mask) for name, mask in (("b", opens), ("a", waits))]
for stream in streams:
    scroll = "scroll-" + stream.name
    for event in (created(scroll), started("m1", scroll, t=1), completed("m1", scroll, t=2), ended(scroll, t=3)):
        stream.on_event(event)
# no shutdown(): the exit shuts both down (before, one after the other: a's first, the last made)
"""


@pytest.mark.skipif(sys.version_info[:2] == (3, 12), reason="Python 3.12 starts no thread at exit: the streams "
                    "are shut down one after another (test_the_exit_shuts_streams_down_where_no_thread_may_start)")
def test_the_exit_shuts_every_stream_down_at_once(receiver):
    """Before, each stream had an exit hook of its own, run one after another: N streams whose
    backend hangs held the exit for N × shutdown_timeout, and a stream whose delivery waited on
    another's (here a's backend answers once b has sent) timed out. Now they shut down together."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", EXITS, str(ROOT), receiver.url], capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert "not delivered" not in result.stderr, result.stderr
    assert receiver.store.envelope_count() == 8


EXITS_NO_THREADS = r"""
import atexit, logging, sys, threading
sys.path.insert(0, sys.argv[1])
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
from tests.helpers import config, created, started, completed, ended
from dirigent_langfuse import LangfuseStream

streams = [LangfuseStream(config(sys.argv[2], atexit_flush=True, flush_interval=30, shutdown_timeout=5), name=name)
           for name in "ab"]
for stream in streams:
    scroll = "scroll-" + stream.name
    for event in (created(scroll), started("m1", scroll, t=1), completed("m1", scroll, t=2), ended(scroll, t=3)):
        stream.on_event(event)
start = threading.Thread.start

def refuse(self):
    if self.name.startswith("dirigent-"):
        raise RuntimeError("can't create new thread at interpreter shutdown")
    start(self)

# Runs before the streams' exit hook (registered earlier): from then on no thread of ours may start, as on 3.12
atexit.register(lambda: setattr(threading.Thread, "start", refuse))
"""


def test_the_exit_shuts_streams_down_where_no_thread_may_start(receiver):
    """Python 3.12 starts no new thread once the interpreter exits. Before, the exit hook of two
    streams or more raised there ('Exception ignored in atexit callback') and delivered nothing.
    Now it shuts them down one after another on the exiting thread."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", EXITS_NO_THREADS, str(ROOT), receiver.url], capture_output=True,
                            text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert "Exception ignored" not in result.stderr and "not delivered" not in result.stderr, result.stderr
    assert receiver.store.envelope_count() == 8


def test_check_against_v4_uses_the_otel_endpoint(tmp_path, receiver_v4):
    good = run("check", "--config", str(write_config(tmp_path / "good.toml", receiver_v4.url)))
    assert good.returncode == 0 and "Langfuse 4.2.0" in good.stdout and "transport otel" in good.stdout
    # ingestion against v4: every trace and observation event would be refused
    legacy = run("check", "--config", str(write_config(tmp_path / "legacy.toml", receiver_v4.url, transport="ingestion")))
    assert legacy.returncode == 1 and "Langfuse 4.2.0, which refuses the ingestion API" in legacy.stdout
    bad = run("check", "--config", str(write_config(tmp_path / "bad.toml", receiver_v4.url, secret="sk-lf-nope")))
    assert bad.returncode == 1 and "HTTP 401" in bad.stdout


SIGTERM = r"""
import os, signal, sys, threading
sys.path.insert(0, sys.argv[1])
from tests.helpers import config, created, started, completed, ended
from dirigent_langfuse import LangfuseStream
stream = LangfuseStream(config(sys.argv[2], atexit_flush=True, flush_interval=30, shutdown_timeout=10), name="term")

def on_term(signum, frame):  # as hosts write it: end cleanly on SIGTERM
    print("handler:", stream.shutdown(10).detail, flush=True)
    if sys.argv[3] == "exit":
        sys.exit(0)

signal.signal(signal.SIGTERM, on_term)
clock, armed = stream._worker.state.clock, [False]

def clock_that_signals():  # SIGTERM lands while this thread is inside the worker's critical section
    if armed[0] and threading.current_thread() is threading.main_thread() and stream._worker.inside():
        armed[0] = False
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):  # the handler runs here, at one of these bytecodes
            pass
    return clock()

stream._worker.state.clock = clock_that_signals
for event in (created(), started("m1", t=1), completed("m1", t=2), ended(t=3)):
    stream.on_event(event)
armed[0] = True
stream.flush(10)  # interrupted by the SIGTERM
print("after:", stream.on_event(created("scroll-2")).status.value, flush=True)
print("later shutdown:", stream.shutdown(10).status.value, flush=True)
"""


@pytest.mark.parametrize("then", ["return", "exit"])
def test_shutdown_from_a_signal_handler_that_interrupted_the_stream_never_hangs(receiver, then):
    """Python runs a signal handler on the main thread between two bytecodes, maybe while that
    thread is inside one of the stream's critical sections. Before, a SIGTERM handler calling
    shutdown() there waited for a lock its own thread held: the process hung until SIGKILL. Now
    the shutdown answers at once and goes on on a thread of its own; a later shutdown(), or the
    exit (the handler calls sys.exit), waits for it and everything is delivered."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        result = subprocess.run([sys.executable, "-c", SIGTERM, str(ROOT), receiver.url, then], capture_output=True,
                                text=True, timeout=30, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("the process hung in its SIGTERM handler")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("handler: shutdown was called from inside the stream"), lines
    if then == "return":
        assert lines[1:] == ["after: failed", "later shutdown: delivered"], lines
    else:
        assert lines[1:] == [], lines
    assert receiver.store.envelope_count() == 4


SIGTERM_SET = r"""
import os, signal, sys, threading
sys.path.insert(0, sys.argv[1])
from tests.helpers import config, created, started, completed, ended
from dirigent_langfuse import LangfuseStream, StreamSet
a, b = (LangfuseStream(config(sys.argv[2], atexit_flush=True, flush_interval=30, shutdown_timeout=10), name=n)
        for n in "ab")
streams = StreamSet([a, b])

def on_term(signum, frame):
    print("handler:", sorted((k, v.status.value) for k, v in streams.shutdown(10).items()), flush=True)

signal.signal(signal.SIGTERM, on_term)
clock, armed = a._worker.state.clock, [False]

def clock_that_signals():  # SIGTERM lands while this thread is inside a's worker critical section
    if armed[0] and threading.current_thread() is threading.main_thread() and a._worker.inside():
        armed[0] = False
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):
            pass
    return clock()

a._worker.state.clock = clock_that_signals
for stream in (a, b):
    scroll = "scroll-" + stream.name
    for event in (created(scroll), started("m1", scroll, t=1), completed("m1", scroll, t=2), ended(scroll, t=3)):
        stream.on_event(event)
armed[0] = True
a.flush(10)  # interrupted by the SIGTERM
print("later:", sorted((k, v.status.value) for k, v in streams.shutdown(10).items()), flush=True)
"""


def test_a_stream_set_shut_down_from_a_signal_handler_that_interrupted_one_of_its_streams(receiver):
    """The set calls its streams on threads of their own, except when the calling thread is
    inside one of them (here a SIGTERM handler interrupted stream a): then it calls them here, a
    answers at once and goes on on a thread of its own, b is shut down in the handler. Nothing
    hangs and everything is delivered."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        result = subprocess.run([sys.executable, "-c", SIGTERM_SET, str(ROOT), receiver.url], capture_output=True,
                                text=True, timeout=30, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("the process hung in its SIGTERM handler")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["handler: [('a', 'failed'), ('b', 'delivered')]",
                                          "later: [('a', 'delivered'), ('b', 'delivered')]"], result.stdout
    assert receiver.store.envelope_count() == 8


DROPPED = r"""
import logging, sys
sys.path.insert(0, sys.argv[1])
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
from tests.helpers import config, created, started, completed, ended
from dirigent_langfuse import LangfuseStream

def main():
    stream = LangfuseStream(config(sys.argv[2], atexit_flush=sys.argv[3] == "on", flush_interval=30), name="dropped")
    for event in (created(), started("m1", t=1), completed("m1", t=2), ended(t=3)):
        stream.on_event(event)

main()  # returns without shutdown(): the host dropped its stream
import gc; gc.collect()
"""


@pytest.mark.parametrize("flush", ["on", "off"])
def test_a_stream_dropped_without_shutdown_still_delivers_at_exit_or_says_what_it_did_not(receiver, flush):
    """Before, the exit hook held the stream weakly: a script whose main() made a stream, sent
    events and returned lost them all at exit, without a word."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", DROPPED, str(ROOT), receiver.url, flush], capture_output=True,
                            text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    if flush == "on":
        assert receiver.store.envelope_count() == 4
    else:
        assert "stream 'dropped': exiting with 4 item(s) not delivered" in result.stderr, result.stderr


def test_the_sigterm_handler_of_mirror_and_receive_leaves_a_handler_python_can_install(monkeypatch):
    """`signal.signal` answers None for a handler installed from C (an embedding host's): putting
    that back raised TypeError on the way out; the default goes back instead."""
    from dirigent_langfuse import cli

    real = signal.signal
    original = signal.getsignal(signal.SIGTERM)
    installed = []

    def as_if_c_had_installed_the_one_before(signum, handler):
        installed.append(handler)
        real(signum, handler)
        return None

    monkeypatch.setattr(signal, "signal", as_if_c_had_installed_the_one_before)
    try:
        with cli._terminable():
            assert installed == [cli._terminate]
        assert installed == [cli._terminate, signal.SIG_DFL]
    finally:
        monkeypatch.undo()
        signal.signal(signal.SIGTERM, original)
