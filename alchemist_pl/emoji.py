"""The embedded default dataset: real emoji image-caption pairs built offline from npm packages.

Each `@iconify-json/<set>` npm package holds one emoji set as SVG bodies with names. We fetch a
pinned version with the npm client (the only host this tool talks to), render every icon with
resvg-py onto white, caption it with its name ("cloud-with-lightning" -> "cloud with lightning"),
and write webdataset shards for three splits:

- ``train``: the pool the rater scores and the pruning selects from,
- ``val``:   D_val, the rater's held-out validation set (paper Eq. 2),
- ``test``:  evaluation only.

The split is by caption *concept* (:mod:`alchemist_pl.caption_concepts`): skin-tone, gender,
hair and direction variants of one emoji, and the names different sets give one emoji, share a
concept, and a concept's split is a hash of its text (:func:`caption_split`). So every drawing
and every variant of one emoji, in every style, lands in the same split: no test caption has a
sibling in ``train`` or ``val``.

Usage: ``python -m alchemist_pl.emoji DIR`` or :func:`build_emoji_dataset`; the default
experiments call it on first use. The build is idempotent: a finished ``manifest.json`` with the
same parameters means nothing is redone. Licences and attribution of every set are written to
``manifest.json`` and ``LICENSES.md`` beside the shards.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
from pathlib import Path

import webdataset as wds

from .caption_concepts import concept_groups
from .data import SHARD_MTIME
from .iconify import Icon, fetch_icon_sets, render_icons

log = logging.getLogger(__name__)

#: npm package versions, pinned so the dataset is the same on every machine.
EMOJI_SETS: dict[str, str] = {
    "noto": "1.2.9",
    "twemoji": "1.2.5",
    "openmoji": "1.2.29",
    "fluent-emoji-flat": "1.2.6",
    "emojione": "1.2.3",
    "noto-v1": "1.2.5",
}

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
#: 2: split by caption concept (:mod:`alchemist_pl.caption_concepts`); 1: by exact caption.
FORMAT_VERSION = 2


def caption_split(concept: str, val_frac: float, test_frac: float) -> str:
    """Split (``"train"``, ``"val"`` or ``"test"``) of a caption concept: ``u`` = the first 8 bytes of
    sha1(concept) / 2**64 is ``"test"`` below ``test_frac``, ``"val"`` below ``test_frac + val_frac``.

    ``concept`` is a :func:`~alchemist_pl.caption_concepts.concept_groups` value, so all siblings of
    a caption get its split.
    """
    u = int.from_bytes(hashlib.sha1(concept.encode("utf-8")).digest()[:8], "big") / 2**64
    if u < test_frac:
        return "test"
    if u < test_frac + val_frac:
        return "val"
    return "train"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _params(sets, resolution, val_frac, test_frac, shard_size, seed) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "sets": dict(sets),
        "resolution": resolution,
        "val_frac": val_frac,
        "test_frac": test_frac,
        "shard_size": shard_size,
        "seed": seed,
    }


def _already_built(out: Path, params: dict) -> bool:
    """True if ``out`` holds a finished build with ``params``; raises if it holds another build."""
    manifest_path = out / MANIFEST
    if not manifest_path.exists():
        return False
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("params") == params:
        return True
    raise RuntimeError(
        f"{out} already holds an emoji dataset built with other parameters "
        f"({manifest.get('params')}, we need {params}); remove it or choose another data.data_dir"
    )


def _write_split(folder: Path, items: list[tuple[Icon, bytes]], meta: dict, shard_size: int) -> None:
    """Write ``(icon, png)`` items as webdataset shards ``folder/<split>-%06d.tar``; ``meta``:
    sample_id -> the sample's ``json`` field."""
    folder.mkdir()
    pattern = str(folder / f"{folder.name}-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=shard_size, verbose=0, mtime=SHARD_MTIME) as sink:
        for icon, png in items:
            sink.write({"__key__": icon.sample_id, "png": png, "txt": icon.caption, "json": meta[icon.sample_id]})


def _sample_meta(icon: Icon, set_info: dict, concepts: dict, code_points: dict) -> dict:
    """The ``json`` field of a sample: set, icon name, licence, caption concept, base code points."""
    return {
        "set": icon.set_name,
        "icon": icon.name,
        "license": set_info[icon.set_name]["license"],
        "concept": concepts[icon.caption],
        "code_points": sorted(code_points.get(icon.sample_id, ())),
    }


def _split_counts(items: list[tuple[Icon, bytes]], concepts: dict[str, str], sets: dict) -> dict:
    return {
        "samples": len(items),
        "captions": len({icon.caption for icon, _ in items}),
        "concepts": len({concepts[icon.caption] for icon, _ in items}),
        "per_set": {s: sum(1 for icon, _ in items if icon.set_name == s) for s in sets},
    }


def _build_into(tmp: Path, params: dict, workers: int | None) -> None:
    """Fetch, render, split and write the dataset of ``params`` (:func:`_params`) into ``tmp``."""
    sets = params["sets"]
    icons, same_emoji, code_points, set_info = fetch_icon_sets(sets)
    concepts = concept_groups([icon.caption for icon in icons], same_emoji)
    log.info("rendering %d icons at %d px", len(icons), params["resolution"])
    pngs = render_icons(icons, params["resolution"], workers)
    meta = {icon.sample_id: _sample_meta(icon, set_info, concepts, code_points) for icon in icons}
    split_of = [caption_split(concepts[icon.caption], params["val_frac"], params["test_frac"]) for icon in icons]
    rng, counts = random.Random(params["seed"]), {}
    for split in SPLITS:
        items = [(icon, png) for icon, png, s in zip(icons, pngs, split_of) if s == split]
        rng.shuffle(items)
        _write_split(tmp / split, items, meta, params["shard_size"])
        counts[split] = _split_counts(items, concepts, sets)
    shards = {str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.glob("*/*.tar"))}
    manifest = {"params": params, "counts": counts, "sets": set_info, "shards": shards}
    (tmp / "LICENSES.md").write_text(_licenses_md(set_info))
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))


def build_emoji_dataset(
    out_dir: str | os.PathLike,
    sets: dict[str, str] | None = None,
    resolution: int = 32,
    val_frac: float = 0.06,
    test_frac: float = 0.06,
    shard_size: int = 2000,
    seed: int = 0,
    workers: int | None = None,
) -> Path:
    """Build (or reuse) the emoji webdataset under ``out_dir`` and return ``out_dir``.

    Each sample's ``json`` holds its set, icon name, licence, caption concept and base code points.

    Args:
        out_dir: folder that will hold ``train/``, ``val/``, ``test/`` shards and ``manifest.json``.
        sets: npm set name -> version; default :data:`EMOJI_SETS`.
        resolution: side of the rendered square PNGs, in pixels.
        val_frac, test_frac: share of caption concepts in D_val and in the test split.
        shard_size: samples per tar shard.
        seed: order of samples inside each split (shards are shuffled once, at build time).
        workers: render processes (default: all cores).

    Raises:
        RuntimeError: npm is missing, a package cannot be fetched, or ``out_dir`` holds a build
            with other parameters (an older format version included).
        ValueError: an icon cannot be rendered (names the set and icon).
    """
    out = Path(out_dir)
    sets = dict(EMOJI_SETS if sets is None else sets)
    params = _params(sets, resolution, val_frac, test_frac, shard_size, seed)
    if _already_built(out, params):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _build_into(tmp, params, workers)
        if out.exists():  # an interrupted earlier build without manifest
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _licenses_md(set_info: dict) -> str:
    lines = [
        "# Licences of the embedded emoji dataset",
        "",
        "Every image in this folder is a rendering of an icon from the npm package named below,",
        "under that package's licence. Captions are the icons' names.",
        "",
        "| set | package | author | licence |",
        "|---|---|---|---|",
    ]
    for name, info in set_info.items():
        author = info.get("author") or {}
        lic = info.get("license") or {}
        lines.append(
            f"| {info.get('name') or name} | {info['package']} | "
            f"{author.get('name', '?')} ({author.get('url', '')}) | "
            f"{lic.get('title', '?')} ({lic.get('url', '')}) |"
        )
    return "\n".join(lines) + "\n"


def manifest_hash(data_dir: str | os.PathLike) -> str | None:
    """sha256 of ``manifest.json`` in ``data_dir`` (None if there is none): identifies a dataset build."""
    path = Path(data_dir) / MANIFEST
    return _sha256(path) if path.exists() else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--resolution", type=int, default=32)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = build_emoji_dataset(args.out_dir, resolution=args.resolution)
    print(json.dumps(json.loads((out / MANIFEST).read_text())["counts"], indent=2))


if __name__ == "__main__":
    main()
