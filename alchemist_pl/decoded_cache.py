"""Decoded-shard cache: a webdataset shard's images decoded once to uint8, memory-mapped afterwards.

Decoding a shard (tar read, PNG/JPEG decode, crop, resize: :func:`alchemist_pl.images.decode_image`)
costs more CPU per sample than a small rater's forward pass. A second scoring pass over the same
pool reads the pixels from this cache instead: ``numpy.memmap`` over a raw uint8 file, no decoding.

One entry per (shard, resolution) under ``{cache_dir}/decoded-r{resolution}/``:

- ``{shard name}-{path key}-{stat key}.u8``: the images, uint8 [N, 3, R, R] in C order;
- ``{shard name}-{path key}-{stat key}.json``: ``sample_ids``, ``captions`` (stripped), ``shape``,
  and the shard's path, size and mtime at decoding time.

The path key hashes the shard's absolute path; the stat key its size, mtime (ns), inode and
:data:`FORMAT_VERSION`. A shard that is rewritten, replaced or touched gets a new stat key, so its
old entry is never read again, and writing the new entry removes the old one. (A shard changed in
place with its size and mtime restored, e.g. ``touch -r``, is not detected: delete the folder.)
Writes are atomic (temporary files, then rename; the index last), so a failed or killed decode, a
bad sample included, leaves no entry. Disk use is 3·R² bytes per sample (3 KB at 32 px, 196 KB at
256 px), uncompressed.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError
from .runtime import atomic_path, write_json

FORMAT_VERSION = 1  # raise when decode_image's pixels change: every entry is then decoded again


@dataclass
class DecodedShard:
    """One cache entry: ``images`` uint8 [N, 3, R, R] (read-only memmap), ``sample_ids`` and ``captions`` [N]."""

    sample_ids: list[str]
    captions: list[str]
    images: np.ndarray


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def entry_stem(cache_dir: str | os.PathLike, shard: str | os.PathLike, resolution: int) -> Path:
    """``{cache_dir}/decoded-r{resolution}/{shard name}-{path key}-{stat key}``, the stat read now."""
    shard = Path(shard).resolve()
    st = shard.stat()
    stat_key = _digest(f"{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{FORMAT_VERSION}")
    return Path(cache_dir) / f"decoded-r{resolution}" / f"{shard.name}-{_digest(str(shard))}-{stat_key}"


def _files(stem: Path) -> tuple[Path, Path]:
    """(index ``.json``, images ``.u8``) of an entry."""
    return stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".u8")


def has(cache_dir: str | os.PathLike, shard: str | os.PathLike, resolution: int) -> bool:
    """True when ``shard``, as it is now, has a committed entry at ``resolution``."""
    return _files(entry_stem(cache_dir, shard, resolution))[0].exists()


def load(cache_dir: str | os.PathLike, shard: str | os.PathLike, resolution: int) -> DecodedShard | None:
    """The entry of ``shard`` as it is now at ``resolution``, or None (never decoded, or changed since).

    Raises:
        DataError: the entry's image file does not hold the N x 3 x R x R bytes its index lists
            (damaged on disk; names the file).
    """
    index, data = _files(entry_stem(cache_dir, shard, resolution))
    if not index.exists():
        return None
    meta = json.loads(index.read_text())
    shape = tuple(meta["shape"])
    if not data.exists() or data.stat().st_size != int(np.prod(shape)):
        raise DataError(
            f"{data}: decoded-image cache entry of shard {shard} is damaged (expected {int(np.prod(shape))} bytes "
            f"for uint8 {list(shape)}); delete {data.parent} to decode the shards again"
        )
    images = np.memmap(data, np.uint8, "r", shape=shape) if shape[0] else np.zeros(shape, np.uint8)
    return DecodedShard(meta["sample_ids"], meta["captions"], images)


@contextmanager
def writer(cache_dir: str | os.PathLike, shard: str | os.PathLike, resolution: int) -> Iterator[Callable]:
    """Yield ``append(sample_ids, captions, images [B, 3, R, R] uint8)``; the entry is committed when
    the block ends without an exception, and other entries of the same shard path are removed.
    An exception leaves no entry (temporary file removed)."""
    stem = entry_stem(cache_dir, shard, resolution)
    index, data = _files(stem)
    ids, captions = [], []
    with atomic_path(data) as tmp, open(tmp, "wb") as f:

        def append(batch_ids: list[str], batch_captions: list[str], images: np.ndarray) -> None:
            if images.shape[1:] != (3, resolution, resolution) or images.dtype != np.uint8:
                raise ValueError(
                    f"expected uint8 [B, 3, {resolution}, {resolution}], got {images.dtype} {images.shape}"
                )
            f.write(np.ascontiguousarray(images).tobytes())
            ids.extend(batch_ids)
            captions.extend(batch_captions)

        yield append
    shard = Path(shard).resolve()
    st = shard.stat()
    meta = {"shard": str(shard), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "format": FORMAT_VERSION}
    meta["shape"] = [len(ids), 3, resolution, resolution]
    write_json(index, {**meta, "sample_ids": ids, "captions": captions})
    for old in stem.parent.glob(
        glob.escape(stem.name.rsplit("-", 1)[0]) + "-*"
    ):  # the same shard path, older stat keys
        if old not in (index, data):
            old.unlink(missing_ok=True)
