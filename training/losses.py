"""Knowledge-distillation losses between two linear-chain CRFs over the same words.

All losses are per sentence (summed over words) and averaged over the batch, on the same scale as
the CRF negative log-likelihood, and are mixed as ``alpha * NLL + (1 - alpha) * KD``.
The temperature T divides every potential of both models inside the KD term (T = 1: none).

- ``topk``   -1/k sum_j log P_s(y^j) over the teacher's k-best Viterbi paths y^1..y^k (fewer when a
             short sentence has fewer than k paths). Not differentiable in the teacher.
- ``pos``    sum_i CE(q_t(y_i), q_s(y_i)): student token marginals against teacher token marginals.
- ``struct`` -sum_u P_t(u|x) Score_s(u, x) + log Z_s(x) over the factors u of the chain (node
             potentials, edges (y_{i-1}, y_i), start and end) = cross-entropy H(P_t, P_s) over whole
             sequences = KL(P_t || P_s) + H(P_t) (Wang et al. 2021).

Teacher targets are computed separately (:func:`teacher_targets`) so that a frozen teacher is run
under ``no_grad`` once, while MSD asks for targets that stay differentiable in the teacher
(``differentiable=True``: marginals built with ``create_graph``).
"""

from __future__ import annotations

import torch

from training import crf
from training.model import Potentials

KD_METHODS = ("topk", "pos", "struct")
DIFFERENTIABLE = ("pos", "struct")  # usable inside MSD: the KD term depends smoothly on the teacher


def nll(s: Potentials, tags: torch.Tensor) -> torch.Tensor:
    """Mean CRF negative log-likelihood of ``tags`` (B, N) under the student."""
    return crf.nll(s.emissions, tags, s.mask, s.transitions, s.start, s.end).mean()


def teacher_targets(method: str, t: Potentials, temperature: float = 1.0, k: int = 5,
                    differentiable: bool = False) -> dict:
    """What the KD loss needs from the teacher: k-best paths, or node (and edge) marginals."""
    t = t.scaled(temperature)
    if method == "topk":
        if differentiable:
            raise ValueError("topk KD is not differentiable in the teacher (discrete k-best paths); "
                             "use --kd-loss pos or struct inside MSD")
        scores, paths = crf.kbest(*t.args(), k=k)
        return {"paths": paths, "valid": torch.isfinite(scores)}
    if method in ("pos", "struct"):
        if differentiable:
            node, edge = crf.marginals(*t.args(), create_graph=True)
        else:
            with torch.no_grad():
                node, edge = crf.marginals(*t.args())
            node, edge = node.detach(), edge.detach()
        return {"node": node, "edge": edge}
    raise ValueError(f"unknown KD method {method!r}; choose from {KD_METHODS}")


def kd_loss(method: str, s: Potentials, targets: dict, temperature: float = 1.0) -> torch.Tensor:
    """The KD term for the student potentials ``s`` given :func:`teacher_targets`."""
    s = s.scaled(temperature)
    if method == "topk":
        return topk_loss(s, targets["paths"], targets["valid"])
    if method == "pos":
        return posterior_loss(s, targets["node"])
    if method == "struct":
        return struct_loss(s, targets["node"], targets["edge"])
    raise ValueError(f"unknown KD method {method!r}; choose from {KD_METHODS}")


def topk_loss(s: Potentials, paths: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over sentences of -1/k' sum_j log P_s(path_j); paths (B, k, N), valid (B, k) bool."""
    B, K, N = paths.shape
    log_z = crf.log_partition(*s.args())  # (B,)
    rep = lambda x: x.unsqueeze(1).expand(B, K, *x.shape[1:]).reshape(B * K, *x.shape[1:])  # noqa: E731
    scores = crf.sequence_score(rep(s.emissions), paths.reshape(B * K, N), rep(s.mask),
                                s.transitions, s.start, s.end).view(B, K)
    nll_paths = (log_z.unsqueeze(1) - scores) * valid
    return (nll_paths.sum(1) / valid.sum(1).clamp_min(1)).mean()


def posterior_loss(s: Potentials, teacher_node: torch.Tensor) -> torch.Tensor:
    """Mean over sentences of sum_i sum_c -q_t(y_i=c) log q_s(y_i=c)."""
    q_s, _ = crf.marginals(*s.args(), create_graph=True)
    log_q = torch.log(q_s.clamp_min(1e-12))
    ce = -(teacher_node * log_q).sum(-1) * s.mask
    return ce.sum(1).mean()


def struct_loss(s: Potentials, teacher_node: torch.Tensor, teacher_edge: torch.Tensor) -> torch.Tensor:
    """Mean over sentences of -E_{P_t}[Score_s(y)] + log Z_s = H(P_t, P_s)."""
    mask = s.mask.to(s.emissions.dtype)
    lengths = s.mask.sum(1)
    expected = (teacher_node * s.emissions * mask.unsqueeze(-1)).sum((1, 2))
    expected = expected + (teacher_edge * s.transitions).sum((1, 2, 3))
    expected = expected + teacher_node[:, 0] @ s.start
    last = teacher_node[torch.arange(len(lengths)), lengths - 1]
    expected = expected + last @ s.end
    return (crf.log_partition(*s.args()) - expected).mean()


def distill_loss(method: str, s: Potentials, tags: torch.Tensor, targets: dict | None,
                 alpha: float = 0.5, temperature: float = 1.0) -> tuple[torch.Tensor, dict]:
    """``alpha * NLL + (1 - alpha) * KD`` (``method='none'``: NLL only). Returns (loss, parts)."""
    task = nll(s, tags)
    if method == "none":
        return task, {"nll": task.detach()}
    kd = kd_loss(method, s, targets, temperature)
    return alpha * task + (1 - alpha) * kd, {"nll": task.detach(), "kd": kd.detach()}
