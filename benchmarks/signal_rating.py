"""Rater signals on the planted-noise benchmark: rating quality, subset cleanliness and iteration cost.

    python benchmarks/signal_rating.py --out outputs/signal-rating --results benchmarks/results/signal-rating

For each variant in ``VARIANTS`` and each seed, through the real CLI (one run at a time, one thread):
``train.py +experiment=rate corruption=web corruption.pool_size=4000 rate.max_epochs=6 rate.pool_passes=null seed=S logger=csv``
(the rating setup of ``conf/experiment/efficiency.yaml``: 4,000-sample emoji pool, 30% planted
noise, 6 passes over D_val), then ``train.py +experiment=prune`` of its scores at keep ratio 0.5
with each method of ``METHODS``. Seeds go in the outer loop, so a cut-short benchmark has whole
seeds. Runs with a ``summary.json`` are skipped (a killed benchmark resumes).

Before the runs, the cost of one rating iteration of each variant is measured side by side in one
process (``--cost-iterations`` iterations per variant, interleaved ``--cost-repeats`` times, same
data, batch 32 + 32 at 32 px).

Report (``report.md`` and ``results.json`` in --results): AUROC clean vs corrupted overall and per
kind, corrupted share of each method's 50% subset, mean ± std over seeds, wall time per run, and the
iteration cost relative to ``first_order``. ``--report-only`` rewrites the report from what exists.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# the measured protocol: 6 epochs of one pass over D_val (216 iterations, ≈ 1.7 passes over the pool)
COMMON = ["corruption=web", "corruption.pool_size=4000", "rate.max_epochs=6", "rate.pool_passes=null", "logger=csv"]
# name: (what it is, Hydra overrides of the rate stage)
VARIANTS = {
    "first_order": ("the paper's first-order rule (bilevel=first_order, proxy=unet_tiny)", ["bilevel=first_order"]),
    "value_gap": ("value-function term kept: ℓ(θ) − ℓ(θ′), t in [20, 120)", ["bilevel=value_gap"]),
    "value_gap_text": (
        "value_gap + pooled caption path (proxy=unet_tiny_text), 10% caption dropout, caption contrast λ=0.5",
        [
            "bilevel=value_gap",
            "proxy=unet_tiny_text",
            "bilevel.caption_dropout=0.1",
            "bilevel.caption_contrast_weight=0.5",
        ],
    ),
}
# measured for cost only: the caption path with cross-attention at 16x16 as well
COST_ONLY = {
    "value_gap_text16": (
        "value_gap_text with proxy=unet_tiny_text16",
        [
            "bilevel=value_gap",
            "proxy=unet_tiny_text16",
            "bilevel.caption_dropout=0.1",
            "bilevel.caption_contrast_weight=0.5",
        ],
    )
}
METHODS = ("shift_gsample", "gsample", "top_k")
KINDS = ("blur", "noise", "blank", "caption_swap", "near_duplicate", "collage")
GROUND_TRUTH = "corruptions.parquet"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_SILENT": "true"}


def _run(args: list[str], log_path: Path) -> float:
    started = time.time()
    print("+", " ".join(args), flush=True)
    with open(log_path, "w") as log:
        proc = subprocess.run(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=ENV)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(args)}\n{log_path.read_text()[-4000:]}")
    return time.time() - started


def machine() -> str:
    import torch

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{platform.node()}: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU, torch {torch.__version__}, "
        f"Python {platform.python_version()}; load average at start {load}"
    )


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "alchemist_pl", "conf"], cwd=ROOT, capture_output=True)
    return out.stdout.strip() + (" (+ uncommitted changes)" if dirty.stdout.strip() else "")


def rate_and_prune(out: Path, seeds: list[int], variants: list[str]) -> None:
    py = [sys.executable, "train.py"]
    (out / "logs").mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        for name in variants:
            d = out / name / f"seed{seed}"
            if not (d / "summary.json").exists():
                args = ["+experiment=rate", *COMMON, f"seed={seed}", *VARIANTS[name][1], f"hydra.run.dir={d}"]
                _run(py + args, out / "logs" / f"rate-{name}-{seed}.log")
            for method in METHODS:
                p = d / f"prune-{method}"
                if not (p / "summary.json").exists():
                    args = ["+experiment=prune", *COMMON, f"seed={seed}", f"method={method}", "keep_ratio=0.5"]
                    args += [f"scores_path={d}/scores.parquet", f"hydra.run.dir={p}"]
                    _run(py + args, out / "logs" / f"prune-{name}-{seed}-{method}.log")


def measure_cost(variants: list[str], iterations: int, repeats: int) -> dict:
    """Seconds per rating iteration of each variant, interleaved in this process (one thread)."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from lightning import Callback, Trainer

    from alchemist_pl.datamodule import RatingDataModule

    torch.set_num_threads(1)

    class Clock(Callback):
        def __init__(self):
            self.times: list[float] = []

        def on_train_batch_start(self, *args):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, *args):
            self.times.append(time.perf_counter() - self.t0)

    models, clocks = {}, {}
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        for name in variants:
            cfg = compose(
                "config", overrides=[*COMMON, "bilevel.histogram_every=0", *{**VARIANTS, **COST_ONLY}[name][1]]
            )
            torch.manual_seed(0)
            models[name], clocks[name] = instantiate(cfg.bilevel), Clock()
    dm = RatingDataModule(
        train_path=cfg.data.train_path, val_path=cfg.data.val_path, batch_size=32, val_batch_size=32,
        resolution=32, cache_dir=cfg.data.cache_dir, max_tokens=cfg.data.max_tokens,
    )  # fmt: skip
    for _ in range(repeats):
        for name in variants:
            trainer = Trainer(
                accelerator="cpu", max_steps=2 * iterations, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, callbacks=[clocks[name]],
            )  # fmt: skip
            trainer.fit(models[name], datamodule=dm)
    base = float(np.median(clocks[variants[0]].times[1:]))
    return {
        n: {"median_s": float(np.median(c.times[1:])), "ratio": float(np.median(c.times[1:])) / base, "n": len(c.times)}
        for n, c in clocks.items()
    }


def _ms(values, digits=3) -> str:
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return "–"
    return f"{v[0]:.{digits}f} (n=1)" if len(v) == 1 else f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text())["metrics"] if path.exists() else None


def _quality(scores_path: Path) -> dict:
    """What the rate stage reports as ``rating_quality``, from a scores file and the pool's ground truth."""
    from alchemist_pl.analysis import rating_quality
    from alchemist_pl.corruption import read_ground_truth
    from alchemist_pl.scores import read_scores

    ids, scores, _ = read_scores(scores_path)
    return rating_quality(ids, scores, read_ground_truth(ROOT / "data" / "emoji-web-f0.3-n4000-s0" / GROUND_TRUTH))


def collect(out: Path, seeds: list[int], variants: list[str]) -> dict:
    rows = {}
    for name in variants:
        runs = []
        for seed in seeds:
            d = out / name / f"seed{seed}"
            m = _load(d / "summary.json")
            if m is None:
                continue
            q = m.get("rating_quality") or _quality(d / "scores.parquet")
            run = {"seed": seed, "auroc": q["auroc"], **{k: q["per_kind"][k]["auroc"] for k in KINDS}}
            run["wall_s"] = json.loads((d / "summary.json").read_text()).get("wall_time_s")
            run["iterations"] = m.get("bilevel_iterations")
            for method in METHODS:
                p = _load(d / f"prune-{method}" / "summary.json")
                run[f"share_{method}"] = p["subset_quality"]["subset_corrupted_share"] if p else None
            runs.append(run)
        rows[name] = runs
    return rows


def report(out: Path, results: Path, seeds: list[int], variants: list[str], info: dict) -> str:
    rows = collect(out, seeds, variants)
    lines = [
        "# Rater signals on the planted-noise pool",
        "",
        f"Command: `{info['command']}`  ",
        f"Commit: {info['commit']}  ",
        f"Machine: {info['machine']}  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
        f"Wall time of the benchmark (all invocations so far): {info.get('wall_min', float('nan')):.1f} min",
        "",
        "Setup: `train.py +experiment=rate " + " ".join(COMMON) + " seed=S` + the variant's overrides; then "
        "`train.py +experiment=prune` at keep_ratio 0.5. AUROC: clean (higher score) vs corrupted; subset share: "
        "corrupted share of the 50% subset (pool 0.300). Mean ± std over seeds.",
        "",
        "| variant | n | AUROC | "
        + " | ".join(KINDS)
        + " | "
        + " | ".join(f"share {m}" for m in METHODS)
        + " | wall s |",
        "|---" * (4 + len(KINDS) + len(METHODS)) + "|",
    ]
    for name, runs in rows.items():
        cells = [_ms([r["auroc"] for r in runs])] + [_ms([r[k] for r in runs], 2) for k in KINDS]
        cells += [_ms([r[f"share_{m}"] for r in runs]) for m in METHODS] + [_ms([r["wall_s"] for r in runs], 0)]
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Per seed:",
        "",
        "| variant | seed | AUROC | " + " | ".join(KINDS) + " |",
        "|---" * (3 + len(KINDS)) + "|",
    ]
    for name, runs in rows.items():
        for r in runs:
            lines.append(
                f"| {name} | {r['seed']} | {r['auroc']:.3f} | " + " | ".join(f"{r[k]:.2f}" for k in KINDS) + " |"
            )
    if info.get("cost"):
        lines += [
            "",
            "## Cost of one rating iteration (B = 32 + 32, 32 px, one thread, interleaved in one process)",
            "",
        ]
        lines += ["| variant | median s / iteration | × first_order | iterations timed |", "|---|---|---|---|"]
        for name, c in info["cost"].items():
            lines.append(f"| {name} | {c['median_s']:.3f} | {c['ratio']:.2f} | {c['n']} |")
    if info.get("tried"):
        lines += ["", "## Earlier value_gap settings (same protocol; rating quality from their scores)", ""]
        lines += ["| setting | n | AUROC | " + " | ".join(KINDS) + " |", "|---" * (3 + len(KINDS)) + "|"]
        for label, runs in info["tried"].items():
            cells = [_ms([r["auroc"] for r in runs])] + [_ms([r[k] for r in runs], 2) for k in KINDS]
            lines.append(f"| {label} | {len(runs)} | " + " | ".join(cells) + " |")
    if info.get("notes"):
        lines += ["", "## Reading", "", *info["notes"]]
    lines += ["", "## Variants", ""] + [f"- `{n}`: {VARIANTS[n][0]}; `{' '.join(VARIANTS[n][1])}`" for n in variants]
    text = "\n".join(lines) + "\n"
    results.mkdir(parents=True, exist_ok=True)
    (results / "report.md").write_text(text)
    (results / "results.json").write_text(json.dumps({"runs": rows, **info}, indent=1))
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/signal-rating")
    parser.add_argument("--results", default="benchmarks/results/signal-rating")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--cost-iterations", type=int, default=8)
    parser.add_argument("--cost-repeats", type=int, default=3)
    parser.add_argument("--report-only", action="store_true")
    a = parser.parse_args()
    out, results = Path(a.out).resolve(), Path(a.results).resolve()
    seeds, variants = [int(s) for s in a.seeds.split(",")], a.variants.split(",")
    info_path = results / "results.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info.pop("runs", None)
    info.setdefault("machine", machine())
    info["command"] = "python benchmarks/signal_rating.py " + " ".join(sys.argv[1:])
    info["commit"] = commit()
    if not a.report_only:
        started = time.time()
        if not info.get("cost"):
            info["cost"] = measure_cost([*variants, *COST_ONLY], a.cost_iterations, a.cost_repeats)
            report(out, results, seeds, variants, info)
        before = info.get("wall_min", 0.0)
        for seed in seeds:  # the report is rewritten after every seed
            rate_and_prune(out, [seed], variants)
            info["wall_min"] = before + (time.time() - started) / 60
            report(out, results, seeds, variants, info)
    print(report(out, results, seeds, variants, info))


if __name__ == "__main__":
    main()
