"""Linear-chain CRF inference in NumPy: Viterbi, log Z and forward-backward marginals.

The serving path imports this module, so it must never import torch (only NumPy). The
conventions are those of :mod:`training.crf` (``B`` batch, ``N`` padded length, ``L`` tags):

* ``emissions`` ``(B, N, L)`` float; ``mask`` ``(B, N)`` bool, every row a contiguous,
  left-aligned prefix of ``True`` of length ``>= 1`` (else :class:`ValueError`).
* ``transitions`` ``(L, L)`` indexed ``[from, to]``; ``start``, ``end`` ``(L,)``.
* score of a path ``y`` of length ``n``::

      start[y_0] + sum_{i<n} E[i, y_i] + sum_{1<=i<n} T[y_{i-1}, y_i] + end[y_{n-1}]

Every function is vectorised over the batch and the labels; the only Python loop runs over
positions. Computation happens in the result dtype of the inputs (float32 emissions with
float32 CRF parameters stay float32; anything float64 promotes to float64).
"""

from __future__ import annotations

from typing import Mapping, Tuple

import numpy as np

__all__ = ["viterbi", "log_partition", "marginals", "decode_one", "logsumexp"]


def logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    """``log(sum(exp(x), axis))``, stable, ``-inf`` where every entry is ``-inf``."""
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, np.zeros_like(m))
    with np.errstate(divide="ignore", under="ignore"):
        out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return np.squeeze(out, axis=axis)


def _prepare(emissions, mask, transitions, start, end):
    """Validate shapes and the mask convention; return arrays in one float dtype."""
    e = np.asarray(emissions)
    t, s, en = np.asarray(transitions), np.asarray(start), np.asarray(end)
    if e.ndim != 3:
        raise ValueError(f"emissions must have shape (B, N, L), got {e.shape}")
    B, N, L = e.shape
    m = np.asarray(mask)
    if m.shape != (B, N):
        raise ValueError(f"mask shape {m.shape} does not match emissions (B, N) = {(B, N)}")
    if t.shape != (L, L) or s.shape != (L,) or en.shape != (L,):
        raise ValueError(f"CRF shapes transitions {t.shape}, start {s.shape}, end {en.shape} "
                         f"do not match L = {L} labels")
    if N == 0:
        raise ValueError("sequences must have length >= 1 (got N = 0)")
    m = m.astype(bool)
    if not m[:, 0].all():
        raise ValueError("mask[:, 0] must be all True: every sequence needs length >= 1 "
                         "(found an empty row or a row whose mask starts with False)")
    if (m[:, 1:] & ~m[:, :-1]).any():
        raise ValueError("each mask row must be a contiguous left-aligned prefix of True")
    dtype = np.result_type(e.dtype, t.dtype, s.dtype, en.dtype, np.float32)
    return e.astype(dtype, copy=False), m, t.astype(dtype, copy=False), s.astype(dtype, copy=False), \
        en.astype(dtype, copy=False)


def viterbi(emissions, mask, transitions, start, end) -> Tuple[np.ndarray, np.ndarray]:
    """Best path per sequence: ``scores`` ``(B,)`` and ``paths`` ``(B, N)`` int64 (0 beyond each length)."""
    e, m, t, s, en = _prepare(emissions, mask, transitions, start, end)
    B, N, L = e.shape
    score = s + e[:, 0]  # (B, L)
    identity = np.broadcast_to(np.arange(L, dtype=np.int64), (B, L))
    history = []
    for i in range(1, N):
        cand = score[:, :, None] + t  # (B, prev, next)
        bp = np.argmax(cand, axis=1)  # (B, next)
        best = np.take_along_axis(cand, bp[:, None, :], axis=1)[:, 0]
        step = m[:, i, None]
        score = np.where(step, best + e[:, i], score)
        history.append(np.where(step, bp, identity))  # padded steps: identity backpointer
    final = score + en
    cur = np.argmax(final, axis=1)  # (B,)
    scores = final[np.arange(B), cur]
    paths = np.zeros((B, N), dtype=np.int64)
    rows = np.arange(B)
    for i in range(N - 1, 0, -1):
        paths[:, i] = cur
        cur = history[i - 1][rows, cur]
    paths[:, 0] = cur
    paths *= m
    return scores, paths


def _forward(e, m, t, s):
    """Alphas ``(B, N, L)``; padded positions carry the last valid alpha forward."""
    B, N, L = e.shape
    alphas = np.empty_like(e)
    alphas[:, 0] = s + e[:, 0]
    for i in range(1, N):
        prev = alphas[:, i - 1]
        nxt = logsumexp(prev[:, :, None] + t, axis=1) + e[:, i]
        alphas[:, i] = np.where(m[:, i, None], nxt, prev)
    return alphas


def log_partition(emissions, mask, transitions, start, end) -> np.ndarray:
    """``log Z`` per sequence, shape ``(B,)``."""
    e, m, t, s, en = _prepare(emissions, mask, transitions, start, end)
    alphas = _forward(e, m, t, s)
    return logsumexp(alphas[:, -1] + en, axis=1)


def marginals(emissions, mask, transitions, start, end) -> Tuple[np.ndarray, np.ndarray]:
    """Posterior marginals by forward-backward in log space.

    Returns ``node`` ``(B, N, L)`` with ``node[b, i, c] = P(y_i = c)`` (0 at padded positions)
    and ``edge`` ``(B, N-1, L, L)`` with ``edge[b, i-1, a, c] = P(y_{i-1} = a, y_i = c)``
    (0 where position ``i`` is padded) -- the same layout as :func:`training.crf.marginals`.
    """
    e, m, t, s, en = _prepare(emissions, mask, transitions, start, end)
    B, N, L = e.shape
    alphas = _forward(e, m, t, s)
    log_z = logsumexp(alphas[:, -1] + en, axis=1)  # (B,)
    # betas[b, i, a]: log-sum of scores of every continuation after tag a at position i
    # (incl. end); at the last valid position and beyond it is ``end``.
    betas = np.empty_like(e)
    betas[:, N - 1] = en
    for i in range(N - 2, -1, -1):
        nxt = logsumexp(t[None] + (e[:, i + 1] + betas[:, i + 1])[:, None, :], axis=2)
        betas[:, i] = np.where(m[:, i + 1, None], nxt, en)
    with np.errstate(under="ignore"):
        node = np.exp(alphas + betas - log_z[:, None, None]) * m[:, :, None]
        if N > 1:
            edge = np.exp(alphas[:, :-1, :, None] + t[None, None]
                          + (e[:, 1:] + betas[:, 1:])[:, :, None, :]
                          - log_z[:, None, None, None]) * m[:, 1:, None, None]
        else:
            edge = np.zeros((B, 0, L, L), dtype=e.dtype)
    return node, edge


def decode_one(emissions, crf) -> list[int]:
    """Viterbi tag ids for one sentence: ``emissions`` ``(n, L)``; ``crf`` a mapping (or object)
    with ``transitions``, ``start``, ``end`` (e.g. :func:`export.format.read_crf`). ``n == 0``
    gives ``[]``."""
    e = np.asarray(emissions)
    if e.ndim != 2:
        raise ValueError(f"emissions must have shape (n, L), got {e.shape}")
    if e.shape[0] == 0:
        return []
    get = crf.__getitem__ if isinstance(crf, Mapping) else (lambda k: getattr(crf, k))
    _, paths = viterbi(e[None], np.ones((1, e.shape[0]), dtype=bool),
                       get("transitions"), get("start"), get("end"))
    return paths[0].tolist()
