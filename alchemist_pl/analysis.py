"""How good are the scores and the subsets, when the truth is known (a pool with planted noise).

With a ground truth ``{sample_id: corruption}`` (:mod:`alchemist_pl.corruption`):

- :func:`rating_quality`: AUROC of the score for clean (positive) vs corrupted samples, overall
  and per corruption kind, and each kind's distribution of rank percentiles (0 = top score).
  The raw score is two-sided by design: corruptions that make images easy to denoise
  (blank, blurred) rank at the head, which Shift-Gsample drops; so AUROC alone can be below 0.5
  while selection still works. Judge selection by :func:`subset_quality`.
- :func:`subset_quality`: the corrupted share of a selected subset against the pool's, overall
  and per kind (random selection keeps the pool's share in expectation).
- :func:`ranking_grid`: images at the head, middle and tail of the ranking (paper Fig. 5).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc

from .corruption import CLEAN
from .pixels import to_model_range
from .pruning import descending_order, percentiles
from .sampling import image_grid


def _labels(sample_ids, ground_truth: dict, source: str = "the scores") -> np.ndarray:
    missing = [s for s in sample_ids if s not in ground_truth]
    if missing:
        raise ValueError(f"{source}: {len(missing)} sample_ids have no ground truth (first: {missing[:3]})")
    return np.asarray([ground_truth[s] for s in sample_ids], dtype=object)


def auroc(positive_scores: np.ndarray, negative_scores: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (torchmetrics' binary AUROC)."""
    if len(positive_scores) == 0 or len(negative_scores) == 0:
        return float("nan")
    preds = torch.from_numpy(np.concatenate([positive_scores, negative_scores]).astype(np.float64))
    target = torch.cat([torch.ones(len(positive_scores)), torch.zeros(len(negative_scores))]).long()
    return float(binary_auroc(preds, target, thresholds=None))


def rating_quality(sample_ids, scores: np.ndarray, ground_truth: dict, percentile: np.ndarray | None = None) -> dict:
    """AUROC (clean = positive) overall and per kind; per-kind percentile quartiles and 10-bin histogram.

    Args:
        sample_ids: N ids; scores: [N] float (higher = more useful); ground_truth: id -> kind.
        percentile: the scores' rank percentiles if already computed (:func:`pruning.percentiles`).

    Returns:
        ``{"auroc": float, "per_kind": {kind: {"count", "auroc", "percentile_q25/median/q75",
        "percentile_histogram": [10 ints]}}}`` (``auroc`` of a kind: clean vs that kind).
    """
    labels = _labels(sample_ids, ground_truth)
    pct = percentiles(scores) if percentile is None else np.asarray(percentile)
    scores = np.asarray(scores, dtype=np.float64)
    clean = labels == CLEAN
    out = {
        "auroc": auroc(scores[clean], scores[~clean]),
        "pool_corrupted_share": float((~clean).mean()),
        "per_kind": {},
    }
    for kind in sorted(set(labels.tolist()), key=lambda k: (k != CLEAN, k)):
        m = labels == kind
        q25, q50, q75 = np.quantile(pct[m], [0.25, 0.5, 0.75])
        out["per_kind"][kind] = {
            "count": int(m.sum()),
            "auroc": None if kind == CLEAN else auroc(scores[clean], scores[m]),
            "percentile_q25": float(q25),
            "percentile_median": float(q50),
            "percentile_q75": float(q75),
            "percentile_histogram": np.histogram(pct[m], bins=10, range=(0, 1))[0].tolist(),
        }
    return out


def subset_quality(pool_ids, subset_ids, ground_truth: dict) -> dict:
    """Corrupted share of the subset vs the pool, and per kind the share of that kind that was kept.

    Returns:
        ``{"subset_size", "pool_corrupted_share", "subset_corrupted_share",
        "kept_fraction": {kind: kept / in pool}}`` — random selection keeps ``keep_ratio`` of every kind.
    """
    pool = _labels(pool_ids, ground_truth, "the pool")
    sub = _labels(subset_ids, ground_truth, "the subset")
    kinds = sorted(set(pool.tolist()), key=lambda k: (k != CLEAN, k))
    return {
        "subset_size": len(sub),
        "pool_corrupted_share": float((pool != CLEAN).mean()),
        "subset_corrupted_share": float((sub != CLEAN).mean()) if len(sub) else float("nan"),
        "kept_fraction": {k: float((sub == k).sum() / max(1, (pool == k).sum())) for k in kinds},
    }


def ranking_grid(
    images, scores: np.ndarray, path, per_row: int = 16, rows: int = 2, order: np.ndarray | None = None
) -> Path:
    """Save a PNG of the ranking's head, middle and tail (``rows`` rows of ``per_row`` images each).

    Args:
        images: uint8 tensor [N, 3, H, W] of the pool; scores: [N].
        order: the scores' :func:`pruning.descending_order` if already computed.
    """
    order = descending_order(scores) if order is None else order
    k = per_row * rows
    n = len(order)
    mid = max(0, n // 2 - k // 2)
    picks = np.concatenate([order[:k], order[mid : mid + k], order[max(0, n - k) :]])
    grid = image_grid(to_model_range(images[torch.from_numpy(picks)]), cols=per_row)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
