"""Compare runs: ``python -m alchemist_pl.compare DIR [DIR ...] [--out OUT]``.

Reads every ``summary.json`` under the given folders (a Hydra multirun folder, a pipeline run,
or several), and writes to ``OUT`` (default: the first DIR):

- ``report.md``: per method x keep_ratio, mean ± std over seeds (and n) of domain FID, domain KID,
  domain CLIP score, test denoising loss and the corrupted share of the subset (when the pool
  has a ground truth); the rating quality (AUROC per corruption kind) of the rate runs; and the
  time-to-match: the step at which a method's mean curve first reaches a baseline's final value.
- ``metric_vs_keep_ratio.png``, ``metric_vs_step.png``, ``selected_percentiles.png``.
- ``wandb-report.json``: the W&B comparison report's specification (:mod:`alchemist_pl.wandb_report`);
  ``--wandb-report ENTITY/PROJECT`` also creates the report there (online, runs synced).

Only ``train`` summaries enter the table; ``rate`` summaries give the rating-quality section.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from . import wandb_report

log = logging.getLogger(__name__)

METRICS = (  # key in summary["metrics"], label, lower is better
    ("eval/domain_fid", "domain FID", True),
    ("eval/domain_kid", "domain KID", True),
    ("eval/domain_clip", "domain CLIP score", False),
    ("test/loss", "test loss", True),
)
LABELS = {
    "shift_gsample": "alchemist (Shift-Gsample)",
    "alchemist": "alchemist (Shift-Gsample)",
    "gsample": "Gsample (no head discard)",
    "top_k": "top-k",
    "random": "random",
    "full": "full data",
    "bottom_k": "bottom-k",
    "block": "block",
}


def load_summaries(dirs, stages=("train", "rate")) -> list[dict]:
    """Every ``summary.json`` of ``stages`` below ``dirs`` (a pipeline's summary: its parts are read)."""
    out = []
    for d in dirs:
        for path in sorted(Path(d).rglob("summary.json")):
            try:
                s = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from e
            if s.get("stage") in stages:
                s["_path"] = str(path)
                out.append(s)
    return out


def _key(s: dict) -> tuple[str, float]:
    method = "shift_gsample" if s["method"] == "alchemist" else s["method"]
    return method, 1.0 if method == "full" else float(s["keep_ratio"])


def _mean_std(values) -> tuple[float, float, int]:
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    if len(v) == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)


def _fmt(m: float, s: float, n: int, digits: int) -> str:
    if n == 0:
        return "—"
    return f"{m:.{digits}f} ± {s:.{digits}f}" if n > 1 else f"{m:.{digits}f}"


def group_runs(summaries) -> dict:
    groups = defaultdict(list)
    for s in summaries:
        if s["stage"] == "train":
            groups[_key(s)].append(s)
    return dict(sorted(groups.items(), key=lambda kv: (-kv[0][1], kv[0][0])))


def mean_curve(runs, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, mean value) over the runs' ``eval_curve`` at the steps all runs evaluated."""
    curves = [{p["step"]: p[metric.split("/")[-1]] for p in r["metrics"].get("eval_curve", [])} for r in runs]
    curves = [c for c in curves if c]
    if not curves:
        return np.array([]), np.array([])
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    return np.asarray(steps), np.asarray([np.mean([c[t] for c in curves]) for t in steps])


def time_to_match(groups, method, baseline, metric: str = "eval/domain_fid", lower: bool = True) -> dict | None:
    """Steps ``method`` needs (mean curve, linear interpolation) to reach ``baseline``'s final mean value.

    Returns ``{"target", "baseline_steps", "steps", "ratio"}`` (``steps``/``ratio`` None if never
    reached within the run), or None when either group or its curves are missing.
    """
    if method not in groups or baseline not in groups:
        return None
    bs, bv = mean_curve(groups[baseline], metric)
    ms, mv = mean_curve(groups[method], metric)
    if len(bs) == 0 or len(ms) == 0:
        return None
    target = float(bv[-1])
    better = (mv <= target) if lower else (mv >= target)
    hit = None
    if better.any():
        j = int(np.argmax(better))
        if j == 0:
            hit = float(ms[0])
        else:  # interpolate between the evaluation points around the crossing
            v0, v1, s0, s1 = mv[j - 1], mv[j], ms[j - 1], ms[j]
            hit = float(s0 + (s1 - s0) * (target - v0) / (v1 - v0)) if v1 != v0 else float(s1)
    return {
        "target": target,
        "baseline_steps": int(bs[-1]),
        "steps": hit,
        "ratio": None if hit is None else hit / float(bs[-1]),
    }


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plots(groups, rate_runs, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    metrics = [m for m in METRICS if any(m[0] in r["metrics"] for runs in groups.values() for r in runs)]
    if metrics:
        fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
        by_method = defaultdict(list)
        for (method, kr), runs in groups.items():
            by_method[method].append((kr, runs))
        for ax, (key, label, lower) in zip(axes[0], metrics):
            for method, items in sorted(by_method.items()):
                items.sort()
                stats = [_mean_std(r["metrics"].get(key) for r in runs) for _, runs in items]
                krs = [kr for kr, _ in items]
                if method == "full":
                    m, s, _ = stats[0]
                    ax.axhline(m, color="k", ls="--", lw=1, label=LABELS["full"])
                    ax.axhspan(m - s, m + s, color="k", alpha=0.08)
                else:
                    ax.errorbar(
                        krs,
                        [x[0] for x in stats],
                        yerr=[x[1] for x in stats],
                        marker="o",
                        capsize=3,
                        label=LABELS.get(method, method),
                    )
            ax.set_xlabel("keep_ratio")
            ax.set_title(f"{label} ({'lower' if lower else 'higher'} is better)", fontsize=9)
        axes[0][0].legend(fontsize=7)
        paths.append(_save(fig, out / "metric_vs_keep_ratio.png"))

    curve_metrics = [m for m in METRICS[:3] if any(len(mean_curve(runs, m[0])[0]) for runs in groups.values())]
    if curve_metrics:
        fig, axes = plt.subplots(1, len(curve_metrics), figsize=(4.5 * len(curve_metrics), 3.4), squeeze=False)
        for ax, (key, label, _lower) in zip(axes[0], curve_metrics):
            for (method, kr), runs in groups.items():
                steps, vals = mean_curve(runs, key)
                if len(steps):
                    ax.plot(steps, vals, marker=".", label=f"{LABELS.get(method, method)} @{kr:g}")
            ax.set_xlabel("training step")
            ax.set_title(f"{label}, mean over seeds", fontsize=9)
        axes[0][0].legend(fontsize=6)
        paths.append(_save(fig, out / "metric_vs_step.png"))

    hists = {}
    for (method, kr), runs in groups.items():
        pcts = []
        for r in runs:
            sub = Path(r["_path"]).parent / "subset.parquet"  # drawn from scores by the run itself
            if not sub.exists() and r.get("config", {}).get("subset_path"):
                sub = Path(r["config"]["subset_path"])  # a precomputed subset file
            if sub.exists():
                import pyarrow.parquet as pq

                pcts.append(pq.read_table(sub, columns=["percentile"]).column("percentile").to_numpy())
        if pcts:
            hists[(method, kr)] = np.concatenate(pcts)
    if hists:
        fig, ax = plt.subplots(figsize=(6, 3.4))
        for (method, kr), p in hists.items():
            ax.hist(
                p,
                bins=20,
                range=(0, 1),
                histtype="step",
                density=True,
                lw=1.5,
                label=f"{LABELS.get(method, method)} @{kr:g}",
            )
        ax.set_xlabel("rank percentile of score (0 = highest)")
        ax.set_ylabel("density of selected samples")
        ax.legend(fontsize=6)
        paths.append(_save(fig, out / "selected_percentiles.png"))
    return paths


def report(dirs, out: str | Path | None = None) -> Path:
    """Write ``report.md`` and plots for the runs under ``dirs``; returns the report's path.

    Raises:
        ValueError: no ``train`` or ``rate`` summary under ``dirs``.
    """
    dirs = [Path(d) for d in dirs]
    summaries = load_summaries(dirs)
    if not summaries:
        raise ValueError(f"no train or rate summary.json under {', '.join(map(str, dirs))}")
    out = Path(out or dirs[0])
    out.mkdir(parents=True, exist_ok=True)
    groups = group_runs(summaries)
    rate_runs = [s for s in summaries if s["stage"] == "rate"]
    present = [m for m in METRICS if any(m[0] in r["metrics"] for runs in groups.values() for r in runs)]
    has_gt = any("subset_quality" in r["metrics"] for runs in groups.values() for r in runs)

    lines = [
        f"# Comparison of {sum(len(v) for v in groups.values())} training runs",
        "",
        f"Source: {', '.join(str(d) for d in dirs)}. Mean ± sample std over seeds; n = runs.",
        "",
    ]
    header = ["method", "keep_ratio", "n", "samples", "steps"] + [
        f"{lab} {'↓' if lo else '↑'}" for _, lab, lo in present
    ]
    if has_gt:
        header.append("corrupted share of subset")
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (method, kr), runs in groups.items():
        row = [
            LABELS.get(method, method),
            f"{kr:g}",
            str(len(runs)),
            f"{np.mean([r['metrics'].get('train_samples', 0) for r in runs]):.0f}",
            f"{np.mean([r['metrics'].get('steps', 0) for r in runs]):.0f}",
        ]
        for key, _, _ in present:
            digits = 4 if "loss" in key or "kid" in key else 2
            row.append(_fmt(*_mean_std(r["metrics"].get(key) for r in runs), digits))
        if has_gt:
            row.append(
                _fmt(*_mean_std(r["metrics"].get("subset_quality", {}).get("subset_corrupted_share") for r in runs), 3)
            )
        lines.append("| " + " | ".join(row) + " |")
    if has_gt:
        pool = next(
            r["metrics"]["subset_quality"]["pool_corrupted_share"]
            for runs in groups.values()
            for r in runs
            if "subset_quality" in r["metrics"]
        )
        lines += ["", f"Corrupted share of the pool: {pool:.3f} (random selection keeps it in expectation)."]
        kinds = sorted(
            {
                k
                for runs in groups.values()
                for r in runs
                for k in r["metrics"].get("subset_quality", {}).get("kept_fraction", {})
            }
        )
        lines += [
            "",
            "Share of each kind that the subset kept (random keeps keep_ratio of every kind):",
            "",
            "| method | keep_ratio | " + " | ".join(kinds) + " |",
            "|---|---|" + "---|" * len(kinds),
        ]
        for (method, kr), runs in groups.items():
            cells = [
                _fmt(
                    *_mean_std(r["metrics"].get("subset_quality", {}).get("kept_fraction", {}).get(k) for r in runs), 2
                )
                for k in kinds
            ]
            lines.append(f"| {LABELS.get(method, method)} | {kr:g} | " + " | ".join(cells) + " |")

    ttm_rows = []
    for kr in sorted({kr for _, kr in groups if kr < 1.0}):
        for key, label, lower in present[:3]:
            for base in (("random", kr), ("full", 1.0)):
                t = time_to_match(groups, ("shift_gsample", kr), base, key, lower)
                if t:
                    ttm_rows.append((kr, label, base, t))
    if ttm_rows:
        lines += [
            "",
            "## Time to match",
            "",
            "Steps the alchemist subset's mean curve needs to reach the baseline's final mean value "
            "(linear interpolation between evaluation points; ratio = those steps / the baseline's steps).",
            "",
            "| keep_ratio | metric | baseline | baseline final | steps to match | ratio |",
            "|---|---|---|---|---|---|",
        ]
        for kr, label, base, t in ttm_rows:
            steps = "not reached" if t["steps"] is None else f"{t['steps']:.0f}"
            ratio = "—" if t["ratio"] is None else f"{t['ratio']:.2f}"
            lines.append(
                f"| {kr:g} | {label} | {LABELS.get(base[0], base[0])} @{base[1]:g} ({t['baseline_steps']} steps) "
                f"| {t['target']:.4g} | {steps} | {ratio} |"
            )

    quality = [r["metrics"]["rating_quality"] for r in rate_runs if "rating_quality" in r["metrics"]]
    if quality:
        kinds = sorted({k for q in quality for k in q["per_kind"] if k != "clean"})
        lines += [
            "",
            f"## Rating quality ({len(quality)} rate runs)",
            "",
            "AUROC of the score, clean (positive) vs corrupted; median rank percentile of each kind "
            "(0 = top score). Below 0.5 means that kind ranks above clean samples.",
            "",
            "| | all | " + " | ".join(kinds) + " |",
            "|---|---|" + "---|" * len(kinds),
            "| AUROC | "
            + _fmt(*_mean_std(q["auroc"] for q in quality), 3)
            + " | "
            + " | ".join(_fmt(*_mean_std(q["per_kind"].get(k, {}).get("auroc") for q in quality), 3) for k in kinds)
            + " |",
            "| median percentile | "
            + _fmt(
                *_mean_std(q["per_kind"]["clean"]["percentile_median"] for q in quality if "clean" in q["per_kind"]), 2
            )
            + " (clean) | "
            + " | ".join(
                _fmt(*_mean_std(q["per_kind"].get(k, {}).get("percentile_median") for q in quality), 2) for k in kinds
            )
            + " |",
        ]
    plots = _plots(groups, rate_runs, out)
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    path = out / "report.md"
    tmp = path.with_name(".report.md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    wandb_report.write_spec(load_summaries(dirs, ("train", "rate", "prune")), METRICS, out, path.read_text(), dirs)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Compare runs: report.md and plots from their summary.json files.")
    parser.add_argument("dirs", nargs="+", help="multirun or run folders")
    parser.add_argument("--out", default=None, help="output folder (default: the first DIR)")
    parser.add_argument("--wandb-report", metavar="ENTITY/PROJECT", help="also create the W&B report there (online)")
    args = parser.parse_args(argv)
    path = report(args.dirs, args.out)
    print(path.read_text())
    print(f"wrote {path} and {wandb_report.SPEC_NAME}")
    if args.wandb_report:
        spec = json.loads((path.parent / wandb_report.SPEC_NAME).read_text())
        print(f"saved the W&B report: {wandb_report.save_report(spec, args.wandb_report)}")


if __name__ == "__main__":
    main()
