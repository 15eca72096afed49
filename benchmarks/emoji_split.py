"""Split sizes of an emoji dataset build and how many test captions have a sibling in train or D_val.

    python benchmarks/emoji_split.py DIR [DIR ...] --out benchmarks/results/emoji-split.md

For each build folder (``python -m alchemist_pl.emoji DIR``): images, captions and caption
concepts per split (from ``manifest.json``; concepts recomputed from the captions where an older
manifest lacks them), and the test captions, test images and evaluation prompts (the first 128 /
256 test samples in shard order, as ``eval.num_images`` takes them) whose
:func:`~alchemist_pl.caption_concepts.caption_concept` also occurs in ``train`` or ``val``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's alchemist_pl, not another installed copy

from stamp import commit  # noqa: E402

from alchemist_pl.caption_concepts import caption_concept  # noqa: E402
from alchemist_pl.data import iter_samples  # noqa: E402

SPLITS = ("train", "val", "test")
PROMPTS = (128, 256)


def split_report(data_dir: Path) -> list[str]:
    """Markdown rows ``| build | split | images | captions | concepts | with a sibling ... |``."""
    manifest = json.loads((data_dir / "manifest.json").read_text())
    captions = {split: [s.caption for s in iter_samples(data_dir / split)] for split in SPLITS}
    seen = {caption_concept(c) for split in ("train", "val") for c in captions[split]}
    version = manifest["params"]["format_version"]
    rows = []
    for split in SPLITS:
        caps = captions[split]
        concepts = {caption_concept(c) for c in caps}
        if split == "test":
            sib = [caption_concept(c) in seen for c in caps]
            sib_caps = len({c for c, s in zip(caps, sib) if s})
            prompts = ", ".join(f"{sum(sib[:n])}/{min(n, len(caps))}" for n in PROMPTS)
            sibling = f"{sib_caps}/{len(set(caps))} captions, {sum(sib)}/{len(caps)} images; prompts {prompts}"
        else:
            sibling = "–"
        rows.append(
            f"| `{data_dir}` (format {version}) | {split} | {len(caps)} | {len(set(caps))} | {len(concepts)} | {sibling} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    started = time.time()
    rows = [row for d in args.data_dirs for row in split_report(d)]
    lines = [
        "# Emoji dataset splits and test captions with a sibling in training",
        "",
        f"- command: `python benchmarks/emoji_split.py {' '.join(map(str, args.data_dirs))} --out {args.out}`",
        f"- commit: `{commit('alchemist_pl')}`",
        f"- machine: {platform.node()}, {platform.machine()}, {os.cpu_count()} CPU cores, Python "
        f"{platform.python_version()}; wall time {time.time() - started:.0f} s",
        "- sibling: a test caption whose caption concept (`alchemist_pl.caption_concepts.caption_concept`: "
        "skin tone, gender, hair, direction removed) also occurs in train or val; prompts: of the first "
        f"{' / '.join(map(str, PROMPTS))} test samples in shard order (the evaluation prompts)",
        "",
        "| build | split | images | captions | concepts | test samples with a sibling in train/val |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
