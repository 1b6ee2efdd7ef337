"""benchmarks.frontier end to end on tiny random BERT-CRFs (students of depth 1 and 2, a teacher)
on the toy dataset, with tiny sizes; and its bad-input paths (one line, exit 2, nothing written)."""
import json
from pathlib import Path

import pytest

from benchmarks import frontier


def _save(run: Path, depth: int, kind: str, data_dir: Path, seed: int):
    import torch
    from transformers import BertConfig, BertForTokenClassification

    from conftest import TOY_LABELS
    from conftest import minilm_tokenizer as _tokenizer
    from training import checkpoint as ckpt
    from training.model import BertCrf

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=depth, num_attention_heads=2,
                     intermediate_size=64, num_labels=len(TOY_LABELS), id2label=dict(enumerate(TOY_LABELS)),
                     label2id={l: i for i, l in enumerate(TOY_LABELS)})
    model = BertCrf(BertForTokenClassification(cfg)).eval()
    model.save(run / ckpt.BEST, _tokenizer(), {"kind": kind, "method": None if kind == "teacher" else "msd",
                                               "args": {"max_length": 64, "dataset": str(data_dir)}})


@pytest.fixture(scope="module")
def grid(tmp_path_factory, toy_data_dir):
    base = tmp_path_factory.mktemp("grid")
    _save(base / "teacher", 2, "teacher", toy_data_dir, 0)
    _save(base / "students" / "L1", 1, "student", toy_data_dir, 1)
    _save(base / "students" / "L2", 2, "student", toy_data_dir, 2)
    return base


def _args(grid, data, out, *extra):
    return ["--runs", str(grid / "students" / "*"), "--teacher", str(grid / "teacher"), "--depths", "1,2",
            "--dataset", str(data), "--split", "test", "--texts", "6", "--latency-texts", "3", "--threads", "1",
            "--calibration-size", "8", "--gemm-seconds", "0.05", "--gemm-tokens", "16", "--out", str(out), *extra]


def test_frontier_end_to_end(grid, toy_data_dir, tmp_path, capsys):
    out = tmp_path / "frontier"
    assert frontier.main(_args(grid, toy_data_dir, out)) == 0
    rep = json.loads((tmp_path / "frontier.json").read_text())
    pts = rep["points"]
    assert {(p["kind"], p["depth"], p["precision"]) for p in pts} == {
        (k, d, p) for k, d in (("student", 1), ("student", 2), ("teacher", 2)) for p in ("fp32", "int8")}
    for p in pts:
        assert "error" not in p, p
        assert 0.0 <= p["f1"] <= 1.0 and p["f1_detail"]["sentences"] == 24
        assert set(p["throughput"]) == {"1", "8", "32"} and p["latency_ms"]["p99"] >= p["latency_ms"]["p50"]
        assert p["peak_rss_bytes"] > 0 and p["model_bytes"] > 0 and p["speedup_b32"] > 0
        assert 0 < p["gemm_fraction_b32"] and Path(p["export"]).name == frontier.CACHE_DIR
        assert Path(p["run"]).exists()
    # the F1 comes from the export through the engine: the same as export.evaluate's ONNX path would give
    ref = rep["reference"]
    assert ref["run"] == str(grid / "teacher") and ref["throughput"]["32"]["sentences_per_s"] > 0
    assert ref["f1"] == next(p["f1"] for p in pts if p["kind"] == "teacher" and p["precision"] == "fp32")
    assert set(rep["gemm_limits"]) == {"32x64"} and rep["gpu"].startswith("GPU: not measured")
    md = (tmp_path / "frontier.md").read_text()
    assert "teacher pipeline" in md and "L1 msd int8" in md and str(grid / "students" / "L2") in md
    assert "GPU: not measured" in md and "Targets" in md and "GEMM fraction" in md
    assert (tmp_path / "frontier.png").stat().st_size > 1000
    man = json.loads((grid / "students" / "L1" / frontier.CACHE_DIR / "manifest.json").read_text())
    assert man["quantization"]["int8"]["calibration"]["sentences"] == 8 and man["frontier"]["precisions"] == ["fp32", "int8"]
    # the cached exports are reused while the checkpoint and the settings match, redone when they change
    args = frontier.build_parser().parse_args(_args(grid, toy_data_dir, out))
    run = frontier.describe_run(grid / "students" / "L1")
    assert frontier.cached_export(run, ["fp32", "int8"], args) == (grid / "students" / "L1" / frontier.CACHE_DIR, True)
    assert frontier.cached_export(run, ["fp32"], args)[1] is True
    args.calibration_size = 9
    assert frontier.cached_export(run, ["fp32", "int8"], args)[1] is False


@pytest.mark.parametrize("case", ["missing_run", "glob_nothing", "missing_depth", "no_calibration", "bad_precision",
                                  "no_dataset"])
def test_frontier_bad_input(grid, toy_data_dir, tmp_path, capsys, case):
    out = tmp_path / "f"
    args = _args(grid, toy_data_dir, out)
    if case == "missing_run":
        args += ["--runs", str(grid / "students" / "L1"), str(grid / "nope")]
        message = "does not exist"
    elif case == "glob_nothing":
        args += ["--runs", str(grid / "zzz*")]
        message = "matches nothing"
    elif case == "missing_depth":
        args += ["--depths", "1,2,3"]
        message = "no student run of depth 3"
    elif case == "no_calibration":
        args += ["--calibration", str(tmp_path / "none.txt")]
        message = "calibration file"
    elif case == "bad_precision":
        args += ["--precisions", "fp32,int4"]
        message = "--precisions"
    else:
        args += ["--dataset", str(tmp_path / "nodata")]
        message = "unknown dataset"
    before = sorted(p.name for p in (grid / "students" / "L2").iterdir())
    assert frontier.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not out.with_suffix(".json").exists()
    assert sorted(p.name for p in (grid / "students" / "L2").iterdir()) == before


def test_targets_name_the_point_that_meets_or_the_closest_miss():
    ref = {"f1": 0.90, "throughput": {"32": {"sentences_per_s": 100.0}}}
    pt = lambda depth, f1, speed, frac=0.5: {"kind": "student", "depth": depth, "method": "none", "precision": "fp32",  # noqa: E731
                                             "run": f"runs/L{depth}", "f1": f1, "speedup_b32": speed,
                                             "gemm_fraction_b32": frac}
    t = frontier.targets([pt(1, 0.70, 9.0), pt(4, 0.885, 2.5)], ref)
    key = "student within 1.0 F1 of the teacher at >= 8x the teacher pipeline (batch 32)"
    assert t[key]["met"] is False
    assert t[key]["value"] == "no student within 1.0 F1; the closest is L4 none fp32, F1 88.50 (-1.50) at 2.5x"
    t = frontier.targets([pt(1, 0.70, 9.0), pt(2, 0.895, 8.5, frac=0.7), pt(3, 0.899, 3.0, frac=0.61)], ref)
    assert t[key]["met"] is True and t[key]["value"].startswith("L2 none fp32 (runs/L2): 8.5x")
    assert t["every fp32 point's engine >= 60% of the fp32 GEMM limit (batch 32)"]["met"] is False  # L1: 50%
