"""Per-sample scores and selected subsets as Parquet files keyed by ``sample_id``.

``scores.parquet``: columns ``sample_id`` (string), ``score`` (float32, higher = more useful).
``subset.parquet``: columns ``sample_id``, ``score``, ``percentile`` (rank percentile, 0 = top).
Both carry a JSON object under the schema metadata key ``alchemist`` (config, dataset
fingerprint, producing stage). Any tool can write these files: only the two columns of
``scores.parquet`` are required to prune or train from them. Writes are atomic (temporary file
in the same folder, then rename), so a killed run never leaves a half-written file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

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


def _write(path: str | os.PathLike, columns: dict, metadata: dict) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(columns).replace_schema_metadata({META_KEY: json.dumps(metadata, default=str).encode()})
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def _read(path: str | os.PathLike, required: tuple[str, ...]):
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise ScoresError(f"{path}: file does not exist")
    try:
        table = pq.read_table(path)
    except Exception as e:
        raise ScoresError(f"{path}: not a readable Parquet file ({e})") from e
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


def write_scores(path, sample_ids: list[str], scores: np.ndarray, metadata: dict) -> Path:
    """Write ``scores.parquet`` atomically. ``scores``: [N] float, aligned with ``sample_ids``."""
    scores = np.asarray(scores, dtype=np.float32)
    if len(scores) != len(sample_ids):
        raise ValueError(f"{len(scores)} scores for {len(sample_ids)} sample_ids")
    metadata = {**metadata, "dataset_fingerprint": dataset_fingerprint(sample_ids)}
    return _write(path, {"sample_id": list(sample_ids), "score": scores}, metadata)


def read_scores(path) -> tuple[list[str], np.ndarray, dict]:
    """Read ``(sample_ids, scores [N] float32, metadata)``.

    Raises:
        ScoresError: missing file or column, no rows, non-numeric score column, duplicate sample_id,
            null/NaN/inf score (names the sample).
    """
    import pyarrow.types as pat

    path, table, ids, metadata = _read(path, ("sample_id", "score"))
    if not ids:
        raise ScoresError(f"{path}: the file holds no scores (0 rows)")
    col = table.column("score")
    if not (pat.is_floating(col.type) or pat.is_integer(col.type)):
        raise ScoresError(f"{path}: column 'score' must be numeric (float or int), found {col.type}")
    if col.null_count:
        i = next(i for i, v in enumerate(col.to_pylist()) if v is None)
        raise ScoresError(f"{path}: sample {ids[i]!r} has no score")
    scores = col.to_numpy().astype(np.float32)
    bad = ~np.isfinite(scores)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ScoresError(f"{path}: {int(bad.sum())} scores are NaN or infinite (first: sample {ids[i]!r} = {scores[i]})")
    return ids, scores, metadata


def write_subset(path, sample_ids: list[str], scores: np.ndarray, percentile: np.ndarray, metadata: dict) -> Path:
    """Write ``subset.parquet`` atomically (the selected samples only)."""
    return _write(
        path,
        {
            "sample_id": list(sample_ids),
            "score": np.asarray(scores, dtype=np.float32),
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


@torch.no_grad()
def score_dataset(rater, dataset, batch_size: int = 256, device="cpu") -> np.ndarray:
    """Order-free score of every sample of ``dataset``: [N] float32 instance logits.

    Each score depends on its own sample only (``Rater.score``), so batch size and order do not
    change it beyond float rounding.
    """
    was_training = rater.training
    rater.eval()
    out = np.empty(len(dataset), dtype=np.float32)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in loader:
        s = rater.score(batch["image"].to(device), batch["pooled"].to(device))
        out[batch["index"].numpy()] = s.cpu().numpy()
    rater.train(was_training)
    return out
