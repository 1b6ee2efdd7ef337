"""Reproduce the paper's tables and figures at offline scale, resumably.

    python -m benchmarks.paper --grid table1 --data-dir ../shared/data      # fill cells (skips finished)
    python -m benchmarks.paper --report                                      # results -> paper.md + plots

This module is the grid: cells, their keys, running them, the choices made on dev; the report is
:mod:`benchmarks.paper_report` (``--budget full``: :mod:`benchmarks.full_report`).

A *cell* is one (dataset, method, seed, student depth, alpha, quiz split) training run. Each finished
cell appends one JSON line to ``benchmarks/results/paper_runs.jsonl`` (config, dev and test F1/P/R,
wall time, tokens/s, peak memory, commit); a re-run skips finished cells, and an interrupted cell
resumes from its last epoch (``--resume``), so the grid can be filled over several sittings, e.g. in
the background: ``nohup python -m benchmarks.paper --grid table1 ... > runs/paper.log 2>&1 &``.
``--jobs 2 --threads 1`` runs two cells at once (up to ~1.3x more cells per hour on 2 cores, each cell slower).

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
    # mean dev F1 over its CoNLL-2003 seeds), then Pos and Struct (MSD's verdict compares it with both on every
    # dataset; the one that is ``BEST_KD`` is not run twice), MSD and the recipe, at the student learning rates
    # chosen on CoNLL-2003
    "tables23_full": dict(datasets=["wikiann", "conll2000"], methods=["none", BEST_KD, "pos", "struct", "msd", RECIPE],
                          seeds=[0, 1, 2], layers=[3], alphas=[0.5], student_lrs="chosen on dev", budget="full"),
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


def same_f1(a: dict, b: dict) -> bool:
    """Same dev and test F1: the test for 'the same teacher' between rows and metrics files."""
    return a["dev"]["f1"] == b["dev"]["f1"] and a["test"]["f1"] == b["test"]["f1"]


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
    if "msd_teacher" in metrics:  # MSD: the meta-updated teacher's dev F1 before / after, restores, skipped steps
        extra["msd_teacher"] = {k: v for k, v in metrics["msd_teacher"].items() if k != "history"}
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


def teacher_lr_cells(rows: list[dict]) -> dict:
    """The seed-0 MSD cells of the ``teacher_lr`` sweep's setting, by teacher lr (None: the default)."""
    g = GRIDS["teacher_lr"]
    return {r.get("teacher_lr"): r for r in rows if r["method"] == "msd" and r["dataset"] in g["datasets"]
            and r["seed"] in g["seeds"] and r["layers"] in g["layers"] and r["alpha"] in g["alphas"]
            and r.get("quiz_split", "holdout") == "holdout"}


def chosen_teacher_lr(rows: list[dict]) -> dict | None:
    """The cell of the ``teacher_lr`` sweep (default learning rate included) with the best student dev F1;
    None until every learning rate of the sweep has finished."""
    cand = teacher_lr_cells(rows)
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


def report(out_md: Path) -> str:
    """The short budget's report (``paper.md`` and its plots) from ``RESULTS``: :mod:`benchmarks.paper_report`."""
    from benchmarks import paper_report

    return paper_report.report(all_rows(), RESULTS, RUNS, out_md)


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
                    help="cells run at once. On 2 cores `--jobs 2 --threads 1` fills the grid at most ~1.3x faster "
                         "than one cell with 2 threads, but each cell takes 1.5-2x longer (full budget, none-L3: 1,768 s "
                         "of training per cell two at a time, 1,180 s alone): prefer `--jobs 1 --threads 2` when a "
                         "sitting may end before a slow cell does (runs/ does not travel)")
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


def analyse_msd_teacher(run: Path, args) -> bool:
    """Add the finished MSD cell ``run`` to ``msd_teacher.{md,json}`` (drift and F1 of its meta-updated teacher)
    while its directory is still there: run directories stay on the machine that ran the grid. A failure
    is reported and does not stop the grid (``python -m benchmarks.msd_teacher --runs RUN`` redoes it)."""
    cmd = [sys.executable, "-m", "benchmarks.msd_teacher", "--runs", str(run), "--threads", str(args.threads)]
    print(f"[{dt.datetime.now():%H:%M:%S}] {' '.join(cmd[1:])}", flush=True)
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        print(f"warning: {' '.join(cmd[1:])} failed (exit {done.returncode}): {done.stdout.strip()[-500:]}",
              file=sys.stderr, flush=True)
    return done.returncode == 0


def _teacher_on_disk_is(ds: str, row: dict) -> bool:
    d = RUNS / ds / "teacher"
    if not (d / ckpt.BEST).is_dir() or not (d / ckpt.METRICS_FILE).exists():
        return False
    return same_f1(_metrics(d), row)


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
            if c["method"] == "msd":
                analyse_msd_teacher(RUNS / r["key"], args)

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
