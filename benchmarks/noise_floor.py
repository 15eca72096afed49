"""Noise floor of the domain FID / KID: real test images against other real test images.

    python benchmarks/noise_floor.py --out benchmarks/results/noise-floor.md [--data-dir data] [--repeats 10]

Composes the default config (``evaluator=domain``: the cached domain encoder every run uses,
trained on first use) and calls :func:`alchemist_pl.metrics.real_noise_floor` on the test split:
per repeat, two disjoint random halves, half A the reference and the first m images of half B in
the place of the generated images (m = 128 as in the data-efficiency benchmark, 256 as in the
default pipeline, and all of half B). A generator that drew exactly from the test distribution
would score these values; differences between runs smaller than their spread are noise.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's alchemist_pl, not another installed copy

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from stamp import commit, machine, mean_std  # noqa: E402

from alchemist_pl.data import load_split  # noqa: E402
from alchemist_pl.emoji import build_emoji_dataset  # noqa: E402
from alchemist_pl.metrics import real_noise_floor  # noqa: E402
from alchemist_pl.pixels import to_model_range  # noqa: E402

SIZES = (128, 256, None)


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| generated stand-ins m | reference | domain FID (mean ± std) | FID min–max | domain KID (mean ± std) | KID min–max |",
        "|---|---|---|---|---|---|",
    ]
    for m in sorted({r["images"] for r in rows}):
        sel = [r for r in rows if r["images"] == m]
        fid, kid = [r["domain_fid"] for r in sel], [r["domain_kid"] for r in sel]
        lines.append(
            f"| {m} | {sel[0]['reference_images']} | {mean_std(fid, 3)} | {min(fid):.3f}–{max(fid):.3f} | "
            f"{mean_std(kid, 4)} | {min(kid):.4f}–{max(kid):.4f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started, host = time.time(), machine()  # its load average is the one at the start
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("config", overrides=[f"paths.data_dir={args.data_dir.resolve()}", "evaluator=domain"])
    build_emoji_dataset(cfg.data.emoji_dir)
    metrics = instantiate(cfg.evaluator, _convert_="all")  # trains and caches the encoder on first use
    encoder_s = time.time() - started
    d = cfg.data
    test = load_split(d.test_path, d.resolution, d.cache_dir, d.limit_test, d.max_tokens)
    images, pooled = to_model_range(test.images), test.text.pooled[test.caption_rows].float()
    rows = real_noise_floor(
        metrics.encoder, images, pooled, SIZES, args.repeats, cfg.evaluator.kid_subset_size, args.seed
    )
    info = metrics.info
    lines = [
        "# Noise floor of the domain FID / KID: real test images against real test images",
        "",
        f"- command: `python benchmarks/noise_floor.py --out {args.out} --repeats {args.repeats} --seed {args.seed}`",
        f"- commit: `{commit()}`",
        f"- machine: {host}; {torch.get_num_threads()} torch thread(s)",
        f"- wall time {time.time() - started:.0f} s ({encoder_s:.0f} s of it loading or training the encoder)",
        f"- data: `{d.test_path}` ({len(test)} images), domain encoder sha256 `{info.get('sha256')}`",
        f"- {args.repeats} random splits into disjoint halves (seeds {args.seed}..{args.seed + args.repeats - 1}); "
        f"half A ({len(test) // 2} images) is the reference, the first m images of half B play the generated "
        f"images; KID subset size {cfg.evaluator.kid_subset_size} (at most m), 100 subsets",
        "",
        *table(rows),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
