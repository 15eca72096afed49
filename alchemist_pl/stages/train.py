"""The train stage: the downstream text-to-image model on the selected data, then its evaluation."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from ..analysis import subset_quality
from ..plugins import prepare_downstream
from ..preflight import check_trained, fitted_steps
from ..resume import checkpoint_for, exclusive, keep_after_failure
from ..runtime import barrier, loggers_for, make_trainer, write_summary
from ..scores import provenance, read_subset, write_subset
from .evaluator import make_evaluation
from .report import ground_truth

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict:
    """Train the downstream model on the data ``cfg.method`` selects, then evaluate on the test split.

    The subset is the training DataModule's (``cfg.datamodule.training``: a subset file, a draw
    from scores, random or full); when drawn from scores it is written to ``subset.parquet``.
    ``checkpoints/last.ckpt`` is resumed only when it is this run's (same config and samples:
    :mod:`alchemist_pl.resume`). A failure after training started (e.g. in the evaluation) writes
    ``summary.json`` with ``status: failed``, what finished and the kept weights
    (:func:`alchemist_pl.resume.keep_after_failure`), then raises.

    Raises:
        ResumeError: the output folder holds another run's checkpoint, or another run writes there.
        ValueError, DataError: a config or data the run cannot train on (named keys and files); ``dedup.enabled``
            with a subset drawn here instead of by the prune stage.
        RuntimeError: the fit ran no step.
    """
    started = time.time()
    _refuse_undeduplicated(cfg)
    cfg = _labelled(cfg)
    L.seed_everything(cfg.seed, workers=True)
    dm = instantiate(cfg.datamodule.training)
    dm.setup("fit")
    out = Path(cfg.paths.output_dir)
    model, extra, eval_info = _model_and_evaluation(cfg, dm, out)
    ids = dm.train_set.sample_ids
    with exclusive(out):
        data = {"training subset": [ids[i] for i in dm.subset], "data.test_path": dm.test_set.sample_ids}
        ckpt = checkpoint_for(cfg, data)
        with loggers_for(cfg) as loggers:
            trainer = make_trainer(
                cfg,
                loggers,
                extra,
                max_steps=int(cfg.train.max_steps),
                max_epochs=-1,
                gradient_clip_val=cfg.train.gradient_clip_val,
            )
            if cfg.train.get("epochs"):  # equal epochs: steps scale with the subset size; each step takes W batches
                per_step = cfg.train.batch_size * trainer.world_size
                trainer.fit_loop.epoch_loop.max_steps = max(1, math.ceil(cfg.train.epochs * len(dm.subset) / per_step))
            try:
                return _fit_and_evaluate(cfg, dm, model, trainer, ckpt, extra, eval_info, started)
            except Exception as e:
                finished = {"train_samples": len(dm.subset), "input": _input(dm)}
                if extra:
                    finished["eval_curve"] = extra[0].curve
                keep_after_failure(cfg, "train", started, trainer, model, e, finished)
                raise


def _refuse_undeduplicated(cfg: DictConfig) -> None:
    """``dedup.enabled`` is done by the prune stage: a subset this stage draws itself would ignore it."""
    if cfg.get("dedup") is not None and cfg.dedup.enabled and not cfg.subset_path and cfg.method != "full":
        raise ValueError(
            f"dedup.enabled=true but method={cfg.method} draws its subset in the train stage, which does not"
            " remove near-duplicates: run +experiment=prune with dedup.enabled=true and train from its"
            " subset.parquet (subset_path=...), or set dedup.enabled=false"
        )


def _input(dm) -> dict:
    """What reading each split passed over or changed (:func:`alchemist_pl.data.load_split`)."""
    return {"data.train_path": dm.train_set.input_report, "data.test_path": dm.test_set.input_report}


def _fit_and_evaluate(cfg: DictConfig, dm, model, trainer, ckpt, extra: list, eval_info, started: float) -> dict:
    """Fit (resuming ``ckpt``), check it trained, test, write the drawn subset and the summary.

    ``train_time_s`` counts the fit alone, not the one-time evaluator or autoencoder built before it."""
    out = Path(cfg.paths.output_dir)
    fit_started = time.time()
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
    check_trained(fitted_steps(trainer), "train", "train.batch_size and train.max_steps")
    train_time = time.time() - fit_started
    train_loss = float(trainer.callback_metrics.get("train/loss", float("nan")))
    test = trainer.test(model, datamodule=dm, verbose=False)[0]
    metrics = {
        **{k: float(v) for k, v in test.items()},
        "train/loss": train_loss,
        "train_samples": len(dm.subset),
        "pool_size": len(dm.train_set),
        # a ddp_spawn fit does not carry global_step back to this process; it ran to max_steps
        # (max_epochs=-1, nothing stops it earlier)
        "steps": int(trainer.global_step or trainer.max_steps),
        "train_time_s": round(train_time, 2),
        "world_size": trainer.world_size,
        "input": _input(dm),
    }
    if dm.scores is not None and trainer.is_global_zero:  # the subset drawn from the scores, for reports
        _write_drawn_subset(cfg, dm, out / "subset.parquet")
    # the sample grid and its captions are the downstream model's own output: listed when it wrote them
    grid = {"samples": out / "samples.png", "sample_captions": out / "samples.txt"}
    outputs = {k: str(p) for k, p in grid.items() if p.is_file()}
    metrics.update(_subset_and_eval_metrics(cfg, dm, extra, eval_info, out, outputs))
    n, pool, loss = metrics["train_samples"], metrics["pool_size"], metrics.get("test/loss", float("nan"))
    log.info("train: %s on %d of %d samples, test loss %.4f -> %s", cfg.method, n, pool, loss, out)
    summary = write_summary(cfg, "train", started, metrics, outputs)
    barrier(trainer)  # under DDP the next stage or process may read what rank 0 wrote
    return summary


def _model_and_evaluation(cfg: DictConfig, dm, out: Path):
    """The downstream model (``cfg.model``) given the empty caption and the sample-grid prompts
    (:func:`alchemist_pl.plugins.prepare_downstream`) and, on VAE latents, their decoder
    (``set_decoder``), and the evaluation callback when ``eval.enabled``: (model, [callback] or [],
    evaluator info)."""
    extra, eval_info = [], None
    decode = dm.codec.decode if dm.codec is not None else None
    if cfg.get("eval") and cfg.eval.enabled:
        evaluator, eval_info = make_evaluation(
            cfg, dm.test_set, grid_path=out / "eval_samples.png", curve_path=out / "eval_curve.json", decode=decode
        )
        extra.append(evaluator)
    model = instantiate(cfg.model)
    prepare_downstream(model, dm, evaluate=bool(extra))
    if hasattr(model, "set_decoder"):
        model.set_decoder(decode)
    return model, extra, eval_info


def _labelled(cfg: DictConfig) -> DictConfig:
    """With ``subset_path``: the run labelled with how the subset file was made, not with ``cfg.method``."""
    if not cfg.subset_path:
        return cfg
    _, meta = read_subset(cfg.subset_path)
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.method = meta.get("method", "subset_file")
        cfg.keep_ratio = meta.get("keep_ratio", cfg.keep_ratio)
    return cfg


def _write_drawn_subset(cfg: DictConfig, dm, path: Path) -> None:
    ids = dm.train_set.sample_ids
    meta = {
        "stage": "train",
        "scores_path": str(cfg.scores_path),
        "method": cfg.method,
        "keep_ratio": cfg.keep_ratio,
        "seed": cfg.seed,
        **provenance(),
    }
    write_subset(path, [ids[i] for i in dm.subset], dm.scores[dm.subset], dm.subset_percentile, meta)


def _subset_and_eval_metrics(cfg: DictConfig, dm, extra: list, eval_info, out: Path, outputs: dict) -> dict:
    """Subset quality on planted noise and the evaluation curve's last point; adds eval outputs."""
    metrics = {}
    gt = ground_truth(cfg.data.train_path)
    if gt:
        ids = dm.train_set.sample_ids
        metrics["subset_quality"] = subset_quality(ids, [ids[i] for i in dm.subset], gt)
    if extra:  # after a ddp_spawn fit the curve is in the file the spawned rank 0 wrote
        curve = extra[0].curve or json.loads((out / "eval_curve.json").read_text())
        metrics.update({f"eval/{k}": v for k, v in curve[-1].items() if k != "step"})
        metrics["eval_curve"] = curve
        metrics["evaluator"] = eval_info
        outputs["eval_samples"] = str(out / "eval_samples.png")
        outputs["eval_curve"] = str(out / "eval_curve.json")
    return metrics
