"""Turn per-sample scores into a training subset (paper Sec. 3.3, Eq. 11).

All methods take a 1-D array of N scores (higher = rated more useful by the rater) and return
the sorted int64 indices of ``round(keep_ratio * N)`` distinct samples. random, top_k, bottom_k
and block are O(N) (a partition finds the window's ends); shift_gsample and gsample, and the
percentiles of a subset, use one radix sort of the positions they may keep
(:func:`alchemist_pl.ranking.rank_part`), so every method scales to 10^8 scores.

Rank percentile: scores are sorted descending and ``r_i = rank_i / N`` in [0, 1), 0 = top score.
Equal scores get equal chances: every member of a group of equal scores has the mean of the
group's ranks (:func:`alchemist_pl.ranking.tie_ranks`; :func:`percentiles` and the Gaussian weights use it), and where
a method cuts through such a group (the head, the top or bottom k, the block's ends) the members
on each side are drawn at random with ``seed`` (:func:`alchemist_pl.ranking.shuffle_ties_at`), not taken in file order. A caller that needs both the
subset and the percentiles sorts once (:func:`rank`) and passes ``order=`` to both;
:func:`choose_subset` does that.

Methods:
    shift_gsample: discard the head ``r < head``, then draw without replacement with probability
        proportional to ``exp(-(r - mean)^2 / (2 std^2))`` (Eq. 11). The paper's released subsets
        use head = 0.25 for keep ratios 0.1-0.5, 0.15 at 0.8 and 0.05 at 0.9; ``head="auto"``
        reproduces that as ``min(0.25, 1 - keep_ratio - 0.05)``.
    gsample: the same Gaussian with no head discarded.
    random: uniform without replacement (scores ignored; NumPy's ``Generator.choice``).
    top_k / bottom_k: the highest / lowest scores.
    block: the contiguous percentile window of size keep_ratio starting at ``start``.
    full: every sample (keep_ratio must be 1).
"""

from __future__ import annotations

import numpy as np

from .ranking import (
    Ranking,
    descending_order,
    mid2,
    percentiles,
    rank,
    rank_part,
    ranking_of,
    shuffle_ties_at,
)
from .subset_draws import by_index, gumbel_top_k, uniform_draw, window

__all__ = [
    "METHODS",
    "ALIASES",
    "Ranking",
    "auto_head",
    "check_method",
    "choose_subset",
    "descending_order",
    "percentiles",
    "rank",
    "select",
]

METHODS = ("shift_gsample", "gsample", "random", "top_k", "bottom_k", "block", "full")
#: ``alchemist`` is the paper's name for its own selection; it means shift_gsample.
ALIASES = {"alchemist": "shift_gsample"}
WINDOWS = ("top_k", "bottom_k", "block")

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


def check_keep_ratio(keep_ratio) -> None:
    """ValueError unless ``keep_ratio`` is a number (not a bool) in (0, 1]."""
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float, np.floating, np.integer)):
        raise ValueError(f"keep_ratio must be a number in (0, 1], got {keep_ratio!r}")
    if not (0.0 < keep_ratio <= 1.0):
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")


def _check(scores: np.ndarray, keep_ratio: float) -> int:
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {scores.shape}")
    if len(scores) == 0:
        raise ValueError("scores is empty")
    if not (np.isfinite(scores.min()) and np.isfinite(scores.max())):  # NaN reaches both, inf one
        bad = ~np.isfinite(scores)
        first = np.flatnonzero(bad)[:5].tolist()
        raise ValueError(f"{int(bad.sum())} scores are NaN or infinite (first at indices {first})")
    check_keep_ratio(keep_ratio)
    n = len(scores)
    k = int(round(keep_ratio * n))
    if k == 0:
        raise ValueError(
            f"keep_ratio={keep_ratio} keeps round({keep_ratio} * {n}) = 0 of {n} samples; "
            f"use keep_ratio >= 1/{n} = {1 / n:.3g}"
        )
    return k


def _first(method: str, n: int, k: int, keep_ratio: float, head, start: float) -> int:
    """First descending position a rank method may keep: the window's start, or past shift_gsample's head."""
    if method in WINDOWS:
        return {"top_k": 0, "bottom_k": n - k}.get(method, min(max(int(round(start * n)), 0), n - k))
    if method == "gsample":
        return 0
    h = auto_head(keep_ratio) if head == "auto" else float(head)
    if not (0.0 <= h < 1.0):
        raise ValueError(f"head must be in [0, 1), got {h}")
    return int(np.ceil(h * n))  # positions with r = position / N < h are the head


def _ranked_draw(scores, order, k: int, method: str, keep_ratio: float, seed: int, twice: bool, **params):
    """([m] candidate samples, [m] twice their tie-aware rank if ``twice`` else None, [m] bool: the k
    candidates kept, or None when all are): the arguments of :func:`by_index`.

    Only the descending positions a method may keep are sorted (:func:`~alchemist_pl.ranking.rank_part`;
    all of them when the caller passes ``order``, which is left unchanged). The windows are runs of
    the sorted order; shift_gsample and gsample draw from positions ``first..N-1`` with
    :func:`gumbel_top_k` over their tie-aware ranks (equal scores, equal rank, equal chances).
    """
    n = len(scores)
    first = _first(method, n, k, keep_ratio, params.get("head", "auto"), params.get("start", 0.4))
    if method not in WINDOWS and k > n - first:
        raise ValueError(f"cannot keep {k} samples: only {n - first} remain after discarding the head")
    std = params.get("std", DEFAULT_STD)
    if method not in WINDOWS and std <= 0:
        raise ValueError(f"std must be > 0, got {std}")
    order_given = order
    if order is None:
        a, ranking = rank_part(scores, first, first + k if method in WINDOWS else n)
    else:
        a, ranking = 0, ranking_of(scores, order)
    cuts = (first - a, first + k - a) if method in WINDOWS else (first - a,)
    tie_rng = np.random.default_rng([_TIE_STREAM, seed])
    keys, order = ranking.keys, shuffle_ties_at(ranking.keys, ranking.order, cuts, tie_rng, in_place=order is None)
    first -= a  # a position of the sorted part from here on
    if method in WINDOWS:
        return order[first : first + k], mid2(keys, first, first + k, a, n) if twice else None, None
    doubled = mid2(keys, first, len(keys), a, n, overwrite=order_given is None)  # the sorted keys are not needed after
    if k == len(keys) - first:
        return order[first:], doubled if twice else None, None
    rng = np.random.default_rng(seed)
    keep = gumbel_top_k(doubled, k, n, params.get("mean", DEFAULT_MEAN), std, rng, overwrite=not twice)
    return order[first:], doubled if twice else None, keep


def select(
    scores,
    keep_ratio: float,
    method: str = "shift_gsample",
    seed: int = 0,
    head: float | str = "auto",
    mean: float = DEFAULT_MEAN,
    std: float = DEFAULT_STD,
    start: float = 0.4,
    order: np.ndarray | Ranking | None = None,
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
        order: the scores' :func:`rank` or :func:`descending_order`, if the caller has it (shift_gsample
            and gsample use it instead of sorting, unmodified; the other methods do not sort).

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
    _check_order(scores, order)
    if method == "full":
        if k != n:
            raise ValueError(f"method 'full' keeps every sample; keep_ratio must be 1, got {keep_ratio}")
        return np.arange(n, dtype=np.int64)
    if method == "random":
        return uniform_draw(n, k, seed)
    params = dict(head=head, mean=mean, std=std, start=start)
    if method in WINDOWS:
        first = _first(method, n, k, keep_ratio, head, start)
        return window(scores, first, k, np.random.default_rng([_TIE_STREAM, seed]))
    samples, _, keep = _ranked_draw(scores, order, k, method, keep_ratio, seed, False, **params)
    return by_index(n, samples, keep=keep)


def _check_order(scores: np.ndarray, order) -> None:
    got = order.order if isinstance(order, Ranking) else order
    if got is not None and np.shape(got) != scores.shape:
        raise ValueError(f"order must be the scores' descending order, shape {scores.shape}; got shape {np.shape(got)}")


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
    if indices is None and scores is not None:
        return _draw_with_percentiles(n, np.asarray(scores), keep_ratio, method, seed, params)
    if indices is None and method == "random":  # uniform: placeholder scores, no percentiles
        return select(np.zeros(n, dtype=np.float32), keep_ratio, method, seed, **params), None
    if indices is None and method == "full":
        return np.arange(n, dtype=np.int64), None
    if indices is None:
        raise ValueError(f"method {method!r} needs scores (or a precomputed subset)")
    indices = np.asarray(indices, dtype=np.int64)
    if len(indices) == 0:
        raise ValueError("the subset is empty")
    if indices.min() < 0 or indices.max() >= n:
        raise ValueError(f"subset indices must lie in [0, {n}); got range [{indices.min()}, {indices.max()}]")
    seen = np.zeros(n, dtype=bool)
    seen[indices] = True
    if np.count_nonzero(seen) != len(indices):
        raise ValueError("subset indices contain duplicates")
    return indices, None


def _draw_with_percentiles(n: int, scores: np.ndarray, keep_ratio, method: str, seed: int, params: dict):
    """:func:`select`'s subset and the kept samples' rank percentiles, from the one sort of the draw
    (random, full: of all the scores)."""
    if len(scores) != n:
        raise ValueError(f"got {len(scores)} scores for a dataset of {n} samples")
    k = _check(scores, keep_ratio)
    unknown = sorted(set(params) - {"head", "mean", "std", "start"})
    if unknown:
        raise TypeError(f"unknown pruning parameter(s) {unknown}; expected head, mean, std, start")
    if method in ("random", "full"):
        idx = select(scores, keep_ratio, method, seed, **params)
        ranking = rank(scores)
        by_sample = np.empty(n, dtype=np.int64 if 2 * n >= 2**31 else np.int32)
        by_sample[ranking.order] = mid2(ranking.keys)
        return idx, by_sample[idx] / (2.0 * n)
    return by_index(n, *_ranked_draw(scores, None, k, method, keep_ratio, seed, True, **params))
