"""Brute-force checks of training.crf against enumeration of all L**n tag paths."""
import itertools

import pytest
import torch

from training.crf import CRF, kbest, log_partition, marginals, nll, sequence_score, viterbi

DT = torch.float64
CASES = [(seed, L, N) for seed in range(3) for L in (1, 2, 3, 4) for N in (1, 2, 3, 5)]


def make_case(seed, L, N, B=4, dtype=DT, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s: (torch.randn(*s, generator=g, dtype=dtype) * scale)  # noqa: E731
    lengths = torch.randint(1, N + 1, (B,), generator=g)
    lengths[0], lengths[-1] = 1, N  # always include the extremes
    mask = torch.arange(N)[None, :] < lengths[:, None]
    tags = torch.randint(0, L, (B, N), generator=g)
    return rand(B, N, L), mask, tags, rand(L, L), rand(L), rand(L)


def enumerate_paths(E, mask, T, S, En, b):
    """All (paths (P, n), scores (P,)) of sequence b, by brute force."""
    n, L = int(mask[b].sum()), E.shape[2]
    P = torch.tensor(list(itertools.product(range(L), repeat=n)), dtype=torch.long).view(-1, n)
    s = S[P[:, 0]] + E[b, torch.arange(n), P].sum(1) + En[P[:, -1]]
    if n > 1:
        s = s + T[P[:, :-1], P[:, 1:]].sum(1)
    return P, s


@pytest.fixture(params=CASES, ids=lambda c: "seed%d-L%d-N%d" % c)
def case(request):
    return make_case(*request.param)


def test_sequence_score(case):
    E, mask, tags, T, S, En = case
    got = sequence_score(E, tags, mask, T, S, En)
    for b in range(E.shape[0]):
        n = int(mask[b].sum())
        y = tags[b, :n].tolist()
        ref = S[y[0]] + En[y[-1]] + sum(E[b, i, y[i]] for i in range(n))
        ref = ref + sum(T[y[i - 1], y[i]] for i in range(1, n))
        torch.testing.assert_close(got[b], ref)


def test_log_partition_and_nll(case):
    E, mask, tags, T, S, En = case
    log_z = log_partition(E, mask, T, S, En)
    for b in range(E.shape[0]):
        _, s = enumerate_paths(E, mask, T, S, En, b)
        torch.testing.assert_close(log_z[b], torch.logsumexp(s, 0))
    torch.testing.assert_close(nll(E, tags, mask, T, S, En), log_z - sequence_score(E, tags, mask, T, S, En))


def brute_marginals(E, mask, T, S, En):
    B, N, L = E.shape
    node, edge = torch.zeros(B, N, L, dtype=E.dtype), torch.zeros(B, max(N - 1, 0), L, L, dtype=E.dtype)
    for b in range(B):
        P, s = enumerate_paths(E, mask, T, S, En, b)
        p = torch.softmax(s, 0)
        for i in range(P.shape[1]):
            node[b, i].index_add_(0, P[:, i], p)
            if i > 0:
                edge[b, i - 1].view(-1).index_add_(0, P[:, i - 1] * L + P[:, i], p)
    return node, edge


def test_marginals(case):
    E, mask, _, T, S, En = case
    node, edge = marginals(E, mask, T, S, En)
    ref_node, ref_edge = brute_marginals(E, mask, T, S, En)
    assert node.shape == E.shape and edge.shape == ref_edge.shape
    torch.testing.assert_close(node, ref_node)
    torch.testing.assert_close(edge, ref_edge)
    # consistency: normalisation and edge -> node marginalisation
    torch.testing.assert_close(node.sum(2), mask.to(DT))
    if E.shape[1] > 1:
        valid = mask[:, 1:, None].to(DT)
        torch.testing.assert_close(edge.sum(3), node[:, :-1] * valid)
        torch.testing.assert_close(edge.sum(2), node[:, 1:])
    assert not node.requires_grad and not edge.requires_grad


def test_viterbi(case):
    E, mask, _, T, S, En = case
    scores, paths = viterbi(E, mask, T, S, En)
    assert paths.dtype == torch.long and paths.shape == mask.shape
    assert (paths[~mask] == 0).all()
    for b in range(E.shape[0]):
        P, s = enumerate_paths(E, mask, T, S, En, b)
        j = int(s.argmax())
        torch.testing.assert_close(scores[b], s[j])
        assert paths[b, : P.shape[1]].tolist() == P[j].tolist()
    torch.testing.assert_close(scores, sequence_score(E, paths, mask, T, S, En))


@pytest.mark.parametrize("k", [1, 3, 40])
def test_kbest(case, k):
    E, mask, _, T, S, En = case
    scores, paths = kbest(E, mask, T, S, En, k)
    B, N, _ = E.shape
    assert scores.shape == (B, k) and paths.shape == (B, k, N) and paths.dtype == torch.long
    for b in range(B):
        P, s = enumerate_paths(E, mask, T, S, En, b)
        order = s.argsort(descending=True)[:k]
        m = len(order)  # number of existing paths, capped at k
        torch.testing.assert_close(scores[b, :m], s[order])
        assert [tuple(p) for p in paths[b, :m, : P.shape[1]].tolist()] == [tuple(p) for p in P[order].tolist()]
        assert len({tuple(p) for p in paths[b, :m].tolist()}) == m  # distinct
        assert torch.isneginf(scores[b, m:]).all() and (paths[b, m:] == 0).all()
        assert (paths[b, :, P.shape[1]:] == 0).all()
        rescored = sequence_score(E[b].expand(m, -1, -1), paths[b, :m], mask[b].expand(m, -1), T, S, En)
        torch.testing.assert_close(rescored, scores[b, :m])


def test_viterbi_equals_kbest_top1():
    E, mask, _, T, S, En = make_case(7, 5, 9, B=6)
    v_scores, v_paths = viterbi(E, mask, T, S, En)
    k_scores, k_paths = kbest(E, mask, T, S, En, 4)
    torch.testing.assert_close(v_scores, k_scores[:, 0])
    assert torch.equal(v_paths, k_paths[:, 0])
    assert (k_scores[:, :-1] >= k_scores[:, 1:]).all()


def test_gradcheck_log_partition():
    E, mask, _, T, S, En = make_case(0, 3, 4, B=3)
    inputs = [x.clone().requires_grad_() for x in (E, T, S, En)]
    assert torch.autograd.gradcheck(lambda e, t, s, en: log_partition(e, mask, t, s, en), inputs)
    # gradient of log Z w.r.t. emissions is the node marginal
    e = E.clone().requires_grad_()
    (g,) = torch.autograd.grad(log_partition(e, mask, T, S, En).sum(), e)
    torch.testing.assert_close(g, brute_marginals(E, mask, T, S, En)[0])


def test_marginals_create_graph_differentiable():
    E, mask, _, T, S, En = make_case(1, 3, 4, B=2)
    g = torch.Generator().manual_seed(5)
    w_node = torch.randn(E.shape, generator=g, dtype=DT)
    w_edge = torch.randn(E.shape[0], E.shape[1] - 1, 3, 3, generator=g, dtype=DT)

    def f(e, t, s, en):
        node, edge = marginals(e, mask, t, s, en, create_graph=True)
        return (node * w_node).sum() + (edge * w_edge).sum()

    inputs = [x.clone().requires_grad_() for x in (E, T, S, En)]
    assert torch.autograd.gradcheck(f, inputs)
    # also when emissions itself does not require grad (second-order through potentials only)
    t = T.clone().requires_grad_()
    node, _ = marginals(E, mask, t, S, En, create_graph=True)
    (gt,) = torch.autograd.grad((node * w_node).sum(), t)
    assert torch.isfinite(gt).all() and gt.abs().sum() > 0


def test_marginals_under_no_grad():
    E, mask, _, T, S, En = make_case(2, 3, 5)
    ref_node, ref_edge = brute_marginals(E, mask, T, S, En)
    model = CRF(3).double()
    with torch.no_grad():
        model.transitions.copy_(T), model.start.copy_(S), model.end.copy_(En)
        for e in (E, E.clone().requires_grad_()):
            node, edge = marginals(e, mask, T, S, En)
            torch.testing.assert_close(node, ref_node)
            torch.testing.assert_close(edge, ref_edge)
        node, edge = model.marginals(E, mask)  # parameters require grad
        torch.testing.assert_close(node, ref_node)
        torch.testing.assert_close(edge, ref_edge)
    assert model.transitions.grad is None


BAD_MASKS = {
    "all_false_row": [[True, True, False], [False, False, False]],
    "starts_with_false": [[True, True, True], [False, True, True]],
    "not_contiguous": [[True, False, True], [True, True, False]],
}


@pytest.mark.parametrize("bad", list(BAD_MASKS))
@pytest.mark.parametrize("fn", ["score", "log_partition", "nll", "marginals", "viterbi", "kbest"])
def test_bad_mask_raises(bad, fn):
    E, _, tags, T, S, En = make_case(0, 2, 3, B=2)
    mask = torch.tensor(BAD_MASKS[bad])
    calls = {
        "score": lambda: sequence_score(E, tags, mask, T, S, En),
        "log_partition": lambda: log_partition(E, mask, T, S, En),
        "nll": lambda: nll(E, tags, mask, T, S, En),
        "marginals": lambda: marginals(E, mask, T, S, En),
        "viterbi": lambda: viterbi(E, mask, T, S, En),
        "kbest": lambda: kbest(E, mask, T, S, En, 2),
    }
    with pytest.raises(ValueError, match="mask"):
        calls[fn]()


def test_crf_module_matches_functions_and_float32():
    torch.manual_seed(0)
    model = CRF(4)
    assert all(p.abs().max() <= 0.1 for p in model.parameters())
    assert {n for n, _ in model.named_parameters()} == {"transitions", "start", "end"}
    E, mask, tags, *_ = make_case(3, 4, 6, B=5, dtype=torch.float32)
    pots = model.potentials()
    torch.testing.assert_close(model.score(E, tags, mask), sequence_score(E, tags, mask, *pots))
    torch.testing.assert_close(model.log_partition(E, mask), log_partition(E, mask, *pots))
    loss = model.nll(E, tags, mask)
    assert loss.dtype == torch.float32 and (loss > 0).all()
    loss.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    node, edge = model.marginals(E, mask)
    assert node.dtype == torch.float32 and edge.shape == (5, 5, 4, 4)
    assert torch.equal(model.viterbi(E, mask)[1], viterbi(E, mask, *pots)[1])
    assert torch.equal(model.kbest(E, mask, 3)[1], kbest(E, mask, *pots, 3)[1])
    # float32 agrees with float64
    model64 = CRF(4).double()
    model64.load_state_dict(model.state_dict())
    torch.testing.assert_close(model.log_partition(E, mask).double(), model64.log_partition(E.double(), mask),
                               rtol=1e-5, atol=1e-5)

