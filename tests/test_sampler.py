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
    kw = dict(scores=SCORES, keep_ratio=0.5, method="shift_gsample", seed=4, drop_last=True)
    shards = _shards(replicas, **kw)
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


def test_draws_subset_from_scores_like_select():
    s = SubsetDistributedSampler(Sized(1000), scores=SCORES, keep_ratio=0.2, method="top_k")
    np.testing.assert_array_equal(s.subset, pruning.select(SCORES, 0.2, "top_k"))
    assert len(s) == 200


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(scores=SCORES[:10], keep_ratio=0.5), "10 scores for a dataset of 1000"),
        (dict(indices=[1, 1, 2]), "duplicates"),
        (dict(indices=[5, 1000]), r"\[0, 1000\)"),
        (dict(method="top_k"), "needs scores"),
        (dict(method="nonsense"), "unknown pruning method 'nonsense'"),
    ],
)
def test_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        SubsetDistributedSampler(Sized(1000), **kw)
