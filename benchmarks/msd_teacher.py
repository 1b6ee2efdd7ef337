"""What did MSD do to the teacher? Drift and F1 of each meta-updated teacher against the original.

    python -m benchmarks.msd_teacher                       # every finished MSD cell under runs/paper
    python -m benchmarks.msd_teacher --runs runs/paper/conll2003/msd-L3-a0.5-s0 --data-dir ../shared/data
    python -m benchmarks.msd_teacher --records benchmarks/results/full_runs.jsonl   # cells whose directory is gone

MSD updates the teacher by the meta-gradient of the student's quiz loss and saves it in
``RUN/teacher``. If the teacher barely moves, MSD is Posterior KD with extra cost; if it moves a lot
and loses F1, it has stopped being a good tagger and became a "teaching" model. This reports, per
MSD run: the relative parameter change ``||T_msd - T_0|| / ||T_0||`` (all parameters, and the
encoder / emission head / CRF separately), the largest absolute change, and the dev and test entity
F1 of both teachers on the run's dataset (dev F1 as the run recorded it when it did: ``msd_teacher`` in
its ``metrics.json``, measured by ``training.distill``'s teacher guard on the full dev split, with the
guard's restores and skipped meta steps). Writes ``benchmarks/results/msd_teacher.{md,json}``; rows of
runs not analysed this time are kept, a re-analysed run replaces its row. The full-budget grid
(``benchmarks.paper``) runs this on each MSD cell as it finishes; for a cell whose run directory was
not kept, ``--records`` adds a row from its result line (dev F1 as recorded; drift and test F1 unknown).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
from pathlib import Path

import torch

from training import corpora
from training import evaluate as eval_lib
from training import model as model_lib

OUT = Path("benchmarks/results/msd_teacher")


def drift(before: dict, after: dict, encoder_prefix: str = "encoder.bert.") -> dict:
    """Relative L2 change of the float tensors of two state dicts, overall and per part: the encoder
    (keys under ``encoder_prefix``), the CRF (``crf.``) and the rest (the emission head)."""
    if before.keys() != after.keys():
        raise ValueError("the two teachers have different parameters")
    parts: dict[str, list[float]] = {}
    biggest = 0.0
    for k, a in before.items():
        if not a.is_floating_point():
            continue
        b = after[k]
        part = "crf" if k.startswith("crf.") else "encoder" if k.startswith(encoder_prefix) else "head"
        d, n = float((b.double() - a.double()).pow(2).sum()), float(a.double().pow(2).sum())
        acc = parts.setdefault(part, [0.0, 0.0])
        acc[0] += d
        acc[1] += n
        biggest = max(biggest, float((b - a).abs().max()))
    total = [sum(v[0] for v in parts.values()), sum(v[1] for v in parts.values())]
    rel = lambda v: (v[0] / v[1]) ** 0.5 if v[1] > 0 else 0.0  # noqa: E731
    return {"relative_change": rel(total), **{f"relative_change_{p}": rel(v) for p, v in sorted(parts.items())},
            "max_abs_change": biggest}


def f1s(model, tok, splits, max_length: int) -> dict:
    return {split: eval_lib.evaluate_sentences(model, tok, getattr(splits, split), max_length)["f1"]
            for split in ("dev", "test")}


# every run of a grid shares one dataset and one original teacher: load and score them once
_SPLITS: dict = {}  # (dataset, data dir) -> DatasetSplits
_ORIGINAL_F1: dict = {}  # (teacher path, dataset, data dir, max length) -> F1


def analyse(run: Path, data_dir: str | None) -> dict:
    info = json.loads((run / "best" / "run.json").read_text())
    args = info.get("args", {})
    original = Path(args["teacher"])
    t0, tok0, _ = model_lib.load(original)
    t1, tok1, _ = model_lib.load(run / "teacher")
    row = {"run": str(run), "teacher": str(original), "dataset": args.get("dataset"), "seed": args.get("seed"),
           "quiz_split": args.get("quiz_split"), "alpha": args.get("alpha"), "student_layers": args.get("student_layers"),
           "teacher_lr": args.get("teacher_lr"),
           **drift(t0.state_dict(), t1.state_dict(), f"encoder.{t0.encoder.base_model_prefix}.")}
    dd = data_dir or args.get("data_dir")
    ml = args.get("max_length", 128)
    if (args["dataset"], dd) not in _SPLITS:
        _SPLITS[args["dataset"], dd] = corpora.load_dataset(args["dataset"], data_dir=dd)
    splits = _SPLITS[args["dataset"], dd]
    key = (str(original.resolve()), args["dataset"], dd, ml)
    if key not in _ORIGINAL_F1:
        _ORIGINAL_F1[key] = f1s(t0, tok0, splits, ml)
    row["original_f1"] = _ORIGINAL_F1[key]
    rec = json.loads((run / "metrics.json").read_text()).get("msd_teacher") if (run / "metrics.json").exists() else None
    if rec and rec.get("dev_f1_after") is not None and not args.get("limit_eval") and dd == args.get("data_dir"):
        # the run's own record of the teacher saved beside its best student: no need to re-evaluate dev
        test = eval_lib.evaluate_sentences(t1, tok1, splits.test, ml)["f1"]
        row["original_f1"] = {"dev": rec["dev_f1_before"], "test": row["original_f1"]["test"]}
        row["meta_updated_f1"] = {"dev": rec["dev_f1_after"], "test": test}
        row |= {"dev_f1_source": "recorded", "dev_f1_best": rec.get("dev_f1_best"), "restores": rec.get("restores"),
                "skipped_steps": rec.get("skipped_steps"), "meta_steps": rec.get("meta_steps"),
                "lr_factor": rec.get("lr_factor")}
    else:
        row["meta_updated_f1"] = f1s(t1, tok1, splits, ml)
        row["dev_f1_source"] = "measured"
    return row


def from_record(rec: dict, runs_root: Path) -> dict:
    """A row from a grid's result line (``full_runs.jsonl``) when the run directory is gone (the grid ran in
    an earlier checkout): the teacher's dev F1 before / after as the run recorded it; drift and test F1 are
    not known (shown as -)."""
    mt = rec["msd_teacher"]
    return {"run": str(runs_root / rec["key"]), "dataset": rec.get("dataset"), "seed": rec.get("seed"),
            "quiz_split": rec.get("quiz_split"), "alpha": rec.get("alpha"), "student_layers": rec.get("layers"),
            "original_f1": {"dev": mt["dev_f1_before"], "test": None},
            "meta_updated_f1": {"dev": mt["dev_f1_after"], "test": None},
            "dev_f1_source": "recorded (run directory not kept: no drift, no test F1)",
            "dev_f1_best": mt.get("dev_f1_best"), "restores": mt.get("restores"),
            "skipped_steps": mt.get("skipped_steps"), "meta_steps": mt.get("meta_steps"), "lr_factor": mt.get("lr_factor")}


def markdown(rows: list[dict], meta: dict) -> str:
    made = sorted({(r["date"], r["command"]) for r in rows})
    lines = ["# What MSD did to the teacher", "", *[f"- {d}: `{c}`" for d, c in made],
             f"- machine: {meta['machine']}", "",
             "Relative change = ||T_msd − T_0|| / ||T_0|| over the parameters (encoder, emission head, CRF). "
             "F1: entity F1 of the original teacher and of the meta-updated one saved in `RUN/teacher` (dev F1 as "
             "the run recorded it, when it did). Restores / skips: the teacher guard's restores of its best state "
             "and skipped non-finite meta steps (- for runs from before the guard). A row with - for the drift "
             "comes from the grid's result line of a run whose directory was not kept (`--records`).", "",
             "| run | quiz | rel. change (all) | encoder | head | crf | max abs change | dev F1 T0 -> T_msd | "
             "test F1 T0 -> T_msd | restores / skips |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    e = lambda r, k: f"{r[k]:.2e}" if r.get(k) is not None else "-"  # noqa: E731
    f1 = lambda v: f"{100 * v:.2f}" if v is not None else "-"  # noqa: E731
    for r in rows:
        o, m = r["original_f1"], r["meta_updated_f1"]
        lines.append(f"| `{r['run']}` | {r['quiz_split']} | {e(r, 'relative_change')} | "
                     f"{e(r, 'relative_change_encoder')} | {e(r, 'relative_change_head')} | "
                     f"{e(r, 'relative_change_crf')} | {e(r, 'max_abs_change')} | "
                     f"{f1(o['dev'])} -> {f1(m['dev'])} | {f1(o['test'])} -> {f1(m['test'])} | "
                     + (f"{r['restores']} / {r['skipped_steps']} |" if r.get("restores") is not None else "- |"))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="*", default=None, help="MSD run directories (default: runs/paper/*/msd-*)")
    ap.add_argument("--data-dir", default=None, help="default: the one each run was trained with")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--records", default=None, metavar="JSONL",
                    help="also add a row, from its result line, for each MSD cell of this grid results file "
                         "(e.g. benchmarks/results/full_runs.jsonl) whose run directory is gone and that has no row")
    ap.add_argument("--records-runs", default="runs/full", help="the run root of --records' cells (default: runs/full)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    default = [] if args.records else sorted(Path("runs/paper").glob("*/msd-*"))
    runs = [Path(r) for r in args.runs] if args.runs is not None else default
    runs = [r for r in runs if (r / "teacher").is_dir() and (r / "metrics.json").exists()]
    out = Path(args.out)
    old = out.with_suffix(".json")
    previous = json.loads(old.read_text())["results"] if old.exists() else []
    have = {r["run"] for r in previous}
    recorded = []
    if args.records:
        for line in Path(args.records).read_text().splitlines():
            rec = json.loads(line) if line.strip() else {}
            run = Path(args.records_runs) / rec.get("key", "")
            if "msd_teacher" in rec and str(run) not in have and run not in runs and not (run / "teacher").is_dir():
                recorded.append(from_record(rec, Path(args.records_runs)))
    if not runs and not recorded:
        more = f", and no MSD cell of {args.records} without a row" if args.records else ""
        print(f"error: no finished MSD run with a saved teacher (RUN/teacher) found{more}", file=sys.stderr)
        return 2
    command = "python -m benchmarks.msd_teacher " + " ".join(argv if argv is not None else sys.argv[1:])
    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    rows = [r | {"command": command, "date": date} for r in recorded]
    for x in rows:
        print(f"{x['run']}: from its result line, dev F1 {100 * x['original_f1']['dev']:.2f} -> "
              f"{100 * x['meta_updated_f1']['dev']:.2f}", flush=True)
    for r in runs:
        rows.append(analyse(r, args.data_dir) | {"command": command, "date": date})
        x = rows[-1]
        print(f"{r}: relative change {x['relative_change']:.2e}, dev F1 {100 * x['original_f1']['dev']:.2f} -> "
              f"{100 * x['meta_updated_f1']['dev']:.2f}", flush=True)
    meta = {"command": command, "date": date,
            "machine": f"{platform.platform()}, torch {torch.__version__}, {args.threads} threads"}
    out.parent.mkdir(parents=True, exist_ok=True)
    if old.exists():  # keep the rows of runs not analysed this time; a re-analysed run replaces its row
        fresh = {r["run"] for r in rows}
        rows = [r for r in previous if r["run"] not in fresh] + rows
        rows.sort(key=lambda r: r["run"])
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": rows}, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(rows, meta))
    print(f"wrote {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
