"""Pixel vs VAE-latent rating on the planted-noise pool: seconds per rating iteration and the rater's AUROC.

    python benchmarks/latent_rating.py --out outputs/latent-rating --results benchmarks/results/latent-rating

1. Cost, side by side in one process (one thread): the rate stage's LightningModule (the default
   ``bilevel=value_gap``, ``proxy=unet_tiny``, ``rater=group_mlp``) fitted on the pixel DataModule
   (batches [32, 3, 32, 32]) and on the latent one (``data.latents=true``: [32, 4, 16, 16]),
   ``--cost-iterations`` iterations per fit, the two interleaved ``--cost-repeats`` times; the
   median seconds per iteration (the first iteration of each fit dropped). Also timed: encoding the
   pool and D_val with the autoencoder (once per split; cached afterwards).
2. Quality, through the real CLI, per seed (seeds in the outer loop, so a cut-short benchmark has
   whole seeds): ``train.py +experiment=rate corruption=web corruption.pool_size=4000
   rate.max_epochs=6 rate.pool_passes=null logger=csv seed=S`` (the protocol of
   benchmarks/signal_rating.py), without and with ``data.latents=true``; AUROC clean vs corrupted,
   overall and per kind, from the rate stage's ``rating_quality``; wall time per run. Runs with a
   ``summary.json`` are skipped (a killed benchmark resumes).

The autoencoder is the default config's (``conf/vae/small.yaml``), trained on first use and cached;
its reconstruction error and scaling factor are reported. ``--report-only`` rewrites the report.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from stamp import commit, machine, mean_std  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COMMON = ["corruption=web", "corruption.pool_size=4000", "rate.max_epochs=6", "rate.pool_passes=null", "logger=csv"]
SPACES = {"pixels": [], "latents": ["data.latents=true"]}
KINDS = ("blur", "noise", "blank", "caption_swap", "near_duplicate", "collage")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_SILENT": "true"}


def _dirname(space: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", space)


def rate_runs(out: Path, seeds: list[int]) -> None:
    (out / "logs").mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        for space, overrides in SPACES.items():
            d = out / _dirname(space) / f"seed{seed}"
            if (d / "summary.json").exists():
                continue
            args = [sys.executable, "train.py", "+experiment=rate", *COMMON, *overrides, f"seed={seed}"]
            args.append(f"hydra.run.dir={d}")
            print("+", " ".join(args), flush=True)
            with open(out / "logs" / f"rate-{d.parent.name}-{seed}.log", "w") as log:
                proc = subprocess.run(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=ENV)
            if proc.returncode != 0:
                raise SystemExit(f"failed ({proc.returncode}): {' '.join(args)}")


def measure_cost(iterations: int, repeats: int) -> dict:
    """Seconds per rating iteration on pixels and on latents, interleaved in this process (one thread),
    and the one-time cost of encoding the pool and D_val."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from lightning import Callback, Trainer
    from omegaconf import OmegaConf

    from alchemist_pl.latents import load_codec
    from alchemist_pl.stages import ensure_data

    torch.set_num_threads(1)

    class Clock(Callback):
        def __init__(self):
            self.times: list[list[float]] = []

        def on_train_start(self, *args):
            self.times.append([])

        def on_train_batch_start(self, *args):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, *args):
            self.times[-1].append(time.perf_counter() - self.t0)

    setups, info = {}, {}
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        for space, overrides in SPACES.items():
            cfg = compose("config", overrides=[*COMMON, "bilevel.histogram_every=0", *overrides])
            ensure_data(cfg)
            dm = instantiate(cfg.datamodule.rating, batch_size=32, val_batch_size=32, pool_passes=None)
            dm.setup("fit")
            torch.manual_seed(0)
            setups[space] = (instantiate(cfg.bilevel), dm, Clock())
    codec = load_codec(**OmegaConf.to_container(cfg.vae, resolve=True))
    started = time.perf_counter()
    for split in (setups["latents"][1].pool, setups["latents"][1].val_set):
        codec.encode(split.images)
    info["encode_s"] = time.perf_counter() - started
    info["encoded_samples"] = len(setups["latents"][1].pool) + len(setups["latents"][1].val_set)
    info["autoencoder"] = {k: v for k, v in codec.info.items() if k != "path"}
    for _ in range(repeats):
        for model, dm, clock in setups.values():
            trainer = Trainer(
                accelerator="cpu", max_steps=2 * iterations, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, callbacks=[clock],
            )  # fmt: skip
            trainer.fit(model, datamodule=dm)
    per = {s: [t for fit in c.times for t in fit[1:]] for s, (_, _, c) in setups.items()}
    base = float(np.median(per["pixels"]))
    info["iteration"] = {
        s: {"median_s": float(np.median(t)), "ratio": float(np.median(t)) / base, "n": len(t)} for s, t in per.items()
    }
    return info


def collect(out: Path, seeds: list[int]) -> dict:
    rows = {}
    for space in SPACES:
        runs = []
        for seed in seeds:
            path = out / _dirname(space) / f"seed{seed}" / "summary.json"
            if not path.exists():
                continue
            summary = json.loads(path.read_text())
            q = summary["metrics"]["rating_quality"]
            run = {"seed": seed, "auroc": q["auroc"], **{k: q["per_kind"][k]["auroc"] for k in KINDS}}
            run["wall_s"] = summary.get("wall_time_s")
            run["iterations"] = summary["metrics"].get("bilevel_iterations")
            runs.append(run)
        rows[space] = runs
    return rows


def report(header: dict, cost: dict, rows: dict) -> str:
    ae = cost["autoencoder"]
    lines = [
        "# Pixel vs latent rating on the planted-noise pool",
        "",
        f"Command: `{header['command']}`  ",
        f"Commit: {header['commit']}  ",
        f"Machine: {header['machine']}  ",
        f"Date: {header['date']}  ",
        f"Wall time of the benchmark: {header['wall_min']:.1f} min",
        "",
        "Setup: `train.py +experiment=rate " + " ".join(COMMON) + " seed=S` without and with `data.latents=true` "
        "(default rater: bilevel=value_gap, proxy=unet_tiny, rater=group_mlp). AUROC: clean (higher score) vs "
        "corrupted, pool 4,000 samples, 30% planted noise.",
        "",
        "## Cost of one rating iteration (B = 32 + 32, one thread, interleaved in one process)",
        "",
        "| space | batch image | median s / iteration | × pixels | iterations timed |",
        "|---|---|---|---|---|",
    ]
    shapes = {"pixels": "[32, 3, 32, 32]", "latents": "[32, 4, 16, 16]"}
    for s, c in cost["iteration"].items():
        lines.append(
            f"| {s} | {shapes.get(s, shapes['latents'])} | {c['median_s']:.3f} | {c['ratio']:.2f} | {c['n']} |"
        )
    lines += [
        "",
        f"One-time encoding of the pool and D_val ({cost['encoded_samples']} images): {cost['encode_s']:.1f} s "
        f"(cached per split afterwards).",
        "",
        "## Rating quality",
        "",
        "| space | n | AUROC | " + " | ".join(KINDS) + " | wall s per run |",
        "|---|---|---|" + "---|" * len(KINDS) + "---|",
    ]
    for s, runs in rows.items():
        cells = [mean_std([r["auroc"] for r in runs])] + [mean_std([r[k] for r in runs], 2) for k in KINDS]
        lines.append(f"| {s} | {len(runs)} | " + " | ".join(cells) + f" | {mean_std([r['wall_s'] for r in runs], 0)} |")
    lines += ["", "Per seed:", "", "| space | seed | AUROC | " + " | ".join(KINDS) + " | iterations |"]
    lines.append("|---|---|---|" + "---|" * len(KINDS) + "---|")
    for s, runs in rows.items():
        for r in runs:
            kinds = " | ".join(f"{r[k]:.2f}" for k in KINDS)
            lines.append(f"| {s} | {r['seed']} | {r['auroc']:.3f} | {kinds} | {r['iterations']} |")
    rec_train, rec_test = ae.get("reconstruction_train", {}), ae.get("reconstruction_test") or {}
    lines += [
        "",
        "## The autoencoder (conf/vae/small.yaml, trained once on the clean training split and D_val)",
        "",
        f"- reconstruction MSE in [-1, 1]: {rec_train.get('mse', float('nan')):.4f} on 2,048 training images "
        f"(PSNR {rec_train.get('psnr_db', float('nan')):.1f} dB), {rec_test.get('mse', float('nan')):.4f} on the "
        f"test split (PSNR {rec_test.get('psnr_db', float('nan')):.1f} dB)",
        f"- latents before scaling: mean {ae['latent_mean']:.3f}, std {ae['latent_std']:.3f}; "
        f"scaling factor 1/std = {ae['scaling_factor']:.4f}",
        f"- training: {ae['steps']} steps in {ae['train_time_s']} s (wall, on this machine at the time)",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/latent-rating")
    parser.add_argument("--results", default="benchmarks/results/latent-rating")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--cost-iterations", type=int, default=8)
    parser.add_argument("--cost-repeats", type=int, default=3)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--latent-overrides", default="", help="space-separated overrides of a further latent run, e.g. a timestep band"
    )
    args = parser.parse_args()
    if args.latent_overrides:
        SPACES[f"latents {args.latent_overrides}"] = ["data.latents=true", *args.latent_overrides.split()]
    out, results = Path(args.out), Path(args.results)
    seeds = [int(s) for s in args.seeds.split(",")]
    results.mkdir(parents=True, exist_ok=True)
    started = time.time()
    previous = json.loads((results / "results.json").read_text()) if (results / "results.json").exists() else {}
    header = {
        "command": "python " + " ".join(["benchmarks/latent_rating.py", *sys.argv[1:]]),
        "commit": commit("alchemist_pl", "conf", "benchmarks/latent_rating.py"),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if args.report_only:
        cost, wall = previous["cost"], previous["header"]["wall_min"]
        header = {**previous["header"], "command": header["command"]}
    else:
        cost = measure_cost(args.cost_iterations, args.cost_repeats)
        rate_runs(out, seeds)
        wall = (time.time() - started) / 60
    header["wall_min"] = wall
    rows = collect(out, seeds)
    (results / "results.json").write_text(json.dumps({"header": header, "cost": cost, "runs": rows}, indent=2))
    (results / "report.md").write_text(report(header, cost, rows))
    print((results / "report.md").read_text())


if __name__ == "__main__":
    main()
