"""The embedded default dataset: real emoji image-caption pairs built offline from npm packages.

Each `@iconify-json/<set>` npm package holds one emoji set as SVG bodies with names. We fetch a
pinned version with the npm client (the only host this tool talks to), render every icon with
resvg-py onto white, caption it with its name ("cloud-with-lightning" -> "cloud with lightning"),
and write webdataset shards for three splits:

- ``train``: the pool the rater scores and the pruning selects from,
- ``val``:   D_val, the rater's held-out validation set (paper Eq. 2),
- ``test``:  evaluation only.

The split is by caption *concept* (a hash of the caption text), so every drawing of one concept,
in every style, lands in the same split and test captions are unseen in training.

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
import subprocess
import tarfile
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

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
FORMAT_VERSION = 1


def caption_split(caption: str, val_frac: float, test_frac: float) -> str:
    """Split of a caption concept: a stable hash of the text, so a concept never straddles splits."""
    u = int.from_bytes(hashlib.sha1(caption.encode("utf-8")).digest()[:8], "big") / 2**64
    if u < test_frac:
        return "test"
    if u < test_frac + val_frac:
        return "val"
    return "train"


def _npm_pack(package: str, dest: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(
            "building the embedded emoji dataset needs the npm client (Node.js), which was not "
            "found on PATH. Install it (Debian/Ubuntu: `apt-get install npm`), or point "
            "data.train_path/val_path/test_path at your own webdataset shards or image folders."
        )
    proc = subprocess.run(
        [npm, "pack", package, "--pack-destination", str(dest), "--silent"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"`npm pack {package}` failed (exit {proc.returncode}): {proc.stderr.strip()}")
    name = proc.stdout.strip().splitlines()[-1]
    return dest / name


def _read_icon_set(tgz: Path) -> tuple[dict, dict]:
    """Return (icons.json, info.json) from an @iconify-json package tarball."""
    with tarfile.open(tgz, "r:gz") as tar:
        icons = json.load(tar.extractfile("package/icons.json"))
        info = json.load(tar.extractfile("package/info.json"))
    return icons, info


def _render(args: tuple[str, int]) -> bytes:
    import resvg_py

    svg, size = args
    return bytes(resvg_py.svg_to_bytes(svg_string=svg, width=size, height=size, background="#ffffff"))


def _svg(icon: dict, icon_set: dict) -> str:
    left = icon.get("left", icon_set.get("left", 0))
    top = icon.get("top", icon_set.get("top", 0))
    width = icon.get("width", icon_set.get("width", 16))
    height = icon.get("height", icon_set.get("height", 16))
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        f'viewBox="{left} {top} {width} {height}">{icon["body"]}</svg>'
    )


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

    Args:
        out_dir: folder that will hold ``train/``, ``val/``, ``test/`` shards and ``manifest.json``.
        sets: npm set name -> version; default :data:`EMOJI_SETS`.
        resolution: side of the rendered square PNGs, in pixels.
        val_frac, test_frac: share of caption concepts in D_val and in the test split.
        shard_size: samples per tar shard.
        seed: order of samples inside each split (shards are shuffled once, at build time).
        workers: render processes (default: all cores).

    Raises:
        RuntimeError: npm is missing or a package cannot be fetched.
        ValueError: an icon cannot be rendered (names the set and icon).
    """
    import webdataset as wds

    from .data import SHARD_MTIME

    out = Path(out_dir)
    sets = dict(EMOJI_SETS if sets is None else sets)
    params = _params(sets, resolution, val_frac, test_frac, shard_size, seed)
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("params") == params:
            return out
        raise RuntimeError(
            f"{out} already holds an emoji dataset built with other parameters "
            f"({manifest.get('params')}); remove it or choose another data.data_dir"
        )

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        records = []  # (split, sample_id, caption, set, name, svg)
        set_info = {}
        with tempfile.TemporaryDirectory() as pack_dir:
            for set_name, version in sets.items():
                package = f"@iconify-json/{set_name}@{version}"
                log.info("fetching %s", package)
                icons, info = _read_icon_set(_npm_pack(package, Path(pack_dir)))
                set_info[set_name] = {
                    "package": package,
                    "name": info.get("name"),
                    "author": info.get("author"),
                    "license": info.get("license"),
                    "icons": len(icons["icons"]),
                }
                for name, icon in sorted(icons["icons"].items()):
                    caption = name.replace("-", " ").replace("_", " ").strip()
                    split = caption_split(caption, val_frac, test_frac)
                    sample_id = f"{set_name}__{name}"
                    records.append((split, sample_id, caption, set_name, name, _svg(icon, icons)))

        log.info("rendering %d icons at %d px", len(records), resolution)
        with ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
            pngs = list(pool.map(_render, [(r[5], resolution) for r in records], chunksize=256))

        rng = random.Random(seed)
        counts = {}
        for split in SPLITS:
            items = [(r, png) for r, png in zip(records, pngs) if r[0] == split]
            rng.shuffle(items)
            (tmp / split).mkdir()
            pattern = str(tmp / split / f"{split}-%06d.tar")
            with wds.ShardWriter(pattern, maxcount=shard_size, verbose=0, mtime=SHARD_MTIME) as sink:
                for (_, sample_id, caption, set_name, name, _), png in items:
                    sink.write(
                        {
                            "__key__": sample_id,
                            "png": png,
                            "txt": caption,
                            "json": {"set": set_name, "icon": name, "license": set_info[set_name]["license"]},
                        }
                    )
            counts[split] = {
                "samples": len(items),
                "captions": len({r[2] for r, _ in items}),
                "per_set": {s: sum(1 for r, _ in items if r[3] == s) for s in sets},
            }

        shards = {str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.glob("*/*.tar"))}
        manifest = {"params": params, "counts": counts, "sets": set_info, "shards": shards}
        (tmp / "LICENSES.md").write_text(_licenses_md(set_info))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
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
