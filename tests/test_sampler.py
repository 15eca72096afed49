import numpy as np
import pytest
from torch.utils.data import DistributedSampler

from alchemist_pl import pruning
from alchemist_pl.sampler import SubsetDistributedSampler


class Sized:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


SCORES = np.random.default_rng(1).normal(size=1000).astype(np.float32)


def _shards(replicas, epoch=0, **kw):
    out = []
    for rank in range(replicas):
        s = SubsetDistributedSampler(Sized(1000), num_replicas=replicas, rank=rank, **kw)
        s.set_epoch(epoch)
        out.append(list(s))
    return out


def test_is_a_distributed_sampler():
    assert isinstance(SubsetDistributedSampler(Sized(10)), DistributedSampler)


@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_shards_disjoint_and_cover_subset(replicas):
    indices, _ = pruning.choose_subset(1000, scores=SCORES, keep_ratio=0.5, method="shift_gsample", seed=4)
    shards = _shards(replicas, indices=indices, seed=4, drop_last=True)
    subset = set(pruning.select(SCORES, 0.5, "shift_gsample", seed=4).tolist())
    flat = [i for s in shards for i in s]
    assert len(flat) == len(set(flat))  # disjoint, no repeats
    assert set(flat) <= subset
    assert len(subset) - len(flat) < replicas  # drop_last drops at most replicas - 1
    assert len({len(s) for s in shards}) == 1


def test_padding_covers_everything():
    shards = _shards(3, indices=np.arange(0, 100, 3))  # 34 samples over 3 ranks
    flat = [i for s in shards for i in s]
    assert set(flat) == set(range(0, 100, 3))
    assert all(len(s) == 12 for s in shards)


def test_epoch_reshuffles_deterministically():
    a0, a1 = _shards(2, epoch=0, indices=np.arange(200)), _shards(2, epoch=1, indices=np.arange(200))
    assert a0 != a1
    assert a0 == _shards(2, epoch=0, indices=np.arange(200))
    assert sorted(a0[0] + a0[1]) == sorted(a1[0] + a1[1]) == list(range(200))


def test_choose_subset_draws_like_select_with_percentiles():
    indices, pct = pruning.choose_subset(1000, scores=SCORES, keep_ratio=0.2, method="top_k")
    np.testing.assert_array_equal(indices, pruning.select(SCORES, 0.2, "top_k"))
    np.testing.assert_array_equal(pct, pruning.percentiles(SCORES)[indices])
    assert pct.max() < 0.2  # top_k keeps the top 20% of ranks
    assert len(SubsetDistributedSampler(Sized(1000), indices=indices)) == 200


def test_choose_subset_without_scores():
    full, pct = pruning.choose_subset(50, method="full")
    np.testing.assert_array_equal(full, np.arange(50))
    assert pct is None
    random, pct = pruning.choose_subset(50, keep_ratio=0.4, method="random", seed=3)
    np.testing.assert_array_equal(random, pruning.select(np.zeros(50), 0.4, "random", seed=3))
    assert pct is None
    given, _ = pruning.choose_subset(50, indices=[7, 3], scores=np.arange(50.0), method="top_k")
    np.testing.assert_array_equal(given, [7, 3])  # a given subset wins over scores


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(scores=SCORES[:10], keep_ratio=0.5, method="top_k"), "10 scores for a dataset of 1000"),
        (dict(indices=[1, 1, 2]), "duplicates"),
        (dict(indices=[5, 1000]), r"\[0, 1000\)"),
        (dict(indices=[]), "empty"),
        (dict(method="top_k"), "needs scores"),
        (dict(method="nonsense"), "unknown pruning method 'nonsense'"),
    ],
)
def test_choose_subset_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        pruning.choose_subset(1000, **kw)


@pytest.mark.parametrize("indices,match", [([5, 1000], r"\[0, 1000\)"), ([], "empty")])
def test_sampler_bad_indices(indices, match):
    with pytest.raises(ValueError, match=match):
        SubsetDistributedSampler(Sized(1000), indices=indices)
