"""The one tagging pipeline (issue #18): export.pipeline.Tagger with a PyTorch source of emissions
(training.backend) and with ONNX Runtime (the serving engine) gives the same entities on a tiny
random export; the shared alignment; the training-protocol truncation; the NumPy decode of
training evaluation; the benchmark's PyTorch student through the same pipeline."""
import numpy as np
import pytest
import torch

from export.pipeline import Document, align, kept_words, split_words
from serving.engine import NerEngine
from training import backend
from training import crf as crf_lib
from training import data as data_lib
from training.corpora import Sentence
from training import evaluate as ev

TEXTS = [
    "Angela Merkel visited Washington on Tuesday.",
    "EU rejects German call to boycott British lamb .",
    "  Zürich,  Reykjavík   and  São Paulo  —  (ÁNNA) said: \"hello\"!  ",
    "Paris\u200b and \x00 Berlin",  # invisible characters separate words
    "",
    " ".join(["The committee of Paris and Berlin said John Smith visited Reykjavík on Tuesday ."] * 12),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from test_export import _tokenizer, tiny_model
    from export import onnx as exp
    from training import checkpoint as ckpt
    from training.model import load

    run = tmp_path_factory.mktemp("pipeline") / "student"
    tiny_model(seed=3).save(run / ckpt.BEST, _tokenizer(), {"kind": "student", "method": "msd",
                                                            "args": {"max_length": 64}})
    export_dir = exp.export(run, quiet=True)
    model, tok, info = load(run)
    return {"run": run, "engine": NerEngine.from_dir(export_dir, threads=1), "model": model.eval(), "tok": tok,
            "torch": backend.tagger(model, tok, backend.max_length(model, tok, info))}


def _key(entities):
    return [(e.text, e.label, e.start, e.end, e.word_start, e.word_end) for e in entities]


def test_torch_and_onnx_backends_give_the_same_entities(setup):
    engine, tagger = setup["engine"], setup["torch"]
    assert tagger.max_length == engine.max_length == 64 and tagger.labels == engine.labels
    got, timings = tagger.predict(TEXTS, batch_size=4, return_timings=True)
    ref, ref_timings = engine.predict(TEXTS, batch_size=4, return_timings=True)
    assert timings["windows"] == ref_timings["windows"] > len(TEXTS)  # the long text went through windows
    assert sum(map(len, ref)) > 5  # a random CRF still tags entities
    for a, b in zip(got, ref):
        assert _key(a) == _key(b)
        assert max([abs(x.score - y.score) for x, y in zip(a, b)], default=0.0) < 1e-4
    words = [split_words(t)[0] for t in TEXTS] + [["Paris", "\u200b", "", "\x00", "Berlin"]]  # words -> unk
    assert tagger.tag_words(words) == engine.tag_words(words)
    assert tagger.tag_words(words, truncate=True) == engine.tag_words(words, truncate=True)


def test_torch_pipeline_matches_the_training_reference(setup):
    """Sentences that fit max_length: the pipeline (tokenizers alignment, NumPy Viterbi) = the training
    path (training.data.encode, BertCrf.decode with the torch Viterbi)."""
    from test_export import REAL, random_sentences

    tagger, model, tok = setup["torch"], setup["model"], setup["tok"]
    sentences = REAL[:-1] + random_sentences(tok, seed=7) + [["Paris", "\u200b", "", "Berlin"]]
    fits = [s for s in sentences if len(tok(s, is_split_into_words=True)["input_ids"]) <= 64]
    assert len(fits) >= 10
    enc = data_lib.encode([Sentence(s, ["O"] * len(s)) for s in fits], tok, None, max_length=64)
    ref = model.decode(data_lib.collate(enc.items, enc.pad_token_id))
    assert tagger.tag_words(fits) == [[tagger.labels[t] for t in row] for row in ref]


def test_truncate_is_the_training_protocol(setup):
    """truncate=True: the words after max_length sub-tokens are O and counted, exactly as
    training.evaluate.predict on training.data.encode."""
    from test_export import REAL

    tagger, model, tok = setup["torch"], setup["model"], setup["tok"]
    sentences = [Sentence(s, ["O"] * len(s)) for s in REAL + [split_words(TEXTS[-1])[0]]]
    enc = data_lib.encode(sentences, tok, None, max_length=64)
    assert enc.n_truncated_words > 0
    tags, _, timings = tagger.tag([Document.from_words(s.words) for s in sentences], scores=False, truncate=True)
    assert timings["truncated_words"] == enc.n_truncated_words
    assert [[tagger.labels[t] for t in row] for row in tags] == ev.predict(model, enc, batch_size=3)


def test_training_decode_is_the_pipelines(setup):
    """training.evaluate decodes with the pipeline's NumPy Viterbi: the same paths as the torch one."""
    rng = torch.Generator().manual_seed(0)
    for B, N, L in ((5, 1, 3), (7, 30, 9), (3, 12, 5)):
        e = torch.randn(B, N, L, generator=rng) * 3
        m = torch.arange(N)[None] < torch.randint(1, N + 1, (B, 1), generator=rng)
        t, s, en = torch.randn(L, L, generator=rng), torch.randn(L, generator=rng), torch.randn(L, generator=rng)
        from training.model import Potentials

        _, paths = crf_lib.viterbi(e, m, t, s, en)
        ref = [paths[b, : int(m[b].sum())].tolist() for b in range(B)]
        assert backend.decode(Potentials(e, m, t, s, en)) == ref


def test_align_and_kept_words():
    # [CLS] w0 w0 w1 [SEP]; word 2 has no sub-token (empty, or cut by truncation)
    assert align([None, 0, 0, 1, None], 3) == ([1, 3, -1], [2, 1, 0])
    assert kept_words([1, 3, -1]) == 2 and kept_words([1, 2]) == 2 and kept_words([]) == 0
    with pytest.raises(RuntimeError, match="word 1 has no sub-token"):
        kept_words([1, -1, 2])


def test_bench_torch_student_runs_the_pipeline(setup):
    from benchmarks import serving_bench as bench

    predict, size, _ = bench._torch_student_predictor({"checkpoint": str(setup["run"]), "threads": 1})
    texts = [t for t in TEXTS if t]
    want = [[(e.start, e.end, e.label) for e in r] for r in setup["engine"].predict(texts)]
    assert predict(texts, 2) == want and size > 0
    assert any(want)


def test_emissions_backends_share_the_protocol(setup):
    engine, tagger = setup["engine"], setup["torch"]
    words = ["John", "Smith", "visited", "Paris"]
    feeds = []
    for t in (engine, tagger):
        w = t.windows([Document.from_words(words)])
        assert len(w) == 1 and w[0].first == [1, 2, 3, 4]
        ids = np.array([w[0].ids])
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        feeds.append(t.backend.logits({k: feed[k] for k in t.backend.input_names}))
    assert feeds[0].shape == feeds[1].shape == (1, 6, len(engine.labels))
    assert np.abs(feeds[0] - feeds[1]).max() < 1e-4


def _partitions(n, batch_size):
    """Every cut of range(n) into contiguous batches of at most batch_size (brute force)."""
    if n == 0:
        yield []
        return
    for k in range(1, min(batch_size, n) + 1):
        for rest in _partitions(n - k, batch_size):
            yield [(0, k)] + [(a + k, b + k) for a, b in rest]


@pytest.mark.parametrize("cost", [0.0, 5.0, 32.0, 1e9])
def test_plan_batches_is_the_least_cost_cut(cost):
    """The dynamic program's batches cost no more than any cut found by enumeration (padded sub-tokens + a fixed
    cost per batch), respect batch_size and cover every window once, in order."""
    from export.pipeline import plan_batches

    rng = np.random.default_rng(0)
    total = lambda lengths, cut: sum(cost + (b - a) * lengths[b - 1] for a, b in cut)  # noqa: E731
    for _ in range(30):
        n, bs = int(rng.integers(1, 9)), int(rng.integers(1, 5))
        lengths = sorted(rng.integers(1, 60, size=n).tolist())
        got = plan_batches(lengths, bs, cost)
        assert [a for a, _ in got] == [0] + [b for _, b in got[:-1]] and got[-1][1] == n
        assert all(1 <= b - a <= bs for a, b in got)
        best = min(total(lengths, cut) for cut in _partitions(n, bs))
        assert total(lengths, got) == pytest.approx(best)


def test_plan_batches_edges():
    from export.pipeline import plan_batches

    assert plan_batches([], 4) == []
    assert plan_batches([3, 5, 7, 9, 11], 2, float("inf")) == [(0, 2), (2, 4), (4, 5)]  # plain fixed-size batches
    assert plan_batches([4, 4, 4, 4], 8, 0.0) == [(0, 4)]  # no padding to save: one batch
    assert plan_batches([2, 2, 50, 50], 4, 10.0) == [(0, 2), (2, 4)]  # 2 batches: 10 + 4 + 10 + 100 < 10 + 200
    with pytest.raises(ValueError, match="ascending"):
        plan_batches([5, 3], 4)
    with pytest.raises(ValueError, match="batch_size"):
        plan_batches([1], 0)


def test_engine_splits_a_call_of_mixed_lengths_and_answers_the_same(setup):
    """Texts of very different lengths in one call run as several batches of similar lengths (fewer padded
    sub-tokens than one batch padded to the longest) with the same entities and scores."""
    engine = setup["engine"]
    texts = [TEXTS[0], TEXTS[5][:300], TEXTS[1], TEXTS[5][:120]] * 4
    try:
        engine.batch_cost_tokens = float("inf")
        one, t_one = engine.predict(texts, batch_size=16, return_timings=True)
        engine.batch_cost_tokens = 8.0
        split, t_split = engine.predict(texts, batch_size=16, return_timings=True)
    finally:
        from export.pipeline import DEFAULT_BATCH_COST_TOKENS

        engine.batch_cost_tokens = DEFAULT_BATCH_COST_TOKENS
    assert t_one["batches"] == 1 < t_split["batches"] and t_split["padded_sub_tokens"] < t_one["padded_sub_tokens"]
    assert t_split["sub_tokens"] == t_one["sub_tokens"]
    for a, b in zip(one, split):
        assert _key(a) == _key(b)
        assert max([abs(x.score - y.score) for x, y in zip(a, b)], default=0.0) < 1e-5
