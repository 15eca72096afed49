"""The score stage: a baseline scorer (no rater) writes ``scores.parquet`` for the pool."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from .. import heuristics
from ..data import load_split
from ..runtime import container, loggers_for, write_summary
from ..scores import provenance, write_scores
from ..scoring import caption_agreement
from .evaluator import domain_encoder
from .report import rating_report

log = logging.getLogger(__name__)


def score(cfg: DictConfig) -> dict:
    """Baseline scorers (paper Table 1): score the pool with ``cfg.score.scorer`` into the same
    ``scores.parquet`` format the rater writes, with the same rating report (ranking grid, AUROC on
    planted noise). Scorers: ``clarity`` / ``frequency`` / ``edge_density``
    (:mod:`alchemist_pl.heuristics`, parameters from ``cfg.score.params``) and ``clip_score``
    (caption-image agreement under the domain evaluator, :func:`alchemist_pl.scoring.caption_agreement`).

    Writes ``scores.parquet`` (sample_id, score float32; higher = keep first with ``top_k``),
    ``ranking.png`` and ``summary.json`` to ``paths.output_dir``.

    Raises:
        ValueError: unknown ``score.scorer`` or bad heuristic parameters.
        DataError: bad or missing pool data (names the file or sample).
    """
    started = time.time()
    out = Path(cfg.paths.output_dir)
    name, params = cfg.score.scorer, container(cfg.score.params) if cfg.score.params else {}
    if name not in (*heuristics.SCORERS, "clip_score"):
        raise ValueError(f"score.scorer must be one of {sorted([*heuristics.SCORERS, 'clip_score'])}, got {name!r}")
    d = cfg.data
    pool = load_split(d.train_path, d.resolution, d.cache_dir, d.limit_train, d.max_tokens)
    extra = {}
    if name == "clip_score":
        # trained on D_val by default: the clean data the rater also gets, never the pool it filters
        encoder, info = domain_encoder(cfg, **container(cfg.score.encoder))
        scores = caption_agreement(encoder, pool).numpy()
        extra = {"encoder": info}
    else:
        scores = heuristics.score_images(pool.images.numpy(), name, **params).astype(np.float32)
    meta = {"stage": "score", "scorer": name, "params": params, "train_path": str(d.train_path)}
    scores_path = write_scores(
        out / "scores.parquet", pool.sample_ids, scores, {**meta, "config": container(cfg), **provenance(), **extra}
    )
    with loggers_for(cfg) as loggers:
        quality = rating_report("score", d.train_path, pool, scores, out, loggers)
    metrics = {
        **quality,
        "scorer": name,
        "samples_rated": len(scores),
        "score_mean": float(scores.mean()),
        "score_std": float(scores.std()),
    }
    log.info("score: %s scored %d samples -> %s", name, len(scores), scores_path)
    outputs = {"scores": str(scores_path), "ranking_grid": str(out / "ranking.png")}
    return write_summary(cfg, "score", started, metrics, outputs)
