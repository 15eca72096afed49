"""The stages of the Alchemist pipeline, each driven by a composed Hydra config.

    rate     bilevel training of proxy + rater, then scores.parquet   (cfg.stage = "rate")
    prune    scores.parquet -> subset.parquet + percentile histogram  (cfg.stage = "prune")
    train    downstream T2I model on full data / a subset / scores     (cfg.stage = "train")
    pipeline rate -> prune -> train for each of cfg.pipeline.compare   (cfg.stage = "pipeline")

Every stage writes ``summary.json`` (metrics, output paths, wall time, resolved config) into
``cfg.paths.output_dir`` and returns the same dict.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from . import __version__

log = logging.getLogger(__name__)

STAGES = ("rate", "score", "prune", "train", "pipeline")


# ---------------------------------------------------------------- helpers


def _container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def write_json(path: Path, obj: dict) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def _summary(cfg: DictConfig, stage: str, started: float, metrics: dict, outputs: dict) -> dict:
    out = Path(cfg.paths.output_dir)
    summary = {
        "stage": stage,
        "task_name": cfg.task_name,
        "method": cfg.method,
        "keep_ratio": cfg.keep_ratio,
        "seed": cfg.seed,
        "metrics": metrics,
        "outputs": outputs,
        "wall_time_s": round(time.time() - started, 2),
        "version": __version__,
        "config": _container(cfg),
    }
    if _is_global_zero():  # under DDP every rank runs the stage; rank 0 writes
        write_json(out / "summary.json", summary)
    return summary


def _is_global_zero() -> bool:
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def ensure_data(cfg: DictConfig) -> None:
    """Build what the config's data paths need and is missing: the embedded emoji dataset when a
    path points into ``data.emoji_dir``, and the corrupted pool when ``corruption`` is set."""
    emoji_dir = cfg.data.get("emoji_dir")
    corruption = cfg.get("corruption")
    if emoji_dir:
        root = Path(emoji_dir).resolve()
        paths = [cfg.data.val_path, cfg.data.test_path, corruption.source if corruption else cfg.data.train_path]
        if any(Path(p).resolve().is_relative_to(root) for p in paths) and not (root / "manifest.json").exists():
            from .emoji import build_emoji_dataset

            log.info("building the embedded emoji dataset in %s (first use; about a minute)", root)
            build_emoji_dataset(root, resolution=cfg.data.emoji_resolution)
    if corruption:
        from .corruption import build_corrupted_pool

        build_corrupted_pool(
            corruption.source,
            corruption.dir,
            corruption.fraction,
            corruption.kinds,
            corruption.seed,
            corruption.pool_size,
            cfg.data.resolution,
        )


def make_loggers(cfg: DictConfig) -> list:
    """Instantiate ``cfg.logger`` entries (each a ``_target_``), and record the config in each."""
    from hydra.utils import instantiate

    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None and "_target_" in c]
    flat = _container(cfg)
    for lg in loggers:
        lg.log_hyperparams(flat)
    return loggers


def finish_loggers(loggers: list) -> None:
    """Flush loggers and end the W&B run (multirun would otherwise reuse a live run)."""
    for lg in loggers:
        lg.finalize("success")
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        import wandb

        wandb.finish()


def _callbacks(cfg: DictConfig) -> list:
    from hydra.utils import instantiate

    return [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None and "_target_" in c]


def _trainer(cfg: DictConfig, loggers: list, extra_callbacks=(), **overrides):
    from hydra.utils import instantiate

    return instantiate(
        cfg.trainer,
        logger=loggers or False,
        callbacks=_callbacks(cfg) + list(extra_callbacks),
        default_root_dir=cfg.paths.output_dir,
        **overrides,
    )


def make_evaluation(cfg: DictConfig, test_set, grid_path=None, curve_path=None):
    """The :class:`~alchemist_pl.evaluation.GenerationEvaluation` callback ``cfg.eval`` describes.

    Prompts: the first ``eval.num_images`` samples of ``test_set`` (captions unseen in training);
    reference: all of ``test_set``'s images. Returns (callback, info about the evaluator).
    """
    from . import evaluation

    e = cfg.eval
    m = min(int(e.num_images), len(test_set))
    rows = test_set.caption_rows[:m]
    prompts = {
        "states": test_set.text.states[rows].float(),
        "mask": test_set.text.mask[rows],
        "pooled": test_set.text.pooled[rows].float(),
        "captions": test_set.captions[:m],
    }
    real = test_set.images.float() / 127.5 - 1.0
    if e.backend == "domain":
        encoder, info = _load_encoder(cfg)
        metrics = evaluation.DomainMetrics(encoder, kid_subset_size=int(e.kid_subset_size))
    elif e.backend == "standard":
        metrics, info = evaluation.StandardMetrics(), {"backend": "standard"}
    else:
        raise ValueError(f"eval.backend must be 'domain' or 'standard', got {e.backend!r}")
    metrics.set_reference(real)
    callback = evaluation.GenerationEvaluation(
        metrics,
        prompts,
        every_n_steps=e.every_n_steps,
        sample_steps=e.sample_steps,
        guidance_scale=e.guidance_scale,
        seed=e.seed,
        batch_size=e.batch_size,
        grid_path=grid_path,
        curve_path=curve_path,
    )
    return callback, {**info, "num_images": m, "reference_images": len(test_set)}


def _scalar_metrics(metrics) -> dict:
    return {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}


def _resume_from(cfg: DictConfig) -> str | None:
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    if ckpt.exists():
        log.info("resuming from %s", ckpt)
        return str(ckpt)
    return None


def _data_kwargs(cfg: DictConfig) -> dict:
    d = cfg.data
    return dict(resolution=d.resolution, num_workers=d.num_workers, cache_dir=d.cache_dir, max_tokens=d.max_tokens)


# ---------------------------------------------------------------- stages


def rate(cfg: DictConfig) -> dict:
    """Train the rater jointly with the proxy (bilevel), then score every sample of the pool.

    Scoring is in memory (the loaded pool, split across ranks), or with ``rate.streaming=true``
    shard by shard over ``data.train_path`` (:func:`_score_streaming`). Both write the same
    ``scores.parquet``.

    Raises:
        ValueError: ``rate.streaming`` is not a boolean, or is true for an image-folder pool.
        DataError: bad or missing data (see :mod:`alchemist_pl.data`).
    """
    import lightning as L
    import torch
    from hydra.utils import instantiate

    from .datamodule import RatingDataModule
    from .scores import provenance, score_dataset_distributed, write_scores

    started = time.time()
    out = Path(cfg.paths.output_dir)
    streaming = _check_streaming(cfg)  # before training: a bad setting fails at once
    L.seed_everything(cfg.seed, workers=True)
    dm = RatingDataModule(
        train_path=cfg.data.train_path,
        val_path=cfg.data.val_path,
        batch_size=cfg.rate.batch_size,
        val_batch_size=cfg.rate.val_batch_size,
        limit_train=cfg.data.limit_train,
        limit_val=cfg.data.limit_val,
        seed=cfg.seed,
        **_data_kwargs(cfg),
    )
    model = instantiate(cfg.bilevel)
    loggers = make_loggers(cfg)
    try:
        trainer = _trainer(cfg, loggers, max_epochs=cfg.rate.max_epochs, max_steps=cfg.rate.max_steps)
        trainer.fit(model, datamodule=dm, ckpt_path=_resume_from(cfg))
        fit_metrics = _scalar_metrics(trainer.callback_metrics)

        t0 = time.time()
        dm.setup("fit")  # after a ddp_spawn fit the main process has not loaded the data yet
        rater_path, scores_path = out / "rater.pt", out / "scores.parquet"
        if trainer.is_global_zero:
            tmp = rater_path.with_name(f".rater.pt.tmp-{os.getpid()}")
            torch.save({"state_dict": model.rater.state_dict(), "config": _container(cfg.rater)}, tmp)
            os.replace(tmp, rater_path)
        meta = {
            "stage": "rate",
            "train_path": str(cfg.data.train_path),
            "rater_checkpoint": str(rater_path),
            "config": _container(cfg),
            **provenance(),
            "world_size": trainer.world_size,
            "scoring": "streaming" if streaming else "in_memory",
        }
        if streaming:  # every sample of the pool's shards; the report uses the loaded pool's share
            ids, scores = _score_streaming(cfg, model, trainer, out / "score_parts", scores_path, meta)
            position = {s: i for i, s in enumerate(ids)}
            pool_scores = scores[[position[s] for s in dm.pool.sample_ids]]
        else:
            # under DDP each rank scores its shard and all ranks get every score; rank 0 writes
            scores = pool_scores = score_dataset_distributed(
                model.rater, dm.pool, cfg.rate.score_batch_size, device=model.device
            )
            if trainer.is_global_zero:
                write_scores(scores_path, dm.pool.sample_ids, scores, meta)
        score_time = time.time() - t0
        # rank 0 alone writes the grid and logs the table (the other ranks have no logger to feed)
        quality = _rating_report(cfg, dm.pool, pool_scores, out, loggers) if trainer.is_global_zero else {}
        _barrier(trainer)
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
            lg.log_metrics(
                {f"rate/{k}": v for k, v in metrics.items() if k.startswith("score")}, step=trainer.global_step
            )
        log.info("rate: scored %d samples -> %s", len(scores), scores_path)
        return _summary(
            cfg,
            "rate",
            started,
            metrics,
            {"scores": str(scores_path), "rater": str(rater_path), "ranking_grid": str(out / "ranking.png")},
        )
    finally:
        finish_loggers(loggers)


def _load_encoder(cfg: DictConfig, **override):
    """The cached domain evaluator ``cfg.eval.encoder`` describes, with ``override`` (keys of
    ``eval.encoder``) on top; trained on clean images on first use."""
    from .evaluation import load_domain_encoder

    e = OmegaConf.merge(cfg.eval.encoder, override)
    return load_domain_encoder(
        e.data_path,
        cfg.data.resolution,
        cfg.data.cache_dir,
        cfg.data.max_tokens,
        test_path=cfg.data.test_path,
        epochs=e.epochs,
        batch_size=e.batch_size,
        lr=e.lr,
        seed=e.seed,
    )


def score(cfg: DictConfig) -> dict:
    """Baseline scorers (issue 4; paper Table 1): score the pool with ``cfg.score.scorer`` into the same
    ``scores.parquet`` format the rater writes, with the same rating report (ranking grid, AUROC on
    planted noise). Scorers: ``clarity`` / ``frequency`` / ``edge_density``
    (:mod:`alchemist_pl.heuristics`, parameters from ``cfg.score.params``) and ``clip_score``
    (caption-image agreement under the domain evaluator, :func:`evaluation.caption_agreement`).

    Writes ``scores.parquet`` (sample_id, score float32; higher = keep first with ``top_k``),
    ``ranking.png`` and ``summary.json`` to ``paths.output_dir``.

    Raises:
        ValueError: unknown ``score.scorer`` or bad heuristic parameters.
        DataError: bad or missing pool data (names the file or sample).
    """
    from . import heuristics
    from .data import load_split
    from .scores import provenance, write_scores

    started = time.time()
    out = Path(cfg.paths.output_dir)
    name, params = cfg.score.scorer, _container(cfg.score.params) if cfg.score.params else {}
    if name not in (*heuristics.SCORERS, "clip_score"):
        raise ValueError(f"score.scorer must be one of {sorted([*heuristics.SCORERS, 'clip_score'])}, got {name!r}")
    pool = load_split(
        cfg.data.train_path, cfg.data.resolution, cfg.data.cache_dir, cfg.data.limit_train, cfg.data.max_tokens
    )
    extra = {}
    if name == "clip_score":
        from .evaluation import caption_agreement

        # trained on D_val by default: the clean data the rater also gets, never the pool it filters
        encoder, info = _load_encoder(cfg, **_container(cfg.score.encoder))
        scores = caption_agreement(encoder, pool).numpy()
        extra = {"encoder": info}
    else:
        scores = heuristics.score_images(pool.images.numpy(), name, **params).astype(np.float32)
    scores_path = write_scores(
        out / "scores.parquet",
        pool.sample_ids,
        scores,
        {
            "stage": "score",
            "scorer": name,
            "params": params,
            "train_path": str(cfg.data.train_path),
            "config": _container(cfg),
            **provenance(),
            **extra,
        },
    )
    loggers = make_loggers(cfg)
    try:
        quality = _rating_report(cfg, pool, scores, out, loggers)
    finally:
        finish_loggers(loggers)
    metrics = {
        **quality,
        "scorer": name,
        "samples_rated": len(scores),
        "score_mean": float(scores.mean()),
        "score_std": float(scores.std()),
    }
    log.info("score: %s scored %d samples -> %s", name, len(scores), scores_path)
    return _summary(
        cfg, "score", started, metrics, {"scores": str(scores_path), "ranking_grid": str(out / "ranking.png")}
    )


def _check_streaming(cfg: DictConfig) -> bool:
    """``rate.streaming``, checked: a boolean, and when true a pool of webdataset shards.

    Raises:
        ValueError: not a boolean, or ``data.train_path`` is an image folder (``metadata.jsonl``).
        DataError: ``data.train_path`` does not exist or holds no ``*.tar`` shards.
    """
    value = cfg.rate.get("streaming", False)
    if not isinstance(value, bool):
        raise ValueError(f"rate.streaming must be true or false, got {value!r}")
    if value:
        from .streaming import shard_list

        path = Path(cfg.data.train_path)
        if path.is_dir() and (path / "metadata.jsonl").is_file():
            raise ValueError(
                f"rate.streaming=true scores webdataset *.tar shards, but data.train_path={path} is an "
                f"image folder (metadata.jsonl); set rate.streaming=false"
            )
        shard_list(path)
    return value


def _score_streaming(cfg: DictConfig, model, trainer, parts_root: Path, scores_path: Path, metadata: dict):
    """Score every sample of ``data.train_path``'s shards with :func:`streaming.score_shards`.

    Shards are split across the ranks (shard i -> rank i mod W), each finished shard is a part in
    ``parts_root/<rater hash>/`` (a rerun with the same rater skips it; another rater never reuses
    it), rank 0 merges the parts into ``scores_path`` with ``metadata`` and removes them.

    Returns:
        (sample_ids [N] in shard order, scores [N] float32), the same on every rank.
    """
    import hashlib
    import shutil

    import torch.distributed as dist

    from .scores import read_scores
    from .streaming import merge_parts, score_shards, shard_list

    h = hashlib.sha256()
    for name, t in sorted(model.rater.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    parts = parts_root / h.hexdigest()[:16]
    grouped = dist.is_available() and dist.is_initialized()
    shards = shard_list(cfg.data.train_path)
    score_shards(
        model.rater,
        shards,
        parts,
        cfg.data.resolution,
        cfg.data.cache_dir,
        cfg.data.max_tokens,
        batch_size=cfg.rate.score_batch_size,
        num_workers=int(cfg.rate.get("streaming_workers", 0)),
        rank=dist.get_rank() if grouped else 0,
        world_size=dist.get_world_size() if grouped else 1,
        device=model.device,
    )
    _barrier(trainer)
    if trainer.is_global_zero:
        merge_parts(shards, parts, scores_path, metadata)
        shutil.rmtree(parts_root)
    _barrier(trainer)
    ids, scores, _ = read_scores(scores_path)
    return ids, scores


def _ground_truth(cfg: DictConfig) -> dict | None:
    from .corruption import ground_truth_for, read_ground_truth

    path = ground_truth_for(cfg.data.train_path)
    return read_ground_truth(path) if path else None


def _rating_report(cfg: DictConfig, pool, scores: np.ndarray, out: Path, loggers: list) -> dict:
    """Head/middle/tail grid of the ranking, a W&B table of every score, and, when the pool has a
    ground truth (planted noise), AUROC and per-kind percentiles (:func:`analysis.rating_quality`)."""
    from . import analysis
    from .pruning import descending_order, percentiles

    order = descending_order(scores)  # one sort, shared by the grid, the percentiles and the table
    pct = percentiles(scores, order=order)
    analysis.ranking_grid(pool.images, scores, out / "ranking.png", order=order)
    gt = _ground_truth(cfg)
    quality = {"rating_quality": analysis.rating_quality(pool.sample_ids, scores, gt, pct)} if gt else {}
    if quality:
        log.info(
            "%s: AUROC clean vs corrupted %.3f; per kind %s",
            cfg.stage,
            quality["rating_quality"]["auroc"],
            {
                k: round(v["auroc"], 3)
                for k, v in quality["rating_quality"]["per_kind"].items()
                if v["auroc"] is not None
            },
        )
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            import wandb

            cols = ["sample_id", "caption", "score", "percentile"] + (["corruption"] if gt else [])
            rows = [
                [sid, cap, float(sc), float(p)] + ([gt[sid]] if gt else [])
                for sid, cap, sc, p in zip(pool.sample_ids, pool.captions, scores, pct)
            ]
            lg.experiment.log(
                {
                    "rate/scores": wandb.Table(columns=cols, data=rows),
                    "rate/ranking": wandb.Image(
                        str(out / "ranking.png"), caption="rows 1-2 head, 3-4 middle, 5-6 tail"
                    ),
                }
            )
    return quality


def _barrier(trainer=None) -> None:
    """Wait for every rank (the outputs rank 0 writes exist after it); no-op outside DDP.

    Through ``trainer.strategy`` when given, else ``torch.distributed`` directly (the process group
    an earlier stage's DDP fit set up stays initialised for the later stages of a pipeline).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if trainer is not None:
            trainer.strategy.barrier("outputs written")
        else:
            dist.barrier()


def prune(cfg: DictConfig) -> dict:
    """Select a subset from ``cfg.scores_path`` with ``cfg.method`` at ``cfg.keep_ratio``."""
    from . import pruning
    from .scores import provenance, read_scores, write_subset

    if not cfg.scores_path:
        raise ValueError("prune needs scores: set scores_path=PATH/TO/scores.parquet")
    started = time.time()
    out = Path(cfg.paths.output_dir)
    ids, scores, meta = read_scores(cfg.scores_path)
    params = _container(cfg.pruning)
    order = pruning.descending_order(scores)  # one sort, shared by select and percentiles
    idx = pruning.select(scores, cfg.keep_ratio, cfg.method, cfg.seed, order=order, **params)
    pct = pruning.percentiles(scores, order=order)
    del order
    # under DDP (prune inside the pipeline) every rank selects the same subset; rank 0 writes
    subset_path, plot = out / "subset.parquet", out / "percentiles.png"
    if _is_global_zero():
        write_subset(
            subset_path,
            [ids[i] for i in idx],
            scores[idx],
            pct[idx],
            {
                "stage": "prune",
                "scores_path": str(cfg.scores_path),
                "method": cfg.method,
                "keep_ratio": cfg.keep_ratio,
                "seed": cfg.seed,
                "params": params,
                "scores_metadata": meta,
                "config": _container(cfg),
                **provenance(),
            },
        )
        plot_percentiles(pct[idx], plot, f"{cfg.method}, keep_ratio={cfg.keep_ratio}")
    hist, edges = np.histogram(pct[idx], bins=10, range=(0.0, 1.0))
    metrics = {
        "pool_size": len(scores),
        "subset_size": int(len(idx)),
        "selected_percentile_mean": float(pct[idx].mean()),
        "selected_percentile_histogram": {f"{edges[i]:.1f}-{edges[i + 1]:.1f}": int(h) for i, h in enumerate(hist)},
    }
    gt = _ground_truth(cfg)
    if gt:
        from .analysis import subset_quality

        metrics["subset_quality"] = subset_quality(ids, [ids[i] for i in idx], gt)
    loggers = make_loggers(cfg)
    try:
        for lg in loggers:
            lg.log_metrics(
                {
                    "prune/subset_size": metrics["subset_size"],
                    "prune/selected_percentile_mean": metrics["selected_percentile_mean"],
                },
                step=0,
            )
            if hasattr(lg, "log_image"):
                lg.log_image("prune/percentiles", [str(plot)], step=0)
    finally:
        finish_loggers(loggers)
    log.info("prune: %s kept %d of %d samples -> %s", cfg.method, len(idx), len(scores), subset_path)
    summary = _summary(cfg, "prune", started, metrics, {"subset": str(subset_path), "percentiles_plot": str(plot)})
    _barrier()  # the other ranks read the subset file next (pipeline under DDP)
    return summary


def plot_percentiles(percentile: np.ndarray, path: Path, title: str) -> Path:
    """Histogram of the selected samples' rank percentiles (0 = top score) as a PNG."""
    import matplotlib

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


def train(cfg: DictConfig) -> dict:
    """Train the downstream model on the data ``cfg.method`` selects, then evaluate on the test split."""
    import lightning as L
    from hydra.utils import instantiate

    from .datamodule import TrainingDataModule

    started = time.time()
    if cfg.subset_path:  # label the run with how the subset file was made, not with cfg.method
        from .scores import read_subset

        _, meta = read_subset(cfg.subset_path)
        cfg = cfg.copy()
        with open_dict(cfg):
            cfg.method = meta.get("method", "subset_file")
            cfg.keep_ratio = meta.get("keep_ratio", cfg.keep_ratio)
    L.seed_everything(cfg.seed, workers=True)
    dm = TrainingDataModule(
        train_path=cfg.data.train_path,
        test_path=cfg.data.test_path,
        subset_path=cfg.subset_path,
        scores_path=cfg.scores_path,
        keep_ratio=cfg.keep_ratio,
        method=cfg.method,
        pruning_params=_container(cfg.pruning),
        seed=cfg.seed,
        limit_train=cfg.data.limit_train,
        limit_test=cfg.data.limit_test,
        batch_size=cfg.train.batch_size,
        **_data_kwargs(cfg),
    )
    dm.setup("fit")
    subset_size = int(len(dm.sampler.subset))
    out = Path(cfg.paths.output_dir)
    extra, eval_info = [], None
    if cfg.get("eval") and cfg.eval.enabled:
        evaluator, eval_info = make_evaluation(
            cfg, dm.test_set, grid_path=out / "eval_samples.png", curve_path=out / "eval_curve.json"
        )
        extra.append(evaluator)
    model = instantiate(cfg.model)
    loggers = make_loggers(cfg)
    try:
        trainer = _trainer(
            cfg,
            loggers,
            extra,
            max_steps=int(cfg.train.max_steps),
            max_epochs=-1,
            gradient_clip_val=cfg.train.gradient_clip_val,
        )
        if cfg.train.get("epochs"):  # equal epochs: steps scale with the subset size; each step takes W batches
            trainer.fit_loop.epoch_loop.max_steps = max(
                1, math.ceil(float(cfg.train.epochs) * subset_size / (cfg.train.batch_size * trainer.world_size))
            )
        trainer.fit(model, datamodule=dm, ckpt_path=_resume_from(cfg))
        train_time = time.time() - started
        train_loss = float(trainer.callback_metrics.get("train/loss", float("nan")))
        test = trainer.test(model, datamodule=dm, verbose=False)[0]
        metrics = {
            **{k: float(v) for k, v in test.items()},
            "train/loss": train_loss,
            "train_samples": subset_size,
            "pool_size": len(dm.train_set),
            # a ddp_spawn fit does not carry global_step back to this process; it ran to max_steps
            # (max_epochs=-1, nothing stops it earlier)
            "steps": int(trainer.global_step or trainer.max_steps),
            "train_time_s": round(train_time, 2),
            "world_size": trainer.world_size,
        }
        ids = dm.train_set.sample_ids
        if dm.scores is not None and trainer.is_global_zero:  # the subset drawn from the scores, for reports
            from .scores import provenance, write_subset

            sub = np.asarray(dm.sampler.subset)
            write_subset(
                out / "subset.parquet",
                [ids[i] for i in sub],
                dm.scores[sub],
                dm.sampler.subset_percentile,
                {
                    "stage": "train",
                    "scores_path": str(cfg.scores_path),
                    "method": cfg.method,
                    "keep_ratio": cfg.keep_ratio,
                    "seed": cfg.seed,
                    **provenance(),
                },
            )
        gt = _ground_truth(cfg)
        if gt:
            from .analysis import subset_quality

            metrics["subset_quality"] = subset_quality(ids, [ids[i] for i in dm.sampler.subset], gt)
        outputs = {"samples": str(out / "samples.png")}
        if extra:  # after a ddp_spawn fit the curve is in the file the spawned rank 0 wrote
            curve = extra[0].curve or json.loads((out / "eval_curve.json").read_text())
            metrics.update({f"eval/{k}": v for k, v in curve[-1].items() if k != "step"})
            metrics["eval_curve"] = curve
            metrics["evaluator"] = eval_info
            outputs["eval_samples"] = str(out / "eval_samples.png")
            outputs["eval_curve"] = str(out / "eval_curve.json")
        log.info(
            "train: %s on %d of %d samples, test loss %.4f -> %s",
            cfg.method,
            metrics["train_samples"],
            metrics["pool_size"],
            metrics.get("test/loss", float("nan")),
            cfg.paths.output_dir,
        )
        summary = _summary(cfg, "train", started, metrics, outputs)
        _barrier(trainer)  # under DDP the next stage or process may read what rank 0 wrote
        return summary
    finally:
        finish_loggers(loggers)


def _substage(cfg: DictConfig, stage: str, subdir: str, **values) -> DictConfig:
    sub = cfg.copy()
    with open_dict(sub):
        sub.stage = stage
        sub.paths.output_dir = str(Path(cfg.paths.output_dir) / subdir)
        for k, v in values.items():
            sub[k] = v
    return sub


def pipeline(cfg: DictConfig) -> dict:
    """rate -> prune -> train on each of ``cfg.pipeline.compare`` (alchemist, random, full, ...)."""
    started = time.time()
    results = {"rate": rate(_substage(cfg, "rate", "rate"))}
    scores_path = results["rate"]["outputs"]["scores"]
    results["prune"] = prune(_substage(cfg, "prune", "prune", scores_path=scores_path))
    for name in cfg.pipeline.compare:
        if name == "full":
            sub = _substage(cfg, "train", "train-full", method="full", keep_ratio=1.0)
        elif name == "random":
            sub = _substage(cfg, "train", "train-random", method="random")
        elif name == cfg.method or name == "alchemist":
            sub = _substage(cfg, "train", f"train-{name}", subset_path=results["prune"]["outputs"]["subset"])
        else:  # another pruning method drawn from the same scores
            sub = _substage(cfg, "train", f"train-{name}", method=name, scores_path=scores_path)
        results[f"train-{name}"] = train(sub)
    rows = [
        {
            "run": k[len("train-") :],
            "samples": v["metrics"]["train_samples"],
            "test_loss": v["metrics"]["test/loss"],
            "domain_fid": v["metrics"].get("eval/domain_fid"),
            "train_time_s": v["metrics"]["train_time_s"],
        }
        for k, v in results.items()
        if k.startswith("train-")
    ]
    if _is_global_zero():
        print_comparison(rows, cfg)
    metrics = {
        "comparison": rows,
        "wall_time_s": {k: v["wall_time_s"] for k, v in results.items()},
        "samples_rated": results["rate"]["metrics"]["samples_rated"],
        "selected_percentile_histogram": results["prune"]["metrics"]["selected_percentile_histogram"],
    }
    outputs = {k: str(Path(cfg.paths.output_dir) / k / "summary.json") for k in results}
    return _summary(cfg, "pipeline", started, metrics, outputs)


def print_comparison(rows: list[dict], cfg: DictConfig) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"keep_ratio={cfg.keep_ratio}, seed={cfg.seed} (lower is better)")
    for col in ("run", "samples", "test_loss", "domain_fid", "train_time_s"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for r in rows:
        fid = "—" if r.get("domain_fid") is None else f"{r['domain_fid']:.2f}"
        table.add_row(r["run"], str(r["samples"]), f"{r['test_loss']:.4f}", fid, f"{r['train_time_s']:.0f}")
    Console().print(table)


def run(cfg: DictConfig) -> dict:
    """Run ``cfg.stage``; returns its summary."""
    if cfg.stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {cfg.stage!r}")
    out = Path(cfg.paths.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create the output directory paths.output_dir={out}: {e}") from e
    if not os.access(out, os.W_OK):
        raise OSError(f"the output directory paths.output_dir={out} is not writable")
    ensure_data(cfg)
    return {"rate": rate, "score": score, "prune": prune, "train": train, "pipeline": pipeline}[cfg.stage](cfg)
