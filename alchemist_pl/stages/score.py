"""The score stage: a baseline scorer (no rater) writes ``scores.parquet`` for the pool."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from ..data import load_split
from ..runtime import container, loggers_for, write_summary
from ..scores import provenance, write_scores
from .report import rating_report

log = logging.getLogger(__name__)


def score(cfg: DictConfig) -> dict:
    """Baseline scorers (paper Table 1): score the pool with the ``scorer`` group's scorer into the
    same ``scores.parquet`` format the rater writes, with the same rating report (ranking grid,
    AUROC on planted noise): ``clarity`` / ``frequency`` / ``edge_density``
    (:class:`~alchemist_pl.scoring.HeuristicScorer`), ``clip_score``
    (:class:`~alchemist_pl.scoring.CaptionAgreementScorer`), ``oracle`` on planted noise, or ``combined``
    (:class:`~alchemist_pl.score_combination.ScoreCombination`: several score files of the pool).

    Writes ``scores.parquet`` (sample_id, score float32; higher = keep first with ``top_k``),
    ``ranking.png`` and ``summary.json`` to ``paths.output_dir``.

    Raises:
        ValueError: bad heuristic parameters.
        DataError: bad or missing pool data (names the file or sample).
    """
    started = time.time()
    out = Path(cfg.paths.output_dir)
    scorer = instantiate(cfg.scorer, _convert_="all")
    d = cfg.data
    pool = load_split(d.train_path, d.resolution, d.cache_dir, d.limit_train, d.max_tokens)
    scores = scorer(pool)
    meta = {"stage": "score", **scorer.metadata(), "train_path": str(d.train_path), "config": container(cfg)}
    scores_path = write_scores(out / "scores.parquet", pool.sample_ids, scores, {**meta, **provenance()})
    with loggers_for(cfg) as loggers:
        quality = rating_report("score", d.train_path, pool, scores, out, loggers)
    metrics = {
        **quality,
        "scorer": scorer.name,
        "samples_rated": len(scores),
        "score_mean": float(scores.mean()),
        "score_std": float(scores.std()),
        "input": {"data.train_path": pool.input_report},
    }
    log.info("score: %s scored %d samples -> %s", scorer.name, len(scores), scores_path)
    outputs = {"scores": str(scores_path), "ranking_grid": str(out / "ranking.png")}
    return write_summary(cfg, "score", started, metrics, outputs)
