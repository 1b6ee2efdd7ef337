"""The full-budget report (``python -m benchmarks.paper --budget full --report`` -> ``full.md``).

What a user who must ship a student wants to know, from ``full_runs.jsonl``: the student learning rates chosen on
dev, then per dataset and depth the teacher, the undistilled baseline and every distilled variant (mean test F1
over seeds, dev F1, the share of the teacher-student gap each closes, paired per-seed differences from the
baseline and from the best single KD method), the cost per cell, and the issue's targets, met or not.

Model selection is on dev only: the learning rates by the sweep's dev F1, each cell's checkpoint by its best dev
epoch; test F1 is read once per cell.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
from pathlib import Path

SINGLE_KD = ("topk", "pos", "struct")
TARGETS = {3: 0.75, 2: 0.50}  # share of the teacher-student gap the best student of that depth should close
MSD_MAX_DROP = 2.0  # F1 points: how far below the original the meta-updated teacher's dev F1 may end (issue 15)


def name(r: dict) -> str:
    """A row's variant name: the recipe name for recipe cells, else the method."""
    return r.get("variant") or r["method"]


def _mean(xs) -> float:
    return statistics.fmean(xs)


def _f1(rs, split="test") -> list[float]:
    return [100 * r[split]["f1"] for r in rs]


def _ms(xs) -> str:
    if not xs:
        return "-"
    return f"{_mean(xs):.2f} ± {statistics.stdev(xs):.2f} (n={len(xs)})" if len(xs) > 1 else f"{xs[0]:.2f} (n=1)"


def sweep_section(rows: list[dict], sweep_keys: set[str], chosen) -> list[str]:
    cells = sorted((r for r in rows if r["key"] in sweep_keys), key=lambda r: (r["lr"], r["head_lr"]))
    if not cells:
        return []
    out = ["## Student learning rates, chosen on dev", "",
           f"Undistilled 3-layer student (`none`, seed 0, {cells[0]['epochs']} epochs) on CoNLL-2003 dev, "
           f"{len(cells)} of {len(sweep_keys)} cells finished:", "",
           "| encoder lr | head + CRF lr | dev F1 | best epoch |", "|---:|---:|---:|---:|"]
    for r in cells:
        mark = " **(chosen)**" if chosen and (r["lr"], r["head_lr"]) == tuple(chosen) else ""
        out.append(f"| {r['lr']:g} | {r['head_lr']:g} | {100 * r['dev']['f1']:.2f}{mark} | {r.get('best_epoch')} |")
    if chosen:
        out += ["", f"Every other full-budget cell trains its student at encoder lr {chosen[0]:g}, head + CRF lr "
                f"{chosen[1]:g}. The sweep's test F1 is not shown: only the chosen cell is a table cell."]
    return out + [""]


def per_seed(a: dict, b: dict) -> tuple[list, list[float]]:
    """The seeds both {seed: F1} maps have (in order) and the differences a - b on them, in F1 points."""
    seeds = sorted(set(a) & set(b))
    return seeds, [100 * (a[s] - b[s]) for s in seeds]


def paired(a: dict, b: dict) -> tuple[list[float], float]:
    """Per-seed differences a - b (F1 points, seeds in order) and the paired t-test p (nan below 2 seeds)."""
    from scipy import stats

    seeds, d = per_seed(a, b)
    p = float(stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue) if len(d) > 1 else float("nan")
    return d, p


def paired_share(teacher_f1: float, method: dict, base: dict) -> float | None:
    """Share of the teacher-student gap a method closes, on the seeds it shares with the undistilled baseline:
    mean per-seed gain over (teacher - mean baseline on those seeds). With the same seeds on both sides this is
    (mean method - mean baseline) / (teacher - mean baseline); it never compares different seed sets."""
    seeds, d = per_seed(method, base)
    if not seeds:
        return None
    gap = teacher_f1 - _mean([100 * base[s] for s in seeds])
    return _mean(d) / gap if gap else None


def depth_section(ds: str, layers: int, teacher: dict | None, cells: list[dict]) -> tuple[list[str], dict]:
    """One table for one dataset and student depth; returns its lines and {variant: (share of the gap closed on
    test, mean dev F1)}."""
    by: dict[str, list[dict]] = {}
    for r in cells:
        by.setdefault(name(r), []).append(r)
    out = [f"### {ds}, {layers}-layer students", "",
           "| model | test F1 (mean ± std) | dev F1 | share of the gap closed | params (M) | train s / cell | best epochs |",
           "|---|---|---|---:|---:|---:|---|"]
    if teacher:
        out.append(f"| teacher ({teacher['num_layers']} layers) | {100 * teacher['test']['f1']:.2f} | "
                   f"{100 * teacher['dev']['f1']:.2f} | | {teacher['num_parameters'] / 1e6:.1f} | | |")
    base = by.get("none", [])
    base_seeds = _seeds(base)
    gap = (100 * teacher["test"]["f1"] - _mean(_f1(base))) if teacher and base else None
    shares, uneven = {}, False
    for n in ["none", *sorted(k for k in by if k != "none")]:
        rs = by.get(n)
        if not rs:
            continue
        share = ""
        if gap and n != "none":
            seeds = _seeds(rs)
            s = paired_share(100 * teacher["test"]["f1"], seeds, base_seeds)
            if s is not None:
                shares[n] = (s, _mean(_f1(rs, "dev")))
                share = f"{100 * s:.0f}%"
                if seeds.keys() != base_seeds.keys():
                    uneven, share = True, share + "*"
        secs = [r["train_seconds"] for r in rs if r.get("train_seconds")]
        out.append(f"| {n} | {_ms(_f1(rs))} | {_ms(_f1(rs, 'dev'))} | {share} | {rs[0]['num_parameters'] / 1e6:.1f} | "
                   f"{_mean(secs):.0f} | {', '.join(str(r.get('best_epoch')) for r in sorted(rs, key=lambda r: r['seed']))} |"
                   if secs else f"| {n} | {_ms(_f1(rs))} | {_ms(_f1(rs, 'dev'))} | {share} | | | |")
    if gap is not None:
        out += ["", f"Gap between the teacher and the undistilled student (mean over {len(base)} seed(s)): "
                f"{gap:.2f} F1 points."]
        if uneven:
            out += ["", "\\* seeds of this row and of `none` differ: its share compares the seeds both have "
                    "(mean per-seed gain over the gap on those seeds)."]
    singles = [n for n in SINGLE_KD if n in by]
    best_single = max(singles, key=lambda n: _mean(_f1(by[n]))) if singles else None
    rows = []
    for n in sorted(by):
        if n == "none":
            continue
        for other in ("none", best_single):
            if other and other != n:
                d, p = paired(_seeds(by.get(n, [])), _seeds(by.get(other, [])))
                if len(d) > 1:
                    rows.append(f"| {n} − {other} | {', '.join(f'{x:+.2f}' for x in d)} | {_mean(d):+.2f} | {p:.3f} |")
    if rows:
        best = f" (best single KD method: `{best_single}`)" if best_single else ""
        out += ["", f"Paired per-seed differences in test F1{best}:", "",
                "| comparison | per seed | mean | paired t-test p |", "|---|---|---:|---:|", *rows]
    return out + [""], shares


def _sharing(rows: list[dict]) -> str:
    combos = {}
    for r in rows:
        if r.get("threads"):
            k = (r.get("jobs", 1), r["threads"])
            combos[k] = combos.get(k, 0) + 1
    return "; ".join(f"{n} cell(s) run {'alone' if j == 1 else f'{j} at a time'} with {t} thread(s)"
                     for (j, t), n in sorted(combos.items())) or "not recorded"


def _seeds(rs: list[dict]) -> dict:
    return {r["seed"]: r["test"]["f1"] for r in rs}


def msd_targets(table_rows: list[dict]) -> list[str]:
    """Issue 15's verdicts on the alpha-0.5 table cells: MSD >= none at every depth (no collapse), MSD >= Pos and
    >= Struct in mean test F1 per dataset at 3 layers, with the paired per-seed differences."""
    from benchmarks.paper_report import curves

    out = []
    _, by_depth = curves(table_rows, "layers", ("msd", "none"), ("alpha", 0.5))  # Figure 3's points
    both = sorted(k for k in by_depth.get("msd", {}) if by_depth["msd"][k] and by_depth.get("none", {}).get(k))
    if both:
        diffs = {k: _mean(by_depth["msd"][k]) - _mean(by_depth["none"][k]) for k in both}
        worst = min(both, key=diffs.get)
        missing = [k for k in (1, 2, 3, 4) if k not in both]
        out.append(f"- MSD vs the undistilled student (CoNLL-2003 test, mean over seeds), by depth: "
                   + ", ".join(f"{k} layer{'s' * (k != 1)} {diffs[k]:+.2f}" for k in both)
                   + f"; target MSD >= none at depths 1-4 (no collapse): **{'met' if diffs[worst] >= 0 else 'not met'}** "
                   f"at the depths measured" + (f" (not measured yet: {', '.join(map(str, missing))} layer{'s' * (missing != [1])})" if missing else "")
                   + ".")
    for ds in sorted({r["dataset"] for r in table_rows}):
        by = {}
        for r in table_rows:
            if r["dataset"] == ds and r["layers"] == 3:
                by.setdefault(name(r), []).append(r)
        if "msd" not in by:
            continue
        parts, met = [], []
        for other in ("pos", "struct"):
            if other in by:
                d, p = paired(_seeds(by["msd"]), _seeds(by[other]))
                # on the seeds both have, like the share of the gap; different seed sets only when none is shared
                diff = _mean(d) if d else _mean(_f1(by["msd"])) - _mean(_f1(by[other]))
                met.append(diff >= 0)
                parts.append(f"msd − {other} {diff:+.2f} (per seed: {', '.join(f'{x:+.2f}' for x in d) or 'no common seed'}"
                             + (f", paired p {p:.3f}" if len(d) > 1 else "") + ")")
        if parts:
            seeds = len(by["msd"])
            out.append(f"- MSD vs Pos / Struct, {ds} test, 3 layers ({seeds} MSD seed(s)): {'; '.join(parts)}; target "
                       f"MSD >= Pos and >= Struct: **{'met' if all(met) else 'not met'}** on what is measured"
                       + ("" if len(met) == 2 else " (one of the two methods not run on this dataset)") + ".")
    return out


def msd_teacher_section(rows: list[dict]) -> tuple[list[str], list[str]]:
    """The meta-updated teacher of every MSD cell (its dev F1 before and after, restores, skipped meta steps) and
    the target: it never ends more than ``MSD_MAX_DROP`` F1 points below the original. (lines, summary lines)"""
    cells = sorted((r for r in rows if r["method"] == "msd" and r.get("msd_teacher")), key=lambda r: r["key"])
    if not cells:
        return [], []
    out = ["## MSD's teacher", "",
           "Dev F1 of the meta-updated teacher: the original (before), the one saved beside the best student (after), at "
           f"the last epoch (final) and its best; `--teacher-max-drop` ({MSD_MAX_DROP:g} F1 by default) restores the best "
           "teacher when it falls further. `python -m benchmarks.msd_teacher --runs RUN` measures how far its weights "
           "moved.", "",
           "| cell | before | after | final | best | end − before | restores | skipped / meta steps |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    drops = []
    for r in cells:
        t = r["msd_teacher"]
        end = min(t["dev_f1_after"], t["dev_f1_final"])
        drops.append(100 * (t["dev_f1_before"] - end))
        out.append(f"| `{r['key']}` | {100 * t['dev_f1_before']:.2f} | {100 * t['dev_f1_after']:.2f} | "
                   f"{100 * t['dev_f1_final']:.2f} | {100 * t['dev_f1_best']:.2f} | {100 * (end - t['dev_f1_before']):+.2f} | "
                   f"{t['restores']} | {t['skipped_steps']} / {t['meta_steps']} |")
    met = max(drops) <= MSD_MAX_DROP
    where = (f"ends at most {max(drops):.2f} F1 below the original (worst cell)" if max(drops) > 0 else
             f"ends at or above the original in every cell (the least: {-max(drops):+.2f} F1)")
    summary = [f"- MSD's teacher: its dev F1 {where}; {len(cells)} cell(s); target never more than {MSD_MAX_DROP:g} "
               f"below: **{'met' if met else 'not met'}**."]
    return out + [""], summary


def alpha_verdict(rows: list[dict]) -> list[str]:
    """Issue 15's alpha target on Figure 4's points (:func:`benchmarks.paper_report.curves`: test F1 per alpha,
    seeds pooled): MSD's spread (max - min over alpha) no larger than Pos's, both taken over the alphas where both
    have run; with fewer than two such alphas there is no verdict yet (a spread over one alpha is 0 by definition)."""
    from benchmarks.paper_report import FIGURES, curves

    _, xkey, methods, fixed, _ = FIGURES[1]
    xs, lines = curves(rows, xkey, methods, fixed)
    if not ("msd" in lines and "pos" in lines):
        return []
    common = [x for x in xs if lines["msd"][x] and lines["pos"][x]]
    head = "- Alpha spread (Figure 4, CoNLL-2003 test): "
    if len(common) < 2:
        have = {m: sum(1 for v in lines[m].values() if v) for m in ("msd", "pos")}
        return [head + f"not measured yet (MSD has {have['msd']} alpha(s), Pos {have['pos']}; the spreads are "
                "compared over the alphas both have, at least two)."]
    spread = lambda ls: {m: max(v) - min(v) for m, v in  # noqa: E731
                         {m: [_mean(ls[m][x]) for x in common] for m in ("msd", "pos")}.items()}
    pooled = spread(lines)
    full = len(common) >= 5
    diff = pooled["msd"] - pooled["pos"]  # to 3 decimals: two spreads that print alike can still decide the target
    out = (head + f"MSD {pooled['msd']:.2f} over {len(common)} alphas, Pos {pooled['pos']:.2f} over {len(common)} "
           f"(MSD − Pos {diff:+.3f}); target MSD's spread <= Pos's: **" + ("met" if diff <= 0 else "not met") + "**"
           + ("" if full else f" so far (alphas {', '.join(f'{x:g}' for x in common)} only)") + ".")
    if any(len(lines[m][x]) > 1 for m in ("msd", "pos") for x in common):
        # the figure pools every seed at an alpha (Table I's 3 seeds at 0.5, one elsewhere); the same spread with
        # one seed at every alpha, where every alpha has it, says whether the pooling decides the verdict
        _, one = curves([r for r in rows if r.get("seed") == 0], xkey, methods, fixed)
        if all(one.get(m, {}).get(x) for m in ("msd", "pos") for x in common):
            s0 = spread(one)
            d0 = s0["msd"] - s0["pos"]
            out += (f" With seed 0 alone at every alpha: MSD {s0['msd']:.2f}, Pos {s0['pos']:.2f} (MSD − Pos {d0:+.3f}): "
                    + ("met" if d0 <= 0 else "not met") + ".")
    return [out]


def cost_target(results_path: Path) -> list[str]:
    """Issue 15's cost targets from ``distill_cost.json`` (every method timed in one run): an MSD step with
    the defaults at most 2.5x a Posterior step (mean step time), its peak RSS at most 2x."""
    from benchmarks.paper_report import cost_date

    path = results_path.parent / "distill_cost.json"
    res = {r["method"]: r for r in json.loads(path.read_text())["results"]} if path.exists() else {}
    if not {"pos", "msd"} <= res.keys():
        return ["- MSD step cost: not measured yet (`python -m benchmarks.distill_cost`)."]
    t = res["msd"]["mean_step_s"] / res["pos"]["mean_step_s"]
    m = res["msd"]["peak_rss_mb"] / res["pos"]["peak_rss_mb"]
    return [f"- MSD step cost with its defaults (`distill_cost.md`, {cost_date(path)}): {t:.2f}x a Posterior step "
            f"(target <= 2.5x: **{'met' if t <= 2.5 else 'not met'}**), peak RSS {m:.2f}x (target <= 2x: "
            f"**{'met' if m <= 2 else 'not met'}**)."]


def report(rows: list[dict], sweep_keys: set[str], chosen, results_path) -> str:
    """``rows``: the latest row per cell key; ``sweep_keys``: the student-lr sweep's keys; ``chosen``: its
    (encoder lr, head lr) or None while it runs."""
    lines = ["# Students at the paper's budget", "",
             f"Generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC} by "
             f"`python -m benchmarks.paper --budget full --report` from `{results_path}` ({len(rows)} finished cells). "
             "Teacher: all-MiniLM-L6-v2 + CRF (6 layers); students initialised from evenly spaced teacher layers. "
             "Grid: `python -m benchmarks.paper --budget full --grid ... --data-dir ../shared/data` on a 2-core machine; "
             "per-cell times depend on how many cells shared it (" + _sharing(rows) + ").", ""]
    summary: list[str] = []
    body = sweep_section(rows, sweep_keys, chosen)
    teachers = {r["dataset"]: r for r in rows if r["method"] == "teacher"}
    eligible = [r for r in rows if r["method"] != "teacher"
                and (r["key"] not in sweep_keys or (chosen and (r["lr"], r["head_lr"]) == tuple(chosen)))]
    table_rows = [r for r in eligible if r.get("alpha") == 0.5]
    for ds in sorted({r["dataset"] for r in table_rows}):
        body += [f"## {ds}", ""]
        for layers in sorted({r["layers"] for r in table_rows if r["dataset"] == ds}, reverse=True):
            sec, shares = depth_section(ds, layers, teachers.get(ds),
                                        [r for r in table_rows if r["dataset"] == ds and r["layers"] == layers])
            body += sec
            if ds == "conll2003" and layers in TARGETS:
                want = TARGETS[layers]
                if shares:  # the best student is the one with the best mean dev F1 (never chosen on test)
                    best = max(shares, key=lambda n: shares[n][1])
                    met = "met" if shares[best][0] >= want else "not met"
                    summary.append(f"- CoNLL-2003, {layers} layers: the best student on dev (`{best}`) closes "
                                   f"{100 * shares[best][0]:.0f}% of the gap on test; target {100 * want:.0f}%: "
                                   f"**{met}**.")
                else:
                    summary.append(f"- CoNLL-2003, {layers} layers: target {100 * want:.0f}% of the gap: not measured "
                                   "yet (needs the undistilled baseline and a distilled student at this depth).")
    summary += msd_targets(table_rows) + alpha_verdict(eligible)
    from benchmarks.paper_report import depth_alpha_sections

    body += depth_alpha_sections(eligible + list(teachers.values()), Path(results_path), stem="full")
    sec, verdicts = msd_teacher_section(eligible)
    body += sec
    summary += verdicts + cost_target(Path(results_path))
    if summary:
        lines += ["## Targets", "", *summary, ""]
    return "\n".join(lines + body) + "\n"
