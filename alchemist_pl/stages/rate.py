"""The rate stage: bilevel training of the proxy and the rater, then the score of every pool sample."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from ..runtime import (
    barrier,
    container,
    loggers_for,
    make_trainer,
    process_group,
    resume_path,
    scalar_metrics,
    write_atomic,
    write_summary,
)
from ..scores import provenance, read_scores, write_scores
from ..scoring import rater_hash, score_dataset_distributed
from ..streaming import merge_parts, score_shards, shard_list
from .report import rating_report

log = logging.getLogger(__name__)


def rate(cfg: DictConfig) -> dict:
    """Train the rater jointly with the proxy (bilevel), then score every sample of the pool.

    Scoring is in memory (the loaded pool, split across ranks), or with ``rate.streaming=true``
    shard by shard over ``data.train_path`` (:func:`score_streaming`). Both write the same
    ``scores.parquet``; ``rater.pt`` holds the rater's weights and config.

    Raises:
        ValueError: ``rate.streaming`` is not a boolean, or is true for an image-folder pool.
        DataError: bad or missing data (see :mod:`alchemist_pl.data`).
    """
    started = time.time()
    out = Path(cfg.paths.output_dir)
    streaming = check_streaming(cfg.rate.get("streaming", False), cfg.data.train_path)  # fails before training
    L.seed_everything(cfg.seed, workers=True)
    dm = instantiate(cfg.datamodule.rating)
    model = instantiate(cfg.bilevel)
    with loggers_for(cfg) as loggers:
        trainer = make_trainer(cfg, loggers, max_epochs=cfg.rate.max_epochs, max_steps=cfg.rate.max_steps)
        trainer.fit(model, datamodule=dm, ckpt_path=resume_path(out))
        fit_metrics = scalar_metrics(trainer.callback_metrics)
        t0 = time.time()
        dm.setup("fit")  # after a ddp_spawn fit the main process has not loaded the data yet
        scores, pool_scores, meta = _save_and_score(cfg, model, trainer, dm.pool, out, streaming)
        score_time = time.time() - t0
        # rank 0 alone writes the grid and logs the table (the other ranks have no logger to feed)
        quality = {}
        if trainer.is_global_zero:
            quality = rating_report("rate", cfg.data.train_path, dm.pool, pool_scores, out, loggers)
        barrier(trainer)
        metrics = {
            **fit_metrics,
            **quality,
            "samples_rated": len(scores),
            "scoring": meta["scoring"],
            "score_mean": float(scores.mean()),
            "score_std": float(scores.std()),
            "scoring_time_s": round(score_time, 2),
            "bilevel_iterations": int(trainer.global_step // 2),
            **model.timestep_correlation(pool_scores),  # score_timestep_spearman, samples_seen
        }
        for lg in loggers:
            lg.log_metrics({f"rate/{k}": v for k, v in metrics.items() if k.startswith("score")}, trainer.global_step)
        log.info("rate: scored %d samples -> %s", len(scores), meta["scores_path"])
        outputs = {
            "scores": meta["scores_path"],
            "rater": meta["rater_checkpoint"],
            "ranking_grid": str(out / "ranking.png"),
        }
        return write_summary(cfg, "rate", started, metrics, outputs)


def _save_and_score(cfg: DictConfig, model, trainer, pool, out: Path, streaming: bool):
    """Save ``rater.pt`` (rank 0), score the pool into ``scores.parquet``; returns (scores of every
    rated sample, scores of the loaded pool in its order, the scores file's metadata)."""
    rater_path, scores_path = out / "rater.pt", out / "scores.parquet"
    if trainer.is_global_zero:
        state = {"state_dict": model.rater.state_dict(), "config": container(cfg.rater)}
        write_atomic(rater_path, lambda tmp: torch.save(state, tmp))
    meta = {
        "stage": "rate",
        "train_path": str(cfg.data.train_path),
        "rater_checkpoint": str(rater_path),
        "config": container(cfg),
        **provenance(),
        "world_size": trainer.world_size,
        "scoring": "streaming" if streaming else "in_memory",
    }
    scores, pool_scores = _score_pool(cfg, model, trainer, pool, scores_path, meta, streaming)
    return scores, pool_scores, {**meta, "scores_path": str(scores_path)}


def _score_pool(cfg: DictConfig, model, trainer, pool, scores_path: Path, meta: dict, streaming: bool):
    """(scores of every rated sample, scores of the loaded pool in its order); writes ``scores_path``."""
    if streaming:  # every sample of the pool's shards; the report uses the loaded pool's share
        ids, scores = score_streaming(
            model.rater,
            cfg.data,
            scores_path.parent / "score_parts",
            scores_path,
            meta,
            batch_size=cfg.rate.score_batch_size,
            num_workers=int(cfg.rate.get("streaming_workers", 0)),
            trainer=trainer,
        )
        position = {s: i for i, s in enumerate(ids)}
        return scores, scores[[position[s] for s in pool.sample_ids]]
    # under DDP each rank scores its shard and all ranks get every score; rank 0 writes
    scores = score_dataset_distributed(model.rater, pool, cfg.rate.score_batch_size, device=model.device)
    if trainer.is_global_zero:
        write_scores(scores_path, pool.sample_ids, scores, meta)
    return scores, scores


def check_streaming(value, train_path) -> bool:
    """``rate.streaming``, checked: a boolean, and when true a pool of webdataset shards.

    Raises:
        ValueError: not a boolean, or ``train_path`` is an image folder (``metadata.jsonl``).
        DataError: ``train_path`` does not exist or holds no ``*.tar`` shards.
    """
    if not isinstance(value, bool):
        raise ValueError(f"rate.streaming must be true or false, got {value!r}")
    if value:
        path = Path(train_path)
        if path.is_dir() and (path / "metadata.jsonl").is_file():
            raise ValueError(
                f"rate.streaming=true scores webdataset *.tar shards, but data.train_path={path} is an "
                f"image folder (metadata.jsonl); set rate.streaming=false"
            )
        shard_list(path)
    return value


def score_streaming(
    rater, data: DictConfig, parts_root: Path, scores_path: Path, metadata: dict, batch_size, num_workers, trainer
) -> tuple[list[str], np.ndarray]:
    """Score every sample of ``data.train_path``'s shards with :func:`streaming.score_shards`.

    Shards are split across the ranks (shard i -> rank i mod W), each finished shard is a part in
    ``parts_root/<rater hash>/`` (a rerun with the same rater skips it; another rater never reuses
    it), rank 0 merges the parts into ``scores_path`` with ``metadata`` and removes them.

    Returns:
        (sample_ids [N] in shard order, scores [N] float32), the same on every rank.
    """
    parts = parts_root / rater_hash(rater)[:16]
    world, rank = process_group()
    shards = shard_list(data.train_path)
    device = next(rater.parameters()).device
    score_shards(
        rater,
        shards,
        parts,
        data.resolution,
        data.cache_dir,
        data.max_tokens,
        batch_size=batch_size,
        num_workers=num_workers,
        rank=rank,
        world_size=world,
        device=device,
    )
    barrier(trainer)
    if trainer.is_global_zero:
        merge_parts(shards, parts, scores_path, metadata)
        shutil.rmtree(parts_root)
    barrier(trainer)
    ids, scores, _ = read_scores(scores_path)
    return ids, scores
