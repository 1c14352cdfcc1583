"""The receiver's web pages over real sockets, without a browser: what each page shows, escaping,
the security headers, 404 and 400 pages, basic auth beyond loopback, paging, and the catalog that
pages read (one trace merged from its own rows is the trace the whole store merges)."""

from __future__ import annotations

import re
import sqlite3
from typing import Iterator
from urllib.parse import quote

import pytest
import requests

from dirigent_langfuse.receiver.server import DEFAULT_PUBLIC_KEY, DEFAULT_SECRET_KEY, Receiver
from dirigent_langfuse.receiver.store import Store

from .sessions import mirror_examples, post, session

HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


def get(receiver: Receiver, path: str, **kw: object) -> requests.Response:
    return requests.get(receiver.url + path, timeout=10, **kw)  # type: ignore[arg-type]


@pytest.fixture
def examples(receiver: Receiver) -> Receiver:
    mirror_examples(receiver)
    return receiver


def test_the_list_shows_every_trace_newest_first_with_its_totals(examples):
    page = get(examples, "/")
    assert page.status_code == 200 and page.headers["Content-Type"] == "text/html; charset=utf-8"
    text = page.text
    assert text.index("Summarise the release notes") < text.index("Fix the flaky cache test")  # newest first
    assert "2 traces" in text
    assert 'href="/traces/scroll-0f5c2d9e-0001"' in text and 'href="/sessions/sess-7f3a"' in text
    assert "9,330 / 602" in text and "$0.0441" in text  # tokens in / out and cost of the first session
    assert re.search(r'<tr class="has-error">.*?Fix the flaky cache test', text, re.S)  # its failed tool call


def test_a_trace_page_is_its_timeline_with_the_trace_above(examples):
    text = get(examples, "/traces/scroll-0f5c2d9e-0001").text
    assert "<h1>Fix the flaky cache test</h1>" in text
    assert "dev@example.com" in text and "bugfix" in text and "Find out why and fix it." in text  # user, tags, input
    rows = re.findall(r'<tr class="obs[^"]*" data-id="([^"]+)"', text)
    assert len(rows) == 9  # one row per observation
    assert text.count('<span class="pad"></span>') == 6  # the tool calls and a plan, one level under their message
    assert "1.40 s" in text  # a message's time to first token
    assert 'class="obs has-error"' in text and "✗ EACCES: permission denied" in text  # the failure and its message
    assert re.search(r'<rect x="[\d.]+" y="3" width="[\d.]+" height="10" class="b-generation"/>', text)  # a bar


def test_selecting_an_observation_shows_its_input_output_metadata_and_usage(examples):
    observations = examples.store.observations("scroll-0f5c2d9e-0001")
    message = next(o for o in observations if o.get("type") == "GENERATION")
    page = get(examples, f"/traces/scroll-0f5c2d9e-0001?o={message['id']}")
    assert f'<tr class="obs selected" data-id="{message["id"]}"' in page.text
    panel = get(examples, f"/traces/scroll-0f5c2d9e-0001/observations/{message['id']}")
    assert panel.status_code == 200 and panel.text.startswith('<div class="panel"')
    for label in ("Input", "Output", "Metadata", "Usage", "Cost", "Model parameters"):
        assert f"<summary>{label}</summary>" in panel.text or f"<h3>{label}</h3>" in panel.text
    assert "&quot;input&quot;: 4210" in panel.text  # the usage, as formatted JSON


def test_a_session_page_lists_its_traces_in_order_with_totals(receiver):
    post(receiver, session("t-late", name="second", at=60) + session("t-early", name="first", at=0)
         + session("t-other", name="elsewhere", session_id="s-2"))
    text = get(receiver, "/sessions/s-1").text
    assert text.index(">first<") < text.index(">second<") and "elsewhere" not in text
    assert "2,400 / 600" in text  # the tokens of both traces
    assert "$0.0162" in text


def test_everything_a_client_sent_is_shown_as_text(receiver):
    post(receiver, session("t-x", name=HOSTILE, title=HOSTILE, session_id=HOSTILE, user=HOSTILE, tags=[HOSTILE]))
    for path in ("/", "/traces/t-x", f"/sessions/{quote(HOSTILE, safe='')}", "/traces/t-x/observations/t-x-tool-1"):
        page = get(receiver, path)
        assert page.status_code == 200, path
        assert "<script>window" not in page.text and "<img src=x" not in page.text, path
        assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in page.text, path


def test_every_page_forbids_inline_and_foreign_scripts(examples):
    for path in ("/", "/traces/scroll-0f5c2d9e-0001", "/sessions/sess-7f3a", "/nowhere", "/static/pages.js"):
        policy = get(examples, path).headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "default-src 'none'" in policy, path
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy and "http" not in policy, path
    page = get(examples, "/").text
    assert not re.search(r"<script(?![^>]*src=\"/static/pages\.js\")", page)  # no inline script, only ours
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing from another host
    assert " style=" not in page


@pytest.mark.parametrize("path, status", [
    ("/traces/no-such-trace", 404),
    ("/sessions/no-such-session", 404),
    ("/traces/scroll-0f5c2d9e-0001?o=no-such-observation", 404),
    ("/traces/scroll-0f5c2d9e-0001/observations/no-such-observation", 404),
    ("/static/nothing.js", 404),
    ("/somewhere/else", 404),
    ("/traces/bad%0Did", 400),  # a carriage return: an id Langfuse would refuse
    ("/traces/" + "x" * 801, 400),
    ("/sessions/%ff%fe", 400),  # not UTF-8 once unquoted
    ("/?before=not-a-cursor", 400),
])
def test_a_missing_or_bad_id_is_a_page_not_a_traceback(examples, path, status):
    page = get(examples, path)
    assert page.status_code == status, page.text
    assert page.headers["Content-Type"] == "text/html; charset=utf-8" and "Traceback" not in page.text
    assert '<a href="/">All traces</a>' in page.text


def test_beyond_loopback_the_pages_ask_for_the_receivers_keys():
    with Receiver(host="0.0.0.0") as receiver:  # reached here over loopback all the same
        url = f"http://127.0.0.1:{receiver.port}"
        refused = requests.get(url + "/", timeout=10)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Basic realm=")
        assert requests.get(url + "/static/pages.css", timeout=10).status_code == 401
        assert requests.get(url + "/", auth=(DEFAULT_PUBLIC_KEY, "wrong"), timeout=10).status_code == 401
        assert requests.get(url + "/", auth=(DEFAULT_PUBLIC_KEY, DEFAULT_SECRET_KEY), timeout=10).status_code == 200
    with Receiver(host="127.0.0.1") as receiver:
        assert requests.get(receiver.url + "/", timeout=10).status_code == 200  # loopback: open


def test_the_list_pages_by_keyset_and_filters(receiver):
    items = []
    for n in range(120):
        items += session(f"t-{n:03d}", observations=1, name=f"run {n:03d}", session_id=f"s-{n % 3}",
                         user=f"user-{n % 2}", tags=["even" if n % 2 == 0 else "odd"], at=n)
    post(receiver, items)
    seen, path = [], "/"
    while path:
        text = get(receiver, path).text
        seen += re.findall(r">run (\d{3})<", text)
        older = re.search(r'<a href="([^"]+)" rel="next">', text)
        path = older.group(1).replace("&amp;", "&") if older else ""
    assert seen == [f"{n:03d}" for n in reversed(range(120))]  # every trace once, newest first
    second = get(receiver, "/?before=" + quote(_cursor(receiver, 69))).text
    newer = re.search(r'<a href="([^"]+)" rel="prev">', second).group(1).replace("&amp;", "&")
    assert re.findall(r">run (\d{3})<", get(receiver, newer).text)[-1] == "069"  # back again
    assert len(re.findall(r">run \d{3}<", get(receiver, "/?session=s-1").text)) == 40
    assert "40 traces match" in get(receiver, "/?session=s-1").text
    assert re.findall(r">run (\d{3})<", get(receiver, "/?user=user-1&q=run+11").text) == ["119", "117", "115", "113", "111"]
    assert "60 traces match" in get(receiver, "/?q=EVEN").text  # the text filter reads tags, in any case
    assert "0 traces match" in get(receiver, "/?q=100%25").text  # a LIKE wildcard is a character here


def _cursor(receiver: Receiver, n: int) -> str:
    line = next(t for t in receiver.store.traces() if t["id"] == f"t-{n:03d}")
    return f"{line['timestamp']}|t-{n:03d}"


def test_the_list_follows_what_arrives_after_it_was_read(receiver):
    post(receiver, session("t-1", name="before"))
    assert ">before<" in get(receiver, "/").text
    post(receiver, [{"id": "u-1", "type": "trace-create", "timestamp": "2026-11-25T09:10:00.000Z",
                     "body": {"id": "t-1", "name": "after"}}])
    assert ">after<" in get(receiver, "/").text and ">before<" not in get(receiver, "/").text


@pytest.mark.parametrize("transport, version", [("ingestion", "3.120.0"), ("otel", "3.120.0"), ("otel", "4.2.0")])
def test_a_trace_merged_from_its_own_rows_is_the_trace_the_store_merges(transport, version):
    with Receiver(version=version) as receiver:
        mirror_examples(receiver, transport)
        post(receiver, session("t-a", failed=2)) if transport == "ingestion" else None
        for trace in receiver.store.traces():
            assert receiver.store.trace_detail(trace["id"]) == (trace, receiver.store.observations(trace["id"]))


def test_a_database_of_an_earlier_version_gets_its_catalog(tmp_path):
    db = tmp_path / "old.db"
    with Receiver(db=str(db)) as receiver:
        post(receiver, session("t-old", name="from before"))
    with sqlite3.connect(db) as raw:  # as an earlier version wrote it: no trace per row, no catalog
        raw.executescript("""
            CREATE TABLE log_old (seq INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
                                  received REAL NOT NULL, json TEXT NOT NULL);
            INSERT INTO log_old SELECT seq, key, kind, received, json FROM log;
            DROP TABLE log; ALTER TABLE log_old RENAME TO log;
            DROP TABLE catalog; DROP TABLE owners; PRAGMA user_version = 0;
        """)
    store = Store(str(db))
    try:
        assert [line["name"] for line in store.page(10).lines] == ["from before"]
        assert store.trace_detail("t-old") is not None
    finally:
        store.close()


@pytest.fixture
def big(receiver: Receiver) -> Iterator[Receiver]:
    post(receiver, session("t-big", observations=1000, name="a thousand observations", failed=500))
    yield receiver


def test_a_trace_of_a_thousand_observations(big):
    text = get(big, "/traces/t-big").text
    assert len(re.findall(r'<tr class="obs', text)) == 1000
    assert "✗ EACCES: permission denied" in text
    panel = get(big, "/traces/t-big/observations/t-big-tool-999").text
    assert "&quot;observation&quot;: 999" in panel


def test_odd_values_a_client_may_store_are_shown_not_fatal(receiver):
    """What Langfuse takes may still be odd to show: metadata that is a list, a name that is
    empty, a huge input, an observation never ended, a parent that is not there, another offset."""
    post(receiver, [
        {"id": "o-1", "type": "trace-create", "timestamp": "2026-11-25T09:00:00Z",
         "body": {"id": "t-odd", "name": "", "metadata": [1, "two", {"three": None}], "input": "x" * 100_000}},
        {"id": "o-2", "type": "span-create", "timestamp": "2026-11-25T09:00:01Z",
         "body": {"id": "s-open", "traceId": "t-odd", "startTime": "2026-11-25T09:00:01.5Z"}},
        {"id": "o-3", "type": "event-create", "timestamp": "2026-11-25T09:00:02Z",
         "body": {"id": "e-1", "traceId": "t-odd", "name": "😀 ünïcode", "startTime": "2026-11-25T09:00:02+02:00"}},
        {"id": "o-4", "type": "generation-create", "timestamp": "2026-11-25T09:00:03Z",
         "body": {"id": "g-1", "traceId": "t-odd", "parentObservationId": "nowhere",
                  "usageDetails": {"input": 5}, "costDetails": {"total": 1e-9}}},
    ])
    for path in ("/", "/traces/t-odd", "/traces/t-odd?o=s-open", "/traces/t-odd/observations/e-1",
                 "/traces/t-odd/observations/g-1"):
        page = get(receiver, path)
        assert page.status_code == 200, (path, page.text[:300])
    text = get(receiver, "/traces/t-odd").text
    assert "(unnamed trace)" in text and "😀 ünïcode" in text and 'class="b-span b-open"' in text
