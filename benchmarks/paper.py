"""Reproduce the paper's tables and figures at offline scale, resumably.

    python -m benchmarks.paper --grid table1 --data-dir ../shared/data      # fill cells (skips finished)
    python -m benchmarks.paper --report                                      # results -> paper.md + plots

A *cell* is one (dataset, method, seed, student depth, alpha, quiz split) training run. Each finished
cell appends one JSON line to ``benchmarks/results/paper_runs.jsonl`` (config, dev and test F1/P/R,
wall time, tokens/s, peak memory, commit); a re-run skips finished cells, and an interrupted cell
resumes from its last epoch (``--resume``), so the grid can be filled over several sittings, e.g. in
the background: ``nohup python -m benchmarks.paper --grid table1 ... > runs/paper.log 2>&1 &``.
``--jobs 2 --threads 1`` runs two cells at once (more cells per hour on 2 cores).

Every method gets the same budget: same epochs, batch size, learning rates, seeds and data order
per seed (see ``training.distill``). Model selection is on dev only; test is read once per cell from
the best-on-dev checkpoint. Teachers are trained once per dataset (seed 0) and reused; when a later
sitting (another machine) lacks the checkpoint, the teacher is trained again, its row records the first
training's F1 (``retrain_of``), and every student row records its teacher's F1 (``teacher_f1``).
``--dataset wikiann`` restricts the chosen grids to one dataset. ``--grid teacher_lr`` goes beyond the
paper: MSD with other learning rates for the teacher's meta-updates, chosen on dev and reported in a
section of its own (the paper's tables keep the default).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import fnmatch
import itertools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from training import checkpoint as ckpt

RESULTS = Path("benchmarks/results/paper_runs.jsonl")
RUNS = Path("runs/paper")
# --budget: where a budget's result lines and run directories live, and its student epochs. ``short`` is the
# first reproduction (2 student epochs); ``full`` is the paper's budget (10 epochs), in files of its own.
BUDGETS = {
    "short": (RESULTS, RUNS, 2),
    "full": (Path("benchmarks/results/full_runs.jsonl"), Path("runs/full"), 10),
}
METHODS = ("none", "topk", "pos", "struct", "msd")
PAPER = {  # entity F1 on test, from the paper (BERT-base 12L teacher -> 6L students)
    "conll2003": {"teacher": 90.43, "none": 87.40, "topk": 87.83, "pos": 88.05, "struct": 88.54, "msd": 89.34},
    "wikiann": {"teacher": 82.55, "none": 80.04, "topk": 80.10, "pos": 80.17, "struct": 80.34, "msd": 80.63},
    "conll2000": {"teacher": 96.24, "none": 95.02, "topk": 95.72, "pos": 95.90, "struct": 95.97, "msd": 96.04},
}
# The recipe as a grid variant: training/recipes/best.json with the other datasets' sentences as extra text ({pool});
# --patience 0 gives it the same 10 epochs as every other cell (model selection on dev as everywhere).
RECIPE = ("recipe", "pos", ["--recipe", "best", "--patience", "0", "--unlabeled", "{pool}"])
POOL = {"conll2003": "conll2000,wikiann", "wikiann": "conll2003,conll2000", "conll2000": "conll2003,wikiann"}
BEST_KD = "best single KD method on dev"  # a grid's method placeholder, resolved by chosen_kd_method
GRIDS = {  # presets: the issue's deliverables, in order of priority
    "table1": dict(datasets=["conll2003"], methods=list(METHODS), seeds=[0, 1, 2], layers=[3], alphas=[0.5]),
    "depth": dict(datasets=["conll2003"], methods=["none", "pos", "msd"], seeds=[0], layers=[1, 2, 3, 4], alphas=[0.5]),
    "alpha": dict(datasets=["conll2003"], methods=["pos", "struct", "msd"], seeds=[0], layers=[3],
                  alphas=[0.1, 0.3, 0.5, 0.7, 0.9]),
    "quiz": dict(datasets=["conll2003"], methods=["msd"], seeds=[0], layers=[3], alphas=[0.5], quiz=["dev"]),
    "tables23": dict(datasets=["wikiann", "conll2000"], methods=list(METHODS), seeds=[0, 1, 2], layers=[3], alphas=[0.5]),
    # beyond the paper: MSD's teacher learning rate (the grids above use training.distill's default, 2e-5)
    "teacher_lr": dict(datasets=["conll2003"], methods=["msd"], seeds=[0], layers=[3], alphas=[0.5],
                       teacher_lrs=[2e-6, 2e-7]),
    # ... and the learning rate chosen there on dev (seed 0), on the other seeds, for a paired comparison
    "teacher_lr_seeds": dict(datasets=["conll2003"], methods=["msd"], seeds=[1, 2], layers=[3], alphas=[0.5],
                             teacher_lrs="chosen on dev"),
    # --budget full: the student's learning rates (encoder, head + CRF), chosen once on dev with the undistilled
    # student (seed 0), then Table I's baselines at the chosen rates
    "student_lr": dict(datasets=["conll2003"], methods=["none"], seeds=[0], layers=[3], alphas=[0.5],
                       student_lrs=[(5e-5, 1e-3), (1e-4, 1e-3), (2e-4, 1e-3), (1e-4, 5e-3)],
                       budget="full"),
    "table1_full": dict(datasets=["conll2003"], methods=["none", "topk", "pos", "struct", "msd"] + [RECIPE], seeds=[0, 1, 2],
                        layers=[3], alphas=[0.5], student_lrs="chosen on dev", budget="full"),
    # the 2-layer target (recipe vs the 2-layer baseline) and MSD's Figure 3 at the full budget
    "depth_full": dict(datasets=["conll2003"], methods=["none", "msd", RECIPE], seeds=[0], layers=[2, 1, 4],
                       alphas=[0.5], student_lrs="chosen on dev", budget="full"),
    # what each part of the recipe is worth (CoNLL-2003, seed 0), and MSD inside the recipe
    "ablation_full": dict(datasets=["conll2003"], seeds=[0], layers=[3], alphas=[0.5], student_lrs="chosen on dev",
                          budget="full", methods=[
                              ("recipe-no-layerwise", "pos", [*RECIPE[2], "--hidden-weight", "0", "--emission-weight", "0"]),
                              ("recipe-no-unlabeled", "pos", [f for f in RECIPE[2] if f not in ("--unlabeled", "{pool}")]),
                              ("recipe-no-augment", "pos", [*RECIPE[2], "--augment", ""]),
                              ("recipe-two-stage", "pos", [*RECIPE[2], "--stage1-epochs", "2"]),
                              ("msd-recipe", "msd", RECIPE[2])]),
    # Tables II-III at the full budget: the baseline, the best single KD method of Table I (``BEST_KD``: chosen by
    # mean dev F1 over its CoNLL-2003 seeds), MSD and the recipe, at the student learning rates chosen on CoNLL-2003
    "tables23_full": dict(datasets=["wikiann", "conll2000"], methods=["none", BEST_KD, "msd", RECIPE], seeds=[0, 1, 2],
                          layers=[3], alphas=[0.5], student_lrs="chosen on dev", budget="full"),
    # Figure 4 at the full budget: sensitivity to alpha
    "alpha_full": dict(datasets=["conll2003"], methods=["pos", "struct", "msd"], seeds=[0], layers=[3],
                       alphas=[0.1, 0.3, 0.7, 0.9], student_lrs="chosen on dev", budget="full"),
}
# The short grid's MSD cells were made by the MSD before issue 15 (second-order meta-gradient at every step, teacher
# Adam at a constant 2e-5, no anchor, no guard): a short-budget cell without ``teacher_lr`` ran at this rate. New MSD
# cells (today's MSD) belong to --budget full; a short-budget MSD cell run now would not be comparable with them.
DEFAULT_TEACHER_LR = 2e-5


def cell_key(c: dict) -> str:
    if c["method"] == "teacher":
        return f"{c['dataset']}/teacher"
    q = "" if c.get("quiz_split", "holdout") == "holdout" or c["method"] != "msd" else f"-quiz{c['quiz_split']}"
    lr = f"-tlr{c['teacher_lr']:g}" if c.get("teacher_lr") is not None else ""
    slr = f"-lr{c['lr']:g}-hlr{c['head_lr']:g}" if c.get("lr") is not None else ""
    name = c.get("variant") or c["method"]  # a variant: a method with extra flags (``flags``), e.g. a recipe
    return f"{c['dataset']}/{name}-L{c['layers']}-a{c['alpha']}-s{c['seed']}{q}{lr}{slr}"


def paper_setting(r: dict) -> bool:
    """A cell of the paper's grids (not a sweep of a knob the paper does not vary)."""
    return r.get("teacher_lr") is None


def all_rows() -> list[dict]:
    """Every result line, in order (a retrained teacher has more than one)."""
    if not RESULTS.exists():
        return []
    return [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]


def finished(rows: list[dict] | None = None) -> dict:
    """The latest row per cell key (of ``rows``, default: the results file)."""
    return {r["key"]: r for r in (all_rows() if rows is None else rows)}


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / ckpt.METRICS_FILE).read_text())


def _same_f1(a: dict, b: dict) -> bool:
    """Same dev and test F1: the test for 'the same teacher' between rows and metrics files."""
    return a["dev"]["f1"] == b["dev"]["f1"] and a["test"]["f1"] == b["test"]["f1"]


def teacher_of(students: list[dict], trainings: list[dict]) -> dict | None:
    """The teacher training that ``students`` learned from: the one whose test F1 most of them record
    in ``teacher_f1``; rows without that record predate retraining and learned from the first one."""
    if not trainings:
        return None
    votes = [next((t for t in trainings if t["test"]["f1"] == r["teacher_f1"]["test"]), trainings[-1])
             if "teacher_f1" in r else trainings[0] for r in students]
    return max(trainings, key=lambda t: sum(v is t for v in votes)) if votes else trainings[-1]


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def run_cell(cell: dict, args) -> dict:
    """Train one cell in a child process; return its result line."""
    key = cell_key(cell)
    out = RUNS / key
    common = ["--dataset", cell["dataset"], "--data_dir", args.data_dir, "--out", str(out), "--resume",
              "--threads", str(args.threads), "--batch_size", str(args.batch_size), "--max_length", "128"]
    if cell["method"] == "teacher":
        cmd = [sys.executable, "-m", "training.teacher", *common, "--epochs", str(args.teacher_epochs), "--seed", "0"]
    else:
        cmd = [sys.executable, "-m", "training.distill", *common, "--teacher", str(RUNS / cell["dataset"] / "teacher"),
               "--method", cell["method"], "--seed", str(cell["seed"]), "--student_layers", str(cell["layers"]),
               "--alpha", str(cell["alpha"]), "--epochs", str(args.epochs)]
        if cell["method"] == "msd":
            cmd += ["--quiz_split", cell.get("quiz_split", "holdout")]
            if cell.get("teacher_lr") is not None:
                cmd += ["--teacher_lr", str(cell["teacher_lr"])]
        if cell.get("lr") is not None:
            cmd += ["--lr", str(cell["lr"]), "--head_lr", str(cell["head_lr"])]
        cmd += list(cell.get("flags", ()))
    print(f"[{dt.datetime.now():%H:%M:%S}] {key}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.time()
    log = open(RUNS / (key.replace("/", "__") + ".log"), "a")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"TOKENIZERS_PARALLELISM": "false"})
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{key} failed with exit code {code}; see {log.name}")
    metrics = _metrics(out)
    info = json.loads((out / ckpt.BEST / "run.json").read_text())
    pick = lambda m: {k: m[k] for k in ("f1", "precision", "recall")}  # noqa: E731
    extra = {}
    if cell["method"] != "teacher":  # which teacher this student learned from (teachers may be retrained, see plan)
        tm = _metrics(RUNS / cell["dataset"] / "teacher")
        extra["teacher_f1"] = {"dev": tm["dev"]["f1"], "test": tm["test"]["f1"]}
    return {
        "key": key, **cell, **extra,
        "dev": pick(metrics["dev"]), "test": pick(metrics["test"]),
        "per_type_test": {k: v["f1"] for k, v in metrics["test"]["per_type"].items()},
        "best_epoch": info.get("train", {}).get("best_epoch"),
        "epochs": args.teacher_epochs if cell["method"] == "teacher" else args.epochs,
        "wall_seconds": round(time.time() - t0, 1),
        "train_seconds": info.get("train", {}).get("train_seconds"),
        "tokens_per_second": info.get("train", {}).get("tokens_per_second"),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "threads": args.threads, "jobs": getattr(args, "jobs", 1),
        "num_parameters": info.get("num_parameters"), "num_layers": info.get("num_layers"),
        "commit": _commit(), "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def expand(grid: dict) -> list[dict]:
    cells = []
    for ds in grid["datasets"]:
        cells.append({"dataset": ds, "method": "teacher", "seed": 0, "layers": None, "alpha": None})
        # seed-major: one seed of every method first, so a partial grid is already a comparison
        for s, m, l, a in itertools.product(grid["seeds"], grid["methods"], grid["layers"], grid["alphas"]):
            for q, lr, slr in itertools.product(grid.get("quiz", ["holdout"]), grid.get("teacher_lrs", [None]),
                                                grid.get("student_lrs", [None])):
                # a method, or a variant (name, method, extra training.distill flags)
                v = {} if isinstance(m, str) else {"variant": m[0], "flags": [f.replace("{pool}", POOL[ds]) for f in m[2]]}
                cell = {"dataset": ds, "method": m if isinstance(m, str) else m[1], "seed": s, "layers": l, "alpha": a,
                        "quiz_split": q, **v}
                cell = cell if lr is None else {**cell, "teacher_lr": lr}
                cells.append(cell if slr is None else {**cell, "lr": slr[0], "head_lr": slr[1]})
    return cells


# ---------------------------------------------------------------- report
def _ms(xs):
    xs = [100 * x for x in xs]
    if not xs:
        return "-"
    return f"{statistics.fmean(xs):.2f} ± {statistics.stdev(xs):.2f} (n={len(xs)})" if len(xs) > 1 else f"{xs[0]:.2f} (n=1)"


def report(out_md: Path) -> str:
    everything = all_rows()
    swept = list(finished(everything).values())
    rows = [r for r in swept if paper_setting(r)]
    main = [r for r in rows if r["method"] == "teacher" or (r["layers"] == 3 and r["alpha"] == 0.5
                                                           and r.get("quiz_split", "holdout") == "holdout")]
    lines = ["# Paper reproduction at offline scale", "",
             f"Generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC} by `python -m benchmarks.paper --report` "
             f"from `{RESULTS}` ({len(swept)} finished cells). Teacher: all-MiniLM-L6-v2 + CRF (6 layers); students: "
             "3 layers initialised from teacher layers [1, 3, 5] unless stated. Paper: BERT-base 12L -> 6L.", ""]
    header, summary = len(lines), []
    for ds, title in (("conll2003", "Table I: CoNLL-2003 NER"), ("wikiann", "Table II: WikiANN-en NER"),
                      ("conll2000", "Table III: CoNLL-2000 chunking")):
        trainings = [r for r in everything if r["dataset"] == ds and r["method"] == "teacher"]
        students = [r for r in main if r["dataset"] == ds and r["method"] != "teacher"]
        t = teacher_of(students, trainings)
        sub = ([t] if t else []) + students  # the verdict compares students with the teacher they learned from
        if not sub:
            lines += [f"## {title}", "", "No finished cells yet.", ""]
            continue
        lines += [f"## {title}", "", "| method | test F1 (ours, mean ± std) | test P | test R | dev F1 | paper F1 | "
                  "params (M) | train s / cell | tok/s |", "|---|---|---|---|---|---:|---:|---:|---:|"]
        for m in ("teacher",) + METHODS:
            if m == "teacher" and len(trainings) > 1:  # one line per training of the teacher
                for i, r in enumerate(trainings):
                    mark = ", taught these students" if r is t else ""
                    lines.append(_table_row(f"teacher (training {i + 1}{mark})", m, ds, [r]))
                continue
            rs = [r for r in sub if r["method"] == m]
            if rs:
                lines.append(_table_row(m, m, ds, rs))
        epochs = sorted({r["epochs"] for r in sub if r["method"] != "teacher"})
        lines += ["", f"Budget: students {epochs} epoch(s), teacher "
                  f"{sorted({r['epochs'] for r in sub if r['method'] == 'teacher'})} epoch(s); batch 16, max length 128, "
                  "alpha 0.5, T 1, Adam(W). `train s` and `tok/s` are as measured per cell, on 2 cores that other "
                  "jobs often shared, with 1 or 2 threads per cell (rows record `threads`, `jobs`): compare methods' "
                  "costs with `distill_cost.md` (all methods in one run) instead.", ""]
        v = verdict(sub)
        summary += [f"- {title.split(': ', 1)[1]}: {line}" for line in v if line.startswith("**")]
        lines += teacher_lines(trainings, rows) + cost_lines(sub) + v + msd_teacher_lines(ds)
    lines += depth_alpha_sections(rows, out_md.stem)
    tlr = teacher_lr_section(swept)
    summary += [f"- Figure 4: {line[2:]}" for line in lines if line.startswith("- Spread over alpha")]
    summary += [f"- Beyond the paper (CoNLL-2003, MSD's teacher learning rate chosen on dev): {line}"
                for line in tlr if line.startswith("**")]
    lines += tlr
    if summary:  # the verdicts, gathered under the header
        lines[header:header] = ["## Summary", "", *summary, ""]
    text = "\n".join(lines) + "\n"
    out_md.write_text(text)
    return text


def _table_row(name: str, m: str, ds: str, rs: list[dict]) -> str:
    return (f"| {name} | {_ms([r['test']['f1'] for r in rs])} | {_ms([r['test']['precision'] for r in rs])} | "
            f"{_ms([r['test']['recall'] for r in rs])} | {_ms([r['dev']['f1'] for r in rs])} | {PAPER[ds][m]:.2f} | "
            f"{rs[0]['num_parameters'] / 1e6:.1f} | {statistics.fmean(r['train_seconds'] or 0 for r in rs):.0f} | "
            f"{statistics.fmean(r['tokens_per_second'] or 0 for r in rs):.0f} |")


def teacher_lines(trainings: list[dict], rows: list[dict]) -> list[str]:
    """When the teacher was trained more than once (its checkpoint does not outlive the machine): did the
    new training reproduce the first, and which students (of any grid) learned from which training."""
    if len(trainings) < 2:
        return []
    first, last = trainings[0], trainings[-1]
    same = _same_f1(first, last)
    out = [f"- The teacher was trained {len(trainings)} times (its checkpoint does not outlive the machine; the "
           f"runner trains it again when a student needs it). Dev / test F1 {100 * last['dev']['f1']:.2f} / "
           f"{100 * last['test']['f1']:.2f} on {last['finished_at'][:10]} vs {100 * first['dev']['f1']:.2f} / "
           f"{100 * first['test']['f1']:.2f} the first time: "
           + ("the same teacher." if same else "not bit-identical (thread count and run-to-run numerics), so "
              "students trained after the first training learned from a slightly different teacher.")]
    if not same:
        by = {}
        for r in rows:
            if r["dataset"] == first["dataset"] and r["method"] != "teacher" and "teacher_f1" in r:
                by.setdefault(round(100 * r["teacher_f1"]["test"], 2), []).append(r["key"].split("/")[1])
        if by:
            out.append("- Cells by the teacher test F1 they record (`teacher_f1`): " + "; ".join(
                f"{k:.2f}: {', '.join(v)}" for k, v in sorted(by.items())) + ". Cells without that record learned "
                "from the first training.")
    return out + [""]


def cost_lines(sub: list[dict]) -> list[str]:
    """What the meta step costs: per cell in this grid, and per step from ``distill_cost.json``
    (all methods timed in one run, the fair comparison)."""
    secs = {m: [r["train_seconds"] for r in sub if r["method"] == m and r.get("train_seconds")] for m in METHODS}
    out = []
    if secs["msd"] and secs["pos"]:
        a, b = statistics.fmean(secs["msd"]), statistics.fmean(secs["pos"])
        out.append(f"- Meta step cost, per cell here: msd {a:.0f} s vs pos {b:.0f} s of training ({a / b:.1f}x).")
    cost = RESULTS.parent / "distill_cost.json"
    if cost.exists():
        res = {r["method"]: r for r in json.loads(cost.read_text())["results"]}
        if {"none", "pos", "msd"} <= res.keys():
            step = lambda m: res[m].get("mean_step_s") or res[m]["median_step_s"]  # noqa: E731 (msd alternates steps)
            out.append(f"- Per step, one interleaved run of today's code (`distill_cost.md`, {cost_date(cost)}): msd "
                       f"{1e3 * step('msd'):.0f} ms vs pos {1e3 * step('pos'):.0f} ms ({step('msd') / step('pos'):.2f}x, "
                       f"mean step time), none {1e3 * step('none'):.0f} ms; peak RSS msd/pos "
                       f"{res['msd']['peak_rss_mb'] / res['pos']['peak_rss_mb']:.2f}x "
                       f"({res['msd']['peak_rss_mb']:.0f} vs {res['pos']['peak_rss_mb']:.0f} MB).")
    return out + [""] if out else []


def cost_date(path: Path) -> str:
    d = json.loads(path.read_text())
    return str(d.get("meta", d).get("date", "undated"))[:10]


def msd_teacher_lines(ds: str) -> list[str]:
    """How far MSD moved the teacher, from ``python -m benchmarks.msd_teacher`` (when it was run)."""
    rows = [r for r in _msd_teacher_results() if r.get("dataset") == ds]
    if not rows:
        return []
    out = ["What MSD did to the teacher (`msd_teacher.md`, from `python -m benchmarks.msd_teacher`):", ""]
    for r in rows:
        o, m = r["original_f1"], r["meta_updated_f1"]
        lr = f", teacher lr {r['teacher_lr']:g}" if r.get("teacher_lr") not in (None, DEFAULT_TEACHER_LR) else ""
        out.append(f"- seed {r['seed']}, quiz {r['quiz_split']}, {r['student_layers']} layers, alpha {r['alpha']}{lr}: "
                   f"parameters moved by {100 * r['relative_change']:.3f}% (relative L2), teacher dev F1 "
                   f"{100 * o['dev']:.2f} -> {100 * m['dev']:.2f}, test F1 {100 * o['test']:.2f} -> {100 * m['test']:.2f}.")
    return out + [""]


def verdict(sub: list[dict]) -> list[str]:
    """Plain-words verdict: the gap, the fraction of it each method closes, and MSD's paired per-seed
    differences from the baseline, Pos and Struct, tested against the seed-to-seed spread."""
    t = [r["test"]["f1"] for r in sub if r["method"] == "teacher"]
    base = {r["seed"]: r["test"]["f1"] for r in sub if r["method"] == "none"}
    if not t or not base:
        return []
    ds = sub[0]["dataset"]
    gap = t[0] - statistics.fmean(base.values())
    paper_gap = PAPER[ds]["teacher"] - PAPER[ds]["none"]
    out = ["### Verdict", "",
           f"- Teacher-student gap (teacher − mean `none`): {100 * gap:.2f} F1 points "
           f"(paper: {paper_gap:.2f}, with 10 student epochs and a 12L -> 6L pair)."]
    for m in ("topk", "pos", "struct", "msd"):
        f = [r["test"]["f1"] for r in sub if r["method"] == m]
        if f and abs(gap) > 1e-9:
            closed = (statistics.fmean(f) - statistics.fmean(base.values())) / gap
            paper_closed = (PAPER[ds][m] - PAPER[ds]["none"]) / paper_gap
            out.append(f"- `{m}` closes {100 * closed:.0f}% of the gap (mean over {len(f)} seed(s); "
                       f"paper: {100 * paper_closed:.0f}%).")
    by = lambda m: {r["seed"]: r["test"]["f1"] for r in sub if r["method"] == m}  # noqa: E731
    rows, tested = paired_table(by("msd"), {m: by(m) for m in ("none", "topk", "pos", "struct")}, ds)
    if rows:
        out += ["", "Paired per-seed differences in test F1 (points; seeds in order). The paired t-test asks "
                "whether the mean difference stands out from its own seed-to-seed spread:", "", *rows,
                "", conclusion(tested, ds)]
    return out + [""]


def paired_table(msd: dict, others: dict, ds: str, name: str = "msd") -> tuple[list[str], dict]:
    """Markdown rows of MSD's paired per-seed test-F1 differences from each of ``others`` ({method: {seed:
    F1}}; ``msd`` is {seed: F1}) with a paired t-test, and those differences as ``Paired`` by method."""
    from scipy import stats

    rows, tested = [], {}
    for other, b in others.items():
        seeds = sorted(set(msd) & set(b))
        if not seeds:
            continue
        d = [100 * (msd[s] - b[s]) for s in seeds]
        sd_d = statistics.stdev(d) if len(d) > 1 else float("nan")
        p = float(stats.ttest_rel([msd[s] for s in seeds], [b[s] for s in seeds]).pvalue) if len(d) > 1 else float("nan")
        tested[other] = Paired(d, p)
        rows.append(f"| {name} − {other} | {', '.join(f'{x:+.2f}' for x in d)} | {statistics.fmean(d):+.2f} | "
                    f"{'-' if sd_d != sd_d else f'{sd_d:.2f}'} | {'-' if p != p else f'{p:.3f}'} | "
                    f"{PAPER[ds]['msd'] - PAPER[ds][other]:+.2f} |")
    head = ["| comparison | per seed | mean | sd | paired t-test p | paper |", "|---|---|---:|---:|---:|---:|"]
    return (head + rows if rows else []), tested


@dataclass
class Paired:
    """MSD minus another method, per seed (F1 points, seeds in order), and the paired t-test p."""

    diffs: list[float]
    p: float

    @property
    def mean(self) -> float:
        return statistics.fmean(self.diffs)

    @property
    def n(self) -> int:
        return len(self.diffs)


def conclusion(tested: dict[str, Paired], ds: str, name: str = "MSD") -> str:
    """One sentence that answers 'does MSD (``name``) win here?' from the paired tests against pos and struct."""
    vs = {k: v for k, v in tested.items() if k in ("pos", "struct")}
    if not vs:
        return f"{name} has no finished seed paired with Pos or Struct yet."
    n = min(v.n for v in vs.values())
    paper = (f"The paper reports {PAPER[ds]['msd'] - PAPER[ds]['pos']:+.2f} vs pos and "
             f"{PAPER[ds]['msd'] - PAPER[ds]['struct']:+.2f} vs struct on this dataset.")
    diffs = " and ".join(f"{v.mean:+.2f} vs {k}" for k, v in vs.items())
    if n < 3:
        return (f"**So far ({n} seed(s)): {name} {diffs}; too few seeds to separate that from seed noise.** " + paper)
    win = all(v.mean > 0 and v.p < 0.05 for v in vs.values())
    lose = any(v.mean < 0 and v.p < 0.05 for v in vs.values())
    if win:
        head = f"**{name} wins here: {diffs} F1, beyond the seed-to-seed spread (paired t-test p < 0.05).**"
    elif lose:
        head = f"**{name} does not win here: {diffs} F1, and it is significantly worse than at least one of them.**"
    elif all(max(v.diffs) < 0 for v in vs.values()):
        head = (f"**{name} does not win here: {diffs} F1. It is lower than both on every one of the {n} seeds, "
                "though with so few seeds the paired t-test does not reach p < 0.05.**")
    elif all(min(v.diffs) > 0 for v in vs.values()):
        head = (f"**{name} is higher than both on every one of the {n} seeds ({diffs} F1), but with so few seeds "
                "the paired t-test does not reach p < 0.05: not a demonstrated win.**")
    else:
        head = (f"**{name} does not win here: {diffs} F1, differences that do not stand out from the seed-to-seed "
                "spread (paired t-test p >= 0.05).**")
    return head + " " + paper


def depth_alpha_sections(rows: list[dict], stem: str = "paper") -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    c = [r for r in rows if r["dataset"] == "conll2003" and r["method"] != "teacher"
         and r.get("quiz_split", "holdout") == "holdout"]
    teacher = [r["test"]["f1"] for r in rows if r["dataset"] == "conll2003" and r["method"] == "teacher"]
    for name, xkey, methods, fixed, fname in ((n, x, m, f, fn.replace("paper", stem, 1)) for n, x, m, f, fn in (
        ("Figure 3: F1 vs student depth (CoNLL-2003 test)", "layers", ("none", "pos", "msd"), ("alpha", 0.5), "paper_depth.png"),
        ("Figure 4: F1 vs alpha (CoNLL-2003 test, 3 layers)", "alpha", ("pos", "struct", "msd"), ("layers", 3), "paper_alpha.png"),
    )):
        pts = [r for r in c if r[fixed[0]] == fixed[1] and r["method"] in methods]
        xs = sorted({r[xkey] for r in pts})
        if len(xs) < 2:
            out += [f"## {name}", "", "Not enough finished cells yet.", ""]
            continue
        fig, ax = plt.subplots(figsize=(5, 3.5))
        note = []
        if xkey == "layers":
            from training.distill import layer_map

            note = ["Students of depth d start from the teacher's embeddings, head, CRF and layers " + ", ".join(
                f"{x}: {layer_map(6, x)}" for x in xs) + " (0-based).", ""]
        out += [f"## {name}", "", *note, "Test F1, seed 0 unless the cell says n (then the mean over n seeds).", "",
                f"![{name}]({fname})", "", "| method | " + " | ".join(str(x) for x in xs) + " |",
                "|---|" + "---:|" * len(xs)]
        spread = {}
        for m in methods:
            ys, ns = [], []
            for x in xs:
                f = [r["test"]["f1"] for r in pts if r["method"] == m and r[xkey] == x]
                ys.append(100 * statistics.fmean(f) if f else float("nan"))
                ns.append(len(f))
            ax.plot(xs, ys, marker="o", label=m)
            out.append(f"| {m} | " + " | ".join("-" if y != y else f"{y:.2f}" + (f" (n={n})" if n > 1 else "")
                                                for y, n in zip(ys, ns)) + " |")
            if all(n for n in ns):
                spread[m] = max(ys) - min(ys)
        if xkey == "alpha" and len(spread) == len(methods):
            least = min(spread, key=spread.get)
            out += ["", f"- Spread over alpha (highest minus lowest test F1 across alpha {', '.join(map(str, xs))}): " + ", ".join(
                f"{m} {v:.2f}" for m, v in spread.items()) + f" F1; the least sensitive here is {least}, "
                "from one seed per point (the seed-to-seed sd at alpha 0.5 is in Table I). The paper says MSD is "
                "the least sensitive."]
        if teacher:
            ax.axhline(100 * teacher[0], color="gray", ls="--", label="teacher")
        ax.set_xticks(xs)
        top = max([y for y in ax.get_ylim()] + [100 * t for t in teacher])
        ax.set_ylim(top=top + 1)  # keep the teacher's line inside the frame
        ax.set_xlabel(xkey), ax.set_ylabel("test entity F1"), ax.legend(), ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(RESULTS.parent / fname, dpi=120)
        plt.close(fig)
        out.append("")
    q = {r.get("quiz_split", "holdout"): r for r in rows
         if r["dataset"] == "conll2003" and r["method"] == "msd" and r["seed"] == 0 and r["layers"] == 3 and r["alpha"] == 0.5}
    if len(q) == 2:
        h, d = q["holdout"], q["dev"]
        out += ["## MSD quiz data: held-out slice of train vs dev (CoNLL-2003, seed 0)", "",
                f"- holdout: {100 * h['test']['f1']:.2f} test F1 (dev {100 * h['dev']['f1']:.2f}); "
                f"dev: {100 * d['test']['f1']:.2f} test F1 (dev {100 * d['dev']['f1']:.2f}), "
                f"difference {100 * (d['test']['f1'] - h['test']['f1']):+.2f} test F1.",
                "- With `--quiz-split dev` the teacher is meta-trained on dev, the split that also selects the best "
                "epoch, so that run's dev F1 may be optimistic; its test F1 is still clean. The holdout slice (10% of "
                "train) is the default and is taken out of every method's training data alike.", ""]
    return out


def _msd_teacher_results() -> list[dict]:
    """The rows of ``benchmarks.msd_teacher`` (none when it was not run)."""
    path = RESULTS.parent / "msd_teacher.json"
    return json.loads(path.read_text())["results"] if path.exists() else []


def _sweep(rows: list[dict]) -> dict:
    """The seed-0 MSD cells of the ``teacher_lr`` sweep's setting, by teacher lr (None: the default)."""
    g = GRIDS["teacher_lr"]
    return {r.get("teacher_lr"): r for r in rows if r["method"] == "msd" and r["dataset"] in g["datasets"]
            and r["seed"] in g["seeds"] and r["layers"] in g["layers"] and r["alpha"] in g["alphas"]
            and r.get("quiz_split", "holdout") == "holdout"}


def chosen_teacher_lr(rows: list[dict]) -> dict | None:
    """The cell of the ``teacher_lr`` sweep (default learning rate included) with the best student dev F1;
    None until every learning rate of the sweep has finished."""
    cand = _sweep(rows)
    if not set(GRIDS["teacher_lr"]["teacher_lrs"]) | {None} <= cand.keys():
        return None
    return max(cand.values(), key=lambda r: r["dev"]["f1"])


def chosen_student_lr(rows: list[dict]) -> tuple[float, float] | None:
    """The student (encoder, head) learning rates of the finished ``student_lr`` sweep with the best dev F1
    (never test F1); None until every cell of the sweep has finished."""
    sweep = GRIDS["student_lr"]
    want = {cell_key(c) for c in expand(sweep) if c["method"] != "teacher"}
    done = [r for r in rows if r["key"] in want]
    if len(done) < len(want):
        return None
    best = max(done, key=lambda r: r["dev"]["f1"])
    return best["lr"], best["head_lr"]


def chosen_kd_method(rows: list[dict]) -> str | None:
    """The single output-level KD method (topk, pos or struct) of the full-budget Table I with the best mean dev F1
    over its seeds (never test F1); None until all of those cells have finished."""
    g = {**GRIDS["table1_full"], "methods": ["topk", "pos", "struct"]}
    best = chosen_student_lr(rows)
    if best is None:
        return None
    want = {cell_key(c) for c in expand({**g, "student_lrs": [best]}) if c["method"] != "teacher"}
    done = [r for r in rows if r["key"] in want]
    if len(done) < len(want):
        return None
    return max(g["methods"], key=lambda m: statistics.fmean(r["dev"]["f1"] for r in done if r["method"] == m))


def _lr(r: dict) -> float:
    return r.get("teacher_lr") or DEFAULT_TEACHER_LR


def teacher_lr_section(rows: list[dict]) -> list[str]:
    """Beyond the paper: MSD with other learning rates for the teacher's meta-updates (``--grid
    teacher_lr``), next to the default cell. The learning rate is chosen on the students' dev F1 (seed 0);
    test F1 is read off the chosen cell, and, once ``--grid teacher_lr_seeds`` ran it on the other seeds,
    compared seed by seed with none / pos / struct."""
    g = GRIDS["teacher_lr"]
    ds, seed, layers, alpha = g["datasets"][0], g["seeds"][0], g["layers"][0], g["alphas"][0]
    plain = [r for r in rows if r["dataset"] == ds and r["layers"] == layers and r["alpha"] == alpha
             and r.get("quiz_split", "holdout") == "holdout"]
    msd = sorted(_sweep(rows).values(), key=lambda r: -_lr(r))
    if all(paper_setting(r) for r in msd):
        return []
    drift = {r.get("run"): r for r in _msd_teacher_results()}
    out = [f"## Beyond the paper: MSD's teacher learning rate ({ds}, {layers} layers, alpha {alpha})", "",
           "The teacher's meta-updates use Adam; every other MSD cell in this report uses "
           f"`--teacher_lr {DEFAULT_TEACHER_LR:g}` (`training.distill`'s default). The learning rate is chosen on "
           f"the students' dev F1 at seed {seed}; test F1 is read off once. Teacher dev F1 before -> after MSD is "
           "from `msd_teacher.md` (the default cell learned from the first training of the teacher, the others "
           "from a retraining: see Table I).", "",
           "| teacher lr | student dev F1 | student test F1 | teacher dev F1 before -> after MSD |",
           "|---|---:|---:|---:|"]
    for r in msd:
        d = drift.get(str(RUNS / r["key"]))
        t = f"{100 * d['original_f1']['dev']:.2f} -> {100 * d['meta_updated_f1']['dev']:.2f}" if d else "-"
        out.append(f"| {_lr(r):g} | {100 * r['dev']['f1']:.2f} | {100 * r['test']['f1']:.2f} | {t} |")
    best = chosen_teacher_lr(rows)
    if best is None:
        return out + ["", "The sweep is not finished: no learning rate is chosen yet.", ""]
    same_seed = {r["method"]: r for r in plain if r["seed"] == seed and paper_setting(r) and r["method"] != "msd"}
    refs = ", ".join(f"{m} {100 * same_seed[m]['test']['f1']:.2f}" for m in ("none", "topk", "pos", "struct")
                     if m in same_seed)
    out += ["", f"- Chosen on dev: teacher lr {_lr(best):g} (student dev F1 {100 * best['dev']['f1']:.2f}), test F1 "
            f"{100 * best['test']['f1']:.2f}" + (f"; the same seed's {refs}." if refs else ".")]
    by = lambda pick: {r["seed"]: r["test"]["f1"] for r in plain if pick(r)}  # noqa: E731
    chosen = by(lambda r: r["method"] == "msd" and r.get("teacher_lr") == best.get("teacher_lr"))
    if best.get("teacher_lr") is not None and len(chosen) > 1:
        name = f"msd (teacher lr {_lr(best):g})"
        table, tested = paired_table(chosen, {m: by(lambda r, m=m: r["method"] == m and paper_setting(r))
                                              for m in ("none", "topk", "pos", "struct")}, ds, name=name)
        out += ["", f"The chosen learning rate on every seed run so far ({len(chosen)}; `--grid teacher_lr_seeds`), "
                "paired with the other methods' cells of Table I (seed 0 took part in the choice, so it "
                "flatters this row a little):", "", *table, "", conclusion(tested, ds, name=f"MSD (teacher lr {_lr(best):g})")]
    return out + [""]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", action="append", choices=sorted(GRIDS), help="preset grid(s) to fill, in order")
    ap.add_argument("--dataset", action="append", choices=sorted(PAPER),
                    help="only this dataset's cells of the chosen grids (repeatable)")
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--budget", choices=sorted(BUDGETS), default="short",
                    help="short: the first reproduction (2 student epochs, paper_runs.jsonl, runs/paper); full: the "
                         "paper's budget (10 epochs, full_runs.jsonl, runs/full)")
    ap.add_argument("--epochs", type=int, default=None, help="student epochs per cell (default: the budget's)")
    ap.add_argument("--teacher-epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2, help="torch threads per cell")
    ap.add_argument("--jobs", type=int, default=1,
                    help="cells run at once; on 2 cores `--jobs 2 --threads 1` fills the grid ~1.45x faster than one "
                         "cell with 2 threads (measured with distill_cost), at the price of slower single cells")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="list the cells still to run")
    ap.add_argument("--first", action="append", default=[], metavar="GLOB",
                    help="run the cells whose key matches GLOB first, in the order the globs are given (repeatable), "
                         "e.g. --first '*/recipe-L3-*-s0-*'; the rest follow in grid order")
    args = ap.parse_args(argv)
    global RESULTS, RUNS
    if args.budget != "short":  # (the short budget's paths are the module's own, which tests patch)
        RESULTS, RUNS, _ = BUDGETS[args.budget]
    args.epochs = args.epochs or BUDGETS[args.budget][2]
    if args.report:
        if args.budget == "short":
            print(report(RESULTS.parent / "paper.md"))
            return 0
        from benchmarks import full_report

        rows = list(finished().values())
        sweep = {cell_key(c) for c in expand(GRIDS["student_lr"]) if c["method"] != "teacher"}
        text = full_report.report(rows, sweep, chosen_student_lr(rows), RESULTS)
        (RESULTS.parent / "full.md").write_text(text)
        print(text)
        return 0
    if not args.grid:
        ap.error("give --grid (one or more of %s) or --report" % ", ".join(sorted(GRIDS)))
    if not Path(args.data_dir).is_dir():
        print(f"error: --data-dir {args.data_dir} does not exist (the benchmark needs ../shared/data)", file=sys.stderr)
        return 2
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RUNS.mkdir(parents=True, exist_ok=True)
    done = finished()
    cells = []
    for g in args.grid:
        grid = GRIDS[g]
        if grid.get("budget", "short") != args.budget:
            print(f"error: --grid {g} belongs to --budget {grid.get('budget', 'short')}", file=sys.stderr)
            return 2
        for knob, sweep, choose, value in (("student_lrs", "student_lr", chosen_student_lr, lambda b: b),
                                           ("teacher_lrs", "teacher_lr", chosen_teacher_lr, lambda b: b.get("teacher_lr"))):
            if grid.get(knob) == "chosen on dev":  # a rate chosen on dev by its finished sweep
                best = choose(list(done.values()))
                if best is None:
                    print(f"error: --grid {g} needs the finished --grid {sweep} sweep (its learning rate is chosen "
                          "there on dev)", file=sys.stderr)
                    return 2
                grid = {**grid, knob: [value(best)]}
        if BEST_KD in grid["methods"]:
            kd = chosen_kd_method(list(done.values()))
            if kd is None:
                print(f"error: --grid {g} needs the finished topk / pos / struct cells of --grid table1_full (its "
                      "best single KD method is chosen there on dev)", file=sys.stderr)
                return 2
            grid = {**grid, "methods": [kd if m == BEST_KD else m for m in grid["methods"]]}
        for c in expand(grid):
            if cell_key(c) not in {cell_key(x) for x in cells} and (not args.dataset or c["dataset"] in args.dataset):
                cells.append(c)
    todo = prioritise(plan(cells, done), args.first)
    print(f"{len(cells)} cells, {len(cells) - len(todo)} finished, {len(todo)} to run")
    if args.dry_run:
        print("\n".join(cell_key(c) for c in todo))
        return 0
    return run_grid(todo, args)


def plan(cells: list[dict], done: dict) -> list[dict]:
    """The cells still to run, in order. The recorded teacher row must describe the checkpoint on disk:
    when a student still has to run and the teacher's checkpoint is gone (``runs/`` does not travel
    between machines) or its ``metrics.json`` disagrees with the row (it was trained again by hand),
    the teacher cell runs again (training, or only re-evaluating a finished ``--resume`` run). Its new
    row records the first training's F1 under ``retrain_of``, so the report says whether it reproduced."""
    todo = [c for c in cells if cell_key(c) not in done]
    for c in cells:
        k = cell_key(c)
        if (c["method"] == "teacher" and k in done and not _teacher_on_disk_is(c["dataset"], done[k])
                and any(t["dataset"] == c["dataset"] for t in todo)):
            prev = done[k]
            todo.insert(0, {**c, "retrain_of": {"dev": prev["dev"]["f1"], "test": prev["test"]["f1"],
                                                "finished_at": prev.get("finished_at")}})
    return todo


def prioritise(todo: list[dict], globs: list[str]) -> list[dict]:
    """``todo`` with the cells matching ``globs`` (fnmatch on the cell key) moved to the front, in glob order; a
    teacher that must run again stays first (its students wait for it anyway)."""
    rank = lambda c: 0 if c["method"] == "teacher" else next(  # noqa: E731
        (1 + i for i, g in enumerate(globs) if fnmatch.fnmatchcase(cell_key(c), g)), 1 + len(globs))
    return sorted(todo, key=rank)  # stable: grid order within a rank


def _teacher_on_disk_is(ds: str, row: dict) -> bool:
    d = RUNS / ds / "teacher"
    if not (d / ckpt.BEST).is_dir() or not (d / ckpt.METRICS_FILE).exists():
        return False
    return _same_f1(_metrics(d), row)


def run_grid(todo: list[dict], args) -> int:
    """Run ``todo``, up to ``args.jobs`` cells at a time (each with ``args.threads`` threads).

    Whenever a slot is free, the first *ready* cell in list order starts: a student is ready once its
    dataset's teacher (if it is in ``todo``) has finished, so a waiting student never holds a slot that
    another dataset's teacher or students could use. After a failure no new cell starts; running
    ones finish and are recorded. Cells left unstarted (failure, or a teacher that failed) are listed."""
    pending_teacher = {c["dataset"] for c in todo if c["method"] == "teacher"}
    lock, count = threading.Lock(), itertools.count(1)

    def work(c):
        r = run_cell(c, args)
        with lock:
            with open(RESULTS, "a") as f:
                f.write(json.dumps(r) + "\n")
            print(f"[{next(count)}/{len(todo)}] {r['key']}: dev F1 {100 * r['dev']['f1']:.2f} test F1 "
                  f"{100 * r['test']['f1']:.2f} ({r['wall_seconds']:.0f}s, peak {r['peak_rss_mb']:.0f} MB)", flush=True)

    queue, running, futures, failed = list(todo), {}, [], False
    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as ex:
        while queue or running:
            # start the first ready cells in list order (a student is ready once its teacher is done)
            while not failed and queue and len(running) < max(1, args.jobs):
                ready = next((c for c in queue if c["method"] == "teacher" or c["dataset"] not in pending_teacher), None)
                if ready is None:
                    break
                queue.remove(ready)
                f = ex.submit(work, ready)
                running[f] = ready
                futures.append(f)
            if not running:
                break  # after a failure, or nothing can start
            finished_now, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for f in finished_now:
                c = running.pop(f)
                if f.exception() is not None:
                    failed = True
                elif c["method"] == "teacher":
                    pending_teacher.discard(c["dataset"])
    errors = [f.exception() for f in futures if f.exception() is not None]
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    if queue:
        print(f"not started: {', '.join(cell_key(c) for c in queue)}", file=sys.stderr)
    return 1 if errors or queue else 0


if __name__ == "__main__":
    sys.exit(main())
