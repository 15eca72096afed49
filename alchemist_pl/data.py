"""Image-caption datasets: webdataset shards (img2dataset layout) and image folders with metadata.jsonl.

Both readers yield ``(sample_id, PIL image bytes, caption)``; :func:`load_split` decodes, checks and
resizes them into an in-memory :class:`ImageCaptionDataset`. Policy on bad input: an error that
names the file and the sample and says what was expected. Nothing is skipped silently.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .text import CaptionEmbeddings, embed_captions

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")

# Member mtime of the shards this package writes (the emoji dataset, the planted-noise pool): an
# integer, so webdataset's TarWriter writes no PAX header per member (its default, a float
# time.time(), adds one: shards 1.8x larger and tar reading 2.2x slower; measured in
# benchmarks/results/streaming-scoring.md), and a rebuild with the same content gives the same bytes.
SHARD_MTIME = 1_700_000_000


class DataError(ValueError):
    """Bad input data; the message names the file and sample."""


@dataclass
class RawSample:
    sample_id: str
    image: bytes
    caption: str
    source: str  # file the sample came from, for error messages


def _shards(path: Path) -> list[Path]:
    if path.is_file() and path.suffix == ".tar":
        return [path]
    return sorted(path.glob("*.tar"))


def _read_shard(shard: Path) -> Iterator[dict]:
    """Samples of one tar shard via webdataset; a broken archive raises DataError naming the shard."""
    import tarfile

    import webdataset as wds

    try:
        # one shard, read whole in this process: no splitting by node (DDP) or dataloader worker
        yield from wds.WebDataset(
            str(shard), shardshuffle=False, empty_check=False, nodesplitter=None, workersplitter=None
        )
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(
            f"{shard}: not a readable tar archive (expected a webdataset shard; {type(e).__name__}: {e})"
        ) from e


def iter_webdataset(path: Path) -> Iterator[RawSample]:
    """Samples of the ``*.tar`` shards in ``path`` (or one shard), in shard order.

    Expects img2dataset's layout: ``{key}.jpg|jpeg|png|webp`` and ``{key}.txt`` per sample
    (``{key}.json`` optional and ignored here). The key is the sample_id.
    """
    for shard in _shards(path):
        for sample in _read_shard(shard):
            key = sample["__key__"]
            image_ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
            if image_ext is None:
                raise DataError(
                    f"{shard}: sample {key!r} has no image (expected one of "
                    f"{', '.join('.' + e for e in IMAGE_EXTENSIONS)}; found {sorted(k for k in sample if not k.startswith('__'))})"
                )
            if "txt" not in sample:
                raise DataError(f"{shard}: sample {key!r} has no caption (expected {key}.txt)")
            try:
                caption = sample["txt"].decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{shard}: sample {key!r}: caption {key}.txt is not UTF-8 ({e})") from e
            yield RawSample(key, sample[image_ext], caption, str(shard))


def iter_image_folder(path: Path) -> Iterator[RawSample]:
    """Samples listed in ``path/metadata.jsonl`` (one JSON object per line: ``file_name``, ``text``).

    The sample_id is ``file_name`` (relative to ``path``).
    """
    meta = path / "metadata.jsonl"
    with open(meta, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{meta}:{lineno}: not valid JSON ({e})") from e
            name = row.get("file_name")
            if not name:
                raise DataError(f"{meta}:{lineno}: missing 'file_name'")
            if not isinstance(row.get("text"), str):
                raise DataError(f"{meta}:{lineno}: sample {name!r} has no caption (expected a string 'text')")
            file = path / name
            if not file.is_file():
                raise DataError(f"{meta}:{lineno}: sample {name!r}: image file {file} does not exist")
            yield RawSample(name, file.read_bytes(), row["text"], str(meta))


def iter_samples(path: str | os.PathLike) -> Iterator[RawSample]:
    """Dispatch on the layout of ``path``: webdataset shards or an image folder with metadata.jsonl."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"data path {p} does not exist")
    if p.is_dir() and (p / "metadata.jsonl").is_file():
        return iter_image_folder(p)
    if _shards(p):
        return iter_webdataset(p)
    raise DataError(f"data path {p} holds neither *.tar webdataset shards nor an image folder with metadata.jsonl")


def decode_image(raw: RawSample, resolution: int) -> np.ndarray:
    """Decode to uint8 RGB [3, resolution, resolution]: alpha composited on white, centre crop, resize.

    An image stored at ``resolution`` x ``resolution`` is not resampled, and no conversion runs on
    an image already in the target mode (the same pixels as resampling it, fewer copies).

    Raises:
        DataError: the bytes are not a decodable image (names the file and sample).
    """
    try:
        with Image.open(io.BytesIO(raw.image)) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                if im.mode != "RGBA":
                    im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: scale 0..65535 to 0..255
                arr = np.asarray(im, dtype=np.float32)
                im = Image.fromarray(np.clip(arr / 257.0, 0, 255).round().astype(np.uint8))
            if im.mode != "RGB":
                im = im.convert("RGB")
            if im.size != (resolution, resolution):
                im = ImageOps.fit(im, (resolution, resolution), Image.Resampling.BICUBIC)
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy()
    except Exception as e:  # PIL raises many types for corrupt files
        raise DataError(f"{raw.source}: sample {raw.sample_id!r}: cannot decode image ({type(e).__name__}: {e})") from e


class ImageCaptionDataset(torch.utils.data.Dataset):
    """In-memory image-caption pairs with cached caption embeddings.

    Item ``i`` is a dict:
        ``index``: int, position in this dataset;
        ``image``: [3, H, W] float32 in [-1, 1];
        ``states``: [T, 384] float32 caption token states; ``mask``: [T] bool;
        ``pooled``: [384] float32 sentence embedding.
    """

    def __init__(self, sample_ids: list[str], images: torch.Tensor, captions: list[str], text: CaptionEmbeddings):
        self.sample_ids = sample_ids
        self.images = images  # [N, 3, H, W] uint8
        self.captions = captions
        self.text = text
        row = {c: i for i, c in enumerate(text.captions)}
        self.caption_rows = torch.tensor([row[c] for c in captions], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __getitem__(self, i: int) -> dict:
        r = self.caption_rows[i]
        return {
            "index": i,
            "image": self.images[i].float() / 127.5 - 1.0,
            "states": self.text.states[r].float(),
            "mask": self.text.mask[r],
            "pooled": self.text.pooled[r],
        }

    def index_of(self, sample_ids, source: str = "the file") -> np.ndarray:
        """Positions of ``sample_ids`` in this dataset; raises DataError naming ``source`` and unknown ids."""
        pos = {s: i for i, s in enumerate(self.sample_ids)}
        idx = [pos.get(s, -1) for s in sample_ids]
        missing = [s for s, i in zip(sample_ids, idx) if i < 0]
        if missing:
            raise DataError(
                f"{source}: {len(missing)} of {len(idx)} sample_ids are not in this dataset "
                f"(first: {missing[:3]}); was the file made for another dataset?"
            )
        return np.asarray(idx, dtype=np.int64)


def load_split(
    path: str | os.PathLike,
    resolution: int,
    cache_dir: str | os.PathLike | None,
    limit: int | None = None,
    max_tokens: int = 16,
) -> ImageCaptionDataset:
    """Read, check and decode one split into memory.

    Args:
        path: folder of ``*.tar`` shards (or one shard), or an image folder with ``metadata.jsonl``.
        resolution: output side in pixels.
        cache_dir: caption-embedding cache folder (None: no cache).
        limit: keep only the first ``limit`` samples (smoke runs).

    Raises:
        DataError: missing path, undecodable image, missing/empty/non-UTF-8 caption, duplicate
            sample_id — each naming the file and sample.
    """
    ids, images, captions, seen = [], [], [], {}
    for raw in iter_samples(path):
        if limit is not None and len(ids) >= limit:
            break
        if raw.sample_id in seen:
            raise DataError(
                f"{raw.source}: duplicate sample_id {raw.sample_id!r} (first seen in {seen[raw.sample_id]})"
            )
        seen[raw.sample_id] = raw.source
        caption = raw.caption.strip()
        if not caption:
            raise DataError(f"{raw.source}: sample {raw.sample_id!r} has an empty caption")
        ids.append(raw.sample_id)
        images.append(decode_image(raw, resolution))
        captions.append(caption)
    if not ids:
        raise DataError(f"data path {path} holds no samples")
    text = embed_captions(captions + [""], cache_dir, max_tokens)
    log.info("loaded %d samples (%d distinct captions) from %s", len(ids), len(text.captions) - 1, path)
    return ImageCaptionDataset(ids, torch.from_numpy(np.stack(images)), captions, text)
