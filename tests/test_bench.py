"""benchmarks.serving_bench on a tiny export (issue #16 additions): every precision, the GEMM limit and the
fraction of it reached, the GPU line, and the --sweep mode. Tiny sizes: this checks the plumbing,
not the figures."""
import json

import pytest


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    from conftest import REAL_SENTENCES as REAL
    from conftest import minilm_tokenizer as _tokenizer
    from conftest import tiny_bert_crf as tiny_model
    from export import onnx as exp
    from training import checkpoint as ckpt

    base = tmp_path_factory.mktemp("bench")
    run = base / "student"
    tiny_model(seed=2).save(run / ckpt.BEST, _tokenizer(), {"kind": "student", "method": "msd",
                                                            "args": {"max_length": 128}})
    calib = base / "calib.txt"
    calib.write_text("\n".join(" ".join(s) for s in REAL) + "\n")
    return exp.export(run, quantize="int8,int8-dynamic", calibration=calib, quiet=True)


def test_bench_every_precision_and_gemm_fraction(export_dir, tmp_path):
    from benchmarks import serving_bench as bench

    out = tmp_path / "serving"
    rc = bench.main([str(export_dir), "--texts", "6", "--latency-texts", "3", "--threads", "1", "--gemm-seconds", "0.05",
                     "--gemm-tokens", "16", "--only", "engine_fp32,engine_int8,engine_int8-dynamic", "--out", str(out),
                     "--repeat", "2"])
    assert rc == 0
    rep = json.loads((tmp_path / "serving.json").read_text())
    assert rep["repeat"] == 2
    for r in rep["results"].values():  # the median of 2 passes is their mean; batch 1 = the latency loop, twice
        for bs in ("8", "32"):
            passes = r["throughput"][bs]["passes_sentences_per_s"]
            assert len(passes) == 2
            assert r["throughput"][bs]["seconds"] == pytest.approx(sum(6 / p for p in passes) / 2, abs=2e-3)
        assert r["latency_ms"]["n"] == 6 and r["throughput"]["1"]["texts"] == 3
        # stage seconds are per pass: their total is within the passes' range of wall time
        passes_s = [6 / p for p in r["throughput"]["32"]["passes_sentences_per_s"]]
        assert r["stages"]["b32"]["total"] <= max(passes_s) * 1.05
    assert set(rep["results"]) == {"engine_fp32", "engine_int8", "engine_int8-dynamic"}
    assert set(rep["gemm_limits"]) == {"fp32", "int8"} and rep["gpu"].startswith("GPU: not measured")
    for name, r in rep["results"].items():
        assert set(r["throughput"]) == {"1", "8", "32"}
        assert r["flops"]["all_texts"] > 0 and r["flops"]["windows"] == 6
        g = r["gemm"]
        assert g["limit"] == ("fp32" if name == "engine_fp32" else "int8")
        assert g["b32"]["fraction"] > 0 and g["b32"]["onnx_stage_fraction"] >= g["b32"]["fraction"]
        assert r["batch_invariant"] is (name != "engine_int8-dynamic")
        assert r["agreement"]["entity_f1"] >= 0
    assert rep["results"]["engine_fp32"]["agreement"]["identical_texts"] == 1.0
    md = (tmp_path / "serving.md").read_text()
    assert "GPU: not measured" in md and "GEMM limit int8" in md and "fraction b1" in md
    assert "int8-dynamic_vs_fp32_b32" in rep["ratios"]


def test_bench_sweep_tiny(export_dir, tmp_path):
    from benchmarks import serving_bench as bench

    out = tmp_path / "sweep"
    rc = bench.main([str(export_dir), "--sweep", "--texts", "4", "--latency-texts", "2", "--threads", "1",
                     "--gemm-seconds", "0", "--only", "int8,io_binding=on", "--out", str(out)])
    assert rc == 0
    rep = json.loads((tmp_path / "sweep.json").read_text())
    assert list(rep["sweep"]) == ["int8"] and set(rep["sweep"]["int8"]) == {"io_binding=on"}
    assert rep["variants"]["io_binding=on"]["ort"] == {"io_binding": True}
    assert all("error" not in r and r["throughput"]["32"]["sentences_per_s"] > 0 for r in rep["sweep"]["int8"].values())
    assert "io_binding=on" in (tmp_path / "sweep.md").read_text()
    assert bench.main([str(tmp_path / "nope"), "--gemm-seconds", "0"]) == 2
    with pytest.raises(SystemExit):
        bench.main([str(export_dir), "--repeat", "0"])


@pytest.mark.parametrize("module", ["serving_bench", "serving_load"])
@pytest.mark.parametrize("content", [None, b"EU B-ORG\nrejects\xff O\n"])
def test_bad_data_file_is_one_error_line(module, content, tmp_path, capsys):
    """A missing or non-UTF-8 --data file: one `error:` line naming the file, exit 2, no traceback."""
    import importlib

    mod = importlib.import_module(f"benchmarks.{module}")
    data = tmp_path / "texts.conll"
    if content is not None:
        data.write_bytes(content)
    assert mod.main([str(tmp_path / "no-export"), "--data", str(data), "--texts", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(data) in err[0], err
