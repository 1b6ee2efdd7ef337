"""The Gradio page: teacher and student side by side on the same text.

``build_app(teacher, student) -> gr.Blocks`` takes two loaded models (:mod:`demo.models`): a text
box with examples, a button, one ``gr.HighlightedText`` per model, per-model latency for the
request, parameter count and size on disk, and a table of the spans where the two disagree.

The work is done by :func:`analyze` (pure Python, no Gradio: unit-tested); :func:`handle` turns
its result -- or any problem, bad input or exception -- into the page's outputs, so the page
shows a message and never a stack trace. :func:`launch` starts the server the same way for
``python -m demo`` and the browser test (no share link, no analytics, system fonts only: nothing
is fetched from the internet).
"""

from __future__ import annotations

import logging
import os
import unicodedata
from dataclasses import dataclass, field

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import gradio as gr  # noqa: E402

from demo.models import Prediction, human_bytes, human_count  # noqa: E402

__all__ = ["build_app", "launch", "analyze", "handle", "validate_text", "disagreements", "highlight",
           "Analysis", "MAX_CHARS", "EXAMPLES", "examples"]

log = logging.getLogger("demo")

MAX_CHARS = 10_000        # the HTTP server's default limit per text
HEADERS = ["span", "characters", "teacher", "student"]
ALLOWED_CONTROL = {"\t", "\n", "\r"}
PALETTE = ["#fca5a5", "#93c5fd", "#86efac", "#fcd34d", "#c4b5fd", "#f9a8d4", "#5eead4", "#fdba74",
           "#a5b4fc", "#bef264", "#d8b4fe", "#67e8f9"]

LONG_EXAMPLE = (
    "The European Commission said on Thursday it disagreed with German advice to consumers to shun British "
    "lamb until scientists determine whether mad cow disease can be transmitted to sheep. Germany's "
    "representative to the European Union's veterinary committee, Werner Zwingmann, said on Wednesday "
    "consumers should buy sheepmeat from countries other than Britain until the scientific advice was "
    "clearer. \"We do not support any such recommendation because we do not see any grounds for it,\" the "
    "Commission's chief spokesman Nikolaus van der Pas told a news briefing in Brussels. He said further "
    "scientific study was required and if it was found that action was needed it should be taken by the "
    "European Union. Fischler proposed EU-wide measures after reports from Britain and France that under "
    "laboratory conditions sheep could contract Bovine Spongiform Encephalopathy. Peter Blackburn, a "
    "spokesman for the National Farmers Union in London, said British farmers were angry, while officials "
    "in Paris, Rome and Madrid asked the Commission in Brussels for more detail before the Agriculture "
    "Council meets in Luxembourg next month."
)
TYPED_EXAMPLES = [
    "Angela Merkel met Emmanuel Macron in Paris on Tuesday to discuss the future of the European Union.",
    "Apple is looking at buying a U.K. startup for $1 billion, Tim Cook told reporters in Cupertino.",
    "just landed in new york with @sarah_j , heading to madison square garden for the knicks game tonight !!",
    LONG_EXAMPLE,
]


def dataset_examples(n: int = 4, min_words: int = 8, max_words: int = 30) -> list[str]:
    """``n`` sentences with entities from the test split of the default dataset (WNUT-16 tweets);
    empty when the dataset cannot be loaded (the typed examples remain)."""
    try:
        from training.corpora import load_dataset

        test = load_dataset("default").test
    except Exception as e:  # noqa: BLE001 - examples are optional
        log.warning("no dataset examples (%s)", e)
        return []
    out = []
    for s in test:
        if min_words <= len(s.words) <= max_words and any(t != "O" for t in s.tags):
            out.append(" ".join(s.words))
            if len(out) == n:
                break
    return out


def examples() -> list[str]:
    return dataset_examples() + TYPED_EXAMPLES


EXAMPLES = TYPED_EXAMPLES  # without the dataset (fast import); build_app uses examples()


# --------------------------------------------------------------------------- pure logic
def validate_text(text, max_chars: int = MAX_CHARS) -> str | None:
    """A message for input the demo refuses (``None`` when the text is fine)."""
    if text is None or not isinstance(text, str):
        return "Type or paste some text first."
    if not text.strip():
        return "The text is empty: type or paste a sentence, or pick an example."
    if len(text) > max_chars:
        return (f"The text has {len(text):,} characters; the limit is {max_chars:,}. "
                "Shorten it (long inputs are windowed, but this is a demo).")
    for i, ch in enumerate(text):
        if ch not in ALLOWED_CONTROL and unicodedata.category(ch) in ("Cc", "Cs"):
            return (f"The text contains a control character (U+{ord(ch):04X} at position {i}); "
                    "remove it and try again.")
    return None


def highlight(text: str, entities) -> dict:
    """The ``gr.HighlightedText`` value for entities with character offsets."""
    return {"text": text,
            "entities": [{"entity": e.label, "start": e.start, "end": e.end}
                         for e in sorted(entities, key=lambda e: (e.start, e.end))]}


def _label_for(span, entities) -> str:
    start, end = span
    for e in entities:
        if (e.start, e.end) == span:
            return e.label
    partial = [e for e in entities if e.start < end and start < e.end]
    if partial:
        return "O (" + ", ".join(f"{e.label} on '{e.text}'" for e in partial) + ")"
    return "O"


def disagreements(text: str, teacher_entities, student_entities) -> list[list[str]]:
    """Rows ``[span text, "start-end", teacher label, student label]`` for every span that one model
    tags and the other does not tag with the same label (exact character span). A model with no
    entity there reads ``O``; one with an overlapping but different span reads
    ``O (LABEL on 'its text')``."""
    t = {(e.start, e.end): e.label for e in teacher_entities}
    s = {(e.start, e.end): e.label for e in student_entities}
    rows = []
    for span in sorted(set(t) | set(s)):
        if t.get(span) == s.get(span):
            continue
        rows.append([text[span[0]:span[1]], f"{span[0]}-{span[1]}", _label_for(span, teacher_entities),
                     _label_for(span, student_entities)])
    return rows


@dataclass
class Analysis:
    text: str
    teacher: Prediction
    student: Prediction
    rows: list[list[str]] = field(default_factory=list)

    @property
    def agree(self) -> int:
        t = {(e.start, e.end, e.label) for e in self.teacher.entities}
        return len(t & {(e.start, e.end, e.label) for e in self.student.entities})


def analyze(teacher, student, text: str) -> Analysis:
    """Run both models on ``text`` (already validated) and compare them."""
    tp = teacher.predict(text)
    sp = student.predict(text)
    return Analysis(text, tp, sp, disagreements(text, tp.entities, sp.entities))


def stats(model, pred: Prediction | None = None) -> str:
    """The line under a panel: kind, parameters, size, and this request's latency."""
    line = (f"**{model.role.capitalize()}** · {model.kind} · {human_count(model.num_parameters)} parameters · "
            f"{human_bytes(model.size_bytes)} on disk")
    if pred is None:
        return line + " · latency: —"
    line += f" · **{pred.seconds * 1000:.1f} ms** for this request"
    if pred.windows > 1:
        line += f" ({pred.windows} windows of ≤ {model.max_length} sub-tokens)"
    return line + f" · {_n(len(pred.entities), 'entity', 'entities')}"


def _n(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def summary(a: Analysis) -> str:
    nt, ns = len(a.teacher.entities), len(a.student.entities)
    if not a.rows:
        if nt == 0:
            return "**Agreement:** neither model found an entity."
        return f"**Agreement:** teacher and student agree on all {_n(nt, 'entity', 'entities')}."
    return (f"**Disagreement:** they differ on {_n(len(a.rows), 'span', 'spans')} (teacher "
            f"{_n(nt, 'entity', 'entities')}, student {_n(ns, 'entity', 'entities')}, {a.agree} identical).")


def handle(teacher, student, text, max_chars: int = MAX_CHARS):
    """Page outputs for one click: ``(teacher_highlight, student_highlight, teacher_stats,
    student_stats, disagreement_rows, status)``. Never raises."""
    message = validate_text(text, max_chars)
    if message is None:
        try:
            a = analyze(teacher, student, text)
        except Exception as e:  # noqa: BLE001 - shown in the page, logged with the traceback
            log.exception("prediction failed")
            message = f"Something went wrong while tagging this text: {type(e).__name__}: {e}".replace("\n", " ")
        else:
            return (highlight(text, a.teacher.entities), highlight(text, a.student.entities),
                    stats(teacher, a.teacher), stats(student, a.student), a.rows, summary(a))
    return None, None, stats(teacher), stats(student), [], f"**Cannot tag this text.** {message}"


# --------------------------------------------------------------------------- the page
def example_label(text: str, width: int = 72) -> str:
    """One line for the examples gallery: the start of the text (and its length when long)."""
    line = " ".join(text.split())
    if len(line) <= width:
        return line
    return line[: width - 1].rstrip() + "…" + (f" ({len(text):,} characters)" if len(text) > 300 else "")


def _color_map(*models) -> dict[str, str]:
    types = sorted({t for m in models for t in m.entity_types})
    return {t: PALETTE[i % len(PALETTE)] for i, t in enumerate(types)}


def build_app(teacher, student, max_chars: int = MAX_CHARS, example_texts: list[str] | None = None) -> gr.Blocks:
    """The demo page for two loaded models (see :mod:`demo.models`)."""
    colors = _color_map(teacher, student)
    with gr.Blocks(title="NER: teacher vs distilled student", analytics_enabled=False) as app:
        gr.Markdown(
            "# Teacher vs distilled student\n"
            f"The **teacher** (`{teacher.path}`, {teacher.kind}) and the **student** (`{student.path}`, "
            f"{student.kind}, through the same ONNX Runtime engine as the HTTP server) tag the same text. "
            f"Entity types: {', '.join(sorted(colors)) or 'none'}."
        )
        text = gr.Textbox(label="Text", lines=3, max_lines=12, elem_id="input-text",
                          placeholder="Type a sentence, e.g. Angela Merkel visited Paris on Tuesday.")
        button = gr.Button("Find entities", variant="primary", elem_id="run-button")
        texts = examples() if example_texts is None else list(example_texts)
        # explicit labels: also avoids a race in Gradio's example gallery (a front-end error on load)
        gr.Examples(examples=[[x] for x in texts], inputs=[text], example_labels=[example_label(x) for x in texts],
                    label=("Examples: WNUT-16 test tweets, then typed ones (the last is long)"
                           if example_texts is None else "Examples"))
        status = gr.Markdown("", elem_id="status")
        with gr.Row(equal_height=True):
            with gr.Column():
                t_spans = gr.HighlightedText(label="Teacher", color_map=colors, show_legend=False,
                                             combine_adjacent=False, elem_id="teacher-spans")
                t_stats = gr.Markdown(stats(teacher), elem_id="teacher-stats")
            with gr.Column():
                s_spans = gr.HighlightedText(label="Student", color_map=colors, show_legend=False,
                                             combine_adjacent=False, elem_id="student-spans")
                s_stats = gr.Markdown(stats(student), elem_id="student-stats")
        gr.Markdown("### Where they disagree")
        table = gr.Dataframe(headers=HEADERS, value=[], interactive=False, wrap=True, elem_id="disagreements",
                             column_count=len(HEADERS))

        def on_click(value):
            return handle(teacher, student, value, max_chars)

        outputs = [t_spans, s_spans, t_stats, s_stats, table, status]
        button.click(on_click, inputs=[text], outputs=outputs, api_name="analyze")
        text.submit(on_click, inputs=[text], outputs=outputs, api_visibility="private")
    return app


THEME_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]


def launch(app: gr.Blocks, host: str = "127.0.0.1", port: int | None = 7860, block: bool = True, quiet: bool = False):
    """Start the server: no share link, no telemetry, no web fonts (works offline)."""
    theme = gr.themes.Default(font=THEME_FONTS, font_mono=["ui-monospace", "monospace"])
    return app.launch(share=False, server_name=host, server_port=port, prevent_thread_lock=not block,
                      quiet=quiet, show_error=False, theme=theme, inbrowser=False)
