"""The two models of the demo behind one small interface: ``predict(text) -> Prediction``.

Both run the one tagging pipeline of the server (:class:`export.pipeline.Tagger`: word splitting,
first-sub-token alignment, windows for long inputs, NumPy CRF, span confidences); only the source
of emissions differs:

* :class:`OnnxTagger` -- an ONNX export (``python -m export.onnx``) through
  :class:`serving.engine.NerEngine`: the very code path of the HTTP server.
* :class:`TorchTagger` -- a PyTorch checkpoint (run directory or ``best/``) loaded with
  :func:`training.model.load`, its encoder as the emissions (:mod:`training.backend`).

:func:`load_model` picks the class from the directory (``manifest.json`` -> ONNX, otherwise a
checkpoint); :func:`check_model_path` gives a one-line error for a missing or wrong directory
before anything heavy is imported. torch is imported only for a PyTorch teacher.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from export import format as fmt
from export.pipeline import DEFAULT_WINDOW_OVERLAP, Document, Entity, split_words

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

    def predict(self, text: str) -> Prediction:
        """Entities of ``text`` by ``self.tagger`` (the pipeline), timed."""
        t0 = time.perf_counter()
        entities, timings = self.tagger.predict([text], return_timings=True)
        seconds = time.perf_counter() - t0
        return Prediction(list(entities[0]), seconds, int(timings["windows"]), len(split_words(text)[0]))

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
        self.tagger = self.engine


# --------------------------------------------------------------------------- PyTorch checkpoint
class TorchTagger(_Base):
    """A PyTorch BERT-CRF checkpoint through the pipeline (see the module doc)."""

    def __init__(self, path, role: str = "teacher", threads: int | None = None,
                 window_overlap: float = DEFAULT_WINDOW_OVERLAP):
        import torch

        from training import backend
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
        max_length = backend.max_length(model, tokenizer, info)
        super().__init__(role=role, path=path, kind="PyTorch", labels=list(model.labels),
                         num_parameters=int(model.num_parameters()),
                         size_bytes=_file_size(directory / "model.safetensors", directory / ckpt.CRF_FILE),
                         max_length=max_length)
        self.checkpoint = directory
        self.window_overlap = float(window_overlap)
        self.tagger = backend.tagger(model, tokenizer, max_length, window_overlap=window_overlap)

    def windows(self, words: list[str]) -> list[tuple[int, int]]:
        """``[lo, hi)`` word windows that each fit ``max_length`` sub-tokens (one when all fits)."""
        return [(w.lo, w.hi) for w in self.tagger.windows([Document.from_words(words)])]


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

