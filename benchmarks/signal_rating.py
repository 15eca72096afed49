"""Rater signals on the planted-noise benchmark: rating quality, subset cleanliness and iteration cost.

    python benchmarks/signal_rating.py --out outputs/signal-rating --results benchmarks/results/signal-rating

For each variant in ``VARIANTS`` and each seed, through the real CLI (one run at a time, one thread):
``train.py +experiment=rate corruption=web corruption.pool_size=4000 logger=csv seed=S`` + the variant's
overrides (4,000-sample emoji pool, 30% planted noise; the first three variants use the first protocol,
``rate.max_epochs=6 rate.pool_passes=null``: 6 passes over D_val; the others the shipped budget,
``rate.pool_passes=1.0`` over 10 epochs), then ``train.py +experiment=prune`` of its scores at keep
ratio 0.5 with each method of ``METHODS`` (``FIRST_VARIANTS``) or ``top_k``.
Variant ``half`` rates half A of the pool (:func:`in_half_a`, by sample_id) and its saved rater then
scores the whole pool; ``halves.json`` holds the AUROC on each half (seen vs unseen samples).
Variants ``k2_time`` / ``k4_time`` get ``rate.pool_passes`` = cost(default) / cost(kK) from the
iteration costs in ``--out/cost_draws.json`` (measured once). Seeds go in the outer loop, so a
cut-short benchmark has whole seeds. Runs with a ``summary.json`` are skipped (a killed benchmark
resumes); ``run_cost.json`` holds a rate run's wall and CPU seconds.

Before the runs, the cost of one rating iteration of each variant is measured side by side in one
process (``--cost-iterations`` iterations per variant, interleaved ``--cost-repeats`` times, same
data, batch 32 + 32 at 32 px).

Report (``report.md`` and ``results.json`` in --results): AUROC clean vs corrupted overall and per
kind, corrupted share of each method's 50% subset, mean ± std over seeds, wall time per run, and the
iteration cost relative to ``first_order``. ``--report-only`` rewrites the report from what exists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
from stamp import commit, machine, mean_std  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# the pool and the logger of every run
BASE = ["corruption=web", "corruption.pool_size=4000", "logger=csv"]
# the first protocol: 6 epochs of one pass over D_val (216 iterations, ≈ 1.7 passes over the 4,000-sample pool)
PROTOCOL_216 = ["rate.max_epochs=6", "rate.pool_passes=null"]
COMMON = BASE + PROTOCOL_216  # the cost measurement's config (the budget does not change an iteration's cost)
# name: (what it is, Hydra overrides of the rate stage); "{half_pool}" is the folder half_pool() writes
VARIANTS = {
    "first_order": (
        "the paper's first-order rule (bilevel=first_order, proxy=unet_tiny), 6 epochs of one pass over D_val "
        "(216 iterations on dataset format 1, 204 on format 2)",
        [*PROTOCOL_216, "bilevel=first_order"],
    ),
    "value_gap": (
        "value-function term kept: ℓ(θ) − ℓ(θ′), t in [20, 120), 6 epochs of one pass over D_val",
        [*PROTOCOL_216, "bilevel=value_gap"],
    ),
    "value_gap_text": (
        "value_gap + pooled caption path (proxy=unet_tiny_text), 10% caption dropout, caption contrast λ=0.5, "
        "6 epochs of one pass over D_val",
        [
            *PROTOCOL_216,
            "bilevel=value_gap",
            "proxy=unet_tiny_text",
            "bilevel.caption_dropout=0.1",
            "bilevel.caption_contrast_weight=0.5",
        ],
    ),
    # the shipped defaults: rate.pool_passes=1.0 over rate.max_epochs=10 epochs (125 iterations on this pool)
    "default": ("the shipped defaults (bilevel=value_gap, rate.pool_passes=1.0, rate.max_epochs=10)", []),
    "half": (
        "the defaults on half A of the pool (sha256(sample_id) even), rate.pool_passes=2.0 (the default's "
        "iterations); the rater then scores both halves",
        ["data.train_path={half_pool}", "rate.pool_passes=2.0"],
    ),
    "k2": ("the defaults with bilevel.draws_per_sample=2 (equal iterations)", ["bilevel.draws_per_sample=2"]),
    "k4": ("the defaults with bilevel.draws_per_sample=4 (equal iterations)", ["bilevel.draws_per_sample=4"]),
    "k2_time": (
        "draws_per_sample=2 at the default's wall time: rate.pool_passes = 1.0 × cost(default) / cost(k2)",
        ["bilevel.draws_per_sample=2", "rate.pool_passes={equal_time}"],
    ),
    "k4_time": (
        "draws_per_sample=4 at the default's wall time: rate.pool_passes = 1.0 × cost(default) / cost(k4)",
        ["bilevel.draws_per_sample=4", "rate.pool_passes={equal_time}"],
    ),
    "k1_k2iters": (
        "K = 1 at k2_time's budget (equal iterations with k2_time)",
        ["rate.pool_passes={equal_time}"],
    ),
    "k1_k4iters": (
        "K = 1 at k4_time's budget (equal iterations with k4_time)",
        ["rate.pool_passes={equal_time}"],
    ),
    "interaction_contrast": (
        "the defaults with an image × caption interaction block in the rater's features (rater=interaction, "
        "r = 64) and the mismatched-caption contrast λ = 0.5 at t in [300, 500)",
        ["rater=interaction", "bilevel.caption_contrast_weight=0.5"],
    ),
    "interaction": ("the defaults with rater=interaction (r = 64 image × caption products)", ["rater=interaction"]),
    "default_2p": ("the defaults at twice the budget, rate.pool_passes=2.0", ["rate.pool_passes=2.0"]),
}
# variant -> the variant whose iteration cost sets its budget (1.0 × cost(default) / cost(that variant) pool passes)
EQUAL_TIME = {"k2_time": "k2", "k4_time": "k4", "k1_k2iters": "k2", "k1_k4iters": "k4"}
# measured for cost only: the caption path with cross-attention at 16x16 as well; θ′'s caption contrast
COST_ONLY = {
    "contrast_value": (
        "the defaults + the mismatched-caption contrast read from θ′ (bilevel.contrast_model=value), λ = 0.5, "
        "t in [100, 300)",
        [
            "bilevel.caption_contrast_weight=0.5",
            "bilevel.contrast_model=value",
            "bilevel.contrast_timesteps=[100,300]",
        ],
    ),
    "contrast_value_k4": (
        "contrast_value averaged over 4 other captions (bilevel.contrast_captions=4)",
        [
            "bilevel.caption_contrast_weight=0.5",
            "bilevel.contrast_model=value",
            "bilevel.contrast_timesteps=[100,300]",
            "bilevel.contrast_captions=4",
        ],
    ),
    "value_gap_text16": (
        "value_gap_text with proxy=unet_tiny_text16",
        [
            "bilevel=value_gap",
            "proxy=unet_tiny_text16",
            "bilevel.caption_dropout=0.1",
            "bilevel.caption_contrast_weight=0.5",
        ],
    ),
}
METHODS = ("shift_gsample", "gsample", "top_k")
FIRST_VARIANTS = ("first_order", "value_gap", "value_gap_text", "default")  # pruned with every method of METHODS
HALF_VARIANTS = ("half",)
DRAW_VARIANTS = ("default", "k2", "k4")  # the iteration costs that set the equal-time budgets
COST_DRAWS = "cost_draws.json"  # in --out: their cost, measured once, shared by concurrent invocations
KINDS = ("blur", "noise", "blank", "caption_swap", "near_duplicate", "collage")
GROUND_TRUTH = "corruptions.parquet"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_SILENT": "true"}


def _run(args: list[str], log_path: Path) -> dict:
    """Run one CLI call; returns its wall and CPU seconds (the child's user + system time) and the load."""
    started, cpu, load = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN), os.getloadavg()[0]
    print("+", " ".join(args), flush=True)
    with open(log_path, "w") as log:
        proc = subprocess.run(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=ENV)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(args)}\n{log_path.read_text()[-4000:]}")
    end = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = end.ru_utime + end.ru_stime - cpu.ru_utime - cpu.ru_stime
    return {"wall_s": time.time() - started, "cpu_s": cpu_s, "load_start": load, "load_end": os.getloadavg()[0]}


def pool_dir() -> Path:
    return ROOT / "data" / "emoji-web-f0.3-n4000-s0"


def in_half_a(sample_id: str) -> bool:
    """The deterministic split of the pool: half A holds the samples whose sha256(sample_id) is even."""
    return hashlib.sha256(sample_id.encode()).digest()[-1] % 2 == 0


def half_pool(out: Path) -> Path:
    """Write (once) ``out/half-pool/train``: the pool's shards with half A's samples only, and its ground truth."""
    target = out / "half-pool" / "train"
    if (target / "done").exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    for shard in sorted((pool_dir() / "train").glob("*.tar")):
        with tarfile.open(shard) as src, tarfile.open(target / shard.name, "w") as dst:
            for member in src.getmembers():
                if in_half_a(member.name.split("/")[-1].split(".")[0]):
                    dst.addfile(member, src.extractfile(member))
    shutil.copy(pool_dir() / GROUND_TRUTH, target.parent / GROUND_TRUTH)
    (target / "done").write_text("")
    return target


def overrides(name: str, out: Path) -> list[str]:
    """The variant's overrides with its placeholders filled: the half pool's folder, the equal-time budget."""
    args = VARIANTS[name][1]
    if any("{half_pool}" in a for a in args):
        args = [a.replace("{half_pool}", str(half_pool(out))) for a in args]
    if name in EQUAL_TIME:
        cost = json.loads((out / COST_DRAWS).read_text())
        passes = round(cost["default"]["median_s"] / cost[EQUAL_TIME[name]]["median_s"], 3)
        args = [a.replace("{equal_time}", str(passes)) for a in args]
    return args


def rate_and_prune(out: Path, seeds: list[int], variants: list[str]) -> None:
    py = [sys.executable, "train.py"]
    (out / "logs").mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        for name in variants:
            d = out / name / f"seed{seed}"
            if not (d / "summary.json").exists():
                args = ["+experiment=rate", *BASE, f"seed={seed}", *overrides(name, out), f"hydra.run.dir={d}"]
                cost = _run(py + args, out / "logs" / f"rate-{name}-{seed}.log")
                (d / "run_cost.json").write_text(json.dumps(cost))
            if name in HALF_VARIANTS or name in ("default",):
                if not (d / "halves.json").exists():
                    (d / "halves.json").write_text(json.dumps(halves(d, rescore=name in HALF_VARIANTS)))
            if name in HALF_VARIANTS:
                continue  # its scores cover half A only: no subset of the pool
            for method in METHODS if name in FIRST_VARIANTS else ("top_k",):
                p = d / f"prune-{method}"
                if not (p / "summary.json").exists():
                    args = ["+experiment=prune", *BASE, f"seed={seed}", f"method={method}", "keep_ratio=0.5"]
                    args += [f"scores_path={d}/scores.parquet", f"hydra.run.dir={p}"]
                    _run(py + args, out / "logs" / f"prune-{name}-{seed}-{method}.log")


def halves(d: Path, rescore: bool) -> dict:
    """Rating quality on half A and half B of the pool: the run's scores, or (``rescore``) the scores of
    its saved rater over the whole pool (``alchemist_pl.scoring.score_dataset``)."""
    from hydra.utils import instantiate

    from alchemist_pl.analysis import rating_quality
    from alchemist_pl.corruption import read_ground_truth
    from alchemist_pl.data import load_split
    from alchemist_pl.scores import read_scores
    from alchemist_pl.scoring import score_dataset

    if rescore:
        state = torch.load(d / "rater.pt", weights_only=True)
        rater = instantiate(state["config"])
        rater.load_state_dict(state["state_dict"])
        pool = load_split(pool_dir() / "train", 32, ROOT / "data" / "cache", None, 16)
        ids, scores = pool.sample_ids, score_dataset(rater, pool)
        own_ids, own_scores, _ = read_scores(d / "scores.parquet")  # the rate stage's scores of half A
        mine = dict(zip(ids, scores))
        gap = max(abs(mine[i] - s) for i, s in zip(own_ids, own_scores))
    else:
        ids, scores, _ = read_scores(d / "scores.parquet")
        gap = 0.0
    gt = read_ground_truth(pool_dir() / GROUND_TRUTH)
    a = np.array([in_half_a(i) for i in ids])
    ids = np.array(ids)
    return {
        "A": rating_quality(list(ids[a]), scores[a], gt),
        "B": rating_quality(list(ids[~a]), scores[~a], gt),
        "max_abs_diff_vs_rate_stage": float(gap),
    }


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
            run["pool_views"], run["samples_seen"] = m.get("pool_views_per_sample"), m.get("samples_seen")
            cfg = json.loads((d / "summary.json").read_text()).get("config", {})
            run["draws_per_sample"] = (cfg.get("bilevel") or {}).get("draws_per_sample", 1)
            if (d / "run_cost.json").exists():
                run.update({f"run_{k}": v for k, v in json.loads((d / "run_cost.json").read_text()).items()})
            if (d / "halves.json").exists():
                run["halves"] = json.loads((d / "halves.json").read_text())
            for method in METHODS:
                p = _load(d / f"prune-{method}" / "summary.json")
                run[f"share_{method}"] = p["subset_quality"]["subset_corrupted_share"] if p else None
            runs.append(run)
        rows[name] = runs
    return rows


def _budget_section(rows: dict) -> list[str]:
    """Budget, draws and cost of the runs that recorded them (``run_cost.json``)."""
    runs = {n: r for n, r in rows.items() if r and all("run_cpu_s" in x for x in r)}
    if not runs:
        return []
    lines = [
        "",
        "## Budget, draws per sample and cost (rate stage; CPU = the run's user + system seconds)",
        "",
        "| variant | n | K | iterations | pool views / sample | (t, ε) draws / sample | samples seen | AUROC | "
        "share top_k | rate wall s | rate CPU min | (AUROC − 0.5) / CPU min | 1-min load start → end |",
        "|---" * 13 + "|",
    ]
    for name, r in runs.items():
        cpu_min = [x["run_cpu_s"] / 60 for x in r]
        cells = [
            str(r[0]["draws_per_sample"]),
            mean_std([x["iterations"] for x in r], 0),
            mean_std([x["pool_views"] for x in r], 2),
            mean_std([x["pool_views"] * x["draws_per_sample"] for x in r], 2),
            mean_std([x["samples_seen"] for x in r], 0),
            mean_std([x["auroc"] for x in r]),
            mean_std([x["share_top_k"] for x in r]),
            mean_std([x["run_wall_s"] for x in r], 0),
            mean_std(cpu_min, 1),
            mean_std([(x["auroc"] - 0.5) / c for x, c in zip(r, cpu_min)]),
            mean_std([x["run_load_start"] for x in r], 1) + " → " + mean_std([x["run_load_end"] for x in r], 1),
        ]
        lines.append(f"| {name} | {len(r)} | " + " | ".join(cells) + " |")
    return lines


def _draw_cost_section(out: Path) -> list[str]:
    """The iteration cost of K = 1, 2, 4 draws per sample (``--out/cost_draws.json``), which set the equal-time budgets."""
    if not (out / COST_DRAWS).exists():
        return []
    cost = json.loads((out / COST_DRAWS).read_text())
    lines = [
        "",
        "## Cost of one rating iteration with K draws per sample (B = 32 + 32, 32 px, one thread, interleaved)",
        "",
        "| variant | median s / iteration | × default | iterations timed | equal-time rate.pool_passes |",
        "|---|---|---|---|---|",
    ]
    for name, c in cost.items():
        lines.append(f"| {name} | {c['median_s']:.3f} | {c['ratio']:.2f} | {c['n']} | {1 / c['ratio']:.3f} |")
    return lines


def _halves_section(rows: dict) -> list[str]:
    """AUROC on half A and half B of the pool (``halves.json``): seen vs unseen samples."""
    runs = {n: r for n, r in rows.items() if r and all("halves" in x for x in r)}
    if not runs:
        return []
    lines = [
        "",
        "## Amortisation: AUROC on the half the rater was trained on (A) and on the other half (B)",
        "",
        "| variant | n | half | AUROC | " + " | ".join(KINDS) + " |",
        "|---" * (4 + len(KINDS)) + "|",
    ]
    for name, r in runs.items():
        for half in ("A", "B"):
            q = [x["halves"][half] for x in r]
            cells = [mean_std([x["auroc"] for x in q])] + [
                mean_std([x["per_kind"][k]["auroc"] for x in q], 2) for k in KINDS
            ]
            lines.append(f"| {name} | {len(r)} | {half} | " + " | ".join(cells) + " |")
    lines += ["", "Per seed, AUROC A / B / B − A:", ""]
    for name, r in runs.items():
        cells = [f"seed {x['seed']}: {x['halves']['A']['auroc']:.3f} / {x['halves']['B']['auroc']:.3f} / "
                 f"{x['halves']['B']['auroc'] - x['halves']['A']['auroc']:+.3f}" for x in r]  # fmt: skip
        lines.append(f"- {name}: " + "; ".join(cells))
    return lines


def report(out: Path, results: Path, seeds: list[int], variants: list[str], info: dict) -> str:
    rows = collect(out, seeds, variants)
    lines = [
        "# Rater signals on the planted-noise pool",
        "",
        f"Command: `{info['command']}`  ",
        f"Commit: {info['commit']}  ",
        f"Machine: {info['machine']}  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
        info.get("wall_note")
        or f"Wall time of the benchmark (all invocations so far): {info.get('wall_min', float('nan')):.1f} min",
        "",
        "Setup: `train.py +experiment=rate " + " ".join(BASE) + " seed=S` + the variant's overrides; then "
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
        cells = [mean_std([r["auroc"] for r in runs])] + [mean_std([r[k] for r in runs], 2) for k in KINDS]
        cells += [mean_std([r[f"share_{m}"] for r in runs]) for m in METHODS] + [
            mean_std([r["wall_s"] for r in runs], 0)
        ]
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
    lines += _budget_section(rows) + _draw_cost_section(out) + _halves_section(rows)
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
            cells = [mean_std([r["auroc"] for r in runs])] + [mean_std([r[k] for r in runs], 2) for k in KINDS]
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
    parser.add_argument(
        "--cost-variants", default=None, help="variants timed side by side (default: --variants and the cost-only ones)"
    )
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
        timed = [*variants, *COST_ONLY] if a.cost_variants is None else [v for v in a.cost_variants.split(",") if v]
        if not info.get("cost") and timed:
            info["cost"] = measure_cost(timed, a.cost_iterations, a.cost_repeats)
            report(out, results, seeds, variants, info)
        if set(variants) & {*EQUAL_TIME, *EQUAL_TIME.values()} and not (out / COST_DRAWS).exists():
            out.mkdir(parents=True, exist_ok=True)
            cost = measure_cost(list(DRAW_VARIANTS), a.cost_iterations, a.cost_repeats)
            (out / COST_DRAWS).write_text(json.dumps(cost, indent=1))
        before = info.get("wall_min", 0.0)
        for seed in seeds:  # the report is rewritten after every seed
            rate_and_prune(out, [seed], variants)
            info["wall_min"] = before + (time.time() - started) / 60
            report(out, results, seeds, variants, info)
    print(report(out, results, seeds, variants, info))


if __name__ == "__main__":
    main()
