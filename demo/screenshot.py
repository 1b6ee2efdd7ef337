"""Drive the demo in headless Chromium: type a text, click, wait for both panels, save a screenshot.

    python -m demo.screenshot --teacher RUN_OR_EXPORT --student EXPORT [--text "..."] [--out docs/demo.png]

Starts the demo in-process on a free loopback port, so it needs no server of its own. Used for
``docs/demo.png``; the browser test (``tests/test_demo_browser.py``) drives the page the same way.
Needs Playwright for Python (``pip install playwright``) and a system Chromium (Debian:
``apt-get install chromium``); never ``playwright install`` (it downloads browsers).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from benchmarks.common import free_port
from export.format import PRECISIONS

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DEFAULT_TEXT = "Angela Merkel met Emmanuel Macron in Paris on Tuesday to discuss the future of the European Union."


STATUS_WORDS = ("Agreement:", "Disagreement:", "Cannot tag this text", "Something went wrong")
WAIT_STATUS = ("() => { const t = document.querySelector('#status')?.innerText || ''; return "
               + " || ".join(f"t.includes({w!r})" for w in STATUS_WORDS) + "; }")


def find_chromium() -> str | None:
    """A system Chromium / Chrome binary, or ``None``."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def run_in_page(page, url: str, text: str, timeout_ms: float = 30_000) -> None:
    """Open the demo, type ``text``, click the button and wait until the request is answered."""
    page.goto(url, wait_until="load")
    page.locator("#input-text textarea").wait_for(timeout=timeout_ms)
    # let every component finish loading: typing into the box while the examples are still being
    # mounted trips a (harmless) error in Gradio's front end
    page.wait_for_load_state("networkidle", timeout=timeout_ms)
    page.locator("#input-text textarea").fill(text)
    page.locator("#run-button").click()
    # the status line is filled by every answer: results, refusal or error message
    page.wait_for_function(WAIT_STATUS, timeout=timeout_ms)


def highlighted(page, panel: str) -> list[tuple[str, str]]:
    """``(text, label)`` of every highlighted span shown in panel ``teacher`` or ``student``."""
    tokens = page.locator(f"#{panel}-spans .token.highlighted")
    out = []
    for i in range(tokens.count()):
        tok = tokens.nth(i)
        out.append((tok.locator(".text").inner_text().strip(), tok.locator(".label").inner_text().strip()))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m demo.screenshot", description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="runs/teacher")
    ap.add_argument("--student", default="runs/student/onnx")
    ap.add_argument("--precision", choices=list(PRECISIONS), default="fp32")
    ap.add_argument("--text", default=DEFAULT_TEXT)
    ap.add_argument("--out", default="docs/demo.png")
    ap.add_argument("--width", type=int, default=1280)
    args = ap.parse_args(argv)

    from demo.models import ModelError, load_model

    chromium = find_chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("error: needs Playwright for Python: pip install playwright", file=sys.stderr)
        return 2
    if chromium is None:
        print("error: no Chromium found (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    try:
        teacher = load_model(args.teacher, "teacher")
        student = load_model(args.student, "student", precision=args.precision)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from demo.app import build_app, launch

    for model in (teacher, student):
        model.predict("Warm-up in Paris .")
    app = build_app(teacher, student)
    port = free_port()
    launch(app, port=port, block=False, quiet=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": args.width, "height": 900})
            run_in_page(page, f"http://127.0.0.1:{port}/", args.text)
            page.wait_for_timeout(500)  # let the highlight transitions settle
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out, full_page=True)
            print(f"teacher: {highlighted(page, 'teacher')}\nstudent: {highlighted(page, 'student')}")
            browser.close()
    finally:
        app.close(verbose=False)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
