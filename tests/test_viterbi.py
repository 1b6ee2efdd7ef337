"""export.viterbi (NumPy) against training.crf (torch) and against brute-force enumeration."""
import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from export import viterbi as nv
from training import crf as tcrf

CASES = [(seed, L, N) for seed in range(4) for L in (1, 2, 3, 4) for N in (1, 2, 3, 5)]


def make_case(seed, L, N, B=5, scale=1.0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, N + 1, size=B)
    lengths[0], lengths[-1] = 1, N  # always include the extremes
    mask = np.arange(N)[None, :] < lengths[:, None]
    r = lambda *s: rng.standard_normal(s) * scale  # noqa: E731
    return r(B, N, L), mask, r(L, L), r(L), r(L)


def enumerate_paths(E, mask, T, S, En, b):
    n, L = int(mask[b].sum()), E.shape[2]
    P = np.array(list(itertools.product(range(L), repeat=n)), dtype=np.int64).reshape(-1, n)
    s = S[P[:, 0]] + E[b, np.arange(n), P].sum(1) + En[P[:, -1]]
    if n > 1:
        s = s + T[P[:, :-1], P[:, 1:]].sum(1)
    return P, s


def brute(E, mask, T, S, En):
    B, N, L = E.shape
    node, edge = np.zeros((B, N, L)), np.zeros((B, N - 1, L, L))
    best_paths, best_scores, log_z = np.zeros((B, N), dtype=np.int64), np.zeros(B), np.zeros(B)
    for b in range(B):
        P, s = enumerate_paths(E, mask, T, S, En, b)
        j = int(s.argmax())
        best_paths[b, : P.shape[1]] = P[j]
        best_scores[b] = s[j]
        m = s.max()
        log_z[b] = m + np.log(np.exp(s - m).sum())
        p = np.exp(s - log_z[b])
        for i in range(P.shape[1]):
            np.add.at(node[b, i], P[:, i], p)
            if i > 0:
                np.add.at(edge[b, i - 1].reshape(-1), P[:, i - 1] * L + P[:, i], p)
    return best_scores, best_paths, log_z, node, edge


def torch_ref(E, mask, T, S, En):
    args = [torch.from_numpy(E), torch.from_numpy(mask), torch.from_numpy(T), torch.from_numpy(S),
            torch.from_numpy(En)]
    scores, paths = tcrf.viterbi(*args)
    node, edge = tcrf.marginals(*args)
    return scores.numpy(), paths.numpy(), tcrf.log_partition(*args).numpy(), node.numpy(), edge.numpy()


@pytest.fixture(params=CASES, ids=lambda c: "seed%d-L%d-N%d" % c)
def case(request):
    return make_case(*request.param)


def test_against_brute_force_and_torch(case):
    E, mask, T, S, En = case
    scores, paths = nv.viterbi(E, mask, T, S, En)
    log_z = nv.log_partition(E, mask, T, S, En)
    node, edge = nv.marginals(E, mask, T, S, En)
    assert paths.dtype == np.int64 and paths.shape == mask.shape and (paths[~mask] == 0).all()
    assert scores.shape == log_z.shape == (E.shape[0],)
    assert node.shape == E.shape and edge.shape == (E.shape[0], E.shape[1] - 1, E.shape[2], E.shape[2])
    assert scores.dtype == log_z.dtype == node.dtype == edge.dtype == np.float64
    for ref in (brute(E, mask, T, S, En), torch_ref(E, mask, T, S, En)):
        r_scores, r_paths, r_log_z, r_node, r_edge = ref
        np.testing.assert_array_equal(paths, r_paths)
        np.testing.assert_allclose(scores, r_scores, rtol=0, atol=1e-9)
        np.testing.assert_allclose(log_z, r_log_z, rtol=0, atol=1e-6)
        np.testing.assert_allclose(node, r_node, rtol=0, atol=1e-6)
        np.testing.assert_allclose(edge, r_edge, rtol=0, atol=1e-6)
    # consistency: normalisation and edge -> node marginalisation
    np.testing.assert_allclose(node.sum(2), mask.astype(float), atol=1e-9)
    if E.shape[1] > 1:
        np.testing.assert_allclose(edge.sum(3), node[:, :-1] * mask[:, 1:, None], atol=1e-9)
        np.testing.assert_allclose(edge.sum(2), node[:, 1:], atol=1e-9)


def test_float32_and_large_batch_match_torch():
    """Realistic shapes in float32 (what ONNX Runtime returns): same paths as torch, close log Z."""
    rng = np.random.default_rng(7)
    B, N, L = 64, 40, 9
    lengths = rng.integers(1, N + 1, size=B)
    mask = np.arange(N)[None] < lengths[:, None]
    E = (rng.standard_normal((B, N, L)) * 3).astype(np.float32)
    T, S, En = (rng.standard_normal(s).astype(np.float32) for s in ((L, L), (L,), (L,)))
    scores, paths = nv.viterbi(E, mask, T, S, En)
    assert scores.dtype == np.float32
    r_scores, r_paths, r_log_z, r_node, r_edge = torch_ref(E, mask, T, S, En)
    np.testing.assert_array_equal(paths, r_paths)
    np.testing.assert_allclose(scores, r_scores, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(nv.log_partition(E, mask, T, S, En), r_log_z, rtol=1e-5, atol=1e-3)
    node, edge = nv.marginals(E, mask, T, S, En)
    np.testing.assert_allclose(node, r_node, atol=1e-4)
    np.testing.assert_allclose(edge, r_edge, atol=1e-4)
    # float32 emissions with float64 CRF parameters compute in float64
    s64, p64 = nv.viterbi(E, mask, T.astype(np.float64), S, En)
    assert s64.dtype == np.float64 and (p64 == paths).all()


def test_minus_inf_potentials():
    """Forbidden transitions (-inf) are never taken; log Z and marginals stay finite."""
    rng = np.random.default_rng(3)
    B, N, L = 6, 5, 3
    E = rng.standard_normal((B, N, L))
    mask = np.arange(N)[None] < np.array([1, 2, 3, 4, 5, 5])[:, None]
    T = rng.standard_normal((L, L))
    T[0, 1] = T[2, 2] = -np.inf
    S, En = rng.standard_normal(L), rng.standard_normal(L)
    S[1] = -np.inf
    _, paths = nv.viterbi(E, mask, T, S, En)
    _, r_paths, r_log_z, r_node, r_edge = brute(E, mask, T, S, En)
    np.testing.assert_array_equal(paths, r_paths)
    np.testing.assert_allclose(nv.log_partition(E, mask, T, S, En), r_log_z, atol=1e-9)
    node, edge = nv.marginals(E, mask, T, S, En)
    assert np.isfinite(node).all() and np.isfinite(edge).all()
    np.testing.assert_allclose(node, r_node, atol=1e-9)
    np.testing.assert_allclose(edge, r_edge, atol=1e-9)


def test_decode_one():
    E, mask, T, S, En = make_case(11, 4, 5, B=1)
    crf = {"transitions": T, "start": S, "end": En}
    assert nv.decode_one(E[0], crf) == brute(E, mask, T, S, En)[1][0].tolist()
    assert nv.decode_one(E[0, :1], crf) == [int(np.argmax(S + E[0, 0] + En))]
    assert nv.decode_one(np.zeros((0, 4)), crf) == []

    class Obj:
        transitions, start, end = T, S, En

    assert nv.decode_one(E[0], Obj) == nv.decode_one(E[0], crf)
    with pytest.raises(ValueError, match="shape"):
        nv.decode_one(E, crf)


BAD_MASKS = {
    "all_false_row": [[True, True, False], [False, False, False]],
    "starts_with_false": [[True, True, True], [False, True, True]],
    "not_contiguous": [[True, False, True], [True, True, False]],
}


@pytest.mark.parametrize("bad", list(BAD_MASKS))
@pytest.mark.parametrize("fn", [nv.viterbi, nv.log_partition, nv.marginals])
def test_bad_mask_raises(bad, fn):
    E, _, T, S, En = make_case(0, 2, 3, B=2)
    with pytest.raises(ValueError, match="mask"):
        fn(E, np.array(BAD_MASKS[bad]), T, S, En)


def test_bad_shapes_raise():
    E, mask, T, S, En = make_case(0, 3, 4)
    with pytest.raises(ValueError, match="emissions"):
        nv.viterbi(E[0], mask, T, S, En)
    with pytest.raises(ValueError, match="mask shape"):
        nv.viterbi(E, mask[:, :2], T, S, En)
    with pytest.raises(ValueError, match="CRF shapes"):
        nv.viterbi(E, mask, T[:2], S, En)
    with pytest.raises(ValueError, match="length"):
        nv.viterbi(E[:, :0], mask[:, :0], T, S, En)


def test_imports_without_torch():
    """The serving path imports export.viterbi and export.format: neither may pull in torch."""
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        "import export.viterbi, export.format\n"
        "import json; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'transformers', 'onnxruntime', 'scipy') and sys.modules[m] is not None)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert json.loads(out.stdout) == []
