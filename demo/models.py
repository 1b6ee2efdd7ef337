"""The two models of the demo behind one small interface: ``predict(text) -> Prediction``.

* :class:`OnnxTagger` -- an ONNX export (``python -m export.onnx``) through
  :class:`serving.engine.NerEngine`: the very code path of the HTTP server.
* :class:`TorchTagger` -- a PyTorch checkpoint (run directory or ``best/``) loaded with
  :func:`training.model.load` and decoded with its own CRF (:func:`training.crf.viterbi`). Raw text
  is split into words by :func:`serving.engine.split_words` (the engine's splitting, imported, not
  copied), words are encoded exactly as in training (:func:`training.data.encode`, which also turns
  words without sub-tokens into the unk token), and a sentence longer than the model's
  ``max_length`` is cut into overlapping windows by :func:`serving.engine.plan_windows`; each word
  takes its tag from the window where it is most central, as in the engine. Entity scores are the
  same CRF span posteriors as the engine's (:func:`serving.engine.span_probability`).

:func:`load_model` picks the class from the directory (``manifest.json`` -> ONNX, otherwise a
checkpoint); :func:`check_model_path` gives a one-line error for a missing or wrong directory
before anything heavy is imported. torch is imported only for a PyTorch teacher.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from export import format as fmt
from serving import engine as _engine
from serving.engine import (Entity, merge_windows, plan_windows, span_probability, span_score, split_words,
                            tags_to_spans)

DEFAULT_WINDOW_OVERLAP = getattr(_engine, "DEFAULT_WINDOW_OVERLAP", 0.25)  # the engine's default

__all__ = ["ModelError", "Prediction", "OnnxTagger", "TorchTagger", "load_model", "check_model_path",
           "human_bytes", "human_count"]

RUN_HINT = "`make run`"


class ModelError(RuntimeError):
    """A model directory that is missing or cannot be used; the message is one line for the user."""


@dataclass
class Prediction:
    entities: list[Entity]
    seconds: float                      # wall time of this model for this request
    windows: int = 1                    # pieces the input was cut into (long inputs)
    words: int = 0


@dataclass
class _Base:
    role: str                           # "teacher" | "student"
    path: Path
    kind: str = ""                      # "PyTorch" | "ONNX fp32" | "ONNX int8" | "ONNX int8-dynamic"
    labels: list[str] = field(default_factory=list)
    num_parameters: int | None = None
    size_bytes: int | None = None       # weights on disk (encoder + CRF files)
    max_length: int = 128

    def describe(self) -> str:
        return (f"{self.kind} · {human_count(self.num_parameters)} parameters · "
                f"{human_bytes(self.size_bytes)} on disk")

    @property
    def entity_types(self) -> list[str]:
        return sorted({lab[2:] if lab[:2] in ("B-", "I-") else lab for lab in self.labels if lab != "O"})


def human_count(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def human_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _file_size(*paths: Path) -> int | None:
    sizes = [p.stat().st_size for p in paths if p.is_file()]
    return sum(sizes) if sizes else None


# --------------------------------------------------------------------------- ONNX (the serving engine)
class OnnxTagger(_Base):
    """An ONNX export served by :class:`serving.engine.NerEngine` (same code as ``python -m serving``)."""

    def __init__(self, path, role: str = "student", precision: str = "fp32", threads: int | None = None):
        from serving.engine import EngineError, NerEngine

        path = Path(path)
        try:
            self.engine = NerEngine.from_dir(path, device="cpu", threads=threads, precision=precision)
        except EngineError as e:
            raise ModelError(f"{role} export {path}: {e}") from None
        man = self.engine.manifest
        entry = (man.get(fmt.K_MODELS) or {}).get(precision) or {}
        model_file = path / entry.get("file", fmt.MODEL_FILES[precision])
        super().__init__(role=role, path=path, kind=f"ONNX {precision}", labels=list(self.engine.labels),
                         num_parameters=(man.get(fmt.K_MODEL) or {}).get("num_parameters"),
                         size_bytes=_file_size(model_file, path / fmt.CRF_FILE),
                         max_length=int(self.engine.max_length))
        self.precision = precision

    def predict(self, text: str) -> Prediction:
        t0 = time.perf_counter()
        entities, timings = self.engine.predict([text], return_timings=True)
        seconds = time.perf_counter() - t0
        return Prediction(list(entities[0]), seconds, int(timings.get("windows", 1) or 1),
                          len(split_words(text)[0]))


# --------------------------------------------------------------------------- PyTorch checkpoint
@dataclass
class _TorchWindow:
    lo: int
    hi: int
    tags: list
    node: object
    edge: object


class TorchTagger(_Base):
    """A PyTorch BERT-CRF checkpoint decoded with its CRF (see the module doc)."""

    def __init__(self, path, role: str = "teacher", threads: int | None = None,
                 window_overlap: float = DEFAULT_WINDOW_OVERLAP):
        import torch
        from tokenizers import Tokenizer

        from training import checkpoint as ckpt
        from training.model import load

        if threads:
            torch.set_num_threads(int(threads))
        path = Path(path)
        try:
            model, tokenizer, info = load(path)
        except (ckpt.CheckpointError, OSError, ValueError, RuntimeError) as e:
            raise ModelError(f"{role} checkpoint {path}: {e}".replace("\n", " ")) from None
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.info = info
        directory = ckpt.resolve(path)
        max_length = int((info.get("args") or {}).get("max_length") or 128)
        limits = [getattr(model.encoder.config, "max_position_embeddings", None),
                  getattr(tokenizer, "model_max_length", None)]
        max_length = min([max_length] + [int(x) for x in limits if x and x < 1_000_000])
        super().__init__(role=role, path=path, kind="PyTorch", labels=list(model.labels),
                         num_parameters=int(model.num_parameters()),
                         size_bytes=_file_size(directory / "model.safetensors", directory / ckpt.CRF_FILE),
                         max_length=max_length)
        self.checkpoint = directory
        self.window_overlap = float(window_overlap)
        self.num_special = int(tokenizer.num_special_tokens_to_add(pair=False))
        self.budget = max(1, max_length - self.num_special)
        # sub-token counts of whole inputs: the fast tokenizer without truncation / padding
        self._counter = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self._counter.no_truncation()
        self._counter.no_padding()
        unk = tokenizer.unk_token
        self.unk_token = unk if unk and tokenizer.convert_tokens_to_ids(unk) is not None else "?"

    def _counts(self, words: list[str]) -> tuple[list[str], list[int]]:
        enc = self._counter.encode(words, is_pretokenized=True, add_special_tokens=False)
        counts = [0] * len(words)
        for w in enc.word_ids:
            if w is not None:
                counts[w] += 1
        if 0 in counts:  # words without sub-tokens -> unk (as training.data.encode does)
            words = [self.unk_token if c == 0 else w for w, c in zip(words, counts)]
            return self._counts(words)
        return words, counts

    def windows(self, words: list[str]) -> list[tuple[int, int]]:
        """``[lo, hi)`` word windows that each fit ``max_length`` sub-tokens (one when all fits)."""
        if not words:
            return []
        words, counts = self._counts(words)
        if sum(counts) + self.num_special <= self.max_length:
            return [(0, len(words))]
        return plan_windows(counts, self.budget, self.window_overlap)

    def tag_words(self, words: list[str]):
        """Tag ids per word (windows merged) and the windows (lo, hi, tags, node and edge marginals)."""
        import torch

        from training import crf as crf_lib
        from training.corpora import Sentence
        from training.data import collate, encode

        n = len(words)
        spans = self.windows(words)
        pieces = [Sentence(list(words[lo:hi]), ["O"] * (hi - lo)) for lo, hi in spans]
        enc = encode(pieces, self.tokenizer, None, max_length=self.max_length)
        kept = [len(it["word_index"]) for it in enc.items]
        if kept != [hi - lo for lo, hi in spans]:  # cannot happen: windows fit max_length
            raise RuntimeError("a window lost words to truncation")
        batch = collate(enc.items, enc.pad_token_id)
        with torch.no_grad():
            p = self.model(batch)
            _, paths = crf_lib.viterbi(*p.args())
            node, edge = crf_lib.marginals(*p.args())
        per_window = [_TorchWindow(lo, hi, paths[b, : hi - lo].tolist(), node[b, : hi - lo].numpy(),
                                   edge[b, : max(hi - lo - 1, 0)].numpy()) for b, (lo, hi) in enumerate(spans)]
        return merge_windows(per_window, n), per_window

    @staticmethod
    def _span_score(tags, lo, hi, per_window, n) -> float:
        def prob(w, tags, a, b):
            return span_probability(w.node, w.edge, list(tags[w.lo:w.hi]), a - w.lo, b - w.lo)

        return span_score(per_window, tags, lo, hi, n, prob)

    def predict(self, text: str) -> Prediction:
        t0 = time.perf_counter()
        words, offsets = split_words(text)
        if not words:
            return Prediction([], time.perf_counter() - t0, 0, 0)
        tags, per_window = self.tag_words(words)
        out = []
        for lo, hi, typ in tags_to_spans([self.labels[t] for t in tags]):
            s, e = offsets[lo][0], offsets[hi - 1][1]
            score = self._span_score(tags, lo, hi, per_window, len(words))
            out.append(Entity(text[s:e], typ, s, e, round(score, 6), lo, hi))
        return Prediction(out, time.perf_counter() - t0, len(per_window), len(words))


# --------------------------------------------------------------------------- loading
def _is_export(path: Path) -> bool:
    return (path / fmt.MANIFEST).is_file()


def _is_checkpoint(path: Path) -> bool:
    from training import checkpoint as ckpt

    return ckpt.is_checkpoint(path) or ckpt.is_checkpoint(path / ckpt.BEST) or ckpt.is_checkpoint(
        path / (ckpt.BEST + ".old"))


def _student_hint(path: Path) -> str:
    run = path.parent if path.name == "onnx" else path
    return f"make it with {RUN_HINT}, then `python -m export.onnx {run}`"


def check_model_path(path, role: str) -> str:
    """``"onnx"`` or ``"pytorch"`` for a usable directory; :class:`ModelError` (one line, naming the
    path and how to make it) otherwise. Cheap: reads no weights, imports neither torch nor gradio."""
    path = Path(path)
    if role == "student":
        if not path.exists():
            raise ModelError(f"student export not found: {path} does not exist; {_student_hint(path)}")
        if _is_export(path):
            return "onnx"
        if _is_checkpoint(path):
            raise ModelError(f"student {path} is a PyTorch checkpoint, not an ONNX export; export it with "
                             f"`python -m export.onnx {path}` and pass the export directory (default {path}/onnx)")
        if _is_export(path / "onnx"):
            raise ModelError(f"student {path} is not an ONNX export (no {fmt.MANIFEST}); did you mean "
                             f"--student {path / 'onnx'}?")
        raise ModelError(f"student {path} is not an ONNX export (no {fmt.MANIFEST}); {_student_hint(path)}")
    if not path.exists():
        raise ModelError(f"{role} model not found: {path} does not exist; train it with {RUN_HINT} "
                         f"(`python -m training.teacher --out {path}`), or pass a checkpoint or an ONNX export")
    if _is_export(path):
        return "onnx"
    if _is_checkpoint(path):
        return "pytorch"
    raise ModelError(f"{role} {path} is neither a checkpoint (run.json, crf.safetensors, config.json, or a best/ "
                     f"inside) nor an ONNX export ({fmt.MANIFEST}); train one with {RUN_HINT}")


def load_model(path, role: str, precision: str = "fp32", threads: int | None = None):
    """An :class:`OnnxTagger` for an export directory, a :class:`TorchTagger` for a checkpoint
    (students must be ONNX exports: the demo shows what would be served)."""
    kind = check_model_path(path, role)
    if kind == "onnx":
        return OnnxTagger(path, role=role, precision=precision, threads=threads)
    return TorchTagger(path, role=role, threads=threads)

