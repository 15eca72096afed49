import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alchemist_pl.scores import ScoresError, dataset_fingerprint, read_scores, read_subset, write_scores, write_subset


def test_roundtrip_and_metadata(tmp_path):
    ids = [f"s{i}" for i in range(50)]
    scores = np.linspace(-1, 1, 50).astype(np.float32)
    path = write_scores(tmp_path / "scores.parquet", ids, scores, {"stage": "rate"})
    got_ids, got, meta = read_scores(path)
    assert got_ids == ids
    np.testing.assert_array_equal(got, scores)
    assert meta["stage"] == "rate"
    assert meta["dataset_fingerprint"] == dataset_fingerprint(reversed(ids))
    assert [p.name for p in tmp_path.iterdir()] == ["scores.parquet"]  # no temporary file left


def test_subset_roundtrip(tmp_path):
    path = write_subset(tmp_path / "subset.parquet", ["a", "b"], np.array([1.0, 2.0]), np.array([0.5, 0.0]), {"k": 1})
    ids, meta = read_subset(path)
    assert ids == ["a", "b"] and meta == {"k": 1}


def _raw(tmp_path, **cols):
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table(cols), path)
    return path


@pytest.mark.parametrize(
    "cols,match",
    [
        (dict(sample_id=["a", "b"]), r"missing column\(s\) \['score'\]"),
        (dict(sample_id=["a", "b"], score=[1.0, float("nan")]), r"NaN or infinite \(first: sample 'b'"),
        (dict(sample_id=["a", "b"], score=[1.0, float("inf")]), r"sample 'b'"),
        (dict(sample_id=["a", "b"], score=[1.0, None]), r"sample 'b' has no score"),
        (dict(sample_id=["a", "a"], score=[1.0, 2.0]), r"duplicate sample_id 'a'"),
    ],
)
def test_bad_scores_files(tmp_path, cols, match):
    with pytest.raises(ScoresError, match=match):
        read_scores(_raw(tmp_path, **cols))


def test_missing_and_unreadable(tmp_path):
    with pytest.raises(ScoresError, match="does not exist"):
        read_scores(tmp_path / "none.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(ScoresError, match="not a readable Parquet"):
        read_scores(tmp_path / "junk.parquet")


def test_empty_and_non_numeric_scores(tmp_path):
    with pytest.raises(ScoresError, match=r"x.parquet: the file holds no scores"):
        read_scores(_raw(tmp_path, sample_id=pa.array([], pa.string()), score=pa.array([], pa.float32())))
    for bad in (["0.1", "high"], [True, False]):
        with pytest.raises(ScoresError, match=r"column 'score' must be numeric"):
            read_scores(_raw(tmp_path, sample_id=["a", "b"], score=bad))


def test_rows_that_do_not_match_the_recorded_fingerprint_refused(tmp_path):
    ids = [f"s{i}" for i in range(20)]
    path = write_scores(tmp_path / "scores.parquet", ids, np.arange(20, dtype=np.float32), {"train_path": "/pool"})
    table = pq.read_table(path)
    pq.write_table(table.slice(0, 15), tmp_path / "cut.parquet")  # rows dropped, metadata kept
    with pytest.raises(ScoresError, match=r"cut.parquet: the scores were made for another dataset.*own rows"):
        read_scores(tmp_path / "cut.parquet")
    # a file without a recorded fingerprint (another tool's) is accepted as it is
    pq.write_table(table.slice(0, 15).replace_schema_metadata(None), tmp_path / "plain.parquet")
    assert len(read_scores(tmp_path / "plain.parquet")[0]) == 15


def test_training_refuses_scores_of_another_dataset(tmp_path, emoji_dir, cache_dir):
    """A scores file rated on the first 40 samples cannot drive training on the first 32."""
    from alchemist_pl.data import load_split
    from alchemist_pl.datamodule import TrainingDataModule

    pool = load_split(emoji_dir / "val", 16, cache_dir, limit=40)
    path = write_scores(
        tmp_path / "scores40.parquet", pool.sample_ids, np.linspace(0, 1, 40), {"train_path": "val[:40]"}
    )
    dm = TrainingDataModule(
        emoji_dir / "val",
        emoji_dir / "val",
        scores_path=path,
        keep_ratio=0.5,
        method="top_k",
        limit_train=32,
        limit_test=8,
        batch_size=4,
        resolution=16,
        cache_dir=cache_dir,
    )
    with pytest.raises(
        ScoresError,
        match=r"scores40.parquet: the scores were made for another dataset.*"
        r"the training set data.train_path=.*val \(32 samples\)",
    ):
        dm.setup("fit")
    dm = TrainingDataModule(
        emoji_dir / "val",
        emoji_dir / "val",
        scores_path=path,
        keep_ratio=0.5,
        method="top_k",
        limit_train=40,
        limit_test=8,
        batch_size=4,
        resolution=16,
        cache_dir=cache_dir,
    )
    dm.setup("fit")
    assert len(dm.subset) == 20


# ---------------------------------------------------------------- scores from other tools


def _spark_like_folder(folder, ids, scores):
    """A Parquet dataset folder as Spark writes it: part files, _SUCCESS, hidden .crc files."""
    folder.mkdir()
    half = len(ids) // 2
    for i, rows in enumerate((slice(0, half), slice(half, None))):
        name = f"part-{i:05d}-0a1b.snappy.parquet"
        pq.write_table(pa.table({"sample_id": ids[rows], "score": scores[rows]}), folder / name)
        (folder / f".{name}.crc").write_bytes(b"\0crc")
    (folder / "_SUCCESS").write_bytes(b"")
    return folder


def test_parquet_dataset_folder_is_read(tmp_path):
    """A scores "file" that is a folder (Spark, Dask, pyarrow.dataset.write_dataset) is read whole."""
    import pyarrow.dataset as ds

    ids = [f"s{i}" for i in range(40)]
    scores = np.linspace(-1, 1, 40)
    got_ids, got, _ = read_scores(_spark_like_folder(tmp_path / "spark", ids, scores))
    assert dict(zip(got_ids, got)) == dict(zip(ids, scores))
    ds.write_dataset(
        pa.table({"sample_id": ids, "score": scores}),
        tmp_path / "arrow",
        format="parquet",
        max_rows_per_file=15,
        max_rows_per_group=15,
    )
    assert len(list((tmp_path / "arrow").iterdir())) == 3
    got_ids, got, _ = read_scores(tmp_path / "arrow")
    assert dict(zip(got_ids, got)) == dict(zip(ids, scores))


def test_float64_scores_keep_their_precision(tmp_path):
    """1, 1+1e-9, 1+2e-9 stay three different scores (and rank so); a finite 1e39 is a score, not "inf"."""
    from alchemist_pl import pruning

    path = _raw(tmp_path, sample_id=["a", "b", "c", "d"], score=[1.0, 1.0 + 1e-9, 1.0 + 2e-9, 1e39])
    ids, scores, _ = read_scores(path)
    assert scores.dtype == np.float64
    np.testing.assert_array_equal(scores, [1.0, 1.0 + 1e-9, 1.0 + 2e-9, 1e39])
    np.testing.assert_array_equal(pruning.select(scores, 0.5, "top_k"), [2, 3])
    np.testing.assert_array_equal(pruning.percentiles(scores), [0.75, 0.5, 0.25, 0.0])
    out = write_scores(tmp_path / "again.parquet", ids, scores, {})
    np.testing.assert_array_equal(read_scores(out)[1], scores)
    # float32 stays float32
    assert read_scores(_raw(tmp_path, sample_id=["a"], score=pa.array([0.5], pa.float32())))[1].dtype == np.float32


def test_integer_scores_float64_cannot_hold_refused(tmp_path):
    assert read_scores(_raw(tmp_path, sample_id=["a", "b"], score=[3, 2**53]))[1].tolist() == [3.0, 2.0**53]
    with pytest.raises(
        ScoresError, match=r"too large for a float64 to hold exactly .*first: sample 'b' = 9007199254740993"
    ):
        read_scores(_raw(tmp_path, sample_id=["a", "b"], score=[3, 2**53 + 1]))


def test_training_from_float64_scores_ranks_by_full_precision(tmp_path, emoji_dir, cache_dir):
    """The sampler draws from the scores at the file's precision: top_k of scores 1 + i * 1e-9."""
    from alchemist_pl.data import load_split
    from alchemist_pl.datamodule import TrainingDataModule

    pool = load_split(emoji_dir / "val", 16, cache_dir, limit=40)
    path = write_scores(tmp_path / "s.parquet", pool.sample_ids, 1.0 + np.arange(40) * 1e-9, {})
    dm = TrainingDataModule(
        emoji_dir / "val",
        emoji_dir / "val",
        scores_path=path,
        keep_ratio=0.25,
        method="top_k",
        limit_train=40,
        limit_test=8,
        batch_size=4,
        resolution=16,
        cache_dir=cache_dir,
    )
    dm.setup("fit")
    np.testing.assert_array_equal(np.sort(dm.subset), np.arange(30, 40))
