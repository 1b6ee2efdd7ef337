"""Entity F1 of an ONNX export vs its PyTorch checkpoint: ``python -m export.evaluate EXPORT_DIR``.

    python -m export.evaluate EXPORT_DIR [--dataset NAME] [--data-dir D] [--split dev]
                                         [--precision fp32|int8|int8-dynamic|all] [--limit N]

Runs the exported graph(s) with ONNX Runtime on a split (tokenized with the export's own
tokenizer through transformers, exactly as in training: :func:`training.data.encode`),
gathers the emissions at first sub-tokens and decodes them with the NumPy Viterbi; the source
checkpoint (from the manifest, or ``--checkpoint``) is evaluated on the same sentences with
:func:`training.evaluate.predict`. Prints a table and writes
``EXPORT_DIR/eval-<dataset>-<split>.json`` with precision / recall / F1 for pytorch and every
precision of the export, the F1 deltas and the word-level tag agreement with PyTorch. This is an offline tool (it
needs torch); the serving path never imports it.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np

from export import format as fmt
from export import viterbi as np_crf
from training import checkpoint as ckpt


class EvaluateError(ValueError):
    """Bad input (exit code 2)."""


def _session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def onnx_predict(session, crf: dict, encoded, batch_size: int = 32) -> list[list[str]]:
    """Viterbi tags (strings) for every sentence of ``encoded`` with an ONNX Runtime session;
    words cut by max_length are tagged ``O`` (as :func:`training.evaluate.predict` does)."""
    from training import data as data_lib

    labels = crf["labels"]
    names = [i.name for i in session.get_inputs()]
    out: list[list[str] | None] = [None] * len(encoded.items)
    for batch in data_lib.batches(encoded, batch_size, shuffle=False, seed=0,
                                  pad_token_id=getattr(encoded, "pad_token_id", 0), bucket=True):
        feed = {}
        for n in names:
            feed[n] = batch[n].numpy() if n in batch else np.zeros_like(batch["input_ids"].numpy())
        logits = session.run(None, feed)[0]
        word_index = batch["word_index"].numpy()
        mask = batch["word_mask"].numpy()
        emissions = np.take_along_axis(logits, word_index[:, :, None], axis=1)
        _, paths = np_crf.viterbi(emissions, mask, crf["transitions"], crf["start"], crf["end"])
        for b, i in enumerate(batch["index"].tolist()):
            n = int(mask[b].sum())
            tags = [labels[t] for t in paths[b, :n].tolist()]
            out[i] = tags + ["O"] * (encoded.items[i]["n_words"] - n)
    return out  # type: ignore[return-value]


def agreement(a: list[list[str]], b: list[list[str]]) -> float:
    words = sum(len(x) for x in a)
    return sum(p == q for x, y in zip(a, b) for p, q in zip(x, y)) / max(words, 1)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(name).rstrip("/")).name or str(name)).strip("_") or "data"


def evaluate_export(export_dir, dataset=None, data_dir=None, split="dev", precision="all", limit=None,
                    checkpoint=None, batch_size: int = 32, threads: int | None = None, quiet=False) -> dict:
    from training import corpora
    from training import data as data_lib

    export_dir = Path(export_dir)
    man = fmt.read_manifest(export_dir)
    crf = fmt.read_crf(export_dir)
    if crf["labels"] != man[fmt.K_LABELS]:
        raise EvaluateError(f"{export_dir}: crf.json labels differ from the manifest labels")
    avail = man[fmt.K_PRECISIONS]
    precisions = [p for p in fmt.PRECISIONS if p in avail] if precision in ("all", "both") else [precision]
    for p in precisions:
        fmt.model_path(export_dir, p, man)  # clear error if missing
    if split not in ("train", "dev", "test"):
        raise EvaluateError(f"unknown split {split!r}")

    # the source checkpoint: for the PyTorch F1 and the default dataset
    ck_path = Path(checkpoint) if checkpoint else Path(man[fmt.K_SOURCE]["checkpoint"])
    try:
        ck_dir = ckpt.resolve(ck_path)
        run = ckpt.read_run(ck_dir)
    except ckpt.CheckpointError as e:
        raise EvaluateError(f"source checkpoint: {e} (pass --checkpoint)") from None
    if run.get("labels") != man[fmt.K_LABELS]:
        raise EvaluateError(f"{ck_dir}: its labels differ from the export's; wrong --checkpoint?")
    targs = run.get("args") or {}
    name = dataset or targs.get("dataset") or "default"
    ddir = data_dir or (targs.get("data_dir") if dataset is None else None)
    try:
        splits = corpora.load_dataset(name, data_dir=ddir)
        sentences = getattr(splits, split)
        if limit:
            sentences = sentences[:limit]
        corpora.check_tags(sentences, man[fmt.K_LABELS])
    except corpora.DataError as e:
        raise EvaluateError(str(e)) from None
    gold = [s.tags for s in sentences]

    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from training import evaluate as ev
    from training import model as model_lib

    hf_logging.set_verbosity_error()
    tok = AutoTokenizer.from_pretrained(str(export_dir), use_fast=True)
    max_len = int(man[fmt.K_MAX_LENGTH])
    label2id = {l: i for i, l in enumerate(man[fmt.K_LABELS])}
    enc = data_lib.encode(sentences, tok, label2id, max_length=max_len)

    result = {"export": str(export_dir), "dataset": splits.name, "split": split, "sentences": len(sentences),
              "limit": limit, "max_length": max_len, "truncated_words": int(enc.n_truncated_words),
              "checkpoint": str(ck_dir)}
    digest = ckpt_digest_matches(man, ck_dir)
    result["checkpoint_matches_manifest"] = digest

    import torch

    if threads:
        torch.set_num_threads(threads)
    model, _, _ = model_lib.load(ck_dir)
    t0 = time.perf_counter()
    pt_pred = ev.predict(model, enc, batch_size=batch_size)
    pt = ev.entity_metrics(gold, pt_pred) | {"seconds": round(time.perf_counter() - t0, 3)}
    result["pytorch"] = pt
    del model
    for p in precisions:
        sess = _session(fmt.model_path(export_dir, p, man), threads)
        t0 = time.perf_counter()
        pred = onnx_predict(sess, crf, enc, batch_size)
        m = ev.entity_metrics(gold, pred)
        m |= {"seconds": round(time.perf_counter() - t0, 3), "agreement_with_pytorch": agreement(pred, pt_pred),
              "sentences_identical": sum(a == b for a, b in zip(pred, pt_pred)) / max(len(pred), 1)}
        result[p] = m
    result["delta_f1"] = {p: result[p]["f1"] - pt["f1"] for p in precisions}
    for q in fmt.QUANTIZED:
        if "fp32" in result and q in result:
            result["delta_f1"][f"{q}_vs_fp32"] = result[q]["f1"] - result["fp32"]["f1"]
    out = export_dir / f"eval-{_safe(splits.name)}-{split}.json"
    ckpt.write_json(out, result)
    result["path"] = str(out)
    if not quiet:
        print(format_result(result))
        print(f"wrote {out}")
    return result


def ckpt_digest_matches(man: dict, ck_dir: Path) -> bool | None:
    """Whether the checkpoint's files still hash to the manifest's sha256 (None: not recorded)."""
    want = man.get(fmt.K_SOURCE, {}).get("sha256")
    if not want:
        return None
    from export.onnx import checkpoint_digest

    return checkpoint_digest(ck_dir)[0] == want


def format_result(r: dict) -> str:
    rows = [f"{r['export']} on {r['dataset']} {r['split']} ({r['sentences']} sentences, "
            f"{r['truncated_words']} words cut at {r['max_length']} sub-tokens)",
            f"{'model':<13}{'precision':>10}{'recall':>10}{'f1':>10}{'delta f1':>10}{'tags=pt':>9}{'seconds':>9}"]
    for k in ("pytorch",) + fmt.PRECISIONS:
        if k not in r:
            continue
        m = r[k]
        delta = f"{r['delta_f1'][k]:+.4f}" if k in r["delta_f1"] else ""
        agree = f"{m['agreement_with_pytorch']:.4f}" if "agreement_with_pytorch" in m else ""
        rows.append(f"{k:<13}{m['precision']:>10.4f}{m['recall']:>10.4f}{m['f1']:>10.4f}{delta:>10}{agree:>9}"
                    f"{m['seconds']:>9.2f}")
    if r.get("checkpoint_matches_manifest") is False:
        rows.append(f"warning: {r['checkpoint']} changed since the export (sha256 differs from the manifest)")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("export_dir", metavar="EXPORT_DIR")
    ap.add_argument("--dataset", default=None, help="dataset name or folder (default: the checkpoint's)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--split", default="dev", choices=["train", "dev", "test"])
    ap.add_argument("--precision", default="all", choices=list(fmt.PRECISIONS) + ["all", "both"],
                    help="all (or both) = every precision the export has")
    ap.add_argument("--limit", type=int, default=None, help="only the first N sentences")
    ap.add_argument("--checkpoint", default=None, help="PyTorch checkpoint (default: the manifest's source)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        ap.error("--limit must be >= 1")
    try:
        evaluate_export(args.export_dir, args.dataset, args.data_dir, args.split, args.precision, args.limit,
                        args.checkpoint, args.batch_size, args.threads)
    except (EvaluateError, fmt.ExportFormatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
