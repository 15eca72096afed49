"""Ablations of the rater and the baseline scorers on the data-efficiency benchmark's corrupted pool.

    python benchmarks/ablations.py --out outputs/ablations --results benchmarks/results/ablations

Same setup as ``benchmarks/data_efficiency.py`` (conf/experiment/efficiency.yaml: 4,000-sample pool
with 30% planted noise, 6 rating epochs, 2 training epochs over the subset, domain metrics every 50
steps). For each rater variant (an overlay in ``conf/experiment/ablation/``) and each seed: rate, then train on its Shift-Gsample
50% subset. For each baseline scorer in ``SCORERS``: score once (deterministic), then train on its
top-k 50% subset for each seed. Runs go ``--jobs`` at a time. Every run is skipped when its
``summary.json`` exists and a killed rating resumes from its checkpoint, so a killed benchmark
resumes; ``--report-only`` rewrites the report from what exists.

``--rating-only``: no downstream training. Each rater variant is rated at the shipped rating budget
(``train.py +experiment=rate corruption=web corruption.pool_size=4000 logger=csv``: the default rater and
budget, the command of ``benchmarks/signal_rating.py``'s ``default``) and its 50% subset drawn with
``--rater-method`` (default top_k, the value gap's selection); the scorers score the same pool. Runs go one
at a time in that case too when ``--jobs 1``. Each run's ``run_cost.json`` holds its wall and CPU seconds and
the 1-minute load average at its start and end.

Report (``report.md`` in --results): rating quality per variant (AUROC clean vs corrupted overall and
per kind, corrupted share of the Shift-Gsample 50% subset, score-timestep Spearman) and downstream
domain FID / KID with the paired per-seed difference to the default rater, mean ± std over seeds.
Extra arguments after ``--`` go to every ``train.py`` call.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from stamp import machine as _machine  # noqa: E402
from stamp import mean_std  # noqa: E402

ABLATIONS = ROOT / "conf" / "experiment" / "ablation"
#: this benchmark's setup, pinned (conf/experiment/efficiency.yaml has moved on since it was measured)
SETUP = (
    "rate.max_epochs=6",
    "rate.pool_passes=null",
    "train.epochs=2",
    "eval.every_n_steps=50",
    "model.noise_scheduler.prediction_type=epsilon",
    "model.sampling_scheduler.prediction_type=epsilon",
    "~model.unet.class_embed_type",
    "~model.unet.projection_class_embeddings_input_dim",
)
#: ``--rating-only``: the shipped rating budget and default rater on the same pool, no downstream model
RATING = ("+experiment=rate", "corruption=web", "corruption.pool_size=4000", "logger=csv")


def _run(args: list[str], log_path: Path, env: dict | None = None) -> dict:
    """Run ``args`` in the repository root, output to ``log_path``; its wall and CPU seconds (the child's
    user + system time) and the 1-minute load average at start and end. Exits on failure."""
    started, cpu, load = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN), os.getloadavg()[0]
    print("+", " ".join(args), flush=True)
    with open(log_path, "w") as log:
        proc = subprocess.run(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = log_path.read_text()[-4000:]
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(args)}\n--- {log_path} (tail) ---\n{tail}")
    end = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = end.ru_utime + end.ru_stime - cpu.ru_utime - cpu.ru_stime
    return {"wall_s": time.time() - started, "cpu_s": cpu_s, "load_start": load, "load_end": os.getloadavg()[0]}


def _variants() -> dict[str, tuple[str, list[str]]]:
    """name: (what it changes, Hydra overrides), one per ``conf/experiment/ablation/*.yaml`` overlay.
    "alchemist" is the default configuration."""
    return {
        p.stem: (OmegaConf.load(p).ablation, [f"+experiment/ablation={p.stem}"])
        for p in sorted(ABLATIONS.glob("*.yaml"))
    }


VARIANTS = _variants()
# name: what it is. All select top-k (keep the highest scores), as a filter is used.
SCORERS = {
    "clip_score": "caption-image agreement, domain evaluator trained on D_val (DataComp CLIP-score filter)",
    "clarity": "variance of the Laplacian (paper Table 1)",
    "frequency": "high-frequency energy share (paper Table 1)",
    "edge_density": "Sobel edge share (paper Table 1)",
}
KINDS = ("blur", "noise", "blank", "caption_swap", "near_duplicate", "collage")


def _job(out: Path, kind: str, name: str, seed: int | None) -> tuple[Path, list[str]]:
    """(run folder, train.py overrides) of one run: kind rate | score | train."""
    if kind == "rate":
        d = out / "rate" / name / f"seed{seed}"
        return d, ["stage=rate", f"seed={seed}", *VARIANTS[name][1]]
    if kind == "score":
        return out / "score" / name, ["stage=score", f"scorer={name}"]
    d = out / "train" / name / f"seed{seed}"
    if name in VARIANTS:
        return d, [
            "stage=train",
            "method=shift_gsample",
            "keep_ratio=0.5",
            f"seed={seed}",
            f"scores_path={out}/rate/{name}/seed{seed}/scores.parquet",
        ]
    return d, [
        "stage=train",
        "method=top_k",
        "keep_ratio=0.5",
        f"seed={seed}",
        f"scores_path={out}/score/{name}/scores.parquet",
    ]


def _phases(seeds: list[int], variants, scorers, rating_only: bool) -> list[list[tuple]]:
    """The runs, phase by phase (a phase needs the previous one's scores): (kind, name, seed)."""
    if rating_only:  # the scorers first (cheap), then whole seeds, so a cut-short benchmark has whole seeds
        return [[("score", sc, None) for sc in scorers] + [("rate", v, s) for s in seeds for v in variants]]
    cheap = [v for v in variants if v != "exact"]  # the exact estimator costs most: its ratings go later
    return [
        [("rate", v, s) for v in cheap for s in seeds] + [("score", sc, None) for sc in scorers],
        [("train", v, s) for v in cheap for s in seeds]
        + [("train", sc, s) for sc in scorers[:1] for s in seeds]
        + [("rate", "exact", s) for s in seeds if "exact" in variants],
        [("train", "exact", s) for s in seeds if "exact" in variants]
        + [("train", sc, s) for sc in scorers[1:] for s in seeds],
    ]


def run_all(out: Path, seeds: list[int], overrides: list[str], variants, scorers, jobs: int = 2, rating_only=False):
    """Run every missing run, phase by phase, ``jobs`` at a time; with jobs > 1 each process gets one
    thread (OMP_NUM_THREADS=1), which on a small CPU gets more runs per hour than one process on all
    cores. Returns wall seconds per phase."""
    import concurrent.futures as cf

    phases = _phases(seeds, variants, scorers, rating_only)
    env = {**os.environ, **({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} if jobs > 1 else {})}
    setup = RATING if rating_only else ("+experiment=efficiency", *SETUP, "logger=csv")
    py = [sys.executable, "train.py", *setup, *overrides]
    (out / "logs").mkdir(parents=True, exist_ok=True)

    def one(job):
        d, args = _job(out, *job)
        if (d / "summary.json").exists():
            return 0.0
        log = out / "logs" / ("-".join(str(x) for x in job if x is not None) + ".log")
        cost = _run(py + args + [f"hydra.run.dir={d}"], log, env=env)
        (d / "run_cost.json").write_text(json.dumps(cost))
        return cost["wall_s"]

    times: dict[str, float] = {}
    for i, phase in enumerate(phases, 1):
        started = time.time()
        with cf.ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(one, phase))
        times[f"phase {i} ({len(phase)} runs)"] = time.time() - started
    return times


def _load(path: Path) -> dict | None:
    p = path / "summary.json"
    return json.loads(p.read_text()) if p.exists() else None


def _subset_share(scores_path: Path, method: str, seed: int, gt: dict) -> float:
    """Corrupted share of the 50% subset ``method`` draws from the scores (as the train stage would)."""
    from alchemist_pl import analysis, pruning
    from alchemist_pl.scores import read_scores

    ids, scores, _ = read_scores(scores_path)
    idx = pruning.select(scores, 0.5, method, seed)
    return analysis.subset_quality(ids, [ids[i] for i in idx], gt)["subset_corrupted_share"]


def _cost_cells(runs: list[Path]) -> str:
    """``CPU min | load start → end`` over the runs' ``run_cost.json`` (– where none was recorded)."""
    costs = [json.loads((d / "run_cost.json").read_text()) for d in runs if (d / "run_cost.json").exists()]
    cpu = mean_std([c["cpu_s"] / 60 for c in costs], 1)
    load = [mean_std([c[k] for c in costs], 1) for k in ("load_start", "load_end")]
    return f"{cpu} | {load[0]} → {load[1]}" if costs else "– | –"


def report(out: Path, seeds: list[int], variants, scorers, rater_method: str = "shift_gsample", downstream=True):
    from alchemist_pl.corruption import read_ground_truth

    gt_path = next(iter(sorted(ROOT.glob("data/emoji-web-f0.3-n4000-s0/corruptions.parquet"))), None)
    gt = read_ground_truth(gt_path) if gt_path else None
    rows = []  # rating quality
    base_share: dict = {}
    for name in [*variants, *scorers]:
        is_rater = name in variants
        runs = [(s, out / "rate" / name / f"seed{s}") for s in seeds] if is_rater else [(None, out / "score" / name)]
        summ = [(s, d, _load(d)) for s, d in runs]
        summ = [(s, d, x) for s, d, x in summ if x]
        if not summ:
            continue
        q = [x["metrics"].get("rating_quality", {}) for _, _, x in summ]
        share = []
        if gt:
            method = rater_method if is_rater else "top_k"
            for s, d, _ in summ:
                for seed in [s] if is_rater else seeds:
                    share.append(_subset_share(d / "scores.parquet", method, seed, gt))
        delta_auroc, delta_share = [], []
        if is_rater and name != "alchemist":  # paired by seed with the default rater
            for s, _, x in summ:
                b = _load(out / "rate" / "alchemist" / f"seed{s}")
                if b:
                    delta_auroc.append(
                        x["metrics"]["rating_quality"]["auroc"] - b["metrics"]["rating_quality"]["auroc"]
                    )
            if gt and base_share:
                delta_share = [v - base_share[s] for (s, _, _), v in zip(summ, share) if s in base_share]
        if name == "alchemist":
            base_share = {s: v for (s, _, _), v in zip(summ, share)}
        rows.append(
            {
                "name": name,
                "n": len(summ),
                "d_auroc": mean_std(delta_auroc) if delta_auroc else "–",
                "d_share": mean_std(delta_share) if delta_share else "–",
                "auroc": mean_std([r.get("auroc") for r in q]),
                **{k: mean_std([r.get("per_kind", {}).get(k, {}).get("auroc") for r in q], 2) for k in KINDS},
                "share": mean_std(share),
                "rho": mean_std([x["metrics"].get("score_timestep_spearman") for _, _, x in summ])
                if is_rater
                else "n/a",
                "time": mean_std([x["wall_time_s"] for _, _, x in summ], 0),
                "cost": _cost_cells([d for _, d, _ in summ]),
            }
        )
    lines = [
        "## Rating quality on the corrupted pool",
        "",
        "AUROC: clean (higher score) vs corrupted; 0.5 = no signal, below 0.5 = corrupted samples score "
        "*higher*"
        + (" (Shift-Gsample's head discard then drops them)" if rater_method == "shift_gsample" else "")
        + ". Subset share: corrupted share of the "
        f"50% subset the method draws (raters: {rater_method}; scorers: top_k), pool 0.300. "
        "Δ: this variant minus the default rater, paired by seed, mean ± std. "
        "ρ: Spearman of final scores vs the mean timestep each sample saw. Raters: mean ± std over seeds; "
        "scorers are deterministic (one score file; the subset share is per seed of top-k = one value).",
        "",
        "| scorer | n | AUROC | Δ AUROC | "
        + " | ".join(KINDS)
        + " | subset corrupted share | Δ share | ρ(score, t) | wall s | CPU min | 1-min load start → end |",
        "|---|---|---|---|" + "---|" * len(KINDS) + "---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['n']} | {r['auroc']} | {r['d_auroc']} | "
            + " | ".join(r[k] for k in KINDS)
            + f" | {r['share']} | {r['d_share']} | {r['rho']} | {r['time']} | {r['cost']} |"
        )
    if downstream:
        lines += _downstream(out, seeds, variants, scorers)
    lines += ["", "## Variants", ""] + [
        f"- `{k}`: {v[0]}; overrides `{' '.join(v[1]) or '(none)'}`" for k, v in VARIANTS.items() if k in variants
    ]
    lines += [
        f"- `{k}`: {v}; `stage=score scorer={k}`, then `method=top_k`" for k, v in SCORERS.items() if k in scorers
    ]
    return "\n".join(lines) + "\n"


def _downstream(out: Path, seeds: list[int], variants, scorers) -> list[str]:
    """The downstream table: domain metrics of each subset's training runs, paired by seed."""

    base = {s: _load(out / "train" / "alchemist" / f"seed{s}") for s in seeds}
    lines = [
        "",
        "## Downstream: domain metrics after 2 epochs on the 50% subset",
        "",
        "Δ FID: paired by seed (same training seed), this row minus the default rater; negative = better.",
        "",
        "| data | n | domain FID | Δ FID vs alchemist | domain KID | domain CLIP | subset corrupted share |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in [*variants, *scorers]:
        summ = {s: _load(out / "train" / name / f"seed{s}") for s in seeds}
        summ = {s: x for s, x in summ.items() if x}
        if not summ:
            continue
        m = {s: x["metrics"] for s, x in summ.items()}
        fid = [v.get("eval/domain_fid") for v in m.values()]
        delta = [
            m[s]["eval/domain_fid"] - base[s]["metrics"]["eval/domain_fid"]
            for s in m
            if base.get(s) and name != "alchemist"
        ]
        label = f"{name} ({'Shift-Gsample' if name in variants else 'top-k'} 50%)"
        lines.append(
            f"| {label} | {len(m)} | {mean_std(fid, 2)} | {mean_std(delta, 2) if delta else '–'} | "
            f"{mean_std([v.get('eval/domain_kid') for v in m.values()])} | "
            f"{mean_std([v.get('eval/domain_clip') for v in m.values()], 2)} | "
            f"{mean_std([v.get('subset_quality', {}).get('subset_corrupted_share') for v in m.values()])} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/ablations")
    parser.add_argument("--results", default="benchmarks/results/ablations")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--scorers", default=",".join(SCORERS))
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (each single-threaded when > 1)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--rating-only", action="store_true", help="rate and score at the shipped budget, no training")
    parser.add_argument("--rater-method", default=None, help="the raters' subset (default top_k / shift_gsample)")
    parser.add_argument("--note", default="", help="a line for the report's header (e.g. where reused runs came from)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    scorers = [s for s in args.scorers.split(",") if s]
    unknown = [v for v in variants if v not in VARIANTS] + [s for s in scorers if s not in SCORERS]
    if unknown:
        raise SystemExit(f"unknown variant/scorer {unknown}; known: {list(VARIANTS)} / {list(SCORERS)}")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    method = args.rater_method or ("top_k" if args.rating_only else "shift_gsample")
    times = {}
    if not args.report_only:
        times = run_all(out, seeds, args.overrides, variants, scorers, args.jobs, args.rating_only)
    times_path = out / "times.json"
    old = json.loads(times_path.read_text()) if times_path.exists() else {}
    times_path.write_text(json.dumps({**old, **times}, indent=2))
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    body = report(out, seeds, variants, scorers, method, downstream=not args.rating_only)
    all_times = {**old, **times}
    header = [
        "# Ablations: rater variants and baseline scorers",
        "",
        f"Command: `python benchmarks/ablations.py {' '.join(sys.argv[1:])}`  ",
        f"Commit: {commit or 'unknown'}  ",
        f"Machine: {_machine()}  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
        "Wall time of the runs (all invocations): "
        + (", ".join(f"{k} {v / 60:.1f} min" for k, v in all_times.items()) or "none this invocation")
        + f"; this invocation {(time.time() - started) / 60:.1f} min",
        *([args.note] if args.note else []),
        "",
        (
            "Setup: `train.py " + " ".join(RATING) + " seed=S` + the variant's overlay (the shipped rater and "
            "rating budget on the 4,000-sample emoji pool with 30% planted noise); scorers: the same with "
            "`stage=score scorer=X`. No downstream training."
            if args.rating_only
            else "Setup: conf/experiment/efficiency.yaml (4,000-sample emoji pool, 30% planted noise, rater 6 epochs "
            "over D_val, downstream UNet 0.45M params, 2 epochs over the 50% subset, domain metrics on 128 fixed test "
            "prompts), CSV logger."
        ),
        "",
    ]
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "report.md").write_text("\n".join(header) + body)
    (results / "times.json").write_text(json.dumps(all_times, indent=2))
    print("\n".join(header) + body)


if __name__ == "__main__":
    main()
