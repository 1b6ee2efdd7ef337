"""Batch invariance (issue #16): for every precision of an export (fp32, static int8, int8-dynamic) a
text's entities are identical, and their scores equal within 1e-5, whether it is tagged alone or
among other texts of other lengths -- through NerEngine.predict and through the HTTP server
(concurrent requests micro-batched together vs one at a time). Padding alone changes nothing for
fp32 and static int8; int8-dynamic would differ in a batch (shown), so the engine runs its texts
alone and the server does not merge requests with it."""
import asyncio
import random
import re

import numpy as np
import pytest

from export import format as fmt
from serving.engine import NerEngine
from serving.server import Settings, create_app

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

TOL = 1e-5
TEXTS = [
    "Paris",
    "John Smith lives in New York .",
    "Angela Merkel visited Washington on Tuesday to meet Barack Obama at the White House .",
    "@jenny_x omg best pizza in Brooklyn!!! #foodie http://t.co/abc",
    "EU rejects German call to boycott British lamb .",
    " ".join(["The committee of Paris and Berlin said John Smith visited Reykjavík on Tuesday ."] * 12),  # windows
    "Zürich",
    "Unbelievably overcomplicated pharmacokinetics in Reykjavík and Zürich , said Ánna .",
]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    from conftest import REAL_SENTENCES as REAL
    from conftest import minilm_tokenizer as _tokenizer
    from conftest import tiny_bert_crf as tiny_model
    from export import onnx as exp
    from training import checkpoint as ckpt

    base = tmp_path_factory.mktemp("invariance")
    run = base / "student"
    tiny_model(seed=1).save(run / ckpt.BEST, _tokenizer(), {"kind": "student", "method": "msd",
                                                            "args": {"max_length": 128}})
    calib = base / "calib.txt"
    calib.write_text("\n".join(" ".join(s) for s in REAL + [t.split() for t in TEXTS]) + "\n")
    from export.runtime import u8s8_saturates

    # 7-bit weights where this CPU's int8 kernels saturate (no VNNI): otherwise answers depend on the CPU
    return exp.export(run, quantize=["int8", "int8-dynamic"], calibration=calib, quiet=True,
                      reduce_range=bool(u8s8_saturates()))


@pytest.fixture(scope="module")
def engines(export_dir):
    return {p: NerEngine.from_dir(export_dir, precision=p, threads=1) for p in fmt.PRECISIONS}


def _key(ents):
    return [(e.start, e.end, e.label, e.word_start, e.word_end) for e in ents]


def _max_score_diff(a, b):
    return max([abs(x.score - y.score) for x, y in zip(a, b)], default=0.0)


def _compare(alone, other):
    """(texts whose entities differ, max score difference over the texts whose entities agree)."""
    differ = sum(_key(a) != _key(b) for a, b in zip(alone, other))
    diff = max([_max_score_diff(a, b) for a, b in zip(alone, other) if _key(a) == _key(b)], default=0.0)
    return differ, diff


@pytest.mark.parametrize("precision", fmt.PRECISIONS)
def test_engine_alone_vs_batched(engines, precision):
    engine = engines[precision]
    assert engine.batch_invariant is fmt.BATCH_INVARIANT[precision]
    alone = [engine.predict([t])[0] for t in TEXTS]
    assert sum(map(len, alone)) > 10
    rng = random.Random(0)
    for batch_size in (32, 3, 2):
        order = list(range(len(TEXTS)))
        rng.shuffle(order)
        got = engine.predict([TEXTS[i] for i in order], batch_size=batch_size)
        back = [None] * len(TEXTS)
        for j, i in enumerate(order):
            back[i] = got[j]
        differ, diff = _compare(alone, back)
        assert differ == 0 and diff <= TOL, (precision, batch_size, differ, diff)


def test_int8_dynamic_would_depend_on_the_batch(engines):
    """The check above can fail: int8-dynamic run as a real batch (the engine's guard switched off)
    gives texts other scores or entities than alone."""
    engine = engines["int8-dynamic"]
    alone = [engine.predict([t])[0] for t in TEXTS]
    engine.batch_invariant = True  # pretend: batch the windows
    try:
        batched = engine.predict(TEXTS, batch_size=32)
    finally:
        engine.batch_invariant = False
    differ, diff = _compare(alone, batched)
    assert differ > 0 or diff > TOL, (differ, diff)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_padding_changes_nothing(engines, precision):
    """The graph itself: a sequence padded with [PAD] positions (attention 0) and batched with a
    longer one gives the same logits at its own positions."""
    engine = engines[precision]
    short = engine.tokenizer.encode("John Smith lives in Paris .".split(), is_pretokenized=True).ids
    long = engine.tokenizer.encode(TEXTS[2].split(), is_pretokenized=True).ids
    names = engine.input_names

    def feed(rows, width):
        ids = np.full((len(rows), width), engine.pad_id, dtype=np.int64)
        att = np.zeros_like(ids)
        for b, r in enumerate(rows):
            ids[b, :len(r)] = r
            att[b, :len(r)] = 1
        f = {"input_ids": ids, "attention_mask": att, "token_type_ids": np.zeros_like(ids)}
        return {k: f[k] for k in names}

    alone = engine.session.run(None, feed([short], len(short)))[0][0]
    padded = engine.session.run(None, feed([short], len(short) + 37))[0][0, :len(short)]
    mixed = engine.session.run(None, feed([long, short], len(long)))[0][1, :len(short)]
    assert np.abs(alone - padded).max() <= TOL and np.abs(alone - mixed).max() <= TOL


def test_model_endpoint_says_batching(export_dir, engines):
    from fastapi.testclient import TestClient

    for precision, engine in engines.items():
        with TestClient(create_app(engine, Settings())) as c:
            m = c.get("/v1/model").json()
        invariant = precision != "int8-dynamic"
        assert m["precision"] == precision
        assert m["batch_invariant"] is invariant and m["micro_batching"] is invariant
        if precision != "fp32":
            assert m["manifest"]["quantization"]["method"].endswith(
                "quantize_static" if precision == "int8" else "quantize_dynamic")


@pytest.mark.parametrize("precision", fmt.PRECISIONS)
def test_http_concurrent_vs_one_by_one(engines, precision):
    import httpx

    from conftest import Uvicorn

    engine = engines[precision]
    app = create_app(engine, Settings(max_wait_ms=50))
    texts = [TEXTS[i % len(TEXTS)] for i in range(24)]

    async def concurrent(url):
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=30)) as c:
            single = c.post("/v1/ner", json={"texts": TEXTS})  # several texts of one request, in one batch
            return await asyncio.gather(single, *(c.post("/v1/ner", json={"text": t}) for t in texts))

    with Uvicorn(app) as url:
        one_by_one = [httpx.post(url + "/v1/ner", json={"text": t}, timeout=60).json()["entities"] for t in TEXTS]
        before = httpx.get(url + "/metrics").text
        responses = asyncio.run(concurrent(url))
        after = httpx.get(url + "/metrics").text
    assert all(r.status_code == 200 for r in responses)
    ref = {t: e for t, e in zip(TEXTS, one_by_one)}
    got = [(t, r["entities"]) for t, r in zip(TEXTS, responses[0].json()["results"])]
    got += [(t, r.json()["entities"]) for t, r in zip(texts, responses[1:])]
    for t, ents in got:
        want = ref[t]
        assert [(e["start"], e["end"], e["label"]) for e in ents] == [(e["start"], e["end"], e["label"]) for e in want]
        assert max([abs(a["score"] - b["score"]) for a, b in zip(ents, want)], default=0.0) <= TOL

    def hist(text, name, le):
        count = int(re.search(rf"^{name}_count (\d+)$", text, re.M).group(1))
        below = int(re.search(rf'^{name}_bucket\{{le="{le}"\}} (\d+)$', text, re.M).group(1))
        return count, below

    (c0, _), (c1, one_request) = hist(before, "ner_batch_requests", 1), hist(after, "ner_batch_requests", 1)
    runs = c1 - c0
    if engine.batch_invariant:
        assert runs < 1 + len(texts), "concurrent requests were never merged"
    else:  # one request per engine run, always
        assert runs == 1 + len(texts) and one_request == c1


def test_ort_options_same_answers(export_dir, engines):
    """The session knobs exposed for the speed sweep change speed, not answers."""
    from serving.engine import EngineError

    ref = engines["int8"].predict(TEXTS)
    for kw in ({"io_binding": True}, {"graph_optimization": "basic", "spinning": True},
               {"execution_mode": "parallel", "inter_op_threads": 2}):
        e = NerEngine.from_dir(export_dir, precision="int8", threads=1, **kw)
        got = e.predict(TEXTS)
        assert [_key(x) for x in got] == [_key(x) for x in ref]
        assert max(_max_score_diff(a, b) for a, b in zip(got, ref)) <= TOL
        assert e.info()["ort_options"]["io_binding"] is bool(kw.get("io_binding"))
    for kw, message in (({"graph_optimization": "max"}, "graph_optimization"), ({"execution_mode": "x"}, "execution"),
                        ({"inter_op_threads": 0}, "inter_op_threads"), ({"threads": 0}, "threads")):
        with pytest.raises(EngineError, match=message):
            NerEngine.from_dir(export_dir, **kw)


def test_reduce_range_is_recorded_and_a_saturating_cpu_is_warned_about(export_dir, tmp_path, monkeypatch):
    """The manifest says whether int8 weights are 7-bit; an int8 model with 8-bit weights on a CPU whose
    uint8 x int8 kernels saturate loads with a warning (and says so in info()); fp32 never does."""
    import json
    import shutil
    import warnings

    from export.runtime import u8s8_saturates
    from serving import engine as engine_mod

    q = json.loads((export_dir / fmt.MANIFEST).read_text())[fmt.K_QUANTIZATION]
    assert q["int8"]["reduce_range"] is q["int8-dynamic"]["reduce_range"] is bool(u8s8_saturates())
    full = tmp_path / "onnx"
    shutil.copytree(export_dir, full)
    m = json.loads((full / fmt.MANIFEST).read_text())
    m[fmt.K_QUANTIZATION]["int8"]["reduce_range"] = False
    (full / fmt.MANIFEST).write_text(json.dumps(m))
    for saturates in (True, False):
        monkeypatch.setattr(engine_mod, "u8s8_saturates", lambda s=saturates: s)
        for precision in ("int8", "fp32"):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                e = NerEngine.from_dir(full, precision=precision, threads=1)
            warned = [w for w in caught if "--reduce-range" in str(w.message)]
            assert len(warned) == (saturates and precision == "int8")
            assert e.info()["int8_saturates"] is (saturates and precision == "int8")
