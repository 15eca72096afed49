"""Reports shared by the stages: the rating report of a scored pool (ranking grid, W&B table,
quality on planted noise), the planted-noise ground truth and the selected-percentile histogram."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .. import analysis
from ..corruption import ground_truth_for, read_ground_truth
from ..pruning import descending_order, percentiles
from ..runtime import is_wandb

log = logging.getLogger(__name__)


def ground_truth(train_path) -> dict | None:
    """``{sample_id: corruption kind or ""}`` of a corrupted pool, or None for a pool without one."""
    path = ground_truth_for(train_path)
    return read_ground_truth(path) if path else None


def rating_report(stage: str, train_path, pool, scores: np.ndarray, out: Path, loggers: list) -> dict:
    """Head/middle/tail grid of the ranking (``out/ranking.png``), a W&B table of every score, and,
    when the pool has a ground truth (planted noise), AUROC and per-kind percentiles
    (:func:`analysis.rating_quality`), returned as ``{"rating_quality": ...}`` (else ``{}``)."""
    order = descending_order(scores)  # one sort, shared by the grid, the percentiles and the table
    pct = percentiles(scores, order=order)
    analysis.ranking_grid(pool.images, scores, out / "ranking.png", order=order)
    gt = ground_truth(train_path)
    quality = {"rating_quality": analysis.rating_quality(pool.sample_ids, scores, gt, pct)} if gt else {}
    if quality:
        per_kind = quality["rating_quality"]["per_kind"]
        log.info(
            "%s: AUROC clean vs corrupted %.3f; per kind %s",
            stage,
            quality["rating_quality"]["auroc"],
            {k: round(v["auroc"], 3) for k, v in per_kind.items() if v["auroc"] is not None},
        )
    for lg in loggers:
        if is_wandb(lg):
            _log_score_table(lg, pool, scores, pct, gt, out / "ranking.png")
    return quality


def _log_score_table(logger, pool, scores, pct, gt, grid_path: Path) -> None:
    import wandb  # optional and heavy: only with a W&B logger

    cols = ["sample_id", "caption", "score", "percentile"] + (["corruption"] if gt else [])
    rows = [
        [sid, cap, float(sc), float(p)] + ([gt[sid]] if gt else [])
        for sid, cap, sc, p in zip(pool.sample_ids, pool.captions, scores, pct)
    ]
    logger.experiment.log(
        {
            "rate/scores": wandb.Table(columns=cols, data=rows),
            "rate/ranking": wandb.Image(str(grid_path), caption="rows 1-2 head, 3-4 middle, 5-6 tail"),
        }
    )


def plot_percentiles(percentile: np.ndarray, path: Path, title: str) -> Path:
    """Histogram of the selected samples' rank percentiles (0 = top score) as a PNG."""
    import matplotlib  # heavy: only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(percentile, bins=20, range=(0, 1), color="#4c72b0")
    ax.set_xlabel("rank percentile of score (0 = highest)")
    ax.set_ylabel("selected samples")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
