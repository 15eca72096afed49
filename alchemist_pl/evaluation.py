"""Evaluation during training: a Lightning callback that generates images for a fixed prompt set
with fixed seeds and logs their metrics (:mod:`alchemist_pl.metrics`) as ``eval/<name>``."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from .metrics import StandardMetrics
from .plugins import generate_images
from .runtime import is_wandb, write_atomic
from .sampling import image_grid

log = logging.getLogger(__name__)


class GenerationEvaluation(Callback):
    """Lightning callback: every ``every_n_steps`` optimizer steps (and at the last step) generate
    images for a fixed prompt set with fixed seeds and log their metrics as ``eval/<name>``.

    Every run evaluated with the same prompts, seeds, sampler settings and metrics object sees
    exactly the same initial noise, so the curves of different subsets are comparable step for
    step. ``curve`` (a list of ``{"step": int, <metric>: float}``) is saved in checkpoints, so a
    resumed run keeps its earlier points. Under DDP global rank 0 alone generates, computes,
    logs and saves the grid (the weights are the same on every rank); the other ranks wait for
    its values (broadcast), so every rank holds the same ``curve``.

    Args:
        metrics: :class:`DomainMetrics` or :class:`StandardMetrics` with its reference set.
        prompts: dict with ``states`` [M, T, D], ``mask`` [M, T], ``pooled`` [M, D], ``captions`` (M str).
        every_n_steps: evaluation period in optimizer steps (0: only at the end).
        sample_steps, guidance_scale: the sampling scheduler's steps and the CFG scale.
        seed: seed of the initial noise.
        batch_size: images generated per forward batch.
        grid_path: where a grid of the last evaluation's first 32 images is saved (None: nowhere).
        curve_path: where ``curve`` is written as JSON after each evaluation (None: nowhere); a
            ``ddp_spawn`` fit runs the callback in child processes, so the main process reads it there.
    """

    def __init__(
        self,
        metrics,
        prompts: dict,
        every_n_steps: int = 100,
        sample_steps: int = 20,
        guidance_scale: float = 3.0,
        seed: int = 4321,
        batch_size: int = 256,
        grid_path=None,
        curve_path=None,
    ):
        self.metrics = metrics
        self.prompts = prompts
        self.every_n_steps = int(every_n_steps)
        self.sample_steps = sample_steps
        self.guidance_scale = guidance_scale
        self.seed = seed
        self.batch_size = batch_size
        self.grid_path = grid_path
        self.curve_path = curve_path
        self.curve: list[dict] = []

    @torch.no_grad()
    def generate(self, pl_module) -> torch.Tensor:
        """[M, 3, H, W] images in [-1, 1] for the prompt set (:func:`alchemist_pl.plugins.generate_images`)."""
        p = self.prompts
        return generate_images(
            pl_module, p["states"], p["mask"], self.sample_steps, self.guidance_scale, self.seed, self.batch_size
        )

    def evaluate(self, trainer, pl_module) -> dict:
        was_training = pl_module.training
        pl_module.eval()
        started = time.time()
        try:
            images = self.generate(pl_module)
        finally:
            pl_module.train(was_training)
        if isinstance(self.metrics, StandardMetrics):
            values = self.metrics.compute(images, self.prompts["captions"])
        else:
            values = self.metrics.compute(images.to(self.metrics.fid.device), self.prompts["pooled"])
        step = int(trainer.global_step)
        self.curve.append({"step": step, **values})
        if self.curve_path is not None:
            curve = json.dumps(self.curve)
            write_atomic(self.curve_path, lambda tmp: Path(tmp).write_text(curve))
        for lg in trainer.loggers:
            lg.log_metrics({f"eval/{k}": v for k, v in values.items()}, step=step)
        log.info(
            "eval at step %d (%.1f s): %s",
            step,
            time.time() - started,
            ", ".join(f"{k} {v:.4g}" for k, v in values.items()),
        )
        if self.grid_path is not None:
            image_grid(images[:32]).save(self.grid_path)
            for lg in trainer.loggers:
                if is_wandb(lg):
                    lg.log_image("eval/samples", [str(self.grid_path)], step=step)
        return values

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.curve and self.curve[-1]["step"] == step:
            return
        last = trainer.max_steps > 0 and step >= trainer.max_steps
        if last or (self.every_n_steps > 0 and step % self.every_n_steps == 0):
            values = self.evaluate(trainer, pl_module) if trainer.is_global_zero else None
            if trainer.world_size > 1:
                values = trainer.strategy.broadcast(values, src=0)
                if not trainer.is_global_zero:
                    self.curve.append({"step": int(step), **values})

    def state_dict(self) -> dict:
        return {"curve": list(self.curve)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.curve = list(state_dict.get("curve", []))
