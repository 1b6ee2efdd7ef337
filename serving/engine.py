"""ONNX Runtime inference engine for an exported BERT-CRF (see :mod:`export.format`).

:class:`NerEngine` is the tagging pipeline (:class:`export.pipeline.Tagger`: word splitting,
first-sub-token alignment, windows, NumPy CRF, confidences, entities -- read its module doc) with
an ONNX Runtime session as the source of emissions (:class:`export.runtime.OrtEmissions`), loaded
from an export directory. This module is the whole serving path. It imports NumPy, onnxruntime,
tokenizers and the standard library (plus the NumPy-only :mod:`export.format`,
:mod:`export.pipeline`, :mod:`export.runtime` and :mod:`export.viterbi`) -- never torch or
transformers, so the ``serve`` install (and the Docker image) stays small.

Batch invariance
    A text's entities and scores do not depend on the other texts of the call (or, in the server, of
    other requests) for the fp32 and static int8 graphs: every operation is per position or per
    sequence, padded keys get exactly zero attention, and static int8 uses fixed activation scales
    (tested: alone vs in batches of other lengths). ``int8-dynamic`` computes each activation scale
    over the whole batch tensor, so with it the engine runs every window alone (batch of one, no
    padding) whatever ``batch_size`` says: reproducible, but without batching's speed-up.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from export import format as fmt
# the pipeline's names that are part of the serving API (tests and callers import them from here)
from export.pipeline import (DEFAULT_WINDOW_OVERLAP, WORD_RE, Document, Entity, Tagger, plan_windows,
                             span_probability, split_words, tags_to_spans)
from export.runtime import OrtEmissions, SessionError, open_session, u8s8_saturates

__all__ = ["NerEngine", "Entity", "Document", "EngineError", "split_words", "tags_to_spans",
           "span_probability", "plan_windows", "WORD_RE", "DEFAULT_WINDOW_OVERLAP"]


class EngineError(RuntimeError):
    """The engine cannot be built (bad export directory, missing provider, ...)."""


class NerEngine(Tagger):
    """Named-entity recognition with an exported BERT-CRF on ONNX Runtime (see module doc). The
    public API is the pipeline's: :meth:`predict`, :meth:`predict_words`, :meth:`tag_words`,
    :meth:`run_documents`, :meth:`window_lengths`; plus :meth:`from_dir` and :meth:`info`."""

    def __init__(self, session, tokenizer, crf: dict, manifest: dict, *, export_dir: str | os.PathLike = "",
                 precision: str = "fp32", device: str = "cpu", threads: int | None = None,
                 window_overlap: float = DEFAULT_WINDOW_OVERLAP, io_binding: bool = False,
                 ort_options: dict | None = None):
        backend = OrtEmissions(session, batch_invariant=fmt.batch_invariant(manifest, precision),
                               io_binding=io_binding)
        try:
            super().__init__(backend, tokenizer, crf, int(manifest[fmt.K_MAX_LENGTH]), window_overlap)
        except ValueError as e:
            raise EngineError(str(e)) from None
        self.session = session
        self.input_names = backend.input_names
        self.manifest = manifest
        self.export_dir = str(export_dir)
        self.precision = precision
        self.device = device
        self.threads = threads
        self.io_binding = bool(io_binding)
        self.ort_options = dict(ort_options or {})

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
        ``execution_mode``: see :func:`export.runtime.session_options`. ``io_binding``: run through
        an ONNX Runtime IO binding (inputs bound, the output allocated by ONNX Runtime) instead of
        ``session.run``."""
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
        ort_options = {"spinning": bool(spinning), "inter_op_threads": int(inter_op_threads),
                       "graph_optimization": graph_optimization, "execution_mode": execution_mode}
        try:
            session = open_session(path, threads, device, **ort_options)
        except SessionError as e:
            raise EngineError(str(e)) from None
        engine = cls(session, tokenizer, crf, manifest, export_dir=export_dir, precision=precision, device=device,
                     threads=threads, window_overlap=window_overlap, io_binding=io_binding, ort_options=ort_options)
        if engine.int8_saturates:
            warnings.warn(f"{path}: int8 weights use the full 8 bits and this CPU's uint8 x int8 kernels saturate "
                          "(no VNNI): answers may differ from other CPUs and between graph optimisation levels; "
                          "export with --reduce-range for this CPU", RuntimeWarning, stacklevel=2)
        return engine

    @property
    def int8_saturates(self) -> bool:
        """An int8 model with full-range (8-bit) weights on a CPU whose uint8 x int8 kernels saturate
        (:func:`export.runtime.u8s8_saturates`): its answers may depend on the CPU."""
        q = (self.manifest.get(fmt.K_QUANTIZATION) or {}).get(self.precision)
        return bool(q) and self.device == "cpu" and not q.get("reduce_range") and bool(u8s8_saturates())

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
            "int8_saturates": self.int8_saturates,
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
