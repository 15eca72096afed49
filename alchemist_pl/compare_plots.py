"""Plots of a comparison of runs (:mod:`alchemist_pl.compare`): metrics against keep_ratio and
against training step, and the selected samples' rank-percentile histograms."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib.pyplot as plt  # without a display matplotlib picks its file backend (Agg)
import numpy as np
import pyarrow.parquet as pq

from .compare_stats import LABELS, METRICS, mean_curve, mean_std


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plots(groups: dict, out: Path) -> list[Path]:
    """The comparison's plots in ``out``: each metric against keep_ratio, against training step,
    and the selected samples' rank percentiles; returns the paths written."""
    paths = [_metric_vs_keep_ratio(groups, out), _metric_vs_step(groups, out), _selected_percentiles(groups, out)]
    return [p for p in paths if p is not None]


def _metric_vs_keep_ratio(groups: dict, out: Path) -> Path | None:
    metrics = [m for m in METRICS if any(m[0] in r["metrics"] for runs in groups.values() for r in runs)]
    if metrics:
        fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
        by_method = defaultdict(list)
        for (method, kr), runs in groups.items():
            by_method[method].append((kr, runs))
        for ax, (key, label, lower) in zip(axes[0], metrics):
            for method, items in sorted(by_method.items()):
                items.sort()
                stats = [mean_std(r["metrics"].get(key) for r in runs) for _, runs in items]
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
        return _save(fig, out / "metric_vs_keep_ratio.png")
    return None


def _metric_vs_step(groups: dict, out: Path) -> Path | None:
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
        return _save(fig, out / "metric_vs_step.png")
    return None


def _selected_percentiles(groups: dict, out: Path) -> Path | None:
    hists = {}
    for (method, kr), runs in groups.items():
        pcts = []
        for r in runs:
            sub = Path(r["_path"]).parent / "subset.parquet"  # drawn from scores by the run itself
            if not sub.exists() and r.get("config", {}).get("subset_path"):
                sub = Path(r["config"]["subset_path"])  # a precomputed subset file
            if sub.exists():
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
        return _save(fig, out / "selected_percentiles.png")
    return None
