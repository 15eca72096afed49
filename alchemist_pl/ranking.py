"""Rank percentiles of scores: the one descending sort and tie-aware ranks (paper Eq. 11's ``r_i``).

Scores are sorted descending and ``r_i = rank_i / N`` in [0, 1), 0 = top score. Every member of a
group of equal scores gets the mean of the group's ranks, so equal scores get equal percentiles
and equal selection chances (:mod:`alchemist_pl.pruning`).

The sort: each score's bits become an integer key (int32 for float32 scores, int64 otherwise)
that grows as the score falls, -0.0 and 0.0 sharing one key; keys are split by their top 16 bits
into value ranges of about ``2^22`` samples, and each range is sorted with PyTorch's stable CPU
radix sort (``torch.sort(..., stable=True)`` on integers). Ties keep the file order. Everything
after the sort is O(N) and works on the sorted keys, so 10^8 float32 scores need about 2 GB.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

_RANGE = 1 << 22  # samples per radix sort call: bounds the sort's scratch memory (~40 bytes per sample)
_BLOCK = 1 << 20  # samples per block of the O(N) key passes (bounds their temporaries)


class Ranking(NamedTuple):
    """The scores sorted from highest to lowest.

    order: [N] sample indices, highest score first, equal scores in index order (int32 when N < 2^31).
    keys: [N] the sorted integer keys, ascending: ``keys[p] == keys[q]`` iff positions p and q hold
        equal scores.
    """

    order: np.ndarray
    keys: np.ndarray


def score_keys(scores: np.ndarray) -> np.ndarray:
    """[N] integer keys that grow as the score falls, equal iff the scores are equal (-0.0 == 0.0).

    int32 for float32 scores, int64 for any other dtype (converted to float64 first). The
    IEEE-754 bits of a float, read as a signed integer, order non-negative floats; flipping the
    magnitude bits of negative ones makes the order total, and inverting all bits reverses it.
    """
    scores = np.asarray(scores)
    if scores.dtype != np.float32:
        scores = scores.astype(np.float64, copy=False)
    itype = np.int32 if scores.dtype == np.float32 else np.int64
    key = np.add(scores, scores.dtype.type(0.0)).view(itype)  # + 0 turns -0.0 into 0.0 (they tie)
    shift, magnitude = itype(8 * key.itemsize - 1), itype(np.iinfo(itype).max)
    for a in range(0, len(key), _BLOCK):
        block = key[a : a + _BLOCK]
        block ^= (block >> shift) & magnitude
        np.invert(block, out=block)
    return key


def rank(scores: np.ndarray) -> Ranking:
    """The scores' :class:`Ranking`: one stable sort of their :func:`score_keys`.

    Above ``2^22`` samples the keys are first grouped by value range (their top 16 bits; one
    counting pass, index order kept within a range), then each range is radix-sorted on its own,
    so the sort's scratch memory and random accesses stay within one range. Memory: the keys, the
    order and the sorted keys, 12 bytes per float32 score at N < 2^31, plus about 40 bytes per
    sample of the largest range (``2^22`` samples unless that many scores share their top 16 key bits).
    """
    key = score_keys(scores)
    n = len(key)
    itype = np.int32 if n < 2**31 else np.int64
    if n <= _RANGE:
        values = torch.from_numpy(key)
        _, perm = torch.sort(values, stable=True, out=(values, torch.empty(n, dtype=torch.int64)))
        return Ranking(perm.numpy().astype(itype), key)
    order, keys, sizes = _group_by_range(key, itype)
    del key
    start = 0
    for m in sizes:
        values = torch.from_numpy(keys[start : start + m])  # a view: sorted in place
        _, perm = torch.sort(values, stable=True, out=(values, torch.empty(m, dtype=torch.int64)))
        order[start : start + m] = order[start : start + m][perm.numpy()]
        start += m
    return Ranking(order, keys)


def _group_by_range(key: np.ndarray, itype) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(sample indices grouped by value range, ascending within a range; their keys; the range
    sizes): a stable counting sort by range, one block of samples at a time."""
    n, shift, offset = len(key), 8 * key.itemsize - 16, 1 << 15
    bins = sum(np.bincount((key[a : a + _BLOCK] >> shift) + offset, minlength=1 << 16) for a in range(0, n, _BLOCK))
    _, lut = np.unique((np.cumsum(bins) - bins) // _RANGE, return_inverse=True)  # range of each top-16-bit bin
    sizes = np.bincount(lut, weights=bins).astype(np.int64)
    lut = lut.astype(np.uint8 if len(sizes) <= 256 else np.uint16)
    order, keys = np.empty(n, dtype=itype), np.empty_like(key)
    fill = np.cumsum(sizes) - sizes  # next free slot of each range
    for a in range(0, n, _BLOCK):
        block = key[a : a + _BLOCK]
        part = lut[(block >> shift) + offset]
        o = np.argsort(part, kind="stable")  # a radix sort of 8/16-bit range ids
        counts = np.bincount(part, minlength=len(sizes))
        block_keys, o = block[o], o + a
        done = 0
        for r in np.flatnonzero(counts):  # the block's members of range r: one contiguous run
            c, f = int(counts[r]), int(fill[r])
            order[f : f + c], keys[f : f + c] = o[done : done + c], block_keys[done : done + c]
            done, fill[r] = done + c, f + c
    return order, keys, sizes[sizes > 0].tolist()


def ranking_of(scores: np.ndarray, order=None) -> Ranking:
    """``order`` as a :class:`Ranking` of ``scores``: sorted here when None; a :class:`Ranking` as
    is; an index array (the scores' :func:`descending_order`) with its keys gathered.

    Raises:
        ValueError: ``order``'s shape is not the scores'.
    """
    scores = np.asarray(scores)
    if order is None:
        return rank(scores)
    got = order.order if isinstance(order, Ranking) else np.asarray(order)
    if got.shape != scores.shape:
        raise ValueError(f"order must be the scores' descending order, shape {scores.shape}; got shape {got.shape}")
    return order if isinstance(order, Ranking) else Ranking(got, score_keys(scores)[got])


def descending_order(scores: np.ndarray) -> np.ndarray:
    """Indices sorting ``scores`` from highest to lowest, ties by index: [N] int64 (:func:`rank`)."""
    return rank(np.asarray(scores)).order.astype(np.int64, copy=False)


def group_bounds(keys: np.ndarray, c: int) -> tuple[int, int]:
    """``[a, b)``: the positions of the sorted ``keys`` equal to the key at position ``c``. O(log N)."""
    return int(np.searchsorted(keys, keys[c], "left")), int(np.searchsorted(keys, keys[c], "right"))


def mid2(keys: np.ndarray, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """Twice the tie-aware rank of positions ``lo..hi-1`` of the sorted ``keys``: ``first + last``
    of the position's group of equal keys (also where the group reaches past ``lo`` or ``hi``).

    Integer, so exact: [hi - lo] int32 when ``2 N < 2^31``, else int64. O(hi - lo).
    """
    return _mid2_tied(keys, lo, len(keys) if hi is None else hi)[0]


def _mid2_tied(keys: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """(:func:`mid2`, [hi - lo] bool: the position ties with another), one block of whole groups at a time."""
    itype = np.int32 if 2 * len(keys) < 2**31 else np.int64
    twice, tied = np.empty(max(hi - lo, 0), dtype=itype), np.empty(max(hi - lo, 0), dtype=bool)
    a = group_bounds(keys, lo)[0] if hi > lo else hi
    while a < hi:
        b = group_bounds(keys, min(a + _BLOCK, len(keys)) - 1)[1]  # the block ends with a whole group
        block = keys[a:b]
        new = np.ones(len(block), dtype=bool)  # position starts a group
        np.not_equal(block[1:], block[:-1], out=new[1:])
        starts = np.flatnonzero(new)
        sizes = np.diff(starts, append=len(block))
        i, j = max(lo, a) - a, min(hi, b) - a
        twice[a + i - lo : a + j - lo] = np.repeat(2 * (starts + a) + sizes - 1, sizes)[i:j]  # first + last
        tied[a + i - lo : a + j - lo] = np.repeat(sizes > 1, sizes)[i:j]
        a = b
    return twice, tied


def tie_ranks(keys: np.ndarray, lo: int = 0, hi: int | None = None, dtype=np.float64) -> np.ndarray:
    """Rank of positions ``lo..hi-1`` of the sorted ``keys``: the position, or for a group of equal
    keys the mean position of the whole group (also where it reaches past ``lo`` or ``hi``).

    O(hi - lo): [hi - lo] of ``dtype``; an untied position's rank is ``np.arange``'s value in ``dtype``.
    """
    return ranks_and_mid2(keys, lo, len(keys) if hi is None else hi, dtype)[0]


def ranks_and_mid2(keys: np.ndarray, lo: int, hi: int, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """(:func:`tie_ranks`, :func:`mid2`) of positions ``lo..hi-1``, sharing one pass over the groups."""
    if hi <= lo:
        return np.zeros(0, dtype=dtype), _mid2_tied(keys, lo, hi)[0]
    a = group_bounds(keys, lo)[0]
    ranks = np.arange(a, hi, dtype=dtype)[lo - a :]
    twice, tied = _mid2_tied(keys, lo, hi)
    np.multiply(twice, 0.5, out=ranks, where=tied, casting="unsafe")  # exact half-integer, rounded once
    return ranks, twice


def percentiles(scores: np.ndarray, order=None) -> np.ndarray:
    """Rank percentile r_i in [0, 1) of every score, 0 = highest (float64, shape [N]).

    Equal scores share one percentile: the mean rank of their group over N (ranks 0..N-1).
    ``order``: the scores' :class:`Ranking` or :func:`descending_order` if already computed (saves the sort).
    """
    scores = np.asarray(scores)
    n = len(scores)
    ranking = ranking_of(scores, order)
    twice, order = mid2(ranking.keys), ranking.order
    del ranking  # its sorted keys, unless the caller holds them
    r = np.empty(n, dtype=np.float64)
    for a in range(0, n, _BLOCK):
        r[order[a : a + _BLOCK]] = twice[a : a + _BLOCK] / (2.0 * n)  # (2 rank) / (2 N): the same float as rank / N
    return r


def shuffle_ties_at(
    keys: np.ndarray, order: np.ndarray, cuts, rng: np.random.Generator, in_place: bool = False
) -> np.ndarray:
    """``order`` with every group of equal scores that a cut splits (positions ``c - 1`` and ``c``
    tie) in a random order, so which of its members fall on each side is drawn, not taken from the
    file. ``keys``: the sorted keys of ``order``. Returns ``order`` itself when no group is
    shuffled or ``in_place``, else a shuffled copy. O(group size) apart from that copy.
    """
    out = order
    for c in cuts:
        if 0 < c < len(order) and keys[c - 1] == keys[c]:
            a, b = group_bounds(keys, c)
            if out is order and not in_place:
                out = order.copy()
            out[a:b] = rng.permutation(out[a:b])
    return out
