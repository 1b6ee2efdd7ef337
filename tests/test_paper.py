"""The paper-reproduction runner (benchmarks.paper: cell bookkeeping) and its report (benchmarks.paper_report),
on synthetic result lines."""

import json
import sys

import pytest

from benchmarks import paper, paper_report


def _line(method, seed, f1, layers=3, alpha=0.5, quiz="holdout", teacher_lr=None, dev=None):
    c = {"dataset": "conll2003", "method": method, "seed": seed, "layers": None if method == "teacher" else layers,
         "alpha": None if method == "teacher" else alpha, "quiz_split": quiz}
    if teacher_lr is not None:
        c["teacher_lr"] = teacher_lr
    m = {"f1": f1, "precision": f1, "recall": f1}
    d = m if dev is None else {"f1": dev, "precision": dev, "recall": dev}
    return {"key": paper.cell_key(c), **c, "dev": d, "test": m, "epochs": 2, "train_seconds": 10.0,
            "tokens_per_second": 100.0, "num_parameters": 10_000_000, "peak_rss_mb": 1.0}


def test_grid_expansion_and_keys():
    cells = paper.expand(paper.GRIDS["table1"])
    keys = [paper.cell_key(c) for c in cells]
    assert keys[0] == "conll2003/teacher"
    assert len(keys) == len(set(keys)) == 1 + 5 * 3
    assert "conll2003/msd-L3-a0.5-s2" in keys
    q = paper.expand(paper.GRIDS["quiz"])
    assert paper.cell_key(q[1]) == "conll2003/msd-L3-a0.5-s0-quizdev"


def test_report_tables_and_verdict(tmp_path, monkeypatch):
    monkeypatch.setattr(paper, "RESULTS", tmp_path / "paper_runs.jsonl")
    lines = [_line("teacher", 0, 0.90)]
    for s, (n, p, st, ms) in enumerate([(0.80, 0.84, 0.85, 0.86), (0.81, 0.85, 0.84, 0.85), (0.79, 0.83, 0.86, 0.84)]):
        lines += [_line("none", s, n), _line("pos", s, p), _line("struct", s, st), _line("msd", s, ms)]
    lines.append(_line("msd", 0, 0.87, quiz="dev"))
    lines += [_line(m, 0, 0.7 + 0.03 * d, layers=d) for m in ("none", "pos", "msd") for d in (1, 2, 4)]
    lines += [_line(m, 0, f, alpha=a) for m, f in (("pos", 0.83), ("struct", 0.855), ("msd", 0.80)) for a in (0.1, 0.9)]
    (tmp_path / "paper_runs.jsonl").write_text("\n".join(json.dumps(l) for l in lines) + "\n")
    assert set(paper.finished()) == {l["key"] for l in lines}
    text = paper.report(tmp_path / "paper.md")
    assert "| msd | 85.00 ± 1.00 (n=3)" in text
    summary = text[text.index("## Summary"):text.index("## Table I")]
    assert "- CoNLL-2003 NER: **MSD does not win here: +1.00 vs pos and +0.00 vs struct F1" in summary
    # alpha 0.5 is Table I's 3-seed mean: pos 84, struct 85, msd 85; the other alphas one seed each
    assert ("- Figure 4: Spread over alpha (highest minus lowest test F1 across alpha 0.1, 0.5, 0.9): pos 1.00, "
            "struct 0.50, msd 5.00 F1; the least sensitive here is struct") in summary
    assert "Teacher-student gap (teacher − mean `none`): 10.00" in text
    assert "`pos` closes 40% of the gap" in text
    assert "| msd − pos | +2.00, +0.00, +1.00 | +1.00 | 1.00 |" in text
    assert "| msd − struct | +1.00, +1.00, -2.00 | +0.00 |" in text
    assert "**MSD does not win here: +1.00 vs pos and +0.00 vs struct F1, differences that do not stand out" in text
    assert "Meta step cost, per cell here: msd 10 s vs pos 10 s of training (1.0x)" in text
    assert "What MSD did to the teacher" not in text  # no msd_teacher.json next to the results
    drift = {"dataset": "conll2003", "seed": 0, "quiz_split": "holdout", "student_layers": 3, "alpha": 0.5,
             "relative_change": 0.0012, "original_f1": {"dev": 0.9, "test": 0.85},
             "meta_updated_f1": {"dev": 0.89, "test": 0.86}}
    (tmp_path / "msd_teacher.json").write_text(json.dumps({"results": [  # a full-budget cell stays out of it
        {**drift, "run": str(paper.RUNS / "conll2003/msd-L3-a0.5-s0")},
        {**drift, "run": "runs/full/conll2003/msd-L3-a0.5-s0", "relative_change": 0.0099}]}))
    text = paper.report(tmp_path / "paper.md")
    assert ("- seed 0, quiz holdout, 3 layers, alpha 0.5: parameters moved by 0.120% (relative L2), teacher dev F1 "
            "90.00 -> 89.00, test F1 85.00 -> 86.00.") in text
    assert "0.990%" not in text
    assert "holdout: 86.00 test F1 (dev 86.00); dev: 87.00 test F1 (dev 87.00), difference +1.00 test F1" in text
    assert "| pos | 73.00 | 76.00 | 84.00 (n=3) | 82.00 |" in text
    assert (tmp_path / "paper_depth.png").exists()
    assert "Table II" in text and "No finished cells yet" in text


def test_teacher_lr_sweep_cells_and_report(tmp_path, monkeypatch, capsys):
    from training.distill import DistillArgs

    # the short grid's MSD cells ran when training.distill's default was 2e-5 (2e-6 since issue 15)
    assert paper.DEFAULT_TEACHER_LR == 2e-5 and DistillArgs.teacher_lr == 2e-6
    cells = paper.expand(paper.GRIDS["teacher_lr"])
    keys = [paper.cell_key(c) for c in cells]
    assert keys == ["conll2003/teacher", "conll2003/msd-L3-a0.5-s0-tlr2e-06", "conll2003/msd-L3-a0.5-s0-tlr2e-07"]
    assert not set(keys[1:]) & {paper.cell_key(c) for c in paper.expand(paper.GRIDS["table1"])}

    class A:
        data_dir, threads, batch_size, epochs, teacher_epochs = "d", 1, 16, 2, 4
    seen = []

    def popen(cmd, **kw):  # record the child's command line and stop there
        seen.append(cmd)
        raise OSError("not started in this test")

    monkeypatch.setattr(paper, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(paper.subprocess, "Popen", popen)
    (tmp_path / "runs" / "conll2003").mkdir(parents=True)
    for c in cells[1:]:
        with pytest.raises(OSError):
            paper.run_cell(c, A())
    assert [cmd[-2:] for cmd in seen] == [["--teacher_lr", "2e-06"], ["--teacher_lr", "2e-07"]]

    # the sweep stays out of the paper's tables and gets its own section, chosen on dev
    monkeypatch.setattr(paper, "RESULTS", tmp_path / "paper_runs.jsonl")
    lines = [_line("teacher", 0, 0.90), _line("none", 0, 0.80), _line("pos", 0, 0.81), _line("struct", 0, 0.82),
             _line("msd", 0, 0.79, dev=0.84), _line("msd", 0, 0.83, teacher_lr=2e-6, dev=0.86),
             _line("msd", 0, 0.99, teacher_lr=2e-7, dev=0.85)]
    (tmp_path / "paper_runs.jsonl").write_text("\n".join(json.dumps(l) for l in lines) + "\n")
    (tmp_path / "msd_teacher.json").write_text(json.dumps({"results": [
        {"run": str(tmp_path / "runs" / lines[5]["key"]), "dataset": "conll2003", "seed": 0, "quiz_split": "holdout",
         "student_layers": 3, "alpha": 0.5, "teacher_lr": 2e-6, "relative_change": 0.001,
         "original_f1": {"dev": 0.9, "test": 0.85}, "meta_updated_f1": {"dev": 0.895, "test": 0.84}}]}))
    text = paper.report(tmp_path / "paper.md")
    assert "3 layers, alpha 0.5, teacher lr 2e-06: parameters moved by 0.100%" in text
    assert "| msd | 79.00 (n=1)" in text  # Table I holds the default-lr cell only
    assert "(7 finished cells)" in text
    sec = text[text.index("## Beyond the paper: MSD's teacher learning rate"):]
    assert [l.split(" |")[0] for l in sec.splitlines() if l.startswith("| 2e-0")] == ["| 2e-05", "| 2e-06", "| 2e-07"]
    assert "| 2e-06 | 86.00 | 83.00 | 90.00 -> 89.50 |" in sec and "| 2e-07 | 85.00 | 99.00 | - |" in sec
    assert ("Chosen on dev: teacher lr 2e-06 (student dev F1 86.00), test F1 83.00; the same seed's none 80.00, "
            "pos 81.00, struct 82.00.") in sec  # not the 2e-07 cell with the best test F1
    assert "paired with the other methods' cells" not in sec  # one seed of the chosen rate so far

    # the follow-up grid runs the rate chosen on dev on the other seeds; it refuses before the sweep is done
    data = tmp_path / "data"
    data.mkdir()
    argv = ["--grid", "teacher_lr_seeds", "--data-dir", str(data), "--dry-run"]
    capsys.readouterr()
    assert paper.main(argv) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [  # (no teacher checkpoint here: it would be retrained)
        "conll2003/teacher", "conll2003/msd-L3-a0.5-s1-tlr2e-06", "conll2003/msd-L3-a0.5-s2-tlr2e-06"]
    (tmp_path / "paper_runs.jsonl").write_text("\n".join(json.dumps(l) for l in lines[:-1]) + "\n")
    assert paper.main(argv) == 2 and "needs the finished --grid teacher_lr sweep" in capsys.readouterr().err

    for s, (n, p, st, m) in enumerate([(0.79, 0.80, 0.80, 0.82), (0.805, 0.79, 0.81, 0.83)], start=1):
        lines += [_line("none", s, n), _line("pos", s, p), _line("struct", s, st), _line("msd", s, m, teacher_lr=2e-6),
                  _line("topk", s, 0.84)]
    (tmp_path / "paper_runs.jsonl").write_text("\n".join(json.dumps(l) for l in lines) + "\n")
    sec = paper.report(tmp_path / "paper.md").split("## Beyond the paper")[1]
    assert "| msd (teacher lr 2e-06) − pos | +2.00, +2.00, +4.00 | +2.67 |" in sec
    assert "| msd (teacher lr 2e-06) − topk | -2.00, -1.00 | -1.50 |" in sec  # only the seeds topk has
    assert "**MSD (teacher lr 2e-06) is higher than both on every one of the 3 seeds" in sec


def test_conclusion_branches():
    P = paper_report.Paired  # per-seed differences of msd from pos / struct (F1 points), paired t-test p
    win = paper_report.conclusion({"pos": P([1.4, 1.5, 1.6], 0.01), "struct": P([0.8, 0.9, 1.0], 0.03)}, "conll2003")
    assert win.startswith("**MSD wins here: +1.50 vs pos and +0.90 vs struct")
    assert "+1.29 vs pos and +0.80 vs struct" in win
    lose = paper_report.conclusion({"pos": P([0.1, 0.0, 0.2], 0.5), "struct": P([-0.4, -0.3, -0.5], 0.01)}, "wikiann")
    assert lose.startswith("**MSD does not win here") and "significantly worse" in lose
    assert "+0.46 vs pos and +0.29 vs struct" in lose
    below = paper_report.conclusion({"pos": P([-0.78, -2.26, -1.26], 0.08), "struct": P([-1.08, -2.52, -1.48], 0.06)}, "wikiann")
    assert "lower than both on every one of the 3 seeds" in below and "significantly" not in below
    mixed = paper_report.conclusion({"pos": P([0.13, -0.2, -0.23], 0.7), "struct": P([-0.1, -0.3, -0.5], 0.2)}, "conll2003")
    assert "do not stand out" in mixed and "every one" not in mixed
    above = paper_report.conclusion({"pos": P([0.7, 0.2, 1.5], 0.2), "struct": P([0.4, 0.1, 0.9], 0.1)}, "conll2003",
                             name="MSD (teacher lr 2e-06)")
    assert above.startswith("**MSD (teacher lr 2e-06) is higher than both on every one of the 3 seeds")
    assert "not a demonstrated win" in above and "wins here" not in above
    few = paper_report.conclusion({"pos": P([2.0, 2.0], 0.01), "struct": P([2.0, 2.1, 1.9], 0.01)}, "conll2003")
    assert "too few seeds" in few and "wins" not in few
    assert "no finished seed" in paper_report.conclusion({"none": P([1.0, 1.0, 1.0], 0.1)}, "conll2003")


def test_verdict_paired_t_test_detects_a_consistent_difference():
    lines = [_line("teacher", 0, 0.90)]
    for s, base in enumerate([0.80, 0.82, 0.81]):
        lines += [_line("none", s, base), _line("pos", s, base + 0.01), _line("struct", s, base + 0.011),
                  _line("msd", s, base + 0.03 + 0.001 * s)]
    text = "\n".join(paper_report.verdict(lines))
    assert "**MSD wins here: +2.10 vs pos and +2.00 vs struct F1" in text
    assert "`msd` closes 34% of the gap" in text


def _grid_args(jobs):
    import argparse

    return argparse.Namespace(jobs=jobs, threads=1, epochs=2, teacher_epochs=4, batch_size=16, data_dir="x")


def _record_cells(monkeypatch) -> list:
    """Replace run_cell by a fake that sleeps (teachers longer) and records ("start"/"end", key) events."""
    import threading
    import time

    events, lock = [], threading.Lock()

    def fake_run_cell(cell, args):
        with lock:
            events.append(("start", paper.cell_key(cell)))
        time.sleep(0.2 if cell["method"] == "teacher" else 0.02)
        with lock:
            events.append(("end", paper.cell_key(cell)))
        return _line(cell["method"], cell["seed"], 0.5) | {"dataset": cell["dataset"], "key": paper.cell_key(cell),
                                                            "wall_seconds": 0.0}

    monkeypatch.setattr(paper, "run_cell", fake_run_cell)
    return events


def test_run_grid_parallel_waits_for_the_teacher(tmp_path, monkeypatch):
    monkeypatch.setattr(paper, "RESULTS", tmp_path / "paper_runs.jsonl")
    events = _record_cells(monkeypatch)
    todo = paper.expand(dict(datasets=["wikiann", "conll2000"], methods=["none", "pos"], seeds=[0, 1],
                             layers=[3], alphas=[0.5]))
    assert paper.run_grid(todo, _grid_args(jobs=3)) == 0
    keys = [json.loads(l)["key"] for l in (tmp_path / "paper_runs.jsonl").read_text().splitlines()]
    assert sorted(keys) == sorted(paper.cell_key(c) for c in todo)
    for ds in ("wikiann", "conll2000"):
        t_end = events.index(("end", f"{ds}/teacher"))
        starts = [i for i, (e, k) in enumerate(events) if e == "start" and k.startswith(ds + "/") and "teacher" not in k]
        assert starts and min(starts) > t_end  # no student of ds starts before its teacher has finished
    # more than one cell ran at once: some cell started before an earlier one ended
    assert any(events[i][0] == "start" and events[i - 1][0] == "start" for i in range(1, len(events)))


def test_run_grid_stops_starting_cells_after_a_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(paper, "RESULTS", tmp_path / "paper_runs.jsonl")
    started = []

    def fake_run_cell(cell, args):
        started.append(paper.cell_key(cell))
        raise RuntimeError(f"{paper.cell_key(cell)} failed with exit code 1")

    monkeypatch.setattr(paper, "run_cell", fake_run_cell)
    todo = paper.expand(dict(datasets=["wikiann"], methods=["none", "pos"], seeds=[0], layers=[3], alphas=[0.5]))
    assert paper.run_grid(todo, _grid_args(jobs=2)) == 1
    assert started == ["wikiann/teacher"]  # the students waited for the teacher, then did not start
    assert not (tmp_path / "paper_runs.jsonl").exists()


def test_run_grid_a_waiting_student_does_not_hold_a_slot(tmp_path, monkeypatch):
    """With 2 slots and 2 datasets, the second teacher starts while the first one still trains,
    although the first teacher's students come earlier in the list."""
    monkeypatch.setattr(paper, "RESULTS", tmp_path / "paper_runs.jsonl")
    events = _record_cells(monkeypatch)
    todo = (paper.expand(dict(datasets=["wikiann"], methods=["none", "pos"], seeds=[0], layers=[3], alphas=[0.5]))
            + paper.expand(dict(datasets=["conll2000"], methods=["none"], seeds=[0], layers=[3], alphas=[0.5])))
    assert paper.run_grid(todo, _grid_args(jobs=2)) == 0
    assert events[:2] == [("start", "wikiann/teacher"), ("start", "conll2000/teacher")]
    assert len((tmp_path / "paper_runs.jsonl").read_text().splitlines()) == len(todo)


def test_plan_retrains_a_teacher_whose_checkpoint_is_gone(tmp_path, monkeypatch):
    monkeypatch.setattr(paper, "RUNS", tmp_path / "runs")
    cells = paper.expand(dict(datasets=["wikiann"], methods=["none", "pos"], seeds=[0], layers=[3], alphas=[0.5]))
    teacher = _line("teacher", 0, 0.9) | {"key": "wikiann/teacher", "finished_at": "2026-11-24T10:00:00+00:00"}
    done = {"wikiann/teacher": teacher, "wikiann/none-L3-a0.5-s0": _line("none", 0, 0.8)}
    todo = paper.plan(cells, done)
    assert [paper.cell_key(c) for c in todo] == ["wikiann/teacher", "wikiann/pos-L3-a0.5-s0"]
    assert todo[0]["retrain_of"] == {"dev": 0.9, "test": 0.9, "finished_at": "2026-11-24T10:00:00+00:00"}
    tdir = tmp_path / "runs" / "wikiann" / "teacher"
    (tdir / "best").mkdir(parents=True)
    (tdir / "metrics.json").write_text(json.dumps({"dev": {"f1": 0.9}, "test": {"f1": 0.9}}))
    assert [paper.cell_key(c) for c in paper.plan(cells, done)] == ["wikiann/pos-L3-a0.5-s0"]  # the recorded one: reuse
    (tdir / "metrics.json").write_text(json.dumps({"dev": {"f1": 0.9}, "test": {"f1": 0.88}}))  # another teacher on disk
    assert [paper.cell_key(c) for c in paper.plan(cells, done)][0] == "wikiann/teacher"
    done["wikiann/pos-L3-a0.5-s0"] = _line("pos", 0, 0.8)  # nothing left that needs the teacher
    assert paper.plan(cells, done) == []
    import shutil

    shutil.rmtree(tmp_path / "runs")
    assert paper.plan(cells, done) == []


def test_a_retrained_teacher_is_reported_beside_the_first(tmp_path, monkeypatch):
    """Table I keeps the teacher its students learned from; the retraining is listed and compared."""
    monkeypatch.setattr(paper, "RESULTS", tmp_path / "paper_runs.jsonl")
    first = _line("teacher", 0, 0.90) | {"finished_at": "2026-11-24T10:00:00+00:00"}
    again = _line("teacher", 0, 0.89) | {"finished_at": "2026-11-25T11:00:00+00:00",
                                         "retrain_of": {"dev": 0.90, "test": 0.90}}
    students = [_line(m, s, 0.80 + 0.01 * s) for s in range(3) for m in ("none", "pos", "msd")]
    late = _line("msd", 0, 0.7, alpha=0.1) | {"teacher_f1": {"dev": 0.89, "test": 0.89}}
    rows = [first, *students, again, late]
    (tmp_path / "paper_runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert paper_report.teacher_of(students, [first, again]) is first
    assert paper_report.teacher_of([late], [first, again]) is again
    md = paper.report(tmp_path / "paper.md")
    assert "| teacher (training 1, taught these students) | 90.00 (n=1)" in md
    assert "| teacher (training 2) | 89.00 (n=1)" in md
    assert "gap (teacher − mean `none`): 9.00 F1" in md  # against the first teacher (90 - mean 81), not the retrained one
    assert "not bit-identical" in md and "89.00: msd-L3-a0.1-s0" in md
    same = again | {"test": first["test"], "dev": first["dev"]}
    assert "the same teacher." in paper_report.teacher_lines([first, same], rows)[0]
    assert paper_report.teacher_lines([first], rows) == []


def test_dataset_filter_restricts_the_grid(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(paper, "RESULTS", tmp_path / "paper_runs.jsonl")
    monkeypatch.setattr(paper, "RUNS", tmp_path / "runs")
    assert paper.main(["--grid", "tables23", "--dataset", "wikiann", "--data-dir", str(tmp_path), "--dry-run"]) == 0
    keys = capsys.readouterr().out.splitlines()[1:]
    assert keys[0] == "wikiann/teacher" and len(keys) == 16 and all(k.startswith("wikiann/") for k in keys)


def test_full_budget_student_lr_sweep_keys_and_choice():
    """The full budget's student-lr sweep: keys carry the rates, the choice is by dev F1 only and waits for the
    whole sweep, and the chosen rates reach training.distill's command line."""
    cells = [c for c in paper.expand(paper.GRIDS["student_lr"]) if c["method"] != "teacher"]
    keys = [paper.cell_key(c) for c in cells]
    assert "conll2003/none-L3-a0.5-s0-lr0.0001-hlr0.005" in keys and len(set(keys)) == 4
    rows = []
    for i, c in enumerate(cells):
        dev, test = 0.80 + 0.01 * i, 0.90 - 0.01 * i  # the best dev F1 has the worst test F1
        rows.append({"key": paper.cell_key(c), **c, "dev": {"f1": dev}, "test": {"f1": test}})
    assert paper.chosen_student_lr(rows[:-1]) is None  # sweep unfinished
    assert paper.chosen_student_lr(rows) == (cells[-1]["lr"], cells[-1]["head_lr"])


def test_full_budget_grid_refuses_before_sweep_and_other_budget(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(paper.BUDGETS, "full", (tmp_path / "full_runs.jsonl", tmp_path / "runs", 10))
    monkeypatch.setattr(paper, "RESULTS", paper.RESULTS)
    monkeypatch.setattr(paper, "RUNS", paper.RUNS)
    assert paper.main(["--budget", "full", "--grid", "table1_full", "--data-dir", str(tmp_path)]) == 2
    assert "needs the finished --grid student_lr sweep" in capsys.readouterr().err
    assert paper.main(["--grid", "table1_full", "--data-dir", str(tmp_path)]) == 2  # a full grid under --budget short
    assert "belongs to --budget full" in capsys.readouterr().err
    assert paper.main(["--budget", "full", "--grid", "student_lr", "--data-dir", str(tmp_path), "--dry-run"]) == 0
    assert "conll2003/none-L3-a0.5-s0-lr0.0002-hlr0.001" in capsys.readouterr().out


def test_run_cell_passes_student_lrs(tmp_path, monkeypatch):
    seen = {}

    class Stop(Exception):
        pass

    def fake_popen(cmd, **kw):
        seen["cmd"] = cmd
        raise Stop

    monkeypatch.setattr(paper, "RUNS", tmp_path)
    monkeypatch.setattr(paper.subprocess, "Popen", fake_popen)
    (tmp_path / "conll2003").mkdir()
    cell = {"dataset": "conll2003", "method": "none", "seed": 0, "layers": 3, "alpha": 0.5, "quiz_split": "holdout",
            "lr": 2e-4, "head_lr": 5e-3}
    args = type("A", (), {"data_dir": "d", "threads": 1, "batch_size": 16, "epochs": 10, "teacher_epochs": 4})()
    with pytest.raises(Stop):
        paper.run_cell(cell, args)
    cmd = seen["cmd"]
    assert cmd[cmd.index("--lr") + 1] == "0.0002" and cmd[cmd.index("--head_lr") + 1] == "0.005"
    assert cmd[cmd.index("--epochs") + 1] == "10"


def test_variants_and_full_report(tmp_path, monkeypatch):
    """A variant (a method with extra flags) gets its own key and passes its flags; the full report picks the
    chosen learning rates, computes the share of the gap and says whether the target is met."""
    grid = dict(datasets=["conll2003"], methods=["none", ("recipe", "pos", ["--recipe", "best"])], seeds=[0, 1],
                layers=[3], alphas=[0.5], student_lrs=[(1e-4, 1e-3)])
    cells = paper.expand(grid)
    rec = [c for c in cells if c.get("variant") == "recipe"]
    assert paper.cell_key(rec[0]) == "conll2003/recipe-L3-a0.5-s0-lr0.0001-hlr0.001"
    assert rec[0]["method"] == "pos" and rec[0]["flags"] == ["--recipe", "best"]
    from benchmarks import full_report

    def row(c, test, dev=0.5):
        return {"key": paper.cell_key(c), **c, "dev": {"f1": dev}, "test": {"f1": test}, "epochs": 10,
                "num_parameters": 1e7, "num_layers": 3 if c["method"] != "teacher" else 6, "train_seconds": 5.0,
                "best_epoch": 9}

    rows = [row(cells[0], 0.90)] + [row(c, {"none": 0.80 + 0.01 * c["seed"], "pos": 0.88 + 0.02 * c["seed"]}[c["method"]])
                                for c in cells[1:]]
    text = full_report.report(rows, set(), (1e-4, 1e-3), tmp_path / "full_runs.jsonl")
    assert "| recipe | 89.00 ± 1.41 (n=2) | 50.00 ± 0.00 (n=2) | 89% |" in text  # (89 - 80.5) / (90 - 80.5)
    assert "the best student on dev (`recipe`) closes 89% of the gap on test; target 75%: **met**" in text
    # the best student is chosen on dev: a variant better on test but worse on dev does not become it
    leaky = [{**row(c, 0.95, dev=0.4), "variant": "leaky", "key": paper.cell_key(c).replace("recipe", "leaky")}
             for c in rec]
    text2 = full_report.report(rows + leaky, set(), (1e-4, 1e-3), tmp_path / "full_runs.jsonl")
    assert "the best student on dev (`recipe`) closes 89% of the gap on test" in text2
    assert "| recipe − none | +8.00, +9.00 | +8.50 |" in text
    assert "CoNLL-2003, 2 layers: target 50% of the gap: not measured" not in text  # no 2-layer cells at all


def test_full_grids_recipe_pool_and_ablation():
    """The recipe cells distil on the other datasets' sentences; the ablation removes one part at a time."""
    cells = {paper.cell_key(c): c for c in paper.expand({**paper.GRIDS["ablation_full"], "student_lrs": [(1e-4, 1e-3)]})}
    flags = {k.split("/")[1].split("-L")[0]: c.get("flags") for k, c in cells.items() if c["method"] != "teacher"}
    assert flags["msd-recipe"][-2:] == ["--unlabeled", "conll2000,wikiann"]
    assert "--unlabeled" not in flags["recipe-no-unlabeled"] and "--recipe" in flags["recipe-no-unlabeled"]
    assert flags["recipe-no-augment"][-2:] == ["--augment", ""]
    assert flags["recipe-no-layerwise"][-4:] == ["--hidden-weight", "0", "--emission-weight", "0"]
    t1 = paper.expand({**paper.GRIDS["table1_full"], "datasets": ["wikiann"], "student_lrs": [(1e-4, 1e-3)]})
    assert [c["flags"] for c in t1 if c.get("variant") == "recipe"][0][-1] == "conll2003,conll2000"


def test_first_moves_matching_cells_ahead_in_glob_order(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(paper, "RESULTS", tmp_path / "paper_runs.jsonl")
    monkeypatch.setattr(paper, "RUNS", tmp_path / "runs")
    argv = ["--grid", "table1", "--data-dir", str(tmp_path), "--dry-run"]
    assert paper.main(argv) == 0
    plain = capsys.readouterr().out.splitlines()[1:]
    assert paper.main([*argv, "--first", "*/msd-*-s1", "--first", "*/none-*"]) == 0
    keys = capsys.readouterr().out.splitlines()[1:]
    assert sorted(keys) == sorted(plain)  # the same cells, reordered
    assert keys[:5] == ["conll2003/teacher", "conll2003/msd-L3-a0.5-s1",  # a teacher to train stays first
                        "conll2003/none-L3-a0.5-s0", "conll2003/none-L3-a0.5-s1", "conll2003/none-L3-a0.5-s2"]
    assert [k for k in keys[5:]] == [k for k in plain if k not in keys[:5]]  # the rest in grid order


def test_tables23_full_waits_for_table1_and_takes_the_best_kd_method_on_dev(tmp_path, monkeypatch, capsys):
    """Tables II-III at the full budget run the single KD method with the best mean dev F1 of Table I (never test)."""
    results = tmp_path / "full_runs.jsonl"
    monkeypatch.setitem(paper.BUDGETS, "full", (results, tmp_path / "runs", 10))  # main() switches to these
    monkeypatch.setattr(paper, "RESULTS", paper.RESULTS)
    monkeypatch.setattr(paper, "RUNS", paper.RUNS)
    rows = []
    for i, c in enumerate(x for x in paper.expand(paper.GRIDS["student_lr"]) if x["method"] != "teacher"):
        rows.append({"key": paper.cell_key(c), **c, "dev": {"f1": 0.8 + 0.01 * i}, "test": {"f1": 0.8}})
    best = paper.chosen_student_lr(rows)
    t1 = [c for c in paper.expand({**paper.GRIDS["table1_full"], "student_lrs": [best]}) if c["method"] != "teacher"]
    dev = {"topk": 0.85, "pos": 0.87, "struct": 0.86}  # pos best on dev; struct best on test
    test = {"topk": 0.80, "pos": 0.80, "struct": 0.90}
    kd = [{"key": paper.cell_key(c), **c, "dev": {"f1": dev[c["method"]]}, "test": {"f1": test[c["method"]]}}
          for c in t1 if c["method"] in dev and "variant" not in c]
    assert len(kd) == 9 and paper.chosen_kd_method(rows + kd[:-1]) is None
    assert paper.chosen_kd_method(rows + kd) == "pos"
    argv = ["--budget", "full", "--grid", "tables23_full", "--data-dir", str(tmp_path), "--dry-run"]
    results.write_text("".join(json.dumps(r) + "\n" for r in rows + kd[:-1]))
    assert paper.main(argv) == 2 and "table1_full" in capsys.readouterr().err
    results.write_text("".join(json.dumps(r) + "\n" for r in rows + kd))
    assert paper.main(argv) == 0
    keys = capsys.readouterr().out.splitlines()[1:]
    # pos (best on dev) once, then struct too, for MSD's verdict against both
    assert [k.split("/")[1].split("-L")[0] for k in keys if k.startswith("wikiann/") and "-s0-" in k] == \
        ["none", "pos", "struct", "msd", "recipe"]
    assert "wikiann/teacher" in keys and "conll2000/teacher" in keys and len(keys) == len(set(keys)) == 2 * (1 + 5 * 3)


def _full_row(method, seed, test, dev=0.5, layers=3, alpha=0.5, **extra):
    c = {"dataset": "conll2003", "method": method, "seed": seed, "layers": None if method == "teacher" else layers,
         "alpha": None if method == "teacher" else alpha, "quiz_split": "holdout", "lr": 1e-4, "head_lr": 1e-3}
    return {"key": paper.cell_key(c), **c, "dev": {"f1": dev}, "test": {"f1": test}, "epochs": 10,
            "num_parameters": 1e7, "num_layers": 6 if method == "teacher" else layers, "train_seconds": 5.0,
            "best_epoch": 9, "threads": 2, "jobs": 1, **extra}


def test_full_report_msd_verdicts_alpha_spread_and_the_teachers_drop(tmp_path):
    """Issue 15's verdicts in full.md: MSD vs none per depth (a collapse at 1 layer is 'not met'), MSD vs Pos and
    Struct with per-seed differences, the alpha spread of MSD against Pos's, and the meta-updated teacher's end
    F1 against the 2-point bound (one cell 2.5 below: 'not met')."""
    from benchmarks import full_report

    mt = lambda before, after, final: {"dev_f1_before": before, "dev_f1_after": after, "dev_f1_final": final,  # noqa: E731
                                       "dev_f1_best": max(before, after, final), "restores": 0, "skipped_steps": 1,
                                       "meta_steps": 100, "lr_factor": 1.0, "stopped": False}
    rows = [_full_row("teacher", 0, 0.90)]
    for s in (0, 1):
        rows += [_full_row("none", s, 0.80), _full_row("pos", s, 0.82 + 0.01 * s), _full_row("struct", s, 0.81 + 0.005 * s),
                 _full_row("msd", s, 0.83 + 0.002 * s, msd_teacher=mt(0.91, 0.912, 0.905))]
    rows += [_full_row("none", 0, 0.70, layers=1), _full_row("msd", 0, 0.60, layers=1, msd_teacher=mt(0.91, 0.885, 0.90))]
    for a, (p, m) in {0.1: (0.81, 0.80), 0.3: (0.815, 0.84), 0.7: (0.82, 0.83), 0.9: (0.80, 0.75)}.items():
        rows += [_full_row("pos", 0, p, alpha=a), _full_row("msd", 0, m, alpha=a)]
    text = full_report.report(rows, set(), (1e-4, 1e-3), tmp_path / "full_runs.jsonl")
    assert ("MSD vs the undistilled student (CoNLL-2003 test, mean over seeds), by depth: 1 layer -10.00, 3 layers "
            "+3.10; target MSD >= none at depths 1-4 (no collapse): **not met** at the depths measured (not measured yet: "
            "2, 4 layers)") in text
    assert "msd − pos +0.60 (per seed: +1.00, +0.20, paired p 0.374); msd − struct +1.85 (per seed: +2.00, +1.70" in text
    assert "target MSD >= Pos and >= Struct: **met** on what is measured." in text
    # alpha 0.5 is Table I's cells (2 seeds): pos 82.50, msd 83.10 (means); Figure 4 and its plot in full_alpha.png
    assert "| pos | 81.00 | 81.50 | 82.50 (n=2) | 82.00 | 80.00 |" in text and (tmp_path / "full_alpha.png").is_file()
    assert "Alpha spread (Figure 4, CoNLL-2003 test): MSD 9.00 over 5 alphas, Pos 2.50 over 5 (MSD − Pos +6.500); target MSD's spread " \
           "<= Pos's: **not met**. With seed 0 alone at every alpha: MSD 9.00, Pos 2.00 (MSD − Pos +7.000): not met." in text
    # before every alpha has run: no verdict while MSD has one alpha (its spread would be 0), then only over the
    # alphas both have (pos's 0.9 point, 80.00, is left out of its spread)
    part = [r for r in rows if r["alpha"] in (None, 0.5) or (r["method"] == "pos" and r["alpha"] in (0.1, 0.3))]
    assert full_report.alpha_verdict(part) == ["- Alpha spread (Figure 4, CoNLL-2003 test): not measured yet (MSD has 1 "
                                               "alpha(s), Pos 3; the spreads are compared over the alphas both have, at least two)."]
    part += [r for r in rows if r["alpha"] == 0.3 and r["method"] == "msd"] + [
        r for r in rows if r["alpha"] == 0.9 and r["method"] == "pos"]
    assert full_report.alpha_verdict(part) == ["- Alpha spread (Figure 4, CoNLL-2003 test): MSD 0.90 over 2 alphas, Pos "
                                               "1.00 over 2 (MSD − Pos -0.100); target MSD's spread <= Pos's: **met** so far (alphas 0.3, 0.5 only). "
                                               "With seed 0 alone at every alpha: MSD 1.00, Pos 0.50 (MSD − Pos +0.500): not met."]
    assert "| msd | 60.00 | 83.10 (n=2) |" in text and "| none | 70.00 | 80.00 (n=2) |" in text  # Figure 3
    assert "| `conll2003/msd-L1-a0.5-s0-lr0.0001-hlr0.001` | 91.00 | 88.50 | 90.00 | 91.00 | -2.50 | 0 | 1 / 100 |" in text
    assert "its dev F1 ends at most 2.50 F1 below the original (worst cell); 3 cell(s); target never more than 2 " \
           "below: **not met**." in text
    assert "4 cell(s) run alone with 2 thread(s)" not in text and "run alone with 2 thread(s)" in text
    # every teacher within the bound, MSD spread below Pos's
    ok = [r if r["method"] != "msd" or "msd_teacher" not in r or r["layers"] != 1
          else {**r, "msd_teacher": mt(0.91, 0.90, 0.895)} for r in rows]
    text2 = full_report.report(ok, set(), (1e-4, 1e-3), tmp_path / "full_runs.jsonl")
    assert "ends at most 1.50 F1 below the original (worst cell); 3 cell(s); target never more than 2 below: " \
           "**met**." in text2
    up = [r if "msd_teacher" not in r else {**r, "msd_teacher": mt(0.91, 0.912, 0.915)} for r in rows]
    text3 = full_report.report(up, set(), (1e-4, 1e-3), tmp_path / "full_runs.jsonl")
    assert "its dev F1 ends at or above the original in every cell (the least: +0.20 F1); 3 cell(s)" in text3
    # the cost target, from distill_cost.json next to the results
    assert "- MSD step cost: not measured yet" in text3
    cost = lambda msd_s, msd_mb: {"meta": {"date": "2026-12-02T13:00:00"}, "results": [  # noqa: E731
        {"method": "pos", "mean_step_s": 0.2, "peak_rss_mb": 1000.0},
        {"method": "msd", "mean_step_s": msd_s, "peak_rss_mb": msd_mb}]}
    (tmp_path / "distill_cost.json").write_text(json.dumps(cost(0.48, 1500.0)))
    assert ("- MSD step cost with its defaults (`distill_cost.md`, 2026-12-02): 2.40x a Posterior step (target <= 2.5x: "
            "**met**), peak RSS 1.50x (target <= 2x: **met**).") in full_report.report(up, set(), None, tmp_path / "x.jsonl")
    (tmp_path / "distill_cost.json").write_text(json.dumps(cost(0.52, 2100.0)))
    assert ("2.60x a Posterior step (target <= 2.5x: **not met**), peak RSS 2.10x (target <= 2x: **not met**)"
            in full_report.report(up, set(), None, tmp_path / "x.jsonl"))


def test_run_cell_records_the_msd_teachers_summary(tmp_path, monkeypatch):
    """A finished MSD cell's result line carries its teacher's dev F1 before / after (not the per-epoch history)."""
    import subprocess

    from training import checkpoint as ckpt

    monkeypatch.setattr(paper, "RUNS", tmp_path)
    cell = {"dataset": "conll2003", "method": "msd", "seed": 0, "layers": 3, "alpha": 0.5, "quiz_split": "holdout"}
    out = tmp_path / paper.cell_key(cell)
    teacher = tmp_path / "conll2003" / "teacher"
    for d in (out / ckpt.BEST, teacher):
        d.mkdir(parents=True)
    m = {"dev": {"f1": 0.9, "precision": 0.9, "recall": 0.9}, "test": {"f1": 0.8, "precision": 0.8, "recall": 0.8,
                                                                       "per_type": {"PER": {"f1": 0.8}}}}
    (teacher / ckpt.METRICS_FILE).write_text(json.dumps(m))
    summary = {"dev_f1_before": 0.91, "dev_f1_after": 0.905, "dev_f1_final": 0.9, "restores": 1, "history": [{"epoch": 0}]}
    (out / ckpt.METRICS_FILE).write_text(json.dumps({**m, "msd_teacher": summary}))
    (out / ckpt.BEST / "run.json").write_text(json.dumps({"train": {"best_epoch": 3}}))
    real_popen = subprocess.Popen  # (paper.subprocess is this module: keep the real one before patching)
    monkeypatch.setattr(paper.subprocess, "Popen",
                        lambda cmd, **kw: real_popen(["true"]) if "training.distill" in cmd else real_popen(cmd, **kw))
    args = type("A", (), {"data_dir": "d", "threads": 1, "batch_size": 16, "epochs": 10, "teacher_epochs": 4})()
    row = paper.run_cell(cell, args)
    assert row["msd_teacher"] == {k: v for k, v in summary.items() if k != "history"}
    assert row["best_epoch"] == 3 and row["teacher_f1"] == {"dev": 0.9, "test": 0.8}


def test_run_grid_analyses_each_finished_msd_cells_teacher(tmp_path, monkeypatch, capsys):
    """After an MSD cell (and only then) the grid runs benchmarks.msd_teacher on its run directory, while
    it still exists; a failing analysis is a warning, not a failed grid."""
    import subprocess

    monkeypatch.setattr(paper, "RESULTS", tmp_path / "paper_runs.jsonl")
    monkeypatch.setattr(paper, "RUNS", tmp_path / "runs")
    _record_cells(monkeypatch)
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, stdout="error: boom")

    monkeypatch.setattr(paper.subprocess, "run", fake_run)
    todo = paper.expand(dict(datasets=["wikiann"], methods=["none", "msd"], seeds=[0], layers=[3], alphas=[0.5]))
    assert paper.run_grid(todo, _grid_args(jobs=1)) == 0
    msd = [c for c in todo if c["method"] == "msd"][0]
    assert calls == [[sys.executable, "-m", "benchmarks.msd_teacher", "--runs",
                      str(tmp_path / "runs" / paper.cell_key(msd)), "--threads", "1"]]
    err = capsys.readouterr().err
    assert "warning: -m benchmarks.msd_teacher" in err and "boom" in err


def test_full_report_share_pairs_seeds(tmp_path):
    """With uneven seed counts the share of the gap and MSD's verdict against Pos compare only the seeds both rows
    have: a method run on seed 0 alone is neither credited with the baseline's weaker seed 1 nor judged against
    Pos's weaker seed 1."""
    from benchmarks import full_report

    grid = dict(datasets=["conll2003"], methods=["none", "pos", "msd"], seeds=[0, 1], layers=[3], alphas=[0.5],
                student_lrs=[(1e-4, 1e-3)])
    cells = paper.expand(grid)
    f1 = {("none", 0): 0.82, ("none", 1): 0.78, ("msd", 0): 0.86, ("pos", 0): 0.87, ("pos", 1): 0.79}

    def row(c):
        t = 0.90 if c["method"] == "teacher" else f1[(c["method"], c["seed"])]
        return {"key": paper.cell_key(c), **c, "dev": {"f1": 0.5}, "test": {"f1": t}, "epochs": 10,
                "num_parameters": 1e7, "num_layers": 6 if c["method"] == "teacher" else 3, "best_epoch": 9}

    rows = [row(c) for c in cells if c["method"] == "teacher" or (c["method"], c["seed"]) in f1]
    text = full_report.report(rows, set(), (1e-4, 1e-3), tmp_path / "full_runs.jsonl")
    # paired on seed 0: (86 - 82) / (90 - 82) = 50%; the unpaired means would give (86 - 80) / (90 - 80) = 60%
    assert "| msd | 86.00 (n=1) | 50.00 (n=1) | 50%* |" in text
    assert "| pos | 83.00 ± 5.66 (n=2) | 50.00 ± 0.00 (n=2) | 30% |" in text  # same seeds as none: no mark
    assert "seeds of this row and of `none` differ" in text
    # MSD against Pos on seed 0: -1.00 (unpaired means would give 86 - 83 = +3.00 and call it met)
    assert "msd − pos -1.00 (per seed: -1.00)" in text and "target MSD >= Pos and >= Struct: **not met**" in text
    assert full_report.paired_share(90.0, {0: 0.86, 1: 0.84}, {0: 0.82, 1: 0.78}) == pytest.approx(0.5)
