"""How score and subset files are stored: a Parquet table keyed by ``sample_id``, in one file or a
folder of Parquet files, with a JSON object under the schema metadata key ``alchemist``.

Opening a file or folder (its schema and metadata checked), reading a column whole or one row group
at a time, and writing a table atomically (temporary file in the same folder, then rename). What
the columns mean and how they are checked: :mod:`alchemist_pl.scores`.
"""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .runtime import write_atomic

META_KEY = b"alchemist"


class ScoresError(ValueError):
    """A scores or subset file is malformed; the message names the file and what was expected."""


def write_table(path: str | os.PathLike, columns: dict, metadata: dict) -> Path:
    """Write ``columns`` (name -> [N] array) as one Parquet file at ``path`` atomically, with
    ``metadata`` as JSON under :data:`META_KEY`; returns ``Path(path)``."""
    table = pa.table(columns).replace_schema_metadata({META_KEY: json.dumps(metadata, default=str).encode()})
    # no dictionary pages (sample_ids are unique) and no compression: distinct ids and float scores
    # shrink by about a quarter compressed, and decompressing them doubles the time to read them;
    # no min/max statistics of the sample_ids (comparing the strings is half the time to write them)
    stats = [name for name in table.column_names if name != "sample_id"]
    write = partial(pq.write_table, use_dictionary=False, compression="none", write_statistics=stats)
    return write_atomic(path, lambda tmp: write(table, tmp))


def open_table(path: str | os.PathLike, required: tuple[str, ...]) -> tuple[Path, dict]:
    """(path, metadata) of a Parquet file, or a folder of Parquet files (a dataset, as Spark, Dask
    or ``pyarrow.dataset.write_dataset`` write it; files whose names start with ``_`` or ``.`` are
    passed over, as pyarrow does), once its schema holds the ``required`` columns.

    Raises:
        ScoresError: the path does not exist or is not readable Parquet, a ``required`` column is
            missing, or the files of a folder record the fingerprints of different rows.
    """
    path = Path(path)
    if not path.exists():
        raise ScoresError(f"{path}: file does not exist (expected a Parquet file or a folder of Parquet files)")
    try:
        dataset = pq.ParquetDataset(path)
        metas = [json.loads((pq.read_schema(f).metadata or {}).get(META_KEY, b"{}")) for f in dataset.files]
    except Exception as e:
        kind = "folder of Parquet files" if path.is_dir() else "Parquet file"
        raise ScoresError(f"{path}: not a readable {kind} ({e})") from e
    missing = [c for c in required if c not in dataset.schema.names]
    if missing:
        raise ScoresError(
            f"{path}: missing column(s) {missing}; expected {list(required)}, found {dataset.schema.names}"
        )
    rows = [(m.get("dataset_fingerprint"), m.get("sample_ids_sha256")) for m in metas]  # each of its own file
    other = next((i for i, r in enumerate(rows) if r != rows[0]), None)
    if other is not None:
        raise ScoresError(
            f"{path}: {dataset.files[0]} and {dataset.files[other]} record the fingerprints of different rows "
            "(scores files of their own): write them as one file, or strip their schema metadata to join them"
        )
    return path, metas[0]


def read_column(path: Path, name: str):
    """One column of the file or folder as an Arrow chunked array.

    Raises:
        ScoresError: the column cannot be read (names the file and the column).
    """
    try:
        return pq.read_table(path, columns=[name]).column(name)
    except Exception as e:
        raise ScoresError(f"{path}: column {name!r} is not readable ({e})") from e


def column_batches(path: Path, name: str):
    """The column's values in row order (as ``pq.read_table`` reads them), an Arrow array per
    Parquet row group; one row group in memory at a time (``iter_batches`` keeps the column's pages)."""
    for _, read in row_groups(path, name):
        yield from read().chunks


def row_groups(path: Path, name: str):
    """``(first row, read)`` of each Parquet row group of the file or folder in row order, ``read()``
    giving its column ``name`` (each call opens the file: the parts may be read on several threads).

    Raises:
        ScoresError: a file of the folder lacks the column.
    """
    start = 0
    for f in pq.ParquetDataset(path).files:
        meta = pq.ParquetFile(f)
        if name not in meta.schema_arrow.names:
            raise ScoresError(f"{f}: missing column {name!r} (a file of the folder {path})")
        for g in range(meta.metadata.num_row_groups):
            yield start, partial(_read_row_group, f, g, name)
            start += meta.metadata.row_group(g).num_rows


def _read_row_group(f, g: int, name: str):
    return pq.ParquetFile(f).read_row_group(g, columns=[name], use_threads=False).column(0)
