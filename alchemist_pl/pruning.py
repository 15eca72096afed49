"""Turn per-sample scores into a training subset (paper Sec. 3.3, Eq. 11).

All methods take a 1-D array of N scores (higher = rated more useful by the rater) and return
the sorted int64 indices of ``round(keep_ratio * N)`` distinct samples. Every method is O(N)
apart from one sort (O(N log N)), so it scales to 10^8 scores.

Rank percentile: scores are sorted descending and ``r_i = rank_i / N`` in [0, 1), 0 = top score.
Equal scores get equal chances: every member of a group of equal scores has the mean of the
group's ranks (:func:`alchemist_pl.ranking.tie_ranks`; :func:`percentiles` and the Gaussian weights use it), and where
a method cuts through such a group (the head, the top or bottom k, the block's ends) the members
on each side are drawn at random with ``seed`` (:func:`alchemist_pl.ranking.shuffle_ties_at`), not taken in file order. A caller that needs both the
subset and the percentiles sorts once (:func:`descending_order`) and passes ``order=`` to both.

Methods:
    shift_gsample: discard the head ``r < head``, then draw without replacement with probability
        proportional to ``exp(-(r - mean)^2 / (2 std^2))`` (Eq. 11). The paper's released subsets
        use head = 0.25 for keep ratios 0.1-0.5, 0.15 at 0.8 and 0.05 at 0.9; ``head="auto"``
        reproduces that as ``min(0.25, 1 - keep_ratio - 0.05)``.
    gsample: the same Gaussian with no head discarded.
    random: uniform without replacement (scores ignored).
    top_k / bottom_k: the highest / lowest scores.
    block: the contiguous percentile window of size keep_ratio starting at ``start``.
    full: every sample (keep_ratio must be 1).
"""

from __future__ import annotations

import numpy as np

from .ranking import _given_or_sorted, descending_order, percentiles, shuffle_ties_at, tie_ranks

__all__ = [
    "METHODS",
    "ALIASES",
    "auto_head",
    "check_method",
    "choose_subset",
    "descending_order",
    "percentiles",
    "select",
]

METHODS = ("shift_gsample", "gsample", "random", "top_k", "bottom_k", "block", "full")
#: ``alchemist`` is the paper's name for its own selection; it means shift_gsample.
ALIASES = {"alchemist": "shift_gsample"}

DEFAULT_MEAN = 0.5
DEFAULT_STD = 0.2
_TIE_STREAM = 0x7135  # seeds the tie shuffle apart from the draw (same seed, independent streams)


def auto_head(keep_ratio: float) -> float:
    """Head fraction used by ``head="auto"``: 0.25 up to keep 0.7, then 0.15 at 0.8, 0.05 at 0.9."""
    return float(max(0.0, min(0.25, 1.0 - keep_ratio - 0.05)))


def check_method(method: str) -> str:
    """Canonical method name (aliases resolved); ValueError naming the choices if unknown."""
    method = ALIASES.get(method, method)
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; expected one of {METHODS + tuple(ALIASES)}")
    return method


def _check(scores: np.ndarray, keep_ratio: float) -> int:
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {scores.shape}")
    if len(scores) == 0:
        raise ValueError("scores is empty")
    bad = ~np.isfinite(scores)
    if bad.any():
        first = np.flatnonzero(bad)[:5].tolist()
        raise ValueError(f"{int(bad.sum())} scores are NaN or infinite (first at indices {first})")
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float, np.floating, np.integer)):
        raise ValueError(f"keep_ratio must be a number in (0, 1], got {keep_ratio!r}")
    if not (0.0 < keep_ratio <= 1.0):
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    n = len(scores)
    k = int(round(keep_ratio * n))
    if k == 0:
        raise ValueError(
            f"keep_ratio={keep_ratio} keeps round({keep_ratio} * {n}) = 0 of {n} samples; "
            f"use keep_ratio >= 1/{n} = {1 / n:.3g}"
        )
    return k


def _gaussian_draw(
    order: np.ndarray, ranks: np.ndarray, first: int, k: int, mean: float, std: float, rng: np.random.Generator
) -> np.ndarray:
    """k of the samples ranked ``first..N-1``, without replacement, P ∝ exp(-(r - mean)^2 / 2 std^2).

    Works in rank space: ``ranks`` [N - first] float32 are the positions' :func:`tie_ranks` (equal
    scores, equal rank, equal chances) and ``r = rank / N``; no per-sample percentile array is built.
    Gumbel-top-k: adding Gumbel noise to the log-weights and keeping the k largest is an exact
    sample of successive weighted draws without replacement; the k-th largest key is found with
    a linear-time partition. float32 keys keep memory at 4 bytes per eligible sample.
    """
    if std <= 0:
        raise ValueError(f"std must be > 0, got {std}")
    n = len(order)
    m = n - first
    if k > m:
        raise ValueError(f"cannot keep {k} samples: only {m} remain after discarding the head")
    if k == m:
        return order[first:]
    keys = ranks
    keys /= np.float32(n)
    keys -= np.float32(mean)
    np.square(keys, out=keys)
    keys *= np.float32(-1.0 / (2.0 * std * std))
    u = rng.random(m, dtype=np.float32)
    np.maximum(u, np.float32(1e-38), out=u)
    np.log(u, out=u)
    np.negative(u, out=u)
    np.log(u, out=u)
    keys -= u  # + Gumbel(0, 1) = -log(-log(u))
    del u
    threshold = np.partition(keys, m - k)[m - k]  # k-th largest key
    above = np.flatnonzero(keys > threshold)
    ties = np.flatnonzero(keys == threshold)[: k - len(above)]
    return order[first + np.concatenate([above, ties])]


def select(
    scores,
    keep_ratio: float,
    method: str = "shift_gsample",
    seed: int = 0,
    head: float | str = "auto",
    mean: float = DEFAULT_MEAN,
    std: float = DEFAULT_STD,
    start: float = 0.4,
    order: np.ndarray | None = None,
) -> np.ndarray:
    """Indices of the selected subset.

    Args:
        scores: [N] scores, higher = better (NumPy array or anything ``np.asarray`` takes).
        keep_ratio: fraction of N to keep, in (0, 1]; the subset has ``round(keep_ratio * N)``.
        method: one of :data:`METHODS` (or ``"alchemist"`` = shift_gsample).
        seed: seed of the random draw (shift_gsample, gsample, random) and of the order of equal
            scores (every method but random and full); same seed, same subset.
        head: shift_gsample's discarded head fraction in [0, 1), or "auto" (:func:`auto_head`).
        mean, std: centre and width of the Gaussian over rank percentile (shift_gsample, gsample).
        start: first percentile of the window (block); clipped so the window fits.
        order: [N] the scores' :func:`descending_order`, if the caller has it already (prune shares
            one sort between ``select`` and :func:`percentiles`); computed here otherwise.

    Returns:
        [k] int64 sorted indices, no duplicates.

    Raises:
        ValueError: unknown method, keep_ratio outside (0, 1] or keeping 0 samples, NaN/inf scores, a head too large
            to leave k samples, or an ``order`` whose shape is not the scores'.
    """
    method = check_method(method)
    scores = np.asarray(scores)
    k = _check(scores, keep_ratio)
    n = len(scores)
    rng = np.random.default_rng(seed)

    if method == "full":
        if k != n:
            raise ValueError(f"method 'full' keeps every sample; keep_ratio must be 1, got {keep_ratio}")
        out = np.arange(n)
    elif method == "random":
        out = rng.choice(n, size=k, replace=False)
    elif method in ("top_k", "bottom_k", "block"):
        order = _given_or_sorted(scores, order)
        first = {"top_k": 0, "bottom_k": n - k}.get(method, min(max(int(round(start * n)), 0), n - k))
        order = shuffle_ties_at(scores, order, (first, first + k), np.random.default_rng([_TIE_STREAM, seed]))
        out = order[first : first + k]
    else:
        first = 0
        if method == "shift_gsample":
            h = auto_head(keep_ratio) if head == "auto" else float(head)
            if not (0.0 <= h < 1.0):
                raise ValueError(f"head must be in [0, 1), got {h}")
            first = int(np.ceil(h * n))  # positions with r = position / N < h are the head
        order = _given_or_sorted(scores, order)
        order = shuffle_ties_at(scores, order, (first,), np.random.default_rng([_TIE_STREAM, seed]))
        out = _gaussian_draw(order, tie_ranks(scores, order, first, dtype=np.float32), first, k, mean, std, rng)
    return np.sort(out.astype(np.int64))


def choose_subset(
    n: int,
    *,
    indices=None,
    scores=None,
    keep_ratio: float = 1.0,
    method: str = "full",
    seed: int = 0,
    **params,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The training subset of a dataset of ``n`` samples: the one place a subset is chosen.

    In order of precedence: ``indices`` as given (a subset file's rows, checked); a draw from
    ``scores`` with :func:`select` (``method``, ``keep_ratio``, ``seed``, ``params``); without
    scores a uniform draw (``method="random"``) or every sample (``method="full"``).

    Args:
        n: dataset size N.
        indices: [k] dataset positions of a precomputed subset, or None.
        scores: [N] scores aligned with the dataset, or None.
        keep_ratio, method, seed, params: passed to :func:`select` (``params``: head, mean, std, start).

    Returns:
        (subset [k] int64 dataset positions, percentile [k] float64 rank percentile of each kept
        sample among the N scores, 0 = highest, from the same sort as the draw; None when the
        subset was not drawn from ``scores``).

    Raises:
        ValueError: unknown method, a method other than full/random without scores, scores of
            the wrong length, an empty subset, indices outside [0, n) or repeated.
    """
    method = check_method(method)
    percentile = None
    if indices is None and scores is not None:
        scores = np.asarray(scores)
        if len(scores) != n:
            raise ValueError(f"got {len(scores)} scores for a dataset of {n} samples")
        order = descending_order(scores)  # one sort, shared by the draw and the percentiles
        indices = select(scores, keep_ratio, method, seed, order=order, **params)
        percentile = percentiles(scores, order=order)[indices]
    elif indices is None and method == "random":  # uniform: placeholder scores, no percentiles
        indices = select(np.zeros(n, dtype=np.float32), keep_ratio, method, seed, **params)
    elif indices is None and method == "full":
        indices = np.arange(n)
    elif indices is None:
        raise ValueError(f"method {method!r} needs scores (or a precomputed subset)")
    indices = np.asarray(indices, dtype=np.int64)
    if len(indices) == 0:
        raise ValueError("the subset is empty")
    if indices.min() < 0 or indices.max() >= n:
        raise ValueError(f"subset indices must lie in [0, {n}); got range [{indices.min()}, {indices.max()}]")
    if len(np.unique(indices)) != len(indices):
        raise ValueError("subset indices contain duplicates")
    return indices, percentile
