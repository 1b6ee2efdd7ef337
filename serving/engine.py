"""ONNX Runtime inference engine for an exported BERT-CRF (see :mod:`export.format`).

This module is the whole serving path. It imports NumPy, onnxruntime, tokenizers and the standard
library (plus :mod:`export.format` and :mod:`export.viterbi`, which are NumPy-only) -- never torch
or transformers, so the ``serve`` install (and the Docker image) stays small.

Pipeline for one call of :meth:`NerEngine.predict`::

    raw text --split_words--> words + character offsets
             --tokenizers----> sub-tokens (word_ids: first sub-token of every word)
             --windows-------> pieces of <= max_length sub-tokens (long inputs only)
             --ONNX Runtime--> logits (B, S, L), batched by length
             --gather--------> emissions (B, N, L) at the first sub-token of each word
             --NumPy Viterbi-> best tag per word;  forward-backward -> entity confidences
             --IOB2----------> entities with character offsets into the original text

Word splitting (raw text)
    ``WORD_RE``: a run of word characters (``\\w``: letters, digits, underscore, any script, plus
    combining accents) is one word, and every other visible non-space character (punctuation,
    symbols, emoji) is a word of its own; control and zero-width / format characters separate
    words like spaces. ``"Merkel's U.S.-visit."`` ->
    ``Merkel ' s U . S . - visit .``. This is close to the CoNLL-2003 tokenization the models are
    trained on (punctuation separated from words) but simpler: CoNLL keeps ``U.S.`` or ``n't`` as
    one token. Use :meth:`NerEngine.predict_words` to pass your own tokenization.

Words without sub-tokens
    A word the tokenizer turns into nothing (``"\\u200b"``, ``"\\x00"``, ``""``) is replaced by the
    unk token before encoding -- exactly as :func:`training.data.encode` does in training -- so it
    still gets a tag and every word stays aligned.

Long inputs
    Nothing is truncated silently. When a sentence needs more than ``max_length`` sub-tokens
    (special tokens included) it is cut into overlapping windows of whole words, each fitting
    ``max_length``; consecutive windows overlap by about ``window_overlap`` of the budget. Every
    word takes its tag from the window in which it is most central (largest distance to a cut
    window edge; the edges of the text itself do not count as cuts). A single word longer than the
    budget gets a window of its own (its first sub-token is all the CRF needs).

Batch invariance
    A text's entities and scores do not depend on the other texts of the call (or, in the server, of
    other requests) for the fp32 and static int8 graphs: every operation is per position or per
    sequence, padded keys get exactly zero attention, and static int8 uses fixed activation scales
    (tested: alone vs in batches of other lengths). ``int8-dynamic`` computes each activation scale
    over the whole batch tensor, so with it the engine runs every window alone (batch of one, no
    padding) whatever ``batch_size`` says: reproducible, but without batching's speed-up.

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

import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from export import format as fmt
from export import viterbi as np_crf

__all__ = ["NerEngine", "Entity", "Document", "EngineError", "split_words", "tags_to_spans",
           "span_probability", "plan_windows", "session_options", "WORD_RE"]

# invisible characters that separate words without being words: C0/C1 controls, zero-width and
# bidi format characters, BOM
_INVISIBLE = "\x00-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff"
# a run of word characters (incl. combining diacritics) | one other visible non-space character
WORD_RE = re.compile(r"[\w\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]+"
                     rf"|[^\w\s{_INVISIBLE}]")
DEFAULT_WINDOW_OVERLAP = 0.25
STAGES = ("tokenize", "onnx", "viterbi", "confidence", "postprocess")


class EngineError(RuntimeError):
    """The engine cannot be built (bad export directory, missing provider, ...)."""


GRAPH_OPTIMIZATION = ("all", "extended", "basic", "disable")
EXECUTION_MODES = ("sequential", "parallel")


def session_options(threads: int | None = None, inter_op_threads: int = 1, spinning: bool = False,
                    graph_optimization: str = "all", execution_mode: str = "sequential"):
    """ONNX Runtime session options of the engine (also used by :mod:`benchmarks.gemm`, so that the
    GEMM limit is measured with the same settings). ``threads``: intra-op threads (``None``: ONNX
    Runtime's default, one per core); ``inter_op_threads``: threads running independent nodes in
    parallel (only with ``execution_mode="parallel"``); ``spinning``: idle worker threads busy-wait
    for the next run (off by default: in a server they would take the CPU from the event loop and
    the tokenizer); ``graph_optimization``: ONNX Runtime's graph optimisation level."""
    import onnxruntime as ort

    if threads is not None and int(threads) < 1:
        raise EngineError(f"threads must be >= 1, got {threads}")
    if int(inter_op_threads) < 1:
        raise EngineError(f"inter_op_threads must be >= 1, got {inter_op_threads}")
    if graph_optimization not in GRAPH_OPTIMIZATION:
        raise EngineError(f"unknown graph_optimization {graph_optimization!r}: use {', '.join(GRAPH_OPTIMIZATION)}")
    if execution_mode not in EXECUTION_MODES:
        raise EngineError(f"unknown execution_mode {execution_mode!r}: use {', '.join(EXECUTION_MODES)}")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.inter_op_num_threads = int(inter_op_threads)
    if threads:
        so.intra_op_num_threads = int(threads)
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[graph_optimization]
    so.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if execution_mode == "parallel"
                         else ort.ExecutionMode.ORT_SEQUENTIAL)
    return so


@dataclass(frozen=True)
class Entity:
    """One entity. ``start``/``end``: character offsets into the input text (``text[start:end]``
    is the entity); for pre-split input (:meth:`NerEngine.predict_words`) into
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
class _Window:
    doc: int
    lo: int
    hi: int
    ids: list[int]
    first: list[int]          # position of the first sub-token of each word of the window
    tags: list[int] = field(default_factory=list)
    emissions: np.ndarray | None = None   # (n, L) at the first sub-tokens
    node: np.ndarray | None = None
    edge: np.ndarray | None = None


class NerEngine:
    """Named-entity recognition with an exported BERT-CRF on ONNX Runtime (see module doc)."""

    def __init__(self, session, tokenizer, crf: dict, manifest: dict, *, export_dir: str | os.PathLike = "",
                 precision: str = "fp32", device: str = "cpu", threads: int | None = None,
                 window_overlap: float = DEFAULT_WINDOW_OVERLAP, io_binding: bool = False,
                 ort_options: dict | None = None):
        self.session = session
        self.tokenizer = tokenizer
        self.labels: list[str] = list(crf["labels"])
        self.crf = crf
        self.manifest = manifest
        self.export_dir = str(export_dir)
        self.precision = precision
        self.device = device
        self.threads = threads
        self.window_overlap = float(window_overlap)
        self.batch_invariant = fmt.batch_invariant(manifest, precision)
        self.io_binding = bool(io_binding)
        self.ort_options = dict(ort_options or {})
        self.max_length = int(manifest[fmt.K_MAX_LENGTH])
        self.input_names = [i.name for i in session.get_inputs()]
        self.outside = np.array([lab == "O" for lab in self.labels])
        # a second tokenizer without truncation: sub-token counts of whole inputs
        from tokenizers import Tokenizer

        self._tokenizer_full = Tokenizer.from_str(tokenizer.to_str())
        self._tokenizer_full.no_truncation()
        self._tokenizer_full.no_padding()
        tokenizer.no_padding()
        tokenizer.enable_truncation(self.max_length)
        probe = tokenizer.encode(["a"], is_pretokenized=True)
        self.num_special = sum(w is None for w in probe.word_ids)
        self.budget = self.max_length - self.num_special
        if self.budget < 1:
            raise EngineError(f"max_length {self.max_length} leaves no room for a word")
        model = tokenizer.model
        unk = getattr(model, "unk_token", None)
        self.unk_token = unk if unk and tokenizer.token_to_id(unk) is not None else "?"
        pad = next((t for t in ("[PAD]", "<pad>") if tokenizer.token_to_id(t) is not None), None)
        self.pad_id = tokenizer.token_to_id(pad) if pad else 0
        self.last_timings: dict = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dir(cls, export_dir: str | os.PathLike, device: str = "cpu", threads: int | None = None,
                 precision: str = "fp32", window_overlap: float = DEFAULT_WINDOW_OVERLAP,
                 spinning: bool = False, inter_op_threads: int = 1, graph_optimization: str = "all",
                 execution_mode: str = "sequential", io_binding: bool = False) -> "NerEngine":
        """Load an export directory (``python -m export.onnx``).

        ``device``: ``cpu`` or ``cuda`` (CUDAExecutionProvider; an error lists the available
        providers when it is missing). ``threads``: ONNX Runtime intra-op threads (``None``: its
        default, one per core). ``precision``: ``fp32`` (``model.onnx``), ``int8`` (static) or
        ``int8-dynamic``. ``spinning``, ``inter_op_threads``, ``graph_optimization``,
        ``execution_mode``: see :func:`session_options`. ``io_binding``: run through an ONNX Runtime
        IO binding (inputs bound, the output allocated by ONNX Runtime) instead of ``session.run``."""
        import onnxruntime as ort
        from tokenizers import Tokenizer

        try:
            manifest = fmt.read_manifest(export_dir)
            crf = fmt.read_crf(export_dir)
            path = fmt.model_path(export_dir, precision, manifest)
        except fmt.ExportFormatError as e:
            raise EngineError(str(e)) from None
        if crf["labels"] != list(manifest[fmt.K_LABELS]):
            raise EngineError(f"{export_dir}: crf.json labels differ from the manifest's labels")
        tok_path = Path(export_dir) / fmt.TOKENIZER_FILE
        if not tok_path.is_file():
            raise EngineError(f"{export_dir}: missing {fmt.TOKENIZER_FILE}")
        try:
            tokenizer = Tokenizer.from_file(str(tok_path))
        except Exception as e:
            raise EngineError(f"{tok_path}: unreadable tokenizer: {e}") from None
        available = ort.get_available_providers()
        if device == "cpu":
            providers = ["CPUExecutionProvider"]
        elif device == "cuda":
            if "CUDAExecutionProvider" not in available:
                raise EngineError("device 'cuda' needs onnxruntime's CUDAExecutionProvider (pip install "
                                  f"onnxruntime-gpu); this onnxruntime has: {', '.join(available)}")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            raise EngineError(f"unknown device {device!r}: use cpu or cuda")
        ort_options = {"spinning": bool(spinning), "inter_op_threads": int(inter_op_threads),
                       "graph_optimization": graph_optimization, "execution_mode": execution_mode}
        so = session_options(threads, **ort_options)
        try:
            session = ort.InferenceSession(str(path), so, providers=providers)
        except Exception as e:
            raise EngineError(f"{path}: ONNX Runtime could not load the model: {e}") from None
        if device == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
            raise EngineError("CUDAExecutionProvider is installed but could not be initialised (CUDA / cuDNN "
                              f"libraries?); session providers: {session.get_providers()}")
        return cls(session, tokenizer, crf, manifest, export_dir=export_dir, precision=precision, device=device,
                   threads=threads, window_overlap=window_overlap, io_binding=io_binding, ort_options=ort_options)

    def info(self) -> dict:
        """A summary of the model and the engine settings (``GET /v1/model``)."""
        m = self.manifest
        src = m.get(fmt.K_SOURCE) or {}
        models = m.get(fmt.K_MODELS) or {}
        return {
            "labels": self.labels,
            "entity_types": sorted({lab[2:] if lab[:2] in ("B-", "I-") else lab for lab in self.labels
                                    if lab != "O"}),
            "precision": self.precision,
            "precisions_available": list(m.get(fmt.K_PRECISIONS, [])),
            "batch_invariant": self.batch_invariant,
            "device": self.device,
            "providers": list(self.session.get_providers()),
            "threads": self.threads,
            "ort_options": {**self.ort_options, "io_binding": self.io_binding},
            "max_length": self.max_length,
            "manifest": {
                "format": m.get(fmt.K_FORMAT), "version": m.get(fmt.K_VERSION),
                "created_at": m.get(fmt.K_CREATED), "kind": m.get(fmt.K_KIND), "method": m.get(fmt.K_METHOD),
                "opset": m.get(fmt.K_OPSET), "inputs": m.get(fmt.K_INPUTS), "model": m.get(fmt.K_MODEL),
                "model_file": (models.get(self.precision) or {}).get("file"),
                "model_bytes": (models.get(self.precision) or {}).get("bytes"),
                "model_sha256": (models.get(self.precision) or {}).get("sha256"),
                "optimized": (m.get(fmt.K_OPTIMIZE) or {}).get("applied"),
                "source": {k: src.get(k) for k in ("sha256", "epoch", "saved_at", "metrics")},
                "parity": (m.get(fmt.K_PARITY) or {}).get(self.precision),
                "quantization": (m.get(fmt.K_QUANTIZATION) or {}).get(self.precision),
            },
        }

    # ------------------------------------------------------------------ public API
    def predict(self, texts: str | Iterable[str], batch_size: int = 32, return_timings: bool = False,
                scores: bool = True):
        """Entities of raw texts: ``list[list[Entity]]`` (one list per text; a single ``str`` is
        treated as a list of one). With ``return_timings`` also a dict of per-stage seconds
        (``tokenize``, ``onnx``, ``viterbi``, ``confidence``, ``postprocess``, ``total``) and counts."""
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

    def tag_words(self, sentences: Iterable[Sequence[str]], batch_size: int = 32) -> list[list[str]]:
        """The Viterbi tag of every word (no truncation: long sentences go through windows)."""
        docs = [Document.from_words(ws) for ws in sentences]
        tags, _, _ = self._tag_docs(docs, batch_size, scores=False)
        return [[self.labels[t] for t in row] for row in tags]

    def window_lengths(self, texts: Iterable[str]) -> list[int]:
        """Sub-tokens (special tokens included) of every window the engine would run for ``texts``:
        the sequence lengths that determine the encoder's FLOPs (:mod:`benchmarks.gemm`)."""
        return [len(w.ids) for w in self._encode_full([Document.from_text(t) for t in texts])]

    def run_documents(self, docs: Sequence[Document], batch_size: int = 32, scores: bool = True):
        """:meth:`predict` for prepared :class:`Document` objects (the server's micro-batches)."""
        return self._predict_docs(list(docs), batch_size, True, scores)

    # ------------------------------------------------------------------ internals
    def _predict_docs(self, docs, batch_size, return_timings, scores, extra_tokenize=0.0):
        t_start = time.perf_counter() - extra_tokenize
        tags, windows_of, timings = self._tag_docs(docs, batch_size, scores)
        timings["tokenize"] += extra_tokenize
        t0 = time.perf_counter()
        out = [self._entities(doc, tags[d], windows_of[d], scores) for d, doc in enumerate(docs)]
        timings["postprocess"] += time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_start
        self.last_timings = timings
        return (out, timings) if return_timings else out

    def _encode_full(self, docs):
        """Windows for every document (encodings without truncation; long inputs cut)."""
        windows: list[_Window] = []
        todo = [d for d, doc in enumerate(docs) if doc.words]
        if not todo:
            return windows
        encs = self._tokenizer_full.encode_batch([docs[d].words for d in todo], is_pretokenized=True)
        long_pieces = []  # (doc, lo, hi, words)
        for d, enc in zip(todo, encs):
            words = docs[d].words
            first, counts = self._firsts(enc.word_ids, len(words))
            if 0 in counts:  # words without sub-tokens -> unk, as in training
                words = [self.unk_token if c == 0 else w for w, c in zip(words, counts)]
                enc = self._tokenizer_full.encode(words, is_pretokenized=True)
                first, counts = self._firsts(enc.word_ids, len(words))
            if len(enc.ids) <= self.max_length:
                windows.append(_Window(d, 0, len(words), enc.ids, first))
                continue
            for lo, hi in plan_windows(counts, self.budget, self.window_overlap):
                long_pieces.append((d, lo, hi, words[lo:hi]))
        if long_pieces:
            encs = self.tokenizer.encode_batch([p[3] for p in long_pieces], is_pretokenized=True)
            for (d, lo, hi, words), enc in zip(long_pieces, encs):
                first, _ = self._firsts(enc.word_ids, hi - lo)
                if -1 in first:  # cannot happen by construction (windows fit the budget)
                    raise RuntimeError(f"window {lo}:{hi} of input {d} lost a word to truncation")
                windows.append(_Window(d, lo, hi, enc.ids, first))
        return windows

    @staticmethod
    def _firsts(word_ids, n):
        first, counts = [-1] * n, [0] * n
        for pos, w in enumerate(word_ids):
            if w is not None:
                if counts[w] == 0:
                    first[w] = pos
                counts[w] += 1
        return first, counts

    def _tag_docs(self, docs, batch_size, scores):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        timings = {k: 0.0 for k in STAGES}
        timings.update(texts=len(docs), windows=0, batches=0, sub_tokens=0, padded_sub_tokens=0)
        t0 = time.perf_counter()
        windows = self._encode_full(docs)
        timings["tokenize"] += time.perf_counter() - t0
        timings["windows"] = len(windows)
        if not self.batch_invariant:  # int8-dynamic: a batch would mix the texts' activation scales
            batch_size = 1
        order = sorted(range(len(windows)), key=lambda i: len(windows[i].ids))
        trans, start, end = self.crf["transitions"], self.crf["start"], self.crf["end"]
        for b0 in range(0, len(order), batch_size):
            chunk = [windows[i] for i in order[b0:b0 + batch_size]]
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
            feed = {k: feed[k] for k in self.input_names}
            timings["tokenize"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            logits = self._run(feed)
            timings["onnx"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            emissions = np.take_along_axis(logits, word_index[:, :, None], axis=1)
            _, paths = np_crf.viterbi(emissions, word_mask, trans, start, end)
            for b, w in enumerate(chunk):
                w.tags = paths[b, : len(w.first)].tolist()
                w.emissions = emissions[b, : len(w.first)]
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
        # merge windows: each word takes its tag from the window where it is most central
        t0 = time.perf_counter()
        windows_of: list[list[_Window]] = [[] for _ in docs]
        for w in windows:
            windows_of[w.doc].append(w)
        tags = [merge_windows(windows_of[d], len(doc.words)) for d, doc in enumerate(docs)]
        timings["postprocess"] += time.perf_counter() - t0
        return tags, windows_of, timings

    def _run(self, feed: dict) -> np.ndarray:
        if not self.io_binding:
            return self.session.run(None, feed)[0]
        binding = self.session.io_binding()
        for name, value in feed.items():
            binding.bind_cpu_input(name, value)
        binding.bind_output(self.session.get_outputs()[0].name)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

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
