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
in the same folder, then rename), so a killed run never leaves a half-written file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .runtime import write_atomic

META_KEY = b"alchemist"


class ScoresError(ValueError):
    """A scores or subset file is malformed; the message names the file and what was expected."""


def dataset_fingerprint(sample_ids) -> str:
    """sha256 over the sorted sample_ids: the same set of samples gives the same fingerprint."""
    h = hashlib.sha256()
    for s in sorted(sample_ids):
        h.update(s.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def provenance() -> dict:
    """``{"version": package version, "commit": git commit of the source tree or None}``."""
    import subprocess

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
    recorded = metadata.get("dataset_fingerprint")
    if recorded is None:
        return
    actual = dataset_fingerprint(sample_ids)
    if actual != recorded:
        raise ScoresError(
            f"{path}: the scores were made for another dataset: recorded dataset_fingerprint "
            f"{recorded[:12]}... (train_path={metadata.get('train_path')}), but {what} has {actual[:12]}..."
        )


def _write(path: str | os.PathLike, columns: dict, metadata: dict) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(columns).replace_schema_metadata({META_KEY: json.dumps(metadata, default=str).encode()})
    # no dictionary pages: sample_ids are unique, and dictionary-encoding the float columns doubles the write time
    return write_atomic(path, lambda tmp: pq.write_table(table, tmp, use_dictionary=False))


def _read(path: str | os.PathLike, required: tuple[str, ...]):
    """Read a Parquet file, or a folder of Parquet files (a dataset, as Spark, Dask or
    ``pyarrow.dataset.write_dataset`` write it; files whose names start with ``_`` or ``.`` are
    passed over, as pyarrow does), and check its ``sample_id`` column."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise ScoresError(f"{path}: file does not exist (expected a Parquet file or a folder of Parquet files)")
    try:
        table = pq.read_table(path)
    except Exception as e:
        kind = "folder of Parquet files" if path.is_dir() else "Parquet file"
        raise ScoresError(f"{path}: not a readable {kind} ({e})") from e
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise ScoresError(f"{path}: missing column(s) {missing}; expected {list(required)}, found {table.column_names}")
    meta = table.schema.metadata or {}
    metadata = json.loads(meta[META_KEY]) if META_KEY in meta else {}
    ids = table.column("sample_id").to_pylist()
    if any(not isinstance(s, str) for s in ids):
        raise ScoresError(f"{path}: sample_id must be non-null strings")
    seen: set[str] = set()
    for s in ids:
        if s in seen:
            raise ScoresError(f"{path}: duplicate sample_id {s!r}")
        seen.add(s)
    return path, table, ids, metadata


def _score_dtype(path: Path, col, ids: list[str]) -> np.ndarray:
    """The score column as float32 (float16/32 columns, integers of up to 16 bits) or float64
    (float64 columns, wider integers): every value kept exactly.

    Raises:
        ScoresError: not numeric, or an integer that float64 cannot hold exactly (|v| > 2^53).
    """
    import pyarrow.types as pat

    if not (pat.is_floating(col.type) or pat.is_integer(col.type)):
        raise ScoresError(f"{path}: column 'score' must be numeric (float or int), found {col.type}")
    values = col.to_numpy()
    if pat.is_floating(col.type):
        return values.astype(np.float64 if col.type.bit_width == 64 else np.float32)
    if col.type.bit_width <= 16:
        return values.astype(np.float32)
    out = values.astype(np.float64)
    inexact = np.abs(values) > 2**53
    if inexact.any():
        i = int(np.flatnonzero(inexact)[0])
        raise ScoresError(
            f"{path}: {int(inexact.sum())} integer scores are too large for a float64 to hold exactly "
            f"(|score| > 2^53; first: sample {ids[i]!r} = {values[i]}); rescale them"
        )
    return out


def write_scores(path, sample_ids: list[str], scores: np.ndarray, metadata: dict) -> Path:
    """Write ``scores.parquet`` atomically. ``scores``: [N] numbers aligned with ``sample_ids``,
    stored as float64 when given as float64, else float32."""
    scores = _float(scores)
    if len(scores) != len(sample_ids):
        raise ValueError(f"{len(scores)} scores for {len(sample_ids)} sample_ids")
    metadata = {**metadata, "dataset_fingerprint": dataset_fingerprint(sample_ids)}
    return _write(path, {"sample_id": list(sample_ids), "score": scores}, metadata)


def read_scores(path) -> tuple[list[str], np.ndarray, dict]:
    """Read ``(sample_ids, scores [N], metadata)`` from a Parquet file or a folder of them.

    The scores keep the column's precision: float64 for float64 (and 32/64-bit integer) columns,
    float32 for float16/float32 (and 8/16-bit integer) columns.

    Raises:
        ScoresError: missing file or column, no rows, non-numeric score column, an integer score
            float64 cannot hold exactly, duplicate sample_id, null/NaN/inf score (names the sample),
            rows that do not match the recorded ``dataset_fingerprint``.
    """
    path, table, ids, metadata = _read(path, ("sample_id", "score"))
    if not ids:
        raise ScoresError(f"{path}: the file holds no scores (0 rows)")
    col = table.column("score")
    if col.null_count:
        i = next(i for i, v in enumerate(col.to_pylist()) if v is None)
        raise ScoresError(f"{path}: sample {ids[i]!r} has no score")
    scores = _score_dtype(path, col, ids)
    bad = ~np.isfinite(scores)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ScoresError(
            f"{path}: {int(bad.sum())} scores are NaN or infinite (first: sample {ids[i]!r} = {scores[i]})"
        )
    check_fingerprint(path, metadata, ids, "the file's own rows (edited or truncated?)")
    return ids, scores, metadata


def _float(values) -> np.ndarray:
    """float64 values stay float64; anything else becomes float32."""
    values = np.asarray(values)
    return values if values.dtype == np.float64 else values.astype(np.float32)


def write_subset(path, sample_ids, scores: np.ndarray, percentile: np.ndarray, metadata: dict) -> Path:
    """Write ``subset.parquet`` atomically (the selected samples only; scores kept as :func:`write_scores` does).

    ``sample_ids``: a sequence of strings, or a pyarrow string array (written as is, without a copy to Python).
    """
    import pyarrow as pa

    return _write(
        path,
        {
            "sample_id": sample_ids if isinstance(sample_ids, pa.Array) else list(sample_ids),
            "score": _float(scores),
            "percentile": np.asarray(percentile, dtype=np.float32),
        },
        metadata,
    )


def read_subset(path) -> tuple[list[str], dict]:
    """Read ``(sample_ids, metadata)`` of a subset file (only ``sample_id`` is required)."""
    _, _, ids, metadata = _read(path, ("sample_id",))
    if not ids:
        raise ScoresError(f"{path}: the subset is empty")
    return ids, metadata
