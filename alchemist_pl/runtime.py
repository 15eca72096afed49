"""Plumbing shared by the stages: atomic file writes, process-group and rank-zero checks, the
Lightning trainer, loggers and callbacks built from the config, and ``summary.json``
(which checkpoint a run resumes: :mod:`alchemist_pl.resume`).

Nothing here knows the method; every stage in :mod:`alchemist_pl.stages` is written on top of it.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from hydra.utils import instantiate
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from . import __version__

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- files


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The temporary file lives in the same folder (so the rename is atomic) and is removed when the
    block raises, so a killed or failed write never leaves a half-written ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` then rename ``tmp`` onto ``path`` (:func:`atomic_path`); returns ``Path(path)``."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def write_json(path: str | os.PathLike, obj) -> Path:
    """Write ``obj`` as indented JSON atomically (values JSON cannot hold are written as ``str``)."""
    return write_atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, default=str)))


# ---------------------------------------------------------------- processes


@contextmanager
def preserved_rng():
    """Run the body without moving the process's random streams: torch (CPU and CUDA), NumPy and
    Python ``random`` states are restored on exit. For one-time work whose result is cached (the
    domain encoder, the autoencoder), so that a run with a cold cache draws the same training
    noise and initial weights as a run with a warm one."""
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):  # no CUDA: 0 devices
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def thread_count(value) -> int | None:
    """The ``threads`` key checked: None (torch's default thread count) or a positive integer.

    Raises:
        ValueError: anything else (names the key and the value).
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"threads must be a positive integer or null (torch's default), got {value!r}")
    return value


@contextmanager
def torch_threads(n: int | None):
    """Run the body with ``torch.set_num_threads(n)`` and ``OMP_NUM_THREADS=n``; both restored on exit.

    The environment variable carries the count to the processes the body starts (DDP ranks, which
    Lightning otherwise gives cpu_count / ranks threads each). ``n=None`` changes nothing.
    """
    if n is None:
        yield
        return
    before, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env


def distributed() -> bool:
    """True when a ``torch.distributed`` process group is initialised in this process."""
    return dist.is_available() and dist.is_initialized()


def process_group() -> tuple[int, int]:
    """(world size, rank) of the initialised ``torch.distributed`` group, or (1, 0) without one."""
    if distributed():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def is_global_zero() -> bool:
    """True on global rank 0 (and in a single process): the rank that writes shared outputs."""
    return getattr(rank_zero_only, "rank", 0) == 0


def barrier(trainer=None) -> None:
    """Wait for every rank (the outputs rank 0 writes exist after it); no-op outside DDP.

    Through ``trainer.strategy`` when given, else ``torch.distributed`` directly (the process group
    an earlier stage's DDP fit set up stays initialised for the later stages of a pipeline).
    """
    if not distributed():
        return
    if trainer is not None:
        trainer.strategy.barrier("outputs written")
    else:
        dist.barrier()


# ---------------------------------------------------------------- Lightning from the config


def container(cfg) -> dict:
    """The resolved config as plain Python (dicts, lists, scalars)."""
    return OmegaConf.to_container(cfg, resolve=True)


def is_wandb(logger) -> bool:
    """True for Lightning's ``WandbLogger`` (checked by name: wandb itself is imported lazily)."""
    return type(logger).__name__ == "WandbLogger"


def log_histogram(loggers, name: str, values: torch.Tensor, step: int) -> None:
    """Log a histogram of ``values`` (any shape, CPU) to every W&B logger in ``loggers`` (other
    loggers have no histogram type)."""
    for lg in loggers:
        if is_wandb(lg):
            import wandb  # optional: only with a W&B logger

            lg.experiment.log({name: wandb.Histogram(values.numpy()), "trainer/global_step": step})


def _instantiate_entries(group) -> list:
    return [instantiate(c) for c in (group or {}).values() if c is not None and "_target_" in c]


def make_loggers(cfg: DictConfig) -> list:
    """Instantiate ``cfg.logger`` entries (each a ``_target_``), and record the config in each."""
    loggers = _instantiate_entries(cfg.get("logger"))
    flat = container(cfg)
    for lg in loggers:
        lg.log_hyperparams(flat)
    return loggers


def finish_loggers(loggers: list) -> None:
    """Flush loggers and end the W&B run (multirun would otherwise reuse a live run)."""
    for lg in loggers:
        lg.finalize("success")
    if any(is_wandb(lg) for lg in loggers):
        import wandb  # optional and heavy: only when a W&B logger exists

        wandb.finish()


@contextmanager
def loggers_for(cfg: DictConfig):
    """``with loggers_for(cfg) as loggers:`` the config's loggers, finished on exit (also on error)."""
    loggers = make_loggers(cfg)
    try:
        yield loggers
    finally:
        finish_loggers(loggers)


def make_trainer(cfg: DictConfig, loggers: list, extra_callbacks: Iterable = (), **overrides):
    """``cfg.trainer`` instantiated with the loggers, ``cfg.callbacks`` plus ``extra_callbacks``,
    ``default_root_dir = cfg.paths.output_dir`` and ``overrides`` (e.g. ``max_steps``)."""
    return instantiate(
        cfg.trainer,
        logger=loggers or False,
        callbacks=_instantiate_entries(cfg.get("callbacks")) + list(extra_callbacks),
        default_root_dir=cfg.paths.output_dir,
        **overrides,
    )


def scalar_metrics(metrics) -> dict:
    """The scalar entries of a metrics mapping (e.g. ``trainer.callback_metrics``) as floats."""
    return {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}


def write_summary(cfg: DictConfig, stage: str, started: float, metrics: dict, outputs: dict) -> dict:
    """The stage's summary (metrics, output paths, wall time since ``started``, resolved config);
    written to ``{cfg.paths.output_dir}/summary.json`` by global rank 0 and returned on every rank."""
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
        "config": container(cfg),
    }
    if is_global_zero():  # under DDP every rank runs the stage; rank 0 writes
        write_json(Path(cfg.paths.output_dir) / "summary.json", summary)
    return summary
