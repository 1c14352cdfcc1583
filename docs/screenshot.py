"""Make docs/receiver-trace.png: the receiver's page of a trace's timeline, from the bundled
example sessions, in headless Chromium (Playwright for Python, a test-only dependency).

    python docs/screenshot.py [--out docs/receiver-trace.png] [--chromium /usr/bin/chromium]

The sessions go through a real stream, over OTel, into an embedded receiver posing as Langfuse
4; the page is opened as a person would open it, and its first message selected.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from dirigent_langfuse import LangfuseConfig, LangfuseStream  # noqa: E402
from dirigent_langfuse.bus import event_from_json  # noqa: E402
from dirigent_langfuse.cli import _example_lines  # noqa: E402
from dirigent_langfuse.receiver.server import DEFAULT_PUBLIC_KEY, DEFAULT_SECRET_KEY, Receiver  # noqa: E402

# Chromium as this machine runs it (no sandbox as root, no calls home).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "receiver-trace.png"))
    parser.add_argument("--chromium", default=os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, Receiver(db=os.path.join(tmp, "shot.db"), version="4.0.0") as receiver:
        stream = LangfuseStream(LangfuseConfig(host=receiver.url, public_key=DEFAULT_PUBLIC_KEY, secret_key=DEFAULT_SECRET_KEY,
                                               atexit_flush=False), name="screenshot")
        for line in _example_lines():
            stream.on_event(event_from_json(json.loads(line)))
        if not stream.shutdown(10).ok:
            print("screenshot: the example sessions were not all delivered", file=sys.stderr)
            return 1
        trace = max(receiver.store.traces(), key=lambda t: len(receiver.store.observations(t["id"])))
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 900}, device_scale_factor=1)
            page.goto(f"{receiver.url}/traces/{trace['id']}")
            page.click("tr.obs:has(.t-generation) a.obs-link")
            page.wait_for_selector("#detail .panel")
            page.screenshot(path=args.out, full_page=False)
            browser.close()
    print(f"screenshot: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
