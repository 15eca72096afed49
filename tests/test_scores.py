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
