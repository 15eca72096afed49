"""sample_id columns checked on their Arrow buffers: the fingerprint and duplicates from one sort,
the rows digest that lets a reader skip that sort, and the scores files that use them."""

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alchemist_pl import sample_ids, scores
from alchemist_pl.sample_ids import fingerprint, rows_digest
from alchemist_pl.scores import (
    ScoresError,
    dataset_fingerprint,
    read_kept_ids,
    read_sample_ids,
    read_score_values,
    read_scores,
    write_scores,
)
from alchemist_pl.stages.prune import prune_file

IDS = ["b", "a", "ü", "", "zz", "aé", "é", "a\u0301", "sample_10", "sample_9", "日本"]


def _chunked(ids: list[str]) -> pa.ChunkedArray:
    """The ids in three chunks, the first a slice with a non-zero offset."""
    head = pa.array(["x", *ids[:4]]).slice(1)
    return pa.chunked_array([head, pa.array(ids[4:8]), pa.array(ids[8:])])


def test_fingerprint_and_digest_of_arrow_ids_equal_the_python_definitions():
    """sha256 over the sorted ids (Python's str order), each followed by a zero byte; the digest: the same bytes unsorted."""
    unsorted = hashlib.sha256(b"".join(s.encode() + b"\0" for s in IDS)).hexdigest()
    in_order = hashlib.sha256(b"".join(s.encode() + b"\0" for s in sorted(IDS))).hexdigest()
    for ids in (IDS, pa.array(IDS), pa.array(IDS, pa.large_string()), _chunked(IDS)):
        assert fingerprint(ids) == (in_order, None)
        assert rows_digest(ids) == unsorted
    assert rows_digest(IDS[::-1]) != unsorted  # the digest sees the order, the fingerprint does not
    assert fingerprint(IDS[::-1])[0] == in_order == dataset_fingerprint(iter(IDS[::-1]))


def test_first_repeated_id_found():
    assert fingerprint([*IDS, "zz", "a"])[1] == "a"  # the first in sorted order
    with pytest.raises(ValueError, match="duplicate sample_id 'a'"):
        write_scores("unused.parquet", ["a", "b", "a"], np.zeros(3), {})


def _rewrite(path, table, name: str):
    """The table written as another tool would, the scores file's metadata kept."""
    out = path.parent / name
    pq.write_table(table, out)
    return out


def test_rows_changed_under_a_recorded_digest_are_checked_in_full(tmp_path):
    """Rows edited after write_scores (metadata kept): a reorder is still the same dataset; a
    repeated id or a dropped row is refused, although the file carries the writer's digest."""
    ids = [f"s{i}" for i in range(40)]
    path = write_scores(tmp_path / "scores.parquet", ids, np.arange(40, dtype=np.float32), {})
    table = pq.read_table(path)
    assert "sample_ids_sha256" in read_scores(path)[2]
    shuffled = _rewrite(path, table.take(np.random.default_rng(0).permutation(40)), "shuffled.parquet")
    assert sorted(read_scores(shuffled)[0]) == sorted(ids)
    twice = table.set_column(0, "sample_id", pa.array(ids[:39] + ["s0"]))
    with pytest.raises(ScoresError, match=r"twice.parquet: duplicate sample_id 's0'"):
        read_scores(_rewrite(path, twice, "twice.parquet"))
    with pytest.raises(ScoresError, match="made for another dataset"):
        read_scores(_rewrite(path, table.slice(1), "cut.parquet"))


def test_sample_ids_read_as_arrow_match_the_list(tmp_path):
    ids = [f"id-{i:04d}" for i in range(3000)]
    path = write_scores(tmp_path / "scores.parquet", ids, np.linspace(0, 1, 3000), {})
    got = read_sample_ids(path, read_scores(path)[2])
    assert isinstance(got, pa.ChunkedArray) and got.to_pylist() == ids


def test_kept_ids_read_row_group_by_row_group(tmp_path):
    """read_kept_ids over several files and row groups (the digest checked while read) and over a
    file without a digest (checked in full) gives the ids of exactly the kept rows."""
    ids = [f"id-{i}" for i in range(2500)]
    path = write_scores(tmp_path / "scores.parquet", ids, np.arange(2500.0), {})
    table, meta = pq.read_table(path), read_scores(path)[2]
    parts = tmp_path / "parts"
    parts.mkdir()
    pq.write_table(table.slice(0, 1000), parts / "a.parquet", row_group_size=300)
    pq.write_table(table.slice(1000), parts / "b.parquet", row_group_size=700)
    pq.write_table(table.replace_schema_metadata(None), tmp_path / "plain.parquet", row_group_size=400)
    idx = np.sort(np.random.default_rng(0).choice(2500, 900, replace=False))
    for source, metadata in ((path, meta), (parts, meta), (tmp_path / "plain.parquet", {})):
        assert read_kept_ids(source, metadata, idx).to_pylist() == [ids[i] for i in idx], source
    np.testing.assert_array_equal(read_score_values(parts)[0], np.arange(2500.0))


def test_dictionary_and_string_view_ids_read_as_their_strings(tmp_path):
    """A sample_id column stored dictionary-encoded (pandas ``category``) or as string_view is the
    same ids: read, and the kept ids read under the writer's digest, equal the written ones."""
    ids = [f"id-{i}" for i in range(300)]
    path = write_scores(tmp_path / "scores.parquet", ids, np.arange(300.0), {})
    table, meta = pq.read_table(path), read_scores(path)[2]
    idx = np.arange(0, 300, 7)
    for kind, column in (
        ("dict", table.column(0).dictionary_encode()),
        ("view", table.column(0).cast(pa.string_view())),
    ):
        other = _rewrite(path, table.set_column(0, "sample_id", column), f"{kind}.parquet")
        assert read_scores(other)[0] == ids, kind
        assert read_kept_ids(other, meta, idx).to_pylist() == [ids[i] for i in idx], kind


def test_null_sample_id_named_by_row(tmp_path):
    table = pa.table({"sample_id": pa.array(["a", "b", None, "d"]), "score": np.arange(4.0)})
    pq.write_table(table, tmp_path / "nulls.parquet")
    with pytest.raises(
        ScoresError, match=r"nulls.parquet: sample_id must be non-null strings: 1 null\(s\), the first at row 2"
    ):
        read_scores(tmp_path / "nulls.parquet")


def _folder(tmp_path, name: str, tables) -> object:
    folder = tmp_path / name
    folder.mkdir()
    for i, t in enumerate(tables):
        pq.write_table(t, folder / f"part-{i}.parquet")
    return folder


def test_folder_files_of_different_types_read_exactly(tmp_path):
    """A folder whose files store the scores as float32 and float64, and the ids as string and
    large_string (the writer's metadata kept): the float64 scores keep their precision (the top
    rows differ by 1e-9) and the kept ids read under the digest are those of the kept rows."""
    ids, scores = [f"s{i}" for i in range(600)], 1.0 + np.arange(600) * 1e-9
    table = pq.read_table(write_scores(tmp_path / "scores.parquet", ids, scores, {}))
    head, tail = table.slice(0, 200), table.slice(200)
    head = head.set_column(1, "score", head.column(1).cast(pa.float32()))
    tail = tail.set_column(0, "sample_id", tail.column(0).cast(pa.large_string()))
    folder = _folder(tmp_path, "mixed", [head, tail])
    got, meta = read_score_values(folder)
    np.testing.assert_array_equal(got[200:], scores[200:])
    idx = np.arange(150, 600, 3)
    assert read_kept_ids(folder, meta, idx).to_pylist() == [ids[i] for i in idx]


def test_folder_files_missing_a_column_or_fingerprinting_other_rows_refused(tmp_path):
    """A file of a folder without the score column is named; two scores files of their own in one
    folder (each fingerprints its own rows) are refused naming both, while parts whose metadata
    differs in other keys only (a streaming run's shards) are read."""
    ids, scores = [f"s{i}" for i in range(100)], np.arange(100.0)
    table = pa.table({"sample_id": ids, "score": scores})
    lacking = _folder(tmp_path, "lacking", [table.slice(0, 50), table.slice(50).select(["sample_id"])])
    with pytest.raises(ScoresError, match=r"part-1.parquet: missing column 'score'"):
        read_score_values(lacking)
    own = tmp_path / "own"
    own.mkdir()
    write_scores(own / "a.parquet", ids[:50], scores[:50], {})
    write_scores(own / "b.parquet", ids[50:], scores[50:], {})
    with pytest.raises(ScoresError, match=r"a.parquet and .*b.parquet record the fingerprints of different rows"):
        read_scores(own)
    shards = [
        t.replace_schema_metadata({b"alchemist": f'{{"shard": {i}}}'.encode()})
        for i, t in enumerate([table.slice(0, 50), table.slice(50)])
    ]
    assert read_scores(_folder(tmp_path, "shards", shards))[0] == ids


def test_prune_path_checks_rows_edited_under_a_recorded_digest(tmp_path):
    """The prune stage reads only the kept ids (read_kept_ids), so that read is its only check of
    the ids: a repeated id or a dropped row under the writer's stale digest is refused, and a
    reordered file keeps each kept score with its own sample_id."""
    ids = [f"s{i}" for i in range(40)]
    path = write_scores(tmp_path / "scores.parquet", ids, np.arange(40, dtype=np.float32), {})
    table = pq.read_table(path)
    twice = _rewrite(path, table.set_column(0, "sample_id", pa.array(ids[:39] + ["s0"])), "twice.parquet")
    with pytest.raises(ScoresError, match=r"twice.parquet: duplicate sample_id 's0'"):
        prune_file(twice, None, 0.5, "top_k", 0, {}, {})
    with pytest.raises(ScoresError, match="cut.parquet: the scores were made for another dataset"):
        prune_file(_rewrite(path, table.slice(1), "cut.parquet"), None, 0.5, "top_k", 0, {}, {})
    shuffled = _rewrite(path, table.take(np.random.default_rng(0).permutation(40)), "shuffled.parquet")
    subset = tmp_path / "subset.parquet"
    prune_file(shuffled, subset, 0.25, "top_k", 0, {}, {})
    kept = pq.read_table(subset)
    assert sorted(kept.column("sample_id").to_pylist()) == [f"s{i}" for i in range(30, 40)]
    assert kept.column("sample_id").to_pylist() == [f"s{int(s)}" for s in kept.column("score").to_numpy()]


@pytest.mark.parametrize("kind", [pa.string(), pa.large_string()])
def test_digest_of_ids_hashed_in_pieces_of_few_ids_and_bytes(monkeypatch, kind):
    """Pieces of at most 3 ids and 5 bytes (an id longer than that is a piece of its own; empty ids
    at the ends of pieces): the same bytes as the definition, from a chunk that starts at an offset."""
    monkeypatch.setattr(sample_ids, "_CHUNK", 3)
    monkeypatch.setattr(sample_ids, "_BYTES", 5)
    ids = ["", "ab", "", "a-long-id", "c", "", "", "dd", "日本", "e", ""]
    want = hashlib.sha256(b"".join(s.encode() + b"\0" for s in ids)).hexdigest()
    assert rows_digest(pa.array(["x", *ids], kind).slice(1)) == want
    assert rows_digest(pa.array([""], kind)) == hashlib.sha256(b"\0").hexdigest()


@pytest.mark.parametrize("threads", [1, 3])
def test_kept_ids_read_on_threads_in_row_order(tmp_path, monkeypatch, threads):
    """A file of 40 row groups read 1 or 3 at a time ahead of the hash: the kept ids in row order,
    the digest of all rows; a null id in a late row group is still named by its row."""
    monkeypatch.setattr(scores, "THREADS", threads)
    ids = [f"id-{i}" for i in range(2000)]
    path = write_scores(tmp_path / "scores.parquet", ids, np.arange(2000.0), {})
    table, meta = pq.read_table(path), read_scores(path)[2]
    many = tmp_path / "many.parquet"
    pq.write_table(table, many, row_group_size=50)
    idx = np.sort(np.random.default_rng(1).choice(2000, 700, replace=False))
    assert read_kept_ids(many, meta, idx).to_pylist() == [ids[i] for i in idx]
    column = table.column("sample_id")
    parts = [(a, lambda a=a: column.slice(a, 50)) for a in range(0, 2000, 50)]
    digest, kept = sample_ids.digest_and_take(parts, idx, threads)
    assert digest == meta["sample_ids_sha256"] == rows_digest(ids)
    assert pa.chunked_array(kept).to_pylist() == [ids[i] for i in idx]
    hole = table.set_column(0, "sample_id", pa.array(ids[:1900] + [None] + ids[1901:]))
    pq.write_table(hole, tmp_path / "hole.parquet", row_group_size=50)
    with pytest.raises(
        ScoresError, match=r"hole.parquet: sample_id must be non-null strings: 1 null\(s\), the first at row 1900"
    ):
        read_kept_ids(tmp_path / "hole.parquet", meta, idx)
