"""Checks of a ``sample_id`` column held as an Arrow string array, without Python strings.

A column of 10^8 ids is about 1.2 GB as Arrow buffers and over 10 GB as Python strings, so the
scores files' ids are hashed and compared on their buffers:

- :func:`fingerprint`: the dataset fingerprint (:func:`alchemist_pl.scores.dataset_fingerprint`:
  sha256 over the sorted ids, each followed by a zero byte) and the first duplicate id, from one
  sort of the column;
- :func:`rows_digest`: sha256 over the same bytes in the column's own order, no sort (about
  1.5 GB/s): a file whose rows still have the digest its writer recorded holds the rows the writer
  fingerprinted and checked for duplicates;
- :func:`digest_and_take`: that digest and the ids of some rows, the column read part by part on
  threads while the main thread hashes the parts in order.
"""

from __future__ import annotations

import hashlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["as_ids", "digest_and_take", "feed", "fingerprint", "rows_digest"]

_CHUNK = 1 << 20  # ids per hashed piece
_BYTES = 1 << 27  # bytes per hashed piece, but at least one id (bound the joined-bytes temporary)


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


def _terminated(chunk: pa.Array) -> list:
    """The chunk's ids, each followed by a zero byte, as buffers to hash in order: Arrow's
    ``binary_join`` of the ids with a zero byte between them, then the last zero byte."""
    if not len(chunk):
        return []
    joined = pc.binary_join(
        pa.ListArray.from_arrays(pa.array([0, len(chunk)], pa.int32()), chunk), pa.scalar("\0", chunk.type)
    )
    a, b = _offsets(joined)
    data = joined.buffers()[2]
    return [b"\0"] if a == b else [data.slice(int(a), int(b - a)), b"\0"]


def _offsets(chunk: pa.Array) -> np.ndarray:
    """[len + 1] the chunk's offsets into its data buffer (int32, int64 for large_string)."""
    buffer = chunk.buffers()[1]
    if buffer is None:
        return np.zeros(1, dtype=np.int64)
    offsets = np.frombuffer(buffer, dtype=np.int64 if pa.types.is_large_string(chunk.type) else np.int32)
    return offsets[chunk.offset : chunk.offset + len(chunk) + 1]


def feed(h, sample_ids) -> None:
    """Add the ids' bytes, each followed by a zero byte, to the hash ``h`` (``hashlib.sha256()``):
    feeding the rows part after part gives :func:`rows_digest` of all of them."""
    for buffer in _buffers(as_ids(sample_ids)):
        h.update(buffer)


def _buffers(ids: pa.ChunkedArray):
    """The buffers :func:`feed` hashes, in order: each piece's :func:`_terminated` bytes."""
    for chunk in ids.chunks:
        for piece in _pieces(chunk):
            yield from _terminated(piece)


def _pieces(chunk: pa.Array):
    """The chunk in consecutive slices of at most :data:`_CHUNK` ids and :data:`_BYTES` bytes (at least one id)."""
    offsets, a = _offsets(chunk), 0
    while a < len(chunk):
        b = min(a + _CHUNK, len(chunk))
        if offsets[b] - offsets[a] > _BYTES:
            b = max(a + 1, int(np.searchsorted(offsets, offsets[a] + _BYTES, "right")) - 1)
        yield chunk.slice(a, b - a)
        a = b


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


def digest_and_take(parts, idx: np.ndarray, threads: int = 1):
    """(:func:`rows_digest` of the ids of all ``parts`` in order, the ids at rows ``idx`` as a list of
    Arrow arrays), or None if a part's ids are not non-null strings (:func:`as_ids` names the row).

    ``parts``: ``(first row, read)`` in row order, ``read()`` returning that part's ids (an Arrow
    array, e.g. one Parquet row group); ``idx``: [k] sorted row indices. Up to ``threads`` parts are
    read, joined into the hashed bytes and taken from at once, a few parts ahead of the hash; only
    the kept ids stay in memory.
    """
    parts = iter(parts)

    def work(part):
        start, read = part
        try:
            ids = as_ids(read())
        except ValueError:
            return None
        lo, hi = np.searchsorted(idx, [start, start + len(ids)])
        hashed = list(_buffers(ids))
        return hashed, ids.take(idx[lo:hi] - start).chunks

    h, kept = hashlib.sha256(), []
    with ThreadPoolExecutor(max(1, threads)) as pool:
        pending = deque(pool.submit(work, part) for _, part in zip(range(threads + 1), parts))
        while pending:
            done = pending.popleft().result()
            if done is None:
                for future in pending:
                    future.cancel()
                return None
            pending.extend(pool.submit(work, part) for part in [next(parts, None)] if part is not None)
            for b in done[0]:
                h.update(b)  # hashlib lets go of the GIL while it hashes a large buffer
            kept += done[1]
    return h.hexdigest(), kept
