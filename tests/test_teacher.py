"""Teacher fine-tuning end to end on a toy dataset with a tiny random BERT: learning, outputs,
resume after an interruption, evaluation CLI."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForTokenClassification

from training import evaluate, teacher, trainer
from training.config import ConfigError

from conftest import fails_one_line, kill_during_epoch, make_tiny_encoder


@pytest.fixture(scope="module")
def enc_dir(tmp_path_factory):
    return make_tiny_encoder(tmp_path_factory.mktemp("enc2"), layers=2)


def _argv(enc_dir, data_dir, out, epochs, *extra):
    return ["--model", str(enc_dir), "--dataset", str(data_dir), "--out", str(out), "--epochs", str(epochs),
            "--batch_size", "8", "--lr", "1e-3", "--head_lr", "1e-2", "--threads", "2", "--log_every", "5",
            *extra]


def test_teacher_learns_and_writes_run(enc_dir, toy_data_dir, tmp_path):
    out = tmp_path / "teacher"
    result = teacher.main(_argv(enc_dir, toy_data_dir, out, 4))
    assert result["dev"]["f1"] > 0.5, result["dev"]
    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in log if r.get("epoch", 0) >= 1 and "dev_f1" in r]
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4]
    start = next(r for r in log if r.get("epoch") == 0)
    assert epochs[-1]["dev_loss"] < start["dev_loss"]
    assert epochs[-1]["mean_loss"] < epochs[0]["mean_loss"]
    assert all(r["tokens_per_second"] > 0 for r in epochs)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"dev", "test"} and "per_type" in metrics["test"]
    info = json.loads((out / "best" / "run.json").read_text())
    assert info["kind"] == "teacher" and info["args"]["epochs"] == 4
    assert info["metrics"]["test"]["f1"] == metrics["test"]["f1"]
    best_epoch = max(epochs, key=lambda r: r["dev_f1"])["epoch"]
    assert info["epoch"] == best_epoch
    AutoModelForTokenClassification.from_pretrained(out / "best")  # plain transformers loads it


def test_resume_equals_uninterrupted(enc_dir, toy_data_dir, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    teacher.main(_argv(enc_dir, toy_data_dir, straight, 2))

    interrupted = tmp_path / "interrupted"
    undo = kill_during_epoch(monkeypatch, epoch=2, after_batches=3)
    with pytest.raises(KeyboardInterrupt):
        teacher.main(_argv(enc_dir, toy_data_dir, interrupted, 2))
    undo()
    assert not (interrupted / "metrics.json").exists()
    teacher.main(_argv(enc_dir, toy_data_dir, interrupted, 2, "--resume"))
    a = load_file(str(straight / "last" / "model.safetensors"))
    b = load_file(str(interrupted / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(load_file(str(straight / "last" / "crf.safetensors"))["transitions"],
                       load_file(str(interrupted / "last" / "crf.safetensors"))["transitions"])
    epochs = [json.loads(l)["epoch"] for l in (interrupted / "log.jsonl").read_text().splitlines()
              if "dev_f1" in l and "final" not in l]
    assert epochs == [0, 1, 2]  # epoch 1 was not trained twice


def test_refuses_to_clobber_existing_run(enc_dir, toy_data_dir, tmp_path, capsys):
    out = tmp_path / "t"
    out.mkdir()
    (out / "something").write_text("keep me")
    fails_one_line(capsys, teacher.main, _argv(enc_dir, toy_data_dir, out, 1), "already exists")
    with pytest.raises(ConfigError, match="already exists"):  # the library raises, the CLI prints
        trainer.prepare_run_dir(trainer.TrainArgs(out=str(out)))
    assert (out / "something").read_text() == "keep me"


def test_evaluate_cli(enc_dir, toy_data_dir, tmp_path, capsys):
    out = tmp_path / "t"
    teacher.main(_argv(enc_dir, toy_data_dir, out, 1))
    capsys.readouterr()
    assert evaluate.main([str(out), "--split", "test"]) == 0
    printed = capsys.readouterr().out
    assert "overall" in printed and "PER" in printed
    m = json.loads((out / "metrics.json").read_text())["test"]
    assert 0.0 <= m["f1"] <= 1.0 and m["sentences"] == 24
    assert evaluate.main([str(tmp_path / "nope")]) == 2


def test_entity_metrics_against_hand_count():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O"]]
    m = evaluate.entity_metrics(gold, pred)
    # 3 gold spans, 3 predicted, 2 correct
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["per_type"]["PER"]["f1"] == 1.0 and m["per_type"]["LOC"]["recall"] == 0.0


def test_resume_refuses_run_without_resume_state(enc_dir, toy_data_dir, tmp_path, capsys):
    import shutil

    out = tmp_path / "t"
    teacher.main(_argv(enc_dir, toy_data_dir, out, 1))
    shutil.rmtree(out / "last")
    fails_one_line(capsys, teacher.main, _argv(enc_dir, toy_data_dir, out, 2, "--resume"), "no last/")
    assert (out / "best" / "run.json").exists()  # the best checkpoint is kept
