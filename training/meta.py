"""Meta-Structured Distillation (MSD): the teacher learns to teach (MetaDistil-style).

For every training batch x (with a quiz batch q from held-out data):

1. pilot update:  S' = S - lambda * grad_S L(S; T, x), with ``create_graph`` so that S' is a
   differentiable function of the teacher T (through the teacher's marginals inside the KD term);
   computed with ``torch.func.functional_call`` on the student's parameters, no copy of the model;
2. quiz loss:     L_q = NLL(S'; q), S' evaluated without dropout;
3. teacher step:  T <- T - mu * grad_T L_q (second order), with the teacher's own optimizer and
   gradient clipping;
4. real step:     the ordinary KD step of S with the updated teacher (done by the caller).

L is ``alpha * NLL + (1 - alpha) * KD`` with any differentiable KD term (``pos`` by default as in
the paper, or ``struct``); ``topk`` is discrete in the teacher and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from training import losses


PILOT_PARAMS = ("all", "top", "head")


def pilot_parameter_names(student, which: str) -> set[str]:
    """``all``: every student parameter (MetaDistil); ``head``: classifier + CRF only; ``top``: the
    top encoder layer + classifier + CRF. The cheaper choices differentiate through fewer layers (the
    pilot step leaves the other parameters where they are), which bounds the cost of the meta step."""
    names = {n for n, p in student.named_parameters() if p.requires_grad}
    if which == "all":
        return names
    keep = student.head_parameter_names()
    if which == "top":
        top = f".encoder.layer.{student.num_layers - 1}."
        keep |= {n for n in names if top in n}
    return names & keep


@dataclass
class MetaConfig:
    kd_loss: str = "pos"
    alpha: float = 0.5
    temperature: float = 1.0
    pilot_lr: float = 5e-5  # lambda: the pilot SGD step of the student
    teacher_grad_clip: float = 1.0
    pilot_params: str = "all"  # which student parameters the pilot step moves: all | top | head

    def __post_init__(self):
        if self.pilot_params not in PILOT_PARAMS:
            raise ValueError(f"pilot_params must be one of {PILOT_PARAMS}, got {self.pilot_params!r}")
        if self.kd_loss not in losses.DIFFERENTIABLE:
            raise ValueError(f"MSD needs a KD loss that is differentiable in the teacher "
                             f"({', '.join(losses.DIFFERENTIABLE)}), got {self.kd_loss!r}")


def quiz_loss_after_pilot(student, teacher, batch: dict, quiz: dict, cfg: MetaConfig) -> torch.Tensor:
    """L_q(S'(T)): the quiz NLL of the pilot-updated student, differentiable in the teacher.

    ``batch`` and ``quiz`` hold ``student`` and ``teacher`` sub-batches (the teacher's tokenization)
    and word-level ``labels``. Dropout follows the modules' current train/eval mode for the pilot
    loss; the quiz forward always runs without dropout.
    """
    # the fused CPU attention kernels have no double backward: use the math kernel here
    with sdpa_kernel([SDPBackend.MATH]):
        return _quiz_loss_after_pilot(student, teacher, batch, quiz, cfg)


def _quiz_loss_after_pilot(student, teacher, batch, quiz, cfg):
    chosen = pilot_parameter_names(student, cfg.pilot_params)
    frozen = [p for n, p in student.named_parameters() if p.requires_grad and n not in chosen]
    for p in frozen:  # no graph through parameters the pilot step does not move
        p.requires_grad_(False)
    try:
        return _pilot(student, teacher, batch, quiz, cfg, chosen)
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _pilot(student, teacher, batch, quiz, cfg, chosen):
    params = {n: p for n, p in student.named_parameters() if n in chosen}
    t_pot = teacher(batch["teacher"])
    targets = losses.teacher_targets(cfg.kd_loss, t_pot, cfg.temperature, differentiable=True)
    s_pot = functional_call(student, params, (batch["student"],))
    loss, _ = losses.distill_loss(cfg.kd_loss, s_pot, batch["labels"], targets, cfg.alpha, cfg.temperature)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True, allow_unused=True)
    fast = {n: (p - cfg.pilot_lr * g) if g is not None else p for (n, p), g in zip(params.items(), grads)}
    was_training = student.training
    student.eval()
    try:
        q_pot = functional_call(student, fast, (quiz["student"],))
    finally:
        student.train(was_training)
    return losses.nll(q_pot, quiz["labels"])


def teacher_step(student, teacher, teacher_opt: torch.optim.Optimizer, batch: dict, quiz: dict,
                 cfg: MetaConfig) -> dict:
    """Steps 1-3: update the teacher by the meta-gradient of the quiz loss. Returns logs."""
    quiz_loss = quiz_loss_after_pilot(student, teacher, batch, quiz, cfg)
    t_params = [p for p in teacher.parameters() if p.requires_grad]
    grads = torch.autograd.grad(quiz_loss, t_params, allow_unused=True)
    teacher_opt.zero_grad(set_to_none=True)
    for p, g in zip(t_params, grads):
        p.grad = torch.zeros_like(p) if g is None else g
    norm = torch.nn.utils.clip_grad_norm_(t_params, cfg.teacher_grad_clip if cfg.teacher_grad_clip > 0 else float("inf"))
    teacher_opt.step()
    # student parameters received no .grad here: autograd.grad only returns values
    return {"quiz_loss": quiz_loss.item(), "teacher_grad_norm": float(norm)}
