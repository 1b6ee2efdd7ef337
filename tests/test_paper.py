"""The paper-reproduction runner: cell bookkeeping and the report (on synthetic result lines)."""

import json

from benchmarks import paper


def _line(method, seed, f1, layers=3, alpha=0.5, quiz="holdout"):
    c = {"dataset": "conll2003", "method": method, "seed": seed, "layers": None if method == "teacher" else layers,
         "alpha": None if method == "teacher" else alpha, "quiz_split": quiz}
    m = {"f1": f1, "precision": f1, "recall": f1}
    return {"key": paper.cell_key(c), **c, "dev": m, "test": m, "epochs": 2, "train_seconds": 10.0,
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
    (tmp_path / "paper_runs.jsonl").write_text("\n".join(json.dumps(l) for l in lines) + "\n")
    assert set(paper.finished()) == {l["key"] for l in lines}
    text = paper.report(tmp_path / "paper.md")
    assert "| msd | 85.00 ± 1.00 (n=3)" in text
    assert "Teacher-student gap (teacher − mean `none`): 10.00" in text
    assert "`pos` closes 40% of the gap" in text
    assert "MSD − pos, paired per seed: +2.00, +0.00, +1.00" in text
    assert "holdout: 86.00 test F1; dev: 87.00 test F1" in text
    assert (tmp_path / "paper_depth.png").exists()
    assert "Table II" in text and "No finished cells yet" in text
