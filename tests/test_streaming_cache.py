"""The decoded-image cache of streaming scoring, on real emoji shards: scores identical to decoding,
later passes read the cache instead of the shards, a changed shard is decoded again, a bad shard
leaves no entry."""

import os

import numpy as np
import pytest
import torch
import webdataset as wds
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from alchemist_pl import decoded_cache
from alchemist_pl.data import SHARD_MTIME, DataError, decode_image, iter_samples
from alchemist_pl.scores import read_scores
from alchemist_pl.streaming import merge_parts, score_shards, shard_list

from .conftest import CONF


def _write(path, samples):
    with wds.TarWriter(str(path), mtime=SHARD_MTIME) as sink:
        for key, png, caption in samples:
            sink.write({"__key__": key, "png": png, "txt": caption})


@pytest.fixture(scope="module")
def real(emoji_dir):
    """60 real samples of the test split: (sample_id, png bytes, caption)."""
    out = []
    for raw in iter_samples(emoji_dir / "test"):
        out.append((raw.sample_id, raw.image, raw.caption))
        if len(out) == 60:
            return out


@pytest.fixture
def pool(tmp_path, real):
    """3 shards of 20 samples and an empty one."""
    folder = tmp_path / "pool"
    folder.mkdir()
    for i in range(3):
        _write(folder / f"pool-{i:06d}.tar", real[20 * i : 20 * (i + 1)])
    _write(folder / "pool-000003.tar", [])
    return folder


@pytest.fixture(scope="module")
def rater():
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("config")
    torch.manual_seed(0)
    return instantiate(cfg.rater).eval()


def _scores(rater, pool, out, cache_dir, decoded_dir=None, num_workers=0):
    """(sample_ids, scores) of a full streaming pass into the fresh folder ``out``."""
    shards = shard_list(pool)
    score_shards(
        rater, shards, out / "parts", 32, cache_dir, batch_size=8, num_workers=num_workers, decoded_dir=decoded_dir
    )
    ids, scores, _ = read_scores(merge_parts(shards, out / "parts", out / "scores.parquet", {}))
    return ids, scores


@pytest.mark.parametrize("num_workers", [0, 2])
def test_cached_scores_identical_to_decoded(rater, pool, cache_dir, tmp_path, num_workers):
    """First pass decodes and writes the cache (in the workers), second pass reads it: same scores, bit for bit."""
    decoded = tmp_path / "decoded"
    plain = _scores(rater, pool, tmp_path / "plain", cache_dir)
    first = _scores(rater, pool, tmp_path / "first", cache_dir, decoded, num_workers)
    for shard in shard_list(pool):
        entry = decoded_cache.load(decoded, shard, 32)
        raws = list(iter_samples(shard))
        assert entry.sample_ids == [r.sample_id for r in raws] and entry.captions == [r.caption for r in raws]
        expected = np.stack([decode_image(r, 32) for r in raws]) if raws else np.zeros((0, 3, 32, 32), np.uint8)
        np.testing.assert_array_equal(entry.images, expected)
    second = _scores(rater, pool, tmp_path / "second", cache_dir, decoded, num_workers)
    assert plain[0] == first[0] == second[0] and len(plain[0]) == 60 and plain[1].std() > 0
    np.testing.assert_array_equal(first[1], plain[1])
    np.testing.assert_array_equal(second[1], plain[1])


def test_second_pass_reads_the_cache_not_the_shard(rater, pool, cache_dir, tmp_path):
    """A shard damaged in place with its size and mtime restored (the documented blind spot) still scores
    from the cache, while decoding it fails: the second pass did not decode."""
    decoded = tmp_path / "decoded"
    first = _scores(rater, pool, tmp_path / "first", cache_dir, decoded)
    shard = pool / "pool-000001.tar"
    st = shard.stat()
    raw = bytearray(shard.read_bytes())
    at = raw.index(b"\x89PNG") + 40
    raw[at : at + 200] = bytes(200)  # zero 200 bytes inside the first image
    with open(shard, "r+b") as f:
        f.write(raw)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(DataError, match=r"pool-000001.tar: sample '.*': cannot decode image"):
        _scores(rater, pool, tmp_path / "plain", cache_dir)
    second = _scores(rater, pool, tmp_path / "second", cache_dir, decoded)
    np.testing.assert_array_equal(second[1], first[1])


def test_changed_shard_decoded_again(rater, pool, real, cache_dir, tmp_path):
    """Shard 0 rewritten with its images permuted among its keys (same size): the cache gives the new
    pixels' scores, not the stale ones, and keeps one entry per shard."""
    decoded = tmp_path / "decoded"
    before = _scores(rater, pool, tmp_path / "before", cache_dir, decoded)
    part = real[:20]
    _write(pool / "pool-000000.tar", [(k, png, c) for (k, _, c), (_, png, _) in zip(part, part[::-1])])
    plain = _scores(rater, pool, tmp_path / "plain", cache_dir)
    after = _scores(rater, pool, tmp_path / "after", cache_dir, decoded)
    assert not np.array_equal(plain[1][:20], before[1][:20])  # the rewrite changes the scores
    np.testing.assert_array_equal(after[1], plain[1])
    assert len(list((decoded / "decoded-r32").glob("pool-000000.tar-*"))) == 2  # one .json + one .u8


def test_bad_shard_leaves_no_entry(rater, pool, real, cache_dir, tmp_path):
    k, png, cap = real[0]
    _write(pool / "pool-000002.tar", [(k, png[:40], cap)])
    decoded = tmp_path / "decoded"
    for _ in range(2):  # not cached after the first failure: the second pass names the sample again
        with pytest.raises(DataError, match=rf"pool-000002.tar: sample '{k}': cannot decode image"):
            _scores(rater, pool, tmp_path / "out", cache_dir, decoded)
    assert not decoded_cache.has(decoded, pool / "pool-000002.tar", 32)
    assert decoded_cache.has(decoded, pool / "pool-000000.tar", 32)


def test_damaged_entry_named(rater, pool, cache_dir, tmp_path):
    decoded = tmp_path / "decoded"
    _scores(rater, pool, tmp_path / "first", cache_dir, decoded)
    (data,) = (decoded / "decoded-r32").glob("pool-000001.tar-*.u8")
    data.write_bytes(data.read_bytes()[:-3])
    with pytest.raises(
        DataError, match=rf"{data.name}: decoded-image cache entry of shard .*pool-000001.tar is damaged"
    ):
        _scores(rater, pool, tmp_path / "second", cache_dir, decoded)


def test_rate_streaming_cache_config_errors(make_cfg, tmp_path):
    """Refused before any training step, naming the key."""
    from alchemist_pl.stages import run

    from .test_streaming import RATE_TINY

    with pytest.raises(ValueError, match="rate.streaming_cache must be true or false, got 'yes'"):
        run(make_cfg(*RATE_TINY, "rate.streaming=true", "rate.streaming_cache=yes", output_dir=tmp_path / "a"))
    with pytest.raises(ValueError, match="rate.streaming_cache=true keeps the decoded images in data.cache_dir"):
        run(
            make_cfg(
                *RATE_TINY,
                "rate.streaming=true",
                "rate.streaming_cache=true",
                "data.cache_dir=null",
                output_dir=tmp_path / "b",
            )
        )
    assert not (tmp_path / "a" / "checkpoints").exists() and not (tmp_path / "b" / "checkpoints").exists()


def test_rate_stage_streaming_cache(make_cfg, pool, cache_dir, tmp_path):
    """rate.streaming_cache=true: the rate stage writes one cache entry per shard in data.cache_dir and
    its scores equal those of the uncached streaming run."""
    import shutil

    from alchemist_pl.stages import run

    from .test_streaming import RATE_TINY

    own_cache = tmp_path / "cache"  # the shared caption cache, copied: the decoded entries stay in tmp_path
    own_cache.mkdir()
    for f in cache_dir.glob("captions-*.pt"):
        shutil.copy(f, own_cache / f.name)
    for cached in ("false", "true"):
        run(
            make_cfg(
                *RATE_TINY,
                f"data.train_path={pool}",
                f"data.cache_dir={own_cache}",
                "rate.streaming=true",
                f"rate.streaming_cache={cached}",
                output_dir=tmp_path / cached,
            )
        )
    plain, cached = (read_scores(tmp_path / s / "scores.parquet") for s in ("false", "true"))
    assert cached[0] == plain[0] and len(plain[0]) == 60
    np.testing.assert_array_equal(cached[1], plain[1])
    assert all(decoded_cache.has(own_cache, s, 32) for s in shard_list(pool))
