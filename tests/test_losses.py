"""KD losses checked against brute-force enumeration of all tag sequences (float64)."""

import itertools

import pytest
import torch

from training import losses
from training.model import Potentials


def _pots(B, N, L, seed, lengths=None):
    g = torch.Generator().manual_seed(seed)
    em = torch.randn(B, N, L, generator=g, dtype=torch.float64)
    lengths = lengths or [N] + [int(torch.randint(1, N + 1, (1,), generator=g)) for _ in range(B - 1)]
    mask = torch.arange(N)[None, :] < torch.tensor(lengths)[:, None]
    return Potentials(em, mask, torch.randn(L, L, generator=g, dtype=torch.float64),
                      torch.randn(L, generator=g, dtype=torch.float64), torch.randn(L, generator=g, dtype=torch.float64))


def _enumerate(p: Potentials, b: int):
    """All paths of sentence b with their log-probabilities."""
    n, L = int(p.mask[b].sum()), p.emissions.shape[-1]
    paths = list(itertools.product(range(L), repeat=n))
    scores = []
    for y in paths:
        s = p.start[y[0]] + p.end[y[-1]] + sum(p.emissions[b, i, y[i]] for i in range(n))
        s = s + sum(p.transitions[y[i - 1], y[i]] for i in range(1, n))
        scores.append(s)
    scores = torch.stack(scores)
    return paths, scores - torch.logsumexp(scores, 0)


CASES = [(2, 3, 3, 0), (3, 4, 2, 1), (2, 1, 4, 2), (3, 3, 4, 3)]


@pytest.mark.parametrize("B,N,L,seed", CASES)
def test_struct_is_sequence_cross_entropy_kl_plus_entropy(B, N, L, seed):
    s, t = _pots(B, N, L, seed), _pots(B, N, L, seed + 100)
    s = Potentials(s.emissions, t.mask, s.transitions, s.start, s.end)
    got = losses.kd_loss("struct", s, losses.teacher_targets("struct", t))
    want = []
    for b in range(B):
        _, lp_s = _enumerate(s, b)
        _, lp_t = _enumerate(t, b)
        p_t = lp_t.exp()
        kl = (p_t * (lp_t - lp_s)).sum()
        entropy = -(p_t * lp_t).sum()
        want.append(kl + entropy)
    assert torch.allclose(got, torch.stack(want).mean(), atol=1e-10)


@pytest.mark.parametrize("B,N,L,seed", CASES)
def test_posterior_is_token_marginal_cross_entropy(B, N, L, seed):
    s, t = _pots(B, N, L, seed), _pots(B, N, L, seed + 100)
    s = Potentials(s.emissions, t.mask, s.transitions, s.start, s.end)
    got = losses.kd_loss("pos", s, losses.teacher_targets("pos", t))
    want = []
    for b in range(B):
        paths, lp_s = _enumerate(s, b)
        _, lp_t = _enumerate(t, b)
        n = int(t.mask[b].sum())
        q_s = torch.zeros(n, L, dtype=torch.float64)
        q_t = torch.zeros(n, L, dtype=torch.float64)
        for y, a, c in zip(paths, lp_s.exp(), lp_t.exp()):
            for i in range(n):
                q_s[i, y[i]] += a
                q_t[i, y[i]] += c
        want.append(-(q_t * q_s.log()).sum())
    assert torch.allclose(got, torch.stack(want).mean(), atol=1e-10)


@pytest.mark.parametrize("k", [1, 3, 100])
def test_topk_is_mean_nll_of_teacher_kbest(k):
    B, N, L = 3, 3, 3
    s, t = _pots(B, N, L, 7), _pots(B, N, L, 8)
    s = Potentials(s.emissions, t.mask, s.transitions, s.start, s.end)
    got = losses.kd_loss("topk", s, losses.teacher_targets("topk", t, k=k))
    want = []
    for b in range(B):
        paths, lp_s = _enumerate(s, b)
        _, lp_t = _enumerate(t, b)
        best = torch.argsort(lp_t, descending=True)[:k]  # fewer when fewer paths exist
        want.append(-lp_s[best].mean())
    assert torch.allclose(got, torch.stack(want).mean(), atol=1e-10)


@pytest.mark.parametrize("method", ["pos", "struct"])
def test_kd_gradient_vanishes_when_student_equals_teacher(method):
    t = _pots(3, 5, 4, 11)
    em = t.emissions.clone().requires_grad_(True)
    s = Potentials(em, t.mask, t.transitions, t.start, t.end)
    (g,) = torch.autograd.grad(losses.kd_loss(method, s, losses.teacher_targets(method, t)), em)
    assert g.abs().max() < 1e-10
    # ... and does not vanish for a different student (the test can fail)
    em2 = (t.emissions + 0.5 * torch.randn_like(t.emissions)).requires_grad_(True)
    s2 = Potentials(em2, t.mask, t.transitions, t.start, t.end)
    (g2,) = torch.autograd.grad(losses.kd_loss(method, s2, losses.teacher_targets(method, t)), em2)
    assert g2.abs().max() > 1e-3


def test_mixture_and_temperature():
    s, t = _pots(2, 4, 3, 21), _pots(2, 4, 3, 22)
    tags = torch.zeros(2, 4, dtype=torch.long)
    tgt = losses.teacher_targets("pos", t, temperature=2.0)
    loss, parts = losses.distill_loss("pos", s, tags, tgt, alpha=0.3, temperature=2.0)
    assert torch.allclose(loss, 0.3 * parts["nll"] + 0.7 * parts["kd"])
    assert torch.allclose(parts["kd"], losses.kd_loss("pos", s.scaled(2.0), losses.teacher_targets("pos", t.scaled(2.0))))
    none, p = losses.distill_loss("none", s, tags, None)
    assert torch.allclose(none, losses.nll(s, tags)) and "kd" not in p


def test_teacher_targets_differentiable_only_when_asked():
    t = _pots(2, 3, 3, 5)
    em = t.emissions.clone().requires_grad_(True)
    tp = Potentials(em, t.mask, t.transitions, t.start, t.end)
    assert not losses.teacher_targets("pos", tp)["node"].requires_grad
    assert losses.teacher_targets("pos", tp, differentiable=True)["node"].requires_grad
    with pytest.raises(ValueError, match="not differentiable"):
        losses.teacher_targets("topk", tp, differentiable=True)
