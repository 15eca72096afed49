"""Checkpoint files named by training iteration.

Lightning names a periodic checkpoint by epoch and optimizer step (``epoch=7-step=200.ckpt``).
Where one training iteration takes several optimizer steps (the rate stage's bilevel iteration: a
proxy and a rater step), the step is not the iteration a user counts. :class:`IterationCheckpoint`
adds ``iteration`` (optimizer steps // ``steps_per_iteration``) to the fields a name may use and
names its files ``iteration=<N>.ckpt`` (``last.ckpt`` as before); :func:`counted_in_iterations`
puts it in a config's callbacks.
"""

from __future__ import annotations

import torch
from hydra.utils import get_object
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, open_dict


class EndOfTrainingCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` (``save_last=True``) always holds the state at the end
    of training. Lightning's own writes it at the end only when no periodic checkpoint wrote it before, so a
    run whose length is not a multiple of ``every_n_train_steps`` would keep the last *periodic* state there.
    """

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class IterationCheckpoint(EndOfTrainingCheckpoint):
    """:class:`EndOfTrainingCheckpoint` with an ``{iteration}`` field, the default name ``{iteration}``.

    Args:
        steps_per_iteration: optimizer steps (Lightning's ``global_step``) one training iteration takes.
        filename: as ``ModelCheckpoint``'s, with ``{iteration}`` besides ``{epoch}``, ``{step}`` and the
            logged metrics; None: Lightning's ``{epoch}-{step}``.
        **kwargs: ``ModelCheckpoint``'s (``every_n_train_steps`` counts optimizer steps).

    Raises:
        ValueError: ``steps_per_iteration`` is not a positive integer.
    """

    def __init__(self, steps_per_iteration: int = 1, filename: str | None = "{iteration}", **kwargs):
        if isinstance(steps_per_iteration, bool) or not isinstance(steps_per_iteration, int) or steps_per_iteration < 1:
            raise ValueError(f"steps_per_iteration must be a positive integer, got {steps_per_iteration!r}")
        super().__init__(filename=filename, **kwargs)
        self.steps_per_iteration = steps_per_iteration

    def format_checkpoint_name(self, metrics, filename=None, ver=None, prefix=None) -> str:
        """The file name for ``metrics`` (``step``: optimizer steps), with ``iteration`` added."""
        iteration = int(metrics.get("step", 0)) // self.steps_per_iteration
        return super().format_checkpoint_name({**metrics, "iteration": torch.tensor(iteration)}, filename, ver, prefix)


def counted_in_iterations(cfg: DictConfig, steps_per_iteration: int) -> DictConfig:
    """A copy of ``cfg`` whose ``callbacks`` count optimizer steps where the config counts training
    iterations: every ``every_n_train_steps`` times ``steps_per_iteration``, and Lightning's
    ``ModelCheckpoint``, an :class:`EndOfTrainingCheckpoint` or an :class:`IterationCheckpoint` an :class:`IterationCheckpoint` with
    ``steps_per_iteration``, so that its files are named by iteration."""
    cfg = cfg.copy()
    with open_dict(cfg):
        for entry in (cfg.get("callbacks") or {}).values():
            if entry is None:
                continue
            if entry.get("every_n_train_steps"):
                entry.every_n_train_steps = int(entry.every_n_train_steps) * steps_per_iteration
            target = get_object(entry._target_) if entry.get("_target_") else None
            if target in (ModelCheckpoint, EndOfTrainingCheckpoint):
                entry._target_ = f"{__name__}.{IterationCheckpoint.__qualname__}"
                target = IterationCheckpoint
            if isinstance(target, type) and issubclass(target, IterationCheckpoint):
                entry.steps_per_iteration = steps_per_iteration
    return cfg
