"""Image-caption datasets: webdataset shards (img2dataset layout) and image folders with metadata.jsonl.

Both readers yield ``(sample_id, PIL image bytes, caption)``; :func:`load_split` decodes, checks and
resizes them into an in-memory :class:`ImageCaptionDataset`. Policy on bad input: an error that
names the file and the sample and says what was expected. Nothing is skipped silently.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import shards as shard_reader
from .errors import DataError
from .images import decode_image
from .pixels import to_model_range
from .text import CaptionEmbeddings, embed_captions, token_counts

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")

# Member mtime of the shards this package writes (the emoji dataset, the planted-noise pool): an
# integer, so webdataset's TarWriter writes no PAX header per member (its default, a float
# time.time(), adds one: shards 1.8x larger and tar reading 2.2x slower; measured in
# benchmarks/results/streaming-scoring.md), and a rebuild with the same content gives the same bytes.
SHARD_MTIME = 1_700_000_000


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


def iter_webdataset(path: Path) -> Iterator[RawSample]:
    """Samples of the ``*.tar`` shards in ``path`` (or one shard), in shard order.

    Expects img2dataset's layout: ``{key}.jpg|jpeg|png|webp`` and ``{key}.txt`` per sample, the
    key being a member's name up to the first dot of its file name (:mod:`alchemist_pl.shards`).
    Other fields (``{key}.json``, ...) are ignored. The key is the sample_id.

    Raises:
        DataError: naming the shard and key: a truncated or malformed shard (:mod:`alchemist_pl.shards`),
            no image, several images, no caption, a caption that is not UTF-8.
    """
    for shard in _shards(path):
        incomplete = None  # raised at the end of the shard, unless the rest shows the true reason
        for key, fields in shard_reader.samples(shard):
            images = [e for e in IMAGE_EXTENSIONS if e in fields]
            if len(images) > 1:
                names = ", ".join(fields[e][0] for e in images)
                raise DataError(f"{shard}: sample {key!r} has several images ({names}); expected one")
            if not images or "txt" not in fields:
                # a member of this key later in the shard (not adjacent) is the true reason; see samples()
                incomplete = incomplete or _missing_field(shard, key, fields, "image" if not images else "caption")
                continue
            try:
                caption = fields["txt"][1].decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{shard}: sample {key!r}: caption {fields['txt'][0]} is not UTF-8 ({e})") from e
            if incomplete is None:
                yield RawSample(key, fields[images[0]][1], caption, str(shard))
        if incomplete is not None:
            raise incomplete


def _missing_field(shard: Path, key: str, fields: dict, what: str) -> DataError:
    """The DataError for a sample without an image or caption, with the reason its members show."""
    wanted = IMAGE_EXTENSIONS if what == "image" else ("txt",)
    for field, (name, _) in fields.items():
        if "." in field and field.rsplit(".", 1)[1] in wanted:  # e.g. img.v2.final.png: key 'img'
            stem, ext = name.rsplit(".", 1)
            return DataError(
                f"{shard}: sample {key!r} has no {what}: member {name} is field {field!r} of sample {key!r}, "
                f"because a key ends at the first dot of the file name (webdataset's rule); use keys "
                f"without dots (e.g. {stem.replace('.', '_')}.{ext})"
            )
    expected = " or ".join(f"{key}.{e}" for e in wanted)
    found = sorted(name for name, _ in fields.values())
    return DataError(f"{shard}: sample {key!r} has no {what} (expected {expected}; found {found})")


def iter_image_folder(path: Path, counts: Counter | None = None) -> Iterator[RawSample]:
    """Samples listed in ``path/metadata.jsonl`` (one JSON object per line: ``file_name``, ``text``).

    The sample_id is ``file_name`` (relative to ``path``). Blank lines hold no sample: they are
    passed over and counted in ``counts["blank_metadata_lines"]``.

    Raises:
        DataError: naming the line and sample: invalid JSON, no ``file_name``, no string ``text``,
            a missing image file.
    """
    meta = path / "metadata.jsonl"
    counts = Counter() if counts is None else counts
    with open(meta, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                counts["blank_metadata_lines"] += 1
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


def iter_samples(path: str | os.PathLike, counts: Counter | None = None) -> Iterator[RawSample]:
    """Dispatch on the layout of ``path``: webdataset shards or an image folder with metadata.jsonl.

    ``counts``: a Counter that receives what the reader passed over (:func:`iter_image_folder`).
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"data path {p} does not exist")
    if p.is_dir() and (p / "metadata.jsonl").is_file():
        return iter_image_folder(p, counts)
    if _shards(p):
        return iter_webdataset(p)
    raise DataError(f"data path {p} holds neither *.tar webdataset shards nor an image folder with metadata.jsonl")


class ImageCaptionDataset(torch.utils.data.Dataset):
    """In-memory image-caption pairs with cached caption embeddings.

    Item ``i`` is a dict:
        ``index``: int, position in this dataset;
        ``image``: [3, H, W] float32 in [-1, 1], or, when ``latents`` is set
        (:func:`alchemist_pl.latents.latent_dataset`), the sample's latent [C, h, w] float32;
        ``states``: [T, 384] float32 caption token states; ``mask``: [T] bool;
        ``pooled``: [384] float32 sentence embedding.
    """

    def __init__(self, sample_ids: list[str], images: torch.Tensor, captions: list[str], text: CaptionEmbeddings):
        self.sample_ids = sample_ids
        self.images = images  # [N, 3, H, W] uint8
        self.latents: torch.Tensor | None = None  # [N, C, h, w] float32, served as "image" when set
        self.captions = captions
        self.text = text
        row = {c: i for i, c in enumerate(text.captions)}
        self.caption_rows = torch.tensor([row[c] for c in captions], dtype=torch.long)
        self.input_report: dict = {"samples": len(sample_ids)}  # set by load_split

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __getitem__(self, i: int) -> dict:
        r = self.caption_rows[i]
        return {
            "index": i,
            "image": to_model_range(self.images[i]) if self.latents is None else self.latents[i],
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
        max_tokens: caption tokens the text encoder keeps; longer captions are cut to their first
            ``max_tokens`` tokens (counted and logged).

    Returns:
        the dataset; its ``input_report`` counts what reading passed over or changed:
        ``samples``, ``blank_metadata_lines``, ``captions_truncated`` (more than ``max_tokens``
        tokens, special tokens included) and ``max_tokens``.

    Raises:
        DataError: missing path, undecodable image, missing/empty/non-UTF-8 caption, duplicate
            sample_id — each naming the file and sample.
    """
    ids, images, captions, seen, counts = [], [], [], {}, Counter()
    for raw in iter_samples(path, counts):
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
    ds = ImageCaptionDataset(ids, torch.from_numpy(np.stack(images)), captions, text)
    ds.input_report = _input_report(path, ids, captions, counts, max_tokens)
    return ds


def _input_report(path, ids: list[str], captions: list[str], counts: Counter, max_tokens: int) -> dict:
    """What reading passed over or changed, counted and logged (see :func:`load_split`)."""
    tokens = dict(zip(dict.fromkeys(captions), token_counts(list(dict.fromkeys(captions)))))
    cut = [i for i, c in enumerate(captions) if tokens[c] > max_tokens]
    if cut:
        log.warning(
            "%s: %d of %d captions have more than data.max_tokens=%d tokens and are cut to the first %d "
            "(first: sample %r, %d tokens)",
            path,
            len(cut),
            len(ids),
            max_tokens,
            max_tokens,
            ids[cut[0]],
            tokens[captions[cut[0]]],
        )
    if counts["blank_metadata_lines"]:
        log.warning("%s: %d blank lines in metadata.jsonl passed over", path, counts["blank_metadata_lines"])
    return {
        "samples": len(ids),
        "blank_metadata_lines": counts["blank_metadata_lines"],
        "captions_truncated": len(cut),
        "max_tokens": max_tokens,
    }
