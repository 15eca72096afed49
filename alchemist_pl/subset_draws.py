"""The draws that pick k of N samples for :mod:`alchemist_pl.pruning`, each O(N) and without a sort.

- :func:`uniform_draw`: k samples uniformly without replacement (random);
- :func:`window`: a run of the descending order (top_k, bottom_k, block) found by a partition;
- :func:`gumbel_top_k`: k positions drawn without replacement with Gaussian rank weights (Eq. 11 of
  Alchemist, arXiv 2512.16905; shift_gsample and gsample);
- :func:`by_index`: sorts drawn samples by index with a mask instead of a sort.
"""

from __future__ import annotations

import numpy as np

from .ranking import in_threads, key_bins

__all__ = ["by_index", "gumbel_top_k", "kth_largest", "uniform_draw", "window"]

_DRAWS = 1 << 20  # Gumbel keys made per block (bounds the uniform draws' buffer)


def by_index(n: int, samples: np.ndarray, twice: np.ndarray | None = None, keep: np.ndarray | None = None):
    """``samples`` (distinct, in [0, n)) sorted: [k] int64; with ``twice`` ([k] 2 x rank of each,
    non-negative integers below ``2 n``), also their percentiles in that order ([k] float64,
    ``2 rank / 2 N`` = ``rank / N`` exactly). ``keep``: [m] bool, when ``samples`` and ``twice``
    are [m] candidates of which only these are meant.

    O(n): a mask (with ``twice``: an array of ``twice + 1`` by sample, 0 where none is kept) indexed
    by sample instead of a sort, filled and read a block at a time on
    :data:`~alchemist_pl.ranking.THREADS` threads (the candidates are never gathered).
    """
    by_sample = np.zeros(n, dtype=bool if twice is None else twice.dtype)

    def mark(a: int) -> None:  # one scatter marks the kept samples and holds their ranks
        s, t = samples[a : a + _DRAWS], None if twice is None else twice[a : a + _DRAWS]
        if keep is not None:
            s, t = s[keep[a : a + _DRAWS]], None if t is None else t[keep[a : a + _DRAWS]]
        by_sample[s] = True if t is None else t + 1

    in_threads(mark, range(0, len(samples), _DRAWS))
    if twice is None:
        return np.flatnonzero(by_sample)
    blocks = range(0, n, _DRAWS)
    counts = np.array(in_threads(lambda a: np.count_nonzero(by_sample[a : a + _DRAWS]), blocks), dtype=np.int64)
    slots = np.cumsum(counts) - counts
    idx, pct = np.empty(counts.sum(), dtype=np.int64), np.empty(counts.sum(), dtype=np.float64)

    def read(i: int) -> None:
        a, s, c = blocks[i], slots[i], counts[i]
        block = by_sample[a : a + _DRAWS]
        found = np.flatnonzero(block)
        np.add(found, a, out=idx[s : s + c])
        np.divide(block[found] - 1, 2.0 * n, out=pct[s : s + c])

    in_threads(read, range(len(blocks)))
    return idx, pct


def uniform_draw(n: int, k: int, seed: int) -> np.ndarray:
    """k of n samples uniformly without replacement: the set ``Generator.choice(n, k, replace=False)`` draws.

    Above n // 20 NumPy draws the set by a partial shuffle with or without ``shuffle``; skipping
    the final shuffle of the k draws gives the same set faster.
    """
    tail = n > 10_000 and k > n // 20
    return by_index(n, np.random.default_rng(seed).choice(n, size=k, replace=False, shuffle=not tail))


def window(scores: np.ndarray, first: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted int64 indices of descending positions ``first..first+k-1`` without sorting: a partition
    finds the window's highest and lowest score; a group of equal scores that a window end cuts
    is shuffled with ``rng`` exactly as :func:`~alchemist_pl.ranking.shuffle_ties_at` shuffles the sorted order."""
    n = len(scores)
    s = scores if scores.dtype in (np.float32, np.float64) else scores.astype(np.float64)
    part = np.partition(s, [n - first - k, n - 1 - first])  # ascending: descending position p is n - 1 - p
    top, bottom = part[n - 1 - first], part[n - first - k]
    del part
    keep = s > bottom
    keep &= s < top
    groups = {}  # score -> (first position of its group, its members in their current order)
    for cut, value in ((first, top), (first + k, bottom)):
        if value not in groups:
            groups[value] = (int(np.count_nonzero(s > value)), np.flatnonzero(s == value))
        a, members = groups[value]
        if 0 < cut < n and a < cut < a + len(members):
            groups[value] = (a, rng.permutation(members))
    for a, members in groups.values():
        keep[members[max(first, a) - a : min(first + k, a + len(members)) - a]] = True
    return np.flatnonzero(keep)


def gumbel_top_k(
    twice: np.ndarray, k: int, n: int, mean: float, std: float, rng: np.random.Generator, overwrite: bool = False
) -> np.ndarray:
    """[m] bool: k of the m positions whose tie-aware ranks ``twice / 2`` are given (``twice``: [m]
    integers, :func:`~alchemist_pl.ranking.mid2`), drawn without replacement with
    P ∝ exp(-(r - mean)^2 / 2 std^2), ``r = rank / N``.

    Gumbel-top-k: adding Gumbel noise to the log-weights and keeping the k largest is an exact
    sample of successive weighted draws without replacement; the k-th largest key is found by
    :func:`kth_largest` (no copy of the keys), and of keys equal to it the first in position order are kept. The keys are float32 (the rank rounded once, then each step in float32),
    made a block at a time with the uniform draws of the block (one stream, as one call would draw
    it); ``overwrite``: the keys replace int32 ``twice`` in its memory.
    """
    m = len(twice)
    w = twice.view(np.float32) if overwrite and twice.dtype == np.int32 else np.empty(m, dtype=np.float32)
    u = np.empty(min(m, _DRAWS), dtype=np.float32)
    scale, centre, n32 = np.float32(-1.0 / (2.0 * std * std)), np.float32(mean), np.float32(n)
    for a in range(0, m, _DRAWS):
        wb, ub = w[a : a + _DRAWS], u[: min(_DRAWS, m - a)]
        np.multiply(twice[a : a + _DRAWS], 0.5, out=wb, casting="unsafe")  # the rank, rounded once to float32
        wb /= n32
        wb -= centre
        np.square(wb, out=wb)
        wb *= scale
        rng.random(out=ub, dtype=np.float32)
        np.maximum(ub, np.float32(1e-38), out=ub)
        np.log(ub, out=ub)
        np.negative(ub, out=ub)
        np.log(ub, out=ub)
        wb -= ub  # + Gumbel(0, 1) = -log(-log(u))
    threshold = kth_largest(w, k)
    keep = w > threshold
    keep[np.flatnonzero(w == threshold)[: k - np.count_nonzero(keep)]] = True
    return keep


def kth_largest(values: np.ndarray, k: int):
    """The k-th largest of the [m] finite ``values`` (1 <= k <= m), exactly as ``np.sort(values)[m - k]``
    (equal floats such as -0.0 and 0.0 are one value), without a copy of them.

    A radix select: the values' :func:`~alchemist_pl.ranking.key_bins` are counted a block at a
    time, the bin holding the k-th largest is found from the counts, and only its values are
    gathered and partitioned. O(m), two passes.
    """
    m = len(values)
    if not 1 <= k <= m:
        raise ValueError(f"k must be in [1, {m}], got {k}")
    counts = np.zeros(1 << 16, dtype=np.int64)
    for a in range(0, m, _DRAWS):
        counts += np.bincount(key_bins(values[a : a + _DRAWS]), minlength=1 << 16)
    above = np.cumsum(counts)  # values in this bin or a higher one (the bins descend with the value)
    b = int(np.searchsorted(above, k))
    rest = k - int(above[b] - counts[b])  # the rest-th largest of the bin's values
    found = [values[a : a + _DRAWS][key_bins(values[a : a + _DRAWS]) == b] for a in range(0, m, _DRAWS)]
    found = np.concatenate(found)
    return np.partition(found, len(found) - rest)[len(found) - rest]
