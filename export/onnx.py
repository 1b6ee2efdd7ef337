"""Export a BERT-CRF checkpoint to a self-contained ONNX directory for ONNX Runtime serving.

    python -m export.onnx RUN_OR_CHECKPOINT [--out DIR] [--opset N] [--optimize] [--max-length 128]
                          [--quantize int8] [--quantize int8-dynamic]
                          [--calibration FILE | --calibration-dataset NAME [--data-dir D]]
                          [--calibration-size 1024] [--int8-keep-fp32 REGEX ...]

The encoder + token-classification head (a plain ``AutoModelForTokenClassification`` folder) is
exported with optimum; the CRF goes to ``crf.json`` and is decoded in NumPy
(:mod:`export.viterbi`). See :mod:`export.format` for the directory layout and manifest keys.

* default output: ``RUN/onnx/`` for a run directory (``runs/student`` -> ``runs/student/onnx``);
  for a checkpoint ``RUN/best`` or ``RUN/last`` also ``RUN/onnx``; for any other checkpoint
  directory ``X`` the sibling ``X-onnx``.
* ``--optimize`` runs the ONNX Runtime transformer fusions (``model_type="bert"``) and the fused
  graph *replaces* ``model.onnx`` (if nothing was fused the plain graph is kept, and the
  manifest and stdout say so).
* ``--quantize int8`` (static int8) quantises ``model.onnx`` (after the fusions, if any; the plain
  graph if quantising the fused one fails) to ``model.int8.onnx`` with
  ``onnxruntime.quantization.quantize_static``: QDQ format, per-channel int8 weights, uint8
  activations whose ranges are calibrated once on a sample of sentences: ``--calibration-size``
  sentences (seeded sample) of the train split of the run's dataset (``--calibration-dataset`` /
  ``--data-dir`` override it), or every sentence of ``--calibration FILE`` (one sentence per line,
  words separated by whitespace). Only the linear layers (MatMul with a constant weight) and the
  embedding lookups are quantised; attention scores, softmax and layer norms stay fp32, so padding
  cannot leak into a text's result. Fixed scales make it batch-invariant: a text gets the same
  output alone or in any batch. The manifest records method, sample, data source and calibration
  method.
* ``--quantize int8-dynamic`` (the former ``int8``) writes ``model.int8-dynamic.onnx`` with
  ``quantize_dynamic``: QInt8 weights, per-tensor unless per-channel clearly improves parity (both
  are tried); activation scales are computed at run time over the whole batch tensor, so its output
  depends on the batch (the engine runs each text alone with it). Both values may be given.
* ``--reduce-range`` (both int8 models): 7-bit weights. ONNX Runtime's uint8 x int8 kernels on x86 CPUs
  without VNNI (AVX2, AVX-512 without VNNI) add pairs of products in int16 and saturate, so full-range
  weights give answers that depend on the CPU and on the session's graph optimisation level there;
  7-bit weights cannot saturate (ONNX Runtime's advice for such CPUs), at a small cost in precision.
  The manifest records the choice; the serving engine warns when an int8 model without it runs on a
  CPU whose kernels saturate (:func:`export.runtime.u8s8_saturates`).
* ``tokenizer.json`` is normalised for serving with the `tokenizers` library alone: padding off
  (the packaged MiniLM file pads everything to 128) and truncation at ``max_length``, as in
  training; it is checked against transformers on the parity sentences.
* parity with PyTorch is measured at export time on a fixed set of sentences of varied lengths
  (max |emission| difference, agreement of the Viterbi tags) and stored in the manifest: both run
  through the tagging pipeline of serving (:mod:`export.pipeline`), on the same windows, with the
  PyTorch model or the ONNX Runtime session as the source of emissions.
* everything is written to a temporary sibling directory and renamed into place at the end, so
  a failure never leaves a half-written export. Bad input (no such directory, not a checkpoint,
  missing CRF tensors, unsupported opset, ...) -> one-line error, exit code 2; a failure of the
  export itself -> exit code 1. No network access is needed (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import contextlib
import datetime as _dt
import hashlib
import io
import json
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export import format as fmt
from export.pipeline import Document, Tagger
from export.runtime import OrtEmissions, open_session
from training import checkpoint as ckpt

MIN_OPSET = 14  # scaled_dot_product_attention needs 14
MAX_OPSET = 20  # torch's TorchScript exporter (which optimum uses) supports opsets up to 20
DEFAULT_MAX_LENGTH = 128
EXPORTED_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                            "added_tokens.json", "vocab.json", "merges.txt", "spiece.model",
                            "sentencepiece.bpe.model")
MODEL_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")

# Words for the parity check: one word, short, punctuation / casing / unicode / URLs (several
# sub-tokens per word), medium, and one longer than max_length (cut into windows).
_LONG = ("The committee of the International Olympic Committee met in Lausanne on Tuesday to discuss "
         "the 2032 bid from Brisbane , Queensland , which Prime Minister Anthony Albanese called a "
         "once-in-a-generation opportunity for Australia and the Pacific region .").split()
PARITY_SENTENCES = [
    ["Paris"],
    ["John", "Smith", "lives", "in", "New", "York", "."],
    ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."],
    ["@bob_99", "lol", "omg", "Starbucks", "w/", "Ánna", "in", "Zürich", "!!!", "#NLProc", "http://t.co/x7Yz"],
    ["Pharmacokinetics", "of", "acetaminophen", "and", "dextromethorphan", "in", "Reykjavík", "hospitals"],
    ["I"],
    _LONG,
    (_LONG * 4)[:150],  # longer than max_length sub-tokens: windows, as in serving
]


class ExportError(ValueError):
    """Bad input to the exporter (exit code 2)."""


class ExportFailed(RuntimeError):
    """The export itself failed (exit code 1)."""


def _log(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(msg, flush=True)


# --------------------------------------------------------------------------- validation
def _default_out(given: Path, checkpoint: Path) -> Path:
    if checkpoint != given:  # a run directory resolved to its best/ checkpoint
        return given / "onnx"
    if checkpoint.name in (ckpt.BEST, ckpt.LAST):
        return checkpoint.parent / "onnx"
    return checkpoint.with_name(checkpoint.name + "-onnx")


def _is_within(a: Path, b: Path) -> bool:
    """``a`` is ``b`` or inside it."""
    try:
        a.resolve().relative_to(b.resolve())
        return True
    except ValueError:
        return False


# ONNX Runtime's histogram calibrators (entropy, percentile) fail on calibration inputs of varied
# lengths (onnxruntime 1.32: "inhomogeneous shape" in collect_absolute_value): min-max only
CALIBRATION_METHODS = ("minmax",)
# MatMuls left in fp32 by static int8 (regular expressions on node names): the feed-forward
# down-projection, whose input (the GELU output) has the heavy tail that a per-tensor uint8 scale
# handles worst (see the README for the measurement that chose this)
DEFAULT_KEEP_FP32 = (r"layer\.\d+/output/dense",)
# 1024: chosen on CoNLL-2003 dev with the full-budget 3-layer student (static int8 -0.36 F1 below fp32 with 256
# sentences, -0.18 with 1024; the README has the figures)
DEFAULT_CALIBRATION_SIZE = 1024
CALIBRATION_SEED = 0


def _quantize_list(quantize) -> list[str]:
    """``None`` | ``"int8"`` | ``"int8,int8-dynamic"`` | a list of those -> precisions in canonical order."""
    if quantize is None:
        return []
    items = [quantize] if isinstance(quantize, str) else list(quantize)
    wanted = {q.strip() for item in items for q in str(item).split(",") if q.strip()}
    bad = sorted(wanted - set(fmt.QUANTIZED))
    if bad:
        raise ExportError(f"unsupported quantization {', '.join(map(repr, bad))}: use "
                          f"{' or '.join(fmt.QUANTIZED)} (int8 = static, calibrated)")
    return [q for q in fmt.QUANTIZED if q in wanted]


def read_sentence_file(path) -> list[list[str]]:
    """A calibration file: one sentence per line, words separated by whitespace; blank lines skipped."""
    p = Path(path)
    if not p.is_file():
        raise ExportError(f"calibration file {p}: no such file")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ExportError(f"calibration file {p}: unreadable: {e}") from None
    sentences = [line.split() for line in lines if line.strip()]
    if not sentences:
        raise ExportError(f"calibration file {p}: no sentences (expected one sentence per line)")
    return sentences


def calibration_sentences(run: dict, file=None, dataset=None, data_dir=None,
                          size: int = DEFAULT_CALIBRATION_SIZE) -> tuple[list[list[str]], dict]:
    """Sentences (word lists) for static int8 calibration and a description for the manifest.

    ``file``: every sentence of it. Otherwise a seeded random sample of ``size`` sentences of the
    train split of ``dataset`` (default: the run's ``args.dataset``; ``data_dir`` default: the
    run's, unless ``dataset`` is given), read with :func:`training.corpora.load_dataset`."""
    if not isinstance(size, int) or size < 1:
        raise ExportError(f"calibration size must be >= 1, got {size!r}")
    if file is not None:
        sents = read_sentence_file(file)
        return sents, {"source": "file", "file": str(Path(file).resolve()), "sentences": len(sents)}
    from training import corpora

    targs = run.get("args") or {}
    name = dataset or targs.get("dataset") or "default"
    ddir = data_dir if data_dir is not None else (targs.get("data_dir") if dataset is None else None)
    try:
        train = corpora.load_dataset(name, data_dir=ddir).train
    except corpora.DataError as e:
        raise ExportError(f"calibration data: {e}") from None
    except Exception as e:  # e.g. the hub unreachable offline
        raise ExportError(f"calibration data: cannot load dataset {name!r}: {type(e).__name__}: {e}") from None
    pool = [list(x.words) for x in train if x.words]
    if not pool:
        raise ExportError(f"calibration data: the train split of {name!r} is empty")
    import random

    picked = sorted(random.Random(CALIBRATION_SEED).sample(range(len(pool)), min(size, len(pool))))
    return [pool[i] for i in picked], {"source": "dataset", "dataset": str(name), "data_dir": ddir,
                                       "split": "train", "pool": len(pool), "sentences": len(picked),
                                       "sample": f"random, seed {CALIBRATION_SEED}"}


@dataclass
class Plan:
    """What an export will do, every input checked (:func:`validate`) before anything is written."""

    given: Path               # the run directory or checkpoint as given
    checkpoint: Path          # the checkpoint directory it resolves to
    run: dict                 # its run.json
    crf: dict                 # its CRF tensors (NumPy)
    labels: list[str]
    config: dict              # its config.json
    opset: int | None         # requested (None: optimum's default)
    quantize: list[str]       # of "int8", "int8-dynamic"
    max_length: int
    out: Path                 # the export directory
    calibration: dict | None  # static int8: {"sentences", "info", "keep_fp32"}


def validate(source, out=None, opset=None, quantize=None, max_length=None, calibration=None,
             calibration_dataset=None, data_dir=None, calibration_size=DEFAULT_CALIBRATION_SIZE,
             calibration_method="minmax", keep_fp32=DEFAULT_KEEP_FP32) -> Plan:
    """Check every input before anything is written. Returns the export's :class:`Plan`."""
    given = Path(source)
    try:
        checkpoint = ckpt.resolve(given)
        run = ckpt.read_run(checkpoint)
        crf = ckpt.read_crf_numpy(checkpoint)
    except ckpt.CheckpointError as e:
        raise ExportError(str(e)) from None
    except Exception as e:  # a corrupt crf.safetensors / run.json
        raise ExportError(f"{given}: unreadable checkpoint: {type(e).__name__}: {e}") from None
    labels = run.get("labels")
    if not isinstance(labels, list) or not labels:
        raise ExportError(f"{checkpoint / ckpt.RUN_FILE}: no labels")
    L = len(labels)
    for k, shape in (("transitions", (L, L)), ("start", (L,)), ("end", (L,))):
        if tuple(crf[k].shape) != shape:
            raise ExportError(f"{checkpoint / ckpt.CRF_FILE}: {k} has shape {tuple(crf[k].shape)}, "
                              f"expected {shape} for {L} labels")
        if not np.isfinite(crf[k]).all():
            raise ExportError(f"{checkpoint / ckpt.CRF_FILE}: {k} contains NaN or infinite values")
    if not any((checkpoint / f).is_file() for f in MODEL_WEIGHT_FILES):
        raise ExportError(f"{checkpoint}: no model.safetensors (encoder weights) in the checkpoint")
    if not (checkpoint / "tokenizer.json").is_file() and not (checkpoint / "tokenizer_config.json").is_file():
        raise ExportError(f"{checkpoint}: no tokenizer files in the checkpoint")
    config = json.loads((checkpoint / ckpt.CONFIG_FILE).read_text())
    cfg_labels = [config.get("id2label", {}).get(str(i)) for i in range(len(config.get("id2label", {})))]
    if cfg_labels != labels:
        raise ExportError(f"{checkpoint}: config.json labels {cfg_labels} differ from run.json labels {labels}")

    if opset is not None:
        if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
            raise ExportError(f"unsupported opset {opset!r}: use {MIN_OPSET}..{MAX_OPSET} "
                              f"(default: optimum's choice for BERT)")
    quantize = _quantize_list(quantize)
    keep_fp32 = tuple(keep_fp32 or ())
    for pattern in keep_fp32:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ExportError(f"--int8-keep-fp32 {pattern!r}: not a regular expression: {e}") from None
    if calibration_method not in CALIBRATION_METHODS:
        raise ExportError(f"unknown calibration method {calibration_method!r}: use {', '.join(CALIBRATION_METHODS)}")

    if max_length is None:
        max_length = (run.get("args") or {}).get("max_length") or DEFAULT_MAX_LENGTH
    try:
        max_length = int(max_length)
    except (TypeError, ValueError):
        raise ExportError(f"bad max_length {max_length!r}") from None
    max_pos = int(config.get("max_position_embeddings", 512))
    if not 4 <= max_length <= max_pos:
        raise ExportError(f"max_length {max_length} must be in 4..{max_pos} (the model's max_position_embeddings)")

    out = Path(out) if out is not None else _default_out(given, checkpoint)
    if _is_within(checkpoint, out) or _is_within(out, checkpoint):
        raise ExportError(f"output {out} would overlap the checkpoint {checkpoint}; choose another --out")
    if out.exists():
        if not out.is_dir():
            raise ExportError(f"output {out} exists and is not a directory")
        if any(out.iterdir()) and not (out / fmt.MANIFEST).is_file():
            raise ExportError(f"output {out} exists, is not empty and is not an ONNX export; "
                              f"refusing to replace it (choose another --out)")
    calib = None
    if "int8" in quantize:
        sents, info = calibration_sentences(run, calibration, calibration_dataset, data_dir, calibration_size)
        calib = {"sentences": sents, "info": {**info, "method": calibration_method}, "keep_fp32": keep_fp32}
    return Plan(given, checkpoint, run, crf, labels, config, opset, quantize, max_length, out, calib)


# --------------------------------------------------------------------------- helpers
def _sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def checkpoint_digest(directory: Path) -> tuple[str, dict]:
    """sha256 of every file of a checkpoint, and one digest over the sorted (name, sha256) list."""
    files = {str(p.relative_to(directory)): _sha256(p) for p in sorted(directory.rglob("*")) if p.is_file()}
    h = hashlib.sha256()
    for name, digest in files.items():
        h.update(f"{name}\0{digest}\n".encode())
    return h.hexdigest(), files


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "tokenizers", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _ort_session(path: Path):
    return open_session(path)


def torch_reference(model, tokenizer, sentences, max_length: int) -> dict:
    """The PyTorch side of the parity check: the parity sentences through the tagging pipeline with
    the model as the source of emissions (:mod:`training.backend`), as the sequences the engine
    runs (a sentence longer than ``max_length`` cut into windows), in one padded batch; logits
    kept. ``{"labels", "windows"}``."""
    from training import backend

    tagger = backend.tagger(model, tokenizer, max_length)
    windows = tagger.windows([Document.from_words(s) for s in sentences])
    tagger.run(windows, batch_size=max(len(windows), 1), scores=False, keep_logits=True)
    return {"labels": tagger.labels, "windows": windows}


def measure_parity(onnx_path: Path, ref: dict, crf: dict, tokenizer, sentences, max_length: int) -> dict:
    """Compare an ONNX graph with the PyTorch reference (:func:`torch_reference`) through the same
    pipeline on the same windows: in one padded batch, and one window at a time (no padding)."""
    tagger = Tagger(OrtEmissions(_ort_session(onnx_path)), tokenizer, {"labels": ref["labels"], **crf}, max_length)
    docs = [Document.from_words(s) for s in sentences]
    ref_windows = ref["windows"]
    t0 = time.perf_counter()
    batched, alone = tagger.windows(docs), tagger.windows(docs)
    if [w.ids for w in batched] != [w.ids for w in ref_windows]:  # one tokenizer: cannot happen
        raise ExportFailed(f"{onnx_path.name}: the parity windows differ from the PyTorch reference's")
    tagger.run(batched, batch_size=max(len(batched), 1), scores=False, keep_logits=True)
    tagger.run(alone, batch_size=1, scores=False)
    for w, r in zip(batched, ref_windows):
        if w.logits.shape != r.logits.shape:
            raise ExportFailed(f"{onnx_path.name}: output shape {w.logits.shape} != PyTorch {r.logits.shape}")

    def max_diff(xs, ys, key):
        return max((float(np.abs(getattr(x, key) - getattr(y, key)).max()) for x, y in zip(xs, ys)), default=0.0)

    seconds = time.perf_counter() - t0
    tags, single_tags, ref_tags = ([w.tags for w in ws] for ws in (batched, alone, ref_windows))
    words = sum(len(t) for t in ref_tags)
    agree = sum(a == b for ta, tb in zip(tags, ref_tags) for a, b in zip(ta, tb))
    agree1 = sum(a == b for ta, tb in zip(single_tags, ref_tags) for a, b in zip(ta, tb))
    return {
        "sentences": len(sentences),
        "windows": len(ref_windows),
        "words": int(words),
        "sub_tokens": sum(len(w.ids) for w in ref_windows),
        "word_lengths": [len(w.first) for w in ref_windows],
        "max_abs_emission_diff": max_diff(batched, ref_windows, "emissions"),
        "max_abs_emission_diff_unbatched": max_diff(alone, ref_windows, "emissions"),
        # the graph against itself: padded batch vs alone (0 for a batch-invariant graph)
        "max_abs_emission_diff_batched_vs_alone": max_diff(alone, batched, "emissions"),
        "max_abs_logit_diff": max_diff(batched, ref_windows, "logits"),
        "tag_agreement": agree / max(words, 1),
        "tag_agreement_unbatched": agree1 / max(words, 1),
        "sentences_identical": sum(a == b for a, b in zip(tags, ref_tags)) / max(len(ref_tags), 1),
        "seconds": round(seconds, 3),
    }


@contextlib.contextmanager
def _quiet(enabled: bool = True):
    """Silence the exporters' warnings and chatter (torch tracer warnings, optimum logging)."""
    if not enabled:
        yield
        return
    import logging

    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("optimum", "transformers", "onnxruntime", "root", "")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def _make_readable(directory: Path) -> None:
    """mkdtemp / mkstemp create 0700 / 0600: give the deployable directory the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for f in directory.iterdir():
        if f.is_file():
            f.chmod(0o666 & ~umask)


def _graph_opset(model) -> int:
    return next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _fused_stats(stats: dict) -> dict:
    return {k: int(v) for k, v in sorted(stats.items()) if int(v) > 0}


# --------------------------------------------------------------------------- static int8
class _CalibrationReader:
    """Feeds calibration sentences to ONNX Runtime's calibrator one at a time (no padding)."""

    def __init__(self, tokenizer, sentences, max_length: int, input_names):
        self.tokenizer, self.sentences, self.max_length = tokenizer, sentences, max_length
        self.input_names, self.i = list(input_names), 0

    def get_next(self):
        if self.i >= len(self.sentences):
            return None
        enc = self.tokenizer([self.sentences[self.i]], is_split_into_words=True, truncation=True,
                             max_length=self.max_length, return_tensors="np")
        self.i += 1
        ids = np.asarray(enc["input_ids"], dtype=np.int64)
        return {n: np.asarray(enc[n], dtype=np.int64) if n in enc else np.zeros_like(ids) for n in self.input_names}

    def rewind(self):
        self.i = 0


def quantize_static_int8(src: Path, dst: Path, tokenizer, calibration: dict, max_length: int, input_names,
                         keep_fp32: tuple[str, ...] = (), reduce_range: bool = False) -> dict:
    """Static int8 of ``src`` -> ``dst`` (QDQ, per-channel int8 weights, uint8 activations calibrated
    on ``calibration["sentences"]``). Only MatMuls with a constant weight (the linear layers) and
    Gathers (embeddings) are quantised, except nodes whose name matches a ``keep_fp32`` regular
    expression: the attention products (queries x keys, probabilities x
    values) stay fp32. In a fused graph the ``Attention`` contrib op (with its query / key / value
    projections) is not quantised by ONNX Runtime's QDQ quantizer; the output projection, the
    feed-forward layers and the classifier are. Returns the manifest entry."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, \
        quantize_static

    reader_cls = type("CalibrationReader", (_CalibrationReader, CalibrationDataReader), {})
    reader = reader_cls(tokenizer, calibration["sentences"], max_length, input_names)
    method = calibration["info"]["method"]
    calib_method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                    "percentile": CalibrationMethod.Percentile}[method]
    op_types = ["MatMul", "Gather"]
    model = onnx.load(str(src))
    # ONNX shape inference does not know the fused graph's contrib ops (Attention, SkipLayerNormalization):
    # without types on their outputs the quantizer would leave every activation in fp32
    shaped = False
    with contextlib.suppress(Exception), _quiet():
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        model = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
        shaped = True
    inits = {i.name for i in model.graph.initializer}
    # QDQ ignores MatMulConstBOnly: exclude the attention products (no constant operand) by name
    exclude = [n.name for n in model.graph.node if n.op_type == "MatMul" and not set(n.input) & inits]
    kept = [n.name for n in model.graph.node
            if n.op_type in op_types and n.name not in exclude and any(re.search(k, n.name) for k in keep_fp32)]
    src_shaped = dst.with_name(dst.name + ".shaped.onnx")
    onnx.save(model, str(src_shaped))
    del model
    t0 = time.perf_counter()
    try:
        with _quiet():
            quantize_static(str(src_shaped), str(dst), reader, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=op_types, nodes_to_exclude=exclude + kept,
                            per_channel=True, reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=calib_method,
                            extra_options={"QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}})
    finally:
        src_shaped.unlink(missing_ok=True)
    seconds = time.perf_counter() - t0
    graph = onnx.load(str(dst)).graph
    counts: dict = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    if not counts.get("DequantizeLinear"):
        raise ExportFailed(f"{src.name}: the static quantizer quantised nothing")
    # a MatMul is quantised when both of its operands come out of a DequantizeLinear
    dq_out = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    mm = [n for n in graph.node if n.op_type == "MatMul"]
    return {"symbolic_shape_inference": shaped, "matmuls_excluded": len(exclude),
            "keep_fp32_patterns": list(keep_fp32), "kept_fp32": kept,"method": "onnxruntime.quantization.quantize_static", "format": "QDQ", "weight_type": "QInt8",
            "per_channel": True, "activation_type": "QUInt8", "reduce_range": bool(reduce_range),
            "op_types": op_types, "matmul_const_weight_only": True,
            "matmuls_quantized": sum(set(n.input[:2]) <= dq_out for n in mm), "matmuls_total": len(mm),
            "node_counts": {k: counts[k] for k in sorted(counts)},
            "calibration": calibration["info"], "seconds": round(seconds, 2), "batch_invariant": True}


# --------------------------------------------------------------------------- export
def export(source, out=None, opset: int | None = None, quantize=None, optimize: bool = False,
           max_length: int | None = None, sentences=None, quiet: bool = False, calibration=None,
           calibration_dataset=None, data_dir=None, calibration_size: int = DEFAULT_CALIBRATION_SIZE,
           calibration_method: str = "minmax", keep_fp32=DEFAULT_KEEP_FP32, reduce_range: bool = False) -> Path:
    """Export ``source`` (run dir or checkpoint); returns the export directory. See the module doc.
    ``quantize``: ``"int8"`` (static), ``"int8-dynamic"``, both (a list or ``"int8,int8-dynamic"``);
    ``reduce_range``: 7-bit int8 weights (``--reduce-range``)."""
    plan = validate(source, out, opset, quantize, max_length, calibration, calibration_dataset, data_dir,
                    calibration_size, calibration_method, keep_fp32)
    checkpoint, out = plan.checkpoint, plan.out
    sentences = [list(x) for x in (sentences or PARITY_SENTENCES)]
    t_start = time.perf_counter()
    _log(f"exporting {checkpoint} -> {out}", quiet)

    # imports are slow (optimum ~5 s): only after validation
    import onnx
    from transformers.utils import logging as hf_logging

    from training import model as model_lib

    hf_logging.set_verbosity_error()
    digest, file_hashes = checkpoint_digest(checkpoint)

    missing_parents = []
    p = out.parent
    while not p.exists():
        missing_parents.append(p)
        p = p.parent
    try:
        with ckpt.atomic_dir(out) as tmp:
            manifest = _export_into(tmp, plan, sentences, optimize, quiet, onnx, model_lib, reduce_range)
            manifest[fmt.K_SOURCE].update(sha256=digest, files=file_hashes)
            manifest["export_seconds"] = round(time.perf_counter() - t_start, 2)
            manifest[fmt.K_FILES] = {f.name: f.stat().st_size for f in sorted(tmp.iterdir()) if f.is_file()}
            ckpt.write_json(tmp / fmt.MANIFEST, manifest)
            fmt.read_manifest(tmp)  # round trip
            fmt.read_crf(tmp)
            _make_readable(tmp)
    except BaseException:
        for d in missing_parents:  # parents created for --out: remove again if still empty
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    _log(summary(out), quiet)
    return out


@dataclass
class _Reference:
    """PyTorch's outputs on the parity sentences: what every exported graph is measured against."""

    tokenizer: object
    sentences: list
    max_length: int
    crf: dict     # float32 CRF tensors (transitions, start, end)
    outputs: dict  # torch_reference()

    def parity(self, onnx_path: Path) -> dict:
        return measure_parity(onnx_path, self.outputs, self.crf, self.tokenizer, self.sentences, self.max_length)


@dataclass
class _Graph:
    """The exported fp32 graph as optimum wrote it (before any fusion)."""

    path: Path
    opset: int
    inputs: list[str]
    outputs: list[str]
    nodes: int


def _export_into(tmp: Path, plan: Plan, sentences, optimize: bool, quiet: bool, onnx, model_lib,
                 reduce_range: bool = False) -> dict:
    """Every step of an export, written into ``tmp``; returns the manifest (less hashes and sizes)."""
    ref = _torch_reference(plan, sentences, model_lib)
    graph = _export_graph(tmp, plan, onnx, quiet)
    plain_copy = None  # the unfused graph, kept as a fallback source for static int8
    if optimize and "int8" in plan.quantize:
        plain_copy = tmp / ".model.plain.onnx"
        shutil.copy2(graph.path, plain_copy)
    opt_info = _optimize(graph, plan.config, onnx, quiet) if optimize else {"requested": False, "applied": False}
    fused = " (fused)" if opt_info["applied"] else ""

    parity = {"fp32": ref.parity(graph.path)}
    _log(f"  parity fp32: max |emission diff| {parity['fp32']['max_abs_emission_diff']:.2e}, "
         f"tags agree {parity['fp32']['tag_agreement']:.4f}", quiet)
    models = {"fp32": {"file": fmt.MODEL_FP32, "batch_invariant": True}}
    quant_info = {}
    if "int8" in plan.quantize:
        sources = [(graph.path, fmt.MODEL_FP32 + fused)]
        if plain_copy is not None:
            sources.append((plain_copy, fmt.MODEL_FP32 + " (plain graph, before the fusions)"))
        quant_info["int8"], parity["int8"] = _static_int8(tmp, plan, sources, graph.inputs, ref, onnx, quiet,
                                                              reduce_range)
        models["int8"] = {"file": fmt.MODEL_INT8, "batch_invariant": True}
    if "int8-dynamic" in plan.quantize:
        quant_info["int8-dynamic"], parity["int8-dynamic"] = _dynamic_int8(tmp, graph.path, fused, ref, onnx, quiet,
                                                                                 reduce_range)
        models["int8-dynamic"] = {"file": fmt.MODEL_INT8_DYNAMIC, "batch_invariant": False}
    if plain_copy is not None:
        plain_copy.unlink(missing_ok=True)
    _describe_models(tmp, models)
    tokenizer_check = _write_crf_and_tokenizer(tmp, plan, ref)
    return _manifest(plan, graph, models, opt_info, quant_info, parity, tokenizer_check)


def _torch_reference(plan: Plan, sentences, model_lib) -> _Reference:
    """Step 1: the PyTorch reference (which also checks that the checkpoint loads)."""
    try:
        model, tokenizer, _ = model_lib.load(plan.checkpoint)
    except Exception as e:
        raise ExportFailed(f"could not load {plan.checkpoint}: {type(e).__name__}: {e}") from e
    outputs = torch_reference(model, tokenizer, sentences, plan.max_length)
    crf = {k: plan.crf[k].astype(np.float32) for k in ckpt.CRF_KEYS}
    return _Reference(tokenizer, sentences, plan.max_length, crf, outputs)


def _export_graph(tmp: Path, plan: Plan, onnx, quiet: bool) -> _Graph:
    """Step 2: optimum's export of the encoder + head (crf.safetensors / run.json are ignored by it)."""
    from optimum.exporters.onnx import main_export

    work = tmp / ".optimum"
    t0 = time.perf_counter()
    try:
        with _quiet():
            main_export(model_name_or_path=str(plan.checkpoint), output=str(work), task="token-classification",
                        opset=plan.opset, do_validation=False, local_files_only=True, device="cpu",
                        library_name="transformers")
    except Exception as e:
        raise ExportFailed(f"optimum ONNX export failed: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    src = work / fmt.MODEL_FP32
    if not src.is_file():
        raise ExportFailed(f"optimum wrote no {fmt.MODEL_FP32} (files: {sorted(p.name for p in work.iterdir())})")
    if any(p.name.endswith((".onnx_data", ".data")) for p in work.iterdir()):
        raise ExportFailed("the model needs ONNX external data (> 2 GB); not supported by this exporter")
    model_path = tmp / fmt.MODEL_FP32
    shutil.move(str(src), model_path)
    shutil.rmtree(work)
    export_seconds = time.perf_counter() - t0
    onnx.checker.check_model(str(model_path))
    proto = onnx.load(str(model_path))
    graph = _Graph(model_path, _graph_opset(proto), [i.name for i in proto.graph.input],
                   [o.name for o in proto.graph.output], len(proto.graph.node))
    del proto
    _log(f"  onnx: opset {graph.opset}, inputs {graph.inputs}, {graph.nodes} nodes, "
         f"{model_path.stat().st_size / 1e6:.1f} MB ({export_seconds:.1f} s)", quiet)
    return graph


def _optimize(graph: _Graph, config: dict, onnx, quiet: bool) -> dict:
    """Step 3 (``--optimize``): ORT transformer fusions; the fused graph replaces model.onnx when
    something was fused. Returns the manifest's ``optimize`` entry."""
    from onnxruntime.transformers.optimizer import optimize_model

    opt_info = {"requested": True, "applied": False}
    model_path = graph.path
    num_heads = int(config.get("num_attention_heads", 0))
    hidden = int(config.get("hidden_size", 0))
    try:
        with _quiet():
            opt = optimize_model(str(model_path), model_type="bert", num_heads=num_heads, hidden_size=hidden)
            stats = opt.get_fused_operator_statistics()
    except Exception as e:
        raise ExportFailed(f"ONNX Runtime optimizer failed: {type(e).__name__}: {e}") from e
    fused = _fused_stats(stats)
    total = sum(fused.values())
    opt_info.update(model_type="bert", num_heads=num_heads, hidden_size=hidden, opt_level=0,
                    fused_operators=fused, fused_total=total, nodes_before=graph.nodes)
    if total:
        opt_path = model_path.parent / ".model.opt.onnx"
        opt.save_model_to_file(str(opt_path))
        onnx.checker.check_model(str(opt_path))
        os.replace(opt_path, model_path)
        nodes_opt = len(onnx.load(str(model_path)).graph.node)
        opt_info.update(applied=True, nodes_after=nodes_opt, file=fmt.MODEL_FP32,
                        note=f"fused graph replaces {fmt.MODEL_FP32}")
        _log(f"  optimize: fused {', '.join(f'{k} x{v}' for k, v in fused.items())}; "
             f"{graph.nodes} -> {nodes_opt} nodes (replaces {fmt.MODEL_FP32})", quiet)
    else:
        opt_info.update(note=f"nothing was fused; {fmt.MODEL_FP32} is the plain exported graph")
        _log(f"  optimize: nothing was fused; {fmt.MODEL_FP32} left as exported", quiet)
    return opt_info


def _static_int8(tmp: Path, plan: Plan, sources, input_names, ref: _Reference, onnx, quiet: bool,
                 reduce_range: bool = False):
    """Step 4a (``--quantize int8``): static, calibrated QDQ int8 from the first of ``sources``
    ((path, description) pairs) that quantises. Returns (quantization info, parity)."""
    q_path, info, errors = tmp / fmt.MODEL_INT8, None, []
    for src, described in sources:
        try:
            info = quantize_static_int8(src, q_path, ref.tokenizer, plan.calibration, plan.max_length, input_names,
                                        plan.calibration["keep_fp32"], reduce_range)
            onnx.checker.check_model(str(q_path))
            info["source"] = described
            break
        except Exception as e:
            errors.append(f"{described}: {type(e).__name__}: {_one_line(e)}")
            q_path.unlink(missing_ok=True)
    if info is None:
        raise ExportFailed(f"static int8 quantization failed: {' ; '.join(errors)}")
    if errors:
        info["failed_sources"] = errors
    parity = ref.parity(q_path)
    _log(f"  int8 (static, {info['calibration']['sentences']} calibration sentences, "
         f"{info['calibration']['method']}): max |emission diff| {parity['max_abs_emission_diff']:.2e}, "
         f"tags agree {parity['tag_agreement']:.4f}, {q_path.stat().st_size / 1e6:.1f} MB", quiet)
    return info, parity


def _dynamic_int8(tmp: Path, model_path: Path, fused: str, ref: _Reference, onnx, quiet: bool,
                  reduce_range: bool = False):
    """Step 4b (``--quantize int8-dynamic``): ``quantize_dynamic`` per tensor, and per channel if that
    clearly improves parity. Returns (quantization info, parity)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    candidates = {}
    best = None
    for per_channel in (False, True):
        q_path = tmp / (".int8d-pc.onnx" if per_channel else ".int8d.onnx")
        try:
            with _quiet():
                quantize_dynamic(str(model_path), str(q_path), weight_type=QuantType.QInt8,
                                 per_channel=per_channel, reduce_range=reduce_range,
                                 # the fused graph's contrib ops defeat ONNX shape inference
                                 extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
            onnx.checker.check_model(str(q_path))
            par = ref.parity(q_path)
        except Exception as e:
            if not per_channel:
                raise ExportFailed(f"int8-dynamic quantization failed: {type(e).__name__}: {e}") from e
            candidates["per_channel"] = {"error": f"{type(e).__name__}: {e}"}
            q_path.unlink(missing_ok=True)
            continue
        candidates["per_channel" if per_channel else "per_tensor"] = {
            k: par[k] for k in ("max_abs_emission_diff", "tag_agreement", "sentences_identical")}
        # per-tensor first; per-channel is kept only if it clearly helps parity: more tags agree,
        # or as many agree and the max emission difference is at least 10% smaller
        if best is None or par["tag_agreement"] > best[2]["tag_agreement"] or (
                par["tag_agreement"] == best[2]["tag_agreement"]
                and par["max_abs_emission_diff"] <= 0.9 * best[2]["max_abs_emission_diff"]):
            if best is not None:
                best[1].unlink()
            best = (per_channel, q_path, par)
        else:
            q_path.unlink()
    per_channel, q_path, par = best
    os.replace(q_path, tmp / fmt.MODEL_INT8_DYNAMIC)
    info = {
        "method": "onnxruntime.quantization.quantize_dynamic", "weight_type": "QInt8",
        "activations": "dynamic uint8 (scale over the whole batch tensor: not batch-invariant)",
        "per_channel": per_channel, "reduce_range": bool(reduce_range),
        "source": fmt.MODEL_FP32 + fused, "candidates": candidates}
    _log(f"  int8-dynamic ({'per-channel' if per_channel else 'per-tensor'}): max |emission diff| "
         f"{par['max_abs_emission_diff']:.2e}, tags agree {par['tag_agreement']:.4f}, "
         f"{(tmp / fmt.MODEL_INT8_DYNAMIC).stat().st_size / 1e6:.1f} MB", quiet)
    return info, par


def _describe_models(tmp: Path, models: dict) -> None:
    """Step 5: size, hash and ONNX Runtime's view of the inputs / outputs of every written model."""
    for entry in models.values():
        f = tmp / entry["file"]
        sess = _ort_session(f)
        entry.update(bytes=f.stat().st_size, sha256=_sha256(f),
                     input_types={i.name: i.type for i in sess.get_inputs()},
                     output_names=[o.name for o in sess.get_outputs()])


def _write_crf_and_tokenizer(tmp: Path, plan: Plan, ref: _Reference) -> dict:
    """Step 6: crf.json, the tokenizer files (tokenizer.json normalised for serving) and config.json.
    Returns the manifest's ``tokenizer`` entry."""
    checkpoint, crf = plan.checkpoint, ref.crf
    fmt.write_crf(tmp, plan.labels, crf["transitions"], crf["start"], crf["end"])
    for name in EXPORTED_TOKENIZER_FILES + (ckpt.CONFIG_FILE,):
        if (checkpoint / name).is_file():
            shutil.copy2(checkpoint / name, tmp / name)
    if not (tmp / fmt.TOKENIZER_FILE).is_file():  # e.g. a checkpoint saved with only vocab.txt
        ref.tokenizer.save_pretrained(str(tmp))
        for f in tmp.glob("*.py"):
            f.unlink()
    return _normalise_tokenizer_json(tmp / fmt.TOKENIZER_FILE, ref.tokenizer, ref.sentences, plan.max_length)


def _manifest(plan: Plan, graph: _Graph, models: dict, opt_info: dict, quant_info: dict, parity: dict,
              tokenizer_check: dict) -> dict:
    """Step 7: the manifest (:mod:`export.format`), less the source hashes and file sizes."""
    run, config = plan.run, plan.config
    return {
        fmt.K_FORMAT: fmt.FORMAT,
        fmt.K_VERSION: fmt.FORMAT_VERSION,
        fmt.K_CREATED: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        fmt.K_SOURCE: {"checkpoint": str(plan.checkpoint.resolve()), "given": str(plan.given),
                       "checkpoint_format": run.get("format"), "checkpoint_version": run.get("version"),
                       "saved_at": run.get("saved_at"), "epoch": run.get("epoch"),
                       "metrics": run.get("metrics")},
        fmt.K_KIND: run.get("kind"),
        fmt.K_METHOD: run.get("method"),
        fmt.K_VERSIONS: _versions(),
        fmt.K_OPSET: graph.opset,
        "opset_requested": plan.opset,
        fmt.K_LABELS: list(plan.labels),
        fmt.K_MAX_LENGTH: plan.max_length,
        fmt.K_INPUTS: graph.inputs,
        fmt.K_OUTPUTS: graph.outputs,
        "dynamic_axes": {"batch": 0, "sequence": 1},
        "emissions": "logits (batch, sequence, labels) per sub-token; the CRF runs on the logits of the "
                     "first sub-token of every word",
        fmt.K_PRECISIONS: list(models),
        fmt.K_MODELS: models,
        fmt.K_MODEL: {"model_type": config.get("model_type"), "hidden_size": config.get("hidden_size"),
                      "num_layers": config.get("num_hidden_layers"),
                      "num_heads": config.get("num_attention_heads"), "vocab_size": config.get("vocab_size"),
                      "num_parameters": run.get("num_parameters")},
        fmt.K_OPTIMIZE: opt_info,
        fmt.K_QUANTIZATION: quant_info,
        fmt.K_PARITY: parity,
        fmt.K_TOKENIZER: tokenizer_check,
    }


def _normalise_tokenizer_json(path: Path, hf_tokenizer, sentences, max_length: int) -> dict:
    """Make ``tokenizer.json`` encode exactly as training did, with the `tokenizers` library alone.

    A checkpoint's tokenizer.json can carry padding / truncation settings of its origin (the
    packaged all-MiniLM-L6-v2 pads every input to 128 tokens). The exported file has padding
    off and truncation at ``max_length`` (longest-first, right, stride 0: what transformers'
    ``truncation=True, max_length=...`` used in training); then it is checked against
    transformers on the parity sentences.
    """
    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(str(path))
    before = {"padding": tk.padding, "truncation": tk.truncation}
    tk.no_padding()
    tk.enable_truncation(max_length, stride=0, strategy="longest_first", direction="right")
    tk.save(str(path))
    tk = Tokenizer.from_file(str(path))
    mismatched = 0
    for words in sentences:
        a = tk.encode(words, is_pretokenized=True).ids
        b = hf_tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)["input_ids"]
        mismatched += a != b
    if mismatched:
        raise ExportFailed(f"{path.name}: the `tokenizers` library encodes {mismatched} of {len(sentences)} "
                           f"parity sentences differently from transformers; serving would be wrong")
    return {"file": fmt.TOKENIZER_FILE, "library": "tokenizers", "checked_sentences": len(sentences),
            "identical_ids": True,
            "padding": None, "truncation": {"max_length": max_length, "strategy": "longest_first",
                                            "direction": "right"},
            "changed_from_checkpoint": {k: v for k, v in before.items()
                                        if v != (None if k == "padding" else tk.truncation)}}


def summary(out: Path) -> str:
    man = fmt.read_manifest(out)
    lines = [f"wrote {out}  (opset {man[fmt.K_OPSET]}, inputs {', '.join(man[fmt.K_INPUTS])}, "
             f"max_length {man[fmt.K_MAX_LENGTH]}, {len(man[fmt.K_LABELS])} labels)"]
    for prec in man[fmt.K_PRECISIONS]:
        m, p = man[fmt.K_MODELS][prec], man[fmt.K_PARITY][prec]
        lines.append(f"  {prec:<12} {m['file']:<23} {m['bytes'] / 1e6:7.2f} MB   max |emission diff| "
                     f"{p['max_abs_emission_diff']:.2e}   tag agreement {p['tag_agreement']:.4f} "
                     f"({p['words']} words, {p['sentences']} sentences)")
    o = man[fmt.K_OPTIMIZE]
    if o.get("requested"):
        if o.get("applied"):
            lines.append(f"  optimized: {o['fused_total']} fused operators "
                         f"({', '.join(f'{k}={v}' for k, v in o['fused_operators'].items())})")
        else:
            lines.append(f"  optimized: {o['note']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.onnx", description=__doc__.splitlines()[0])
    ap.add_argument("source", metavar="RUN_OR_CHECKPOINT", help="run directory (runs/student) or checkpoint")
    ap.add_argument("--out", default=None, help="output directory (default: RUN/onnx)")
    ap.add_argument("--opset", type=int, default=None,
                    help=f"ONNX opset {MIN_OPSET}..{MAX_OPSET} (default: optimum's default for BERT)")
    ap.add_argument("--quantize", action="append", default=None, metavar="{int8,int8-dynamic}",
                    help="also write an int8 model: int8 = static (calibrated, batch-invariant), int8-dynamic = "
                         "ONNX Runtime dynamic quantisation (not batch-invariant); repeat or comma-separate for both")
    ap.add_argument("--calibration", default=None, metavar="FILE",
                    help="static int8: calibrate on the sentences of FILE (one per line) instead of the train split")
    ap.add_argument("--calibration-dataset", default=None,
                    help="static int8: dataset whose train split is sampled (default: the run's)")
    ap.add_argument("--data-dir", default=None, help="folder of the calibration dataset (default: the run's)")
    ap.add_argument("--calibration-size", type=int, default=DEFAULT_CALIBRATION_SIZE,
                    help=f"static int8: sentences sampled from the train split (default {DEFAULT_CALIBRATION_SIZE})")
    ap.add_argument("--int8-keep-fp32", action="append", default=None, metavar="REGEX",
                    help="static int8: leave the MatMuls / Gathers whose node name matches REGEX in fp32 (repeatable; "
                         f"default {' '.join(DEFAULT_KEEP_FP32)}; give '' to quantise them all)")
    ap.add_argument("--reduce-range", action="store_true",
                    help="int8: 7-bit weights, so that CPUs without VNNI (AVX2) cannot saturate (see the module doc)")
    ap.add_argument("--optimize", action="store_true", help="ONNX Runtime transformer fusions (replace model.onnx)")
    ap.add_argument("--max-length", type=int, default=None,
                    help=f"max sub-tokens per sentence (default: the run's, else {DEFAULT_MAX_LENGTH})")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    try:
        export(args.source, args.out, args.opset, args.quantize, args.optimize, args.max_length, quiet=args.quiet,
               calibration=args.calibration, calibration_dataset=args.calibration_dataset, data_dir=args.data_dir,
               calibration_size=args.calibration_size, reduce_range=args.reduce_range,
               keep_fp32=DEFAULT_KEEP_FP32 if args.int8_keep_fp32 is None else [k for k in args.int8_keep_fp32 if k])
    except ExportError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except ExportFailed as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 1
    except Exception as e:  # anything unexpected: still one line, and nothing half-written
        print(f"error: export failed: {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
        return 1
    return 0


def _one_line(e: BaseException) -> str:
    return " | ".join(line.strip() for line in str(e).splitlines() if line.strip())


if __name__ == "__main__":
    sys.exit(main())
