"""The Gradio demo without a browser: model wrappers (PyTorch teacher vs the ONNX engine), the click
handler's outputs, disagreements, bad input, startup errors. The browser test is test_demo_browser.py.

Models are tiny random BERT-CRFs (hidden 32, 2 layers) with the real MiniLM tokenizer. "Forced"
models (:func:`conftest.forced_model`) tag chosen words with chosen labels whatever the context, so the
expected entities are known: every layer is an identity (attention and feed-forward outputs are
zeroed, so each block is LayerNorm(x) = x), all embeddings are zero except the first sub-token of
each chosen word, which points at its label's dimension, and the CRF is all zeros."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from export import onnx as exp
from serving.engine import Entity, split_words
from training.model import BertCrf

from conftest import (EXPECT_A, EXPECT_B, RULES_A, RULES_B, TEXT, demo_config, forced_model, minilm_tokenizer,
                      save_run)

ROOT = Path(__file__).resolve().parents[1]
LONG = ("The European Commission said on Thursday it disagreed with German advice to consumers to shun British "
        "lamb until scientists determine whether mad cow disease can be transmitted to sheep . ") * 5


def random_model(seed=0) -> BertCrf:
    from transformers import BertForTokenClassification

    torch.manual_seed(seed)
    model = BertCrf(BertForTokenClassification(demo_config()))
    with torch.no_grad():
        model.encoder.classifier.weight.normal_(0, 0.3)
        for p in model.crf.parameters():
            p.normal_(0, 1)
    return model.eval()


def key(entities):
    return [(e.text, e.label, e.start, e.end) for e in entities]


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tok():
    return minilm_tokenizer()


@pytest.fixture(scope="module")
def random_pair(tmp_path_factory, tok):
    """The same random BERT-CRF as a PyTorch teacher and as an ONNX student (through the engine)."""
    from demo.models import OnnxTagger, TorchTagger

    run = save_run(random_model(), tok, tmp_path_factory.mktemp("demo_random") / "run")
    export = exp.export(run, quiet=True)
    return TorchTagger(run), OnnxTagger(export)


@pytest.fixture(scope="module")
def forced(tmp_path_factory, tok):
    """Forced models: A as PyTorch teacher and as ONNX student, B as PyTorch teacher."""
    from demo.models import OnnxTagger, TorchTagger

    base = tmp_path_factory.mktemp("demo_forced")
    run_a = save_run(forced_model(RULES_A, tok), tok, base / "a")
    run_b = save_run(forced_model(RULES_B, tok), tok, base / "b")
    export_a = exp.export(run_a, quiet=True)
    return {"teacher_a": TorchTagger(run_a), "student_a": OnnxTagger(export_a, role="student"),
            "teacher_b": TorchTagger(run_b), "run_a": run_a, "export_a": export_a}


# --------------------------------------------------------------------------- the models
def test_torch_teacher_matches_engine_incl_long_input(random_pair):
    """Same weights: the PyTorch path (split_words, windows, CRF decode) gives the engine's entities."""
    teacher, student = random_pair
    texts = ["Angela Merkel visited Washington on Tuesday.", "Paris", "@jenny_x omg best pizza in Brooklyn!!! #foodie",
             "Zürich\u200b and Reykjavík 😀 x\ty", LONG]
    seen_windows = 0
    for text in texts:
        t, s = teacher.predict(text), student.predict(text)
        assert key(t.entities) == key(s.entities), text
        assert [(e.word_start, e.word_end) for e in t.entities] == [(e.word_start, e.word_end) for e in s.entities]
        for a, b in zip(t.entities, s.entities):
            assert a.text == text[a.start:a.end] and abs(a.score - b.score) < 1e-3
        assert t.windows == s.windows and t.words == len(split_words(text)[0])
        assert t.seconds > 0 and s.seconds > 0
        seen_windows = max(seen_windows, t.windows)
    assert seen_windows > 1  # LONG is longer than max_length: it went through windows
    assert sum(len(teacher.predict(x).entities) for x in texts) > 0  # random CRF: entities exist


def test_teacher_windows_fit_max_length(random_pair, tok):
    teacher, _ = random_pair
    words = split_words(LONG * 3)[0]
    windows = teacher.windows(words)
    assert len(windows) > 2 and windows[0][0] == 0 and windows[-1][1] == len(words)
    for (lo, hi), (lo2, _) in zip(windows, windows[1:]):
        assert lo < lo2 < hi  # consecutive windows overlap
    for lo, hi in windows:
        assert len(tok(words[lo:hi], is_split_into_words=True)["input_ids"]) <= teacher.max_length


def test_model_info(forced):
    t, s = forced["teacher_a"], forced["student_a"]
    assert t.kind == "PyTorch" and s.kind == "ONNX fp32"
    assert t.num_parameters == s.num_parameters == sum(p.numel() for p in t.model.parameters())
    assert t.size_bytes == (forced["run_a"] / "best" / "model.safetensors").stat().st_size + \
        (forced["run_a"] / "best" / "crf.safetensors").stat().st_size
    assert s.size_bytes > (forced["export_a"] / "model.onnx").stat().st_size
    assert t.entity_types == s.entity_types == ["LOC", "ORG", "PER"]


def test_forced_models_tag_the_chosen_words(forced):
    assert key(forced["teacher_a"].predict(TEXT).entities) == EXPECT_A
    assert key(forced["student_a"].predict(TEXT).entities) == EXPECT_A
    assert key(forced["teacher_b"].predict(TEXT).entities) == EXPECT_B
    # context-free: same tags in another sentence, case-insensitive (uncased tokenizer)
    assert key(forced["student_a"].predict("paris , not berlin").entities) == [("paris", "LOC", 0, 5)]


# --------------------------------------------------------------------------- the handler
def test_handler_outputs_match_entities(forced):
    from demo.app import handle

    teacher, student = forced["teacher_a"], forced["student_a"]
    t_hl, s_hl, t_stats, s_stats, rows, status = handle(teacher, student, TEXT)
    for hl, model in ((t_hl, teacher), (s_hl, student)):
        assert hl["text"] == TEXT
        ents = model.predict(TEXT).entities
        assert [(e["start"], e["end"], e["entity"]) for e in hl["entities"]] == [(e.start, e.end, e.label) for e in ents]
        assert [TEXT[e["start"]:e["end"]] for e in hl["entities"]] == ["Angela Merkel", "Paris", "Google"]
    assert rows == []
    assert "agree on all 3 entities" in status
    assert "**Teacher** · PyTorch" in t_stats and "**Student** · ONNX fp32" in s_stats
    for line in (t_stats, s_stats):
        assert " ms** for this request" in line and "parameters" in line and "on disk" in line


def test_handler_disagreements(forced):
    from demo.app import handle

    t_hl, s_hl, _, _, rows, status = handle(forced["teacher_b"], forced["student_a"], TEXT)
    assert [TEXT[e["start"]:e["end"]] for e in t_hl["entities"]] == ["Angela Merkel", "Berlin", "Paris"]
    assert [TEXT[e["start"]:e["end"]] for e in s_hl["entities"]] == ["Angela Merkel", "Paris", "Google"]
    assert rows == [["Berlin", "24-30", "LOC", "O"],
                    ["Paris", "34-39", "ORG", "LOC"],
                    ["Google", "48-54", "O", "ORG"]]
    assert "differ on 3 spans" in status and "1 identical" in status


def test_disagreements_partial_overlap():
    from demo.app import disagreements

    text = "I love New York City"
    t = [Entity("New York", "LOC", 7, 15, 0.9, 2, 4)]
    s = [Entity("York City", "LOC", 11, 20, 0.9, 3, 5), Entity("I", "PER", 0, 1, 0.5, 0, 1)]
    assert disagreements(text, t, s) == [
        ["I", "0-1", "O", "PER"],
        ["New York", "7-15", "LOC", "O (LOC on 'York City')"],
        ["York City", "11-20", "O (LOC on 'New York')", "LOC"],
    ]
    assert disagreements(text, t, t) == [] and disagreements(text, [], []) == []
    # same span, different label
    assert disagreements(text, t, [Entity("New York", "ORG", 7, 15, 0.9, 2, 4)]) == [["New York", "7-15", "LOC", "ORG"]]


@pytest.mark.parametrize("text, message", [
    ("", "empty"), ("   \n\t ", "empty"), (None, "Type or paste"), ("a" * 10_001, "the limit is 10,000"),
    ("Paris\x00London", "control character (U+0000"), ("\x1b[31mParis", "U+001B"), ("Paris\x85", "U+0085"),
])
def test_bad_input_gives_a_message(forced, text, message):
    from demo.app import handle

    t_hl, s_hl, t_stats, s_stats, rows, status = handle(forced["teacher_a"], forced["student_a"], text)
    assert t_hl is None and s_hl is None and rows == []
    assert status.startswith("**Cannot tag this text.**") and message in status
    assert "latency: —" in t_stats and "Traceback" not in status


def test_odd_but_valid_input(forced):
    from demo.app import handle

    for text in ("Paris\n\tParis", "😀 Paris 😀", "\u200bParis\u200b", "Paris " * 1500):
        t_hl, s_hl, _, _, rows, status = handle(forced["teacher_a"], forced["student_a"], text)
        assert t_hl["text"] == text and t_hl["entities"] and rows == [], (text[:20], status)
        assert all(text[e["start"]:e["end"]].lower() == "paris" for e in t_hl["entities"])


def test_exception_in_a_model_is_shown_not_raised(forced):
    from demo.app import handle

    class Broken:
        role, kind, num_parameters, size_bytes, max_length = "student", "ONNX fp32", 1, 1, 128

        def predict(self, text):
            raise ValueError("simulated engine failure\nsecond line")

    t_hl, s_hl, _, s_stats, rows, status = handle(forced["teacher_a"], Broken(), TEXT)
    assert t_hl is None and s_hl is None and rows == []
    assert "ValueError: simulated engine failure second line" in status and "\n" not in status


def test_build_app(forced):
    import gradio as gr

    from demo.app import build_app

    app = build_app(forced["teacher_a"], forced["student_a"], example_texts=["Paris"])
    assert isinstance(app, gr.Blocks)
    ids = {getattr(b, "elem_id", None) for b in app.blocks.values()}
    assert {"input-text", "run-button", "teacher-spans", "student-spans", "disagreements", "status"} <= ids
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"


def test_examples_from_the_test_split(tok):
    from demo.app import LONG_EXAMPLE, dataset_examples, examples
    from training.corpora import load_dataset

    test = {" ".join(s.words) for s in load_dataset("default").test}
    real = dataset_examples()
    assert len(real) >= 3 and all(x in test for x in real)
    assert real[0] in examples() and LONG_EXAMPLE in examples()
    assert len(tok(split_words(LONG_EXAMPLE)[0], is_split_into_words=True)["input_ids"]) > 128  # gets windowed


# --------------------------------------------------------------------------- startup errors
def _demo_cli(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    return subprocess.run([sys.executable, "-m", "demo", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_missing_models(tmp_path):
    r = _demo_cli("--teacher", tmp_path / "nope", "--student", tmp_path / "runs" / "student" / "onnx")
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines)
    assert str(tmp_path / "nope") in lines[0] and "make run" in lines[0]
    assert str(tmp_path / "runs" / "student" / "onnx") in lines[1]
    assert f"python -m export.onnx {tmp_path / 'runs' / 'student'}" in lines[1] and "make run" in lines[1]


def test_model_path_errors(forced, tmp_path):
    from demo.models import ModelError, check_model_path

    assert check_model_path(forced["run_a"], "teacher") == "pytorch"
    assert check_model_path(forced["run_a"] / "best", "teacher") == "pytorch"
    assert check_model_path(forced["export_a"], "teacher") == "onnx"
    assert check_model_path(forced["export_a"], "student") == "onnx"
    with pytest.raises(ModelError, match=r"PyTorch checkpoint, not an ONNX export.*python -m export.onnx"):
        check_model_path(forced["run_a"], "student")
    shutil.copytree(forced["export_a"], tmp_path / "run" / "onnx")
    with pytest.raises(ModelError, match=r"did you mean --student .*onnx"):
        check_model_path(tmp_path / "run", "student")  # a dir whose onnx/ is the export
    with pytest.raises(ModelError, match=r"neither a checkpoint .* nor an ONNX export"):
        check_model_path(tmp_path, "teacher")


def test_load_model_kinds(forced):
    from demo.models import ModelError, OnnxTagger, TorchTagger, load_model

    onnx_teacher = load_model(forced["export_a"], "teacher")
    assert isinstance(onnx_teacher, OnnxTagger) and onnx_teacher.role == "teacher"
    assert key(onnx_teacher.predict(TEXT).entities) == EXPECT_A
    assert isinstance(load_model(forced["run_a"] / "best", "teacher"), TorchTagger)
    with pytest.raises(ModelError, match=r"student export .*no int8 model.*--quantize int8"):
        load_model(forced["export_a"], "student", precision="int8")
