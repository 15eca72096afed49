"""Checks of a ``sample_id`` column held as an Arrow string array, without Python strings.

A column of 10^8 ids is about 1.2 GB as Arrow buffers and over 10 GB as Python strings, so the
scores files' ids are hashed and compared on their buffers:

- :func:`fingerprint`: the dataset fingerprint (:func:`alchemist_pl.scores.dataset_fingerprint`:
  sha256 over the sorted ids, each followed by a zero byte) and the first duplicate id, from one
  sort of the column;
- :func:`rows_digest`: sha256 over the same bytes in the column's own order, no sort (about
  1.5 GB/s): a file whose rows still have the digest its writer recorded holds the rows the writer
  fingerprinted and checked for duplicates.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["as_ids", "feed", "fingerprint", "rows_digest"]

_CHUNK = 1 << 20  # ids per hashed piece (bounds the joined-bytes temporary)


def as_ids(sample_ids) -> pa.ChunkedArray:
    """``sample_ids`` (a sequence of str, or an Arrow string array) as a chunked Arrow string or
    large_string array; dictionary-encoded strings (pandas ``category``) and ``string_view`` are
    decoded to the same values.

    Raises:
        ValueError: an id that is not a string, or a null (names its row).
    """
    if isinstance(sample_ids, pa.ChunkedArray | pa.Array):
        ids = sample_ids
    else:
        ids = pa.array(sample_ids if isinstance(sample_ids, list) else list(sample_ids), type=pa.string())
    ids = ids if isinstance(ids, pa.ChunkedArray) else pa.chunked_array([ids], type=ids.type)
    value = ids.type.value_type if pa.types.is_dictionary(ids.type) else ids.type
    if pa.types.is_dictionary(ids.type) or pa.types.is_string_view(value):
        ids = ids.cast(pa.large_string() if pa.types.is_large_string(value) else pa.string())
    if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
        raise ValueError(f"sample_id must be strings, got {ids.type}")
    if ids.null_count:
        row = pc.index(ids.is_null(), True).as_py()
        raise ValueError(f"sample_id must be non-null strings: {ids.null_count} null(s), the first at row {row}")
    return ids


def _terminated(chunk: pa.Array) -> np.ndarray:
    """[bytes] the chunk's ids, each followed by a zero byte, as one uint8 array."""
    width = 8 if pa.types.is_large_string(chunk.type) else 4
    _, offsets, data = chunk.buffers()
    offsets = np.frombuffer(offsets, dtype=np.int64 if width == 8 else np.int32)[
        chunk.offset : chunk.offset + len(chunk) + 1
    ]
    data = np.frombuffer(data, dtype=np.uint8)[offsets[0] : offsets[-1]] if data is not None else np.zeros(0, np.uint8)
    ends = offsets[1:] - offsets[0] + np.arange(len(chunk))  # where each id's zero byte goes
    out = np.zeros(len(data) + len(chunk), dtype=np.uint8)
    is_data = np.ones(len(out), dtype=bool)
    is_data[ends] = False
    out[is_data] = data
    return out


def feed(h, sample_ids) -> None:
    """Add the ids' bytes, each followed by a zero byte, to the hash ``h`` (``hashlib.sha256()``):
    feeding the rows part after part gives :func:`rows_digest` of all of them."""
    for chunk in as_ids(sample_ids).chunks:
        for a in range(0, len(chunk), _CHUNK):
            h.update(_terminated(chunk.slice(a, _CHUNK)))


def _hash(ids: pa.ChunkedArray) -> str:
    h = hashlib.sha256()
    feed(h, ids)
    return h.hexdigest()


def rows_digest(sample_ids) -> str:
    """sha256 over the ids in their order, each followed by a zero byte (the fingerprint's bytes, unsorted)."""
    return _hash(as_ids(sample_ids))


def fingerprint(sample_ids) -> tuple[str, str | None]:
    """(the dataset fingerprint of ``sample_ids``, the first repeated id in sorted order or None).

    Equal to :func:`alchemist_pl.scores.dataset_fingerprint` of the same ids: byte order of UTF-8
    is code point order, Python's order of str. One Arrow sort: about 8 bytes per id besides a
    sorted copy of the column.
    """
    ids = as_ids(sample_ids)
    ids = ids.take(pc.sort_indices(ids))
    repeated = None
    if len(ids) > 1:
        same = pc.equal(ids[1:], ids[:-1])
        if pc.any(same).as_py():
            repeated = ids[1:].filter(same)[0].as_py()
    return _hash(ids), repeated
