"""Score a webdataset pool that does not fit in memory: stream its shards, one partial output per shard.

:func:`score_shards` reads the ``*.tar`` shards with an ``IterableDataset`` (:class:`ShardBatches`)
that splits them across ranks (``rank::world_size``) and across dataloader workers, decodes one
shard at a time and yields batches of it; the rater scores each batch and, when a shard is
finished, its scores are written atomically to ``{parts_dir}/{shard name}.parquet``. Memory is
bounded by a batch per worker plus the caption-embedding table, not by the number of shards.
A rerun skips every shard whose part exists (resume at shard granularity). :func:`merge_parts`
then writes ``scores.parquet`` (same schema and metadata as the in-memory path) from the parts.
With a decoded-image cache (:mod:`alchemist_pl.decoded_cache`), the first pass writes each
shard's uint8 pixels once and later passes read them memory-mapped instead of decoding again.

Bad input follows :mod:`alchemist_pl.data`: an undecodable image, a missing/empty/non-UTF-8
caption or a broken shard raises ``DataError`` naming the shard and sample; a sample_id seen in
two shards is refused by :func:`merge_parts`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from . import data as data_lib
from . import decoded_cache
from .pixels import to_model_range
from .score_tables import ScoresError, write_table
from .scores import dataset_fingerprint
from .text import EMBED_DIM, MODEL_NAME, embed_captions

log = logging.getLogger(__name__)


def shard_list(path: str | os.PathLike) -> list[Path]:
    """The ``*.tar`` shards of a folder (sorted by name), or ``[path]`` for one shard.

    Raises:
        DataError: the path does not exist or holds no shards; two shards share a file name.
    """
    p = Path(path)
    if not p.exists():
        raise data_lib.DataError(f"data path {p} does not exist")
    shards = data_lib._shards(p)
    if not shards:
        raise data_lib.DataError(f"data path {p} holds no *.tar webdataset shards")
    names = [s.name for s in shards]
    if len(set(names)) != len(names):
        raise data_lib.DataError(f"data path {p}: two shards share a file name")
    return shards


class ShardBatches(IterableDataset):
    """Batches of decoded samples, one shard at a time; use with ``DataLoader(batch_size=None)``.

    Shard ``i`` of ``shards`` goes to rank ``i % world_size`` and, within a rank, to dataloader
    worker ``j % num_workers`` (``j``: its position in the rank's list). Each item is a dict:
    ``shard`` (str, the shard's file name), ``sample_id`` (list[str], B), ``caption`` (list[str]),
    ``image`` ([B, 3, H, W] uint8), ``shard_done`` (bool: the last batch of that shard),
    ``shard_size`` (int, samples in the shard; set on the last batch). B ≤ ``batch_size``.
    A shard with no samples yields one empty batch with ``shard_done`` set.

    ``decoded_dir``: a folder for :mod:`alchemist_pl.decoded_cache` (None: decode every time).
    A shard with an up-to-date entry there is read from it (memory-mapped, no decoding); any other
    shard is decoded and its entry written once the whole shard decoded without error.
    """

    def __init__(
        self, shards, resolution: int, batch_size: int = 256, rank: int = 0, world_size: int = 1, decoded_dir=None
    ):
        super().__init__()
        self.shards = [Path(s) for s in shards][rank::world_size]
        self.resolution, self.batch_size, self.decoded_dir = resolution, batch_size, decoded_dir

    def _mine(self) -> list[Path]:
        info = get_worker_info()
        return self.shards if info is None else self.shards[info.id :: info.num_workers]

    def __iter__(self) -> Iterator[dict]:
        for shard in self._mine():
            entry = None if self.decoded_dir is None else decoded_cache.load(self.decoded_dir, shard, self.resolution)
            yield from (self._decode(shard) if entry is None else self._read(shard, entry))

    def _read(self, shard: Path, entry: decoded_cache.DecodedShard) -> Iterator[dict]:
        n, b = len(entry.sample_ids), self.batch_size
        for start in range(0, max(n, 1), b):
            end = min(start + b, n)
            images = torch.from_numpy(np.array(entry.images[start:end]))
            yield self._batch(shard, entry.sample_ids[start:end], entry.captions[start:end], images, end == n, end)

    def _decode(self, shard: Path) -> Iterator[dict]:
        cache = self.decoded_dir
        write = contextlib.nullcontext(None) if cache is None else decoded_cache.writer(cache, shard, self.resolution)
        with write as append:
            ids, captions, images, seen = [], [], [], 0
            for raw in data_lib.iter_samples(shard):
                caption = raw.caption.strip()
                if not caption:
                    raise data_lib.DataError(f"{raw.source}: sample {raw.sample_id!r} has an empty caption")
                ids.append(raw.sample_id)
                captions.append(caption)
                images.append(data_lib.decode_image(raw, self.resolution))
                if len(ids) == self.batch_size:
                    seen += len(ids)
                    yield self._batch(shard, ids, captions, self._stack(images), False, seen, append)
                    ids, captions, images = [], [], []
            seen += len(ids)
            last = self._batch(shard, ids, captions, self._stack(images), True, seen, append)
        yield last  # after the entry is committed

    def _stack(self, images: list) -> torch.Tensor:
        r = self.resolution
        return torch.from_numpy(np.stack(images)) if images else torch.zeros(0, 3, r, r, dtype=torch.uint8)

    def _batch(self, shard, ids, captions, image, done, seen, append=None) -> dict:
        if append is not None:
            append(ids, captions, image.numpy())
        return {
            "shard": shard.name,
            "sample_id": ids,
            "caption": captions,
            "image": image,
            "shard_done": done,
            "shard_size": seen,
        }


class PooledCaptions:
    """Pooled caption embeddings ([384] float32 each) by caption text, loaded from the cache once.

    Captions missing from the cache are encoded (and added to it) the first time they are seen.
    """

    def __init__(self, cache_dir, max_tokens: int = 16):
        self.cache_dir, self.max_tokens = cache_dir, max_tokens
        self.rows: dict[str, int] = {}
        self.pooled = torch.zeros(0, EMBED_DIM)
        path = None if cache_dir is None else Path(cache_dir) / f"captions-{MODEL_NAME}-T{max_tokens}.pt"
        if path is not None and path.exists():
            cached = torch.load(path, weights_only=True, mmap=True)  # only the pooled rows are read
            self.rows = {c: i for i, c in enumerate(cached["captions"])}
            self.pooled = cached["pooled"].float()

    def __call__(self, captions: list[str]) -> torch.Tensor:
        """[B, 384] pooled embeddings of ``captions``."""
        missing = [c for c in dict.fromkeys(captions) if c not in self.rows]
        if missing:
            new = embed_captions(missing, self.cache_dir, self.max_tokens)
            self.rows.update({c: len(self.rows) + i for i, c in enumerate(new.captions)})
            self.pooled = torch.cat([self.pooled, new.pooled.float()])
        return self.pooled[torch.tensor([self.rows[c] for c in captions], dtype=torch.long)]


def part_path(parts_dir: str | os.PathLike, shard_name: str) -> Path:
    """The partial output of one shard: ``{parts_dir}/{shard_name}.parquet``."""
    return Path(parts_dir) / f"{shard_name}.parquet"


def score_shards(
    rater,
    shards,
    parts_dir,
    resolution: int,
    cache_dir=None,
    max_tokens: int = 16,
    batch_size: int = 256,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    device="cpu",
    decoded_dir=None,
) -> list[Path]:
    """Score every sample of ``shards`` into one Parquet part per shard, skipping finished shards.

    Args:
        rater: :class:`alchemist_pl.rater.Rater`; ``rater.score(images [B,3,H,W] in [-1, 1],
            pooled [B, 384])`` gives [B] scores.
        shards: the pool's ``*.tar`` shards (:func:`shard_list`); every rank passes the same list.
        parts_dir: folder of the per-shard parts (created).
        resolution: image side in pixels (as the rater was trained).
        cache_dir, max_tokens: the caption-embedding cache (:mod:`alchemist_pl.text`).
        batch_size: samples per forward pass. num_workers: dataloader processes decoding shards.
        rank, world_size: this process's share of the shards (shard ``i`` → rank ``i % world_size``).
        decoded_dir: decoded-image cache folder (:mod:`alchemist_pl.decoded_cache`; None: none).
            Shards already in it are read memory-mapped in this process; the others are decoded
            by the workers, which add them to it.

    Returns:
        The part files this call wrote (shards already done are skipped and not returned).

    Raises:
        DataError: bad input, naming the shard and sample (see :mod:`alchemist_pl.data`).
    """
    todo = _unscored(shards, parts_dir, rank, world_size)
    cached = [s for s in todo if decoded_dir is not None and decoded_cache.has(decoded_dir, s, resolution)]
    to_decode = [s for s in todo if s not in cached]
    decoding = ShardBatches(to_decode, resolution, batch_size, decoded_dir=decoded_dir)
    batches = itertools.chain(
        ShardBatches(cached, resolution, batch_size, decoded_dir=decoded_dir),
        DataLoader(decoding, batch_size=None, num_workers=num_workers if to_decode else 0),
    )
    was_training = rater.training
    rater.eval()
    try:
        scored = _score_batches(rater, batches, PooledCaptions(cache_dir, max_tokens), device)
        return [_write_part(parts_dir, shard, ids, scores) for shard, ids, scores in scored]
    finally:
        rater.train(was_training)


def _unscored(shards, parts_dir, rank: int, world_size: int) -> list[Path]:
    """This rank's shards (``rank::world_size``) that have no part in ``parts_dir`` (created) yet."""
    Path(parts_dir).mkdir(parents=True, exist_ok=True)
    mine = [Path(s) for s in shards][rank::world_size]  # split before skipping: the same split on every rank
    todo = [s for s in mine if not part_path(parts_dir, s.name).exists()]
    if len(todo) < len(mine):
        log.info("streaming scores: %d of %d shards already done in %s", len(mine) - len(todo), len(mine), parts_dir)
    return todo


@torch.no_grad()
def _score_batches(rater, batches, captions: PooledCaptions, device) -> Iterator[tuple[str, list[str], np.ndarray]]:
    """``(shard name, sample_ids [N], scores [N] float32)`` for each shard, when its last batch is scored."""
    pending: dict[str, tuple[list, list]] = {}
    for batch in batches:
        ids, scores = pending.setdefault(batch["shard"], ([], []))
        if batch["sample_id"]:
            images = to_model_range(batch["image"].to(device))
            scores.append(rater.score(images, captions(batch["caption"]).to(device)).float().cpu().numpy())
            ids.extend(batch["sample_id"])
        if batch["shard_done"]:
            del pending[batch["shard"]]
            yield batch["shard"], ids, np.concatenate(scores) if scores else np.zeros(0, np.float32)


def _write_part(parts_dir, shard: str, ids: list[str], scores: np.ndarray) -> Path:
    """Write one shard's part atomically (:func:`part_path`)."""
    columns = {"sample_id": pa.array(ids, pa.string()), "score": scores}
    return write_table(part_path(parts_dir, shard), columns, {"shard": shard, "samples": len(ids)})


def merge_parts(shards, parts_dir, out_path, metadata: dict) -> Path:
    """Write ``scores.parquet`` from the parts of ``shards`` (in shard order), atomically.

    Raises:
        ScoresError: a shard has no part yet (names it), or a sample_id occurs twice.
    """
    tables = []
    for s in map(Path, shards):
        p = part_path(parts_dir, s.name)
        if not p.exists():
            raise ScoresError(f"{p}: missing: shard {s} has not been scored yet (rerun score_shards)")
        tables.append(pq.read_table(p).select(["sample_id", "score"]).replace_schema_metadata(None))
    table = pa.concat_tables(tables)
    ids = table.column("sample_id").to_pylist()
    if len(set(ids)) != len(ids):
        seen, dup = set(), None
        for s in ids:
            if s in seen:
                dup = s
                break
            seen.add(s)
        raise ScoresError(f"{parts_dir}: sample_id {dup!r} occurs in more than one shard")
    meta = {**metadata, "dataset_fingerprint": dataset_fingerprint(ids), "shards": len(tables)}
    return write_table(out_path, {"sample_id": ids, "score": table.column("score").to_numpy().astype(np.float32)}, meta)
