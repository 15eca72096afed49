"""Planted web-style noise on the real emoji pool: counts, ground truth, what each kind does, determinism."""

import tarfile

import numpy as np
import pytest
from scipy import ndimage

from alchemist_pl.corruption import (
    CLEAN,
    KINDS,
    build_corrupted_pool,
    corrupt_image,
    ground_truth_for,
    read_ground_truth,
)
from alchemist_pl.data import SHARD_MTIME, decode_image, iter_samples


@pytest.fixture(scope="module")
def pool(tmp_path_factory, emoji_dir):
    out = tmp_path_factory.mktemp("cpool") / "pool"
    return build_corrupted_pool(emoji_dir / "train", out, fraction=0.5, seed=3, pool_size=120)


def _read(path):
    return {r.sample_id: (decode_image(r, 32), r.caption) for r in iter_samples(path)}


def test_counts_ids_and_ground_truth(pool, emoji_dir):
    clean = dict(list(_read(emoji_dir / "train").items())[:120])
    bad = _read(pool / "train")
    gt = read_ground_truth(pool / "corruptions.parquet")
    assert list(bad) == list(clean) == list(gt)  # same ids, same order, one truth row each
    kinds = np.array(list(gt.values()))
    assert (kinds == CLEAN).sum() == 60
    assert all((kinds == k).sum() == 10 for k in KINDS)  # split evenly
    for sid, kind in gt.items():
        (img, cap), (img0, cap0) = bad[sid], clean[sid]
        if kind == CLEAN:
            assert cap == cap0 and np.array_equal(img, img0)
        elif kind == "caption_swap":
            assert cap != cap0 and np.array_equal(img, img0)
        elif kind in ("blur", "noise", "blank", "collage"):
            assert cap == cap0 and not np.array_equal(img, img0)
    assert ground_truth_for(pool / "train") == pool / "corruptions.parquet"


def test_each_kind_does_what_it_says(emoji_dir):
    raws = [r for _, r in zip(range(4), iter_samples(emoji_dir / "train"))]
    imgs = [decode_image(r, 32) for r in raws]
    rng = np.random.default_rng(0)
    x = imgs[0]

    def lap_var(a):
        return ndimage.laplace(a.astype(np.float32).mean(0)).var()

    assert lap_var(corrupt_image("blur", x, rng)) < 0.5 * lap_var(x)
    assert np.abs(corrupt_image("noise", x, rng).astype(int) - x).mean() > 40
    blank = corrupt_image("blank", x, rng)
    assert blank.reshape(3, -1).std(1).max() < 8
    collage = corrupt_image("collage", x, rng, imgs[1:4])
    assert not np.array_equal(collage[:, :16, :16], collage[:, 16:, 16:])
    dup = corrupt_image("near_duplicate", x, rng, [imgs[1]])
    assert np.abs(dup.astype(int) - imgs[1]).mean() < np.abs(dup.astype(int) - x).mean()
    with pytest.raises(ValueError, match="unknown corruption kind"):
        corrupt_image("jpeg", x, rng)


def test_deterministic_idempotent_and_guarded(pool, emoji_dir, tmp_path):
    again = build_corrupted_pool(emoji_dir / "train", tmp_path / "again", fraction=0.5, seed=3, pool_size=120)
    a, b = _read(pool / "train"), _read(again / "train")
    assert all(np.array_equal(a[k][0], b[k][0]) and a[k][1] == b[k][1] for k in a)
    # integer member mtimes: no PAX header per member, and the same bytes on a rebuild
    shards = sorted((again / "train").glob("*.tar"))
    assert [x.read_bytes() for x in shards] == [(pool / "train" / x.name).read_bytes() for x in shards]
    with tarfile.open(shards[0]) as tf:
        assert all(not m.pax_headers and m.mtime == SHARD_MTIME for m in tf.getmembers())
    stamp = (pool / "manifest.json").stat().st_mtime_ns
    build_corrupted_pool(emoji_dir / "train", pool, fraction=0.5, seed=3, pool_size=120)  # reused, not rebuilt
    assert (pool / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="other parameters"):
        build_corrupted_pool(emoji_dir / "train", pool, fraction=0.2, seed=3, pool_size=120)
    with pytest.raises(ValueError, match="fraction"):
        build_corrupted_pool(emoji_dir / "train", tmp_path / "x", fraction=1.0)
    with pytest.raises(ValueError, match="kinds"):
        build_corrupted_pool(emoji_dir / "train", tmp_path / "x", kinds=["rotate"])


def test_config_points_only_the_pool_at_the_noise(make_cfg):
    cfg = make_cfg("corruption=web", "corruption.pool_size=100")
    assert cfg.data.train_path == f"{cfg.corruption.dir}/train"
    assert cfg.data.val_path.endswith("emoji/val") and cfg.data.test_path.endswith("emoji/test")
    assert cfg.evaluator.encoder.data_path == cfg.corruption.source  # the evaluator never sees the noise
