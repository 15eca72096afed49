"""Compare runs: ``python -m alchemist_pl.compare DIR [DIR ...] [--out OUT]``.

Reads every ``summary.json`` under the given folders (a Hydra multirun folder, a pipeline run,
or several), and writes to ``OUT`` (default: the first DIR):

- ``report.md``: per method x keep_ratio, mean ± std over seeds (and n) of domain FID, domain KID,
  domain CLIP score, test denoising loss and the corrupted share of the subset (when the pool
  has a ground truth); the rating quality (AUROC per corruption kind) of the rate runs; and the
  time-to-match: the step at which a method's mean curve first reaches a baseline's final value.
- ``metric_vs_keep_ratio.png``, ``metric_vs_step.png``, ``selected_percentiles.png``.

Only ``train`` summaries enter the table; ``rate`` summaries give the rating-quality section.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from . import wandb_report
from .compare_plots import plots
from .compare_stats import LABELS, METRICS, fmt, group_runs, load_summaries, mean_std, time_to_match
from .runtime import write_atomic

log = logging.getLogger(__name__)


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
    present = [m for m in METRICS if any(m[0] in r["metrics"] for runs in groups.values() for r in runs)]
    has_gt = any("subset_quality" in r["metrics"] for runs in groups.values() for r in runs)
    lines = _results_table(groups, dirs, present, has_gt)
    if has_gt:
        lines += _kept_kinds(groups)
    lines += _time_to_match(groups, present)
    lines += _rating_quality([s for s in summaries if s["stage"] == "rate"])
    written = plots(groups, out)
    if written:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in written]
    path = out / "report.md"
    write_atomic(path, lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
    wandb_report.write_spec(load_summaries(dirs, ("train", "rate", "prune")), METRICS, out, path.read_text(), dirs)
    return path


def _results_table(groups: dict, dirs, present: list, has_gt: bool) -> list[str]:
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
            row.append(fmt(*mean_std(r["metrics"].get(key) for r in runs), digits))
        if has_gt:
            row.append(
                fmt(*mean_std(r["metrics"].get("subset_quality", {}).get("subset_corrupted_share") for r in runs), 3)
            )
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _kept_kinds(groups: dict) -> list[str]:
    lines = []
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
            fmt(*mean_std(r["metrics"].get("subset_quality", {}).get("kept_fraction", {}).get(k) for r in runs), 2)
            for k in kinds
        ]
        lines.append(f"| {LABELS.get(method, method)} | {kr:g} | " + " | ".join(cells) + " |")

    return lines


def _time_to_match(groups: dict, present: list) -> list[str]:
    """Steps each score-based subset (every method but random and full) needs to match random and full."""
    ttm_rows = []
    selections = sorted({m for m, _ in groups if m not in ("random", "full")})
    for kr in sorted({kr for _, kr in groups if kr < 1.0}):
        for method in selections:
            for key, label, lower in present[:3]:
                for base in (("random", kr), ("full", 1.0)):
                    t = time_to_match(groups, (method, kr), base, key, lower)
                    if t:
                        ttm_rows.append((method, kr, label, base, t))
    if not ttm_rows:
        return []
    lines = [
        "",
        "## Time to match",
        "",
        "Steps a score-based subset's mean curve needs to reach the baseline's final mean value "
        "(linear interpolation between evaluation points; ratio = those steps / the baseline's steps).",
        "",
        "| subset | keep_ratio | metric | baseline | baseline final | steps to match | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, kr, label, base, t in ttm_rows:
        steps = "not reached" if t["steps"] is None else f"{t['steps']:.0f}"
        ratio = "—" if t["ratio"] is None else f"{t['ratio']:.2f}"
        lines.append(
            f"| {LABELS.get(method, method)} | {kr:g} | {label} | {LABELS.get(base[0], base[0])} @{base[1]:g} "
            f"({t['baseline_steps']} steps) | {t['target']:.4g} | {steps} | {ratio} |"
        )
    return lines


def _rating_quality(rate_runs: list) -> list[str]:
    lines = []
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
            + fmt(*mean_std(q["auroc"] for q in quality), 3)
            + " | "
            + " | ".join(fmt(*mean_std(q["per_kind"].get(k, {}).get("auroc") for q in quality), 3) for k in kinds)
            + " |",
            "| median percentile | "
            + fmt(
                *mean_std(q["per_kind"]["clean"]["percentile_median"] for q in quality if "clean" in q["per_kind"]), 2
            )
            + " (clean) | "
            + " | ".join(
                fmt(*mean_std(q["per_kind"].get(k, {}).get("percentile_median") for q in quality), 2) for k in kinds
            )
            + " |",
        ]
    return lines


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
