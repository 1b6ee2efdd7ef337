"""Layer-wise distillation: intermediate-layer KD terms added to ``alpha * NLL + (1 - alpha) * KD``.

    loss += hidden_weight * hidden + attn_weight * attn + emission_weight * emission

- ``hidden``    MSE (mean over the hidden dimension) between each student hidden state and the
                teacher hidden state it is matched with -- the embeddings output with the teacher's
                embeddings output, student layer i with the teacher layer it was initialised from
                (``distill.layer_map``) -- averaged over the matched pairs. When the widths differ
                (``--student-init`` of another size) a learned linear projection per pair maps the
                student's width to the teacher's (:class:`Projections`).
- ``attn``      KL(teacher || student) between the attention distributions of each head of the
                matched layers (pre-dropout, :func:`training.model.attention_probs`), averaged over
                heads and matched layers; needs equal head counts.
- ``emission``  MSE (mean over labels) of the CRF emission scores, word by word.

Every term is summed over real positions (sub-tokens where ``attention_mask`` is 1, query rows
and key columns for attention; words where ``word_mask`` is True for emissions) and averaged over
sentences, the scale of the CRF NLL (:mod:`training.losses`). The term functions are plain
functions of student and teacher outputs: differentiable in both, so a teacher that requires grad
(MSD's meta step) gets gradients through them too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from training.config import ConfigError
from training.model import Potentials


@dataclass
class LayerwiseArgs:
    hidden_weight: float = field(default=0.0, metadata={"help": "weight of the hidden-state MSE (embeddings + every student layer vs its teacher layer)"})
    attn_weight: float = field(default=0.0, metadata={"help": "weight of the attention KL (per head, matched layers; needs equal head counts)"})
    emission_weight: float = field(default=0.0, metadata={"help": "weight of the emission-score MSE"})

    def __post_init__(self):
        for name in ("hidden_weight", "attn_weight", "emission_weight"):
            v = getattr(self, name)
            if not v >= 0:  # also NaN
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {v}")

    @property
    def active(self) -> bool:
        return self.hidden_weight > 0 or self.attn_weight > 0 or self.emission_weight > 0

    def forward_flags(self) -> dict:
        """What :meth:`BertCrf.forward` must return for these terms (nothing extra when all are 0)."""
        return {"hidden_states": self.hidden_weight > 0, "attentions": self.attn_weight > 0}


# ------------------------------------------------------------------ the terms
def _per_sentence(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x (B, S) per position, mask (B, S): summed over real positions, mean over sentences."""
    return (x * mask.to(x.dtype)).sum(1).mean()


def hidden_loss(student_hidden, teacher_hidden, mask: torch.Tensor, projections: "Projections | None" = None):
    """student_hidden[j] (B, S, H_s) against teacher_hidden[j] (B, S, H_t), the matched pairs in
    order; mask (B, S), 1 at real sub-tokens. Mean over pairs of the per-sentence sum of per-token
    MSE. ``projections`` (needed when H_s != H_t) maps student states to the teacher's width."""
    if len(student_hidden) != len(teacher_hidden) or not student_hidden:
        raise ValueError(f"hidden_loss: {len(student_hidden)} student vs {len(teacher_hidden)} teacher states")
    total = 0.0
    for j, (s, t) in enumerate(zip(student_hidden, teacher_hidden)):
        if projections is not None:
            s = projections[j](s)
        if s.shape[-1] != t.shape[-1]:
            raise ValueError(f"hidden_loss: widths {s.shape[-1]} vs {t.shape[-1]} differ and no projection")
        total = total + _per_sentence((s - t).pow(2).mean(-1), mask)
    return total / len(student_hidden)


def attention_loss(student_attn, teacher_attn, mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) per head and query row; student_attn[j], teacher_attn[j] (B, heads, S, S)
    [query, key] probabilities of the matched layers; mask (B, S), 1 at real sub-tokens (padded
    query rows and key columns are excluded). Mean over heads and pairs of the per-sentence sum
    over query tokens."""
    if len(student_attn) != len(teacher_attn) or not student_attn:
        raise ValueError(f"attention_loss: {len(student_attn)} student vs {len(teacher_attn)} teacher layers")
    keys = mask.bool()[:, None, None, :]
    total = 0.0
    for s, t in zip(student_attn, teacher_attn):
        if s.shape != t.shape:
            raise ValueError(f"attention_loss: shapes {tuple(s.shape)} vs {tuple(t.shape)} (head counts must match)")
        tiny = torch.finfo(s.dtype).tiny
        t_ = torch.where(keys, t, 0.0)
        log_ratio = torch.where(keys, torch.log(t.clamp_min(tiny)) - torch.log(s.clamp_min(tiny)), 0.0)
        kl = (t_ * log_ratio).sum(-1).mean(1)  # (B, S): sum over keys, mean over heads
        total = total + _per_sentence(kl, mask)
    return total / len(student_attn)


def emission_loss(student_emissions: torch.Tensor, teacher_emissions: torch.Tensor, mask: torch.Tensor):
    """(B, N, L) each, mask (B, N) True at real words: per-sentence sum of the per-word MSE, mean over sentences."""
    return _per_sentence((student_emissions - teacher_emissions).pow(2).mean(-1), mask)


# ------------------------------------------------------------------ wiring
class Projections(nn.Module):
    """One linear map student width -> teacher width per matched hidden state (embeddings first).
    Trained with the student (at the head learning rate: like the head, they start random), saved
    as ``projections.safetensors`` in ``best/`` and ``last/``, never exported."""

    def __init__(self, student_width: int, teacher_width: int, pairs: int):
        super().__init__()
        self.maps = nn.ModuleList(nn.Linear(student_width, teacher_width) for _ in range(pairs))

    def __getitem__(self, j: int) -> nn.Linear:
        return self.maps[j]


@dataclass
class Matching:
    """Which teacher states the student is compared with. ``teacher_layers[i]``: the teacher layer
    matched with student layer i. ``word_level``: the two tokenizations differ, so hidden states
    are compared at each word's first sub-token (attention cannot be compared)."""

    teacher_layers: list[int]
    word_level: bool = False

    @property
    def hidden_pairs(self) -> list[tuple[int, int]]:
        """(student index, teacher index) into ``Potentials.hidden`` (0 = embeddings)."""
        return [(0, 0)] + [(i + 1, t + 1) for i, t in enumerate(self.teacher_layers)]


def setup(args: LayerwiseArgs, student, teacher, same_tokenizer: bool, layer_map):
    """Check that the terms asked for apply to this pair (ConfigError otherwise) and build the
    projections. ``layer_map(teacher_layers, student_layers)``: the teacher layers the student's
    come from (``distill.layer_map``: exact for a student shrunk from the teacher, evenly spaced
    for ``--student-init``). Returns (Matching, Projections or None)."""
    if student.num_layers > teacher.num_layers:
        raise ConfigError(f"layer-wise terms need a student no deeper than its teacher "
                          f"({student.num_layers} vs {teacher.num_layers} layers)")
    teacher_layers = layer_map(teacher.num_layers, student.num_layers)
    if args.attn_weight > 0:
        if not same_tokenizer:
            raise ConfigError("--attn-weight needs the student and the teacher to share a tokenizer "
                              "(attention is compared sub-token by sub-token); use --attn-weight 0")
        for i, t in enumerate(teacher_layers):
            hs, ht = student.self_attention(i).num_attention_heads, teacher.self_attention(t).num_attention_heads
            if hs != ht:
                raise ConfigError(f"--attn-weight needs equal attention head counts: student layer {i} has {hs} "
                                  f"heads, teacher layer {t} has {ht}; use --attn-weight 0")
    projections = None
    ws, wt = student.encoder.config.hidden_size, teacher.encoder.config.hidden_size
    if args.hidden_weight > 0 and ws != wt:
        projections = Projections(ws, wt, student.num_layers + 1)
    return Matching(list(teacher_layers), word_level=not same_tokenizer), projections


def _gather_words(h: torch.Tensor, word_index: torch.Tensor) -> torch.Tensor:
    return h.gather(1, word_index.unsqueeze(-1).expand(-1, -1, h.shape[-1]))


def loss(args: LayerwiseArgs, s: Potentials, t: Potentials, batch: dict, matching: Matching,
         projections: Projections | None = None) -> tuple[torch.Tensor, dict]:
    """The weighted sum of the active terms and each term's value (detached) for the logs.
    ``s`` / ``t``: student / teacher outputs with the fields :meth:`LayerwiseArgs.forward_flags`
    asks for; ``batch``: the paired batch of :func:`training.distill.paired_batches`."""
    total, parts = 0.0, {}
    if args.hidden_weight > 0:
        pairs = matching.hidden_pairs
        sh, th = [s.hidden[i] for i, _ in pairs], [t.hidden[j] for _, j in pairs]
        if matching.word_level:
            sh = [_gather_words(h, batch["student"]["word_index"]) for h in sh]
            th = [_gather_words(h, batch["teacher"]["word_index"]) for h in th]
            mask = batch["student"]["word_mask"]
        else:
            mask = batch["student"]["attention_mask"]
        parts["hidden"] = hidden_loss(sh, th, mask, projections)
        total = total + args.hidden_weight * parts["hidden"]
    if args.attn_weight > 0:
        ta = [t.attentions[j] for j in matching.teacher_layers]
        parts["attn"] = attention_loss(list(s.attentions), ta, batch["student"]["attention_mask"])
        total = total + args.attn_weight * parts["attn"]
    if args.emission_weight > 0:
        parts["emission"] = emission_loss(s.emissions, t.emissions, s.mask)
        total = total + args.emission_weight * parts["emission"]
    return total, {k: v.detach() for k, v in parts.items()}


def add_to_optimizer(opt: torch.optim.Optimizer, projections: Projections, lr: float, weight_decay: float) -> None:
    """The projections' weights (decayed) and biases (not) as two more parameter groups."""
    named = list(projections.named_parameters())
    opt.add_param_group({"params": [p for n, p in named if not n.endswith("bias")], "lr": lr,
                         "weight_decay": weight_decay})
    opt.add_param_group({"params": [p for n, p in named if n.endswith("bias")], "lr": lr, "weight_decay": 0.0})
