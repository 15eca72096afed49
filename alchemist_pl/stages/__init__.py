"""The stages of the Alchemist pipeline, each driven by a composed Hydra config.

    rate     bilevel training of proxy + rater, then scores.parquet   (cfg.stage = "rate")
    score    a baseline scorer (no rater) -> scores.parquet           (cfg.stage = "score")
    prune    scores.parquet -> subset.parquet + percentile histogram  (cfg.stage = "prune")
    train    downstream T2I model on full data / a subset / scores     (cfg.stage = "train")
    pipeline rate -> prune -> train for each of cfg.pipeline.compare   (cfg.stage = "pipeline")

One module per stage; :func:`run` dispatches on ``cfg.stage``. Every stage writes
``summary.json`` (metrics, output paths, wall time, resolved config) into
``cfg.paths.output_dir`` and returns the same dict.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig

from ..corruption import build_corrupted_pool
from ..emoji import build_emoji_dataset
from ..preflight import check_config
from ..runtime import thread_count, torch_threads
from .pipeline import pipeline
from .prune import prune
from .rate import rate
from .score import score
from .train import train

log = logging.getLogger(__name__)

STAGES = {"rate": rate, "score": score, "prune": prune, "train": train, "pipeline": pipeline}

__all__ = ["STAGES", "ensure_data", "pipeline", "prune", "rate", "run", "score", "train"]


def ensure_data(cfg: DictConfig) -> None:
    """Build what the config's data paths need and is missing: the embedded emoji dataset when a
    path points into ``data.emoji_dir``, and the corrupted pool when ``corruption`` is set."""
    emoji_dir = cfg.data.get("emoji_dir")
    corruption = cfg.get("corruption")
    if emoji_dir:
        root = Path(emoji_dir).resolve()
        paths = [cfg.data.val_path, cfg.data.test_path, corruption.source if corruption else cfg.data.train_path]
        if any(Path(p).resolve().is_relative_to(root) for p in paths) and not (root / "manifest.json").exists():
            log.info("building the embedded emoji dataset in %s (first use; about a minute)", root)
            build_emoji_dataset(root, resolution=cfg.data.emoji_resolution)
    if corruption:
        build_corrupted_pool(
            corruption.source,
            corruption.dir,
            corruption.fraction,
            corruption.kinds,
            corruption.seed,
            corruption.pool_size,
            cfg.data.resolution,
        )


def run(cfg: DictConfig) -> dict:
    """Run ``cfg.stage`` with ``cfg.threads`` torch threads (null: torch's default); returns its summary.

    Raises:
        ValueError: unknown ``cfg.stage``, a bad ``threads``, or a config that cannot succeed
            (:func:`alchemist_pl.preflight.check_config`).
        OSError: ``paths.output_dir`` cannot be created or is not writable.
    """
    if cfg.stage not in STAGES:
        raise ValueError(f"stage must be one of {tuple(STAGES)}, got {cfg.stage!r}")
    out = Path(cfg.paths.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create the output directory paths.output_dir={out}: {e}") from e
    if not os.access(out, os.W_OK):
        raise OSError(f"the output directory paths.output_dir={out} is not writable")
    with torch_threads(thread_count(cfg.get("threads"))):
        ensure_data(cfg)
        check_config(cfg)  # what can fail before training fails now
        return STAGES[cfg.stage](cfg)
