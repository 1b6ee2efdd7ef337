"""The ONNX export format: file names, manifest keys and torch-free readers.

An export directory (written by ``python -m export.onnx``) is self-contained::

    runs/student/onnx/
      model.onnx            fp32 graph: input_ids, attention_mask[, token_type_ids] -> logits
                            (B, S, L) per sub-token; dynamic batch and sequence axes. With
                            --optimize this *is* the ORT-fused graph (it replaces the plain one).
      model.int8.onnx       static (calibrated) int8, QDQ, per-channel weights (--quantize int8):
                            batch-invariant
      model.int8-dynamic.onnx  dynamic int8 (--quantize int8-dynamic): activation scales computed per
                            run over the whole batch tensor, so a text's answer depends on its
                            batch-mates (the engine runs every text alone with it)
      crf.json              {"labels", "transitions" [from][to], "start", "end"}
      tokenizer.json ...    the checkpoint's fast tokenizer (serving reads tokenizer.json only, with
                            the `tokenizers` library): padding off, truncation at max_length
      config.json           the Hugging Face config (id2label etc.)
      manifest.json         format tag, provenance, versions, opset, labels, max_length,
                            inputs, precisions, file sizes, parity, fusion statistics

Serving, the demo and the evaluation read exports through this module only. It imports
NumPy and the standard library, never torch / transformers / onnxruntime.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

FORMAT = "msd-ner-onnx"
FORMAT_VERSION = 2  # 2: "int8" is static int8; version 1's "int8" (dynamic) reads as "int8-dynamic"

MODEL_FP32 = "model.onnx"
MODEL_INT8 = "model.int8.onnx"
MODEL_INT8_DYNAMIC = "model.int8-dynamic.onnx"
CRF_FILE = "crf.json"
MANIFEST = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "config.json"

PRECISIONS = ("fp32", "int8", "int8-dynamic")
QUANTIZED = ("int8", "int8-dynamic")   # the values of ``--quantize``
MODEL_FILES = {"fp32": MODEL_FP32, "int8": MODEL_INT8, "int8-dynamic": MODEL_INT8_DYNAMIC}
# whether a text's output is independent of the other texts in its batch (and of padding); the
# manifest's models[precision]["batch_invariant"] (measured at export) takes precedence
BATCH_INVARIANT = {"fp32": True, "int8": True, "int8-dynamic": False}
OUTPUT_NAME = "logits"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")

# manifest keys (top level)
K_FORMAT = "format"
K_VERSION = "version"
K_CREATED = "created_at"
K_SOURCE = "source"              # {"checkpoint", "given", "sha256", "files" (name -> sha256), "saved_at", "epoch", "metrics"}
K_KIND = "kind"                  # "teacher" | "student" (from run.json)
K_METHOD = "method"              # distillation method (students) or None
K_VERSIONS = "versions"          # {"torch", "transformers", "optimum", "onnx", "onnxruntime", ...}
K_OPSET = "opset"
K_LABELS = "labels"
K_MAX_LENGTH = "max_length"      # max sub-tokens per sentence, special tokens included
K_INPUTS = "inputs"              # ONNX input names, in graph order
K_OUTPUTS = "outputs"
K_PRECISIONS = "precisions"      # e.g. ["fp32", "int8"]
K_MODELS = "models"              # {"fp32": {"file", "bytes", "sha256"}, "int8": {...}}
K_FILES = "files"                # {file name: size in bytes} for every file of the export
K_PARITY = "parity"              # {"fp32": {...}, "int8": {...}} measured at export time
K_OPTIMIZE = "optimize"          # {"applied", "fused_operators", "fused_total", "note", ...}
K_QUANTIZATION = "quantization"  # {"int8": {"method", "calibration", ...}, "int8-dynamic": {...}} (may be empty)
K_MODEL = "model"                # {"model_type", "hidden_size", "num_layers", "num_heads", "vocab_size"}
K_TOKENIZER = "tokenizer"        # {"file", "padding": None, "truncation": {"max_length", ...}, check results}

REQUIRED_MANIFEST_KEYS = (K_FORMAT, K_VERSION, K_LABELS, K_MAX_LENGTH, K_INPUTS, K_PRECISIONS, K_MODELS,
                          K_OPSET)


class ExportFormatError(ValueError):
    """A directory that is not a (complete, compatible) export of this toolkit."""


def _dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise ExportFormatError(f"{p}: no such export directory")
    if not p.is_dir():
        raise ExportFormatError(f"{p}: not a directory")
    return p


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ExportFormatError(f"{path.parent}: not an ONNX export of this toolkit (missing {path.name}); "
                                f"create one with `python -m export.onnx RUN_DIR`")
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportFormatError(f"{path}: unreadable {what}: {e}") from e
    if not isinstance(obj, dict):
        raise ExportFormatError(f"{path}: {what} must be a JSON object")
    return obj


def read_manifest(path: str | os.PathLike) -> dict:
    """``manifest.json`` of an export directory, with the format tag / version checked."""
    d = _dir(path)
    man = _read_json(d / MANIFEST, "manifest")
    if man.get(K_FORMAT) != FORMAT:
        raise ExportFormatError(f"{d / MANIFEST}: format is {man.get(K_FORMAT)!r}, expected {FORMAT!r}")
    try:
        version = int(man.get(K_VERSION, 0))
    except (TypeError, ValueError):
        version = -1
    if version < 1:
        raise ExportFormatError(f"{d / MANIFEST}: bad format version {man.get(K_VERSION)!r}")
    if version > FORMAT_VERSION:
        raise ExportFormatError(f"{d / MANIFEST}: export format version {version} is newer than this toolkit "
                                f"({FORMAT_VERSION}); upgrade it")
    missing = [k for k in REQUIRED_MANIFEST_KEYS if k not in man]
    if missing:
        raise ExportFormatError(f"{d / MANIFEST}: missing keys {missing}")
    return _upgrade(man) if version == 1 else man


def _upgrade(man: dict) -> dict:
    """A version-1 manifest in version-2 terms: its ``int8`` was dynamic quantisation, so it is
    renamed ``int8-dynamic`` (same file); ``quantization`` becomes keyed by precision."""
    man = dict(man)
    rename = {"int8": "int8-dynamic"}
    man[K_PRECISIONS] = [rename.get(p, p) for p in man.get(K_PRECISIONS, [])]
    for key in (K_MODELS, K_PARITY):
        if isinstance(man.get(key), dict):
            man[key] = {rename.get(k, k): v for k, v in man[key].items()}
    q = man.get(K_QUANTIZATION)
    man[K_QUANTIZATION] = {"int8-dynamic": q} if q else {}
    man["upgraded_from_version"] = 1
    return man


def batch_invariant(manifest: dict, precision: str) -> bool:
    """Whether ``precision``'s graph gives a text the same output whatever else is in its batch."""
    entry = (manifest.get(K_MODELS) or {}).get(precision) or {}
    value = entry.get("batch_invariant")
    return bool(value) if value is not None else BATCH_INVARIANT.get(precision, False)


def read_crf(path: str | os.PathLike, dtype=np.float32) -> dict:
    """``crf.json`` as ``{"labels": [str], "transitions": (L, L), "start": (L,), "end": (L,)}``
    (NumPy arrays of ``dtype``; float32 matches ONNX Runtime's emissions)."""
    d = _dir(path)
    f = d / CRF_FILE
    raw = _read_json(f, "CRF file")
    missing = [k for k in ("labels", "transitions", "start", "end") if k not in raw]
    if missing:
        raise ExportFormatError(f"{f}: missing keys {missing}")
    labels = raw["labels"]
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ExportFormatError(f"{f}: labels must be a non-empty list of strings")
    L = len(labels)
    try:
        out = {k: np.asarray(raw[k], dtype=np.float64) for k in ("transitions", "start", "end")}
    except (TypeError, ValueError) as e:
        raise ExportFormatError(f"{f}: CRF parameters are not numeric arrays: {e}") from e
    want = {"transitions": (L, L), "start": (L,), "end": (L,)}
    for k, shape in want.items():
        if out[k].shape != shape:
            raise ExportFormatError(f"{f}: {k} has shape {out[k].shape}, expected {shape} for {L} labels")
        if np.isnan(out[k]).any():
            raise ExportFormatError(f"{f}: {k} contains NaN")
    return {"labels": list(labels), **{k: v.astype(dtype) for k, v in out.items()}}


def model_path(path: str | os.PathLike, precision: str = "fp32", manifest: dict | None = None) -> Path:
    """Path of the ONNX graph for ``precision`` (``fp32`` | ``int8`` | ``int8-dynamic``), checked
    against the manifest."""
    d = _dir(path)
    if precision not in MODEL_FILES:
        raise ExportFormatError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    man = manifest if manifest is not None else read_manifest(d)
    if precision not in man.get(K_PRECISIONS, []):
        raise ExportFormatError(f"{d}: no {precision} model in this export (available: "
                                f"{', '.join(man.get(K_PRECISIONS, [])) or 'none'}); "
                                + (f"re-export with --quantize {precision}" if precision in QUANTIZED else ""))
    entry = man.get(K_MODELS, {}).get(precision, {})
    p = d / entry.get("file", MODEL_FILES[precision])
    if not p.is_file():
        raise ExportFormatError(f"{p}: missing ONNX file for precision {precision}")
    return p


def write_crf(path: str | os.PathLike, labels, transitions, start, end) -> Path:
    """Write ``crf.json`` (plain JSON floats at full precision: ``float(x)`` is exact for float32)."""
    t, s, e = (np.asarray(x, dtype=np.float64) for x in (transitions, start, end))
    L = len(labels)
    if t.shape != (L, L) or s.shape != (L,) or e.shape != (L,):
        raise ValueError(f"CRF shapes {t.shape}, {s.shape}, {e.shape} do not match {len(labels)} labels")
    rows = ",\n  ".join(json.dumps(r) for r in t.tolist())  # repr of a float64: exact round trip
    text = (f'{{"labels": {json.dumps(list(labels))},\n "transitions": [\n  {rows}],\n'
            f' "start": {json.dumps(s.tolist())},\n "end": {json.dumps(e.tolist())}}}\n')
    p = Path(path) / CRF_FILE
    p.write_text(text)
    return p
