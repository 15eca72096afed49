"""Streaming scoring over real emoji shards: same scores as the in-memory path, shards split across
ranks and workers, resumable per shard, bad input named."""

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from alchemist_pl.data import DataError, load_split
from alchemist_pl.scores import ScoresError, read_scores
from alchemist_pl.scoring import score_dataset
from alchemist_pl.streaming import merge_parts, part_path, score_shards, shard_list

from .test_data import _write_shard


@pytest.fixture(scope="module")
def pool(tmp_path_factory, emoji_dir):
    """4 shards cut from the real test split: 3 x 20 samples and an empty one."""
    from alchemist_pl.data import iter_samples

    raws = []
    for raw in iter_samples(emoji_dir / "test"):
        raws.append({"__key__": raw.sample_id, "png": raw.image, "txt": raw.caption})
        if len(raws) == 60:
            break
    folder = tmp_path_factory.mktemp("pool")
    for i in range(3):
        _write_shard(folder / f"pool-{i:06d}.tar", raws[20 * i : 20 * (i + 1)])
    _write_shard(folder / "pool-000003.tar", [])
    return folder


@pytest.fixture(scope="module")
def rater(make_cfg_module):
    torch.manual_seed(0)
    return instantiate(make_cfg_module().rater).eval()


@pytest.fixture(scope="module")
def make_cfg_module(emoji_dir):
    from hydra import compose, initialize_config_dir

    from .conftest import CONF

    def _make(*overrides):
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
            return compose("config", overrides=list(overrides))

    return _make


@pytest.fixture(scope="module")
def in_memory(pool, rater, cache_dir):
    ds = load_split(pool, 32, cache_dir)
    return ds.sample_ids, score_dataset(rater, ds, batch_size=16)


def test_streamed_scores_equal_in_memory_scores(pool, rater, cache_dir, in_memory, tmp_path):
    shards = shard_list(pool)
    written = score_shards(rater, shards, tmp_path / "parts", 32, cache_dir, batch_size=8)
    assert sorted(p.name for p in written) == [f"pool-00000{i}.tar.parquet" for i in range(4)]
    out = merge_parts(shards, tmp_path / "parts", tmp_path / "scores.parquet", {"stage": "rate"})
    ids, scores, meta = read_scores(out)
    assert ids == in_memory[0] and meta["shards"] == 4
    np.testing.assert_allclose(scores, in_memory[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("world_size,num_workers", [(2, 0), (3, 2)])
def test_shards_split_across_ranks_and_workers(pool, rater, cache_dir, in_memory, tmp_path, world_size, num_workers):
    shards = shard_list(pool)
    per_rank = [
        score_shards(
            rater,
            shards,
            tmp_path / "parts",
            32,
            cache_dir,
            batch_size=8,
            num_workers=num_workers,
            rank=r,
            world_size=world_size,
        )
        for r in range(world_size)
    ]
    names = [p.name for ps in per_rank for p in ps]
    assert sorted(names) == sorted({p.name for p in sum(per_rank, [])})  # disjoint
    assert len(names) == 4  # covering
    assert sorted(p.name for p in per_rank[0]) == [s.name + ".parquet" for s in shards[0::world_size]]
    ids, scores, _ = read_scores(merge_parts(shards, tmp_path / "parts", tmp_path / "s.parquet", {}))
    assert ids == in_memory[0]
    np.testing.assert_allclose(scores, in_memory[1], rtol=1e-5, atol=1e-6)


def test_rerun_skips_finished_shards(pool, rater, cache_dir, in_memory, tmp_path):
    shards = shard_list(pool)
    score_shards(rater, shards, tmp_path / "parts", 32, cache_dir, batch_size=8)
    kept = part_path(tmp_path / "parts", shards[0].name)
    stamp = kept.stat().st_mtime_ns
    part_path(tmp_path / "parts", shards[1].name).unlink()  # as if killed while scoring shard 1
    with pytest.raises(
        ScoresError, match=r"pool-000001.tar.parquet: missing: shard .*pool-000001.tar has not been scored"
    ):
        merge_parts(shards, tmp_path / "parts", tmp_path / "s.parquet", {})
    again = score_shards(rater, shards, tmp_path / "parts", 32, cache_dir, batch_size=8)
    assert [p.name for p in again] == ["pool-000001.tar.parquet"]
    assert kept.stat().st_mtime_ns == stamp
    _, scores, _ = read_scores(merge_parts(shards, tmp_path / "parts", tmp_path / "s.parquet", {}))
    np.testing.assert_allclose(scores, in_memory[1], rtol=1e-5, atol=1e-6)


def test_bad_sample_named_and_finished_shards_kept(pool, rater, cache_dir, tmp_path, real_samples):
    import shutil

    folder = tmp_path / "pool"
    shutil.copytree(pool, folder)
    k, png, cap = real_samples[0]
    _write_shard(folder / "pool-000002.tar", [{"__key__": k, "png": png[:40], "txt": cap}])
    shards = shard_list(folder)
    with pytest.raises(DataError, match=rf"pool-000002.tar: sample '{k}': cannot decode image"):
        score_shards(rater, shards, tmp_path / "parts", 32, cache_dir, batch_size=8)
    assert sorted(p.name for p in (tmp_path / "parts").glob("*.parquet")) == [
        "pool-000000.tar.parquet",
        "pool-000001.tar.parquet",
    ]


def test_duplicate_sample_across_shards_refused(pool, rater, cache_dir, tmp_path):
    import shutil

    folder = tmp_path / "pool"
    folder.mkdir()
    shutil.copy(pool / "pool-000000.tar", folder / "a.tar")
    shutil.copy(pool / "pool-000000.tar", folder / "b.tar")
    shards = shard_list(folder)
    score_shards(rater, shards, tmp_path / "parts", 32, cache_dir, batch_size=8)
    with pytest.raises(ScoresError, match=r"parts: sample_id '.*' occurs in more than one shard"):
        merge_parts(shards, tmp_path / "parts", tmp_path / "s.parquet", {})


def test_no_shards(tmp_path):
    with pytest.raises(DataError, match="holds no \\*.tar webdataset shards"):
        shard_list(tmp_path)


RATE_TINY = [
    "+experiment=rate",
    "debug=smoke",
    "logger=csv",
    "data.limit_val=16",
    "rate.batch_size=8",
    "rate.val_batch_size=8",
    "rate.max_epochs=1",
    "rate.score_batch_size=16",
]


def test_rate_stage_streaming_scores_equal_in_memory_scores(pool, make_cfg, tmp_path):
    """rate.streaming=true: the same rater (same seed) and the same rater scores, scored shard by shard (in memory
    the default rate.scores=auto writes them to rater-scores.parquet, streaming to scores.parquet)."""
    from alchemist_pl.stages import run

    summaries = {}
    for streaming in ("false", "true"):
        out = tmp_path / streaming
        summaries[streaming] = run(
            make_cfg(*RATE_TINY, f"data.train_path={pool}", f"rate.streaming={streaming}", output_dir=out)
        )
    mem, stream = (
        read_scores(tmp_path / "false" / "rater-scores.parquet"),
        read_scores(tmp_path / "true" / "scores.parquet"),
    )
    assert (mem[2]["scores_from"], stream[2]["scores_from"]) == ("value_gap_caption", "rater")
    raters = [torch.load(tmp_path / s / "rater.pt")["state_dict"] for s in ("false", "true")]
    assert all(torch.equal(raters[0][k], raters[1][k]) for k in raters[0])  # the same saved rater
    assert stream[0] == mem[0] and len(mem[0]) == 60 and mem[1].std() > 0
    np.testing.assert_allclose(stream[1], mem[1], rtol=1e-5, atol=1e-6)
    assert (mem[2]["scoring"], stream[2]["scoring"], stream[2]["shards"]) == ("in_memory", "streaming", 4)
    for key in ("dataset_fingerprint", "stage", "train_path", "version", "commit", "world_size"):
        assert stream[2][key] == mem[2][key], key
    assert stream[2]["rater_checkpoint"] == str(tmp_path / "true" / "rater.pt")
    assert not (tmp_path / "true" / "score_parts").exists()  # parts merged and removed
    assert (
        summaries["true"]["metrics"]["samples_rated"] == 60 and summaries["true"]["metrics"]["scoring"] == "streaming"
    )


def test_rate_streaming_config_errors(make_cfg, tmp_path):
    from alchemist_pl.stages import run

    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "metadata.jsonl").write_text("")
    with pytest.raises(
        ValueError,
        match=r"rate.streaming=true scores webdataset \*.tar shards, but "
        r"data.train_path=.*images is an image folder",
    ):
        run(make_cfg(*RATE_TINY, f"data.train_path={folder}", "rate.streaming=true", output_dir=tmp_path / "a"))
    with pytest.raises(ValueError, match="rate.streaming must be true or false, got 'yes'"):
        run(make_cfg(*RATE_TINY, "rate.streaming=yes", output_dir=tmp_path / "b"))


@pytest.mark.slow
def test_rate_streaming_on_two_ranks(pool, cache_dir, tmp_path):
    """trainer=ddp_cpu: each rank scores its shards (0, 2 / 1, 3), rank 0 merges; equal to scoring
    the saved rater in memory in one process."""
    from .test_ddp import cli

    cli(*RATE_TINY, "trainer=ddp_cpu", f"data.train_path={pool}", "rate.streaming=true", f"hydra.run.dir={tmp_path}")
    ids, scores, meta = read_scores(tmp_path / "scores.parquet")
    assert meta["world_size"] == 2 and meta["scoring"] == "streaming" and meta["shards"] == 4
    saved = torch.load(tmp_path / "rater.pt")
    rater = instantiate(saved["config"])
    rater.load_state_dict(saved["state_dict"])
    ds = load_split(pool, 32, cache_dir)
    assert ids == ds.sample_ids
    np.testing.assert_allclose(scores, score_dataset(rater, ds, batch_size=16), rtol=1e-5, atol=1e-6)
