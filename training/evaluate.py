"""Entity-level evaluation with seqeval: ``python -m training.evaluate RUN --split test``.

Words cut by the tokenizer's max length are predicted ``O`` (and counted), so nothing is hidden:
the gold side always has every word.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import torch
from seqeval.metrics import classification_report

from training import backend
from training import checkpoint as ckpt
from training import crf
from training import corpora
from training import data as data_lib

METRIC_KEYS = ("precision", "recall", "f1")
_SEQEVAL = {"precision": "precision", "recall": "recall", "f1": "f1-score"}


def _process_group() -> tuple[int, int]:
    """(world size, rank) of the initialised process group, else (1, 0)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


@torch.no_grad()
def predict(model, encoded, batch_size: int = 64, device="cpu", with_loss: bool = False,
            distributed: bool = False):
    """Viterbi tags (strings) for every sentence of ``encoded``, padded with ``O`` for cut words
    (words aligned by :func:`training.data.encode`, emissions decoded by :func:`training.backend.decode`).

    With ``with_loss`` also returns the mean CRF NLL of the gold tags (kept words) per sentence.
    With ``distributed`` (every process of the group must call it): the batches are dealt round-robin
    to the processes and the predictions gathered, so each process returns every sentence's tags,
    each sentence predicted once, in the same batch as on one process.
    """
    was_training = model.training
    model.eval()
    labels = model.labels
    world, rank = _process_group() if distributed else (1, 0)
    mine: dict[int, list[str]] = {}
    nll_sum = 0.0
    try:
        batches = data_lib.batches(encoded, batch_size, bucket=True)
        for batch in itertools.islice(batches, rank, None, world):
            idx = batch.pop("index").tolist()
            batch = {k: v.to(device) for k, v in batch.items()}
            p = model(batch)
            if with_loss:
                nll_sum += float(crf.nll(p.emissions, batch["labels"], *p.args()[1:]).sum())
            for i, path in zip(idx, backend.decode(p)):  # the tagging pipeline's NumPy Viterbi
                tags = [labels[t] for t in path]
                mine[i] = tags + ["O"] * (encoded.items[i]["n_words"] - len(tags))
    finally:
        model.train(was_training)
    parts = [(mine, nll_sum)]
    if world > 1:
        import torch.distributed as dist

        parts = [None] * world
        dist.all_gather_object(parts, (mine, nll_sum))
    out: list[list[str] | None] = [None] * len(encoded.items)
    for tags_by_index, _ in parts:
        for i, tags in tags_by_index.items():
            if out[i] is not None:
                raise RuntimeError(f"sentence {i} was predicted twice")
            out[i] = tags
    missing = sum(o is None for o in out)
    if missing:
        raise RuntimeError(f"{missing} sentences were not predicted")
    if with_loss:
        return out, sum(loss for _, loss in parts) / max(len(out), 1)
    return out


def entity_metrics(gold: list[list[str]], pred: list[list[str]]) -> dict:
    """seqeval (conlleval-style) entity precision / recall / F1: micro overall and per type."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predictions")
    rep = classification_report(gold, pred, output_dict=True, zero_division=0)
    per_type = {
        k: {m: float(v[_SEQEVAL[m]]) for m in METRIC_KEYS} | {"support": int(v["support"])}
        for k, v in rep.items()
        if k not in ("micro avg", "macro avg", "weighted avg")
    }
    micro = rep["micro avg"]
    return {
        **{m: float(micro[_SEQEVAL[m]]) for m in METRIC_KEYS},
        "support": int(micro["support"]),
        "per_type": per_type,
    }


def evaluate(model, encoded, sentences, batch_size: int = 64, device="cpu", distributed: bool = False) -> dict:
    """Entity metrics (and mean NLL) of ``model`` on ``encoded`` (the tokenized ``sentences``); with
    ``distributed`` the work is shared by the processes (:func:`predict`) and every process gets the
    metrics of all the sentences."""
    t0 = time.perf_counter()
    pred, loss = predict(model, encoded, batch_size, device, with_loss=True, distributed=distributed)
    m = entity_metrics([s.tags for s in sentences], pred)
    m["loss"] = loss
    m["sentences"] = len(sentences)
    m["truncated_words"] = int(encoded.n_truncated_words)
    m["seconds"] = round(time.perf_counter() - t0, 3)
    return m


def evaluate_sentences(model, tok, sentences, max_length: int, batch_size: int = 64, device="cpu") -> dict:
    """Check the tags against the model's labels, tokenize and :func:`evaluate` raw sentences."""
    corpora.check_tags(sentences, model.labels)
    enc = data_lib.encode(sentences, tok, {l: i for i, l in enumerate(model.labels)}, max_length=max_length)
    return evaluate(model, enc, sentences, batch_size, device)


def format_table(metrics: dict, title: str = "") -> str:
    rows = [f"{'type':<16}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}"]
    for k, v in sorted(metrics["per_type"].items()):
        rows.append(f"{k:<16}{v['precision']:>10.4f}{v['recall']:>10.4f}{v['f1']:>10.4f}{v['support']:>9d}")
    rows.append(f"{'overall':<16}{metrics['precision']:>10.4f}{metrics['recall']:>10.4f}"
                f"{metrics['f1']:>10.4f}{metrics['support']:>9d}")
    return (title + "\n" if title else "") + "\n".join(rows)


def main(argv=None) -> int:
    from training import model as model_lib

    ap = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("run", help="run directory or checkpoint (e.g. runs/teacher)")
    ap.add_argument("--split", default="test", choices=["train", "dev", "test"])
    ap.add_argument("--dataset", default=None, help="dataset name or folder (default: the one it was trained on)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--max-length", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    try:
        model, tok, info = model_lib.load(args.run)
        targs = info.get("args", {})
        name = args.dataset or targs.get("dataset", "default")
        data_dir = args.data_dir or (targs.get("data_dir") if args.dataset is None else None)
        splits = corpora.load_dataset(name, data_dir=data_dir)
        sentences = getattr(splits, args.split)
        corpora.check_tags(sentences, model.labels)
    except (ckpt.CheckpointError, corpora.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    max_len = args.max_length or targs.get("max_length", 128)
    m = evaluate_sentences(model, tok, sentences, max_len, args.batch_size)
    m["dataset"] = splits.name
    path = ckpt.update_metrics(args.run, args.split, m)
    print(format_table(m, f"{args.run} on {splits.name} {args.split} ({len(sentences)} sentences, "
                          f"{m['truncated_words']} words cut at {max_len} sub-tokens)"))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
