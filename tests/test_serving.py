"""Serving (issue #6): the ONNX Runtime engine, the HTTP server, the bad-input corpus, the
torch-free import path and a fresh ``.[serve]`` install. One tiny random BERT-CRF is exported
once for the module (:func:`conftest.tiny_bert_crf`)."""
import asyncio
import hashlib
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.common import free_port
from export import format as fmt
from export import viterbi as nv
from serving import badinput
from serving.engine import (EngineError, NerEngine, plan_windows, span_probability, split_words,
                            tags_to_spans)
from serving.server import Settings, create_app

from conftest import REAL_SENTENCES as REAL
from conftest import Uvicorn, minilm_tokenizer, random_sentences, tiny_bert_crf

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
TEXTS = [
    "Angela Merkel visited Washington on Tuesday.",
    "EU rejects German call to boycott British lamb .",
    "  Zürich,  Reykjavík   and  São Paulo  —  (ÁNNA) said: \"hello\"!  ",
    "@jenny_x omg best pizza in Brooklyn!!! #foodie http://t.co/abc 😀",
    "Paris",
    "",
]


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tok():
    return minilm_tokenizer()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tok):
    from training import checkpoint as ckpt

    run = tmp_path_factory.mktemp("serve_runs") / "student"
    tiny_bert_crf(seed=1).save(run / ckpt.BEST, tok, {"kind": "student", "method": "msd", "args": {"max_length": 128}})
    return run


@pytest.fixture(scope="module")
def export_dir(run_dir):
    from export import onnx as exp

    return exp.export(run_dir, quantize="int8", quiet=True)


@pytest.fixture(scope="module")
def torch_model(run_dir):
    from training.model import load

    return load(run_dir)[0].eval()


@pytest.fixture(scope="module")
def engine(export_dir):
    return NerEngine.from_dir(export_dir, threads=2)


def torch_tags(model, tok, sentences, max_length=128):
    """Reference: the training pipeline (training.data.encode: unk for empty words) + BertCrf.decode."""
    from training.corpora import Sentence
    from training.data import collate, encode

    enc = encode([Sentence(list(s), ["O"] * len(s)) for s in sentences], tok, None, max_length=max_length)
    out = model.decode(collate(enc.items, enc.pad_token_id))
    return [[LABELS[t] for t in row] for row in out], enc


def long_words(n=400, seed=0):
    rng = np.random.default_rng(seed)
    vocab = ["Paris", "Berlin", "the", "committee", "said", "on", "Tuesday", "John", "Smith", "visited",
             "unbelievably", "pharmacokinetics", "Reykjavík", ",", "."]
    return [str(rng.choice(vocab)) for _ in range(n)]


# --------------------------------------------------------------------------- engine
def test_engine_tags_match_pytorch(engine, torch_model, tok):
    sentences = REAL[:-1] + random_sentences(tok, seed=5) + [split_words(t)[0] for t in TEXTS if t.strip()]
    fits = [s for s in sentences if len(tok(s, is_split_into_words=True)["input_ids"]) <= 128]
    assert len(fits) >= 15 and max(map(len, fits)) > 50
    ref, _ = torch_tags(torch_model, tok, fits)
    assert engine.tag_words(fits) == ref
    assert engine.tag_words(fits, batch_size=1) == ref  # no padding at all
    # raw text = split_words + the same decoding
    for t in TEXTS:
        words, _ = split_words(t)
        got = [e for e in engine.predict(t)[0]]
        tags = engine.tag_words([words])[0] if words else []
        assert [(e.word_start, e.word_end, e.label) for e in got] == tags_to_spans(tags)


def test_zero_subtoken_words_keep_alignment(engine, torch_model, tok):
    words = ["Paris", "\u200b", "", "\x00", "Berlin", "\ufeff", "John"]
    assert [len(tok(w, add_special_tokens=False)["input_ids"]) for w in words] == [1, 0, 0, 0, 1, 0, 1]
    got = engine.tag_words([words])[0]
    ref, enc = torch_tags(torch_model, tok, [words])
    assert enc.n_replaced_words == 4 and len(got) == len(words)
    assert got == ref[0]
    ents = engine.predict_words([words])[0]
    joined = " ".join(words)
    for e in ents:
        assert joined[e.start:e.end] == e.text == " ".join(words[e.word_start:e.word_end])
    # raw text: control / zero-width characters separate words and are not words themselves
    assert split_words("Paris\x00 \u200b Ber\u200blin\x07") == (["Paris", "Ber", "lin"], [(0, 5), (9, 12), (13, 16)])


def test_offsets_slice_original_text(engine):
    texts = TEXTS + ["Ünïcödé  names:\tJosé Álvarez met 李小龍 in Zu\u0308rich.\n\nNew line."]
    results = engine.predict(texts)
    assert len(results) == len(texts) and sum(map(len, results)) > 5
    for t, ents in zip(texts, results):
        words, offsets = split_words(t)
        for e in ents:
            assert t[e.start:e.end] == e.text and e.text == e.text.strip() and e.text
            assert (e.start, e.end) == (offsets[e.word_start][0], offsets[e.word_end - 1][1])
            assert 0.0 < e.score <= 1.0 and e.label in ("PER", "LOC")
            assert set(e.to_dict()) == {"text", "label", "start", "end", "score", "word_start", "word_end"}


def test_empty_inputs(engine):
    assert engine.predict("") == [[]]
    assert engine.predict(["", "   \n\t", "Paris"])[:2] == [[], []]
    assert engine.predict([]) == []
    assert engine.predict_words([[]]) == [[]]
    assert engine.tag_words([[], ["Paris"]])[0] == []


def test_split_words():
    text = "Merkel's U.S.-visit, 3.5% 😀 e\u0301te\u0301\x00x 李小龍"
    words, offsets = split_words(text)
    assert words == ["Merkel", "'", "s", "U", ".", "S", ".", "-", "visit", ",", "3", ".", "5", "%", "😀",
                     "e\u0301te\u0301", "x", "李小龍"]
    assert all(text[a:b] == w for w, (a, b) in zip(words, offsets))


def test_tags_to_spans():
    assert tags_to_spans(["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "I-PER"]) == [
        (0, 2, "PER"), (3, 5, "LOC"), (5, 6, "LOC"), (6, 7, "PER")]
    assert tags_to_spans(["O", "O"]) == [] and tags_to_spans([]) == []
    assert tags_to_spans(["NP", "NP", "O", "VP"]) == [(0, 2, "NP"), (3, 4, "VP")]


def _brute_span_prob(E, T, S, En, span, seq):
    n, L = E.shape
    P = np.array(list(itertools.product(range(L), repeat=n)))
    s = S[P[:, 0]] + E[np.arange(n), P].sum(1) + En[P[:, -1]] + T[P[:, :-1], P[:, 1:]].sum(1)
    p = np.exp(s - s.max())
    p /= p.sum()
    lo, hi = span
    hit = (P[:, lo:hi] == np.asarray(seq)[None]).all(1)
    return float(p[hit].sum())


def test_span_probability_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n, L = int(rng.integers(1, 6)), int(rng.integers(1, 4))
        E, T, S, En = (rng.standard_normal(s) * 2 for s in ((n, L), (L, L), (L,), (L,)))
        node, edge = nv.marginals(E[None], np.ones((1, n), bool), T, S, En)
        for _ in range(5):
            lo = int(rng.integers(0, n))
            hi = int(rng.integers(lo + 1, n + 1))
            seq = rng.integers(0, L, hi - lo)
            tags = np.zeros(n, dtype=int)
            tags[lo:hi] = seq
            got = span_probability(node[0], edge[0], tags.tolist(), lo, hi)
            assert got == pytest.approx(_brute_span_prob(E, T, S, En, (lo, hi), seq), abs=1e-9, rel=1e-6)


def test_entity_score_is_crf_span_probability(engine):
    """End to end: an entity's score = brute-force P(span tags) under the CRF on the ONNX emissions."""
    words = ["John", "Smith", "visited", "Paris", "and", "Berlin"]
    ents = engine.predict_words([words])[0]
    assert ents
    enc = engine.tokenizer.encode(words, is_pretokenized=True)
    first = [enc.word_ids.index(i) for i in range(len(words))]
    feed = {"input_ids": np.array([enc.ids]), "attention_mask": np.ones((1, len(enc.ids)), dtype=np.int64)}
    feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
    logits = engine.session.run(None, {k: feed[k] for k in engine.input_names})[0][0]
    E = logits[first].astype(np.float64)
    c = {k: engine.crf[k].astype(np.float64) for k in ("transitions", "start", "end")}
    tags = engine.tag_words([words])[0]
    for e in ents:
        seq = [LABELS.index(t) for t in tags[e.word_start:e.word_end]]
        ref = _brute_span_prob(E, c["transitions"], c["start"], c["end"], (e.word_start, e.word_end), seq)
        assert e.score == pytest.approx(ref, abs=2e-5)
        # at most the smallest token marginal: a real joint probability, not an average
        assert 0 < e.score <= 1


def test_plan_windows():
    assert plan_windows([], 10) == []
    assert plan_windows([1, 2, 3], 10) == [(0, 3)]
    rng = np.random.default_rng(1)
    for _ in range(50):
        counts = rng.integers(1, 6, int(rng.integers(1, 300))).tolist()
        counts[int(rng.integers(0, len(counts)))] = 40  # a word bigger than the budget
        budget = int(rng.integers(8, 60))
        ws = plan_windows(counts, budget, 0.25)
        assert ws[0][0] == 0 and ws[-1][1] == len(counts)
        for (a, b), (c, d) in zip(ws, ws[1:]):
            assert a < c <= b < d  # progress, no gap
        for a, b in ws:
            assert b - a == 1 or sum(counts[a:b]) <= budget


def test_long_input_is_windowed_not_truncated(engine, tok):
    words = long_words(400)
    n_sub = len(tok(words, is_split_into_words=True, add_special_tokens=False)["input_ids"])
    assert n_sub > 3 * 128
    tags = engine.tag_words([words])[0]
    assert len(tags) == len(words)
    # the tail comes from the last window: identical to tagging that window alone
    counts = [len(tok(w, add_special_tokens=False)["input_ids"]) for w in words]
    windows = plan_windows(counts, engine.budget, engine.window_overlap)
    assert len(windows) >= 4
    lo, hi = windows[-1]
    prev_hi = windows[-2][1]
    cut = (prev_hi + lo) // 2 + 1  # from here on, the last window is the most central one
    alone = engine.tag_words([words[lo:hi]])[0]
    assert tags[cut:] == alone[cut - lo:]
    lo0, hi0 = windows[0]
    first_alone = engine.tag_words([words[lo0:hi0]])[0]
    assert tags[: (windows[1][0] + hi0) // 2] == first_alone[: (windows[1][0] + hi0) // 2]
    # raw text: entities near the end of a text far longer than max_length
    text = " ".join(words)
    ents, timings = engine.predict(text, return_timings=True)
    ents = ents[0]
    assert timings["windows"] == len(windows)
    end_of_first_window = split_words(text)[1][hi0 - 1][1]
    assert any(e.start > end_of_first_window for e in ents)
    assert max(e.end for e in ents) > len(text) - 300
    for e in ents:
        assert text[e.start:e.end] == e.text and 0 < e.score <= 1
    # one enormous word still gets its tag
    assert len(engine.tag_words([["x" * 3000, "Paris"]])[0]) == 2


def test_span_across_windows_scores_each_piece_in_its_window(engine):
    from export.pipeline import Window as _Window

    rng = np.random.default_rng(3)
    c = engine.crf
    w1 = _Window(0, 0, 4, [], [], emissions=rng.standard_normal((4, 5)).astype(np.float32))
    w2 = _Window(0, 2, 6, [], [], emissions=rng.standard_normal((4, 5)).astype(np.float32))
    tags = [0, 3, 4, 4, 4, 0]  # O B-LOC I-LOC I-LOC I-LOC O: the span 1..5 is in neither window
    got = engine._span_score(tags, 1, 5, [w1, w2], 6)

    def marg(w):
        return [m[0] for m in nv.marginals(w.emissions[None], np.ones((1, 4), bool), c["transitions"], c["start"],
                                           c["end"])]

    # words 1, 2 are most central in w1, words 3, 4 in w2
    ref = span_probability(*marg(w1), tags[0:4], 1, 3) * span_probability(*marg(w2), tags[2:6], 1, 3)
    assert got == pytest.approx(ref, rel=1e-6) and 0 < got < 1
    # a span inside only one window uses that window alone
    assert engine._span_score(tags, 4, 6, [w1, w2], 6) == pytest.approx(
        span_probability(*marg(w2), tags[2:6], 2, 4), rel=1e-6)


def test_timings_and_batching(engine):
    texts = [t for t in TEXTS if t] * 10
    res, t = engine.predict(texts, batch_size=8, return_timings=True)
    assert len(res) == len(texts)
    assert t["batches"] == 7 and t["texts"] == len(texts)
    for k in ("tokenize", "onnx", "viterbi", "confidence", "postprocess", "total"):
        assert t[k] >= 0
    assert t["total"] >= t["onnx"] + t["viterbi"]
    assert engine.last_timings is t
    # batching and order do not change the answer
    one = [engine.predict(x)[0] for x in texts[:5]]
    assert [[(e.start, e.end, e.label) for e in r] for r in res[:5]] == \
           [[(e.start, e.end, e.label) for e in r] for r in one]


def test_int8_and_bad_settings(export_dir, engine):
    e8 = NerEngine.from_dir(export_dir, precision="int8", threads=1)
    assert e8.precision == "int8" and e8.info()["manifest"]["model_file"] == fmt.MODEL_INT8
    tags8 = e8.tag_words([split_words(t)[0] for t in TEXTS if t])
    assert [len(t) for t in tags8] == [len(split_words(t)[0]) for t in TEXTS if t]
    with pytest.raises(EngineError, match="unknown precision"):
        NerEngine.from_dir(export_dir, precision="fp16")
    with pytest.raises(EngineError, match="no such export directory"):
        NerEngine.from_dir(export_dir / "nope")
    with pytest.raises(EngineError, match="unknown device"):
        NerEngine.from_dir(export_dir, device="tpu")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(EngineError, match="CUDAExecutionProvider.*CPUExecutionProvider"):
            NerEngine.from_dir(export_dir, device="cuda")
    info = engine.info()
    assert info["labels"] == LABELS and info["entity_types"] == ["LOC", "PER"] and info["max_length"] == 128


def test_serving_path_imports_no_torch(export_dir):
    code = (
        "import sys\n"
        "from serving.engine import NerEngine\n"
        "from serving.server import create_app, Settings\n"
        "import serving.badinput, serving.__main__\n"
        f"e = NerEngine.from_dir({str(export_dir)!r})\n"
        "create_app(e, Settings())\n"
        "print(len(e.predict(['Angela Merkel visited Paris .'])[0]))\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'optimum', "
        "'safetensors', 'training'))\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_serving_package_holds_no_benchmark_code():
    """Every import in serving/*.py, lazy ones included, stays on the serving path: the Docker image
    copies serving/ whole, and benchmarks (which import torch, optimum, training) live in benchmarks/."""
    import ast

    bad = {"torch", "transformers", "optimum", "safetensors", "training", "benchmarks", "demo"}
    found = []
    for f in sorted((ROOT / "serving").glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            found += [f"{f.name}: {n}" for n in names if n.split(".")[0] in bad]
    assert found == []


# --------------------------------------------------------------------------- HTTP
@pytest.fixture(scope="module")
def client(engine):
    from fastapi.testclient import TestClient

    with TestClient(create_app(engine, Settings())) as c:
        yield c


def _ents(result):
    return [(e["text"], e["label"], e["start"], e["end"], e["word_start"], e["word_end"]) for e in result]


def _ref(ents):
    return [(e.text, e.label, e.start, e.end, e.word_start, e.word_end) for e in ents]


def test_http_endpoints(client, engine):
    assert client.get("/healthz").json() == {"status": "ok"}
    m = client.get("/v1/model").json()
    assert m["labels"] == LABELS and m["precision"] == "fp32" and m["device"] == "cpu"
    assert m["manifest"]["kind"] == "student" and m["limits"]["max_texts"] == 64
    r = client.post("/v1/ner", json={"text": TEXTS[0]})
    assert r.status_code == 200 and _ents(r.json()["entities"]) == _ref(engine.predict(TEXTS[0])[0])
    r = client.post("/v1/ner", json={"texts": TEXTS})
    assert r.status_code == 200
    assert [_ents(x["entities"]) for x in r.json()["results"]] == [_ref(x) for x in engine.predict(TEXTS)]
    words = [["John", "Smith", "lives", "in", "New", "York"], [], ["Paris"]]
    r = client.post("/v1/ner", json={"words": words})
    assert r.status_code == 200
    assert [_ents(x["entities"]) for x in r.json()["results"]] == [_ref(x) for x in engine.predict_words(words)]
    r = client.post("/v1/ner", content=b'{"text": "x"}', headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "error" in r.json()
    text = client.get("/metrics").text
    for needle in ('ner_requests_total{method="POST",path="/v1/ner",status="200"}',
                   'ner_requests_total{method="POST",path="/v1/ner",status="415"} 1',
                   'ner_errors_total{reason="content_type"} 1', "ner_request_duration_seconds_bucket",
                   "ner_batch_size_bucket", "ner_batch_size_count", "# TYPE ner_request_duration_seconds histogram",
                   'ner_engine_seconds_total{stage="viterbi"}'):
        assert needle in text, needle
    for line in text.splitlines():  # exposition format: comments or `name{labels} value`
        assert line.startswith("#") or re.fullmatch(r"[a-z_]+(\{[^}]*\})? [-+0-9.eInf]+", line), line


def test_openapi_publishes_the_contract(engine):
    """GET /openapi.json: the three request shapes under the server's limits, the answers and the error
    body; no interactive docs (they would load scripts from a CDN)."""
    from dataclasses import fields

    from fastapi.testclient import TestClient

    from serving.engine import Entity

    with TestClient(create_app(engine, Settings(max_texts=5, max_chars=40))) as c:
        r = c.get("/openapi.json")
        for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
            assert c.get(path).status_code == 404 and c.get(path).json() == {"error": f"no such endpoint: {path}"}
        assert c.post("/openapi.json").status_code == 405
    assert r.status_code == 200 and r.json()["openapi"].startswith("3.")
    doc = r.json()
    schemas = doc["components"]["schemas"]
    deref = lambda s: schemas[s["$ref"].rsplit("/", 1)[1]]  # noqa: E731
    assert {"/v1/ner", "/healthz", "/v1/model", "/metrics"} <= set(doc["paths"])
    ner = doc["paths"]["/v1/ner"]["post"]
    shapes = {tuple(s["required"]): s for s in map(deref, ner["requestBody"]["content"]["application/json"]["schema"]
                                                           ["oneOf"])}
    assert set(shapes) == {("text",), ("texts",), ("words",)} and ner["requestBody"]["required"] is True
    assert all(s["additionalProperties"] is False and len(s["properties"]) == 1 for s in shapes.values())
    text, texts, words = (shapes[(k,)]["properties"][k] for k in ("text", "texts", "words"))
    assert text == {"type": "string", "maxLength": 40, "title": "Text"}
    assert texts["type"] == "array" and (texts["minItems"], texts["maxItems"]) == (1, 5)
    assert texts["items"] == {"type": "string", "maxLength": 40}
    assert (words["minItems"], words["maxItems"]) == (1, 5)
    assert words["items"] == {"type": "array", "items": {"type": "string"}}
    answers = {deref(s)["title"]: deref(s) for s in ner["responses"]["200"]["content"]["application/json"]["schema"]
               ["anyOf"]}
    assert set(answers) == {"Entities", "Results"}
    assert deref(answers["Results"]["properties"]["results"]["items"]) is answers["Entities"]
    entity = deref(answers["Entities"]["properties"]["entities"]["items"])
    assert set(entity["properties"]) == set(entity["required"]) == {f.name for f in fields(Entity)}
    for status in ("400", "413", "415", "422", "500", "503"):
        error = deref(ner["responses"][status]["content"]["application/json"]["schema"])
        assert error["required"] == ["error"] and set(error["properties"]) == {"error"}, status
    assert "503" in doc["paths"]["/healthz"]["get"]["responses"]
    assert set(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}


def test_openapi_request_shapes_agree_with_the_parser():
    """The shapes /openapi.json publishes accept exactly the JSON bodies that the hand-written parser
    accepts, over the bad-input corpus; the exceptions are the checks JSON Schema cannot state."""
    from typing import Union

    from pydantic import TypeAdapter, ValidationError

    from serving.requests import ClientError, parse_request, request_models

    settings = Settings()
    shapes = TypeAdapter(Union[tuple(request_models(settings))])
    beyond_schema = {"words_too_long", "many_empty_words",  # words' characters joined with spaces (413)
                     "bom_prefixed_body"}  # a byte-order mark before the JSON, skipped by the parser
    cases = [c for c in badinput.corpus(settings) if c.method == "POST" and c.path == "/v1/ner"
             and c.headers == badinput.JSON and not c.chunked and c.body is not None
             and len(c.body) <= settings.max_body_bytes]
    assert len(cases) > 60
    disagree = []
    for case in cases:
        try:
            parse_request(case.body, settings)
            parsed = True
        except ClientError:
            parsed = False
        try:
            shapes.validate_json(case.body)
            valid = True
        except ValidationError:
            valid = False
        if parsed != valid:
            disagree.append(case.name)
    assert sorted(disagree) == sorted(beyond_schema)


CORPUS = badinput.corpus(Settings())


def test_corpus_size():
    bad = [c for c in CORPUS if c.bad]
    assert len(bad) >= 50 and len(CORPUS) - len(bad) >= 10
    assert {c.expect for c in bad} == {400, 404, 405, 413, 415, 422}


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_bad_input_corpus(client, case):
    r = badinput.send(client, case)
    problem = badinput.check_response(case, r)
    assert problem is None, problem
    ok = client.post("/v1/ner", json={"text": "Angela Merkel visited Paris ."})
    assert ok.status_code == 200 and "entities" in ok.json()


def test_engine_failure_is_500_and_server_recovers(engine, monkeypatch):
    from fastapi.testclient import TestClient

    app = create_app(engine, Settings(max_queue=3))
    with TestClient(app, raise_server_exceptions=False) as c:
        calls = {"n": 0}
        real = engine.run_documents

        def flaky(*a, **k):
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("simulated engine crash")
            return real(*a, **k)

        monkeypatch.setattr(engine, "run_documents", flaky)
        r = c.post("/v1/ner", json={"text": "Paris"})
        assert r.status_code == 500 and "error" in r.json()
        assert c.post("/v1/ner", json={"text": "Paris"}).status_code == 200
        assert c.get("/healthz").status_code == 200
        r = c.post("/v1/ner", json={"texts": ["a", "b", "c", "d"]})  # more than the queue holds
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "error" in r.json()
        assert 'ner_errors_total{reason="engine"} 1' in c.get("/metrics").text


def test_concurrent_requests_are_batched(engine):
    import httpx

    app = create_app(engine, Settings(max_wait_ms=20))
    texts = [f"{t} Number {i} ." for i in range(50) for t in [TEXTS[i % 4]]]
    expected = [_ref(x) for x in engine.predict(texts)]

    async def main(url):
        async with httpx.AsyncClient(base_url=url, timeout=60,
                                     limits=httpx.Limits(max_connections=60)) as c:
            return await asyncio.gather(*(c.post("/v1/ner", json={"text": t}) for t in texts))

    with Uvicorn(app) as url:
        responses = asyncio.run(main(url))
        metrics = httpx.get(url + "/metrics").text
    assert [r.status_code for r in responses] == [200] * 50
    assert [_ents(r.json()["entities"]) for r in responses] == expected
    count = int(re.search(r"^ner_batch_size_count (\d+)$", metrics, re.M).group(1))
    ones = int(re.search(r'^ner_batch_size_bucket\{le="1"\} (\d+)$', metrics, re.M).group(1))
    texts_total = int(re.search(r"^ner_texts_total (\d+)$", metrics, re.M).group(1))
    assert texts_total == 50 and count < 50 and ones < count, metrics  # some batches had > 1 text
    assert app.state.batcher.batches == count


def _serve_and_query(python, export, cwd, timeout=90):
    import httpx

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    p = subprocess.Popen([str(python), "-m", "serving", str(export), "--port", str(port), "--threads", "1"],
                         cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        t0 = time.time()
        while True:
            assert p.poll() is None, p.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() - t0 < timeout, "server did not come up"
            time.sleep(0.2)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/ner", json={"texts": ["Angela Merkel visited Paris .", ""]})
        bad = httpx.post(f"http://127.0.0.1:{port}/v1/ner", content=b"{", headers={"content-type": "application/json"})
        return r, bad
    finally:
        p.terminate()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def test_cli_serves_on_loopback(export_dir):
    r, bad = _serve_and_query(sys.executable, export_dir, ROOT)
    assert r.status_code == 200 and len(r.json()["results"]) == 2 and r.json()["results"][1] == {"entities": []}
    assert bad.status_code == 400
    # a bad export directory: one line on stderr, exit code 2
    p = subprocess.run([sys.executable, "-m", "serving", str(export_dir / "nope")], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.startswith("error: ") and "Traceback" not in p.stderr


# --------------------------------------------------------------------------- fresh install
def _source_hash() -> str:
    h = hashlib.sha256()
    files = [ROOT / "pyproject.toml"] + sorted((ROOT / "serving").glob("*.py")) + \
        sorted((ROOT / "export").glob("*.py"))
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


@pytest.mark.slow
def test_fresh_venv_serve_extra_only(export_dir):
    """`pip install .[serve]` into a new venv (no system site-packages) must not pull torch, and
    `python -m serving EXPORT` from that venv answers a request. Stands in for the Docker image."""
    base = Path(tempfile.gettempdir()) / f"msd-ner-serve-venv-{_source_hash()}"
    venv, done = base / "venv", base / "installed"
    py = venv / "bin" / "python"
    if not done.is_file():
        for stale in base.parent.glob("msd-ner-serve-venv-*"):  # older sources: ~250 MB each
            shutil.rmtree(stale, ignore_errors=True)
        src = base / "src"
        src.mkdir(parents=True)
        shutil.copy2(ROOT / "pyproject.toml", src)
        if (ROOT / "README.md").is_file():
            shutil.copy2(ROOT / "README.md", src)
        else:  # pyproject's `readme` must exist for the build
            (src / "README.md").write_text("# msd-ner\n")
        for pkg in ("serving", "export"):
            shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
            r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                                f"{src}[serve]"], capture_output=True, text=True, timeout=480)
        except subprocess.TimeoutExpired:
            pytest.skip("pip install .[serve] took too long (slow or no network)")
        except subprocess.CalledProcessError as e:
            pytest.skip(f"could not create a venv: {e.stderr[-300:]}")
        if r.returncode != 0:
            pytest.skip(f"pip could not install .[serve] (offline?): {r.stderr.strip()[-400:]}")
        done.write_text("ok\n")
    freeze = subprocess.run([str(py), "-m", "pip", "freeze"], capture_output=True, text=True, timeout=120).stdout
    names = {line.split("==")[0].split(" @ ")[0].lower() for line in freeze.splitlines()}
    assert not names & {"torch", "transformers", "optimum", "safetensors"}, sorted(names)
    assert {"onnxruntime", "tokenizers", "fastapi", "uvicorn", "numpy"} <= names, sorted(names)
    r, bad = _serve_and_query(py, export_dir, cwd=base)  # cwd outside the repo: the installed package
    assert r.status_code == 200 and len(r.json()["results"]) == 2
    assert bad.status_code == 400 and "error" in bad.json()


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore semantics, simplified: last matching pattern wins, `!` re-includes,
    a pattern matching a parent directory matches everything below it, `**` spans directories."""
    def rx(p):
        out, i = "", 0
        while i < len(p):
            if p[i:i + 3] == "**/":
                out, i = out + "(?:.*/)?", i + 3
            elif p[i:i + 2] == "**":
                out, i = out + ".*", i + 2
            elif p[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif p[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(p[i]), i + 1
        return re.compile(out + "$")

    parts = path.split("/")
    prefixes = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    ignored = False
    for p in patterns:
        neg = p.startswith("!")
        r = rx(p[1:] if neg else p)
        if any(r.match(x) for x in prefixes):
            ignored = not neg
    return ignored


def test_dockerfile_and_dockerignore():
    text = (ROOT / "Dockerfile").read_text()
    assert text.splitlines()[[l.startswith("FROM") for l in text.splitlines()].index(True)] == "FROM python:3.11-slim"
    assert 'pip install ".[serve]"' in text and "torch" not in text.split("pip install", 1)[1].split("\n")[0]
    assert re.search(r"^USER (?!root)\w+", text, re.M) and "ARG EXPORT_DIR=runs/student/onnx" in text
    assert "HEALTHCHECK" in text and "/healthz" in text and "EXPOSE 8000" in text
    assert 'CMD ["python", "-m", "serving", "/model", "--host", "0.0.0.0", "--port", "8000"]' in text
    patterns = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()
                if l.strip() and not l.startswith("#")]
    for kept in ("pyproject.toml", "serving/engine.py", "serving/__main__.py", "serving/server.py", "serving/metrics.py",
                 "serving/batching.py", "serving/requests.py", "export/format.py", "export/viterbi.py",
                 "export/pipeline.py", "export/runtime.py", "runs/student/onnx/model.onnx",
                 "runs/conll2003/student/onnx/crf.json"):
        assert not _dockerignored(kept, patterns), kept
    for dropped in (".venv/bin/python", ".git/HEAD", "tests/test_serving.py", "runs/student/best/model.safetensors",
                    "runs/teacher/last/optimizer.safetensors", "benchmarks/results/serving.json",
                    "serving/__pycache__/engine.cpython-311.pyc", "training/model.py", "serving/badinput.py",
                    "benchmarks/serving_bench.py", "benchmarks/serving_load.py"):
        assert _dockerignored(dropped, patterns), dropped
    for src in re.findall(r"^COPY (?:--\S+ )*(\S+)", text, re.M):  # what the image copies exists here
        if "$" not in src and "*" not in src:
            assert (ROOT / src).exists(), src


# --------------------------------------------------------------------------- load test script
@pytest.mark.slow
def test_load_script_smoke(export_dir, tmp_path):
    out = tmp_path / "load"
    r = subprocess.run([sys.executable, "-m", "benchmarks.serving_load", str(export_dir), "--clients", "20",
                        "--duration", "3", "--threads", "1", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.with_suffix(".json").read_text())
    assert res["errors"] == 0 and res["requests_ok"] > 20
    assert res["bad_input"]["cases"] >= 50 and res["bad_input"]["failures"] == []
    assert out.with_suffix(".md").is_file()
