"""Extra text for distillation: where unlabelled and augmented sentences come from, and how they
join the batches.

    python -m training.distill --method pos --unlabeled conll2000,wikiann --data-dir ../shared/data
    python -m training.distill --method struct --augment mention-swap,mask --extra-share 0.5

Sources (``--unlabeled A,B,...``, read in that order; their tags, if any, are dropped):

* a dataset name of :func:`training.corpora.load_dataset` (``conll2003``, ``wikiann``, ``conll2000``,
  ``default``), read from ``--data-dir`` by its loader: the train split, or ``NAME:dev`` /
  ``NAME:test`` / ``NAME:train``;
* a CoNLL file (token in the first column, other columns ignored, read by
  :func:`training.corpora.read_conll`), recognised by ``-DOCSTART-`` lines, by a tag (``O``, ``B-X``,
  ``I-X``) last on every line, or by one token per line with blank lines between sentences;
* otherwise a text file, one sentence per line, split into words by ``serving.engine.split_words``
  -- the splitter the server applies to raw text, so the student distils on words cut the way it
  will see them when serving.

Augmentation (``--augment mention-swap,mask``) makes ``--augment-copies`` new sentences per kind and
per train sentence (the train split after the holdout), deterministically for ``--seed``:
``mention-swap`` replaces one entity mention by another train mention of the same type (sentences
without a mention give none); ``mask`` replaces each word with probability ``--mask-rate`` (at least
one word) by the tokenizer's mask token, which must encode to the mask id (checked).

Every extra sentence that also occurs in the dev or test split of the task is dropped, and the
number printed. Sentences are compared as word sequences after re-splitting both sides with
``split_words``, so ``U.S.`` in a CoNLL file and in raw text match.

Batches (``--extra-share F``): of ``--batch-size B`` sentences, ``round(F * B)`` (at least 1, at most
B - 1) are extra text, the rest labelled; an epoch is still one pass over the labelled train, and
the extra stream cycles through the pool in an order fixed by (seed, epoch), so ``--resume`` is exact.

Loss: ``alpha * NLL + (1 - alpha) * KD`` where the NLL is the mean over the *labelled* sentences of
the batch and KD (the method's own loss: ``topk`` the NLL of the teacher's k-best paths, ``pos`` /
``struct`` the marginals) the mean over *all* of them. Each term stays a per-sentence mean, so the
loss has the scale it has without extra text and the same learning rates and clipping apply; a
sentence's KD weight is ``(1 - alpha) / B`` whether it is labelled or not. A batch without any
labelled sentence -- only the stage 1 of ``--stage1-epochs N`` makes such batches, its first N
epochs being passes over the extra pool alone (TinyBERT's schedule) -- is trained on KD alone
(weight 1).
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from training import corpora
from training import data as data_lib
from training import losses
from training.config import ConfigError
from training.corpora import DataError, Sentence

AUGMENT_KINDS = ("mention-swap", "mask")
SPLITS = {"train": "train", "dev": "dev", "valid": "dev", "test": "test"}


@dataclass
class ExtraArgs:
    unlabeled: str | None = field(default=None, metadata={"help": "extra text, comma-separated: a text file (one sentence per line), a CoNLL file (tags ignored) or a dataset name of --data-dir (conll2000, wikiann, conll2003; NAME:split, train by default)"})
    augment: str | None = field(default=None, metadata={"help": "augmented copies of train as extra text: mention-swap,mask"})
    augment_copies: int = field(default=1, metadata={"help": "augmented sentences per train sentence and kind"})
    mask_rate: float = field(default=0.15, metadata={"help": "--augment mask: share of words replaced by the mask token"})
    extra_share: float = field(default=0.5, metadata={"help": "share of each batch that is extra text, in (0, 1)"})
    stage1_epochs: int = field(default=0, metadata={"help": "first N epochs: KD alone on the extra text (no labelled data)"})
    teacher_cache: str | None = field(default=None, metadata={"help": "keep the teacher's KD targets in this folder (safetensors), not for msd"})

    def __post_init__(self):
        unknown = [k for k in self.kinds if k not in AUGMENT_KINDS]
        if unknown:
            raise ConfigError(f"--augment: unknown kind {unknown[0]!r} (known: {', '.join(AUGMENT_KINDS)})")
        if self.unlabeled is not None and not all(self.unlabeled.split(",")):
            raise ConfigError(f"--unlabeled: empty name in {self.unlabeled!r}")
        if not 0.0 < self.extra_share < 1.0:
            raise ConfigError(f"--extra-share must be in (0, 1), got {self.extra_share}")
        if self.augment_copies < 1:
            raise ConfigError(f"--augment-copies must be >= 1, got {self.augment_copies}")
        if not 0.0 < self.mask_rate <= 1.0:
            raise ConfigError(f"--mask-rate must be in (0, 1], got {self.mask_rate}")
        if self.stage1_epochs < 0 or (self.stage1_epochs and not self.active):
            raise ConfigError("--stage1-epochs needs a value >= 0 and extra text (--unlabeled or --augment)")

    @property
    def kinds(self) -> list[str]:
        return [k.strip() for k in (self.augment or "").split(",") if k.strip()]

    @property
    def active(self) -> bool:
        return bool(self.unlabeled or self.kinds)


def check(xargs: ExtraArgs, method: str, epochs: int, batch_size: int) -> None:
    """Refuse settings that only make sense together (ConfigError, one line)."""
    if xargs.teacher_cache and method in ("none", "msd"):
        raise ConfigError(f"--teacher-cache needs a frozen teacher and a KD method (not {method})")
    if not xargs.active:
        return
    if method == "none":
        raise ConfigError("extra text (--unlabeled, --augment) needs a KD method: its loss is KD only, "
                          "and --method none has none")
    if batch_size < 2:
        raise ConfigError("extra text needs --batch-size >= 2 (labelled and extra sentences share each batch)")
    if xargs.stage1_epochs >= epochs:
        raise ConfigError(f"--stage1-epochs ({xargs.stage1_epochs}) must be below --epochs ({epochs})")


def split_sizes(batch_size: int, share: float) -> tuple[int, int]:
    """(labelled, extra) sentences per batch: ``round(share * batch_size)`` extra, clamped to [1, B-1]."""
    n_extra = min(max(round(share * batch_size), 1), batch_size - 1)
    return batch_size - n_extra, n_extra


# ---------------------------------------------------------------------------- sources
def _words(text: str) -> list[str]:
    from serving.engine import split_words  # the serving path's splitter (NumPy / onnxruntime only)

    return split_words(text)[0]


def sniff(path) -> str:
    """``conll`` or ``text`` (see the module doc); DataError for an empty file or none of them."""
    text = corpora.read_text(path)
    lines = text.splitlines()
    content = [(i, line) for i, line in enumerate(lines, 1) if line.strip()]
    if not content:
        raise DataError(f"{path}: empty file (no sentence)")
    known = "known formats: one sentence per line, or CoNLL columns (token first)"
    if "\x00" in text:
        raise DataError(f"{path}: binary data (NUL bytes), not text; {known}")
    first = content[0][1].strip()
    if first[:1] in "{[":
        try:
            json.loads(first)
        except ValueError:
            pass
        else:
            raise DataError(f"{path}: looks like JSON; {known}")
    docstart = any(line.startswith("-DOCSTART-") for _, line in content)
    fields = [(i, line.split()) for i, line in content if not line.startswith("-DOCSTART-")]
    tagged = [len(f) >= 2 and bool(corpora._TAG_RE.match(f[-1])) for _, f in fields]
    if docstart or all(tagged) or (all(len(f) == 1 for _, f in fields) and len(content) < len(lines)):
        return "conll"
    if sum(tagged) > len(tagged) / 2:
        line = next(i for (i, _), t in zip(fields, tagged) if not t)
        raise DataError(f"{path}:{line}: {sum(tagged)} of {len(tagged)} lines look like CoNLL (a tag last) "
                        f"but this one does not; {known}")
    return "text"


def read_file(path) -> tuple[list[Sentence], str]:
    """Sentences of a text or CoNLL file, all tagged ``O``, and the format found."""
    path = Path(path)
    fmt = sniff(path)
    if fmt == "conll":
        return corpora.read_conll(path, tag_col=None), fmt
    sents = [Sentence(w, ["O"] * len(w)) for w in map(_words, corpora.read_text(path).splitlines()) if w]
    if not sents:
        raise DataError(f"{path}: no words in any line")
    return sents, fmt


def read_source(spec: str, data_dir=None) -> tuple[list[Sentence], str]:
    """One ``--unlabeled`` item: a dataset (``NAME`` or ``NAME:split``) or a file. Tags become ``O``."""
    name, _, split = spec.partition(":")
    if name in corpora.DATASET_NAMES or name == "wikiann_en":
        if split and split not in SPLITS:
            raise DataError(f"--unlabeled {spec}: unknown split {split!r} (train, dev, test)")
        sents = getattr(corpora.load_dataset(name, data_dir=data_dir), SPLITS[split or "train"])
        return [Sentence(s.words, ["O"] * len(s.words)) for s in sents], f"{name}:{SPLITS[split or 'train']}"
    path = Path(spec)
    if path.is_file():
        sents, fmt = read_file(path)
        return sents, f"{path} ({fmt})"
    what = "a directory, not a file" if path.is_dir() else "no such file"
    raise DataError(f"--unlabeled {spec}: {what}, and not a dataset name "
                    f"({', '.join(n for n in corpora.DATASET_NAMES if n != 'default')}, default)")


# ---------------------------------------------------------------------------- augmentation
def mention_swap(train: list[Sentence], copies: int, seed: int) -> list[Sentence]:
    """Per train sentence with a mention, ``copies`` sentences in which one mention (chosen at random)
    is replaced by another distinct train mention of the same type; tags follow (B-T, I-T, ...)."""
    from serving.engine import tags_to_spans

    by_type: dict[str, list[tuple]] = {}
    for s in train:
        for a, b, typ in tags_to_spans(s.tags):
            by_type.setdefault(typ, []).append(tuple(s.words[a:b]))
    by_type = {t: sorted(set(ms)) for t, ms in by_type.items()}
    where = {t: {m: i for i, m in enumerate(ms)} for t, ms in by_type.items()}
    rng = random.Random(f"mention-swap:{seed}")
    out = []
    for s in train:
        spans = tags_to_spans(s.tags)
        for _ in range(copies if spans else 0):
            a, b, typ = rng.choice(spans)
            pool, own = by_type[typ], where[typ].get(tuple(s.words[a:b]))
            if len(pool) - (own is not None) < 1:
                continue
            j = rng.randrange(len(pool) - (own is not None))
            new = list(pool[j + (own is not None and j >= own)])
            out.append(Sentence(s.words[:a] + new + s.words[b:],
                                s.tags[:a] + [f"B-{typ}"] + [f"I-{typ}"] * (len(new) - 1) + s.tags[b:]))
    return out


def mask_words(train: list[Sentence], copies: int, rate: float, mask: str, seed: int) -> list[Sentence]:
    """Per train sentence, ``copies`` sentences with each word replaced by ``mask`` with probability
    ``rate`` (at least one word); tags unchanged."""
    rng = random.Random(f"mask:{seed}")
    out = []
    for s in train:
        for _ in range(copies):
            picked = {i for i in range(len(s.words)) if rng.random() < rate} or {rng.randrange(len(s.words))}
            out.append(Sentence([mask if i in picked else w for i, w in enumerate(s.words)], list(s.tags)))
    return out


def mask_token(tokenizers) -> str:
    """The mask token shared by all tokenizers, checked to encode as one word to exactly the mask id."""
    tokens = {t.mask_token for t in tokenizers}
    if None in tokens or len(tokens) != 1:
        raise DataError(f"--augment mask needs one mask token in every tokenizer, found {sorted(map(str, tokens))}")
    mask = tokens.pop()
    for t in tokenizers:
        ids = t([["x", mask, "y"]], is_split_into_words=True, add_special_tokens=False)["input_ids"][0]
        if ids.count(t.mask_token_id) != 1 or len(t([[mask]], is_split_into_words=True,
                                                      add_special_tokens=False)["input_ids"][0]) != 1:
            raise DataError(f"--augment mask: the tokenizer does not encode {mask!r} as its mask id "
                            f"{t.mask_token_id} (got {ids})")
    return mask


# ---------------------------------------------------------------------------- the pool
def drop_overlap(sentences: list[Sentence], refused: list[Sentence]) -> tuple[list[Sentence], int]:
    """``sentences`` without those whose words (re-split by split_words) are those of a refused one."""
    key = lambda s: tuple(_words(" ".join(s.words)))  # noqa: E731
    bad = {key(s) for s in refused}
    kept = [s for s in sentences if key(s) not in bad]
    return kept, len(sentences) - len(kept)


@dataclass
class Pool:
    sentences: list[Sentence]
    info: dict  # what went in, for run.json


def build(xargs: ExtraArgs, targs, splits, train: list[Sentence], tokenizers) -> Pool:
    """The extra sentences: ``--unlabeled`` sources, then ``--augment`` kinds (from ``train``, the
    post-holdout train split), minus those in the task's dev or test split (in full, whatever
    --limit-eval says). Raises DataError on bad input."""
    info = {"sources": {}, "augmented": {}}
    sents: list[Sentence] = []
    for spec in (xargs.unlabeled.split(",") if xargs.unlabeled else []):
        got, name = read_source(spec, targs.data_dir)
        sents += got
        info["sources"][name] = len(got)
    for kind in xargs.kinds:
        if kind == "mention-swap":
            got = mention_swap(train, xargs.augment_copies, targs.seed)
        else:
            got = mask_words(train, xargs.augment_copies, xargs.mask_rate, mask_token(tokenizers), targs.seed)
        sents += got
        info["augmented"][kind] = len(got)
    full = splits if not targs.limit_eval else corpora.load_dataset(targs.dataset, data_dir=targs.data_dir)
    sents, dropped = drop_overlap(sents, full.dev + full.test)
    if not sents:
        raise DataError("no extra sentence left (every one is in dev or test, or augmentation made none)")
    n_lab, n_extra = split_sizes(targs.batch_size, xargs.extra_share)
    info |= {"dropped_dev_test": dropped, "sentences": len(sents), "batch": [n_lab, n_extra],
             "stage1_epochs": xargs.stage1_epochs}
    parts = [f"{k} {v}" for k, v in info["sources"].items()] + [f"{k} {v}" for k, v in info["augmented"].items()]
    print(f"extra text: {', '.join(parts)}; {dropped} dropped (in dev or test of {splits.name}); "
          f"{len(sents)} sentences; batches of {n_lab} labelled + {n_extra} extra"
          + (f"; stage 1: {xargs.stage1_epochs} epochs of KD on the extra text alone" if xargs.stage1_epochs else ""))
    return Pool(sents, info)


# ---------------------------------------------------------------------------- batches and loss
def _collate(parts, labelled: list[bool]) -> dict:
    """parts: [((enc_student, enc_teacher), indices), ...] -> one batch with a ``labelled`` (B,) mask."""
    def one(k):
        items = [pair[k].items[i] for pair, idx in parts for i in idx]
        b = data_lib.collate(items, parts[0][0][k].pad_token_id)
        b.pop("index", None)
        return b
    s = one(0)
    t = s if parts[0][0][1] is parts[0][0][0] else one(1)
    return {"student": s, "teacher": t, "labels": s["labels"], "labelled": torch.tensor(labelled)}


def _stream(enc, size: int, seed: int, bucket: bool):
    """Index groups of exactly ``size`` from endless passes over ``enc``, each pass shuffled by (seed, pass)."""
    buf = []
    for c in itertools.count():
        for b in data_lib.batches(enc, size, shuffle=True, seed=seed * 10007 + c, bucket=bucket):
            buf += b["index"].tolist()
            while len(buf) >= size:
                yield buf[:size]
                buf = buf[size:]


def mixed_batches(lab, extra, n_lab: int, n_extra: int, seed: int, bucket: bool):
    """One pass over the labelled pairs ``lab`` = (enc_student, enc_teacher) in groups of ``n_lab``,
    each joined by ``n_extra`` sentences of the ``extra`` pairs; everything a function of ``seed``."""
    stream = _stream(extra[0], n_extra, seed, bucket)
    for b in data_lib.batches(lab[0], n_lab, shuffle=True, seed=seed, bucket=bucket):
        li, ei = b["index"].tolist(), next(stream)
        yield _collate([(lab, li), (extra, ei)], [True] * len(li) + [False] * len(ei))


def extra_batches(extra, batch_size: int, seed: int, bucket: bool):
    """Stage 1: one pass over the extra pairs alone."""
    for b in data_lib.batches(extra[0], batch_size, shuffle=True, seed=seed, bucket=bucket):
        idx = b["index"].tolist()
        yield _collate([(extra, idx)], [False] * len(idx))


def plan(xargs: ExtraArgs, targs, lab, extra) -> tuple:
    """(epoch -> batches, steps per mixed epoch, total steps) for the labelled pairs ``lab`` and the
    extra pairs ``extra``, each (enc_student, enc_teacher); epochs up to --stage1-epochs are stage 1."""
    n_lab, n_extra = split_sizes(targs.batch_size, xargs.extra_share)
    steps, stage1 = -(-len(lab[0]) // n_lab), xargs.stage1_epochs
    total = steps * (targs.epochs - stage1) + -(-len(extra[0]) // targs.batch_size) * stage1

    def batches(epoch):
        seed = targs.seed * 1000 + epoch
        if epoch <= stage1:
            return extra_batches(extra, targs.batch_size, seed, targs.bucket)
        return mixed_batches(lab, extra, n_lab, n_extra, seed, targs.bucket)
    return batches, steps, total


def rows(batch: dict, labelled: torch.Tensor | None) -> dict:
    """The labelled sentences of a batch (``labelled`` None: the batch itself)."""
    if labelled is None:
        return batch
    sub = lambda d: {k: v[labelled] for k, v in d.items()}  # noqa: E731
    return {"student": sub(batch["student"]), "teacher": sub(batch["teacher"]), "labels": batch["labels"][labelled]}


def loss(method: str, s, tags: torch.Tensor, targets: dict, alpha: float, temperature: float,
         labelled: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """``alpha * NLL(labelled) + (1 - alpha) * KD(all)``; KD alone when no sentence is labelled;
    ``labelled`` None: :func:`training.losses.distill_loss` itself. ``s``: student Potentials (B, N, L),
    ``tags`` (B, N), ``labelled`` (B,) bool."""
    if labelled is None:
        return losses.distill_loss(method, s, tags, targets, alpha, temperature)
    kd = losses.kd_loss(method, s, targets, temperature)
    if not bool(labelled.any()):
        return kd, {"kd": kd.detach()}
    task = losses.nll(type(s)(s.emissions[labelled], s.mask[labelled], s.transitions, s.start, s.end),
                      tags[labelled])
    return alpha * task + (1 - alpha) * kd, {"nll": task.detach(), "kd": kd.detach()}
