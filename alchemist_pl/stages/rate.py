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

from ..checkpoints import counted_in_iterations
from ..preflight import PlannedTraining, check_trained, fitted_steps
from ..resume import checkpoint_for, exclusive, keep_after_failure
from ..runtime import (
    barrier,
    container,
    distributed,
    loggers_for,
    make_trainer,
    process_group,
    scalar_metrics,
    write_atomic,
    write_summary,
)
from ..scores import provenance, read_scores, write_scores
from ..scoring import rater_hash, score_dataset_distributed
from ..streaming import merge_parts, score_shards, shard_list
from .rate_scores import check_pool, proxy_scores, score_source
from .report import rating_report

log = logging.getLogger(__name__)

#: optimizer steps one bilevel iteration takes: a proxy step and a rater step (Lightning's
#: ``global_step`` counts both); ``rate.max_iterations`` and checkpoint periods count iterations
OPTIMIZER_STEPS_PER_ITERATION = 2
BATCH_KEYS = "rate.batch_size, rate.val_batch_size"


def rate(cfg: DictConfig) -> dict:
    """Train the rater jointly with the proxy (bilevel), then score every sample of the pool.

    Trains ``rate.max_epochs`` epochs over D_val, capped at ``rate.max_iterations`` bilevel
    iterations (one D_val batch and one pool batch: one proxy and one rater optimizer step), and
    resumes ``checkpoints/last.ckpt`` only when it is this run's (:mod:`alchemist_pl.resume`).
    ``scores.parquet`` holds what ``rate.scores`` names (:mod:`alchemist_pl.stages.rate_scores`): by default,
    for a ``bilevel=value_gap`` rating of pixels in memory, the z-scored value gap of the final proxies plus
    ``rate.caption_crossfit.weight`` × the z-scored cross-fitted caption agreement of the pool, with the rater's
    own scores in ``rater-scores.parquet``; else the rater's.
    Scoring is in memory (the loaded pool, split across ranks), or with ``rate.streaming=true``
    shard by shard over ``data.train_path`` (:func:`score_streaming`). Both give the same rater scores (in
    memory they are in ``rater-scores.parquet`` where ``scores.parquet`` holds proxy scores; streaming is
    rater-only); ``rater.pt`` holds the rater's weights and config. A failure after
    training started writes ``summary.json`` with ``status: failed`` and keeps the weights
    (:func:`alchemist_pl.resume.keep_after_failure`).

    Raises:
        ValueError: ``rate.streaming`` is not a boolean, or is true for an image-folder pool; a
            ``rate.scores`` the rating cannot compute or a bad setting of it
            (:func:`~alchemist_pl.stages.rate_scores.score_source`), a pool the caption cross-fit cannot split
            (:func:`~alchemist_pl.stages.rate_scores.check_pool`), both before training; a bad
            ``rate.max_iterations``; a length the data cannot fill (:class:`PlannedTraining`).
        DataError: bad or missing data (see :mod:`alchemist_pl.data`), or a rank's share of a
            split shorter than one batch.
        ResumeError: the output folder holds another run's checkpoint, or another run writes there.
        RuntimeError: the fit ran no step; under DDP, on the ranks other than 0, rank 0 failed to write the
            proxy-read ``scores.parquet`` (names rank 0's error).
    """
    started = time.time()
    out = Path(cfg.paths.output_dir)
    streaming = check_streaming(cfg.rate.get("streaming", False), cfg.data.train_path)  # fails before training
    source = score_source(cfg)
    decoded_dir(cfg)
    max_steps = _optimizer_steps(cfg.rate.max_iterations)
    L.seed_everything(cfg.seed, workers=True)
    dm = instantiate(cfg.datamodule.rating)
    dm.setup("fit")  # the samples, fingerprinted for the resume check (per-rank shares checked again in fit)
    check_pool(cfg, source, dm.pool)  # e.g. too few samples for the caption cross-fit's folds, before training
    model = instantiate(cfg.bilevel)
    with exclusive(out):
        ckpt = checkpoint_for(cfg, {"data.train_path": dm.pool.sample_ids, "data.val_path": dm.val_set.sample_ids})
        with loggers_for(cfg) as loggers:
            planned = PlannedTraining(
                "rate.max_iterations", "rate.max_epochs", BATCH_KEYS, OPTIMIZER_STEPS_PER_ITERATION
            )
            trainer = make_trainer(
                counted_in_iterations(cfg, OPTIMIZER_STEPS_PER_ITERATION),
                loggers,
                [planned],
                max_epochs=cfg.rate.max_epochs,
                max_steps=max_steps,
            )
            try:
                return _fit_and_score(cfg, dm, model, trainer, ckpt, loggers, streaming, source, started)
            except Exception as e:
                finished = {"input": _input(dm)}
                keep_after_failure(cfg, "rate", started, trainer, model, e, finished, OPTIMIZER_STEPS_PER_ITERATION)
                raise


def _optimizer_steps(iterations) -> int:
    """Lightning's ``max_steps`` (optimizer steps) for ``rate.max_iterations`` bilevel iterations (-1: no cap).

    Raises:
        ValueError: ``rate.max_iterations`` is not a positive integer or -1.
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations == 0 or iterations < -1:
        raise ValueError(f"rate.max_iterations must be a positive integer or -1 (no cap), got {iterations!r}")
    return iterations * OPTIMIZER_STEPS_PER_ITERATION if iterations > 0 else -1


def _views(dm, trainer, warn_below: float) -> dict:
    """How often the bilevel loop drew an average pool and D_val sample (all ranks together); logs a
    warning naming ``rate.pool_passes`` when the pool's is below ``warn_below``
    (``rate.warn_below_pool_views``; 0 never warns)."""
    iterations = trainer.global_step // OPTIMIZER_STEPS_PER_ITERATION
    pool = iterations * dm.batch_size * trainer.world_size / len(dm.pool)
    val = iterations * dm.val_batch_size * trainer.world_size / len(dm.val_set)
    if pool < warn_below:
        log.warning(
            "rate: the rater saw an average pool sample %.2f times (%d iterations of %d over %d samples); "
            "raise rate.pool_passes (now %s) for a rater that has seen the pool",
            pool, iterations, dm.batch_size * trainer.world_size, len(dm.pool), dm.pool_passes,
        )  # fmt: skip
    return {"pool_views_per_sample": round(pool, 3), "val_views_per_sample": round(val, 3)}


def _input(dm) -> dict:
    """What reading each split passed over or changed (:func:`alchemist_pl.data.load_split`)."""
    return {"data.train_path": dm.pool.input_report, "data.val_path": dm.val_set.input_report}


def _fit_and_score(cfg: DictConfig, dm, model, trainer, ckpt, loggers, streaming: bool, source: str, started: float):
    """Fit (resuming ``ckpt``), check it trained, score the pool, write the outputs and the summary."""
    out = Path(cfg.paths.output_dir)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
    check_trained(fitted_steps(trainer), "rate", f"{BATCH_KEYS} and rate.max_iterations")
    fit_metrics = scalar_metrics(trainer.callback_metrics)
    t0 = time.time()
    dm.setup("fit")  # after a ddp_spawn fit the main process has not loaded the data yet
    scores, pool_scores, meta = _save_and_score(cfg, model, trainer, dm.pool, out, streaming, source)
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
        "scores_from": source,
        "score_mean": float(scores.mean()),
        "score_std": float(scores.std()),
        "scoring_time_s": round(score_time, 2),
        "bilevel_iterations": int(trainer.global_step // OPTIMIZER_STEPS_PER_ITERATION),
        **_views(dm, trainer, cfg.rate.warn_below_pool_views),
        "input": _input(dm),
        **model.timestep_correlation(pool_scores),  # score_timestep_spearman, samples_seen
    }
    for lg in loggers:
        lg.log_metrics({f"rate/{k}": v for k, v in metrics.items() if k.startswith("score")}, trainer.global_step)
    log.info("rate: scored %d samples -> %s", len(scores), meta["scores_path"])
    outputs = {
        "scores": meta["scores_path"],
        **{f"scores_{part}": path for part, path in meta["parts"].items()},
        "rater": meta["rater_checkpoint"],
        "ranking_grid": str(out / "ranking.png"),
    }
    return write_summary(cfg, "rate", started, metrics, outputs)


def _save_and_score(cfg: DictConfig, model, trainer, pool, out: Path, streaming: bool, source: str):
    """Save ``rater.pt`` (rank 0), score the pool into ``scores.parquet`` by ``source`` (``rate.scores``,
    resolved); returns (scores of every rated sample, scores of the loaded pool in its order, the scores
    file's metadata with ``parts``: the extra scores files of a proxy-scored rating)."""
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
        "scores_from": source,
    }
    scores, pool_scores, parts = _score_pool(cfg, model, trainer, pool, scores_path, meta, streaming, source)
    return scores, pool_scores, {**meta, "scores_path": str(scores_path), "parts": parts}


def _score_pool(cfg: DictConfig, model, trainer, pool, scores_path: Path, meta: dict, streaming: bool, source: str):
    """(scores of every rated sample, scores of the loaded pool in its order, {part: extra scores file});
    writes ``scores_path``. A proxy-scored ``source`` is computed by rank 0 and read back by the others; when
    rank 0 fails, it raises its error and every other rank a RuntimeError naming it (none waits for the file)."""
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
            decoded_dir=decoded_dir(cfg),
        )
        position = {s: i for i, s in enumerate(ids)}
        return scores, scores[[position[s] for s in pool.sample_ids]], {}
    # under DDP each rank scores its shard and all ranks get every score; rank 0 writes
    scores = score_dataset_distributed(model.rater, pool, cfg.rate.score_batch_size, device=model.device)
    if source == "rater":
        if trainer.is_global_zero:
            write_scores(scores_path, pool.sample_ids, scores, meta)
        return scores, scores, {}
    parts, failure = {}, None
    if trainer.is_global_zero:
        try:
            scores, parts = proxy_scores(cfg, model, pool, scores, source, scores_path.parent, meta)
            write_scores(scores_path, pool.sample_ids, scores, meta)
        except Exception as e:  # the other ranks are told below, then it is raised here
            failure = e
    if distributed():  # rank 0 says whether it wrote scores.parquet (a bare barrier left the others waiting for it)
        error = None if failure is None else f"{type(failure).__name__}: {failure}"
        error = trainer.strategy.broadcast(error, src=0)
        if error is not None and failure is None:
            raise RuntimeError(f"rate.scores={source}: rank 0 failed to write {scores_path} ({error})")
    if failure is not None:
        raise failure
    if not trainer.is_global_zero:
        ids, scores, _ = read_scores(scores_path)
        position = {s: i for i, s in enumerate(ids)}
        scores = scores[[position[s] for s in pool.sample_ids]]
    return scores, scores, parts


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


def decoded_dir(cfg: DictConfig) -> str | None:
    """``data.cache_dir`` when ``rate.streaming_cache`` is true (decoded-image cache), else None.

    Raises:
        ValueError: ``rate.streaming_cache`` is not a boolean, or is true without a ``data.cache_dir``.
    """
    value = cfg.rate.get("streaming_cache", False)
    if not isinstance(value, bool):
        raise ValueError(f"rate.streaming_cache must be true or false, got {value!r}")
    if value and cfg.data.cache_dir is None:
        raise ValueError("rate.streaming_cache=true keeps the decoded images in data.cache_dir, which is null")
    return cfg.data.cache_dir if value else None


def score_streaming(
    rater,
    data: DictConfig,
    parts_root: Path,
    scores_path: Path,
    metadata: dict,
    batch_size,
    num_workers,
    trainer,
    decoded_dir=None,
) -> tuple[list[str], np.ndarray]:
    """Score every sample of ``data.train_path``'s shards with :func:`streaming.score_shards`.

    Shards are split across the ranks (shard i -> rank i mod W), each finished shard is a part in
    ``parts_root/<rater hash>/`` (a rerun with the same rater skips it; another rater never reuses
    it), rank 0 merges the parts into ``scores_path`` with ``metadata`` and removes them.
    ``decoded_dir``: the decoded-image cache folder (:mod:`alchemist_pl.decoded_cache`), or None.

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
        decoded_dir=decoded_dir,
    )
    barrier(trainer)
    if trainer.is_global_zero:
        merge_parts(shards, parts, scores_path, metadata)
        shutil.rmtree(parts_root)
    barrier(trainer)
    ids, scores, _ = read_scores(scores_path)
    return ids, scores
