"""Side-by-side table of finished runs: ``python -m training.report runs/teacher runs/student ...``.

Reads each run's ``best/run.json`` and ``metrics.json`` (nothing is recomputed) and prints
kind, method (with its layer-wise terms), depth, parameter count, dev and test entity F1, the test
F1 difference to the first teacher listed, the best epoch / epochs trained, training time.
``--markdown FILE`` also writes the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from training import checkpoint as ckpt


LAYERWISE = (("hidden_weight", "hidden"), ("attn_weight", "attn"), ("emission_weight", "emission"))


def method(info: dict) -> str:
    """``pos``, or ``pos + hidden 1 + emission 1 + extra (augment mention-swap,mask)`` with the layer-wise terms
    and the extra text a student used."""
    args = info.get("args") or {}
    terms = [f"{name} {args[k]:g}" for k, name in LAYERWISE if args.get(k)]
    sources = [f"{k} {args[k]}" for k in ("unlabeled", "augment") if args.get(k)]
    extra = [f"extra ({', '.join(sources)})"] if sources else []
    return " + ".join([info.get("method", "-"), *terms, *extra])


def epochs(info: dict) -> str | None:
    """``best/trained``: the epoch kept and the epochs run (fewer than asked after an early stop)."""
    train = info.get("train")
    if not train:
        return None
    trained = train.get("epochs_trained", (info.get("args") or {}).get("epochs"))
    return f"{train.get('best_epoch')}/{trained}"


def row(run: str) -> dict:
    info = ckpt.read_run(run)
    metrics_file = Path(run) / ckpt.METRICS_FILE
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else info.get("metrics", {})
    f1 = lambda split: metrics.get(split, {}).get("f1")  # noqa: E731
    return {
        "run": run,
        "kind": info.get("kind", "?"),
        "method": method(info),
        "layers": info.get("num_layers"),
        "params_m": round(info.get("num_parameters", 0) / 1e6, 1),
        "dev_f1": f1("dev"),
        "test_f1": f1("test"),
        "epochs": epochs(info),
        "train_s": info.get("train", {}).get("train_seconds"),
        "tok_s": info.get("train", {}).get("tokens_per_second"),
    }


def table(rows: list[dict]) -> str:
    fmt = lambda v: "-" if v is None else (f"{100 * v:.2f}" if isinstance(v, float) and v <= 1 else str(v))  # noqa: E731
    teacher = next((r["test_f1"] for r in rows if r["kind"] == "teacher" and r["test_f1"] is not None), None)
    gap = lambda r: "-" if teacher is None or r["test_f1"] is None else f"{100 * (r['test_f1'] - teacher):+.2f}"  # noqa: E731
    head = ("| run | kind | method | layers | params (M) | dev F1 | test F1 | test vs teacher | best/trained epochs "
            "| train s | train tok/s |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(f"| {r['run']} | {r['kind']} | {r['method']} | {r['layers']} | {r['params_m']} | "
                     f"{fmt(r['dev_f1'])} | {fmt(r['test_f1'])} | {gap(r)} | {r['epochs'] or '-'} | "
                     f"{r['train_s'] or '-'} | {r['tok_s'] or '-'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.report", description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args(argv)
    rows = []
    for r in args.runs:
        try:
            rows.append(row(r))
        except ckpt.CheckpointError as e:
            print(f"skipping {r}: {e}", file=sys.stderr)
    out = table(rows)
    print(out)
    if args.markdown:
        Path(args.markdown).write_text(out + "\n")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
