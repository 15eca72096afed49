"""Rank percentiles of scores: the one descending sort and tie-aware ranks (paper Eq. 11's ``r_i``).

Scores are sorted descending and ``r_i = rank_i / N`` in [0, 1), 0 = top score. Every member of a
group of equal scores gets the mean of the group's ranks, so equal scores get equal percentiles
and equal selection chances (:mod:`alchemist_pl.pruning`).

The sort: each score's bits become an integer key (int32 for float32 scores, int64 otherwise)
that grows as the score falls, -0.0 and 0.0 sharing one key; keys are split by their top 16 bits
into value ranges of about ``2^20`` samples, and each range is sorted with PyTorch's stable CPU
radix sort (``torch.sort(..., stable=True)`` on integers). Ties keep the file order. Only the
ranges holding the positions a method may keep are sorted (:func:`rank_part`). Everything after
the sort is O(N) and works on the sorted keys, one block at a time on up to :data:`THREADS`
threads; 10^8 float32 scores need about 1.5 GB including the scores.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch

_RANGE = 1 << 20  # samples per radix sort call: its scratch (~24 bytes per sample) stays in the CPU cache
_BLOCK = 1 << 20  # samples per block of the O(N) key passes (bounds their temporaries)
#: threads of the sort and the O(N) passes: the CPUs this process may use, at most 8
THREADS = max(1, min(8, len(os.sched_getaffinity(0))))


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
    """The scores' :class:`Ranking`: one stable sort of their :func:`score_keys` (:func:`rank_part` of all N)."""
    return rank_part(scores)[1]


def rank_part(scores: np.ndarray, lo: int = 0, hi: int | None = None) -> tuple[int, Ranking]:
    """``(a, ranking)``: descending positions ``a..b-1`` of the scores, sorted, where ``[a, b)`` holds
    ``[lo, hi)`` and every group of equal scores it touches; the samples outside are not sorted.

    Above ``2^20`` samples the keys are grouped by value range (their top 16 bits; one counting
    pass, index order kept within a range) and only the ranges that meet ``[lo, hi)`` are
    radix-sorted, each on its own and up to :data:`THREADS` at a time, so the sort's scratch memory
    stays within a few ranges. ``ranking.order[i]`` / ``ranking.keys[i]``: the sample at position
    ``a + i`` and its key; ``a = 0, b = N`` at or below ``2^20`` samples. Memory: 8 bytes per
    sorted position (order and keys, int32 at N < 2^31 for float32 scores; the keys are made a
    block at a time) plus about 24 bytes per sample of each range being sorted.
    """
    scores = np.asarray(scores)
    n = len(scores)
    hi = n if hi is None else hi
    itype = np.int32 if n < 2**31 else np.int64
    if n <= _RANGE:
        key = score_keys(scores)
        values = torch.from_numpy(key)
        _, perm = torch.sort(values, stable=True, out=(values, torch.empty(n, dtype=torch.int64)))
        return 0, Ranking(perm.numpy().astype(itype), key)
    counts, lut = _range_counts(scores)
    sizes = counts.sum(axis=0)
    starts = np.cumsum(sizes) - sizes
    meets = np.flatnonzero((starts < max(hi, lo + 1)) & (starts + sizes > lo))
    r0, r1 = int(meets[0]), int(meets[-1]) + 1
    a, b = int(starts[r0]), int(starts[r1 - 1] + sizes[r1 - 1])
    order, keys = _gather_ranges(scores, lut, counts, starts - a, (r0, r1), b - a, itype)
    spans = [(int(starts[r] - a), int(sizes[r])) for r in range(r0, r1) if sizes[r] > 1]
    in_threads(lambda span: _sort_range(order, keys, *span), spans)
    return a, Ranking(order, keys)


def _top16(key: np.ndarray) -> np.ndarray:
    """[n] the keys' top 16 bits as bins 0..2^16-1 (ascending with the key)."""
    return (key >> (8 * key.itemsize - 16)) + (1 << 15)


def key_bins(values: np.ndarray) -> np.ndarray:
    """[n] the top 16 bits of the values' :func:`score_keys` as bins 0..2^16-1: a bin's values are
    all below those of the bins before it (equal values share a bin)."""
    return _top16(score_keys(values))


def _range_counts(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([blocks, ranges] samples of each :data:`_BLOCK`-block in each value range, [2^16] the range of
    each top-16-bit bin of the :func:`score_keys`): consecutive bins joined into ranges of about
    :data:`_RANGE` samples. The keys are made one block at a time and not kept."""
    blocks = range(0, len(scores), _BLOCK)
    bins = np.stack(in_threads(lambda a: np.bincount(key_bins(scores[a : a + _BLOCK]), minlength=1 << 16), blocks))
    total = bins.sum(axis=0)
    _, lut = np.unique((np.cumsum(total) - total) // _RANGE, return_inverse=True)  # range of each top-16-bit bin
    first_bin = np.flatnonzero(np.diff(lut, prepend=-1))
    return np.add.reduceat(bins, first_bin, axis=1), lut.astype(np.uint8 if lut.max() < 256 else np.uint16)


def _gather_ranges(scores, lut, counts, starts, used: tuple[int, int], m: int, itype) -> tuple[np.ndarray, np.ndarray]:
    """([m] sample indices, [m] their :func:`score_keys`): the samples of ranges ``used[0]..used[1]-1``
    laid out range after range from ``starts`` (each range's first slot), in index order within a
    range; a stable counting sort by range, one block of samples at a time on :data:`THREADS` threads."""
    r0, r1 = used
    order, keys = np.empty(m, dtype=itype), np.empty(m, dtype=np.int32 if scores.dtype == np.float32 else np.int64)
    fill = starts + np.cumsum(counts, axis=0) - counts  # [blocks, ranges] first slot of each block's run

    def block(i: int) -> None:
        a = i * _BLOCK
        part = score_keys(scores[a : a + _BLOCK])
        o = np.argsort(lut[_top16(part)], kind="stable")  # a radix sort of 8/16-bit range ids
        part_keys, o = part[o], o.astype(itype) + itype(a)
        done = np.cumsum(counts[i]) - counts[i]
        for r in range(r0, r1):
            c, f, d = int(counts[i, r]), int(fill[i, r]), int(done[r])
            order[f : f + c], keys[f : f + c] = o[d : d + c], part_keys[d : d + c]

    in_threads(block, range(len(counts)))
    return order, keys


def _sort_range(order: np.ndarray, keys: np.ndarray, s: int, m: int) -> None:
    """Stable radix sort of ``keys[s:s+m]`` in place, ``order[s:s+m]`` permuted alongside."""
    values = torch.from_numpy(keys[s : s + m])  # a view: sorted in place
    _, perm = torch.sort(values, stable=True, out=(values, torch.empty(m, dtype=torch.int64)))
    order[s : s + m] = order[s : s + m][perm.numpy()]


def in_threads(fn, items) -> list:
    """``[fn(x) for x in items]`` on up to :data:`THREADS` threads (NumPy and PyTorch release the
    GIL in the array work; each call writes its own slice, so the result does not depend on the count)."""
    items = list(items)
    if THREADS <= 1 or len(items) < 2:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(min(THREADS, len(items))) as pool:
        return list(pool.map(fn, items))


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


def mid2(
    keys: np.ndarray, lo: int = 0, hi: int | None = None, base: int = 0, n: int | None = None, overwrite: bool = False
) -> np.ndarray:
    """Twice the tie-aware rank of positions ``lo..hi-1`` of the sorted ``keys``: ``first + last``
    of the position's group of equal keys (also where the group reaches past ``lo`` or ``hi``).

    ``keys`` may be a part of the N sorted keys that holds whole groups (:func:`rank_part`): its
    position 0 is descending position ``base`` of ``n`` scores (default: all of them, ``base = 0``).
    Integer, so exact: [hi - lo] int32 when ``2 N < 2^31``, else int64. O(hi - lo).
    ``overwrite``: write the result over ``keys[lo:hi]`` when the dtypes agree (no new array).

    Raises:
        RuntimeError: the keys are not sorted where a block of groups would end (it would not advance).
    """
    hi = len(keys) if hi is None else hi
    itype = np.int32 if 2 * (len(keys) if n is None else n) < 2**31 else np.int64
    twice = keys[lo:hi] if overwrite and keys.dtype == itype else np.empty(max(hi - lo, 0), dtype=itype)
    spans, a = [], group_bounds(keys, lo)[0] if hi > lo else hi
    while a < hi:
        b = group_bounds(keys, min(a + _BLOCK, len(keys)) - 1)[1]  # the block ends with a whole group
        if b <= a:
            raise RuntimeError(f"mid2: keys are not sorted near position {a}; sort them first")
        spans.append((a, b))
        a = b

    def block(span: tuple[int, int]) -> None:
        a, b = span
        part = keys[a:b]
        new = np.ones(len(part), dtype=bool)  # position starts a group
        np.not_equal(part[1:], part[:-1], out=new[1:])
        starts = np.flatnonzero(new)
        sizes = np.diff(starts, append=len(part))
        i, j = max(lo, a) - a, min(hi, b) - a  # the block's keys are read (above) before its result is written
        twice[a + i - lo : a + j - lo] = np.repeat(2 * (starts + a + base) + sizes - 1, sizes)[i:j]  # first + last

    in_threads(block, spans)
    return twice


def tie_ranks(keys: np.ndarray, lo: int = 0, hi: int | None = None, dtype=np.float64) -> np.ndarray:
    """Rank of positions ``lo..hi-1`` of the sorted ``keys``: the position, or for a group of equal
    keys the mean position of the whole group (also where it reaches past ``lo`` or ``hi``).

    O(hi - lo): [hi - lo] of ``dtype``, each the exact rank rounded once to ``dtype``.
    """
    return ranks_and_mid2(keys, lo, len(keys) if hi is None else hi, dtype)[0]


def ranks_and_mid2(
    keys: np.ndarray, lo: int, hi: int, dtype=np.float64, base: int = 0, n: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(:func:`tie_ranks`, :func:`mid2`) of positions ``lo..hi-1`` (``base``, ``n``: as for :func:`mid2`)."""
    twice = mid2(keys, lo, hi, base, n)
    ranks = np.empty(len(twice), dtype=dtype)
    spans = [(a, min(a + _BLOCK, len(twice))) for a in range(0, len(twice), _BLOCK)]
    in_threads(lambda s: np.multiply(twice[s[0] : s[1]], 0.5, out=ranks[s[0] : s[1]], casting="unsafe"), spans)
    return ranks, twice  # first + last is exact; half of it in float64 is exact, rounded once to dtype


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
