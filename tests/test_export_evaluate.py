"""python -m export.evaluate on a tiny export and a small custom CoNLL dataset."""
import json

import pytest

from export import evaluate as ev_export
from export import format as fmt
from export import onnx as exp
from training import data as data_lib
from training import evaluate as ev
from training.corpora import Sentence
from training.model import load

from conftest import REAL_SENTENCES as REAL
from conftest import minilm_tokenizer as _tokenizer
from conftest import random_sentences
from conftest import tiny_bert_crf as tiny_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("evalexp")
    tok = _tokenizer()
    run = base / "runs" / "student"
    tiny_model(seed=4).save(run / "best", tok, {"kind": "student", "method": "kd", "args": {"max_length": 64}})
    # gold tags = the PyTorch model's own predictions, so that F1 is 1.0 and deltas are meaningful
    model, _, _ = load(run)
    sents = REAL + random_sentences(tok, n=14, seed=5)
    enc = data_lib.encode([Sentence(w, ["O"] * len(w)) for w in sents], tok, None, max_length=64)
    pred = ev.predict(model, enc)
    data = base / "data"
    data.mkdir()
    for split, rows in (("train", range(0, 6)), ("dev", range(0, len(sents))), ("test", range(6, 12))):
        with open(data / f"{split}.txt", "w") as f:
            for i in rows:
                f.writelines(f"{w} {t}\n" for w, t in zip(sents[i], pred[i]))
                f.write("\n")
    # static int8 calibrated on the train split of that dataset, and the dynamic one
    out = exp.export(run, quantize=["int8", "int8-dynamic"], quiet=True, calibration_dataset=str(data))
    return out, data, sents


def test_evaluate_export_cli(setup, capsys):
    out, data, sents = setup
    assert ev_export.main([str(out), "--dataset", str(data), "--split", "dev", "--precision", "all"]) == 0
    stdout = capsys.readouterr().out
    assert "pytorch" in stdout and "fp32" in stdout and "int8-dynamic" in stdout
    files = list(out.glob("eval-*-dev.json"))
    assert len(files) == 1
    r = json.loads(files[0].read_text())
    assert r["sentences"] == len(sents) and r["max_length"] == 64 and r["truncated_words"] > 0
    assert r["pytorch"]["f1"] == pytest.approx(1.0) or r["pytorch"]["support"] == 0
    assert r["fp32"]["f1"] == r["pytorch"]["f1"] and r["delta_f1"]["fp32"] == 0.0
    assert r["fp32"]["agreement_with_pytorch"] == 1.0
    for q in fmt.QUANTIZED:
        assert 0.0 <= r[q]["f1"] <= 1.0 and f"{q}_vs_fp32" in r["delta_f1"]
    assert "int8" in stdout and "int8-dynamic" in stdout
    assert r["checkpoint_matches_manifest"] is True
    print(f"pytorch F1 {r['pytorch']['f1']:.4f}  fp32 {r['fp32']['f1']:.4f}  int8 {r['int8']['f1']:.4f} "
          f"int8-dynamic {r['int8-dynamic']['f1']:.4f}")


def test_evaluate_export_limit_and_errors(setup, tmp_path, capsys):
    out, data, _ = setup
    r = ev_export.evaluate_export(out, dataset=str(data), split="test", precision="fp32", limit=3, quiet=True)
    assert r["sentences"] == 3 and "int8" not in r and set(r["delta_f1"]) == {"fp32"}
    assert ev_export.main([str(tmp_path / "nope")]) == 2
    assert ev_export.main([str(out), "--dataset", str(tmp_path / "nodata")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("error: ") for e in err)
    fp32_only = tmp_path / "fp32only"
    exp.export(fmt.read_manifest(out)["source"]["checkpoint"], out=fp32_only, quiet=True)
    assert ev_export.main([str(fp32_only), "--dataset", str(data), "--precision", "int8"]) == 2
    assert "no int8 model" in capsys.readouterr().err
