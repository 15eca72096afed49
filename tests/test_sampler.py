import numpy as np
import pytest
from torch.utils.data import DistributedSampler

from alchemist_pl import pruning
from alchemist_pl.datamodule import RatingDataModule
from alchemist_pl.sampler import StreamDistributedSampler, SubsetDistributedSampler


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


def _stream(n, per_rank, replicas, epochs, seed=0):
    """[epoch][rank] -> the draws of StreamDistributedSampler."""
    out = []
    for e in range(epochs):
        row = []
        for r in range(replicas):
            s = StreamDistributedSampler(Sized(n), per_rank, num_replicas=replicas, rank=r, seed=seed)
            s.set_epoch(e)
            row.append(list(s))
        out.append(row)
    return out


@pytest.mark.parametrize("n,per_rank,replicas,epochs", [(10, 3, 1, 7), (10, 4, 2, 5), (7, 5, 3, 4), (100, 6, 2, 3)])
def test_stream_sampler_covers_evenly(n, per_rank, replicas, epochs):
    draws = _stream(n, per_rank, replicas, epochs)
    assert all(len(d) == per_rank for row in draws for d in row)
    # the ranks' draws of each epoch interleave into one stream; over the run it is shuffle after
    # shuffle: every sample drawn as often as any other, up to one, and never twice before all once
    stream = [row[r][i] for row in draws for i in range(per_rank) for r in range(replicas)]
    counts = np.bincount(stream, minlength=n)
    assert counts.max() - counts.min() <= 1 and len(stream) == per_rank * replicas * epochs
    for j in range(len(stream) // n):
        assert sorted(stream[j * n : (j + 1) * n]) == list(range(n))
    rest = stream[len(stream) // n * n :]
    assert len(set(rest)) == len(rest)


def test_stream_sampler_is_seeded_and_a_distributed_sampler():
    a, b, c = (_stream(50, 20, 2, 3, seed=s) for s in (1, 1, 2))
    assert a == b and a != c
    assert a[0] != a[1]  # each epoch continues the stream
    assert isinstance(StreamDistributedSampler(Sized(5), 3), DistributedSampler)
    with pytest.raises(ValueError, match="samples_per_rank"):
        StreamDistributedSampler(Sized(5), 0)


def test_rating_budget_in_pool_passes(emoji_dir, cache_dir):
    """rate.pool_passes: the pool batches of all epochs cover the pool that many times, evenly,
    with D_val cycled to as many batches, whatever D_val's size."""
    dm = RatingDataModule(
        emoji_dir / "val", emoji_dir / "test", batch_size=16, val_batch_size=16, limit_train=96, limit_val=40,
        pool_passes=2.5, epochs=3, resolution=16, cache_dir=cache_dir,
    )  # fmt: skip
    dm.setup("fit")
    loader = dm.train_dataloader()
    iter(loader)
    assert dm.iterations_per_epoch() == 5 and len(loader) == 5  # ceil(2.5 * 96 / (16 * 3)); D_val alone gives 2
    seen, val_seen = [], []
    for epoch in range(3):
        for sub in loader.flattened:
            sub.sampler.set_epoch(epoch)
        for batch, _, _ in iter(loader):
            seen += batch["train"]["index"].tolist()
            val_seen += batch["val"]["index"].tolist()
    assert len(seen) == 240 and np.bincount(seen, minlength=96).min() >= 2  # 2.5 passes: each sample 2 or 3 times
    assert np.bincount(seen, minlength=96).max() == 3 and len(val_seen) == 240 and set(val_seen) == set(range(40))
    with pytest.raises(ValueError, match="rate.pool_passes"):
        RatingDataModule("a", "b", pool_passes=0)


def test_stream_sampler_resumes_its_epoch_and_position():
    whole = StreamDistributedSampler(Sized(30), 12, num_replicas=2, rank=1, seed=3)
    whole.set_epoch(2)
    expected = list(whole)
    cut = StreamDistributedSampler(Sized(30), 12, num_replicas=2, rank=1, seed=3)
    cut.set_epoch(2)
    it = iter(cut)
    head = [next(it) for _ in range(5)]
    state = cut.state_dict()
    fresh = StreamDistributedSampler(Sized(30), 12, num_replicas=2, rank=1, seed=3)  # epoch 0 until restored
    fresh.load_state_dict(state)
    assert state == {"epoch": 2, "yielded": 5} and head + list(fresh) == expected
    assert list(fresh) == expected  # the next epoch pass starts from its beginning
