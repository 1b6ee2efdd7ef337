"""The demo in a real browser: headless Chromium (system package) driven by Playwright for Python.

The demo runs in-process (``build_app`` + ``launch`` on a free loopback port). Its models are the
"forced" tiny BERT-CRFs of conftest.py, so the entities are known in advance: the teacher (PyTorch,
rules B) tags Angela Merkel PER, Berlin LOC, Paris ORG; the student (ONNX through the serving
engine, rules A) tags Angela Merkel PER, Paris LOC, Google ORG. The page must show exactly those
spans in the two panels and the three disagreements in the table.

Skips (with the reason) without Playwright (``pip install playwright``) or without a Chromium
(Debian: ``apt-get install chromium``; never ``playwright install``)."""
import pytest

from demo.screenshot import CHROMIUM_ARGS, find_chromium, free_port, highlighted, run_in_page
from export import onnx as exp

from conftest import EXPECT_A, EXPECT_B, RULES_A, RULES_B, TEXT, forced_model, save_run
from conftest import minilm_tokenizer as _tokenizer

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the install
    sync_playwright = None

CHROMIUM = find_chromium()
pytestmark = [
    pytest.mark.filterwarnings("ignore:'HTTP_422_UNPROCESSABLE_ENTITY' is deprecated"),  # inside gradio
    pytest.mark.skipif(sync_playwright is None, reason="Playwright for Python is not installed (pip install playwright)"),
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found (Debian: apt-get install chromium)"),
]


def table_rows(page) -> list[list[str]]:
    """Cells of the disagreement table (Gradio's virtualised dataframe: div cells with data-row/col)."""
    cells = page.eval_on_selector_all(
        "#disagreements .body-cell[data-row][data-col]",
        "els => els.map(e => [+e.dataset.row, +e.dataset.col, e.innerText.trim()])")
    rows: dict[int, dict[int, str]] = {}
    for r, c, text in cells:
        rows.setdefault(r, {})[c] = text
    return [[row[c] for c in sorted(row)] for _, row in sorted(rows.items())]


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory):
    from demo.app import build_app, launch
    from demo.models import OnnxTagger, TorchTagger

    tok = _tokenizer()
    base = tmp_path_factory.mktemp("demo_browser")
    teacher = TorchTagger(save_run(forced_model(RULES_B, tok), tok, base / "teacher"))
    student = OnnxTagger(exp.export(save_run(forced_model(RULES_A, tok), tok, base / "student", kind="student"),
                                    quiet=True), role="student")
    app = build_app(teacher, student, example_texts=[TEXT, "Paris"])
    port = free_port()
    launch(app, host="127.0.0.1", port=port, block=False, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app.close(verbose=False)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except Exception as e:  # noqa: BLE001 - a broken browser install is an environment problem
            pytest.skip(f"Chromium at {CHROMIUM} does not start: {str(e).splitlines()[0]}")
        yield b
        b.close()


def test_page_shows_both_models_and_their_disagreements(browser, demo_url, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    run_in_page(page, demo_url, TEXT)
    page.locator("#teacher-spans .token.highlighted").first.wait_for(timeout=30_000)
    page.locator("#student-spans .token.highlighted").first.wait_for(timeout=30_000)

    assert highlighted(page, "teacher") == [(text, label) for text, label, _, _ in EXPECT_B]
    assert highlighted(page, "student") == [(text, label) for text, label, _, _ in EXPECT_A]
    # the whole text is shown in each panel, entities in place
    for panel in ("teacher", "student"):
        shown = page.locator(f"#{panel}-spans .token .text").all_inner_texts()
        assert " ".join(x.strip() for x in shown).split() == TEXT.split()
    assert "differ on 3 spans" in page.locator("#status").inner_text()
    assert table_rows(page) == [["Berlin", "24-30", "LOC", "O"], ["Paris", "34-39", "ORG", "LOC"],
                                ["Google", "48-54", "O", "ORG"]]
    for panel, kind in (("teacher", "PyTorch"), ("student", "ONNX fp32")):
        stats = page.locator(f"#{panel}-stats").inner_text()
        assert kind in stats and "ms for this request" in stats and "parameters" in stats and "on disk" in stats
    shot = tmp_path / "demo.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    # nothing was fetched from outside the demo server (no CDN, fonts or telemetry)
    assert all(u.startswith(demo_url) or u.startswith(("data:", "blob:")) for u in requests), \
        [u for u in requests if not u.startswith(demo_url)]
    assert not errors, errors

    # empty input: a message in the page, no error toast, panels cleared
    page.locator("#input-text textarea").fill("   ")
    page.locator("#run-button").click()
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('Cannot tag')", timeout=30_000)
    assert "empty" in page.locator("#status").inner_text()
    assert page.locator("#teacher-spans .token.highlighted").count() == 0
    assert page.locator("#student-spans .token.highlighted").count() == 0 and table_rows(page) == []
    assert page.locator(".toast-body.error").count() == 0 and not errors
    page.close()
