"""Distillation and MSD on tiny random BERT-CRFs: the meta-gradient against finite differences,
which methods touch the teacher, learning on a toy dataset, exact resume."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForTokenClassification

from training import distill, meta, teacher
from training.model import BertCrf

from conftest import kill_during_epoch, make_tiny_encoder


# ---------------------------------------------------------------- meta-gradient, float64
def _tiny_bertcrf(layers, seed):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     classifier_dropout=0.0, num_labels=3, id2label={0: "O", 1: "B-X", 2: "I-X"},
                     label2id={"O": 0, "B-X": 1, "I-X": 2})
    m = BertCrf(BertForTokenClassification(cfg)).double()
    with torch.no_grad():
        for p in m.crf.parameters():
            p.normal_()
    return m


def _batch(seed, B=2, S=7, lengths=(7, 4)):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (B, S), generator=g)
    am = (torch.arange(S)[None] < torch.tensor(lengths)[:, None]).long()
    # words start at sub-tokens 1, 2, 4, ... (skip [CLS]; some words have two pieces)
    starts = [[1, 2, 4, 5], [1, 2]]
    N = max(map(len, starts))
    wi = torch.tensor([s + [0] * (N - len(s)) for s in starts])
    wm = torch.tensor([[True] * len(s) + [False] * (N - len(s)) for s in starts])
    labels = torch.randint(0, 3, (B, N), generator=g) * wm
    b = {"input_ids": ids * am, "attention_mask": am, "token_type_ids": torch.zeros_like(ids),
         "word_index": wi, "word_mask": wm}
    return {"student": b, "teacher": b, "labels": labels}


def _teacher_and_student():
    """A tiny 2-layer teacher and a 1-layer student shrunk from it, then perturbed so they differ."""
    t = _tiny_bertcrf(2, 0)
    s = distill.shrink(t, [1])
    with torch.no_grad():
        for p in s.parameters():
            p.add_(0.05 * torch.randn_like(p))
    t.eval(), s.eval()
    return t, s


@pytest.mark.parametrize("kd_loss,pilot_params", [("pos", "all"), ("struct", "all"), ("pos", "top"), ("pos", "head")])
def test_meta_gradient_matches_finite_differences(kd_loss, pilot_params):
    t, s = _teacher_and_student()
    batch, quiz = _batch(1), _batch(2)
    cfg = meta.MetaConfig(kd_loss=kd_loss, alpha=0.5, pilot_lr=0.5, pilot_params=pilot_params)
    probes = [("crf.transitions", (0, 1)), ("encoder.classifier.weight", (2, 3)),
              ("encoder.bert.encoder.layer.1.output.dense.weight", (1, 1)),
              ("encoder.bert.embeddings.word_embeddings.weight", (int(batch["teacher"]["input_ids"][0, 2]), 0))]
    params = dict(t.named_parameters())
    grads = torch.autograd.grad(meta.quiz_loss_after_pilot(s, t, batch, quiz, cfg), [params[n] for n, _ in probes])
    eps = 1e-5
    for (name, idx), g in zip(probes, grads):
        p = params[name]
        with torch.no_grad():
            p[idx] += eps
        up = meta.quiz_loss_after_pilot(s, t, batch, quiz, cfg).item()
        with torch.no_grad():
            p[idx] -= 2 * eps
        down = meta.quiz_loss_after_pilot(s, t, batch, quiz, cfg).item()
        with torch.no_grad():
            p[idx] += eps
        fd = (up - down) / (2 * eps)
        assert abs(g[idx].item()) > 1e-7, f"{name}: meta-gradient is zero, the test would be vacuous"
        assert g[idx].item() == pytest.approx(fd, rel=1e-5, abs=1e-9), name


def test_teacher_step_descends_the_quiz_loss():
    # the sign end to end: one teacher step (plain SGD, small lr, no clipping) lowers L_q(S'(T))
    t, s = _teacher_and_student()
    batch, quiz = _batch(1), _batch(2)
    cfg = meta.MetaConfig(kd_loss="pos", alpha=0.5, pilot_lr=0.5, teacher_grad_clip=0.0)
    before = meta.quiz_loss_after_pilot(s, t, batch, quiz, cfg).item()
    student_before = {k: v.clone() for k, v in s.state_dict().items()}
    opt = torch.optim.SGD([p for p in t.parameters() if p.requires_grad], lr=1e-2)
    logs = meta.teacher_step(s, t, opt, batch, quiz, cfg)
    after = meta.quiz_loss_after_pilot(s, t, batch, quiz, cfg).item()
    assert logs["quiz_loss"] == pytest.approx(before) and logs["teacher_grad_norm"] > 0
    assert after < before - 1e-6 * logs["teacher_grad_norm"] ** 2, (before, after)
    assert all(torch.equal(v, student_before[k]) for k, v in s.state_dict().items())  # only the teacher moved


def test_pilot_parameter_choice():
    s = _tiny_bertcrf(2, 0)
    all_, top, head = (meta.pilot_parameter_names(s, w) for w in ("all", "top", "head"))
    assert head == {"encoder.classifier.weight", "encoder.classifier.bias", "crf.transitions", "crf.start", "crf.end"}
    assert head < top < all_
    assert all(".layer.1." in n for n in top - head) and not any(".layer.0." in n for n in top)
    before = {n for n, p in s.named_parameters() if p.requires_grad}
    meta.quiz_loss_after_pilot(s, _tiny_bertcrf(2, 1), _batch(1), _batch(2), meta.MetaConfig(pilot_params="head"))
    assert {n for n, p in s.named_parameters() if p.requires_grad} == before  # restored


def test_msd_refuses_non_differentiable_kd():
    with pytest.raises(ValueError, match="differentiable"):
        meta.MetaConfig(kd_loss="topk")


def test_layer_map():
    assert distill.layer_map(6, 3) == [1, 3, 5]
    assert distill.layer_map(12, 6) == [1, 3, 5, 7, 9, 11]
    assert distill.layer_map(6, 2) == [2, 5]
    assert distill.layer_map(6, 1) == [5]
    assert distill.layer_map(6, 6) == list(range(6))
    with pytest.raises(ValueError):
        distill.layer_map(6, 7)


def test_shrink_copies_selected_layers():
    t = _tiny_bertcrf(4, 3)
    s = distill.shrink(t, [1, 3])
    assert s.num_layers == 2 and t.num_layers == 4
    ts, ss = t.state_dict(), s.state_dict()
    for k, v in ss.items():
        src = k.replace("layer.0.", "layer.1.") if "layer.0." in k else k.replace("layer.1.", "layer.3.")
        assert torch.equal(v, ts[src]), k
    assert s.encoder.bert.encoder.layer[0] is not t.encoder.bert.encoder.layer[1]  # a copy


# ---------------------------------------------------------------- runs on the toy dataset
@pytest.fixture(scope="module")
def toy_teacher(tmp_path_factory, toy_data_dir):
    enc = make_tiny_encoder(tmp_path_factory.mktemp("enc4"), layers=4, seed=1)
    out = tmp_path_factory.mktemp("runs") / "teacher"
    teacher.main(["--model", str(enc), "--dataset", str(toy_data_dir), "--out", str(out), "--epochs", "3",
                  "--batch_size", "8", "--lr", "1e-3", "--head_lr", "1e-2", "--threads", "2"])
    return out


def _distill(teacher_dir, out, method, epochs=2, *extra):
    return distill.main(["--teacher", str(teacher_dir), "--out", str(out), "--method", method,
                         "--epochs", str(epochs), "--batch_size", "8", "--lr", "1e-3", "--head_lr", "1e-2",
                         "--pilot_lr", "1e-2", "--teacher_lr", "1e-4", "--threads", "2", "--log_every", "5",
                         *extra])


def _log(out):
    return [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["none", "topk", "pos", "struct", "msd"])
def test_each_method_learns_and_only_msd_changes_the_teacher(toy_teacher, tmp_path, method):
    out = tmp_path / method
    result = _distill(toy_teacher, out, method)
    log = _log(out)
    start = next(r for r in log if r.get("epoch") == 0)
    last = [r for r in log if r.get("epoch", 0) >= 1 and "dev_loss" in r][-1]
    assert last["dev_loss"] < start["dev_loss"], (start, last)
    info = json.loads((out / "best" / "run.json").read_text())
    assert info["method"] == method and info["layer_map"] == [1, 3] and info["num_layers"] == 2
    assert info["kind"] == "student" and info["train_sentences"] + info["holdout_sentences"] == 96
    assert result["teacher_changed"] == (method == "msd")
    original = load_file(str(toy_teacher / "best" / "model.safetensors"))
    if method == "msd":
        assert info["quiz_split"] == "holdout" and info["kd_loss"] == "pos"
        saved = load_file(str(out / "teacher" / "model.safetensors"))
        assert any(not torch.equal(saved[k], original[k]) for k in original)
        assert any("quiz_loss" in r for r in log)
        # the MSD-teacher report: drift > 0 and the original teacher scored as its own run says
        from benchmarks import msd_teacher

        assert msd_teacher.main(["--runs", str(out), "--out", str(tmp_path / "mt"), "--threads", "2"]) == 0
        row = json.loads((tmp_path / "mt.json").read_text())["results"][0]
        assert row["relative_change"] > 0 and row["max_abs_change"] > 0
        own = json.loads((toy_teacher / "metrics.json").read_text())
        assert row["original_f1"]["dev"] == pytest.approx(own["dev"]["f1"])
        assert 0.0 <= row["meta_updated_f1"]["dev"] <= 1.0
        assert "| `" in (tmp_path / "mt.md").read_text()
    else:
        assert not (out / "teacher").exists()
    # the teacher run on disk is never modified
    assert json.loads((toy_teacher / "best" / "run.json").read_text())["kind"] == "teacher"


def test_msd_resume_is_exact(toy_teacher, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    _distill(toy_teacher, straight, "msd", 2, "--kd_loss", "struct", "--quiz_split", "dev", "--limit_train", "48")
    resumed = tmp_path / "resumed"
    undo = kill_during_epoch(monkeypatch, epoch=2, after_batches=2)
    with pytest.raises(KeyboardInterrupt):
        _distill(toy_teacher, resumed, "msd", 2, "--kd_loss", "struct", "--quiz_split", "dev", "--limit_train", "48")
    undo()
    _distill(toy_teacher, resumed, "msd", 2, "--kd_loss", "struct", "--quiz_split", "dev", "--limit_train", "48", "--resume")
    for part in ("last/model.safetensors", "last/teacher/model.safetensors", "last/crf.safetensors"):
        a, b = load_file(str(straight / part)), load_file(str(resumed / part))
        for k in a:
            assert torch.equal(a[k], b[k]), (part, k)
    info = json.loads((resumed / "best" / "run.json").read_text())
    assert info["quiz_split"] == "dev" and info["kd_loss"] == "struct"


def test_student_with_another_encoder_and_tokenizer(toy_teacher, tmp_path):
    from conftest import make_char_encoder

    from training import model as model_lib

    enc = make_char_encoder(tmp_path / "chars")
    t_tok = model_lib.load_tokenizer(str(toy_teacher / "best"))
    s_tok = model_lib.load_tokenizer(str(enc))
    assert len(s_tok("yesterday")["input_ids"]) > len(t_tok("yesterday")["input_ids"])  # really different
    out = tmp_path / "char-student"
    _distill(toy_teacher, out, "struct", 2, "--student_init", str(enc))
    info = json.loads((out / "best" / "run.json").read_text())
    assert info["student_init"] == str(enc) and info["num_layers"] == 2 and info["layer_map"] == [0, 1]
    log = _log(out)
    start = next(r for r in log if r.get("epoch") == 0)
    assert [r for r in log if r.get("epoch") == 2 and "dev_loss" in r][0]["dev_loss"] < start["dev_loss"]
    student, tok, _ = model_lib.load(out)
    assert tok.get_vocab() == s_tok.get_vocab()  # the student keeps its own tokenizer
