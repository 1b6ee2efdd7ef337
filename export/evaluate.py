"""Entity F1 of an ONNX export vs its PyTorch checkpoint: ``python -m export.evaluate EXPORT_DIR``.

    python -m export.evaluate EXPORT_DIR [--dataset NAME] [--data-dir D] [--split dev]
                                         [--precision fp32|int8|int8-dynamic|all] [--limit N]

Tags a split with the tagging pipeline of serving (:class:`export.pipeline.Tagger`: the export's
own ``tokenizer.json``, first sub-tokens, NumPy Viterbi), once per source of emissions: the
source checkpoint (from the manifest, or ``--checkpoint``; :mod:`training.backend`) and every
exported graph on ONNX Runtime (:class:`export.runtime.OrtEmissions`; ``int8-dynamic`` one sentence
at a time, as the engine runs it). The protocol is training's (:func:`training.evaluate.evaluate`):
words after ``max_length`` sub-tokens are cut, predicted ``O`` and counted. Prints a table and writes
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

from export import format as fmt
from export.pipeline import Document, Tagger
from export.runtime import OrtEmissions, open_session
from training import checkpoint as ckpt


class EvaluateError(ValueError):
    """Bad input (exit code 2)."""


def predict(tagger, sentences, batch_size: int = 32) -> tuple[list[list[str]], int]:
    """Tags (strings) of every sentence by ``tagger`` (:class:`export.pipeline.Tagger`) under the
    training protocol (words after ``max_length`` sub-tokens tagged ``O``), and the number of such
    cut words."""
    docs = [Document.from_words(s.words) for s in sentences]
    tags, _, timings = tagger.tag(docs, batch_size, scores=False, truncate=True)
    return [[tagger.labels[t] for t in row] for row in tags], int(timings["truncated_words"])


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

    from tokenizers import Tokenizer

    from training import backend
    from training import evaluate as ev
    from training import model as model_lib

    tok_path = export_dir / fmt.TOKENIZER_FILE
    if not tok_path.is_file():
        raise EvaluateError(f"{export_dir}: missing {fmt.TOKENIZER_FILE}")
    tokenizer = Tokenizer.from_file(str(tok_path))  # the serving tokenizer
    max_len = int(man[fmt.K_MAX_LENGTH])

    import torch

    if threads:
        torch.set_num_threads(threads)
    model, _, _ = model_lib.load(ck_dir)
    t0 = time.perf_counter()
    pt_pred, cut = predict(backend.tagger(model, tokenizer, max_len), sentences, batch_size)
    pt = ev.entity_metrics(gold, pt_pred) | {"seconds": round(time.perf_counter() - t0, 3)}
    del model
    result = {"export": str(export_dir), "dataset": splits.name, "split": split, "sentences": len(sentences),
              "limit": limit, "max_length": max_len, "truncated_words": cut, "checkpoint": str(ck_dir)}
    result["checkpoint_matches_manifest"] = ckpt_digest_matches(man, ck_dir)
    result["pytorch"] = pt
    for p in precisions:
        emissions = OrtEmissions(open_session(fmt.model_path(export_dir, p, man), threads),
                                 batch_invariant=fmt.batch_invariant(man, p))
        t0 = time.perf_counter()
        pred, _ = predict(Tagger(emissions, tokenizer, crf, max_len), sentences, batch_size)
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
