"""Building a planted pool: a copy of a clean training pool in which a known fraction is corrupted.

``build_corrupted_pool`` reads a clean pool (any folder :func:`alchemist_pl.data.iter_samples`
reads), corrupts a ``fraction`` of it, split evenly over the chosen kinds
(:mod:`alchemist_pl.corruption.kinds`), and writes webdataset shards plus the ground truth.

Sample ids are kept, so the corrupted pool has the clean pool's ids and size; a corrupted sample
replaces the clean one. The ground truth, ``corruptions.parquet`` beside the ``train/`` shards,
has one row per sample: ``sample_id``, ``corruption`` ("clean" or a kind) and ``other_id`` (the
sample whose caption or image was borrowed, else ""). D_val and the test split are not touched:
configs point only ``data.train_path`` at the corrupted pool.

Everything is drawn from ``numpy.random.default_rng(seed)``: the same arguments give the same
pool, byte for byte. The build is atomic (temporary folder, then rename) and idempotent (a
finished build with the same parameters is reused). ``python -m alchemist_pl.corruption SRC DST``
(or ``alchemist-corrupt``) builds one by hand.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image

from ..data import SHARD_MTIME, DataError, decode_image, iter_samples
from ..emoji import manifest_hash
from .kinds import CLEAN, KINDS, corrupt_image

log = logging.getLogger(__name__)

GROUND_TRUTH = "corruptions.parquet"
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr.transpose(1, 2, 0)).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _params(source: Path, fraction: float, kinds, seed: int, pool_size, resolution: int) -> dict:
    source_hash = manifest_hash(source.resolve().parent)
    return {
        "format_version": FORMAT_VERSION,
        # a built dataset is known by its manifest (so the pool can move between machines), else by path
        "source": source.name if source_hash else str(source.resolve()),
        "source_manifest_sha256": source_hash,
        "fraction": float(fraction),
        "kinds": list(kinds),
        "seed": int(seed),
        "pool_size": None if pool_size is None else int(pool_size),
        "resolution": int(resolution),
    }


def build_corrupted_pool(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    fraction: float = 0.3,
    kinds=KINDS,
    seed: int = 0,
    pool_size: int | None = None,
    resolution: int = 32,
    shard_size: int = 2000,
) -> Path:
    """Write a corrupted copy of the pool at ``source`` to ``out_dir/train`` with its ground truth.

    Args:
        source: clean pool (webdataset shards or image folder with metadata.jsonl).
        out_dir: output folder; gets ``train/*.tar``, ``corruptions.parquet``, ``manifest.json``.
        fraction: share of the pool to corrupt, in [0, 1); split evenly over ``kinds``.
        kinds: corruption kinds, a subset of :data:`KINDS`.
        seed: seed of every random choice.
        pool_size: use only the first ``pool_size`` samples of ``source`` (None: all).
        resolution: side in pixels the images are decoded to and written at.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ValueError: bad fraction or kind; DataError: unreadable source or a pool too small to
            corrupt (fewer than 5 samples).
    """
    source, out = Path(source), Path(out_dir)
    kinds = list(kinds)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"corruption fraction must be in [0, 1), got {fraction}")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"corruption kinds must be a non-empty subset of {KINDS}, got {kinds}")
    params = _params(source, fraction, kinds, seed, pool_size, resolution)
    manifest = out / MANIFEST
    if manifest.exists():
        if json.loads(manifest.read_text()).get("params") == params:
            return out
        raise FileExistsError(
            f"{out} holds a corrupted pool built with other parameters; remove it or choose another dir"
        )

    ids, captions, images = _load_pool(source, pool_size, resolution)
    new_images, new_captions, kind_of, other_id = _plant(ids, captions, images, fraction, kinds, seed)
    counts = {k: int((kind_of == k).sum()) for k in (CLEAN, *kinds)}
    _write_pool(out, ids, new_images, new_captions, kind_of, other_id, {"params": params, "counts": counts}, shard_size)
    log.info("corrupted pool: %d samples, %s -> %s", len(ids), counts, out)
    return out


def _load_pool(source: Path, pool_size: int | None, resolution: int):
    """(sample_ids, captions, uint8 images [3, H, W]) of the first ``pool_size`` samples of ``source``.

    Raises:
        DataError: unreadable source or fewer than 5 samples.
    """
    ids, captions, images = [], [], []
    for raw in iter_samples(source):
        if pool_size is not None and len(ids) >= pool_size:
            break
        ids.append(raw.sample_id)
        captions.append(raw.caption.strip())
        images.append(decode_image(raw, resolution))
    n = len(ids)
    if n < 5:
        raise DataError(f"{source}: {n} samples; a corrupted pool needs at least 5")
    return ids, captions, images


def _plant(ids, captions, images, fraction: float, kinds: list, seed: int):
    """Corrupt ``round(fraction * N)`` samples, evenly over ``kinds``, with one seeded generator.

    Returns:
        (images, captions, kind of each sample [N] object (CLEAN or a kind), other_id: the
        sample_ids a swapped caption, collage or near-duplicate came from, "" for none).
    """
    rng = np.random.default_rng(seed)
    n = len(ids)
    n_bad = int(round(fraction * n))
    chosen = rng.permutation(n)[:n_bad]
    kind_of = np.full(n, CLEAN, dtype=object)
    kind_of[chosen] = [kinds[i % len(kinds)] for i in range(n_bad)]
    other_id = [""] * n
    new_images, new_captions = list(images), list(captions)
    for i in np.sort(chosen):
        kind = kind_of[i]
        others = []
        if kind == "caption_swap":
            j = int(rng.integers(n))
            while captions[j] == captions[i]:
                j = int(rng.integers(n))
            new_captions[i], other_id[i] = captions[j], ids[j]
        elif kind == "collage":
            js = rng.choice(np.delete(np.arange(n), i), size=3, replace=False)
            others = [images[j] for j in js]
            other_id[i] = ",".join(ids[j] for j in js)
        elif kind == "near_duplicate":
            j = int(rng.integers(n - 1))
            j += j >= i
            others = [images[j]]
            new_captions[i], other_id[i] = captions[j], ids[j]
        new_images[i] = corrupt_image(kind, images[i], rng, others)
    return new_images, new_captions, kind_of, other_id


def _write_pool(out: Path, ids, images, captions, kind_of, other_id, manifest: dict, shard_size: int) -> None:
    """Shards, ground truth and ``manifest`` (plus the shards' sha256) into a temporary folder,
    then renamed onto ``out`` (a killed build never leaves a half-written pool)."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        (tmp / "train").mkdir(parents=True)
        with wds.ShardWriter(
            str(tmp / "train" / "train-%06d.tar"), maxcount=shard_size, verbose=0, mtime=SHARD_MTIME
        ) as sink:
            for i in range(len(ids)):
                sink.write(
                    {
                        "__key__": ids[i],
                        "png": _png(images[i]),
                        "txt": captions[i],
                        "json": {"corruption": kind_of[i], "other_id": other_id[i]},
                    }
                )
        _write_ground_truth(tmp / GROUND_TRUTH, ids, [str(k) for k in kind_of], other_id)
        shards = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((tmp / "train").glob("*.tar"))}
        (tmp / MANIFEST).write_text(json.dumps({**manifest, "shards": shards}, indent=2))
        if out.exists():  # an interrupted earlier build without manifest
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _write_ground_truth(path: Path, ids, kinds, other_ids) -> None:
    pq.write_table(pa.table({"sample_id": ids, "corruption": kinds, "other_id": other_ids}), path)


def read_ground_truth(path: str | os.PathLike) -> dict[str, str]:
    """``{sample_id: corruption}`` from a ``corruptions.parquet`` (kind, or "clean").

    Raises:
        DataError: missing file or columns.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: ground-truth file does not exist")
    table = pq.read_table(path)
    for col in ("sample_id", "corruption"):
        if col not in table.column_names:
            raise DataError(f"{path}: missing column {col!r} (expected sample_id, corruption)")
    return dict(zip(table.column("sample_id").to_pylist(), table.column("corruption").to_pylist()))


def ground_truth_for(train_path: str | os.PathLike) -> Path | None:
    """The ``corruptions.parquet`` that describes the pool at ``train_path`` (its parent folder), if any."""
    p = Path(train_path)
    for cand in (p / GROUND_TRUTH, p.parent / GROUND_TRUTH):
        if cand.is_file():
            return cand
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a copy of a clean pool with planted web-style noise.")
    parser.add_argument("source", help="clean pool: folder of webdataset shards or image folder")
    parser.add_argument("out_dir")
    parser.add_argument("--fraction", type=float, default=0.3)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool-size", type=int, default=None)
    parser.add_argument("--resolution", type=int, default=32)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = build_corrupted_pool(
        args.source, args.out_dir, args.fraction, args.kinds.split(","), args.seed, args.pool_size, args.resolution
    )
    print(json.dumps(json.loads((out / MANIFEST).read_text())["counts"], indent=2))
