"""Signal audit: which per-sample signal separates clean from corrupted pool samples, per kind and timestep.

    python benchmarks/signal_audit.py --out outputs/signal-audit --results benchmarks/results

Pool: the planted-noise benchmark's (conf/experiment/efficiency.yaml + conf/corruption/web.yaml: 4,000
samples, 30% corrupted over six kinds), split at random (seeded) into halves A and B. For each variant
and seed, two proxies of ``conf/proxy/unet_tiny.yaml`` from the same initial weights are trained for the
rating budget (the steps of a default rating run on this pool: ``rate.max_epochs`` passes over D_val at
``rate.val_batch_size``), with the rating run's proxy optimizer and gradient clip: θ_val on D_val only,
θ′ on half A with uniform weights. Every pool sample (A and B) is then scored on a fixed timestep grid
with common random numbers (:mod:`alchemist_pl.audit`). Reported: AUROC (clean vs corrupted) overall and
per kind and the corrupted share of the top 50%, per signal, timestep and band, on half A (seen by θ′)
and half B (unseen), mean ± std over seeds. Runs go ``--jobs`` at a time (one thread each); a finished
run (``run.npz``) is reused, so a killed audit resumes; ``--report-only`` rewrites the report.

Variants: ``baseline`` = the proxy config as is; ``cfg_pooled`` = 10% caption dropout in both proxies
and the pooled caption embedding into the time embedding (``class_embed_type="projection"``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from signal_audit_report import analyse, render  # noqa: E402
from stamp import commit, machine  # noqa: E402

from alchemist_pl import audit  # noqa: E402
from alchemist_pl.corruption import GROUND_TRUTH, build_corrupted_pool, read_ground_truth  # noqa: E402
from alchemist_pl.datamodule import load_split  # noqa: E402

TIMESTEPS = (50, 100, 200, 300, 400, 500, 600, 800)
VARIANTS = {
    "cfg_pooled": (
        "10% caption dropout in both proxies + pooled caption into the time embedding",
        0.1,
        {"class_embed_type": "projection", "projection_class_embeddings_input_dim": 384},
    ),
    "baseline": ("conf/proxy/unet_tiny.yaml as is, no caption dropout", 0.0, {}),
}


def load_config(data_dir: Path):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose("config", overrides=["+experiment=efficiency", f"paths.data_dir={data_dir}"])


def rating_budget(cfg, val_size: int) -> int:
    """Bilevel iterations of a default rating run: max_epochs passes over D_val, drop_last batches."""
    return int(cfg.rate.max_epochs) * (val_size // int(cfg.rate.val_batch_size))


def _proxy(cfg, extra: dict, seed: int):
    torch.manual_seed(seed)
    return instantiate(cfg.proxy.unet, **extra)


def load_data(cfg):
    c = cfg.corruption
    pool_dir = build_corrupted_pool(
        c.source, c.dir, c.fraction, list(c.kinds), c.seed, c.pool_size, cfg.data.resolution
    )
    d = cfg.data
    pool = load_split(pool_dir / "train", d.resolution, d.cache_dir, None, d.max_tokens)
    val = load_split(d.val_path, d.resolution, d.cache_dir, d.limit_val, d.max_tokens)
    truth = read_ground_truth(pool_dir / GROUND_TRUTH)
    return pool, val, np.asarray([truth[s] for s in pool.sample_ids], dtype=object), pool_dir


def run_one(cfg, variant: str, seed: int, out: Path, steps: int | None, draws: int) -> None:
    """Train θ_val and θ′ for one (variant, seed), score the pool, save ``run.npz`` + ``meta.json``."""
    started, load0 = time.time(), os.getloadavg()
    _, dropout, extra = VARIANTS[variant]
    pool, val, kinds, pool_dir = load_data(cfg)
    g = torch.Generator().manual_seed(seed)
    half_a = torch.randperm(len(pool), generator=g)[: len(pool) // 2].sort().values
    steps = steps or rating_budget(cfg, len(val))
    scheduler = instantiate(cfg.proxy.scheduler)
    models, history, train_s = {}, {}, {}
    for name, data, idx, batch in (
        ("val", val, torch.arange(len(val)), cfg.rate.val_batch_size),
        ("pool", pool, half_a, cfg.rate.batch_size),
    ):
        unet = _proxy(cfg, extra, seed)  # same initial weights for both
        opt = instantiate(cfg.bilevel.proxy_optimizer)(unet.parameters())
        t0 = time.time()
        gen = torch.Generator().manual_seed(seed * 10 + (1 if name == "val" else 2))
        history[name] = audit.train_proxy(
            unet, scheduler, data, idx, steps, int(batch), opt, cfg.bilevel.grad_clip, dropout, gen
        )
        train_s[name], models[name] = time.time() - t0, unet
        logging.info("trained θ_%s: %d steps, %.0f s", name, steps, train_s[name])
    captions = {
        "own": pool.caption_rows,
        "other": audit.mismatched_rows(pool, torch.Generator().manual_seed(seed + 7)),
        "null": torch.full((len(pool),), audit.null_row(pool), dtype=torch.long),
    }
    t0 = time.time()
    losses = audit.score_losses(models, scheduler, pool, captions, TIMESTEPS, seed, draws)
    score_s = time.time() - t0
    in_a = np.zeros(len(pool), dtype=bool)
    in_a[half_a.numpy()] = True
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out / "run.npz",
        timesteps=np.asarray(TIMESTEPS),
        in_a=in_a,
        kinds=kinds.astype(str),
        sample_ids=np.asarray(pool.sample_ids),
        **{f"{m}__{c}": v for (m, c), v in losses.items()},
        **{f"history_{k}": np.asarray(v) for k, v in history.items()},
    )
    meta = {
        "variant": variant,
        "seed": seed,
        "steps": steps,
        "draws": draws,
        "pool_dir": str(pool_dir),
        "pool_size": len(pool),
        "val_size": len(val),
        "proxy_params": sum(p.numel() for p in models["val"].parameters()),
        "train_s": train_s,
        "score_s": score_s,
        "wall_s": time.time() - started,
        "threads": torch.get_num_threads(),
        "load_start": load0,
        "load_end": os.getloadavg(),
        "final_train_loss": {k: float(np.mean(v[-20:])) for k, v in history.items()},
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))


def load_run(d: Path) -> dict:
    z = np.load(d / "run.npz")
    losses = {tuple(k.split("__")): z[k] for k in z.files if "__" in k}
    return {
        "timesteps": z["timesteps"].tolist(),
        "in_a": z["in_a"],
        "kinds": z["kinds"].astype(object),
        "losses": losses,
        "meta": json.loads((d / "meta.json").read_text()),
    }


def run_missing(out: Path, variants, seeds, jobs: int, steps, draws) -> None:
    todo = [(v, s) for v in variants for s in seeds if not (out / v / f"seed{s}" / "run.npz").exists()]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    running: list = []
    (out / "logs").mkdir(parents=True, exist_ok=True)
    while todo or running:
        while todo and len(running) < jobs:
            v, s = todo.pop(0)
            cmd = [sys.executable, __file__, "--out", str(out), "--run", v, str(s), "--draws", str(draws)]
            cmd += ["--steps", str(steps)] if steps else []
            log = open(out / "logs" / f"{v}-seed{s}.log", "w")  # noqa: SIM115 - closed when the run ends
            running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log, v, s))
        time.sleep(5)
        for p, log, v, s in list(running):
            if p.poll() is not None:
                log.close()
                running.remove((p, log, v, s))
                if p.returncode != 0:
                    raise SystemExit(f"run {v} seed {s} failed (rc {p.returncode}); see {log.name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/signal-audit")
    parser.add_argument("--results", default="benchmarks/results")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    parser.add_argument("--steps", type=int, default=None, help="proxy steps (default: the rating budget)")
    parser.add_argument("--draws", type=int, default=1, help="noise draws per (sample, t)")
    parser.add_argument("--data-dir", default=str(ROOT / "data"))
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--run", nargs=2, metavar=("VARIANT", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = Path(args.out).resolve()
    cfg = load_config(Path(args.data_dir).absolute())
    if args.run:
        torch.set_num_threads(1)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        v, s = args.run[0], int(args.run[1])
        run_one(cfg, v, s, out / v / f"seed{s}", args.steps, args.draws)
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant {unknown}; known: {list(VARIANTS)}")
    started, load0 = time.time(), os.getloadavg()
    if not args.report_only:
        run_missing(out, variants, seeds, args.jobs, args.steps, args.draws)
    runs = {
        v: {s: load_run(out / v / f"seed{s}") for s in seeds if (out / v / f"seed{s}" / "run.npz").exists()}
        for v in variants
    }
    numbers = {v: {s: analyse(r) for s, r in rv.items()} for v, rv in runs.items()}
    context = {
        "command": "python benchmarks/signal_audit.py " + " ".join(sys.argv[1:]),
        "commit": commit(),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "invocation_s": time.time() - started,
        "load": [load0, os.getloadavg()],
        "variants": {v: VARIANTS[v][0] for v in variants},
        "meta": {v: {s: r["meta"] for s, r in rv.items()} for v, rv in runs.items()},
    }
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "signal-audit.json").write_text(json.dumps({"context": context, "numbers": numbers}, indent=1))
    (results / "signal-audit.md").write_text(render(context, numbers))
    print((results / "signal-audit.md").read_text())


if __name__ == "__main__":
    main()
