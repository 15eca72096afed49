"""The O(N) draws of pruning against plain references: the k-th largest value by radix select,
the Gaussian draw's k largest Gumbel keys, and the kept samples with their ranks put in index order."""

import numpy as np
import pytest

from alchemist_pl import subset_draws


def _values(kind: str, m: int, dtype) -> np.ndarray:
    rng = np.random.default_rng(7)
    if kind == "normal":
        return rng.standard_normal(m).astype(dtype)
    if kind == "ties":  # nine values: the k-th largest sits inside a group of equal values
        return np.round(rng.standard_normal(m) * 2).astype(dtype)
    # signed zeros (one value), tiny and huge magnitudes: values in far-apart and neighbouring bins
    return rng.choice(np.array([0.0, -0.0, 1e-40, -1e-40, 3e38, -3e38, 1.0, -1.0], dtype=dtype), m)


@pytest.mark.parametrize("kind", ["normal", "ties", "zeros"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kth_largest_is_the_sorted_values_kth_from_the_top(monkeypatch, kind, dtype):
    """Blocks of 100 values (the counts and the gathered bin span blocks), every k from 1 to m."""
    monkeypatch.setattr(subset_draws, "_DRAWS", 100)
    x = _values(kind, 1000, dtype)
    ordered = np.sort(x)
    for k in range(1, len(x) + 1):
        got = subset_draws.kth_largest(x, k)
        assert got == ordered[len(x) - k] and got.dtype == x.dtype, k


def test_kth_largest_refuses_k_outside_1_to_m():
    for k in (0, 4):
        with pytest.raises(ValueError, match="k must be in"):
            subset_draws.kth_largest(np.zeros(3, np.float32), k)


def _gumbel_reference(twice: np.ndarray, k: int, n: int, mean: float, std: float, seed: int) -> np.ndarray:
    """The Gumbel keys of Eq. 11 in float32, all the uniform draws from one call, and the k largest
    keys taken by one stable sort (equal keys: the first positions)."""
    r = (twice * 0.5).astype(np.float32) / np.float32(n)
    logw = np.float32(-1.0 / (2.0 * std * std)) * np.square(r - np.float32(mean))
    u = np.maximum(np.random.default_rng(seed).random(len(twice), dtype=np.float32), np.float32(1e-38))
    keys = logw - np.log(-np.log(u))
    keep = np.zeros(len(twice), dtype=bool)
    keep[np.argsort(-keys, kind="stable")[:k]] = True
    return keep


@pytest.mark.parametrize("overwrite", [False, True])
def test_gumbel_top_k_keeps_the_k_largest_keys(monkeypatch, overwrite):
    """Blocks of 64 draws; ranks with many ties (so many equal weights), keep 10%, half and all but one."""
    monkeypatch.setattr(subset_draws, "_DRAWS", 64)
    n = 1000
    twice = np.sort(np.random.default_rng(3).integers(0, 60, 700) * 30).astype(np.int32)
    for k in (70, 350, 699):
        want = _gumbel_reference(twice, k, n, 0.5, 0.2, seed=k)
        got = subset_draws.gumbel_top_k(twice.copy(), k, n, 0.5, 0.2, np.random.default_rng(k), overwrite=overwrite)
        np.testing.assert_array_equal(got, want)
        assert got.sum() == k


@pytest.mark.parametrize("block", [4, 1 << 20])
def test_by_index_puts_the_ranks_in_index_order(monkeypatch, block):
    """Samples in a drawn order with their ranks, the top sample (twice its rank = 0) among them;
    read in blocks of 4 (blocks without a kept sample, blocks of the samples and of the n rows) or one."""
    monkeypatch.setattr(subset_draws, "_DRAWS", block)
    n = 50
    samples = np.array([17, 3, 44, 0, 25, 9], dtype=np.int32)
    twice = np.array([0, 4, 4, 9, 30, 97], dtype=np.int32)
    idx, pct = subset_draws.by_index(n, samples, twice)
    order = np.argsort(samples)
    np.testing.assert_array_equal(idx, samples[order])
    np.testing.assert_array_equal(pct, twice[order] / (2.0 * n))
    np.testing.assert_array_equal(subset_draws.by_index(n, samples), samples[order])
    np.testing.assert_array_equal(twice, [0, 4, 4, 9, 30, 97])  # the caller's ranks unchanged
    keep = np.array([True, False, True, True, False, True])  # candidates: only these are meant
    idx, pct = subset_draws.by_index(n, samples, twice, keep)
    order = np.argsort(samples[keep])
    np.testing.assert_array_equal(idx, samples[keep][order])
    np.testing.assert_array_equal(pct, twice[keep][order] / (2.0 * n))
    np.testing.assert_array_equal(subset_draws.by_index(n, samples, keep=keep), np.sort(samples[keep]))
