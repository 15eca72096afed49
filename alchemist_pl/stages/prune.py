"""The prune stage: ``scores.parquet`` -> ``subset.parquet`` (Sec. 3.3) and a percentile histogram."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from ..analysis import subset_quality
from ..dedup import deduplicate, select_eligible, write_duplicates
from ..pruning import choose_subset
from ..runtime import barrier, container, is_global_zero, loggers_for, write_summary
from ..scores import provenance, read_kept_ids, read_sample_ids, read_score_values, read_scores, write_subset
from .report import ground_truth, plot_percentiles

log = logging.getLogger(__name__)


def prune(cfg: DictConfig) -> dict:
    """Select a subset from ``cfg.scores_path`` with ``cfg.method`` at ``cfg.keep_ratio``
    (:func:`alchemist_pl.pruning.choose_subset`, parameters ``cfg.pruning``, seed ``cfg.seed``).

    Writes ``subset.parquet`` (sample_id, score, percentile), ``percentiles.png`` and ``summary.json``.
    With ``cfg.dedup.enabled``, near-duplicate images of the pool (``cfg.data.train_path``) are removed
    before the selection (:func:`prune_deduplicated`) and ``duplicates.parquet`` lists the groups.
    Without dedup the sample_ids stay Arrow arrays throughout (no Python string per sample).

    Raises:
        ValueError: no ``scores_path``, or a bad method / keep_ratio / dedup option.
        ScoresError: a malformed scores file. DataError: (dedup) an unreadable pool image.
    """
    if not cfg.scores_path:
        raise ValueError("prune needs scores: set scores_path=PATH/TO/scores.parquet")
    started = time.time()
    out = Path(cfg.paths.output_dir)
    params = container(cfg.pruning)
    subset_path, plot = out / "subset.parquet", out / "percentiles.png"
    subset_meta = {"stage": "prune", "scores_path": str(cfg.scores_path), "method": cfg.method}
    subset_meta |= {"keep_ratio": cfg.keep_ratio, "seed": cfg.seed, "params": params, "config": container(cfg)}
    dedup = subset_meta["dedup"] = _dedup_options(cfg)
    # under DDP (prune inside the pipeline) every rank selects the same subset; rank 0 writes
    args = (cfg.keep_ratio, cfg.method, cfg.seed, params, {**subset_meta, **provenance()})
    if dedup is None:
        n, kept_ids, pct = prune_file(cfg.scores_path, subset_path if is_global_zero() else None, *args)
    else:
        n, kept_ids, pct, report = prune_deduplicated(cfg.scores_path, out if is_global_zero() else None, *args, dedup)
    if is_global_zero():
        plot_percentiles(pct, plot, f"{cfg.method}, keep_ratio={cfg.keep_ratio}")
    metrics = _metrics(n, pct)
    if dedup is not None:
        metrics["dedup"] = report
    gt = ground_truth(cfg.data.train_path)
    if gt:  # a planted-noise pool: small enough for Python strings
        metrics["subset_quality"] = subset_quality(read_scores(cfg.scores_path)[0], kept_ids.to_pylist(), gt)
    _log(cfg, metrics, plot)
    log.info("prune: %s kept %d of %d samples -> %s", cfg.method, len(pct), n, subset_path)
    outputs = {"subset": str(subset_path), "percentiles_plot": str(plot)}
    outputs |= {} if dedup is None else {"duplicates": str(out / "duplicates.parquet")}
    summary = write_summary(cfg, "prune", started, metrics, outputs)
    barrier()  # the other ranks read the subset file next (pipeline under DDP)
    return summary


def prune_file(scores_path, subset_path, keep_ratio: float, method: str, seed: int, params: dict, metadata: dict):
    """The prune stage's data path: read the scores, choose the subset
    (:func:`~alchemist_pl.pruning.choose_subset`), read the sample_ids, write the kept rows.

    The ids are read after the draw (the sort and the ids are not in memory at once), one Parquet
    row group at a time (a few at once on threads, hashed in order against the writer's digest), and
    only the kept ones are held, as Arrow arrays (:func:`~alchemist_pl.scores.read_kept_ids`).
    ``subset_path``: where ``subset.parquet`` goes, or None to write nothing; ``metadata``: the
    subset file's, to which the scores file's metadata is added as ``scores_metadata``.

    Returns:
        (N, the k kept sample_ids, [k] float64 percentile of each kept sample).

    Raises:
        ScoresError: a malformed scores file. ValueError: a bad method / keep_ratio / parameter.
    """
    scores, scores_meta = read_score_values(scores_path)
    idx, pct = choose_subset(len(scores), scores=scores, keep_ratio=keep_ratio, method=method, seed=seed, **params)
    n, kept_scores = len(scores), scores[idx]
    del scores  # the N scores are not needed while the ids are read
    kept_ids = read_kept_ids(scores_path, scores_meta, idx)
    if subset_path is not None:
        write_subset(subset_path, kept_ids, kept_scores, pct, {**metadata, "scores_metadata": scores_meta})
    return n, kept_ids, pct


def _dedup_options(cfg: DictConfig) -> dict | None:
    """``cfg.dedup`` with the pool's path and resolution, or None when dedup is off (or not configured)."""
    dedup = cfg.get("dedup")
    if dedup is None or not dedup.enabled:
        return None
    options = {k: v for k, v in container(dedup).items() if k != "enabled"}
    return {**options, "train_path": str(cfg.data.train_path), "resolution": int(cfg.data.resolution)}


def prune_deduplicated(scores_path, out_dir, keep_ratio, method: str, seed: int, params: dict, metadata: dict, dedup):
    """:func:`prune_file` with near-duplicates removed first (:mod:`alchemist_pl.dedup`).

    The pool's images (``dedup["train_path"]``) are hashed and grouped; in each group only the
    highest-scored sample stays eligible, and the selection keeps ``round(keep_ratio * N)`` of the
    eligible samples (:func:`~alchemist_pl.dedup.select_eligible`; percentiles among the eligible).
    ``out_dir``: where ``subset.parquet`` and ``duplicates.parquet`` go, or None to write nothing.

    Returns:
        (N, the k kept sample_ids, [k] float64 percentiles, the dedup report dict).

    Raises:
        ScoresError: a malformed scores file. DataError: an unreadable pool image, or scored samples the
            pool does not hold. ValueError: bad dedup options, method, keep_ratio or parameter.
    """
    scores, scores_meta = read_score_values(scores_path)
    ids = read_sample_ids(scores_path, scores_meta)
    id_list = ids.to_pylist()
    eligible, groups, report = deduplicate(dedup["train_path"], id_list, scores, dedup, seed, str(scores_path))
    idx, pct = select_eligible(scores, eligible, keep_ratio, method, seed, params)
    kept_ids = ids.take(idx)
    if out_dir is not None:
        write_subset(
            out_dir / "subset.parquet", kept_ids, scores[idx], pct, {**metadata, "scores_metadata": scores_meta}
        )
        write_duplicates(out_dir / "duplicates.parquet", id_list, groups, eligible, scores)
    return len(scores), kept_ids, pct, {**report, "eligible": int(eligible.sum())}


def _metrics(pool_size: int, pct: np.ndarray) -> dict:
    """Subset size, mean selected percentile and its 10-bin histogram."""
    hist, edges = np.histogram(pct, bins=10, range=(0.0, 1.0))
    return {
        "pool_size": pool_size,
        "subset_size": int(len(pct)),
        "selected_percentile_mean": float(pct.mean()),
        "selected_percentile_histogram": {f"{edges[i]:.1f}-{edges[i + 1]:.1f}": int(h) for i, h in enumerate(hist)},
    }


def _log(cfg: DictConfig, metrics: dict, plot: Path) -> None:
    """The subset size, mean percentile and the percentile plot to the configured loggers."""
    with loggers_for(cfg) as loggers:
        for lg in loggers:
            lg.log_metrics({f"prune/{k}": metrics[k] for k in ("subset_size", "selected_percentile_mean")}, step=0)
            if hasattr(lg, "log_image"):
                lg.log_image("prune/percentiles", [str(plot)], step=0)
