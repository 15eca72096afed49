"""Near-duplicate removal (alchemist_pl/dedup.py) on real emoji with the planted ``near_duplicate``
corruption, its exact banded search, and its hook in the prune stage."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from alchemist_pl.corruption.kinds import corrupt_image
from alchemist_pl.data import iter_samples
from alchemist_pl.dedup import deduplicate, group, hamming, image_hashes, matches
from alchemist_pl.errors import DataError
from alchemist_pl.images import decode_image
from alchemist_pl.scores import read_subset, write_scores
from alchemist_pl.stages import run
from alchemist_pl.stages.pipeline import _own_prune, _train_config
from alchemist_pl.stages.prune import prune_file

OPTIONS = {"hash": "phash", "max_distance": 2, "max_shift": 2, "resolution": 32}
DEDUP = ("dedup.enabled=true", "dedup.hash=phash", "dedup.max_distance=2", "dedup.max_shift=2")  # as OPTIONS
SOURCES = 6  # the first real test emoji copied as near-duplicates
COPIES = 3  # near-duplicates of each, drawn with their own seeds


@pytest.fixture(scope="module")
def emoji(emoji_dir):
    """The first 24 real test emoji: ([24] sample_ids, [24] uint8 [3, 32, 32] images, [24] png bytes)."""
    ids, images, pngs = [], [], []
    for raw in iter_samples(emoji_dir / "test"):
        ids.append(raw.sample_id)
        images.append(decode_image(raw, 32))
        pngs.append(raw.image)
        if len(ids) == 24:
            return ids, images, pngs


def _near_duplicates(images):
    """([SOURCES * COPIES] planted near-duplicates, [same] index of the source, the (dx, dy) shifts drawn)."""
    copies, source, moved = [], [], []
    for s in range(SOURCES):
        for c in range(COPIES):
            seed = 100 * s + c
            moved.append(tuple(np.random.default_rng(seed).integers(-2, 3, size=2)))  # corrupt_image's first draw
            copies.append(corrupt_image("near_duplicate", images[-1 - s], np.random.default_rng(seed), [images[s]]))
            source.append(s)
    return copies, np.array(source), moved


def test_planted_near_duplicates_are_grouped_with_their_source_and_distinct_emoji_are_not(emoji):
    _, images, _ = emoji
    copies, source, moved = _near_duplicates(images)
    assert {abs(d) for m in moved for d in m} >= {1, 2}  # the corruption's 1-2 px shifts are covered
    hashes = np.array([image_hashes(x, "phash", 2) for x in [*images, *copies]])
    groups = group(hashes, 2)
    n = len(images)
    assert (groups[:n][SOURCES:] == -1).all(), "distinct real emoji were grouped"
    assert len(set(groups[:SOURCES].tolist())) == SOURCES, "two different sources share a group"
    np.testing.assert_array_equal(groups[n:], groups[source])


def test_without_translations_the_shifted_copies_are_missed(emoji):
    """The reason for ``max_shift``: the untranslated perceptual hash of a 32 px emoji moved 1-2 px is
    far from its source's."""
    _, images, _ = emoji
    copies, source, moved = _near_duplicates(images)
    hashes = np.array([image_hashes(x, "phash", 0) for x in [*images, *copies]])
    groups = group(hashes, 2)
    shifted = np.array([max(abs(d) for d in m) > 0 for m in moved])
    caught = (groups[len(images) :] == groups[source]) & (groups[source] >= 0)
    assert caught[~shifted].all()  # an unmoved copy (only re-lit) is still found
    caught = caught[shifted]
    assert caught.mean() < 0.5


@pytest.mark.parametrize("max_distance", [0, 1, 2, 3, 5, 9])
def test_banded_search_finds_exactly_the_brute_force_pairs(max_distance):
    rng = np.random.default_rng(max_distance)
    base = np.unique(rng.integers(0, 2**63, size=400, dtype=np.int64).astype(np.uint64) * np.uint64(2))
    # queries: copies of base hashes with 0..max_distance+2 random bits flipped, and unrelated hashes
    flips = [rng.choice(64, size=rng.integers(0, max_distance + 3), replace=False) for _ in range(1500)]
    near = [base[rng.integers(len(base))] ^ np.uint64(sum(1 << int(b) for b in f)) for f in flips]
    queries = np.unique(np.concatenate([near, rng.integers(0, 2**63, size=200).astype(np.uint64)]))
    qi, bj = matches(queries, base, max_distance)
    brute = np.argwhere(hamming(queries[:, None], base[None, :]) <= max_distance)
    np.testing.assert_array_equal(np.stack([qi, bj], axis=1), brute)
    assert len(brute) > 200  # the planted pairs are there to be found


def _pool(tmp_path, pngs, copies):
    """An image folder of the real emoji and the planted copies; sample_ids e0.. and d0.."""
    folder = tmp_path / "pool"
    folder.mkdir()
    rows = []
    for i, png in enumerate(pngs):
        (folder / f"e{i}.png").write_bytes(png)
        rows.append({"file_name": f"e{i}.png", "text": f"emoji {i}"})
    for i, x in enumerate(copies):
        buf = io.BytesIO()
        Image.fromarray(x.transpose(1, 2, 0)).save(buf, format="PNG")
        (folder / f"d{i}.png").write_bytes(buf.getvalue())
        rows.append({"file_name": f"d{i}.png", "text": f"copy {i}"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder, [r["file_name"] for r in rows]


def test_the_higher_scored_member_of_a_group_is_kept(emoji, tmp_path):
    _, images, pngs = emoji
    copies, source, _ = _near_duplicates(images)
    folder, ids = _pool(tmp_path, pngs, copies)
    rng = np.random.default_rng(0)
    scores = rng.permutation(len(ids)).astype(np.float32)
    eligible, groups, report = deduplicate(folder, ids, scores, OPTIONS, seed=0, source="scores")
    assert report["groups"] == SOURCES and report["removed"] == SOURCES * COPIES
    for g in range(SOURCES):
        members = np.flatnonzero(groups == g)
        assert eligible[members].sum() == 1
        assert eligible[members[np.argmax(scores[members])]], f"group {g}: a lower-scored member was kept"
    assert eligible[groups < 0].all()


def test_scored_samples_missing_from_the_pool_are_refused(emoji, tmp_path):
    _, images, pngs = emoji
    folder, ids = _pool(tmp_path, pngs[:4], [])
    with pytest.raises(DataError, match=r"my-scores.parquet: 1 of 5 scored samples are not in the pool.*'ghost'"):
        deduplicate(folder, [*ids, "ghost"], np.zeros(5), OPTIONS, seed=0, source="my-scores.parquet")


def test_an_unreadable_image_names_the_sample(emoji, tmp_path):
    _, images, pngs = emoji
    folder, ids = _pool(tmp_path, pngs[:4], [])
    (folder / "e2.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"sample 'e2.png': cannot decode image"):
        deduplicate(folder, ids, np.zeros(4), OPTIONS, seed=0, source="scores")


def _prune(make_cfg, tmp_path, folder, scores, name, *overrides):
    cfg = make_cfg(
        "+experiment=prune",
        "~logger",
        f"scores_path={scores}",
        f"data.train_path={folder}",
        "method=top_k",
        *overrides,
        output_dir=tmp_path / name,
    )
    return run(cfg), tmp_path / name


def test_prune_stage_removes_duplicates_before_top_k_and_keep_ratio_counts_the_whole_pool(emoji, make_cfg, tmp_path):
    _, images, pngs = emoji
    copies, source, _ = _near_duplicates(images)
    folder, ids = _pool(tmp_path, pngs, copies)
    scores = np.zeros(len(ids), dtype=np.float32)
    scores[len(pngs) :] = 10.0 + np.arange(len(copies))  # the copies score highest: top_k alone keeps them all
    scores[:SOURCES] = 5.0
    path = write_scores(tmp_path / "scores.parquet", ids, scores, {})
    summary, out = _prune(make_cfg, tmp_path, folder, path, "dedup", *DEDUP, "keep_ratio=0.5")
    kept, _ = read_subset(out / "subset.parquet")
    assert len(kept) == round(0.5 * len(ids)) and summary["metrics"]["dedup"]["removed"] == SOURCES * COPIES
    kept_sources = {int(k[1:-4]) for k in kept if k.startswith("d")}
    assert {source[i] for i in kept_sources} == set(range(SOURCES))  # one copy of each source: its best
    assert not any(f"e{s}.png" in kept for s in range(SOURCES))
    dup = pq.read_table(out / "duplicates.parquet").to_pydict()
    assert len(dup["sample_id"]) == SOURCES * (COPIES + 1) and sum(dup["kept"]) == SOURCES
    with pytest.raises(ValueError, match=r"only 24 remain after dedup removed 18 near-duplicates"):
        _prune(make_cfg, tmp_path, folder, path, "too-many", *DEDUP, "keep_ratio=0.6")


def test_dedup_off_or_without_duplicates_gives_todays_subset(emoji, make_cfg, tmp_path):
    _, _, pngs = emoji
    folder, ids = _pool(tmp_path, pngs, [])
    scores = np.random.default_rng(1).normal(size=len(ids)).astype(np.float32)
    path = write_scores(tmp_path / "scores.parquet", ids, scores, {})
    today = prune_file(path, None, 0.25, "shift_gsample", 3, {"head": 0.1}, {})[1].to_pylist()
    for name, dedup in (("off", "false"), ("on", "true")):
        _, out = _prune(
            make_cfg, tmp_path, folder, path, name, f"dedup.enabled={dedup}", "method=shift_gsample",
            "keep_ratio=0.25", "seed=3", "pruning.head=0.1",
        )  # fmt: skip
        assert read_subset(out / "subset.parquet")[0] == today, name
        assert (out / "duplicates.parquet").exists() == (dedup == "true")


@pytest.mark.parametrize(
    "override, match",
    [
        ("dedup.hash=md5", r"dedup.hash='md5' is not a known hash; expected one of \['average_hash', 'dhash'"),
        ("dedup.max_distance=64", r"dedup.max_distance must be an integer number of bits in \[0, 63\], got 64"),
        ("dedup.max_shift=-1", r"dedup.max_shift must be an integer number of pixels >= 0, got -1"),
    ],
)
def test_bad_dedup_options_are_refused_naming_the_key(emoji, make_cfg, tmp_path, override, match):
    _, _, pngs = emoji
    folder, ids = _pool(tmp_path, pngs[:4], [])
    path = write_scores(tmp_path / "scores.parquet", ids, np.arange(4.0), {})
    with pytest.raises(ValueError, match=match):
        _prune(make_cfg, tmp_path, folder, path, "bad", "dedup.enabled=true", override)


@pytest.mark.parametrize("method", ["top_k", "random"])
def test_train_refuses_dedup_with_a_subset_it_would_draw_itself(emoji, make_cfg, tmp_path, method):
    _, _, pngs = emoji
    folder, ids = _pool(tmp_path, pngs[:4], [])
    path = write_scores(tmp_path / "scores.parquet", ids, np.arange(4.0), {})
    cfg = make_cfg(
        "+experiment=subset", "~logger", f"scores_path={path}", f"data.train_path={folder}", f"method={method}",
        "dedup.enabled=true", output_dir=tmp_path / "train",
    )  # fmt: skip
    with pytest.raises(ValueError, match=rf"dedup.enabled=true but method={method} draws its subset in the train"):
        run(cfg)


def test_pipeline_with_dedup_prunes_every_compared_selection(emoji, make_cfg, tmp_path):
    _, images, pngs = emoji
    copies, _, _ = _near_duplicates(images)
    folder, ids = _pool(tmp_path, pngs, copies)
    scores = np.random.default_rng(2).normal(size=len(ids)).astype(np.float32)
    path = write_scores(tmp_path / "scores.parquet", ids, scores, {})
    cfg = make_cfg("+experiment=prune", "~logger", f"data.train_path={folder}", *DEDUP, output_dir=tmp_path / "pipe")
    for name in ("random", "gsample"):
        own = _own_prune(cfg, name, str(path))
        sub = _train_config(cfg, name, str(path), own["outputs"]["subset"])
        kept, meta = read_subset(sub.subset_path)
        assert sub.stage == "train" and meta["method"] == name and len(kept) == round(cfg.keep_ratio * len(ids))
        assert (tmp_path / "pipe" / f"prune-{name}" / "duplicates.parquet").exists()
        dup = pq.read_table(tmp_path / "pipe" / f"prune-{name}" / "duplicates.parquet").to_pydict()
        removed = {s for s, k in zip(dup["sample_id"], dup["kept"]) if not k}
        assert removed and not removed & set(kept), name
    assert _own_prune(cfg, cfg.method, str(path)) is None and _own_prune(cfg, "full", str(path)) is None
    cfg.dedup.enabled = False
    assert _own_prune(cfg, "gsample", str(path)) is None
    assert _train_config(cfg, "gsample", str(path), "unused").scores_path == str(path)
