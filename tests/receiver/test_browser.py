"""The receiver's pages as a person uses them, in headless Chromium driven by Playwright: open the
list, open a trace, select an observation, read its input. Every test also checks that no script
error reached the console and that no request left the receiver.

Skipped, with the reason, where Playwright for Python or a Chromium is missing; `.ci/run` installs
both (Debian's `chromium` with apt-get), so CI always runs them.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Iterator, List

import pytest

from dirigent_langfuse.receiver.server import DEFAULT_PUBLIC_KEY, DEFAULT_SECRET_KEY, Receiver

from .sessions import mirror_examples, post, session

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed "
                               "(python -m pip install '.[test]'); CI always has it")

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# Chromium as this machine runs it: as root without its sandbox, and never calling home.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM:
        pytest.skip("no Chromium found (apt-get install chromium, or set CHROMIUM to its path); CI installs it")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


class Visit:
    """A page of a fresh browser context, with what went wrong in it and every request it made."""

    def __init__(self, browser: Any, receiver: Any, **context: Any) -> None:
        self.receiver = receiver
        self.context = browser.new_context(viewport={"width": 1400, "height": 900}, **context)
        self.page = self.context.new_page()
        self.page.set_default_timeout(15000)
        self.problems: List[str] = []
        self.requests: List[str] = []
        self.page.on("console", lambda m: self.problems.append(f"console {m.type}: {m.text}")
                     if m.type in ("error", "warning") else None)
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("request", lambda r: self.requests.append(r.url))

    def open(self, path: str) -> Any:
        return self.page.goto(self.receiver.url + path)

    def check(self) -> None:
        assert not self.problems, self.problems
        foreign = [url for url in self.requests if not url.startswith(self.receiver.url + "/")]
        assert not foreign, f"requests left the receiver: {foreign}"
        self.context.close()


@pytest.fixture
def visit(browser: Any) -> Iterator[Any]:
    visits: List[Visit] = []

    def make(receiver: Any, **context: Any) -> Visit:
        visits.append(Visit(browser, receiver, **context))
        return visits[-1]

    yield make
    for v in visits:
        v.check()


@pytest.mark.parametrize("transport, version", [("ingestion", "3.120.0"), ("otel", "4.2.0")])
def test_open_the_list_a_trace_and_an_observation(visit, transport, version):
    with Receiver(version=version) as receiver:
        mirror_examples(receiver, transport)
        v = visit(receiver)
        v.open("/")
        assert v.page.locator("table.traces tbody tr").count() == 2
        v.page.click("text=Fix the flaky cache test")
        v.page.wait_for_url("**/traces/*")
        assert v.page.locator("h1").inner_text() == "Fix the flaky cache test"
        assert "Find out why and fix it." in v.page.locator(".trace-io").inner_text()  # the trace's input
        failed = v.page.locator("tr.obs.has-error")
        assert failed.count() == 1 and "EACCES: permission denied" in failed.inner_text()
        v.page.click("a.obs-link:text-is('Run pytest -q')")
        panel = v.page.locator("#detail .panel")
        panel.locator("h3:text-is('Run pytest -q')").wait_for()
        assert "pytest -q" in panel.locator("section:has(summary:text-is('Input')) pre").inner_text()
        assert "?o=" in v.page.url  # the address says what is selected: a reload shows it again
        assert v.page.locator("tr.obs.selected").count() == 1
        v.page.keyboard.press("ArrowDown")  # the next row, from the keyboard
        # (no wait_for_function: Playwright evaluates it as a string, which the page's policy forbids)
        v.page.locator("#detail .panel > h3").filter(has_not_text="Run pytest -q").wait_for()
        v.page.reload()
        assert v.page.locator("tr.obs.selected").count() == 1 and v.page.locator("#detail .panel").count() == 1


def test_a_session_page_and_back_to_its_traces(visit, receiver):
    post(receiver, session("t-1", name="first", at=0) + session("t-2", name="second", at=30))
    v = visit(receiver)
    v.open("/traces/t-2")
    v.page.click("dd a[href^='/sessions/']")
    v.page.wait_for_url("**/sessions/s-1")
    names = v.page.locator("table.traces tbody tr td:first-child").all_inner_texts()
    assert names == ["first", "second"]
    v.page.click("text=first")
    v.page.wait_for_url("**/traces/t-1")


def test_what_a_client_sent_never_runs(visit, receiver):
    hostile = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
    post(receiver, session("t-x", name=hostile, title=hostile, user=hostile, tags=[hostile]))
    v = visit(receiver)
    v.open("/")
    v.open("/traces/t-x")
    v.page.click("a.obs-link >> nth=1")
    v.page.locator("#detail .panel").wait_for()
    assert v.page.evaluate("window.__pwned") is None
    assert hostile in v.page.locator("h1").inner_text()  # shown, as text


def test_a_trace_of_a_thousand_observations(visit, receiver):
    post(receiver, session("t-big", observations=1000, name="a thousand observations", failed=500))
    v = visit(receiver)
    v.open("/traces/t-big")
    assert v.page.locator("tr.obs").count() == 1000
    v.page.click("a.obs-link:text-is('Run tests #999')")
    panel = v.page.locator("#detail .panel")
    panel.locator("h3:text-is('Run tests #999')").wait_for()
    assert '"observation": 999' in panel.locator("section:has(summary:text-is('Input')) pre").inner_text()


def test_beyond_loopback_the_browser_signs_in_with_the_keys(visit):
    with Receiver(host="0.0.0.0") as receiver:
        here = _Address(f"http://127.0.0.1:{receiver.port}")  # the same server, over loopback
        stranger = visit(here)
        assert stranger.context.request.get(here.url + "/").status == 401  # (a page.goto fails with no dialog)
        signed = visit(here, http_credentials={"username": DEFAULT_PUBLIC_KEY, "password": DEFAULT_SECRET_KEY})
        assert signed.open("/").status == 200
        assert signed.page.locator("h1").inner_text() == "Traces"


class _Address:
    """What `Visit` needs of a receiver: where it is."""

    def __init__(self, url: str) -> None:
        self.url = url
