"""The spool's owners: records of a living process are never taken; a dead one's are, once."""

from __future__ import annotations

import json
import os
import select
import sqlite3

import pytest

from dirigent_langfuse import ConfigError, LangfuseStream
from dirigent_langfuse.delivery.records import Record
from dirigent_langfuse.delivery.spool import Spool

from ..helpers import config

pytestmark = pytest.mark.skipif(os.name != "posix", reason="spool owners need fcntl (POSIX)")


def records(*keys: str) -> list:
    return [Record(k, f'{{"id":"{k}"}}'.encode(), 1) for k in keys]


def old_spool(tmp_path, rows: str = "") -> str:
    """A spool file as versions before owners wrote it (no `owner` column), with `rows` inserted."""
    path = str(tmp_path / "spool.db")
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE spool (stream TEXT NOT NULL, key TEXT NOT NULL, wire TEXT NOT NULL, data BLOB NOT NULL,"
        " weight INTEGER NOT NULL, seq INTEGER PRIMARY KEY AUTOINCREMENT, UNIQUE (stream, key));" + rows
    )
    db.close()
    return path


def test_a_living_owner_s_records_are_not_taken_and_a_released_one_s_are(tmp_path):
    path = str(tmp_path / "spool.db")
    first = Spool(path, "s")
    first.add(records("a", "b"), "ingestion")
    second = Spool(path, "s")  # another owner, as another process would be (flock is per open file)
    assert second.load("ingestion") == ([], 0)
    first.release()  # the first stream shut down, or its process died
    loaded, other = second.load("ingestion")
    assert [r.key for r in loaded] == ["a", "b"] and other == 0
    third = Spool(path, "s")
    assert third.load("ingestion") == ([], 0)  # claimed once: the second owns them now
    second.release()
    assert [r.key for r in third.load("ingestion")[0]] == ["a", "b"]


def test_only_its_own_stream_s_orphans_are_claimed_and_dead_owners_lock_files_go(tmp_path):
    path = str(tmp_path / "spool.db")
    dead = Spool(path, "one")
    dead.add(records("a"), "ingestion")
    other = Spool(path, "two")
    other.add(records("b"), "otel")
    dead.release()
    other.release()
    one = Spool(path, "one")
    assert [r.key for r in one.load("ingestion")[0]] == ["a"]
    two = Spool(path, "two")
    assert [r.key for r in two.load("otel")[0]] == ["b"]
    assert sorted(os.listdir(path + ".owners")) == sorted([one.owner, two.owner])


def test_a_spool_written_before_owners_existed_is_taken(tmp_path):
    path = old_spool(tmp_path, "INSERT INTO spool (stream, key, wire, data, weight) "
                               "VALUES ('s', 'old', 'ingestion', x'7b7d', 3);")
    spool = Spool(path, "s")
    loaded, _ = spool.load("ingestion")
    assert [(r.key, r.data, r.weight) for r in loaded] == [("old", b"{}", 3)]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Python 3.12+ warns about fork() with threads
def test_a_forked_child_has_its_own_owner_and_leaves_the_parent_s_lock_held(tmp_path):
    """The child closes its copy of the parent's lock; unlocking it would free the parent's records."""
    path = str(tmp_path / "spool.db")
    parent = Spool(path, "s")
    parent.add(records("p"), "ingestion")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            child = parent.forked()
            child.add(records("c"), "ingestion")
            report = {"owner": child.owner, "loaded": [r.key for r in child.load("ingestion")[0]]}
            os.write(write_end, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)  # dies: its lock goes with it
    os.close(write_end)
    ready, _, _ = select.select([read_end], [], [], 30)
    assert ready, "the forked child never reported"
    report = json.loads(os.read(read_end, 65536).decode())
    os.close(read_end)
    assert os.waitpid(pid, 0)[1] == 0
    assert report["owner"] not in ("", parent.owner) and report["loaded"] == ["c"]  # not the parent's "p"
    later = Spool(path, "s")
    assert [r.key for r in later.load("ingestion")[0]] == ["c"]  # the dead child's; the parent still holds "p"
    parent.release()
    assert [r.key for r in later.load("ingestion")[0]] == ["p", "c"]  # in the order they were spooled


def test_two_processes_upgrading_an_old_spool_at_once_both_open_it(tmp_path):
    path = old_spool(tmp_path)
    first = Spool(path, "s")
    # the second saw the old table before the first altered it: its ALTER fails, and must be ignored
    original = sqlite3.Connection.execute
    stale = {"done": False}

    class Stale(sqlite3.Connection):
        def execute(self, sql, *args):  # type: ignore[override]
            if sql.startswith("PRAGMA table_info") and not stale["done"]:
                stale["done"] = True
                return iter([(0, "stream"), (1, "key")])
            return original(self, sql, *args)

    connect = sqlite3.connect
    try:
        sqlite3.connect = lambda *a, **k: connect(*a, factory=Stale, **k)  # type: ignore[assignment]
        second = Spool(path, "s")
    finally:
        sqlite3.connect = connect  # type: ignore[assignment]
    assert stale["done"] and second.owner and second.owner != first.owner


def test_a_spool_in_memory_is_refused_naming_spool_path():
    with pytest.raises(ConfigError) as info:
        Spool(":memory:", "s")
    assert info.value.key == "spool_path"


def test_another_program_s_database_is_refused_and_left_as_it_was(tmp_path, receiver):
    """`spool_path` pointed at the host's own database (or the receiver's): before, the spool put
    its table into it and switched it to WAL mode for good."""
    from dirigent_langfuse.receiver.store import Store

    app = tmp_path / "app.db"
    with sqlite3.connect(str(app)) as db:
        db.execute("CREATE TABLE users (id INTEGER)")
    db.close()
    Store(str(tmp_path / "lf.db")).close()
    for path, holds in ((app, "users"), (tmp_path / "lf.db", "bodies, catalog, counters, log, owners")):
        with pytest.raises(ConfigError) as info:
            LangfuseStream(config(receiver.url, spool_path=str(path)), name="s")
        assert info.value.key == "spool_path" and info.value.stream == "s"
        assert f"is another program's database (it holds {holds}), not a spool" in str(info.value)
        db = sqlite3.connect(str(path))
        try:
            assert "spool" not in {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == ("delete" if path == app else "wal")
        finally:
            db.close()
    Spool(str(tmp_path / "empty.db"), "s").release()  # a new file, or one that is a spool, is taken as ever
    Spool(str(tmp_path / "empty.db"), "s").release()


def test_an_owner_file_that_cannot_be_opened_is_left_alone_not_the_end_of_the_spool(tmp_path, monkeypatch):
    """Another user's process shares the spool: its lock file cannot be opened here. Before, that
    raised while claiming orphans and turned this stream's spool off."""
    path = str(tmp_path / "spool.db")
    other = Spool(path, "s")
    other.add(records("theirs"), "ingestion")
    other.release()
    mine = Spool(path, "s")
    real_open = os.open

    def refuse(name, *args, **kwargs):
        if str(name).endswith(other.owner):
            raise PermissionError(13, "Permission denied", name)
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    assert mine.load("ingestion") == ([], 0)  # not taken: whether its owner lives cannot be told
    mine.add(records("ours"), "ingestion")
    monkeypatch.undo()
    assert not mine._broken  # the spool goes on; once the file can be opened, the orphan is taken
    assert [r.key for r in mine.load("ingestion")[0]] == ["theirs", "ours"]


def test_two_records_with_one_key_are_two_rows_each_removed_on_its_own(tmp_path):
    """A replayed item, or a span sent again, makes a second record with the same key. Before, the
    spool kept one row per key: the second replaced the first (a start re-sent one, while two had
    been counted), and the first one's delivery removed the row the second still needed: a crash
    then lost it."""
    path = str(tmp_path / "spool.db")
    first = Spool(path, "s")
    a, b = Record("k", b'{"v":1}', 1), Record("k", b'{"v":2}', 2)
    first.add([a], "otel")
    first.add([b], "otel")
    assert first.count() == 2
    first.remove([a])  # the first went through; the second is still waiting
    first.release()
    loaded, other = Spool(path, "s").load("otel")
    assert [(r.key, r.data, r.weight) for r in loaded] == [("k", b'{"v":2}', 2)] and other == 0


def test_rows_written_before_slots_load_with_their_key(tmp_path):
    path = old_spool(tmp_path, "INSERT INTO spool (stream, key, wire, data, weight) "
                               "VALUES ('s', 'old', 'ingestion', x'7b7d', 3);")
    spool = Spool(path, "s")
    (record,), _ = spool.load("ingestion")
    assert (record.key, record.weight) == ("old", 3)
    spool.remove([record])
    assert spool.count() == 0


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to list open files")
def test_a_stream_that_shut_down_keeps_no_connection_to_its_spool_open(tmp_path, receiver):
    """Before, every thread that used the spool kept a SQLite connection open until it was
    collected (Python 3.13 warns: "unclosed database"), the caller's thread for the stream's life."""
    from dirigent_langfuse import LangfuseStream

    from ..helpers import config, started

    path = str(tmp_path / "spool.db")

    def open_on_spool() -> list:
        found = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith(path):
                found.append(target)
        return found

    stream = LangfuseStream(config(receiver.url, spool_path=path, flush_interval=0.02), name="svc")
    stream.on_event(started("m1", "scroll-fd", t=1))
    assert stream.shutdown(10).ok
    assert open_on_spool() == []


def test_a_flush_right_after_a_restart_waits_for_what_the_spool_held(tmp_path, receiver, monkeypatch):
    """flush(10) answered DELIVERED at once while the spool, not loaded yet, still held a killed
    process's 1,000 records: they arrived seconds later."""
    import socket
    import threading

    from ..helpers import completed, started

    path = str(tmp_path / "spool.db")
    with socket.socket() as probe:  # a port nobody listens on: the first process never delivers
        probe.bind(("127.0.0.1", 0))
        gone = f"http://127.0.0.1:{probe.getsockname()[1]}"
    first = LangfuseStream(config(gone, spool_path=path, flush_interval=0.02, batch_size=64), name="svc")
    for i in range(500):
        first.on_event(started(f"m{i}", "scroll-restart", t=i))
        first.on_event(completed(f"m{i}", "scroll-restart", t=i + 0.5))
    first.shutdown(3)
    assert first.stats().dropped == {"spooled": 1000}

    go = threading.Event()
    load = Spool.load

    def slow_load(self, *args, **kw):  # the restart's load, held until the flush below waits
        go.wait(10)
        return load(self, *args, **kw)

    monkeypatch.setattr(Spool, "load", slow_load)
    second = LangfuseStream(config(receiver.url, spool_path=path, flush_interval=0.02), name="svc")
    timer = threading.Timer(0.3, go.set)
    timer.start()
    try:
        outcome = second.flush(10)
    finally:
        timer.cancel()
        go.set()
    assert outcome.ok, outcome
    assert receiver.store.envelope_count() == 1000  # DELIVERED means those arrived
    assert second.stats().items_accepted == second.stats().items_delivered == 1000
    assert second.shutdown(5).ok
