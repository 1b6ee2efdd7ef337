"""The tagging pipeline: raw text (or words) -> entities, with a pluggable source of emissions.

Every model of the toolkit is tagged by this one pipeline: the ONNX Runtime engine of the server
(:class:`serving.engine.NerEngine`, emissions from :class:`export.runtime.OrtEmissions`), the
PyTorch checkpoints of the demo and the benchmarks (:class:`training.backend.TorchEmissions`), the
parity check of the exporter and the export evaluation. It imports NumPy, tokenizers and the
standard library (plus :mod:`export.viterbi`) -- never torch or transformers -- because the
serving path runs it.

Pipeline for one call of :meth:`Tagger.predict`::

    raw text --split_words--> words + character offsets
             --tokenizers----> sub-tokens; align: the first sub-token of every word
             --windows-------> pieces of <= max_length sub-tokens (long inputs only)
             --backend-------> logits (B, S, L), batched by length
             --gather--------> emissions (B, N, L) at the first sub-token of each word
             --NumPy Viterbi-> best tag per word;  forward-backward -> entity confidences
             --IOB2----------> entities with character offsets into the original text

Emissions backend
    Any object with ``input_names`` (the inputs it reads, among ``input_ids``, ``attention_mask``,
    ``token_type_ids``), ``batch_invariant`` (``False``: run every window alone, see below) and
    ``logits(feed) -> (B, S, L)`` for right-padded int64 ``(B, S)`` inputs (:class:`Emissions`).
    The CRF is not the backend's: it is passed to :class:`Tagger` (``crf.json`` of an export, or
    the checkpoint's CRF).

Word splitting (raw text)
    ``WORD_RE``: a run of word characters (``\\w``: letters, digits, underscore, any script, plus
    combining accents) is one word, and every other visible non-space character (punctuation,
    symbols, emoji) is a word of its own; control and zero-width / format characters separate
    words like spaces. ``"Merkel's U.S.-visit."`` ->
    ``Merkel ' s U . S . - visit .``. This is close to the CoNLL-2003 tokenization the models are
    trained on (punctuation separated from words) but simpler: CoNLL keeps ``U.S.`` or ``n't`` as
    one token. Use :meth:`Tagger.predict_words` to pass your own tokenization.

Words without sub-tokens
    A word the tokenizer turns into nothing (``"\\u200b"``, ``"\\x00"``, ``""``) is replaced by the
    unk token before encoding -- exactly as :func:`training.data.encode` does in training -- so it
    still gets a tag and every word stays aligned (:func:`align`).

Long inputs
    Nothing is truncated silently. When a sentence needs more than ``max_length`` sub-tokens
    (special tokens included) it is cut into overlapping windows of whole words, each fitting
    ``max_length``; consecutive windows overlap by about ``window_overlap`` of the budget. Every
    word takes its tag from the window in which it is most central (largest distance to a cut
    window edge; the edges of the text itself do not count as cuts). A single word longer than the
    budget gets a window of its own (its first sub-token is all the CRF needs). Evaluation asks for
    ``truncate=True`` instead: the protocol of training (:func:`training.data.encode`), where the
    words after ``max_length`` sub-tokens are cut and tagged ``O`` (and counted).

Batching
    The windows of one call are sorted by length and cut into batches of at most ``batch_size``
    (:func:`plan_batches`): the cut points minimise the padded sub-tokens the backend runs plus a
    fixed cost per batch (``batch_cost_tokens``, in sub-tokens: the backend's per-call overhead), so
    32 texts of very different lengths become a few batches of similar lengths, not one batch padded
    to the longest.

Batch invariance
    Windows are batched by length. A text's entities and scores do not depend on the other texts
    of the call when the backend is batch-invariant (every operation per position or per sequence,
    padded keys get exactly zero attention); a backend that is not (``int8-dynamic``: activation
    scales over the whole batch tensor) has every window run alone (batch of one, no padding)
    whatever ``batch_size`` says: reproducible, but without batching's speed-up.

Confidence
    An entity's ``score`` is the posterior probability, under the CRF, of the span's exact tag
    sequence: ``P(y_s..y_e = t_s..t_e | x)``, computed exactly from the forward-backward node and
    edge marginals by the chain rule ``P(y_s) * prod_{i=s+1..e} P(y_{i-1}, y_i) / P(y_{i-1})``
    (:func:`span_probability`). It is not a softmax of emissions, it accounts for the transitions,
    and it is at most the smallest token marginal in the span. It does not include the event that
    the span ends there (the next word's tag). For a span that no single window contains (only
    possible for an entity longer than the window overlap) it is the product of the probabilities
    of its pieces, each in the window that tagged it.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable, Protocol, Sequence

import numpy as np

from export import viterbi as np_crf

__all__ = ["Tagger", "Emissions", "Entity", "Document", "Window", "split_words", "tags_to_spans",
           "span_probability", "plan_windows", "plan_batches", "merge_windows", "span_score", "align", "kept_words", "decode",
           "WORD_RE", "DEFAULT_WINDOW_OVERLAP", "DEFAULT_BATCH_COST_TOKENS", "STAGES"]

# invisible characters that separate words without being words: C0/C1 controls, zero-width and
# bidi format characters, BOM
_INVISIBLE = "\x00-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff"
# a run of word characters (incl. combining diacritics) | one other visible non-space character
WORD_RE = re.compile(r"[\w\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]+"
                     rf"|[^\w\s{_INVISIBLE}]")
DEFAULT_WINDOW_OVERLAP = 0.25
# a backend call's fixed cost, in padded sub-tokens (plan_batches). Chosen on CoNLL-2003 test texts sent 32 per
# call to the fp32 engine (2 threads, Intel Xeon): sentences/s with cost 0 / 16 / 32 / 64 / 128 / inf (one batch
# padded to the longest): 1-layer student 815 / 1256 / 1386 / 1449 / 1406 / 878, 3-layer 446 / 605 / 619 / 633 /
# 602 / 358, 6-layer teacher 245 / 330 / 359 / 358 / 347 / 196.
DEFAULT_BATCH_COST_TOKENS = 64
# seconds per stage in the timings; "onnx" is the emissions backend (ONNX Runtime in the engine)
STAGES = ("tokenize", "onnx", "viterbi", "confidence", "postprocess")
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


class Emissions(Protocol):
    """A source of emissions for :class:`Tagger` (see the module doc)."""

    input_names: Sequence[str]
    batch_invariant: bool

    def logits(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """``(B, S, L)`` logits per sub-token for right-padded int64 ``(B, S)`` inputs."""
        ...


@dataclass(frozen=True)
class Entity:
    """One entity. ``start``/``end``: character offsets into the input text (``text[start:end]``
    is the entity); for pre-split input (:meth:`Tagger.predict_words`) into
    ``" ".join(words)``. ``word_start``/``word_end``: word indices (end exclusive)."""

    text: str
    label: str
    start: int
    end: int
    score: float
    word_start: int
    word_end: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Document:
    """Words of one input and their character offsets into ``text``."""

    text: str
    words: list[str]
    offsets: list[tuple[int, int]]

    @classmethod
    def from_text(cls, text: str) -> "Document":
        words, offsets = split_words(text)
        return cls(text, words, offsets)

    @classmethod
    def from_words(cls, words: Sequence[str]) -> "Document":
        words = [str(w) for w in words]
        offsets, pos = [], 0
        for w in words:
            offsets.append((pos, pos + len(w)))
            pos += len(w) + 1
        return cls(" ".join(words), words, offsets)


def split_words(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Words of a raw text and their ``(start, end)`` character offsets (see module doc)."""
    words, offsets = [], []
    for m in WORD_RE.finditer(text):
        words.append(m.group())
        offsets.append(m.span())
    return words, offsets


def tags_to_spans(tags: Sequence[str]) -> list[tuple[int, int, str]]:
    """IOB2 tags -> ``(first_word, last_word_exclusive, type)``. Lenient like seqeval's default: an
    ``I-X`` that does not continue an ``X`` span starts one; a label without ``B-``/``I-`` prefix
    is a type whose consecutive words form one span."""
    spans = []
    cur_type, cur_start = None, 0
    for i, tag in enumerate(list(tags) + ["O"]):
        if tag == "O":
            prefix, typ = "O", None
        elif tag[:2] in ("B-", "I-"):
            prefix, typ = tag[0], tag[2:]
        else:
            prefix, typ = "I", tag
        if cur_type is not None and (prefix != "I" or typ != cur_type):
            spans.append((cur_start, i, cur_type))
            cur_type = None
        if typ is not None and cur_type is None:
            cur_type, cur_start = typ, i
    return spans


def span_probability(node: np.ndarray, edge: np.ndarray, tags: Sequence[int], start: int, end: int) -> float:
    """``P(y_start..y_{end-1} = tags[start:end])`` for one sequence from its CRF marginals
    (``node`` ``(N, L)``, ``edge`` ``(N-1, L, L)`` as returned by :func:`export.viterbi.marginals`),
    exact by the Markov property: ``P(y_s) * prod_i P(y_{i-1}, y_i) / P(y_{i-1})``."""
    p = float(node[start, tags[start]])
    for i in range(start + 1, end):
        prev = float(node[i - 1, tags[i - 1]])
        if prev <= 0.0 or p <= 0.0:
            return 0.0
        p *= float(edge[i - 1, tags[i - 1], tags[i]]) / prev
    return min(max(p, 0.0), 1.0)


# --------------------------------------------------------------------------- alignment
def align(word_ids: Sequence[int | None], n_words: int) -> tuple[list[int], list[int]]:
    """Word -> sub-token alignment from a tokenizer's ``word_ids`` (``None`` for special tokens):
    the position of every word's first sub-token (the CRF's input for that word; ``-1`` when the
    word has none: the tokenizer turns it into nothing, or truncation cut it) and its number of
    sub-tokens. The one alignment of the toolkit: :func:`training.data.encode` and :class:`Tagger`."""
    first, counts = [-1] * n_words, [0] * n_words
    for pos, w in enumerate(word_ids):
        if w is not None:
            if counts[w] == 0:
                first[w] = pos
            counts[w] += 1
    return first, counts


def kept_words(first: Sequence[int]) -> int:
    """How many words right truncation kept: the leading words that have a first sub-token
    (:func:`align`). :class:`RuntimeError` when a later word has one (a word without sub-tokens
    inside the sentence: it should have been replaced by the unk token)."""
    kept = next((i for i, f in enumerate(first) if f < 0), len(first))
    if any(f >= 0 for f in first[kept:]):
        raise RuntimeError(f"word {kept} has no sub-token")
    return kept


def decode(emissions: np.ndarray, mask: np.ndarray, crf: dict) -> list[list[int]]:
    """Viterbi tag ids of every sequence (its length from ``mask``) under ``crf`` (``transitions``,
    ``start``, ``end``): :func:`export.viterbi.viterbi`, trimmed."""
    _, paths = np_crf.viterbi(emissions, mask, crf["transitions"], crf["start"], crf["end"])
    return [paths[b, :n].tolist() for b, n in enumerate(np.asarray(mask).sum(1).tolist())]


# --------------------------------------------------------------------------- windows
def plan_windows(counts: Sequence[int], budget: int, overlap: float = DEFAULT_WINDOW_OVERLAP) -> list[tuple[int, int]]:
    """Cut words with ``counts[i]`` sub-tokens into windows ``[lo, hi)`` of at most ``budget``
    sub-tokens (a single bigger word gets a window of its own) that overlap by about
    ``overlap * budget`` sub-tokens. One window when everything fits."""
    n = len(counts)
    if n == 0:
        return []
    budget = max(1, int(budget))
    want = max(1, int(round(overlap * budget)))
    windows, lo = [], 0
    while True:
        hi, used = lo, 0
        while hi < n and (hi == lo or used + counts[hi] <= budget):
            used += counts[hi]
            hi += 1
        windows.append((lo, hi))
        if hi >= n:
            return windows
        # the next window repeats about `want` sub-tokens of this one, and still reaches past `hi`
        new_lo, back = hi, 0
        while new_lo - 1 > lo and back + counts[new_lo - 1] <= min(want, budget - counts[hi]):
            new_lo -= 1
            back += counts[new_lo]
        lo = max(new_lo, lo + 1)


def _centrality(i: int, lo: int, hi: int, n: int) -> float:
    """Distance of word ``i`` to the nearest cut edge of window ``[lo, hi)`` (text edges are no cut)."""
    left = float("inf") if lo == 0 else i - lo
    right = float("inf") if hi == n else hi - 1 - i
    return min(left, right)


def merge_windows(windows, n: int) -> list[int]:
    """Tags of ``n`` words from overlapping windows (objects with ``lo``, ``hi``, ``tags``): each word
    takes its tag from the window where it is most central, the first such window on ties."""
    if len(windows) == 1:
        return list(windows[0].tags)
    row, best = [0] * n, [-1.0] * n
    for w in windows:
        for i in range(w.lo, w.hi):
            c = _centrality(i, w.lo, w.hi, n)
            if c > best[i]:
                best[i], row[i] = c, w.tags[i - w.lo]
    return row


def span_score(windows, tags, lo: int, hi: int, n: int, window_prob) -> float:
    """CRF probability of the merged ``tags[lo:hi]``: from the window that holds the span most
    centrally; a span longer than any window overlap is the product over its pieces, each from the
    window that tagged it (the rule of :func:`merge_windows`). ``window_prob(w, tags, a, b)`` gives
    the probability of ``tags[a:b]`` under window ``w``."""
    inside = [w for w in windows if w.lo <= lo and hi <= w.hi]
    if inside:
        w = max(inside, key=lambda w: min(_centrality(lo, w.lo, w.hi, n), _centrality(hi - 1, w.lo, w.hi, n)))
        return window_prob(w, tags, lo, hi)

    def tagger(i):
        return max((w for w in windows if w.lo <= i < w.hi), key=lambda w: _centrality(i, w.lo, w.hi, n))

    p, i = 1.0, lo
    while i < hi:
        w, j = tagger(i), i + 1
        while j < hi and tagger(j) is w:
            j += 1
        p *= window_prob(w, tags, i, j)
        i = j
    return p


@dataclass
class Window:
    """Words ``[lo, hi)`` of document ``doc`` as one sequence for the backend."""

    doc: int
    lo: int
    hi: int
    ids: list[int]
    first: list[int]          # position of the first sub-token of each word of the window
    tags: list[int] = field(default_factory=list)
    emissions: np.ndarray | None = None   # (n, L) at the first sub-tokens
    node: np.ndarray | None = None
    edge: np.ndarray | None = None
    logits: np.ndarray | None = None      # (len(ids), L), only with run(..., keep_logits=True)


# --------------------------------------------------------------------------- the pipeline
def plan_batches(lengths: Sequence[int], batch_size: int, cost_tokens: float = DEFAULT_BATCH_COST_TOKENS
                 ) -> list[tuple[int, int]]:
    """Cut windows sorted by length (``lengths`` ascending) into batches ``[(start, end), ...]`` of at most
    ``batch_size``, minimising ``sum(cost_tokens + size * longest)`` over the batches: the padded sub-tokens
    run plus a fixed cost per batch (exact, by dynamic programming over the cut points: O(n * batch_size)).
    ``cost_tokens`` = inf gives plain fixed-size batches; 0 never pads."""
    n = len(lengths)
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if any(a > b for a, b in zip(lengths, lengths[1:])):
        raise ValueError("plan_batches needs lengths in ascending order")
    if n == 0:
        return []
    if not np.isfinite(cost_tokens):
        return [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    lengths = np.asarray(lengths, dtype=np.float64)
    best = np.zeros(n + 1)  # best[j]: the least cost of the first j windows
    cut = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):
        i = np.arange(max(0, j - batch_size), j)
        cost = best[i] + cost_tokens + (j - i) * lengths[j - 1]  # the batch i..j-1 is padded to lengths[j-1]
        k = int(np.argmin(cost))  # ties: the earliest start, i.e. the largest batch
        best[j], cut[j] = cost[k], i[k]
    out, j = [], n
    while j > 0:
        out.append((int(cut[j]), j))
        j = int(cut[j])
    return out[::-1]


class Tagger:
    """Words -> first sub-tokens -> emissions (``backend``) -> CRF -> entities (see module doc).

    ``tokenizer``: a ``tokenizers.Tokenizer`` or a transformers fast tokenizer (its backend is
    used); the tagger works on copies (padding off, truncation at ``max_length``). ``crf``:
    ``{"labels", "transitions", "start", "end"}`` (NumPy, e.g. :func:`export.format.read_crf`).
    ``max_length``: sub-tokens per sequence, special tokens included."""

    def __init__(self, backend: Emissions, tokenizer, crf: dict, max_length: int,
                 window_overlap: float = DEFAULT_WINDOW_OVERLAP, batch_cost_tokens: float = DEFAULT_BATCH_COST_TOKENS):
        from tokenizers import Tokenizer

        self.backend = backend
        self.labels: list[str] = list(crf["labels"])
        self.crf = crf
        self.max_length = int(max_length)
        self.window_overlap = float(window_overlap)
        self.batch_cost_tokens = float(batch_cost_tokens)
        self.batch_invariant = bool(backend.batch_invariant)
        self.outside = np.array([lab == "O" for lab in self.labels])
        source = getattr(tokenizer, "backend_tokenizer", tokenizer).to_str()
        # the tokenizer of the windows (truncating at max_length) and one for whole inputs
        self.tokenizer = Tokenizer.from_str(source)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)
        self._tokenizer_full = Tokenizer.from_str(source)
        self._tokenizer_full.no_truncation()
        self._tokenizer_full.no_padding()
        probe = self.tokenizer.encode(["a"], is_pretokenized=True)
        self.num_special = sum(w is None for w in probe.word_ids)
        self.budget = self.max_length - self.num_special
        if self.budget < 1:
            raise ValueError(f"max_length {self.max_length} leaves no room for a word")
        unk = getattr(self.tokenizer.model, "unk_token", None)
        self.unk_token = unk if unk and self.tokenizer.token_to_id(unk) is not None else "?"
        pad = next((t for t in ("[PAD]", "<pad>") if self.tokenizer.token_to_id(t) is not None), None)
        self.pad_id = self.tokenizer.token_to_id(pad) if pad else 0
        self.last_timings: dict = {}

    # ------------------------------------------------------------------ public API
    def predict(self, texts: str | Iterable[str], batch_size: int = 32, return_timings: bool = False,
                scores: bool = True):
        """Entities of raw texts: ``list[list[Entity]]`` (one list per text; a single ``str`` is
        treated as a list of one). With ``return_timings`` also a dict of per-stage seconds
        (``tokenize``, ``onnx`` (the backend), ``viterbi``, ``confidence``, ``postprocess``,
        ``total``) and counts."""
        if isinstance(texts, str):
            texts = [texts]
        t0 = time.perf_counter()
        docs = [Document.from_text(t) for t in texts]
        split = time.perf_counter() - t0
        return self._predict_docs(docs, batch_size, return_timings, scores, extra_tokenize=split)

    def predict_words(self, sentences: Iterable[Sequence[str]], batch_size: int = 32, return_timings: bool = False,
                      scores: bool = True):
        """Entities of pre-split sentences (lists of words). Offsets refer to ``" ".join(words)``;
        ``word_start``/``word_end`` index the words."""
        docs = [Document.from_words(ws) for ws in sentences]
        return self._predict_docs(docs, batch_size, return_timings, scores)

    def tag_words(self, sentences: Iterable[Sequence[str]], batch_size: int = 32,
                  truncate: bool = False) -> list[list[str]]:
        """The Viterbi tag of every word (long sentences go through windows; with ``truncate`` the
        words after ``max_length`` sub-tokens are tagged ``O`` instead, as in training)."""
        docs = [Document.from_words(ws) for ws in sentences]
        tags, _, _ = self.tag(docs, batch_size, scores=False, truncate=truncate)
        return [[self.labels[t] for t in row] for row in tags]

    def window_lengths(self, texts: Iterable[str]) -> list[int]:
        """Sub-tokens (special tokens included) of every window the tagger would run for ``texts``:
        the sequence lengths that determine the encoder's FLOPs (:mod:`benchmarks.gemm`)."""
        return [len(w.ids) for w in self.windows([Document.from_text(t) for t in texts])]

    def run_documents(self, docs: Sequence[Document], batch_size: int = 32, scores: bool = True):
        """:meth:`predict` for prepared :class:`Document` objects (the server's micro-batches)."""
        return self._predict_docs(list(docs), batch_size, True, scores)

    # ------------------------------------------------------------------ stages
    def windows(self, docs: Sequence[Document], truncate: bool = False) -> list[Window]:
        """The sequences to run for ``docs`` (words without sub-tokens replaced by unk): one per
        document that fits ``max_length``; a longer one is cut into windows (:func:`plan_windows`)
        or, with ``truncate``, cut after ``max_length`` sub-tokens."""
        windows: list[Window] = []
        todo = [d for d, doc in enumerate(docs) if doc.words]
        if not todo:
            return windows
        encs = self._tokenizer_full.encode_batch([docs[d].words for d in todo], is_pretokenized=True)
        pieces = []  # (doc, lo, hi, words) of the inputs too long for one sequence
        for d, enc in zip(todo, encs):
            words = docs[d].words
            first, counts = align(enc.word_ids, len(words))
            if 0 in counts:  # words without sub-tokens -> unk, as in training
                words = [self.unk_token if c == 0 else w for w, c in zip(words, counts)]
                enc = self._tokenizer_full.encode(words, is_pretokenized=True)
                first, counts = align(enc.word_ids, len(words))
            if len(enc.ids) <= self.max_length:
                windows.append(Window(d, 0, len(words), enc.ids, first))
            elif truncate:
                pieces.append((d, 0, len(words), words))
            else:
                pieces += [(d, lo, hi, words[lo:hi]) for lo, hi in plan_windows(counts, self.budget,
                                                                                 self.window_overlap)]
        if pieces:
            encs = self.tokenizer.encode_batch([p[3] for p in pieces], is_pretokenized=True)
            for (d, lo, hi, words), enc in zip(pieces, encs):
                first, _ = align(enc.word_ids, hi - lo)
                kept = kept_words(first)
                if kept < hi - lo and not truncate:  # cannot happen by construction (windows fit the budget)
                    raise RuntimeError(f"window {lo}:{hi} of input {d} lost a word to truncation")
                windows.append(Window(d, lo, lo + kept, enc.ids, first[:kept]))
        return windows

    def run(self, windows: Sequence[Window], batch_size: int = 32, scores: bool = True, timings: dict | None = None,
            keep_logits: bool = False) -> None:
        """Emissions, Viterbi tags and (with ``scores``, for windows whose path has an entity) CRF
        marginals of every window, in batches of similar length (:func:`plan_batches`; one window per
        batch when the backend is not batch-invariant). Fills the windows' fields; adds to ``timings``."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        timings = timings if timings is not None else {k: 0.0 for k in STAGES}
        for k in ("batches", "sub_tokens", "padded_sub_tokens"):
            timings.setdefault(k, 0)
        if not self.batch_invariant:  # e.g. int8-dynamic: a batch would mix the texts' activation scales
            batch_size = 1
        order = sorted(range(len(windows)), key=lambda i: len(windows[i].ids))
        trans, start, end = self.crf["transitions"], self.crf["start"], self.crf["end"]
        names = list(self.backend.input_names)
        for b0, b1 in plan_batches([len(windows[i].ids) for i in order], batch_size, self.batch_cost_tokens):
            chunk = [windows[i] for i in order[b0:b1]]
            t0 = time.perf_counter()
            B, S = len(chunk), max(len(w.ids) for w in chunk)
            N = max(len(w.first) for w in chunk)
            ids = np.full((B, S), self.pad_id, dtype=np.int64)
            att = np.zeros((B, S), dtype=np.int64)
            word_index = np.zeros((B, N), dtype=np.int64)
            word_mask = np.zeros((B, N), dtype=bool)
            for b, w in enumerate(chunk):
                ids[b, : len(w.ids)] = w.ids
                att[b, : len(w.ids)] = 1
                word_index[b, : len(w.first)] = w.first
                word_mask[b, : len(w.first)] = True
            feed = {"input_ids": ids, "attention_mask": att, "token_type_ids": np.zeros_like(ids)}
            feed = {k: feed[k] for k in names}
            timings["tokenize"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            logits = self.backend.logits(feed)
            timings["onnx"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            emissions = np.take_along_axis(logits, word_index[:, :, None], axis=1)
            for b, (w, tags) in enumerate(zip(chunk, decode(emissions, word_mask, self.crf))):
                w.tags = tags
                w.emissions = emissions[b, : len(w.first)]
                if keep_logits:
                    w.logits = logits[b, : len(w.ids)]
            timings["viterbi"] += time.perf_counter() - t0
            if scores:
                t0 = time.perf_counter()
                rows = [b for b, w in enumerate(chunk) if not self.outside[w.tags].all()]
                if rows:
                    n_max = max(len(chunk[b].first) for b in rows)
                    node, edge = np_crf.marginals(emissions[rows, :n_max], word_mask[rows, :n_max], trans, start, end)
                    for r, b in enumerate(rows):
                        chunk[b].node, chunk[b].edge = node[r], edge[r]
                timings["confidence"] += time.perf_counter() - t0
            timings["batches"] += 1
            timings["sub_tokens"] += int(att.sum())
            timings["padded_sub_tokens"] += B * S

    def tag(self, docs: Sequence[Document], batch_size: int = 32, scores: bool = True, truncate: bool = False):
        """``(tags, windows_of, timings)``: tag ids per word of every document (windows merged: each
        word from the window where it is most central; with ``truncate`` the cut words are ``O``),
        the windows of every document, and the timings and counts (incl. ``truncated_words``)."""
        timings = {k: 0.0 for k in STAGES}
        timings.update(texts=len(docs), windows=0, batches=0, sub_tokens=0, padded_sub_tokens=0, truncated_words=0)
        t0 = time.perf_counter()
        windows = self.windows(docs, truncate)
        timings["tokenize"] += time.perf_counter() - t0
        timings["windows"] = len(windows)
        self.run(windows, batch_size, scores, timings)
        t0 = time.perf_counter()
        windows_of: list[list[Window]] = [[] for _ in docs]
        for w in windows:
            windows_of[w.doc].append(w)
        tags = [merge_windows(windows_of[d], len(doc.words)) for d, doc in enumerate(docs)]
        for d, doc in enumerate(docs):
            cut = len(doc.words) - len(tags[d])
            if cut:  # only with truncate
                tags[d] += [self.labels.index("O")] * cut
                timings["truncated_words"] += cut
        timings["postprocess"] += time.perf_counter() - t0
        return tags, windows_of, timings

    # ------------------------------------------------------------------ internals
    def _predict_docs(self, docs, batch_size, return_timings, scores, extra_tokenize=0.0):
        t_start = time.perf_counter() - extra_tokenize
        tags, windows_of, timings = self.tag(docs, batch_size, scores)
        timings["tokenize"] += extra_tokenize
        t0 = time.perf_counter()
        out = [self._entities(doc, tags[d], windows_of[d], scores) for d, doc in enumerate(docs)]
        timings["postprocess"] += time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_start
        self.last_timings = timings
        return (out, timings) if return_timings else out

    def _span_score(self, tags, lo, hi, windows, n) -> float:
        return span_score(windows, tags, lo, hi, n, self._window_prob)

    def _window_prob(self, w, tags, lo, hi) -> float:
        if w.node is None:  # marginals are computed in batch only for windows whose own path has entities
            c = self.crf
            node, edge = np_crf.marginals(w.emissions[None], np.ones((1, len(w.emissions)), dtype=bool),
                                          c["transitions"], c["start"], c["end"])
            w.node, w.edge = node[0], edge[0]
        local = list(tags[w.lo:w.hi])
        return span_probability(w.node, w.edge, local, lo - w.lo, hi - w.lo)

    def _entities(self, doc: Document, tags, windows, scores) -> list[Entity]:
        if not doc.words:
            return []
        out = []
        n = len(doc.words)
        for lo, hi, typ in tags_to_spans([self.labels[t] for t in tags]):
            s, e = doc.offsets[lo][0], doc.offsets[hi - 1][1]
            score = self._span_score(tags, lo, hi, windows, n) if scores else float("nan")
            out.append(Entity(doc.text[s:e], typ, s, e, round(score, 6), lo, hi))
        return out
