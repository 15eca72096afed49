"""How much of each planted corruption survives encoding to latents (no rater involved).

    python benchmarks/latent_corruption_survival.py --out benchmarks/results/latent-corruption-survival.md

For the 4,000-sample planted-noise pool (``corruption=web corruption.pool_size=4000``) and its clean
source (the first 4,000 samples of the clean training split, the same sample_ids), per corruption
kind: the median distance between a corrupted sample and its clean source, divided by the median
distance between two random clean samples, in pixels ([-1, 1]) and in latents (the default
config's autoencoder, ``data.latents=true``). A ratio near 0 means the corruption is invisible in
that space; caption swaps change no pixel.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

from stamp import commit, machine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/latent-corruption-survival.md")
    args = parser.parse_args()
    started = time.time()
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from alchemist_pl.corruption import ground_truth_for, read_ground_truth
    from alchemist_pl.data import load_split
    from alchemist_pl.latents import load_codec
    from alchemist_pl.pixels import to_model_range
    from alchemist_pl.stages import ensure_data

    torch.set_num_threads(1)
    stamp = machine()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("config", overrides=["corruption=web", "corruption.pool_size=4000", "data.latents=true"])
    ensure_data(cfg)
    codec = load_codec(**OmegaConf.to_container(cfg.vae, resolve=True))
    pool = load_split(cfg.data.train_path, cfg.data.resolution, cfg.data.cache_dir)
    clean = load_split(cfg.corruption.source, cfg.data.resolution, cfg.data.cache_dir, limit=len(pool))
    assert pool.sample_ids == clean.sample_ids, "the pool and its clean source are not aligned"
    gt = read_ground_truth(ground_truth_for(cfg.data.train_path))
    spaces = {
        "pixels": (to_model_range(pool.images), to_model_range(clean.images)),
        "latents": (codec.encode(pool.images), codec.encode(clean.images)),
    }
    perm = torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))
    rows = {}
    for space, (corrupted, source) in spaces.items():
        base = (source - source[perm]).flatten(1).norm(dim=1).median()
        for kind in sorted(set(gt.values()) - {""}):
            idx = torch.tensor([i for i, s in enumerate(pool.sample_ids) if gt[s] == kind])
            ratio = (corrupted[idx] - source[idx]).flatten(1).norm(dim=1).median() / base
            rows.setdefault(kind, {})[space] = float(ratio)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    lines = [
        "# How much of each planted corruption survives encoding to latents",
        "",
        f"Command: `python benchmarks/latent_corruption_survival.py {' '.join(sys.argv[1:])}`  ",
        f"Commit: {commit()}  ",
        f"Machine: {stamp}; 1-min load at end {os.getloadavg()[0]:.1f}  ",
        f"Wall time: {time.time() - started:.0f} s; CPU time {usage.ru_utime + usage.ru_stime:.0f} s (one thread)",
        "",
        "Median distance of a corrupted sample from its clean source / median distance between two random "
        f"clean samples, in each space ({len(pool)}-sample pool, autoencoder {Path(codec.info['path']).name}).",
        "",
        f"Pool: {cfg.data.train_path}.",
        "",
        "| kind | samples | pixels | latents |",
        "|---|---|---|---|",
    ]
    counts = {k: sum(v == k for v in gt.values()) for k in rows}
    lines += [f"| {k} | {counts[k]} | {r['pixels']:.3f} | {r['latents']:.3f} |" for k, r in rows.items()]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
