"""benchmarks.msd_teacher: parameter drift of a meta-updated teacher (the part that needs no data)."""

import pytest
import torch

from benchmarks import msd_teacher


def test_drift_per_part():
    before = {"encoder.bert.w": torch.ones(4), "encoder.classifier.weight": torch.ones(2),
              "crf.transitions": torch.zeros(3) + 2, "encoder.bert.position_ids": torch.arange(3)}
    after = {"encoder.bert.w": torch.ones(4) * 1.1, "encoder.classifier.weight": torch.ones(2),
             "crf.transitions": torch.tensor([2.0, 2.0, 2.6]), "encoder.bert.position_ids": torch.arange(3) + 1}
    d = msd_teacher.drift(before, after)
    assert d["relative_change_encoder"] == pytest.approx(0.1)
    assert d["relative_change_head"] == 0.0
    assert d["relative_change_crf"] == pytest.approx(0.6 / (12 ** 0.5))
    # all float parameters together: sqrt((4 * 0.01 + 0.36) / (4 + 2 + 12)); integer buffers ignored
    assert d["relative_change"] == pytest.approx(((0.04 + 0.36) / 18) ** 0.5)
    assert d["max_abs_change"] == pytest.approx(0.6)
    assert msd_teacher.drift(before, before)["relative_change"] == 0.0


def test_drift_refuses_different_models():
    with pytest.raises(ValueError, match="different parameters"):
        msd_teacher.drift({"a": torch.ones(1)}, {"b": torch.ones(1)})


def test_main_without_msd_runs_says_so(tmp_path, capsys):
    assert msd_teacher.main(["--runs", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert "no finished MSD run" in capsys.readouterr().err


def test_main_keeps_rows_of_other_runs(tmp_path, monkeypatch):
    def fake(run, data_dir):
        return {"run": str(run), "quiz_split": "holdout", "relative_change": len(str(run)) * 1e-3,
                "max_abs_change": 0.0, "original_f1": {"dev": 0.9, "test": 0.8},
                "meta_updated_f1": {"dev": 0.7, "test": 0.6}}

    monkeypatch.setattr(msd_teacher, "analyse", fake)
    runs = []
    for name in ("a", "bb", "ccc"):
        (tmp_path / name / "teacher").mkdir(parents=True)
        (tmp_path / name / "metrics.json").write_text("{}")
        runs.append(str(tmp_path / name))
    out = str(tmp_path / "mt")
    assert msd_teacher.main(["--runs", runs[0], runs[1], "--out", out]) == 0
    assert msd_teacher.main(["--runs", runs[1], runs[2], "--out", out]) == 0
    import json

    rows = json.loads((tmp_path / "mt.json").read_text())["results"]
    assert [r["run"] for r in rows] == runs  # a kept, bb replaced (once), ccc added
    md = (tmp_path / "mt.md").read_text()
    assert md.count("| `") == 3
    assert md.count(": `python -m benchmarks.msd_teacher --runs") == 2  # both commands, each with its date


def test_records_add_rows_for_cells_whose_run_directory_is_gone(tmp_path):
    """--records: an MSD result line without a run directory becomes a row with its recorded dev F1 and
    no drift; other methods, cells already in the table and cells with a saved teacher are left out."""
    import json

    mt = {"dev_f1_before": 0.9127, "dev_f1_after": 0.9138, "dev_f1_best": 0.915, "restores": 0, "skipped_steps": 0,
          "meta_steps": 3950, "lr_factor": 1.0}
    recs = [{"key": "conll2003/msd-L4-a0.5-s0", "dataset": "conll2003", "method": "msd", "seed": 0, "layers": 4,
             "alpha": 0.5, "quiz_split": "holdout", "msd_teacher": mt},
            {"key": "conll2003/pos-L3-a0.5-s0", "method": "pos"},
            {"key": "conll2003/msd-L3-a0.5-s0", "method": "msd", "quiz_split": "holdout", "msd_teacher": mt}]
    (tmp_path / "full_runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    root = tmp_path / "runs"
    (root / "conll2003/msd-L3-a0.5-s0/teacher").mkdir(parents=True)  # still on disk: analysed with --runs instead
    out = tmp_path / "mt"
    argv = ["--records", str(tmp_path / "full_runs.jsonl"), "--records-runs", str(root), "--out", str(out)]
    assert msd_teacher.main(argv) == 0
    rows = json.loads(out.with_suffix(".json").read_text())["results"]
    assert [r["run"] for r in rows] == [str(root / "conll2003/msd-L4-a0.5-s0")]
    assert rows[0]["original_f1"] == {"dev": 0.9127, "test": None} and rows[0]["meta_updated_f1"]["dev"] == 0.9138
    assert "relative_change" not in rows[0] and rows[0]["student_layers"] == 4
    md = out.with_suffix(".md").read_text()
    assert "| holdout | - | - | - | - | - | 91.27 -> 91.38 | - -> - | 0 / 0 |" in md
    first = out.with_suffix(".json").read_text()
    assert msd_teacher.main(argv) == 2  # nothing new to add: the row is already there
    assert out.with_suffix(".json").read_text() == first
