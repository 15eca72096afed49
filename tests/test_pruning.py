import re

import numpy as np
import pytest

from alchemist_pl import pruning


@pytest.fixture
def scores():
    return np.random.default_rng(0).normal(size=10_000).astype(np.float32)


@pytest.mark.parametrize("method", ["shift_gsample", "gsample", "random", "top_k", "bottom_k", "block"])
@pytest.mark.parametrize("keep_ratio", [0.1, 0.5, 0.7])
def test_exact_size_unique_sorted(scores, method, keep_ratio):
    idx = pruning.select(scores, keep_ratio, method, seed=3)
    assert len(idx) == round(keep_ratio * len(scores))
    assert len(np.unique(idx)) == len(idx)
    assert np.all(np.diff(idx) > 0)
    assert idx.min() >= 0 and idx.max() < len(scores)


@pytest.mark.parametrize("method", ["shift_gsample", "gsample", "random"])
def test_deterministic_per_seed(scores, method):
    a = pruning.select(scores, 0.3, method, seed=1)
    b = pruning.select(scores, 0.3, method, seed=1)
    c = pruning.select(scores, 0.3, method, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_percentiles_rank_descending():
    r = pruning.percentiles(np.array([0.1, 5.0, -2.0, 3.0]))
    np.testing.assert_allclose(r, [0.5, 0.0, 0.75, 0.25])


@pytest.mark.parametrize("keep_ratio,head", [(0.2, 0.25), (0.5, 0.25), (0.8, 0.15), (0.9, 0.05)])
def test_shift_gsample_discards_head(scores, keep_ratio, head):
    assert pruning.auto_head(keep_ratio) == pytest.approx(head)
    idx = pruning.select(scores, keep_ratio, "shift_gsample", seed=0)
    r = pruning.percentiles(scores)[idx]
    assert r.min() >= head - 1e-12
    # Without the shift, the Gaussian tail reaches into the head.
    g = pruning.percentiles(scores)[pruning.select(scores, keep_ratio, "gsample", seed=0)]
    assert g.min() < head


@pytest.mark.parametrize("mean", [0.3, 0.5, 0.7])
def test_selected_percentiles_concentrate_at_mean(scores, mean):
    idx = pruning.select(scores, 0.1, "shift_gsample", seed=0, head=0.0, mean=mean, std=0.05)
    r = pruning.percentiles(scores)[idx]
    assert abs(np.median(r) - mean) < 0.02
    assert np.mean(np.abs(r - mean) < 0.1) > 0.9


def test_top_bottom_block(scores):
    k = 1000
    order = np.argsort(-scores)
    np.testing.assert_array_equal(pruning.select(scores, 0.1, "top_k"), np.sort(order[:k]))
    np.testing.assert_array_equal(pruning.select(scores, 0.1, "bottom_k"), np.sort(order[-k:]))
    r = pruning.percentiles(scores)[pruning.select(scores, 0.1, "block", start=0.4)]
    assert r.min() == pytest.approx(0.4) and r.max() < 0.5


def test_random_ignores_scores(scores):
    a = pruning.select(scores, 0.2, "random", seed=5)
    b = pruning.select(-scores, 0.2, "random", seed=5)
    np.testing.assert_array_equal(a, b)
    assert (
        pruning.select(scores, 0.2, "alchemist", seed=1).tolist()
        == pruning.select(scores, 0.2, "shift_gsample", seed=1).tolist()
    )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(keep_ratio=0.0), "keep_ratio"),
        (dict(keep_ratio="half"), "keep_ratio must be a number"),
        (dict(keep_ratio=1.5), "keep_ratio"),
        (dict(keep_ratio=0.5, method="nope"), "unknown pruning method"),
        (dict(keep_ratio=0.9, head=0.5), "only"),
        (dict(keep_ratio=0.5, method="full"), "full"),
    ],
)
def test_bad_arguments(scores, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pruning.select(scores, **kwargs)


@pytest.mark.parametrize("bad", [[np.nan, np.nan], [np.inf, 1.0], [1.0, -np.inf], [np.inf, -np.inf]])
def test_nan_scores_rejected(scores, bad):
    """NaN, +inf only, -inf only, both: each named by its index."""
    scores = scores.copy()
    scores[[7, 9]] = bad
    found = [i for i, v in zip((7, 9), bad) if not np.isfinite(v)]
    with pytest.raises(
        ValueError, match=re.escape(f"{len(found)} scores are NaN or infinite (first at indices {found})")
    ):
        pruning.select(scores, 0.5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_descending_order_matches_stable_argsort(dtype):
    x = np.random.default_rng(2).standard_normal(50_000).astype(dtype)
    x[:500] = x[500:1000]  # ties
    x[1000:1010] = 0.0
    x[1010:1020] = -0.0
    x[1020:1025] = [np.finfo(dtype).max, -np.finfo(dtype).max, np.finfo(dtype).tiny, -np.finfo(dtype).tiny, 1e-45]
    np.testing.assert_array_equal(pruning.descending_order(x), np.argsort(-x, kind="stable"))


@pytest.mark.parametrize("method", ["shift_gsample", "gsample", "top_k", "bottom_k", "block"])
def test_shared_order_gives_the_same_subset_and_percentiles(scores, method):
    order = pruning.descending_order(scores)
    np.testing.assert_array_equal(
        pruning.select(scores, 0.3, method, seed=2, order=order), pruning.select(scores, 0.3, method, seed=2)
    )
    np.testing.assert_array_equal(pruning.percentiles(scores, order=order), pruning.percentiles(scores))


def test_order_of_wrong_shape_rejected(scores):
    with pytest.raises(ValueError, match=r"order must be the scores' descending order, shape \(10000,\)"):
        pruning.select(scores, 0.3, "top_k", order=np.arange(5))


# ---------------------------------------------------------------- ties: equal scores, equal chances

RANK_METHODS = ["shift_gsample", "gsample", "top_k", "bottom_k", "block"]


@pytest.mark.parametrize("method", RANK_METHODS + ["random"])
def test_all_tied_scores_keep_every_part_of_the_file(method):
    """The field report: select(zeros(1000), 0.5) kept none of rows 0-249. With every score equal,
    each quarter of the file keeps its share (hypergeometric: 125 ± 8)."""
    idx = pruning.select(np.zeros(1000, np.float32), 0.5, method, seed=0)
    per_quarter = np.bincount(idx // 250, minlength=4)
    assert np.all(np.abs(per_quarter - 125) < 40), per_quarter


@pytest.mark.parametrize("method", RANK_METHODS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_equal_ratings_equal_chances_wherever_they_are_in_the_file(method, dtype):
    """Integer ratings 1-5: samples with the same rating are kept at the same rate in the first and
    the second half of the file (over 5 seeds, ~5,000 draws per half and rating)."""
    ratings = np.random.default_rng(0).integers(1, 6, size=10_000).astype(dtype)
    half = np.arange(len(ratings)) >= len(ratings) // 2
    kept = np.zeros(len(ratings))
    for seed in range(5):
        kept[pruning.select(ratings, 0.5, method, seed=seed)] += 1 / 5
    for value in range(1, 6):
        first, second = kept[(ratings == value) & ~half].mean(), kept[(ratings == value) & half].mean()
        assert abs(first - second) < 0.06, (value, first, second)


def test_tied_percentiles_are_equal():
    r = pruning.percentiles(np.array([1.0, 1.0, 0.0, 0.0, 2.0, -0.0]))
    np.testing.assert_allclose(r, [(1 + 2) / 2 / 6, 1.5 / 6, 4 / 6, 4 / 6, 0.0, 4 / 6])
    assert np.unique(pruning.percentiles(np.zeros(1000, np.float32))).size == 1


def test_ties_broken_by_seed_and_shared_order_agrees():
    ratings = np.random.default_rng(1).integers(1, 6, size=1000).astype(np.float32)
    a, b = pruning.select(ratings, 0.3, "top_k", seed=0), pruning.select(ratings, 0.3, "top_k", seed=1)
    assert not np.array_equal(a, b)  # the boundary rating's members differ by seed
    np.testing.assert_array_equal(a, pruning.select(ratings, 0.3, "top_k", seed=0))
    assert ratings[a].min() == ratings[b].min()  # both are a top 30%
    order = pruning.descending_order(ratings)
    np.testing.assert_array_equal(pruning.select(ratings, 0.3, "top_k", seed=0, order=order), a)


def test_keep_ratio_that_keeps_no_sample_refused():
    """keep_ratio=0.0004 of 1000 samples rounds to 0: refused, not turned into one sample."""
    with pytest.raises(ValueError, match=r"keep_ratio=0.0004 keeps round\(0.0004 \* 1000\) = 0 of 1000 samples"):
        pruning.select(np.arange(1000.0), 0.0004, "top_k")
    assert len(pruning.select(np.arange(1000.0), 0.001, "top_k")) == 1
