"""Rank percentiles of scores: the one descending sort and tie-aware ranks (paper Eq. 11's ``r_i``).

Scores are sorted descending and ``r_i = rank_i / N`` in [0, 1), 0 = top score. Every member of a
group of equal scores gets the mean of the group's ranks, so equal scores get equal percentiles
and equal selection chances (:mod:`alchemist_pl.pruning`). Everything after the sort is O(N), and
the sort of float32 scores is a packed-key value sort, so it scales to 10^8 scores.
"""

from __future__ import annotations

import numpy as np


def percentiles(scores: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """Rank percentile r_i in [0, 1) of every score, 0 = highest (float64, shape [N]).

    Equal scores share one percentile: the mean rank of their group over N (ranks 0..N-1).
    ``order``: the scores' :func:`descending_order` if already computed (saves the sort).
    """
    scores = np.asarray(scores)
    order = _given_or_sorted(scores, order)
    ranks = tie_ranks(scores, order)
    ranks /= len(scores)
    r = np.empty(len(scores), dtype=np.float64)
    r[order] = ranks
    return r


def tie_ranks(scores: np.ndarray, order: np.ndarray, lo: int = 0, hi: int | None = None, dtype=np.float64):
    """Rank of the samples at positions ``lo..hi-1`` of ``order``: the position, or for a group of
    equal scores the mean position of the whole group (also where it reaches past ``lo`` or ``hi``).

    O(hi - lo) after the sort: [hi - lo] of ``dtype``.
    """
    n = len(order)
    hi = n if hi is None else hi
    if hi <= lo:
        return np.zeros(0, dtype=dtype)
    a, b = _group_bounds(scores, order, lo)[0], _group_bounds(scores, order, hi - 1)[1]
    s = scores[order[a:b]]
    same = s[1:] == s[:-1]  # position i ties with i + 1 (-0.0 == 0.0)
    del s
    ranks = np.arange(a, b, dtype=dtype)
    if same.any():
        edge = np.diff(same.view(np.int8), prepend=np.int8(0), append=np.int8(0))
        first, last = np.flatnonzero(edge == 1), np.flatnonzero(edge == -1)  # a group spans first..last
        del edge
        tied = np.zeros(b - a, dtype=bool)
        tied[:-1] |= same
        tied[1:] |= same
        ranks[tied] = np.repeat((a + (first + last) / 2.0).astype(dtype), last - first + 1)
    return ranks[lo - a : hi - a]


def _group_bounds(scores: np.ndarray, order: np.ndarray, c: int) -> tuple[int, int]:
    """``[a, b)``: the positions of ``order`` whose score equals the one at position ``c``.

    Scans outward from ``c`` in doubling windows: O(group size).
    """
    n, s = len(order), scores[order[c]]
    a, w = c, 64
    while a > 0:
        lo = max(0, a - w)
        differs = np.flatnonzero(scores[order[lo:a]] != s)
        if len(differs):
            a = lo + int(differs[-1]) + 1
            break
        a, w = lo, 2 * w
    b, w = c + 1, 64
    while b < n:
        hi = min(n, b + w)
        differs = np.flatnonzero(scores[order[b:hi]] != s)
        if len(differs):
            b = b + int(differs[0])
            break
        b, w = hi, 2 * w
    return a, b


def shuffle_ties_at(scores: np.ndarray, order: np.ndarray, cuts, rng: np.random.Generator) -> np.ndarray:
    """``order`` with every group of equal scores that a cut splits (positions ``c - 1`` and ``c``
    tie) in a random order, so which of its members fall on each side is drawn, not taken from
    the file: [N] int64, a copy when any group is shuffled, else ``order`` itself. O(group size).
    """
    out = order
    for c in cuts:
        if not 0 < c < len(order) or scores[out[c - 1]] != scores[out[c]]:
            continue
        a, b = _group_bounds(scores, out, c)
        if out is order:
            out = order.copy()
        out[a:b] = rng.permutation(out[a:b])
    return out


def _given_or_sorted(scores: np.ndarray, order) -> np.ndarray:
    if order is None:
        return descending_order(scores)
    order = np.asarray(order)
    if order.shape != scores.shape:
        raise ValueError(f"order must be the scores' descending order, shape {scores.shape}; got shape {order.shape}")
    return order


def descending_order(scores: np.ndarray) -> np.ndarray:
    """Indices sorting ``scores`` from highest to lowest, ties by index: [N] int64.

    For float32 scores (N < 2^32) each score's bits are mapped to an unsigned key that sorts in
    descending score order and packed with the sample's index into one uint64; NumPy's
    vectorised value sort of that array is faster than a stable argsort
    (benchmarks/pruning_scale.py) and breaks ties by index. Other dtypes use a stable argsort.
    """
    scores = np.asarray(scores)
    n = len(scores)
    if scores.dtype != np.float32 or n >= 2**32:
        return np.argsort(-scores, kind="stable")
    u = (scores + np.float32(0.0)).view(np.uint32)  # + 0 turns -0.0 into 0.0 (they tie)
    negative = (u >> np.uint32(31)).astype(bool)
    key = np.invert(u)
    key &= np.uint32(0x7FFFFFFF)  # positives: larger score -> smaller key
    key[negative] = u[negative]  # negatives: the raw bits grow as the score falls
    del u, negative
    packed = key.astype(np.uint64)
    del key
    packed <<= np.uint64(32)
    chunk = 1 << 24
    for start in range(0, n, chunk):
        packed[start : start + chunk] |= np.arange(start, min(start + chunk, n), dtype=np.uint64)
    packed.sort()
    packed &= np.uint64(0xFFFFFFFF)
    return packed.view(np.int64)
