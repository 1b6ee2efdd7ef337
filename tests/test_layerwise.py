"""Layer-wise distillation (hidden states, attention, emissions), early stopping: the terms vanish exactly when the student is the teacher, respect masks, have the right
gradients; projections are trained, saved, resumed and not exported; bad input is refused."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForTokenClassification

from training import distill, layerwise, teacher
from training.layerwise import LayerwiseArgs, Matching
from training.model import BertCrf

from conftest import fails_one_line, kill_during_epoch, make_tiny_encoder


# ---------------------------------------------------------------- the terms, float64
def _bertcrf(layers=2, hidden=8, heads=2, seed=0):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=50, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=2 * hidden, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     classifier_dropout=0.0, num_labels=3, id2label={0: "O", 1: "B-X", 2: "I-X"},
                     label2id={"O": 0, "B-X": 1, "I-X": 2})
    return BertCrf(BertForTokenClassification(cfg)).double().eval()


def _batch(seed=1, lengths=(7, 4), S=8):
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    ids = torch.randint(1, 50, (B, S), generator=g)
    am = (torch.arange(S)[None] < torch.tensor(lengths)[:, None]).long()
    starts = [[1, 2, 4, 5], [1, 2]]
    N = max(map(len, starts))
    b = {"input_ids": ids * am, "attention_mask": am, "token_type_ids": torch.zeros_like(ids),
         "word_index": torch.tensor([s + [0] * (N - len(s)) for s in starts]),
         "word_mask": torch.tensor([[True] * len(s) + [False] * (N - len(s)) for s in starts])}
    return {"student": b, "teacher": b, "labels": torch.zeros(B, N, dtype=torch.long)}


ALL = LayerwiseArgs(hidden_weight=1.0, attn_weight=1.0, emission_weight=1.0)
TERMS = ("hidden", "attn", "emission")


def _terms(student, teacher_model, batch, matching, projections=None):
    s = student(batch["student"], **ALL.forward_flags())
    with torch.no_grad():
        t = teacher_model(batch["teacher"], **ALL.forward_flags())
    args = {name: LayerwiseArgs(**{f"{name}_weight": 1.0}) for name in TERMS}
    return {name: layerwise.loss(a, s, t, batch, matching, projections)[0] for name, a in args.items()}


def test_attention_probs_are_hf_attentions():
    # eval mode (no dropout): our pre-dropout distributions are what HF's eager attention returns
    m, b = _bertcrf(), _batch()["student"]
    ours = m(b, attentions=True).attentions
    hf = m.encoder(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_attentions=True).attentions
    assert len(ours) == len(hf) == 2
    for a, h in zip(ours, hf):
        assert torch.allclose(a, h, atol=1e-12)
    keys = b["attention_mask"].bool()[:, None, None, :]
    assert torch.all(ours[0].masked_select(~keys.expand_as(ours[0])) == 0)  # padded keys get nothing


def test_each_term_is_zero_with_zero_gradient_when_student_is_teacher():
    t = _bertcrf(layers=3)
    s = distill.shrink(t, [0, 1, 2])
    batch = _batch()
    terms = _terms(s, t, batch, Matching([0, 1, 2]))
    for name, v in terms.items():
        assert abs(v.item()) < 1e-12, name
        grads = torch.autograd.grad(v, list(s.parameters()), allow_unused=True, retain_graph=True)
        assert max(g.abs().max().item() for g in grads if g is not None) < 1e-10, name
        assert any(g is not None for g in grads), name  # the term does depend on the student


def test_each_term_is_positive_after_perturbing_the_student():
    t = _bertcrf(layers=4)
    s = distill.shrink(t, [1, 3])
    with torch.no_grad():
        for p in s.parameters():
            p.add_(0.05 * torch.randn_like(p))
    terms = _terms(s, t, _batch(), Matching([1, 3]))
    for name, v in terms.items():
        assert v.item() > 1e-6, name


def test_masks_are_respected():
    t = _bertcrf(layers=4)
    s = distill.shrink(t, [1, 3])
    with torch.no_grad():
        for p in s.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = _batch()
    before = _terms(s, t, batch, Matching([1, 3]))
    # other sub-tokens in the padding of both models' inputs: every hidden state there changes...
    changed = {k: v.clone() for k, v in batch["student"].items()}
    pad = changed["attention_mask"] == 0
    changed["input_ids"] = torch.where(pad, (changed["input_ids"] + 17) % 50, changed["input_ids"])
    other = {"student": changed, "teacher": changed, "labels": batch["labels"]}
    h0, h1 = t(batch["teacher"], hidden_states=True).hidden, t(changed, hidden_states=True).hidden
    assert not torch.allclose(h0[2][pad], h1[2][pad])
    after = _terms(s, t, other, Matching([1, 3]))
    # ... and no term moves
    for name in TERMS:
        assert after[name].item() == pytest.approx(before[name].item(), rel=1e-12, abs=1e-14), name
    # the plain functions, with garbage in the masked places of the teacher's side
    mask = batch["student"]["attention_mask"]
    g = torch.Generator().manual_seed(3)
    sh, th = torch.randn(2, 8, 4, generator=g, dtype=torch.float64), torch.randn(2, 8, 4, generator=g, dtype=torch.float64)
    th2 = torch.where(pad[..., None], 1e3, th)
    assert layerwise.hidden_loss([sh], [th2], mask).item() == pytest.approx(layerwise.hidden_loss([sh], [th], mask).item())
    sa = torch.softmax(torch.randn(2, 2, 8, 8, generator=g, dtype=torch.float64), -1)
    ta = torch.softmax(torch.randn(2, 2, 8, 8, generator=g, dtype=torch.float64), -1)
    rows_or_cols = pad[:, None, :, None] | pad[:, None, None, :]
    assert layerwise.attention_loss([sa], [torch.where(rows_or_cols, 0.7, ta)], mask).item() == pytest.approx(
        layerwise.attention_loss([sa], [ta], mask).item())
    wm = batch["student"]["word_mask"]
    se, te = torch.randn(2, 4, 3, generator=g, dtype=torch.float64), torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    assert layerwise.emission_loss(se, torch.where(~wm[..., None], 50.0, te), wm).item() == pytest.approx(
        layerwise.emission_loss(se, te, wm).item())
    # scale: summed over real positions, averaged over sentences (like the CRF NLL)
    per_token = (sh - th).pow(2).mean(-1)
    assert layerwise.hidden_loss([sh], [th], mask).item() == pytest.approx((per_token * mask).sum().item() / 2)


def test_word_level_hidden_states_for_different_tokenizers():
    # with two tokenizations the states are compared at each word's first sub-token: the same as
    # the sub-token term restricted to those positions
    t = _bertcrf(layers=4)
    s = distill.shrink(t, [1, 3])
    with torch.no_grad():
        for p in s.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = _batch()
    b = batch["student"]
    so, to = s(b, hidden_states=True), t(b, hidden_states=True)
    args = LayerwiseArgs(hidden_weight=1.0)
    words = layerwise.loss(args, so, to, batch, Matching([1, 3], word_level=True))[0]
    first = torch.zeros_like(b["attention_mask"])
    for i, (idx, m) in enumerate(zip(b["word_index"], b["word_mask"])):
        first[i, idx[m]] = 1
    restricted = layerwise.loss(args, so, to, {**batch, "student": {**b, "attention_mask": first}}, Matching([1, 3]))[0]
    assert words.item() == pytest.approx(restricted.item(), rel=1e-12)
    assert words.item() < layerwise.loss(args, so, to, batch, Matching([1, 3]))[0].item()


@pytest.mark.parametrize("term,param,idx", [
    ("hidden", "encoder.bert.encoder.layer.0.output.dense.weight", (1, 2)),
    ("attn", "encoder.bert.encoder.layer.1.attention.self.query.weight", (0, 3)),
    ("emission", "encoder.bert.embeddings.word_embeddings.weight", None),
])
def test_gradient_matches_finite_differences(term, param, idx):
    t = _bertcrf(layers=4)
    s = distill.shrink(t, [1, 3])
    with torch.no_grad():
        for p in s.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = _batch()
    if idx is None:
        idx = (int(batch["student"]["input_ids"][0, 2]), 1)
    p = dict(s.named_parameters())[param]
    f = lambda: _terms(s, t, batch, Matching([1, 3]))[term]  # noqa: E731
    g = torch.autograd.grad(f(), p)[0][idx].item()
    eps = 1e-6
    with torch.no_grad():
        p[idx] += eps
    up = f().item()
    with torch.no_grad():
        p[idx] -= 2 * eps
    down = f().item()
    with torch.no_grad():
        p[idx] += eps
    assert abs(g) > 1e-8
    assert g == pytest.approx((up - down) / (2 * eps), rel=1e-6, abs=1e-10)


def test_terms_are_differentiable_in_the_teacher():
    # for MSD's meta step: a teacher that requires grad gets gradients through every term
    t = _bertcrf(layers=4)
    s = distill.shrink(t, [1, 3])
    with torch.no_grad():
        for p in s.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = _batch()
    so, to = s(batch["student"], attentions=True), t(batch["teacher"], attentions=True)
    for name in TERMS:
        v = layerwise.loss(LayerwiseArgs(**{f"{name}_weight": 1.0}), so, to, batch, Matching([1, 3]))[0]
        g = torch.autograd.grad(v, t.encoder.bert.encoder.layer[3].attention.self.query.weight
                                if name == "attn" else t.encoder.classifier.weight if name == "emission"
                                else t.encoder.bert.embeddings.word_embeddings.weight, retain_graph=True)[0]
        assert g.abs().max() > 0, name


def test_projections_get_gradients_when_widths_differ():
    t, s = _bertcrf(layers=2, hidden=8), _bertcrf(layers=1, hidden=6, seed=1)
    m, proj = layerwise.setup(LayerwiseArgs(hidden_weight=1.0), s, t, True, distill.layer_map)
    assert m.hidden_pairs == [(0, 0), (1, 2)] and proj is not None and len(proj.maps) == 2
    proj.double()
    batch = _batch()
    v = layerwise.loss(LayerwiseArgs(hidden_weight=1.0), s(batch["student"], hidden_states=True),
                       t(batch["teacher"], hidden_states=True), batch, m, proj)[0]
    v.backward()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in proj.parameters())
    with pytest.raises(ValueError, match="widths"):
        layerwise.hidden_loss([torch.zeros(1, 2, 6)], [torch.zeros(1, 2, 8)], torch.ones(1, 2))
    # equal widths: no projection
    assert layerwise.setup(LayerwiseArgs(hidden_weight=1.0), distill.shrink(t, [1]), t, True, distill.layer_map)[1] is None


def test_setup_refuses_what_cannot_be_compared():
    t = _bertcrf(layers=2, hidden=8, heads=2)
    with pytest.raises(ValueError, match="head"):
        layerwise.setup(LayerwiseArgs(attn_weight=1.0), _bertcrf(layers=1, hidden=8, heads=4), t, True, distill.layer_map)
    with pytest.raises(ValueError, match="tokenizer"):
        layerwise.setup(LayerwiseArgs(attn_weight=1.0), distill.shrink(t, [1]), t, False, distill.layer_map)
    with pytest.raises(ValueError, match="deeper"):
        layerwise.setup(LayerwiseArgs(hidden_weight=1.0), _bertcrf(layers=3), t, True, distill.layer_map)
    with pytest.raises(ValueError, match="--hidden-weight must be >= 0"):
        LayerwiseArgs(hidden_weight=-0.1)


# ---------------------------------------------------------------- runs on the toy dataset
@pytest.fixture(scope="module")
def toy_teacher(tmp_path_factory, toy_data_dir):
    enc = make_tiny_encoder(tmp_path_factory.mktemp("enc4"), layers=4, seed=1)
    out = tmp_path_factory.mktemp("runs") / "teacher"
    teacher.main(["--model", str(enc), "--dataset", str(toy_data_dir), "--out", str(out), "--epochs", "1",
                  "--batch_size", "8", "--lr", "1e-3", "--head_lr", "1e-2", "--threads", "2", "--limit_train", "32",
                  "--limit_eval", "8"])
    return out


def _distill(teacher_dir, out, *extra):
    return distill.main(["--teacher", str(teacher_dir), "--out", str(out), "--batch_size", "8", "--lr", "1e-3",
                         "--head_lr", "1e-2", "--pilot_lr", "1e-2", "--teacher_lr", "1e-4", "--threads", "2",
                         "--log_every", "1", "--limit_train", "24", "--limit_eval", "8", *extra])


def _log(out):
    return [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]


LW = ["--hidden-weight", "1", "--attn-weight", "0.5", "--emission-weight", "0.1"]


@pytest.mark.parametrize("method", ["none", "topk", "pos", "struct", "msd"])
def test_distill_with_all_terms_runs_and_logs_them(toy_teacher, tmp_path, method):
    out = tmp_path / method
    _distill(toy_teacher, out, "--method", method, "--epochs", "1", *LW)
    epoch = next(r for r in _log(out) if r.get("epoch") == 1 and "dev_f1" in r)
    for name in ("nll", "hidden", "attn", "emission") + (("kd",) if method != "none" else ()):
        assert epoch[f"mean_{name}"] > 0, name
    steps = [r for r in _log(out) if "step" in r]
    loss = steps[0]["nll"] if method == "none" else 0.5 * steps[0]["nll"] + 0.5 * steps[0]["kd"]
    assert steps[0]["loss"] == pytest.approx(loss + steps[0]["hidden"] + 0.5 * steps[0]["attn"] + 0.1 * steps[0]["emission"],
                                             rel=1e-5)
    info = json.loads((out / "best" / "run.json").read_text())
    assert info["layerwise"] == {"teacher_layers": [1, 3], "word_level": False, "projections": False}
    assert info["args"]["hidden_weight"] == 1.0 and not (out / "best" / "projections.safetensors").exists()
    # the table of `make run`: the method with its terms, the gap to the teacher, best/trained epochs
    from training import report

    rows = [report.row(str(toy_teacher)), report.row(str(out))]
    assert rows[1]["method"] == f"{method} + hidden 1 + attn 0.5 + emission 0.1" and rows[1]["epochs"] == "1/1"
    gap = 100 * (rows[1]["test_f1"] - rows[0]["test_f1"])
    assert f"| {gap:+.2f} | 1/1 |" in report.table(rows).splitlines()[-1]


def test_projections_are_saved_resumed_and_not_exported(toy_teacher, tmp_path, monkeypatch):
    narrow = make_tiny_encoder(tmp_path / "narrow", layers=2, hidden=8, seed=2)  # teacher: width 32
    args = ["--method", "pos", "--epochs", "2", "--student-init", str(narrow), "--hidden-weight", "1",
            "--attn-weight", "1"]
    straight = tmp_path / "straight"
    _distill(toy_teacher, straight, *args)
    info = json.loads((straight / "best" / "run.json").read_text())
    assert info["layerwise"]["projections"] and info["layerwise"]["teacher_layers"] == [1, 3]
    for d in ("best", "last"):
        proj = load_file(str(straight / d / "projections.safetensors"))
        assert sorted(proj) == [f"maps.{j}.{k}" for j in range(3) for k in ("bias", "weight")]
        assert proj["maps.0.weight"].shape == (32, 8)
    # trained: the optimizer holds moments for the three (32, 8) maps (no student weight has that shape)
    opt = load_file(str(straight / "last" / "optimizer-model.safetensors"))
    moments = [v for k, v in opt.items() if k.endswith("exp_avg") and tuple(v.shape) == (32, 8)]
    assert len(moments) == 3 and all(m.abs().max() > 0 for m in moments)

    resumed = tmp_path / "resumed"
    undo = kill_during_epoch(monkeypatch, epoch=2, after_batches=1)
    with pytest.raises(KeyboardInterrupt):
        _distill(toy_teacher, resumed, *args)
    undo()
    _distill(toy_teacher, resumed, *args, "--resume")
    for part in ("last/projections.safetensors", "last/model.safetensors"):
        a, b = load_file(str(straight / part)), load_file(str(resumed / part))
        assert all(torch.equal(a[k], b[k]) for k in a), part

    from export import onnx as exp

    out = exp.export(straight, quiet=True)
    files = sorted(p.name for p in out.iterdir())
    assert not any("projection" in f for f in files), files
    import onnx

    shapes = {tuple(i.dims) for i in onnx.load(str(out / "model.onnx")).graph.initializer}
    assert (32, 8) not in shapes and (8, 32) not in shapes


def test_bad_input_one_line_exit_2_nothing_written(toy_teacher, tmp_path, capsys):
    out = tmp_path / "never"
    base = ["--teacher", str(toy_teacher), "--out", str(out), "--threads", "1"]
    fails_one_line(capsys, distill.main, base + ["--hidden-weight", "-1"], "--hidden-weight must be >= 0")
    fails_one_line(capsys, distill.main, base + ["--emission-weight", "-0.5"], "--emission-weight must be >= 0")
    fails_one_line(capsys, distill.main, base + ["--attn-weight", "nan"], "--attn-weight must be >= 0")
    fails_one_line(capsys, distill.main, base + ["--patience", "-1"], "--patience must be >= 0")
    fails_one_line(capsys, distill.main, base + ["--recipe", "nosuch"], r"unknown recipe 'nosuch'; available: .*best")
    from transformers import AutoTokenizer

    heads4 = tmp_path / "heads4"
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, num_labels=7)
    BertForTokenClassification(cfg).save_pretrained(heads4, safe_serialization=True)
    AutoTokenizer.from_pretrained(toy_teacher / "best").save_pretrained(heads4)
    fails_one_line(capsys, distill.main, base + ["--student-init", str(heads4), "--attn-weight", "1"],
           r"equal attention head counts: student layer 0 has 4 heads, teacher layer \d has 2")
    assert not out.exists()


# ---------------------------------------------------------------- early stopping
def test_patience_stops_and_a_resumed_run_does_not_train_again(tmp_path, toy_data_dir):
    enc = make_tiny_encoder(tmp_path / "enc", layers=1)
    out = tmp_path / "t"
    argv = ["--model", str(enc), "--dataset", str(toy_data_dir), "--out", str(out), "--epochs", "5",
            "--batch_size", "32", "--lr", "0", "--head_lr", "0", "--threads", "2", "--patience", "2",
            "--limit_train", "32", "--limit_eval", "8"]
    result = teacher.main(argv)  # lr 0: dev F1 never improves after epoch 1
    epochs = [r["epoch"] for r in _log(out) if r.get("epoch", 0) >= 1 and "dev_f1" in r]
    assert epochs == [1, 2, 3]
    assert result["stopped_early"] and result["epochs_trained"] == 3 and result["best_epoch"] == 1
    assert any(r.get("early_stop") for r in _log(out))
    run = json.loads((out / "best" / "run.json").read_text())
    assert run["train"]["stopped_early"] and run["args"]["patience"] == 2
    n = len(_log(out))
    result = teacher.main(argv + ["--resume"])
    assert [r["epoch"] for r in _log(out)[n:] if "dev_f1" in r and "final" not in r] == []
    assert result["epochs_trained"] == 3


def test_report_names_the_extra_text():
    from training import report

    info = {"method": "pos", "args": {"hidden_weight": 1.0, "emission_weight": 0.0, "augment": "mention-swap,mask",
                                      "unlabeled": None}}
    assert report.method(info) == "pos + hidden 1 + extra (augment mention-swap,mask)"
    assert report.method({"method": "none", "args": {}}) == "none"
