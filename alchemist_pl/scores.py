"""Per-sample scores and selected subsets as Parquet files keyed by ``sample_id``.

``scores.parquet``: columns ``sample_id`` (string), ``score`` (float32 or float64, higher = more useful).
``subset.parquet``: columns ``sample_id``, ``score``, ``percentile`` (rank percentile, 0 = top).
Both carry a JSON object under the schema metadata key ``alchemist`` (producing stage, config,
package version and git commit, and ``dataset_fingerprint``: a hash of the pool's sample_ids).
A scores file whose recorded fingerprint does not match its own rows, or (when training from it)
the training set, is refused with an error naming the file (:func:`check_fingerprint`). Any tool can
write these files: only the two columns of ``scores.parquet`` are required to prune or train from
them, in one Parquet file or a folder of Parquet files (Spark, Dask, ``pyarrow.dataset``); the
scores keep the column's precision. Writes are atomic (temporary file
in the same folder, then rename), so a killed run never leaves a half-written file. How the tables
are stored and read (file or folder, row groups): :mod:`alchemist_pl.score_tables`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.types as pat

from .ranking import THREADS
from .sample_ids import as_ids, digest_and_take, fingerprint, rows_digest
from .score_tables import ScoresError, column_batches, open_table, read_column, row_groups, write_table


def dataset_fingerprint(sample_ids) -> str:
    """sha256 over the sorted sample_ids, each followed by a zero byte: the same set of samples gives
    the same fingerprint (:func:`alchemist_pl.sample_ids.fingerprint`, on the ids' Arrow buffers)."""
    return fingerprint(sample_ids)[0]


def provenance() -> dict:
    """``{"version": package version, "commit": git commit of the source tree or None}``."""
    from . import __version__

    commit = None
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if out.returncode == 0:
            commit = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {"version": __version__, "commit": commit}


def check_fingerprint(path, metadata: dict, sample_ids, what: str) -> None:
    """Refuse a scores file made for another dataset.

    Args:
        path: the scores file (named in the error).
        metadata: its metadata (:func:`read_scores`); a file without ``dataset_fingerprint``
            (written by another tool) is accepted.
        sample_ids: the samples it must describe: its own rows, or the training set.
        what: how to name those samples in the error, e.g. "the training set data.train_path=...".

    Raises:
        ScoresError: the recorded fingerprint differs from that of ``sample_ids``.
    """
    if metadata.get("dataset_fingerprint") is not None:
        _refuse_other_dataset(path, metadata, dataset_fingerprint(sample_ids), what)


def _refuse_other_dataset(path, metadata: dict, actual: str, what: str) -> None:
    """ScoresError if ``metadata`` records a ``dataset_fingerprint`` other than ``actual``."""
    recorded = metadata.get("dataset_fingerprint")
    if recorded is not None and actual != recorded:
        raise ScoresError(
            f"{path}: the scores were made for another dataset: recorded dataset_fingerprint "
            f"{recorded[:12]}... (train_path={metadata.get('train_path')}), but {what} has {actual[:12]}..."
        )


def _sample_ids(path: Path, metadata: dict, own_fingerprint: bool):
    """The ``sample_id`` column, checked: non-null strings, no id twice and, if ``own_fingerprint``,
    the recorded ``dataset_fingerprint`` (:func:`check_fingerprint`). Rows that still have the
    ``sample_ids_sha256`` :func:`write_scores` recorded are the rows it checked, so they are not sorted again."""
    try:
        ids = as_ids(read_column(path, "sample_id"))
    except ValueError as e:
        raise ScoresError(f"{path}: {e}") from e
    digest = metadata.get("sample_ids_sha256")
    if digest is not None and rows_digest(ids) == digest:
        return ids
    actual, repeated = fingerprint(ids)
    if repeated is not None:
        raise ScoresError(f"{path}: duplicate sample_id {repeated!r}")
    if own_fingerprint:
        _refuse_other_dataset(path, metadata, actual, "the file's own rows (edited or truncated?)")
    return ids


def _score_dtype(path: Path, col, sample_at) -> np.ndarray:
    """The score column as float32 (float16/32 columns, integers of up to 16 bits) or float64
    (float64 columns, wider integers): every value kept exactly. ``sample_at(i)``: the sample_id of row i.

    Raises:
        ScoresError: not numeric, or an integer that float64 cannot hold exactly (|v| > 2^53).
    """
    if not (pat.is_floating(col.type) or pat.is_integer(col.type)):
        raise ScoresError(f"{path}: column 'score' must be numeric (float or int), found {col.type}")
    values = col.to_numpy()
    if pat.is_floating(col.type):
        return values.astype(np.float64 if col.type.bit_width == 64 else np.float32, copy=False)
    if col.type.bit_width <= 16:
        return values.astype(np.float32)
    out = values.astype(np.float64)
    inexact = np.abs(values) > 2**53
    if inexact.any():
        i = int(np.flatnonzero(inexact)[0])
        raise ScoresError(
            f"{path}: {int(inexact.sum())} integer scores are too large for a float64 to hold exactly "
            f"(|score| > 2^53; first: sample {sample_at(i)!r} = {values[i]}); rescale them"
        )
    return out


def write_scores(path, sample_ids, scores: np.ndarray, metadata: dict) -> Path:
    """Write ``scores.parquet`` atomically. ``sample_ids``: [N] str (a sequence or an Arrow string
    array); ``scores``: [N] numbers aligned with them, stored as float64 when given as float64, else
    float32. Records ``dataset_fingerprint`` and ``sample_ids_sha256`` (:mod:`alchemist_pl.sample_ids`).

    Raises:
        ValueError: lengths differ, or a sample_id is null, not a string or repeated.
    """
    scores = _float(scores)
    ids = as_ids(sample_ids)
    if len(scores) != len(ids):
        raise ValueError(f"{len(scores)} scores for {len(ids)} sample_ids")
    actual, repeated = fingerprint(ids)
    if repeated is not None:
        raise ValueError(f"duplicate sample_id {repeated!r}")
    metadata = {**metadata, "dataset_fingerprint": actual, "sample_ids_sha256": rows_digest(ids)}
    return write_table(path, {"sample_id": ids, "score": scores}, metadata)


def read_scores(path) -> tuple[list[str], np.ndarray, dict]:
    """Read ``(sample_ids, scores [N], metadata)`` from a Parquet file or a folder of them
    (:func:`read_score_values` and :func:`read_sample_ids`; the ids as a list of str)."""
    scores, metadata = read_score_values(path)
    return read_sample_ids(path, metadata).to_pylist(), scores, metadata


def read_score_values(path) -> tuple[np.ndarray, dict]:
    """Read ``(scores [N], metadata)``, the score column only, checked.

    The scores keep the column's precision: float64 for float64 (and 32/64-bit integer) columns,
    float32 for float16/float32 (and 8/16-bit integer) columns.

    Raises:
        ScoresError: missing file or column, no rows, non-numeric score column, an integer score
            float64 cannot hold exactly, null/NaN/inf score (names the sample).
    """
    path, metadata = open_table(path, ("sample_id", "score"))
    scores, start, n = None, 0, sum(pq.ParquetFile(f).metadata.num_rows for f in pq.ParquetDataset(path).files)

    def sample_at(i: int) -> str:
        return read_column(path, "sample_id")[start + i].as_py()

    for col in column_batches(path, "score"):  # a batch at a time: no second copy of the column
        if col.null_count:
            i = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise ScoresError(f"{path}: sample {sample_at(i)!r} has no score")
        part = _score_dtype(path, col, sample_at)
        if len(part) and not (np.isfinite(part.min()) and np.isfinite(part.max())):  # NaN reaches both, inf one
            i = int(np.flatnonzero(~np.isfinite(part))[0])
            raise ScoresError(f"{path}: scores are NaN or infinite (first: sample {sample_at(i)!r} = {part[i]})")
        scores = np.empty(n, dtype=part.dtype) if scores is None else scores
        scores = scores.astype(part.dtype) if part.dtype.itemsize > scores.itemsize else scores  # files of a folder
        scores[start : start + len(part)] = part
        start += len(part)
    if scores is None or len(scores) == 0:
        raise ScoresError(f"{path}: the file holds no scores (0 rows)")
    pa.default_memory_pool().release_unused()  # the read batches' memory, kept by Arrow's allocator
    return scores, metadata


def read_sample_ids(path, metadata: dict):
    """The scores file's ``sample_id`` column as an Arrow string array (no Python strings), in row
    order. ``metadata``: the file's (:func:`read_score_values`).

    Raises:
        ScoresError: null or non-string ids, a duplicate sample_id, rows that do not match the
            recorded ``dataset_fingerprint``.
    """
    return _sample_ids(Path(path), metadata, own_fingerprint=True)


def _float(values) -> np.ndarray:
    """float64 values stay float64; anything else becomes float32."""
    values = np.asarray(values)
    return values if values.dtype == np.float64 else values.astype(np.float32)


def read_kept_ids(path, metadata: dict, idx: np.ndarray):
    """The sample_ids of rows ``idx`` ([k] sorted row indices) as an Arrow string array, read
    one Parquet row group at a time (up to :data:`~alchemist_pl.ranking.THREADS` at once) so that
    only the kept ids stay in memory. The rows are checked as :func:`read_sample_ids` checks them:
    while read, against the recorded ``sample_ids_sha256`` (:func:`~alchemist_pl.sample_ids.digest_and_take`);
    without it, or if they changed, by reading and checking all of them.

    Raises:
        ScoresError: as :func:`read_sample_ids`.
    """
    path, digest = Path(path), metadata.get("sample_ids_sha256")
    if digest is not None:
        read = digest_and_take(row_groups(path, "sample_id"), np.asarray(idx), THREADS)
        pa.default_memory_pool().release_unused()  # the read parts' memory, kept by Arrow's allocator
        if read is not None and read[0] == digest:  # the files of a folder may hold string and large_string ids
            kept = read[1]
            kept = [c.cast(pa.large_string()) for c in kept] if len({c.type for c in kept}) > 1 else kept
            return pa.chunked_array(kept, kept[0].type if kept else pa.string())
    return read_sample_ids(path, metadata).take(idx)


def write_subset(path, sample_ids, scores: np.ndarray, percentile: np.ndarray, metadata: dict) -> Path:
    """Write ``subset.parquet`` atomically (the selected samples only; scores kept as :func:`write_scores` does).

    ``sample_ids``: a sequence of str, or an Arrow string array or chunked array (written as is,
    without a copy to Python).

    Raises:
        ValueError: a sample_id is null or not a string.
    """
    return write_table(
        path,
        {
            "sample_id": as_ids(sample_ids),
            "score": _float(scores),
            "percentile": np.asarray(percentile, dtype=np.float32),
        },
        metadata,
    )


def read_subset(path) -> tuple[list[str], dict]:
    """Read ``(sample_ids, metadata)`` of a subset file (only ``sample_id`` is required).

    Raises:
        ScoresError: missing file or column, no rows, null or repeated sample_id.
    """
    path, metadata = open_table(path, ("sample_id",))
    ids = _sample_ids(path, metadata, own_fingerprint=False)
    if not len(ids):
        raise ScoresError(f"{path}: the subset is empty")
    return ids.to_pylist(), metadata
