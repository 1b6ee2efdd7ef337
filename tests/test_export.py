"""ONNX export of a tiny random BERT-CRF: layout, manifest, parity with PyTorch, int8, fusions,
bad input. One export is shared by most tests (module-scoped fixtures)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors.numpy import load_file, save_file

from export import format as fmt
from export import onnx as exp
from export import viterbi as nv
from training import checkpoint as ckpt

from conftest import REAL_SENTENCES as REAL  # noqa: E402
from conftest import minilm_tokenizer as _tokenizer  # noqa: E402
from conftest import random_sentences  # noqa: E402
from conftest import tiny_bert_crf as tiny_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


@pytest.fixture(scope="module")
def tok():
    return _tokenizer()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tok):
    run = tmp_path_factory.mktemp("runs") / "student"
    model = tiny_model()
    model.save(run / ckpt.BEST, tok, {"kind": "student", "method": "msd", "args": {"max_length": 128}})
    return run


@pytest.fixture(scope="module")
def model(run_dir):
    from training.model import load

    return load(run_dir)[0].eval()


@pytest.fixture(scope="module")
def exported(run_dir):
    """fp32 + static int8 (calibrated on 16 train sentences of the run's dataset: the offline default)
    + int8-dynamic, default output directory (RUN/onnx)."""
    out = exp.export(run_dir, quantize=["int8", "int8-dynamic"], quiet=True, calibration_size=16)
    assert out == run_dir / "onnx"
    return out


@pytest.fixture(scope="module")
def calibration_file(tmp_path_factory):
    f = tmp_path_factory.mktemp("calib") / "sentences.txt"
    f.write_text("\n".join(" ".join(s) for s in REAL[:-1]) + "\n\n" + " ".join(REAL[-1]) + "\n")
    return f


@pytest.fixture(scope="module")
def optimized(run_dir, tmp_path_factory, calibration_file):
    """--optimize --quantize int8,int8-dynamic through the CLI entry point (in-process, to reuse the imports)."""
    out = tmp_path_factory.mktemp("opt") / "export"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = exp.main([str(run_dir), "--out", str(out), "--optimize", "--quantize", "int8,int8-dynamic", "--opset", "17",
                       "--calibration", str(calibration_file)])
    assert rc == 0
    return out, buf.getvalue()


def make_batch(tok, sentences, max_length=128):
    """An independent re-implementation of the training batch (first sub-token per word)."""
    enc = tok(sentences, is_split_into_words=True, truncation=True, max_length=max_length, padding=True,
              return_tensors="pt")
    firsts = []
    for b in range(len(sentences)):
        ids, prev = [], None
        for pos, w in enumerate(enc.word_ids(b)):
            if w is not None and w != prev:
                ids.append(pos)
            prev = w
        firsts.append(ids)
    N = max(len(f) for f in firsts)
    word_index = torch.zeros(len(sentences), N, dtype=torch.long)
    word_mask = torch.zeros(len(sentences), N, dtype=torch.bool)
    for b, f in enumerate(firsts):
        word_index[b, : len(f)] = torch.tensor(f)
        word_mask[b, : len(f)] = True
    return {**{k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")},
            "word_index": word_index, "word_mask": word_mask}


def onnx_emissions(path, batch):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: batch[i.name].numpy() for i in sess.get_inputs()}
    logits = sess.run(None, feed)[0]
    assert logits.shape == (*batch["input_ids"].shape, len(LABELS))
    return np.take_along_axis(logits, batch["word_index"].numpy()[:, :, None], axis=1)


def check_parity(path, model, tok, sentences, atol=1e-4):
    """ONNX emissions vs BertCrf.forward, NumPy Viterbi on them vs BertCrf.decode (torch Viterbi)."""
    batch = make_batch(tok, sentences)
    with torch.no_grad():
        ref = model(batch).emissions.numpy()
    ref_tags = model.decode(batch)
    em = onnx_emissions(path, batch)
    mask = batch["word_mask"].numpy()
    diff = float(np.abs(em - ref)[mask].max())
    crf = fmt.read_crf(path.parent)
    _, paths = nv.viterbi(em, mask, crf["transitions"], crf["start"], crf["end"])
    tags = [paths[b, : int(mask[b].sum())].tolist() for b in range(len(sentences))]
    # one at a time (no padding) as well
    for i, s in enumerate(sentences):
        one = make_batch(tok, [s])
        e1 = onnx_emissions(path, one)[0]
        n = int(one["word_mask"].sum())
        diff = max(diff, float(np.abs(e1[:n] - ref[i, :n]).max()))
        assert nv.decode_one(e1[:n], crf) == tags[i] or atol > 1e-3
    words = sum(len(t) for t in ref_tags)
    agree = sum(a == b for x, y in zip(tags, ref_tags) for a, b in zip(x, y)) / words
    return diff, tags, ref_tags, agree


# --------------------------------------------------------------------------- layout / manifest
def test_layout_and_manifest(exported, run_dir):
    names = {p.name for p in exported.iterdir()}
    assert {fmt.MODEL_FP32, fmt.MODEL_INT8, fmt.CRF_FILE, fmt.MANIFEST, fmt.TOKENIZER_FILE, fmt.CONFIG_FILE} <= names
    assert not any(n.startswith(".") for n in names) and "model.safetensors" not in names
    assert not any(p.name.startswith(".onnx.tmp") for p in run_dir.iterdir())
    onnx.checker.check_model(str(exported / fmt.MODEL_FP32))
    onnx.checker.check_model(str(exported / fmt.MODEL_INT8))
    onnx.checker.check_model(str(exported / fmt.MODEL_INT8_DYNAMIC))
    man = fmt.read_manifest(exported)
    for key in (fmt.K_FORMAT, fmt.K_VERSION, fmt.K_SOURCE, fmt.K_KIND, fmt.K_METHOD, fmt.K_VERSIONS, fmt.K_OPSET,
                fmt.K_LABELS, fmt.K_MAX_LENGTH, fmt.K_INPUTS, fmt.K_PRECISIONS, fmt.K_MODELS, fmt.K_FILES,
                fmt.K_PARITY, fmt.K_OPTIMIZE, fmt.K_QUANTIZATION):
        assert key in man, key
    assert man[fmt.K_LABELS] == LABELS and man[fmt.K_MAX_LENGTH] == 128
    assert man[fmt.K_KIND] == "student" and man[fmt.K_METHOD] == "msd"
    assert man[fmt.K_INPUTS] == ["input_ids", "attention_mask", "token_type_ids"]
    assert man[fmt.K_PRECISIONS] == ["fp32", "int8", "int8-dynamic"]
    graph = onnx.load(str(exported / fmt.MODEL_FP32))
    assert man[fmt.K_OPSET] == next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))
    # dynamic batch and sequence axes
    for inp in graph.graph.input:
        assert all(d.dim_param for d in inp.type.tensor_type.shape.dim[:2])
    assert set(man[fmt.K_VERSIONS]) >= {"torch", "transformers", "optimum", "onnx", "onnxruntime"}
    src = man[fmt.K_SOURCE]
    assert Path(src["checkpoint"]) == (run_dir / "best").resolve()
    assert src["sha256"] == exp.checkpoint_digest(run_dir / "best")[0]
    assert man[fmt.K_FILES][fmt.MODEL_FP32] == (exported / fmt.MODEL_FP32).stat().st_size
    for q in fmt.QUANTIZED:
        assert man[fmt.K_MODELS][q]["bytes"] < 0.5 * man[fmt.K_MODELS]["fp32"]["bytes"]
    assert man[fmt.K_OPTIMIZE] == {"requested": False, "applied": False}
    for prec in fmt.PRECISIONS:
        p = man[fmt.K_PARITY][prec]
        assert {"max_abs_emission_diff", "tag_agreement", "sentences", "words"} <= set(p)
        assert 1 in p["word_lengths"] and max(p["word_lengths"]) > 50
    # batch invariance, measured at export (padded batch vs each sentence alone, the graph against itself)
    assert man[fmt.K_PARITY]["fp32"]["max_abs_emission_diff_batched_vs_alone"] == 0.0
    assert man[fmt.K_PARITY]["int8"]["max_abs_emission_diff_batched_vs_alone"] == 0.0
    assert man[fmt.K_PARITY]["int8-dynamic"]["max_abs_emission_diff_batched_vs_alone"] > 0.0
    assert [man[fmt.K_MODELS][p]["batch_invariant"] for p in fmt.PRECISIONS] == [True, True, False]
    # static int8: calibration recorded; every linear layer quantised, the attention products not
    q = man[fmt.K_QUANTIZATION]["int8"]
    assert q["method"] == "onnxruntime.quantization.quantize_static" and q["format"] == "QDQ" and q["per_channel"]
    cal = q["calibration"]
    assert cal["source"] == "dataset" and cal["dataset"] == "default" and cal["split"] == "train"
    assert cal["sentences"] == 16 and cal["pool"] > 16 and cal["method"] == "minmax"
    # 2 layers: q k v o ffn-up (+ the classifier) quantised, ffn-down kept in fp32 by default
    assert q["matmuls_quantized"] == 2 * 5 + 1 and q["matmuls_excluded"] == 2 * 2
    assert len(q["kept_fp32"]) == 2 and all("/output/dense" in n for n in q["kept_fp32"])
    assert q["keep_fp32_patterns"] == list(exp.DEFAULT_KEEP_FP32)
    assert q["node_counts"]["QuantizeLinear"] > 0 and q["source"] == fmt.MODEL_FP32
    assert man[fmt.K_QUANTIZATION]["int8-dynamic"]["method"] == "onnxruntime.quantization.quantize_dynamic"
    assert man[fmt.K_PARITY]["fp32"]["max_abs_emission_diff"] < 1e-4
    assert man[fmt.K_PARITY]["fp32"]["tag_agreement"] == 1.0
    assert man[fmt.K_TOKENIZER]["identical_ids"] is True
    # CRF round trip is exact, files are world-readable
    crf = fmt.read_crf(exported)
    tensors = load_file(str(run_dir / "best" / ckpt.CRF_FILE))
    assert crf["labels"] == LABELS
    for k in ckpt.CRF_KEYS:
        np.testing.assert_array_equal(crf[k], tensors[k])
    umask = os.umask(0o022)
    os.umask(umask)
    assert exported.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
    assert (exported / fmt.MANIFEST).stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    assert fmt.model_path(exported, "int8") == exported / fmt.MODEL_INT8
    assert fmt.model_path(exported, "int8-dynamic") == exported / fmt.MODEL_INT8_DYNAMIC


def test_serving_tokenizer_alone(exported, tok, run_dir):
    """tokenizer.json loaded with the `tokenizers` library alone gives the training-time ids: no
    padding (the MiniLM file pads to 128), truncation at the manifest's max_length."""
    from tokenizers import Tokenizer

    assert Tokenizer.from_file(str(run_dir / "best" / fmt.TOKENIZER_FILE)).padding is not None  # the source
    tk = Tokenizer.from_file(str(exported / fmt.TOKENIZER_FILE))
    assert tk.padding is None and tk.truncation["max_length"] == 128
    for words in REAL + random_sentences(tok, seed=3):
        enc = tk.encode(words, is_pretokenized=True)
        ref = tok(words, is_split_into_words=True, truncation=True, max_length=128)
        assert enc.ids == ref["input_ids"] and enc.word_ids == ref.word_ids()
    assert len(tk.encode(REAL[-1], is_pretokenized=True).ids) == 128
    man = fmt.read_manifest(exported)
    assert "padding" in man[fmt.K_TOKENIZER]["changed_from_checkpoint"]


# --------------------------------------------------------------------------- parity
def test_fp32_parity_real_and_random(exported, model, tok):
    sentences = REAL + random_sentences(tok)
    diff, tags, ref_tags, agree = check_parity(exported / fmt.MODEL_FP32, model, tok, sentences)
    assert diff < 1e-4
    assert tags == ref_tags
    lengths = [len(t) for t in ref_tags]
    assert min(lengths) == 1 and max(lengths) > 60  # incl. a sentence cut at max_length


@pytest.mark.parametrize("precision", fmt.QUANTIZED)
def test_int8_runs(exported, model, tok, precision):
    sentences = REAL + random_sentences(tok, seed=1)
    path = fmt.model_path(exported, precision)
    diff, tags, ref_tags, agree = check_parity(path, model, tok, sentences, atol=1.0)
    assert [len(t) for t in tags] == [len(t) for t in ref_tags]
    print(f"{precision}: max |emission diff| {diff:.3e}, tag agreement {agree:.4f} "
          f"(manifest: {fmt.read_manifest(exported)['parity'][precision]['tag_agreement']:.4f})")
    assert np.isfinite(diff) and agree > 0.5  # random weights: not asserting exactness


def test_calibration_file_and_bad_calibration(run_dir, calibration_file, tmp_path):
    sents, info = exp.calibration_sentences({}, file=calibration_file)
    assert sents == [list(s) for s in REAL] and info == {"source": "file", "file": str(calibration_file.resolve()),
                                                         "sentences": len(REAL)}
    # the dataset sample is seeded: the same sentences every time, a subset of train
    a, ia = exp.calibration_sentences({"args": {}}, size=5)
    assert a == exp.calibration_sentences({"args": {}}, size=5)[0] and ia["sentences"] == 5
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    for kwargs, message in (({"calibration": tmp_path / "nope.txt"}, "no such file"),
                            ({"calibration": empty}, "no sentences"),
                            ({"calibration_dataset": str(tmp_path / "nodata")}, "calibration data"),
                            ({"calibration_size": 0}, "calibration size")):
        with pytest.raises(exp.ExportError, match=message):
            exp.validate(run_dir, out=tmp_path / "o", quantize="int8", **kwargs)
    with pytest.raises(exp.ExportError, match="unsupported quantization"):
        exp.validate(run_dir, out=tmp_path / "o", quantize="int4")
    with pytest.raises(exp.ExportError, match="not a regular expression"):
        exp.validate(run_dir, out=tmp_path / "o", quantize="int8", calibration=calibration_file, keep_fp32=["(("])
    # int8-dynamic needs no calibration data; int8 without any is refused before anything is written
    assert exp.validate(run_dir, out=tmp_path / "o", quantize="int8-dynamic",
                        calibration=tmp_path / "nope.txt").calibration is None
    assert not (tmp_path / "o").exists()


def test_version1_manifest_reads_int8_as_dynamic(exported, tmp_path):
    """An export written before static int8 existed: its int8 (dynamic) reads as int8-dynamic."""
    old = tmp_path / "v1"
    shutil.copytree(exported, old)
    man = json.loads((old / fmt.MANIFEST).read_text())
    (old / fmt.MODEL_INT8).unlink()
    os.replace(old / fmt.MODEL_INT8_DYNAMIC, old / fmt.MODEL_INT8)
    v1 = {**man, "version": 1, "precisions": ["fp32", "int8"],
          "models": {"fp32": man["models"]["fp32"], "int8": {**man["models"]["int8-dynamic"], "file": fmt.MODEL_INT8}},
          "parity": {"fp32": man["parity"]["fp32"], "int8": man["parity"]["int8-dynamic"]},
          "quantization": man["quantization"]["int8-dynamic"]}
    for m in v1["models"].values():
        m.pop("batch_invariant")
    (old / fmt.MANIFEST).write_text(json.dumps(v1))
    got = fmt.read_manifest(old)
    assert got[fmt.K_PRECISIONS] == ["fp32", "int8-dynamic"] and got["upgraded_from_version"] == 1
    assert fmt.model_path(old, "int8-dynamic") == old / fmt.MODEL_INT8
    assert not fmt.batch_invariant(got, "int8-dynamic") and fmt.batch_invariant(got, "fp32")
    with pytest.raises(fmt.ExportFormatError, match="no int8 model.*--quantize int8"):
        fmt.model_path(old, "int8")


def test_optimize_fuses_and_keeps_parity(optimized, model, tok):
    out, stdout = optimized
    man = fmt.read_manifest(out)
    opt = man[fmt.K_OPTIMIZE]
    assert opt["requested"] and opt["applied"] and opt["fused_total"] > 0
    assert opt["fused_operators"].get("Attention", 0) + opt["fused_operators"].get("MultiHeadAttention", 0) == 2
    assert opt["nodes_after"] < opt["nodes_before"]
    assert "fused" in stdout and "Attention" in stdout
    assert man[fmt.K_OPSET] == 17 and man["opset_requested"] == 17
    assert man[fmt.K_PRECISIONS] == ["fp32", "int8", "int8-dynamic"]
    q = man[fmt.K_QUANTIZATION]
    assert q["int8-dynamic"]["source"].endswith("(fused)")
    # static int8 of the fused graph: the linear layers outside the Attention op are quantised
    assert q["int8"]["source"].endswith("(fused)") and q["int8"]["symbolic_shape_inference"]
    assert q["int8"]["matmuls_quantized"] + len(q["int8"]["kept_fp32"]) == q["int8"]["matmuls_total"]
    assert q["int8"]["matmuls_quantized"] > 0
    assert q["int8"]["node_counts"]["QuantizeLinear"] > 0 and q["int8"]["calibration"]["source"] == "file"
    assert man[fmt.K_PARITY]["int8"]["max_abs_emission_diff_batched_vs_alone"] == 0.0
    assert not any(p.name.startswith(".") for p in out.iterdir())
    assert not (out / "model.opt.onnx").exists()  # the fused graph replaces model.onnx
    onnx.checker.check_model(str(out / fmt.MODEL_FP32))
    assert any(n.op_type == "Attention" for n in onnx.load(str(out / fmt.MODEL_FP32)).graph.node)
    sentences = REAL + random_sentences(tok, seed=2)
    diff, tags, ref_tags, _ = check_parity(out / fmt.MODEL_FP32, model, tok, sentences)
    assert diff < 1e-4 and tags == ref_tags
    for q in fmt.QUANTIZED:
        _, tags8, _, agree8 = check_parity(fmt.model_path(out, q), model, tok, sentences, atol=1.0)
        print(f"fused {q} tag agreement {agree8:.4f}")
        assert [len(t) for t in tags8] == [len(t) for t in ref_tags]


def test_optimize_nothing_fused_is_reported(run_dir, tmp_path, monkeypatch, capsys):
    import onnxruntime.transformers.optimizer as ort_opt

    class NoFusion:
        def get_fused_operator_statistics(self):
            return {"Attention": 0, "SkipLayerNormalization": 0}

    monkeypatch.setattr(ort_opt, "optimize_model", lambda *a, **k: NoFusion())
    out = tmp_path / "nofuse"
    assert exp.main([str(run_dir), "--out", str(out), "--optimize"]) == 0
    stdout = capsys.readouterr().out
    assert "nothing was fused" in stdout
    man = fmt.read_manifest(out)
    assert man[fmt.K_OPTIMIZE]["applied"] is False and man[fmt.K_OPTIMIZE]["fused_total"] == 0
    assert "nothing was fused" in man[fmt.K_OPTIMIZE]["note"]
    assert man[fmt.K_PRECISIONS] == ["fp32"] and man[fmt.K_QUANTIZATION] == {}
    with pytest.raises(fmt.ExportFormatError, match="no int8 model"):
        fmt.model_path(out, "int8")


# --------------------------------------------------------------------------- bad input
def _cli(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "export.onnx", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def _listing(d: Path):
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


@pytest.fixture(scope="module")
def bad_inputs(run_dir, tmp_path_factory, tok):
    base = tmp_path_factory.mktemp("bad")
    best = run_dir / "best"
    # a plain Hugging Face folder: no crf.safetensors, no run.json
    plain = base / "plain"
    tiny_model().encoder.save_pretrained(plain)
    tok.save_pretrained(plain)
    # a checkpoint whose crf.safetensors lacks "end"
    nocrf = base / "nocrf"
    shutil.copytree(best, nocrf)
    t = load_file(str(nocrf / ckpt.CRF_FILE))
    save_file({k: t[k] for k in ("transitions", "start")}, str(nocrf / ckpt.CRF_FILE))
    # a checkpoint with a CRF of the wrong size
    badshape = base / "badshape"
    shutil.copytree(best, badshape)
    save_file({"transitions": np.zeros((3, 3), np.float32), "start": np.zeros(3, np.float32),
               "end": np.zeros(3, np.float32)}, str(badshape / ckpt.CRF_FILE))
    # a non-empty directory that is not an export, as --out
    occupied = base / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    return {
        "missing_dir": ([base / "nope"], "no such directory"),
        "plain_hf_folder": ([plain], "not a checkpoint"),
        "missing_crf_tensors": ([nocrf], "missing CRF tensors"),
        "crf_wrong_shape": ([badshape], "shape"),
        "opset_too_high": ([best, "--out", base / "o1", "--opset", "99"], "unsupported opset"),
        "opset_too_low": ([best, "--out", base / "o2", "--opset", "9"], "unsupported opset"),
        "max_length_too_long": ([best, "--out", base / "o3", "--max-length", "100000"], "max_length"),
        "out_not_an_export": ([best, "--out", occupied], "refusing"),
        "out_overlaps_checkpoint": ([best, "--out", run_dir], "overlap"),
        "calibration_missing": ([best, "--out", base / "o4", "--quantize", "int8", "--calibration", base / "no.txt"],
                                "calibration file"),
        "calibration_dataset_missing": ([best, "--out", base / "o5", "--quantize", "int8", "--calibration-dataset",
                                         "conll2003", "--data-dir", base / "nodata"], "calibration data"),
    }, base


@pytest.mark.parametrize("case", ["missing_dir", "plain_hf_folder", "missing_crf_tensors", "crf_wrong_shape",
                                  "opset_too_high", "opset_too_low", "max_length_too_long", "out_not_an_export",
                                  "out_overlaps_checkpoint", "calibration_missing", "calibration_dataset_missing"])
def test_bad_input_clean_error(bad_inputs, run_dir, case):
    cases, base = bad_inputs
    args, message = cases[case]
    before, run_before = _listing(base), _listing(run_dir)
    r = _cli(*args)
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert _listing(base) == before and _listing(run_dir) == run_before  # nothing written anywhere


def test_failure_mid_export_leaves_previous_export(run_dir, tmp_path, monkeypatch, exported):
    """A crash after the ONNX export (here: in quantization) leaves no temp dir and the old export intact."""
    import onnxruntime.quantization as q

    out = tmp_path / "nested" / "export"
    out.parent.mkdir()
    shutil.copytree(exported, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*a, **k):
        raise RuntimeError("simulated quantization crash")

    monkeypatch.setattr(q, "quantize_dynamic", boom)
    with pytest.raises(exp.ExportFailed, match="simulated quantization crash"):
        exp.export(run_dir, out=out, quantize="int8-dynamic", quiet=True)
    assert sorted(p.name for p in out.parent.iterdir()) == ["export"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # a fresh target whose parents do not exist yet: nothing is left behind either
    fresh = tmp_path / "a" / "b" / "export"
    with pytest.raises(exp.ExportFailed):
        exp.export(run_dir, out=fresh, quantize="int8-dynamic", quiet=True)
    # the static quantizer failing: the same (here after a successful calibration data load)
    monkeypatch.setattr(q, "quantize_static", boom)
    with pytest.raises(exp.ExportFailed, match="static int8 quantization failed.*simulated"):
        exp.export(run_dir, out=out, quantize="int8", quiet=True, calibration_size=4)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not (tmp_path / "a").exists()


def test_default_out_dirs(run_dir, tmp_path):
    assert exp.validate(run_dir).out == run_dir / "onnx"
    assert exp.validate(run_dir / "best").out == run_dir / "onnx"
    other = tmp_path / "mymodel"
    shutil.copytree(run_dir / "best", other)
    assert exp.validate(other).out == tmp_path / "mymodel-onnx"
    assert exp.validate(run_dir, max_length=64).max_length == 64


def test_format_readers_errors(tmp_path, exported):
    with pytest.raises(fmt.ExportFormatError, match="no such export directory"):
        fmt.read_manifest(tmp_path / "nope")
    with pytest.raises(fmt.ExportFormatError, match="missing manifest.json"):
        fmt.read_manifest(tmp_path)
    bad = tmp_path / "bad"
    shutil.copytree(exported, bad)
    man = json.loads((bad / fmt.MANIFEST).read_text())
    (bad / fmt.MANIFEST).write_text(json.dumps(man | {"format": "something-else"}))
    with pytest.raises(fmt.ExportFormatError, match="format is"):
        fmt.read_manifest(bad)
    (bad / fmt.MANIFEST).write_text(json.dumps(man | {"version": fmt.FORMAT_VERSION + 1}))
    with pytest.raises(fmt.ExportFormatError, match="newer"):
        fmt.read_manifest(bad)
    (bad / fmt.MANIFEST).write_text("{not json")
    with pytest.raises(fmt.ExportFormatError, match="unreadable"):
        fmt.read_manifest(bad)
    crf = json.loads((bad / fmt.CRF_FILE).read_text())
    (bad / fmt.CRF_FILE).write_text(json.dumps(crf | {"start": [0.0, 1.0]}))
    with pytest.raises(fmt.ExportFormatError, match="start has shape"):
        fmt.read_crf(bad)
    (bad / fmt.CRF_FILE).write_text(json.dumps({k: v for k, v in crf.items() if k != "end"}))
    with pytest.raises(fmt.ExportFormatError, match="missing keys"):
        fmt.read_crf(bad)
    with pytest.raises(fmt.ExportFormatError, match="unknown precision"):
        fmt.model_path(exported, "fp16")


def test_cli_reduce_range_reaches_the_exporter(monkeypatch, tmp_path):
    """--reduce-range (7-bit int8 weights for CPUs without VNNI) is passed on; off by default."""
    from export import onnx as exp

    seen = []
    monkeypatch.setattr(exp, "export", lambda *a, **kw: seen.append(kw["reduce_range"]) or tmp_path)
    assert exp.main([str(tmp_path), "--quantize", "int8", "--reduce-range"]) == 0
    assert exp.main([str(tmp_path), "--quantize", "int8"]) == 0
    assert seen == [True, False]
