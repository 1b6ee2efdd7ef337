"""Batched, log-space linear-chain CRF over words.

Shapes and conventions (``B`` batch, ``N`` padded length, ``L`` number of tags):

* ``emissions`` -- float tensor ``(B, N, L)``; ``emissions[b, i, c]`` is the
  score of tag ``c`` at position ``i`` of sequence ``b``.
* ``mask`` -- bool tensor ``(B, N)``. Each row must be a contiguous,
  left-aligned prefix of ``True`` of length ``>= 1`` (``mask[:, 0]`` all
  ``True``); otherwise :class:`ValueError` is raised. Positions where the mask
  is ``False`` are padding and never contribute to any score.
* ``tags`` -- long tensor ``(B, N)``; values at padded positions are ignored
  but must lie in ``[0, L)``.
* ``transitions`` -- ``(L, L)``; ``transitions[a, b]`` is the score of moving
  from tag ``a`` (position ``i - 1``) to tag ``b`` (position ``i``). This is the
  same ``[from, to]`` convention as ``torchcrf.CRF.transitions``.
* ``start``, ``end`` -- ``(L,)`` scores of the first / last tag.

For a sequence of length ``n`` the score of a tag path ``y`` is::

    score(y) = start[y_0] + sum_{i<n} E[i, y_i] + sum_{1<=i<n} T[y_{i-1}, y_i] + end[y_{n-1}]

and ``P(y) = exp(score(y) - log Z)``. All functions are pure (they take the
potentials explicitly) so they can be used with ``torch.func.functional_call``
or with temperature-scaled potentials (``emissions / t`` etc.). Any device works;
half-precision potentials (e.g. bf16 logits under mixed precision) are cast to
float32 at the entry of every function and the dynamic programs run in float32
with autocast off (float64 stays float64); the DP loops over positions only and is vectorised over
batch and labels. Following pytorch-struct, the forward algorithm is written
once (:func:`_forward`) and marginals are obtained as gradients of ``log Z``.
"""
import functools
from typing import Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = ["sequence_score", "log_partition", "nll", "marginals", "viterbi", "kbest", "CRF"]


def _float32(fn):
    """Run ``fn`` with half-precision tensor arguments cast to float32 and autocast off: log-sum-exp
    chains over a sentence lose too much in bf16/fp16. float32/float64 arguments pass unchanged."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        def cast(x):
            return x.float() if torch.is_tensor(x) and x.dtype in (torch.float16, torch.bfloat16) else x

        device = next((x.device.type for x in args if torch.is_tensor(x)), "cpu")
        with torch.autocast(device, enabled=False):
            return fn(*map(cast, args), **{k: cast(v) for k, v in kwargs.items()})
    return wrapper


def _check(emissions: Tensor, mask: Tensor) -> Tensor:
    """Validate shapes and the mask convention; return the mask as bool."""
    if emissions.dim() != 3:
        raise ValueError(f"emissions must have shape (B, N, L), got {tuple(emissions.shape)}")
    if tuple(mask.shape) != tuple(emissions.shape[:2]):
        raise ValueError(
            f"mask shape {tuple(mask.shape)} does not match emissions (B, N) = {tuple(emissions.shape[:2])}")
    if emissions.shape[1] == 0:
        raise ValueError("sequences must have length >= 1 (got N = 0)")
    mask = mask.bool()
    if not bool(mask[:, 0].all()):
        raise ValueError("mask[:, 0] must be all True: every sequence needs length >= 1 "
                         "(found an empty row or a row whose mask starts with False)")
    if bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        raise ValueError("each mask row must be a contiguous left-aligned prefix of True")
    return mask


def _forward(emissions: Tensor, mask: Tensor, edges: Sequence[Tensor], start: Tensor, end: Tensor) -> Tensor:
    """Forward algorithm (log-sum-exp semiring) -> log Z of shape (B,).

    ``edges[i - 1]`` holds the transition potentials into position ``i``
    (``i = 1..N-1``), each broadcastable to ``(B, L, L)`` indexed ``[b, prev, next]``.
    Padded positions carry ``alpha`` through unchanged.
    """
    emits = emissions.unbind(1)  # unbind once: cheap backward (no per-step full-size grads)
    alpha = start + emits[0]  # (B, L)
    for i in range(1, len(emits)):
        nxt = torch.logsumexp(alpha.unsqueeze(2) + edges[i - 1], dim=1) + emits[i]
        alpha = torch.where(mask[:, i, None], nxt, alpha)
    return torch.logsumexp(alpha + end, dim=1)


@_float32
def sequence_score(emissions: Tensor, tags: Tensor, mask: Tensor,
                   transitions: Tensor, start: Tensor, end: Tensor) -> Tensor:
    """Unnormalised score of ``tags`` under the CRF, shape ``(B,)``."""
    mask = _check(emissions, mask)
    if tags.shape != mask.shape:
        raise ValueError(f"tags shape {tuple(tags.shape)} does not match mask shape {tuple(mask.shape)}")
    zero = emissions.new_zeros(())
    emit = emissions.gather(2, tags.unsqueeze(2)).squeeze(2)  # (B, N)
    trans = transitions[tags[:, :-1], tags[:, 1:]]  # (B, N-1)
    last = tags.gather(1, (mask.sum(1) - 1).unsqueeze(1)).squeeze(1)
    return (start[tags[:, 0]] + torch.where(mask, emit, zero).sum(1)
            + torch.where(mask[:, 1:], trans, zero).sum(1) + end[last])


@_float32
def log_partition(emissions: Tensor, mask: Tensor, transitions: Tensor, start: Tensor, end: Tensor) -> Tensor:
    """Log partition function ``log Z``, shape ``(B,)``."""
    mask = _check(emissions, mask)
    return _forward(emissions, mask, [transitions] * (emissions.shape[1] - 1), start, end)


@_float32
def nll(emissions: Tensor, tags: Tensor, mask: Tensor,
        transitions: Tensor, start: Tensor, end: Tensor) -> Tensor:
    """Negative log-likelihood ``log Z - score(tags)``, shape ``(B,)`` (no reduction)."""
    return (log_partition(emissions, mask, transitions, start, end)
            - sequence_score(emissions, tags, mask, transitions, start, end))


@_float32
def marginals(emissions: Tensor, mask: Tensor, transitions: Tensor, start: Tensor, end: Tensor,
              create_graph: bool = False) -> Tuple[Tensor, Tensor]:
    """Posterior node and edge marginals, computed as gradients of ``log Z``.

    Returns:
        node: ``(B, N, L)``, ``node[b, i, c] = P(y_i = c)``; zero at padded positions.
        edge: ``(B, N-1, L, L)``, ``edge[b, i-1, a, c] = P(y_{i-1} = a, y_i = c)``;
            zero where position ``i`` is padded.

    Works inside ``torch.no_grad()``. With ``create_graph=True`` the marginals are
    themselves differentiable w.r.t. ``emissions``, ``transitions``, ``start`` and
    ``end`` (whichever require grad), e.g. for second-order meta-learning.
    """
    mask = _check(emissions, mask)
    B, N, L = emissions.shape
    with torch.enable_grad():
        emis = emissions if emissions.requires_grad else emissions.detach().requires_grad_()
        trans = transitions if transitions.requires_grad else transitions.detach().requires_grad_()
        edge = trans.expand(B, N - 1, L, L)  # per-position edge potentials, in the graph
        log_z = _forward(emis, mask, edge.unbind(1), start, end)
        node, edge_marg = torch.autograd.grad(log_z.sum(), (emis, edge), create_graph=create_graph,
                                              allow_unused=True, materialize_grads=True)
    return node, edge_marg


def _kbest_dp(emissions: Tensor, mask: Tensor, transitions: Tensor, start: Tensor, end: Tensor,
              k: int) -> Tuple[Tensor, Tensor]:
    """Max-semiring k-best DP -> (scores (B, k), paths (B, k, N)); paths not yet cleaned.

    State ``score[b, c, r]``: score of the r-th best prefix ending in tag c.
    Backpointers are flat indices ``prev_tag * k + prev_rank``; padded positions use
    the identity backpointer so that backtracking passes through them unchanged.
    """
    B, N, L = emissions.shape
    score = emissions.new_full((B, L, k), float("-inf"))
    score[:, :, 0] = start + emissions[:, 0]
    identity = torch.arange(L * k, device=emissions.device).view(1, L, k)
    trans_t = transitions.t().unsqueeze(0).unsqueeze(-1)  # (1, next, prev, 1)
    history = []
    for i in range(1, N):
        cand = (score.unsqueeze(1) + trans_t).reshape(B, L, L * k)  # [b, next, prev * k + rank]
        best, bp = cand.topk(k, dim=2)
        step = mask[:, i, None, None]
        score = torch.where(step, best + emissions[:, i, :, None], score)
        history.append(torch.where(step, bp, identity))
    final, cur = (score + end[:, None]).reshape(B, L * k).topk(k, dim=1)  # cur: flat (tag, rank)
    paths = emissions.new_zeros((B, k, N), dtype=torch.long)
    for i in range(N - 1, 0, -1):
        paths[:, :, i] = torch.div(cur, k, rounding_mode="floor")
        cur = history[i - 1].reshape(B, L * k).gather(1, cur)
    paths[:, :, 0] = torch.div(cur, k, rounding_mode="floor")
    return final, paths * mask[:, None, :]


@_float32
@torch.no_grad()
def viterbi(emissions: Tensor, mask: Tensor, transitions: Tensor, start: Tensor,
            end: Tensor) -> Tuple[Tensor, Tensor]:
    """Best path: ``scores`` ``(B,)`` and ``paths`` ``(B, N)`` long (0 beyond each length)."""
    mask = _check(emissions, mask)
    scores, paths = _kbest_dp(emissions, mask, transitions, start, end, 1)
    return scores[:, 0], paths[:, 0]


@_float32
@torch.no_grad()
def kbest(emissions: Tensor, mask: Tensor, transitions: Tensor, start: Tensor, end: Tensor,
          k: int) -> Tuple[Tensor, Tensor]:
    """The ``k`` highest-scoring distinct paths, best first.

    Returns ``scores`` ``(B, k)`` and ``paths`` ``(B, k, N)`` long (0 beyond each
    length). Where fewer than ``k`` paths exist (``L ** length < k``) -- or, with
    ``-inf`` potentials, fewer than ``k`` have finite score -- the extra rows have
    score ``-inf`` and an all-zero path. Ties are broken arbitrarily.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    mask = _check(emissions, mask)
    scores, paths = _kbest_dp(emissions, mask, transitions, start, end, k)
    return scores, paths.masked_fill(torch.isneginf(scores).unsqueeze(2), 0)


class CRF(nn.Module):
    """Linear-chain CRF holding ``transitions`` (L, L), ``start`` (L,), ``end`` (L,).

    Every method forwards to the module-level function of the same name with the
    module's own parameters; see the module docstring for shapes and conventions.

    Args:
        num_tags: number of tags ``L``.
    """

    def __init__(self, num_tags: int) -> None:
        super().__init__()
        if num_tags < 1:
            raise ValueError(f"num_tags must be >= 1, got {num_tags}")
        self.num_tags = num_tags
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags))
        self.start = nn.Parameter(torch.empty(num_tags))
        self.end = nn.Parameter(torch.empty(num_tags))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in (self.transitions, self.start, self.end):
            nn.init.uniform_(p, -0.1, 0.1)

    def extra_repr(self) -> str:
        return f"num_tags={self.num_tags}"

    def potentials(self) -> Tuple[Tensor, Tensor, Tensor]:
        """``(transitions, start, end)``."""
        return self.transitions, self.start, self.end

    def score(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        return sequence_score(emissions, tags, mask, *self.potentials())

    def log_partition(self, emissions: Tensor, mask: Tensor) -> Tensor:
        return log_partition(emissions, mask, *self.potentials())

    def nll(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        return nll(emissions, tags, mask, *self.potentials())

    def marginals(self, emissions: Tensor, mask: Tensor, create_graph: bool = False) -> Tuple[Tensor, Tensor]:
        return marginals(emissions, mask, *self.potentials(), create_graph=create_graph)

    def viterbi(self, emissions: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor]:
        return viterbi(emissions, mask, *self.potentials())

    def kbest(self, emissions: Tensor, mask: Tensor, k: int) -> Tuple[Tensor, Tensor]:
        return kbest(emissions, mask, *self.potentials(), k)
