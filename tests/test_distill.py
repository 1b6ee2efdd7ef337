"""Distillation and MSD on tiny random BERT-CRFs: the meta-gradient against finite differences,
which methods touch the teacher, learning on a toy dataset, exact resume."""

import copy
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


@pytest.mark.parametrize("meta_grad", meta.META_GRADS)
@pytest.mark.parametrize("kd_loss,pilot_params", [("pos", "all"), ("struct", "all"), ("pos", "top"), ("pos", "head")])
def test_meta_gradient_matches_finite_differences(kd_loss, pilot_params, meta_grad):
    t, s = _teacher_and_student()
    batch, quiz = _batch(1), _batch(2)
    cfg = meta.MetaConfig(kd_loss=kd_loss, alpha=0.5, pilot_lr=0.5, pilot_params=pilot_params, meta_grad=meta_grad,
                          teacher_anchor="none")
    probes = [("crf.transitions", (0, 1)), ("encoder.classifier.weight", (2, 3)),
              ("encoder.bert.encoder.layer.1.output.dense.weight", (1, 1)),
              ("encoder.bert.embeddings.word_embeddings.weight", (int(batch["teacher"]["input_ids"][0, 2]), 0))]
    params = dict(t.named_parameters())
    loss, all_grads = meta.meta_gradient(s, t, batch, quiz, cfg)
    assert loss.item() == pytest.approx(meta.quiz_loss_after_pilot(s, t, batch, quiz, cfg).item(), rel=1e-12)
    index = {n: i for i, n in enumerate(params)}
    grads = [all_grads[index[n]] for n, _ in probes]
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
    cfg = meta.MetaConfig(kd_loss="pos", alpha=0.5, pilot_lr=0.5, teacher_grad_clip=0.0, teacher_anchor="none")
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


def _with_dropout(model, p=0.3):
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p
        if hasattr(m, "dropout_prob"):  # sdpa attention dropout
            m.dropout_prob = p
    return model.train()


@pytest.mark.parametrize("dropout", [False, True])
@pytest.mark.parametrize("kd_loss", ["pos", "struct"])
@pytest.mark.parametrize("pilot_params", meta.PILOT_PARAMS)
def test_factorised_meta_gradient_equals_second_order(kd_loss, pilot_params, dropout):
    t, s = _teacher_and_student()
    if dropout:  # both modes see the same masks when they start from the same RNG state
        _with_dropout(s)
    batch, quiz = _batch(1), _batch(2)
    out = {}
    for mode in meta.META_GRADS:
        cfg = meta.MetaConfig(kd_loss=kd_loss, alpha=0.3, temperature=1.5, pilot_lr=0.5, pilot_params=pilot_params,
                              meta_grad=mode, teacher_anchor="none")
        torch.manual_seed(3)
        out[mode] = meta.meta_gradient(s, t, batch, quiz, cfg), torch.rand(3)
    (l2, g2), rng2 = out["second-order"]
    (lf, gf), rngf = out["factorised"]
    assert torch.equal(rng2, rngf)  # and both leave the RNG where it was
    assert lf.item() == pytest.approx(l2.item(), rel=1e-13)
    assert max(float(g.abs().max()) for g in g2) > 1e-3  # not vacuous
    for a, b in zip(g2, gf):
        assert torch.allclose(a, b, rtol=0, atol=1e-10)
    if dropout:  # other masks give another gradient: the masks really are shared
        cfg = meta.MetaConfig(kd_loss=kd_loss, alpha=0.3, temperature=1.5, pilot_lr=0.5, pilot_params=pilot_params,
                              teacher_anchor="none")
        torch.manual_seed(4)
        _, other = meta.meta_gradient(s, t, batch, quiz, cfg)
        assert max(float((a - b).abs().max()) for a, b in zip(other, gf)) > 1e-6


def test_factorised_handles_any_extra_term(monkeypatch):
    # a term nonlinear in both the student's and the teacher's outputs (as a layer-wise one would be)
    real = meta.pilot_terms
    extra = meta.PilotTerm("extra", 0.7, teacher=lambda t_pot: {"em": t_pot.emissions},
                           loss=lambda u, t, batch: (u["emissions"] * t["em"]).tanh().sum() + (u["start"] ** 2).sum())
    monkeypatch.setattr(meta, "pilot_terms", lambda cfg: real(cfg) + [extra])
    t, s = _teacher_and_student()
    grads = {}
    for mode in meta.META_GRADS:
        cfg = meta.MetaConfig(kd_loss="struct", pilot_lr=0.5, meta_grad=mode, teacher_anchor="none")
        grads[mode] = meta.meta_gradient(s, t, _batch(1), _batch(2), cfg)[1]
    monkeypatch.setattr(meta, "pilot_terms", real)
    without = meta.meta_gradient(s, t, _batch(1), _batch(2), meta.MetaConfig(kd_loss="struct", pilot_lr=0.5,
                                                                             teacher_anchor="none"))[1]
    assert max(float((a - b).abs().max()) for a, b in zip(without, grads["factorised"])) > 1e-3  # the term counts
    for a, b in zip(grads["second-order"], grads["factorised"]):
        assert torch.allclose(a, b, rtol=0, atol=1e-10)


def test_factorised_keeps_the_pilot_forward_for_the_real_step():
    t, s = _teacher_and_student()
    cfg = meta.MetaConfig(teacher_anchor="none")
    opt = torch.optim.SGD([p for p in t.parameters() if p.requires_grad], lr=0.0)
    logs, pot = meta.teacher_step(s, t, opt, _batch(1), _batch(2), cfg, keep_forward=True)
    ref = s(_batch(1)["student"])
    assert torch.allclose(pot.emissions, ref.emissions, atol=1e-12) and pot.emissions.requires_grad
    # with a partial pilot the forward does not reach every parameter: not kept
    _, pot = meta.teacher_step(s, t, opt, _batch(1), _batch(2), meta.MetaConfig(pilot_params="top"),
                               keep_forward=True)
    assert pot is None


def test_meta_step_reads_only_the_used_embedding_rows():
    # the factorised meta step cuts the word-embedding matrix to the rows the two batches look up (the
    # equality tests above check the gradient against the dense second-order one); here: the cut is real,
    # the outputs are the same, and a kept pilot forward backpropagates into the full matrix as a fresh one
    t, s = _teacher_and_student()
    batch, quiz = _batch(1), _batch(2)
    params = dict(s.named_parameters())
    cut, b2, q2 = meta._used_rows(s, params, batch, quiz)
    name = "encoder.bert.embeddings.word_embeddings.weight"
    used = torch.unique(torch.cat([batch["student"]["input_ids"].flatten(), quiz["student"]["input_ids"].flatten()]))
    assert cut[name].shape[0] == len(used) < params[name].shape[0] and int(used[0]) == 0  # row 0: padding
    assert torch.equal(cut[name][b2["student"]["input_ids"]], params[name][batch["student"]["input_ids"]])
    for new, old in ((b2, batch), (q2, quiz)):
        a, b = meta.student_outputs(s, cut, new), meta.student_outputs(s, params, old)
        assert all(torch.equal(a[k], b[k]) for k in a)
    no_emb = {n: p for n, p in params.items() if n != name}  # a pilot without the embeddings: nothing cut
    assert meta._used_rows(s, no_emb, batch, quiz) == (no_emb, batch, quiz)
    opt = torch.optim.SGD([p for p in t.parameters() if p.requires_grad], lr=0.0)
    _, pot = meta.teacher_step(s, t, opt, batch, quiz, meta.MetaConfig(teacher_anchor="none"), keep_forward=True)
    pot.emissions.pow(2).sum().backward()
    kept = {n: p.grad for n, p in s.named_parameters()}
    s.zero_grad(set_to_none=True)
    s(batch["student"]).emissions.pow(2).sum().backward()
    assert kept[name].abs().max() > 0
    for n, p in s.named_parameters():  # (the pooler is in neither graph)
        assert (kept[n] is None) == (p.grad is None), n
        assert kept[n] is None or torch.allclose(kept[n], p.grad, rtol=0, atol=1e-12), n


def _brute_kl(p0, p1):
    """KL(P0 || P1) per sentence, averaged, by enumerating every tag sequence."""
    import itertools

    from training import crf

    total = 0.0
    for b in range(p0.emissions.shape[0]):
        n = int(p0.mask[b].sum())
        L = p0.emissions.shape[-1]
        paths = torch.tensor(list(itertools.product(range(L), repeat=n)))
        logp = []
        for p in (p0, p1):
            em = p.emissions[b:b + 1, :n].expand(len(paths), n, L)
            m = torch.ones(len(paths), n, dtype=torch.bool)
            logp.append(crf.sequence_score(em, paths, m, p.transitions, p.start, p.end)
                        - crf.log_partition(em[:1], m[:1], p.transitions, p.start, p.end))
        total += float((logp[0].exp() * (logp[0] - logp[1])).sum().detach())
    return total / p0.emissions.shape[0]


def test_kl_anchor_is_the_exact_kl_and_flat_at_the_original():
    t, _ = _teacher_and_student()
    original = copy.deepcopy(t).requires_grad_(False)
    batch = _batch(1)
    cfg = meta.MetaConfig(teacher_anchor="kl")
    kl = meta.anchor_loss(cfg, t, t(batch["teacher"]), batch, original)
    grads = torch.autograd.grad(kl, [p for p in t.parameters()], allow_unused=True, materialize_grads=True)
    assert abs(kl.item()) < 1e-12 and max(float(g.abs().max()) for g in grads) < 1e-10
    with torch.no_grad():
        t.crf.transitions.add_(0.5 * torch.randn_like(t.crf.transitions))
        t.encoder.classifier.weight.add_(0.3)
    kl = meta.anchor_loss(cfg, t, t(batch["teacher"]), batch, original)
    assert kl.item() > 1e-3
    assert kl.item() == pytest.approx(_brute_kl(original(batch["teacher"]), t(batch["teacher"])), rel=1e-9)
    with pytest.raises(ValueError, match="original"):
        meta.anchor_loss(cfg, t, t(batch["teacher"]), batch, None)


def _meta_teacher(t, cfg, **kw):
    kw = {"lr": 1e-2, "total_steps": 8, "warmup_ratio": 0.0} | kw
    return meta.MetaTeacher(t, cfg, **kw)


def _drift(t, ref):
    return sum(float((a - b).pow(2).sum()) for a, b in zip(t.parameters(), ref.parameters())) ** 0.5


def test_l2_anchor_holds_the_teacher_and_nll_anchor_is_the_task_loss():
    moved = {}
    for kind, w in (("none", 0.0), ("l2", 1e4)):
        t, s = _teacher_and_student()
        ref = copy.deepcopy(t)
        mt = _meta_teacher(t, meta.MetaConfig(pilot_lr=0.5, teacher_anchor=kind, teacher_anchor_weight=w))
        for i in range(8):
            mt.step(s, _batch(i), _batch(100 + i))
        moved[kind] = _drift(t, ref)
    assert moved["none"] > 0 and moved["l2"] < 0.3 * moved["none"], moved
    t, _ = _teacher_and_student()
    batch = _batch(1)
    pot = t(batch["teacher"])
    nll = meta.anchor_loss(meta.MetaConfig(teacher_anchor="nll"), t, pot, batch)
    assert nll.item() == pytest.approx(t.nll({**batch["teacher"], "labels": batch["labels"]}).item())
    assert meta.anchor_loss(meta.MetaConfig(teacher_anchor="none"), t, pot, batch) is None


def test_teacher_params_schedule_and_meta_every():
    t, s = _teacher_and_student()
    emb = "encoder.bert.embeddings.word_embeddings.weight"
    names = {w: meta.teacher_parameter_names(t, w) for w in meta.TEACHER_PARAMS}
    assert names["head"] < names["top"] < names["all"] and not any(".embeddings." in n for n in names["all"])
    assert names["all"] == {n for n, _ in t.named_parameters()} - {n for n, _ in t.named_parameters() if ".embeddings." in n}
    mt = _meta_teacher(t, meta.MetaConfig(pilot_lr=0.5), total_steps=7, meta_every=3, params="top")
    assert {n for n, p in t.named_parameters() if p.requires_grad} == names["top"]
    lrs, changed = [], []
    for i in range(7):  # the caller's loop: a meta step before student steps 0, 3, 6
        before = copy.deepcopy(t.state_dict())
        if mt.due(i):
            logs, _ = mt.step(s, _batch(i), _batch(50 + i))
            lrs.append(logs["teacher_lr"])
        changed.append(any(not torch.equal(v, before[k]) for k, v in t.state_dict().items()))
        assert torch.equal(t.state_dict()[emb], before[emb])
    assert changed == [True, False, False, True, False, False, True]
    assert lrs == pytest.approx([1e-2, 2e-2 / 3, 1e-2 / 3]) and mt.optimizer.param_groups[0]["lr"] == 0.0  # decay to 0
    assert mt.guard.state["meta_steps"] == 3
    warm = _meta_teacher(_teacher_and_student()[0], meta.MetaConfig(), total_steps=20, meta_every=2, warmup_ratio=0.2)
    for _ in range(3):  # 10 teacher steps, 2 of warm-up
        lrs.append(warm.optimizer.param_groups[0]["lr"])
        warm.scheduler.step()
    assert lrs[3:] == pytest.approx([0.0, 0.5e-2, 1e-2])


def test_non_finite_meta_gradient_skips_the_teacher_step(monkeypatch):
    t, s = _teacher_and_student()
    mt = _meta_teacher(t, meta.MetaConfig(pilot_lr=0.5))
    before = copy.deepcopy(t.state_dict())
    real = meta.anchor_loss
    monkeypatch.setattr(meta, "anchor_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    logs, _ = mt.step(s, _batch(1), _batch(2))
    assert logs["teacher_skipped"] == 1.0 and mt.guard.state["skipped_steps"] == 1
    assert all(torch.equal(v, before[k]) for k, v in t.state_dict().items())
    monkeypatch.setattr(meta, "anchor_loss", real)
    logs, _ = mt.step(s, _batch(1), _batch(2))
    assert logs["teacher_skipped"] == 0.0 and mt.guard.state["skipped_steps"] == 1
    assert any(not torch.equal(v, before[k]) for k, v in t.state_dict().items())


def _skip_worker(rank: int, port: int, out: str) -> None:
    """One of two gloo processes: rank 0's first meta-gradient is NaN, rank 1's is finite."""
    import datetime
    import types

    import torch.distributed as dist

    from training import trainer

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    trainer._DIST.accelerator = types.SimpleNamespace(num_processes=2, is_main_process=rank == 0)
    trainer._DIST.device, trainer._DIST.share = torch.device("cpu"), 0.5
    t, s = _teacher_and_student()
    cfg = meta.MetaConfig(pilot_lr=0.5, teacher_grad_clip=0.0)  # clipped after the reduction (sync_optimizer)
    opt = torch.optim.Adam([p for p in t.parameters() if p.requires_grad], lr=1e-2)
    trainer.sync_optimizer(opt, 1.0)
    real = meta.anchor_loss
    if rank == 0:
        meta.anchor_loss = lambda *a, **k: real(*a, **k) * float("nan")
    first = meta.teacher_step(s, t, opt, _batch(1), _batch(2), cfg)["teacher_skipped"]
    meta.anchor_loss = real
    second = meta.teacher_step(s, t, opt, _batch(1), _batch(2), cfg)["teacher_skipped"]
    flat = torch.cat([p.detach().reshape(-1) for p in t.parameters()])
    dist.destroy_process_group()
    torch.save({"first": first, "second": second, "teacher": flat}, out)


def test_a_non_finite_meta_gradient_on_one_process_skips_the_step_on_all(tmp_path):
    """Two processes: when one process's meta-gradient is not finite, both skip the teacher step (the
    step's gradient reduction is a collective: a lone skip would leave the other process waiting or
    pair the wrong reductions) and their teachers stay equal."""
    import torch.multiprocessing as mp

    from benchmarks.common import free_port

    outs = [str(tmp_path / f"rank{r}.pt") for r in range(2)]
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_skip_worker, args=(r, port, outs[r])) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, "a process hung in the teacher step"
    assert [p.exitcode for p in procs] == [0, 0]
    r0, r1 = (torch.load(o) for o in outs)
    assert (r0["first"], r1["first"]) == (1.0, 1.0) and (r0["second"], r1["second"]) == (0.0, 0.0)
    assert torch.equal(r0["teacher"], r1["teacher"])
    assert not torch.equal(r0["teacher"], torch.cat([p.detach().reshape(-1) for p in _teacher_and_student()[0].parameters()]))


@pytest.mark.parametrize("on_drop", meta.ON_DROP)
def test_guard_restores_the_best_teacher_on_a_drop(on_drop):
    t, s = _teacher_and_student()
    scores = iter([0.90, 0.91, 0.885, 0.80])  # epoch 0 (original), 1 (best), 2 (-1.5: kept), 3 (-10: restore)
    mt = _meta_teacher(t, meta.MetaConfig(pilot_lr=0.5), evaluate=lambda: next(scores), on_drop=on_drop)
    mt.guard.epoch_end(0)
    states = {}
    for epoch in (1, 2, 3):
        mt.step(s, _batch(epoch), _batch(10 + epoch))
        states[epoch] = copy.deepcopy(t.state_dict())
        logs = mt.guard.epoch_end(epoch)
        assert logs["teacher_restored"] == (epoch == 3)
    g = mt.guard.state
    assert g["original_f1"] == 0.90 and g["best_f1"] == 0.91 and g["best_epoch"] == 1 and g["restores"] == 1
    restored = t.state_dict()
    assert all(torch.equal(restored[k], v) for k, v in states[1].items())  # back to epoch 1's teacher
    assert not all(torch.equal(restored[k], v) for k, v in states[3].items())
    assert not mt.optimizer.state  # fresh Adam moments
    if on_drop == "halve":
        assert g["lr_factor"] == 0.5 and not g["stopped"] and mt.due(1)
        assert mt.scheduler.base_lrs == [0.5e-2] * len(mt.scheduler.base_lrs)
    else:
        assert g["stopped"] and not mt.due(0) and g["lr_factor"] == 1.0
    summary = mt.guard.summary(student_best_epoch=3)
    assert summary["dev_f1_before"] == 0.90 and summary["dev_f1_after"] == 0.91 and summary["dev_f1_final"] == 0.91
    assert [h["measured_f1"] for h in summary["history"]] == [0.90, 0.91, 0.885, 0.80]
    other = _meta_teacher(_teacher_and_student()[0], meta.MetaConfig())
    other.guard.load_state_dict(json.loads(json.dumps(mt.guard.state_dict())))  # JSON round trip (trainer_state.json)
    assert other.guard.state == g


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
        # the guard: teacher dev F1 at epoch 0 (the original) and every epoch, recorded before / after;
        # 86 sentences / 8 = 11 steps per epoch, 22 in all: a meta step before every other one (--meta-every 2)
        assert [r["epoch"] for r in log if "teacher_dev_f1" in r] == [0, 1, 2]
        own = json.loads((toy_teacher / "metrics.json").read_text())
        for rec in (json.loads((out / "metrics.json").read_text())["msd_teacher"], info["msd_teacher"],
                    result["msd_teacher"]):
            assert rec["dev_f1_before"] == pytest.approx(own["dev"]["f1"])
            assert rec["dev_f1_after"] == rec["history"][info["epoch"]]["f1"]
            assert rec["meta_steps"] == 11 and rec["skipped_steps"] == 0 and rec["restores"] >= 0
        # the MSD-teacher report: drift > 0 and the original teacher scored as its own run says
        from benchmarks import msd_teacher

        assert msd_teacher.main(["--runs", str(out), "--out", str(tmp_path / "mt"), "--threads", "2"]) == 0
        row = json.loads((tmp_path / "mt.json").read_text())["results"][0]
        assert row["relative_change"] > 0 and row["max_abs_change"] > 0
        assert row["original_f1"]["dev"] == pytest.approx(own["dev"]["f1"])
        assert row["meta_updated_f1"]["dev"] == info["msd_teacher"]["dev_f1_after"] and row["dev_f1_source"] == "recorded"
        assert row["restores"] == info["msd_teacher"]["restores"]
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
    for part in ("last/model.safetensors", "last/teacher/model.safetensors", "last/crf.safetensors",
                 "last/teacher/crf.safetensors", "last/teacher_best/model.safetensors", "last/optimizer-teacher.safetensors"):
        a, b = load_file(str(straight / part)), load_file(str(resumed / part))
        for k in a:
            assert torch.equal(a[k], b[k]), (part, k)
    a, b = (json.loads((r / "last" / "trainer_state.json").read_text())["schedulers"] for r in (straight, resumed))
    assert a["teacher"] == b["teacher"] and a["teacher_guard"] == b["teacher_guard"]  # schedule, best F1, counters
    assert a["teacher_guard"]["meta_steps"] > 0 and len(a["teacher_guard"]["history"]) == 3
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


def test_meta_every_and_quiz_batch_size_in_a_run(toy_teacher, tmp_path, monkeypatch):
    seen = []
    real = meta.MetaTeacher.step

    def spy(self, student, batch, quiz):
        seen.append(len(quiz["labels"]))
        return real(self, student, batch, quiz)

    monkeypatch.setattr(meta.MetaTeacher, "step", spy)
    out = tmp_path / "every3"
    result = _distill(toy_teacher, out, "msd", 1, "--limit_train", "40", "--meta_every", "3", "--quiz_batch_size", "2",
                      "--pilot_params", "head", "--teacher_params", "head", "--teacher_anchor", "l2")
    # 36 training sentences / 8 = 5 student steps: meta steps before steps 0 and 3
    assert seen == [2, 2] and result["msd_teacher"]["meta_steps"] == 2
    saved, original = (load_file(str(d / "model.safetensors")) for d in (out / "teacher", toy_teacher / "best"))
    changed = {k for k in original if not torch.equal(saved[k], original[k])}
    assert changed and all(k.startswith("classifier.") for k in changed), changed  # head only (+ the CRF)


@pytest.mark.parametrize("flag,value", [
    ("--teacher_anchor", "huge"), ("--meta_grad", "third-order"), ("--teacher_params", "embeddings"),
    ("--teacher_on_drop", "panic"), ("--pilot_params", "some"), ("--teacher_anchor_weight", "-1"),
    ("--teacher_lr", "-1e-5"), ("--pilot_lr", "-0.1"), ("--meta_every", "0"), ("--meta-every", "-2"),
    ("--teacher_max_drop", "-1"), ("--quiz_batch_size", "0"), ("--kd_loss", "topk")])
def test_bad_msd_flags_exit_2_before_any_work(tmp_path, capsys, flag, value):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        distill.main(["--teacher", str(tmp_path / "no-teacher"), "--out", str(out), f"{flag}={value}"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and flag.lstrip("-").replace("_", "-").split("-")[-1] in err
    assert not out.exists()
    with pytest.raises(ValueError):  # the library raises
        meta.MetaTeacher(_tiny_bertcrf(1, 0), meta.MetaConfig(), lr=1e-6, total_steps=1, warmup_ratio=0.0,
                         meta_every=0)


def test_distill_cost_measures_the_msd_variants(toy_teacher):
    from benchmarks import distill_cost

    methods = ["pos", "msd", "msd-second-order"]
    timing = distill_cost.interleaved(methods, str(toy_teacher), 2, 8, 1, 0, "all")
    assert set(timing) == set(methods) and all(timing[m]["mean_step_s"] > 0 and timing[m]["steps"] == 2 for m in methods)
    peak = distill_cost.worker("msd", str(toy_teacher), 2, 8, 1, 0, "all")
    assert peak["peak_rss_mb"] >= peak["baseline_rss_mb"] > 0


def test_resuming_an_msd_run_from_before_the_guard_says_so(toy_teacher, tmp_path, capsys):
    out = tmp_path / "old"
    (out / "last").mkdir(parents=True)
    (out / "last" / "trainer_state.json").write_text("{}")
    with pytest.raises(SystemExit) as e:
        _distill(toy_teacher, out, "msd", 1, "--resume")
    assert e.value.code == 2 and "older MSD" in capsys.readouterr().err
    assert sorted(p.name for p in out.rglob("*")) == ["last", "trainer_state.json"]  # untouched
