"""The paper reproduction's report (``python -m benchmarks.paper --report`` -> ``paper.md`` and its plots).

From the grid's result lines (:mod:`benchmarks.paper`): Tables I-III (mean test F1 over seeds next to the
paper's, the teacher each table's students learned from), a plain-words verdict per dataset (the gap each
method closes; MSD's paired per-seed differences and a paired t-test), Figures 3 and 4 (depth, alpha),
how far MSD moved the teacher (``msd_teacher.json``), the cost of the meta step (``distill_cost.json``)
and the teacher learning-rate sweep. The full budget has its own report (:mod:`benchmarks.full_report`).
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from benchmarks.paper import (DEFAULT_TEACHER_LR, GRIDS, METHODS, PAPER, chosen_teacher_lr, finished,
                              paper_setting, same_f1, teacher_lr_cells)


def _ms(xs):
    xs = [100 * x for x in xs]
    if not xs:
        return "-"
    return f"{statistics.fmean(xs):.2f} ± {statistics.stdev(xs):.2f} (n={len(xs)})" if len(xs) > 1 else f"{xs[0]:.2f} (n=1)"


def report(everything: list[dict], results: Path, runs: Path, out_md: Path) -> str:
    """``paper.md``: Tables I-III with verdicts, Figures 3 and 4 (plots beside ``results``), the teacher-lr
    section; ``everything``: every result line of ``results`` in order; ``runs``: the grid's run directories."""
    swept = list(finished(everything).values())
    rows = [r for r in swept if paper_setting(r)]
    main = [r for r in rows if r["method"] == "teacher" or (r["layers"] == 3 and r["alpha"] == 0.5
                                                           and r.get("quiz_split", "holdout") == "holdout")]
    lines = ["# Paper reproduction at offline scale", "",
             f"Generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC} by `python -m benchmarks.paper --report` "
             f"from `{results}` ({len(swept)} finished cells). Teacher: all-MiniLM-L6-v2 + CRF (6 layers); students: "
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
        lines += teacher_lines(trainings, rows) + cost_lines(sub, results) + v + msd_teacher_lines(ds, results, runs)
    lines += depth_alpha_sections(rows, results, out_md.stem)
    tlr = teacher_lr_section(swept, results, runs)
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


def teacher_of(students: list[dict], trainings: list[dict]) -> dict | None:
    """The teacher training that ``students`` learned from: the one whose test F1 most of them record
    in ``teacher_f1``; rows without that record predate retraining and learned from the first one."""
    if not trainings:
        return None
    votes = [next((t for t in trainings if t["test"]["f1"] == r["teacher_f1"]["test"]), trainings[-1])
             if "teacher_f1" in r else trainings[0] for r in students]
    return max(trainings, key=lambda t: sum(v is t for v in votes)) if votes else trainings[-1]


def teacher_lines(trainings: list[dict], rows: list[dict]) -> list[str]:
    """When the teacher was trained more than once (its checkpoint does not outlive the machine): did the
    new training reproduce the first, and which students (of any grid) learned from which training."""
    if len(trainings) < 2:
        return []
    first, last = trainings[0], trainings[-1]
    same = same_f1(first, last)
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


def cost_lines(sub: list[dict], results: Path) -> list[str]:
    """What the meta step costs: per cell in this grid, and per step from ``distill_cost.json``
    (all methods timed in one run, the fair comparison)."""
    secs = {m: [r["train_seconds"] for r in sub if r["method"] == m and r.get("train_seconds")] for m in METHODS}
    out = []
    if secs["msd"] and secs["pos"]:
        a, b = statistics.fmean(secs["msd"]), statistics.fmean(secs["pos"])
        out.append(f"- Meta step cost, per cell here: msd {a:.0f} s vs pos {b:.0f} s of training ({a / b:.1f}x).")
    cost = results.parent / "distill_cost.json"
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


def msd_teacher_results(results: Path) -> list[dict]:
    """The rows of ``benchmarks.msd_teacher`` (none when it was not run)."""
    path = results.parent / "msd_teacher.json"
    return json.loads(path.read_text())["results"] if path.exists() else []


def msd_teacher_lines(ds: str, results: Path, runs: Path) -> list[str]:
    """How far MSD moved the teacher, from ``python -m benchmarks.msd_teacher`` (when it was run), for this
    report's runs only (``msd_teacher.json`` also holds the other budget's cells)."""
    rows = [r for r in msd_teacher_results(results) if r.get("dataset") == ds and Path(r["run"]).is_relative_to(runs)]
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


FIGURES = (  # (title, x, methods, the knob held fixed, file): the paper's Figures 3 and 4
    ("Figure 3: F1 vs student depth (CoNLL-2003 test)", "layers", ("none", "pos", "msd", "recipe"), ("alpha", 0.5),
     "paper_depth.png"),
    ("Figure 4: F1 vs alpha (CoNLL-2003 test, 3 layers)", "alpha", ("pos", "struct", "msd"), ("layers", 3),
     "paper_alpha.png"),
)


def curves(rows: list[dict], xkey: str, methods, fixed: tuple) -> tuple[list, dict]:
    """A figure's points from CoNLL-2003 student rows (holdout quiz): its x values and, per method that has any
    point, the test F1 (%) of every cell at each x ({x: [f1, ...]}, seeds pooled). A row's method is its variant
    name when it has one (``recipe``), so a variant never joins its base method's line."""
    name = lambda r: r.get("variant") or r["method"]  # noqa: E731
    pts = [r for r in rows if r["dataset"] == "conll2003" and r["method"] != "teacher"
           and r.get("quiz_split", "holdout") == "holdout" and r.get(fixed[0]) == fixed[1] and name(r) in methods]
    xs = sorted({r[xkey] for r in pts})
    out = {}
    for m in methods:
        by = {x: [100 * r["test"]["f1"] for r in pts if name(r) == m and r[xkey] == x] for x in xs}
        if any(by.values()):
            out[m] = by
    return xs, out


def depth_alpha_sections(rows: list[dict], results: Path, stem: str = "paper") -> list[str]:
    from benchmarks.common import pyplot

    plt = pyplot()
    if plt is None:
        raise ImportError("the report's figures need matplotlib (pip install -e '.[dev]')")
    out = []
    teacher = [r["test"]["f1"] for r in rows if r["dataset"] == "conll2003" and r["method"] == "teacher"]
    for name, xkey, methods, fixed, fname in ((n, x, m, f, fn.replace("paper", stem, 1)) for n, x, m, f, fn in FIGURES):
        xs, lines = curves(rows, xkey, methods, fixed)
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
        for m, by in lines.items():
            ys = [statistics.fmean(by[x]) if by[x] else float("nan") for x in xs]
            ns = [len(by[x]) for x in xs]
            have = [(x, y) for x, y in zip(xs, ys) if y == y]  # a line through the points measured, not broken by gaps
            ax.plot([x for x, _ in have], [y for _, y in have], marker="o", label=m)
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
        fig.savefig(results.parent / fname, dpi=120)
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


def _lr(r: dict) -> float:
    return r.get("teacher_lr") or DEFAULT_TEACHER_LR


def teacher_lr_section(rows: list[dict], results: Path, runs: Path) -> list[str]:
    """Beyond the paper: MSD with other learning rates for the teacher's meta-updates (``--grid
    teacher_lr``), next to the default cell. The learning rate is chosen on the students' dev F1 (seed 0);
    test F1 is read off the chosen cell, and, once ``--grid teacher_lr_seeds`` ran it on the other seeds,
    compared seed by seed with none / pos / struct."""
    g = GRIDS["teacher_lr"]
    ds, seed, layers, alpha = g["datasets"][0], g["seeds"][0], g["layers"][0], g["alphas"][0]
    plain = [r for r in rows if r["dataset"] == ds and r["layers"] == layers and r["alpha"] == alpha
             and r.get("quiz_split", "holdout") == "holdout"]
    msd = sorted(teacher_lr_cells(rows).values(), key=lambda r: -_lr(r))
    if all(paper_setting(r) for r in msd):
        return []
    drift = {r.get("run"): r for r in msd_teacher_results(results)}
    out = [f"## Beyond the paper: MSD's teacher learning rate ({ds}, {layers} layers, alpha {alpha})", "",
           "The teacher's meta-updates use Adam; every other MSD cell in this report uses "
           f"`--teacher_lr {DEFAULT_TEACHER_LR:g}` (`training.distill`'s default). The learning rate is chosen on "
           f"the students' dev F1 at seed {seed}; test F1 is read off once. Teacher dev F1 before -> after MSD is "
           "from `msd_teacher.md` (the default cell learned from the first training of the teacher, the others "
           "from a retraining: see Table I).", "",
           "| teacher lr | student dev F1 | student test F1 | teacher dev F1 before -> after MSD |",
           "|---|---:|---:|---:|"]
    for r in msd:
        d = drift.get(str(runs / r["key"]))
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
