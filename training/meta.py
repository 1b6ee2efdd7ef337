"""Meta-Structured Distillation (MSD): the teacher learns to teach (MetaDistil-style).

For every ``--meta-every``-th training batch x (with a quiz batch q from held-out data):

1. pilot update:  S' = S - lambda * grad_S L(S; T, x), a plain SGD step of the pilot parameters
   (``--pilot-params``), computed with ``torch.func.functional_call``, no copy of the model;
2. quiz loss:     L_q = NLL(S'; q), S' evaluated without dropout;
3. teacher step:  T <- T - mu * (grad_T L_q(S'(T)) + grad_T anchor(T)), with the teacher's own Adam,
   learning-rate schedule (warm-up, linear decay to 0) and gradient clipping;
4. real step:     the ordinary KD step of S with the updated teacher (done by the caller).

L = alpha * NLL + sum_k w_k f_k(u(S), t_k(T)) is a list of :class:`PilotTerm`: ``u`` the student's
outputs (CRF potentials), ``t_k`` what the term needs from the teacher (for ``pos``/``struct`` the
teacher's node and edge marginals), ``w_k`` its weight ((1 - alpha) for the KD term).

The meta-gradient (``--meta-grad``):

- ``second-order``: backpropagate L_q through S'(T), i.e. through ``grad_S L`` built with
  ``create_graph`` (third-order graphs through the student; needs the math attention kernel);
- ``factorised`` (default, exact, cheaper): with v = grad L_q(S') held fixed,
  dL_q/dT = <v, dS'/dT> = -lambda * d/dT <grad_S L(S, T), v>
          = -lambda * sum_k w_k * d/dT < d f_k/du (u, t_k(T)), du >,   du = J_S[u] v,
  a Jacobian-vector product through the student (forward mode, ``torch.func.jvp``, with the
  pilot forward's dropout masks). So the meta-gradient needs one backward of the quiz NLL at S',
  one JVP through the student and a first-order backward through the teacher; d f_k/du is taken
  by autograd on the (small) student outputs only. For the KD terms f_k is linear in t_k (the
  teacher's marginals), e.g. for ``pos`` the surrogate is (1 - alpha)/B * sum(q_t * G) with
  G = J_S[-log q_s] v.

Adding a teacher-dependent term (e.g. a layer-wise hidden-state MSE f(h_s, h_t)): append a
:class:`PilotTerm` in :func:`pilot_terms` whose ``teacher`` maps the teacher's forward output to the
tensors t it needs (differentiable in T) and whose ``loss(u, t, batch)`` reads the student outputs
``u`` (a dict of tensors, :func:`student_outputs`; add the student quantity it needs there, e.g. hidden
states). Both meta-gradient modes use the term as is; the factorised mode applies
d^2 f/(du dt) to du automatically, and the equality test in ``tests/test_distill.py`` covers it.

A teacher that cannot wander off: an anchor to its own task (``--teacher-anchor``: its NLL on the
training batch, KL(P_T0 || P_T) to the original teacher's CRF, or L2 to its original weights), a
learning-rate schedule, a choice of teacher parameters (embeddings always frozen) and
:class:`TeacherGuard` (non-finite meta-gradients skip the step; dev F1 checked every epoch, restore +
halve the lr or stop on a drop). ``topk`` KD is discrete in the teacher and is refused.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch.func import functional_call, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from training import losses
from training.config import ConfigError, check_choice, check_min
from training.model import Potentials

PILOT_PARAMS = ("all", "top", "head")
TEACHER_PARAMS = ("all", "top", "head")
META_GRADS = ("factorised", "second-order")
ANCHORS = ("none", "nll", "kl", "l2")
ON_DROP = ("halve", "stop")


def _part_names(model, which: str, names: set[str]) -> set[str]:
    if which == "all":
        return names
    keep = model.head_parameter_names()
    if which == "top":
        top = f".encoder.layer.{model.num_layers - 1}."
        keep |= {n for n in names if top in n}
    return names & keep


def pilot_parameter_names(student, which: str) -> set[str]:
    """``all``: every student parameter (MetaDistil); ``head``: classifier + CRF only; ``top``: the
    top encoder layer + classifier + CRF. The cheaper choices differentiate through fewer layers (the
    pilot step leaves the other parameters where they are), which bounds the cost of the meta step."""
    return _part_names(student, which, {n for n, p in student.named_parameters() if p.requires_grad})


def teacher_parameter_names(teacher, which: str) -> set[str]:
    """The teacher parameters that the meta step updates: as :func:`pilot_parameter_names`, but the
    embeddings are never among them (``all`` = everything but the embeddings)."""
    return _part_names(teacher, which, {n for n, _ in teacher.named_parameters() if ".embeddings." not in n})


@dataclass
class MetaConfig:
    kd_loss: str = "pos"
    alpha: float = 0.5
    temperature: float = 1.0
    pilot_lr: float = 5e-5  # lambda: the pilot SGD step of the student
    teacher_grad_clip: float = 1.0
    pilot_params: str = "all"  # which student parameters the pilot step moves: all | top | head
    meta_grad: str = "factorised"  # factorised | second-order
    teacher_anchor: str = "nll"  # none | nll | kl | l2
    teacher_anchor_weight: float = 0.05

    def __post_init__(self):
        check_choice("pilot_params", self.pilot_params, PILOT_PARAMS)
        check_choice("meta_grad", self.meta_grad, META_GRADS)
        check_choice("teacher_anchor", self.teacher_anchor, ANCHORS)
        check_min("teacher_anchor_weight", self.teacher_anchor_weight, 0.0)
        check_min("pilot_lr", self.pilot_lr, 0.0)
        if self.kd_loss not in losses.DIFFERENTIABLE:
            raise ConfigError(f"MSD needs a KD loss that is differentiable in the teacher "
                              f"({', '.join(losses.DIFFERENTIABLE)}), got {self.kd_loss!r}")


# ---------------------------------------------------------------- the pilot loss as a list of terms
@dataclass
class PilotTerm:
    """``weight * loss(u, teacher(t_out), batch)``: one teacher-dependent term of the pilot loss.
    ``teacher``: the teacher's forward output (:class:`Potentials`) -> dict of tensors t, differentiable
    in the teacher; ``loss``: (student outputs u (dict, :func:`student_outputs`), t, batch) -> scalar."""

    name: str
    weight: float
    teacher: Callable[[Potentials], dict]
    loss: Callable[[dict, dict, dict], torch.Tensor]


def student_outputs(student, params: dict, batch: dict) -> dict:
    """The student quantities u that the terms read: its CRF potentials (mask excluded: it is data)."""
    p = functional_call(student, params, (batch["student"],))
    return {"emissions": p.emissions, "transitions": p.transitions, "start": p.start, "end": p.end}


def _pot(u: dict, batch: dict) -> Potentials:
    return Potentials(u["emissions"], batch["student"]["word_mask"], u["transitions"], u["start"], u["end"])


def pilot_terms(cfg: MetaConfig) -> list[PilotTerm]:
    kd = cfg.kd_loss
    return [PilotTerm(
        name=f"kd_{kd}", weight=1 - cfg.alpha,
        teacher=lambda t_pot: losses.teacher_targets(kd, t_pot, cfg.temperature, differentiable=True),
        loss=lambda u, t, batch: losses.kd_loss(kd, _pot(u, batch), t, cfg.temperature),
    )]


def pilot_loss(u: dict, targets: list[dict], batch: dict, cfg: MetaConfig, terms: list[PilotTerm]) -> torch.Tensor:
    """L = alpha * NLL + sum_k w_k f_k(u, t_k)."""
    loss = cfg.alpha * losses.nll(_pot(u, batch), batch["labels"])
    for term, t in zip(terms, targets):
        loss = loss + term.weight * term.loss(u, t, batch)
    return loss


class _PilotOnly:
    """Student parameters outside the pilot set stop requiring grad inside the block (no graph
    through what the pilot step does not move); restored afterwards."""

    def __init__(self, student, cfg: MetaConfig):
        self.chosen = pilot_parameter_names(student, cfg.pilot_params)
        self.frozen = [p for n, p in student.named_parameters() if p.requires_grad and n not in self.chosen]
        self.params = {n: p for n, p in student.named_parameters() if n in self.chosen}

    def __enter__(self):
        for p in self.frozen:
            p.requires_grad_(False)
        return self

    def __exit__(self, *exc):
        for p in self.frozen:
            p.requires_grad_(True)


def _quiz_nll(student, params: dict, quiz: dict) -> torch.Tensor:
    was_training = student.training
    student.eval()
    try:
        return losses.nll(functional_call(student, params, (quiz["student"],)), quiz["labels"])
    finally:
        student.train(was_training)


# ---------------------------------------------------------------- second order (the reference)
def quiz_loss_after_pilot(student, teacher, batch: dict, quiz: dict, cfg: MetaConfig) -> torch.Tensor:
    """L_q(S'(T)): the quiz NLL of the pilot-updated student, differentiable in the teacher (second
    order). ``batch`` and ``quiz`` hold ``student`` and ``teacher`` sub-batches (the teacher's
    tokenization) and word-level ``labels``. Dropout follows the student's train/eval mode for the
    pilot loss; the quiz forward always runs without dropout."""
    return _second_order(student, teacher(batch["teacher"]), batch, quiz, cfg)


def _second_order(student, t_pot, batch, quiz, cfg):
    terms = pilot_terms(cfg)
    # the fused CPU attention kernels have no double backward: use the math kernel here
    with sdpa_kernel([SDPBackend.MATH]), _PilotOnly(student, cfg) as pilot:
        params = pilot.params
        targets = [term.teacher(t_pot) for term in terms]
        loss = pilot_loss(student_outputs(student, params, batch), targets, batch, cfg, terms)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True, allow_unused=True)
        fast = {n: (p - cfg.pilot_lr * g) if g is not None else p for (n, p), g in zip(params.items(), grads)}
        return _quiz_nll(student, fast, quiz)


# ---------------------------------------------------------------- factorised (exact, first order in T)
def _rng_state(device: torch.device):
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng_state(state, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _used_rows(student, params: dict, batch: dict, quiz: dict):
    """The word-embedding matrix cut down to the rows that ``batch`` and ``quiz`` look up (and the rows up
    to the padding index, which keeps its place and its zero gradient), with both batches' ``input_ids``
    renumbered to match. Exact: the rest of the matrix is read by neither forward, has zero gradient in
    the pilot step and zero tangent in the JVP. It spares the meta step dense vocabulary-sized gradients,
    tangents and pilot weights (about a fifth of its time with a 30k vocabulary). The cut rows are a
    differentiable gather from the real matrix, so a kept pilot forward still backpropagates into it."""
    embeddings = student.encoder.get_input_embeddings()
    weight, pad = embeddings.weight, embeddings.padding_idx
    name = next((n for n, p in params.items() if p is weight), None)
    if name is None:  # not a pilot parameter
        return params, batch, quiz
    ids = [batch["student"]["input_ids"], quiz["student"]["input_ids"]]
    keep = [torch.arange((pad + 1) if pad is not None else 0, device=weight.device)]
    rows = torch.unique(torch.cat(keep + [i.flatten() for i in ids]))  # sorted: row pad stays at index pad
    renumber = lambda b, i: {**b, "student": {**b["student"], "input_ids": torch.searchsorted(rows, i)}}  # noqa: E731
    return {**params, name: weight[rows]}, renumber(batch, ids[0]), renumber(quiz, ids[1])


def _factorised(student, t_pot, batch, quiz, cfg, keep_forward: bool = False):
    """(L_q(S') detached, a surrogate whose gradient in T is dL_q(S'(T))/dT, the pilot forward's student
    potentials with their graph when ``keep_forward`` and every student parameter is a pilot parameter
    (the caller's real step can reuse that forward; else None))."""
    terms = pilot_terms(cfg)
    targets = [term.teacher(t_pot) for term in terms]  # differentiable in T
    with _PilotOnly(student, cfg) as pilot:
        params, batch, quiz = _used_rows(student, pilot.params, batch, quiz)
        device = next(iter(params.values())).device
        rng = _rng_state(device)  # the JVP below reuses the pilot forward's dropout masks
        # 1. pilot step at fixed T (first order); with dropout, the same attention kernel as the JVP's (the
        # fused ones draw their masks differently; on CPU they refuse dropout anyway)
        with sdpa_kernel([SDPBackend.MATH]) if student.training else contextlib.nullcontext():
            u = student_outputs(student, params, batch)
        fixed = [{k: v.detach() for k, v in t.items()} for t in targets]
        keep = keep_forward and not pilot.frozen
        grads = torch.autograd.grad(pilot_loss(u, fixed, batch, cfg, terms), list(params.values()), allow_unused=True,
                                    retain_graph=keep)
        fast = {n: (p - cfg.pilot_lr * g if g is not None else p).detach().requires_grad_()
                for (n, p), g in zip(params.items(), grads)}
        # 2. v = grad L_q(S')
        quiz_loss = _quiz_nll(student, fast, quiz)
        v = torch.autograd.grad(quiz_loss, list(fast.values()), allow_unused=True, materialize_grads=True)
        # 3. du = J_S[u] v (forward mode)
        after = _rng_state(device)
        _set_rng_state(rng, device)
        primals = {n: p.detach() for n, p in params.items()}
        with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):  # the fused kernels have no forward AD
            _, du = jvp(lambda p: student_outputs(student, p, batch), (primals,), (dict(zip(params, v)),))
        _set_rng_state(after, device)
    # 4. surrogate: -lambda * sum_k w_k <d f_k/du (u, t_k(T)), du>
    u0 = {k: x.detach().requires_grad_() for k, x in u.items()}
    surrogate = quiz_loss.new_zeros(())
    for term, t in zip(terms, targets):
        gu = torch.autograd.grad(term.loss(u0, t, batch), list(u0.values()), create_graph=True, allow_unused=True)
        inner = sum((g * du[k]).sum() for k, g in zip(u0, gu) if g is not None)
        surrogate = surrogate - cfg.pilot_lr * term.weight * inner
    return quiz_loss.detach(), surrogate, (_pot(u, batch) if keep else None)


# ---------------------------------------------------------------- the teacher's objective and step
def anchor_loss(cfg: MetaConfig, teacher, t_pot: Potentials, batch: dict, original=None) -> torch.Tensor | None:
    """The teacher's tie to its own task, added (times ``teacher_anchor_weight``) to its meta-objective:
    ``nll``: its CRF NLL on the training batch; ``kl``: KL(P_T0 || P_T) between the original teacher's
    CRF and the current one's on the batch (sequence level, exact: cross-entropy minus entropy; 0 with
    zero gradient at T = T0); ``l2``: squared distance of the trained parameters to the original's."""
    kind = cfg.teacher_anchor
    if kind == "none":
        return None
    if kind == "nll":
        return losses.nll(t_pot, batch["labels"])
    if original is None:
        raise ValueError(f"the {kind} anchor needs the original teacher")
    if kind == "kl":
        with torch.no_grad():
            o_pot = original(batch["teacher"])
            node, edge = losses.crf.marginals(*o_pot.args())
            entropy = losses.struct_loss(o_pot, node, edge)
        return losses.struct_loss(t_pot, node, edge) - entropy
    ref = dict(original.named_parameters())
    return sum(((p - ref[n]) ** 2).sum() for n, p in teacher.named_parameters() if p.requires_grad)


def meta_objective(student, teacher, batch: dict, quiz: dict, cfg: MetaConfig, original=None,
                   keep_forward: bool = False):
    """(quiz loss L_q(S'), objective whose gradient in the teacher is the meta-gradient plus the
    anchor's, anchor value or None, the student's potentials on ``batch`` or None: see
    :func:`_factorised`)."""
    t_pot = teacher(batch["teacher"])
    s_pot = None
    if cfg.meta_grad == "second-order":
        quiz_loss = _second_order(student, t_pot, batch, quiz, cfg)
        objective = quiz_loss
    else:
        quiz_loss, objective, s_pot = _factorised(student, t_pot, batch, quiz, cfg, keep_forward)
    anchor = anchor_loss(cfg, teacher, t_pot, batch, original)
    if anchor is not None:
        objective = objective + cfg.teacher_anchor_weight * anchor
    return quiz_loss.detach(), objective, anchor, s_pot


def meta_gradient(student, teacher, batch, quiz, cfg, original=None):
    """(quiz loss, gradients of the objective for every teacher parameter that requires grad)."""
    t_params = [p for p in teacher.parameters() if p.requires_grad]
    quiz_loss, objective, _, _ = meta_objective(student, teacher, batch, quiz, cfg, original)
    return quiz_loss, torch.autograd.grad(objective, t_params, allow_unused=True, materialize_grads=True)


def teacher_step(student, teacher, teacher_opt: torch.optim.Optimizer, batch: dict, quiz: dict,
                 cfg: MetaConfig, original=None, keep_forward: bool = False):
    """Steps 1-3: update the teacher by the meta-gradient of the quiz loss (+ the anchor). A non-finite
    gradient (on any process) skips the update (``teacher_skipped`` = 1) on every process. Returns logs,
    or (logs, the student's potentials on ``batch`` or None) with ``keep_forward``."""
    t_params = [p for p in teacher.parameters() if p.requires_grad]
    quiz_loss, objective, anchor, s_pot = meta_objective(student, teacher, batch, quiz, cfg, original, keep_forward)
    grads = torch.autograd.grad(objective, t_params, allow_unused=True, materialize_grads=True)
    teacher_opt.zero_grad(set_to_none=True)
    for p, g in zip(t_params, grads):
        p.grad = g
    norm = torch.nn.utils.clip_grad_norm_(t_params, cfg.teacher_grad_clip if cfg.teacher_grad_clip > 0 else float("inf"))
    from training import trainer

    # on several processes all skip or none does: the step's gradient reduction is a collective
    skipped = trainer.any_process(not math.isfinite(float(norm)))
    if not skipped:
        teacher_opt.step()
    teacher_opt.zero_grad(set_to_none=True)
    # student parameters received no .grad here: autograd.grad only returns values
    logs = {"quiz_loss": quiz_loss.item(), "teacher_grad_norm": float(norm), "teacher_skipped": float(skipped)}
    if anchor is not None:
        logs["teacher_anchor"] = anchor.item()
    return (logs, s_pot) if keep_forward else logs


# ---------------------------------------------------------------- the teacher's training state
class TeacherGuard:
    """Checks the meta-updated teacher's dev F1 at epoch 0 (the original) and at every epoch end; keeps
    its best state (``best``, a module of the same shape); when it falls more than ``max_drop`` F1
    points below the original, restores the best state and halves the teacher's learning rate
    (``on_drop='halve'``) or stops the meta-updates (``'stop'``). Its counters live in
    :meth:`state_dict` (JSON) so that the trainer saves them with the schedulers (exact ``--resume``)."""

    def __init__(self, teacher, best, optimizer, scheduler, evaluate: Callable[[], float],
                 max_drop: float = 2.0, on_drop: str = "halve"):
        self.teacher, self.best, self.optimizer, self.scheduler = teacher, best, optimizer, scheduler
        self.evaluate, self.max_drop, self.on_drop = evaluate, max_drop, on_drop
        self.state = {"original_f1": None, "best_f1": None, "best_epoch": 0, "lr_factor": 1.0, "stopped": False,
                      "restores": 0, "skipped_steps": 0, "meta_steps": 0, "history": []}

    def state_dict(self) -> dict:
        return copy.deepcopy(self.state)

    def load_state_dict(self, state: dict) -> None:
        self.state = copy.deepcopy(state)

    def count_step(self, logs: dict) -> None:
        self.state["meta_steps"] += 1
        self.state["skipped_steps"] += int(logs.get("teacher_skipped", 0))

    def _copy(self, src, dst) -> None:
        with torch.no_grad():
            for a, b in zip(dst.parameters(), src.parameters()):
                a.copy_(b)

    def epoch_end(self, epoch: int) -> dict:
        """Measure, keep the best, restore on a drop. Returns what to log for this epoch."""
        s = self.state
        f1 = float(self.evaluate())
        restored = False
        if epoch == 0 or s["original_f1"] is None:
            s["original_f1"] = s["best_f1"] = f1
            s["best_epoch"] = epoch
            self._copy(self.teacher, self.best)
        elif f1 > s["best_f1"]:
            s["best_f1"], s["best_epoch"] = f1, epoch
            self._copy(self.teacher, self.best)
        if epoch > 0 and f1 < s["original_f1"] - self.max_drop / 100 and not s["stopped"]:
            self._copy(self.best, self.teacher)
            self.optimizer.state.clear()  # Adam's moments belonged to the abandoned trajectory
            s["restores"] += 1
            restored = True
            if self.on_drop == "stop":
                s["stopped"] = True
            else:
                s["lr_factor"] *= 0.5
                self.scheduler.base_lrs = [b * 0.5 for b in self.scheduler.base_lrs]
                for g in self.optimizer.param_groups:
                    g["lr"] *= 0.5
        after = s["best_f1"] if restored else f1
        s["history"].append({"epoch": epoch, "measured_f1": f1, "f1": after, "restored": restored})
        print(f"teacher dev F1 {100 * f1:.2f} (original {100 * s['original_f1']:.2f}, best {100 * s['best_f1']:.2f})"
              + (f": restored the best teacher (epoch {s['best_epoch']}), "
                 + ("meta-updates stopped" if s["stopped"] else f"teacher lr x{s['lr_factor']:g}") if restored else ""))
        return {"teacher_dev_f1": f1, "teacher_restored": int(restored), "teacher_lr_factor": s["lr_factor"],
                "teacher_skipped_steps": s["skipped_steps"]}

    def summary(self, student_best_epoch: int | None = None) -> dict:
        """Teacher dev F1 before (original), after (the teacher saved beside the best student), final,
        best; restores, skipped steps, meta steps, lr factor, stopped, per-epoch history."""
        s = self.state
        hist = {h["epoch"]: h["f1"] for h in s["history"]}
        final = s["history"][-1]["f1"] if s["history"] else None
        return {"dev_f1_before": s["original_f1"], "dev_f1_after": hist.get(student_best_epoch, final),
                "dev_f1_final": final, "dev_f1_best": s["best_f1"], "best_epoch": s["best_epoch"],
                "restores": s["restores"], "skipped_steps": s["skipped_steps"], "meta_steps": s["meta_steps"],
                "lr_factor": s["lr_factor"], "stopped": s["stopped"], "history": s["history"]}


class MetaTeacher:
    """MSD's side of training: which teacher parameters train (``params``, embeddings always frozen),
    the teacher's Adam with warm-up + linear decay to 0 over its meta steps (one every ``meta_every``
    student steps), the frozen original (for the ``kl``/``l2`` anchors), the best state and the
    :class:`TeacherGuard`. ``optimizer``, ``scheduler`` and ``guard`` go into the trainer's
    optimizers / schedulers, ``best`` into its extras, so ``--resume`` restores all of them."""

    def __init__(self, teacher, cfg: MetaConfig, *, lr: float, total_steps: int, warmup_ratio: float,
                 params: str = "all", meta_every: int = 1, evaluate: Callable[[], float] = lambda: 0.0,
                 max_drop: float = 2.0, on_drop: str = "halve"):
        from training import trainer

        check_choice("teacher_params", params, TEACHER_PARAMS)
        check_choice("teacher_on_drop", on_drop, ON_DROP)
        check_min("meta_every", meta_every, 1)
        check_min("teacher_lr", lr, 0.0)
        self.teacher, self.cfg, self.meta_every = teacher, cfg, meta_every
        names = teacher_parameter_names(teacher, params)
        for n, p in teacher.named_parameters():
            p.requires_grad_(n in names)
        self.optimizer = trainer.adam([p for p in teacher.parameters() if p.requires_grad], lr=lr)
        self.scheduler = trainer.linear_warmup(self.optimizer, -(-total_steps // meta_every), warmup_ratio)
        frozen_copy = lambda: copy.deepcopy(teacher).requires_grad_(False).eval()  # noqa: E731
        self.original = frozen_copy() if cfg.teacher_anchor in ("kl", "l2") else None
        self.best = frozen_copy()
        self.guard = TeacherGuard(teacher, self.best, self.optimizer, self.scheduler, evaluate, max_drop, on_drop)

    def due(self, step_index: int) -> bool:
        """A meta step before student step ``step_index`` (0-based)?"""
        return step_index % self.meta_every == 0 and not self.guard.state["stopped"]

    def step(self, student, batch: dict, quiz: dict):
        """One meta step: (logs, the student's potentials on ``batch`` for the real step to reuse, or None)."""
        logs, s_pot = teacher_step(student, self.teacher, self.optimizer, batch, quiz, self.cfg, self.original,
                                   keep_forward=True)
        logs["teacher_lr"] = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.guard.count_step(logs)
        return logs, s_pot
