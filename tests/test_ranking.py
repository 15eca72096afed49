"""The radix-sorted ranking, tie-aware ranks from the sorted keys, and the sort-free selections
(top_k / bottom_k / block by partition, random by NumPy's choice) against the sorted order."""

import numpy as np
import pytest

from alchemist_pl import pruning, ranking, subset_draws


def _scores(kind: str, n: int, dtype, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return rng.standard_normal(n).astype(dtype)
    if kind == "ratings":  # five values: every cut falls inside a group of equal scores
        return rng.integers(1, 6, n).astype(dtype)
    x = rng.choice(np.array([0.0, -0.0, 1.0, -1.0, 1e-45, -3.5, 2.0**100]), n)  # signed zeros, tiny, huge
    return x.astype(dtype)


@pytest.mark.parametrize(
    "kind,dtype",
    [(k, d) for k in ("normal", "ratings", "zeros") for d in (np.float32, np.float64)]
    + [("ratings", np.int64), ("ratings", np.int8)],
)
def test_rank_in_value_ranges_is_the_stable_descending_argsort(monkeypatch, kind, dtype):
    """Ranges of at most 300 samples sorted one at a time, concatenated: the same order as one stable
    argsort of -scores (ties in index order), and keys equal exactly where scores are equal."""
    monkeypatch.setattr(ranking, "_RANGE", 300)
    monkeypatch.setattr(ranking, "_BLOCK", 128)
    x = _scores(kind, 5000, dtype)
    r = ranking.rank(x)
    np.testing.assert_array_equal(r.order, np.argsort(-x.astype(np.float64), kind="stable"))
    assert np.all(np.diff(r.keys) >= 0)
    np.testing.assert_array_equal(r.keys[1:] == r.keys[:-1], x[r.order][1:] == x[r.order][:-1])


def test_tie_ranks_and_mid2_from_sorted_keys():
    keys = np.array([0, 0, 1, 2, 2, 2, 3, 4, 4])
    np.testing.assert_array_equal(ranking.tie_ranks(keys), [0.5, 0.5, 2, 4, 4, 4, 6, 7.5, 7.5])
    np.testing.assert_array_equal(ranking.mid2(keys), [1, 1, 4, 8, 8, 8, 12, 15, 15])
    # a slice whose ends cut groups: ranks of the whole groups
    np.testing.assert_array_equal(ranking.tie_ranks(keys, 1, 5), [0.5, 2, 4, 4])
    np.testing.assert_array_equal(ranking.tie_ranks(keys, 4, 8, dtype=np.float32), [4, 4, 6, 7.5])


@pytest.mark.parametrize("kind", ["normal", "ratings", "zeros"])
@pytest.mark.parametrize("method,start", [("top_k", 0.4), ("bottom_k", 0.4), ("block", 0.0), ("block", 0.37)])
@pytest.mark.parametrize("keep_ratio", [0.05, 0.3, 0.9])
def test_window_without_a_sort_is_the_window_of_the_sorted_order(kind, method, start, keep_ratio):
    """select (a partition, ties at the window's ends drawn) equals the window of the descending
    order after the same tie shuffle, which choose_subset takes from its sort, for several seeds."""
    x = _scores(kind, 3001, np.float32, seed=1)
    for seed in range(4):
        got = pruning.select(x, keep_ratio, method, seed=seed, start=start)
        want, _ = pruning.choose_subset(len(x), scores=x, keep_ratio=keep_ratio, method=method, seed=seed, start=start)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("n", [999, 20_011])
def test_random_is_the_set_numpy_choice_draws(n):
    """Around NumPy's switch from Floyd's algorithm to a partial shuffle (k = n/50 and n/20)."""
    for k in sorted({1, n // 50, n // 50 + 1, n // 20, n // 20 + 1, n // 2, n - 1}):
        for seed in (0, 3):
            want = np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))
            np.testing.assert_array_equal(pruning.select(np.zeros(n), k / n, "random", seed=seed), want)


@pytest.mark.parametrize("method", ["shift_gsample", "gsample", "top_k", "block", "random"])
def test_choose_subset_percentiles_are_the_tie_aware_percentiles(method):
    x = _scores("ratings", 4000, np.float32, seed=2)
    idx, pct = pruning.choose_subset(len(x), scores=x, keep_ratio=0.4, method=method, seed=5)
    np.testing.assert_array_equal(idx, pruning.select(x, 0.4, method, seed=5))
    np.testing.assert_array_equal(pct, pruning.percentiles(x)[idx])
    assert len(np.unique(pct)) == len(np.unique(x[idx]))  # one percentile per rating


def test_select_leaves_a_given_order_unchanged():
    """A cut through a group of equal scores shuffles a copy, not the caller's order."""
    x = _scores("ratings", 2000, np.float32)
    order = pruning.descending_order(x)
    before = order.copy()
    a = pruning.select(x, 0.5, "shift_gsample", seed=1, order=order)
    np.testing.assert_array_equal(order, before)
    np.testing.assert_array_equal(a, pruning.select(x, 0.5, "shift_gsample", seed=1, order=order))


# ------------------------------------------- the partial, range-wise sort against a plain reference


def _reference(x: np.ndarray, keep_ratio: float, method: str, seed: int, head=0.25, start=0.4):
    """select and the kept samples' percentiles the slow way: one stable argsort of every score,
    the tie shuffle at each cut, each position's tie-aware rank ((first + last) / 2 of its group)."""
    n, k = len(x), round(keep_ratio * len(x))
    order = np.argsort(-x.astype(np.float64), kind="stable")
    s = x[order].astype(np.float64)
    new = np.r_[True, s[1:] != s[:-1]]  # position starts a group (0.0 and -0.0 tie)
    group_first = np.maximum.accumulate(np.where(new, np.arange(n), 0))
    group_last = np.minimum.accumulate(np.where(np.r_[new[1:], True], np.arange(n), n)[::-1])[::-1]
    first = {"top_k": 0, "bottom_k": n - k, "block": min(int(round(start * n)), n - k), "gsample": 0}.get(method)
    first = int(np.ceil(head * n)) if first is None else first
    tie_rng = np.random.default_rng([pruning._TIE_STREAM, seed])
    for c in (first, first + k) if method in pruning.WINDOWS else (first,):
        if 0 < c < n and s[c - 1] == s[c]:
            a, b = group_first[c], group_last[c] + 1
            order[a:b] = tie_rng.permutation(order[a:b])
    twice = group_first + group_last
    if method in pruning.WINDOWS:
        keep = np.zeros(n - first, dtype=bool)
        keep[:k] = True
    else:
        keep = subset_draws.gumbel_top_k(twice[first:], k, n, 0.5, 0.2, np.random.default_rng(seed))
    pct = np.empty(n)
    pct[order] = twice / (2.0 * n)
    idx = np.sort(order[first:][keep])
    return idx, pct[idx]


@pytest.mark.parametrize("kind", ["normal", "ratings", "zeros", "rounded"])
@pytest.mark.parametrize("range_size", [64, 700])
def test_partial_sort_keeps_the_reference_subset(monkeypatch, kind, range_size):
    """With value ranges of 64 or 700 samples (2000 scores), every rank method's subset and
    percentiles equal the reference's, whichever range a cut, a window end or the head falls in."""
    monkeypatch.setattr(ranking, "_RANGE", range_size)
    monkeypatch.setattr(ranking, "_BLOCK", 256)
    x = _scores(kind, 2000, np.float32, seed=3)
    if kind == "rounded":
        x = np.round(x * 20).astype(np.float32)  # ~150 values: many small groups of equal scores
    for method in ("shift_gsample", "gsample", "top_k", "bottom_k", "block"):
        for keep_ratio, seed in ((0.1, 0), (0.5, 1), (0.73, 2)):
            want, want_pct = _reference(x, keep_ratio, method, seed, start=0.37)
            got = pruning.select(x, keep_ratio, method, seed=seed, start=0.37, head=0.25)
            idx, pct = pruning.choose_subset(
                len(x), scores=x, keep_ratio=keep_ratio, method=method, seed=seed, start=0.37, head=0.25
            )
            np.testing.assert_array_equal(got, want, err_msg=f"{method} {keep_ratio}")
            np.testing.assert_array_equal(idx, want)
            np.testing.assert_array_equal(pct, want_pct)


def test_float32_ranks_are_exact_past_2_to_24():
    """Ranks above 2^24 in float32: the exact rank rounded once (an arange from 2^24 in float32 repeats 2^24)."""
    keys = np.arange(2**24, 2**24 + 8, dtype=np.int64)
    got = ranking.tie_ranks(keys, 0, 8, dtype=np.float32)
    np.testing.assert_array_equal(got, np.arange(8).astype(np.float32))
    got, _ = ranking.ranks_and_mid2(keys, 0, 8, np.float32, base=2**24, n=2**26)
    np.testing.assert_array_equal(got, (np.arange(8) + 2**24).astype(np.float32))


@pytest.mark.parametrize("kind", ["normal", "rounded"])
def test_rank_part_holds_every_start_position(monkeypatch, kind):
    """rank_part(lo, lo + 1) for every lo (ranges of 32 of 400 scores, so lo falls on the first and
    the last position of every range): the sorted part starts at or before lo, reaches lo + 1, and
    its positions are those of the stable descending argsort."""
    monkeypatch.setattr(ranking, "_RANGE", 32)
    monkeypatch.setattr(ranking, "_BLOCK", 128)
    x = _scores("normal", 400, np.float32, seed=5)
    x = np.round(x * 20).astype(np.float32) if kind == "rounded" else x
    want = np.argsort(-x.astype(np.float64), kind="stable")
    for lo in range(len(x)):
        a, part = ranking.rank_part(x, lo, lo + 1)
        assert a <= lo < a + len(part.order), (lo, a, len(part.order))
        np.testing.assert_array_equal(part.order, want[a : a + len(part.order)], err_msg=f"lo={lo}")


def test_unsorted_keys_raise_instead_of_looping():
    """mid2 walks the sorted keys block by block; keys that are not sorted stop it with an error
    (a block that would not advance) instead of an endless loop."""
    keys = np.random.default_rng(0).standard_normal(5000).astype(np.float32)
    with pytest.raises(RuntimeError, match="not sorted"):
        ranking.mid2(keys)
    assert ranking.mid2(np.sort(keys)).shape == (5000,)
