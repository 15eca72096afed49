"""Training progress: Lightning's Rich progress bar on a terminal, plain log lines anywhere else.

Under ``nohup``, a batch scheduler or a pipe, a live progress bar shows nothing (Rich draws only on
a terminal) or fills the log with carriage-return redraws (TQDM). :func:`progress_bar` gives Rich's
bar when standard output is a terminal and :class:`LogProgress` otherwise: one log line every
``every_n_iterations`` training iterations with the iteration out of the run's total, seconds per
iteration, the time left and the logged losses.
"""

from __future__ import annotations

import datetime
import logging
import math
import sys
import time

from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

log = logging.getLogger(__name__)


def progress_bar(every_n_iterations: int = 10, stream=None) -> ProgressBar:
    """Lightning's ``RichProgressBar`` when ``stream`` (default ``sys.stdout``) is a terminal, else
    :class:`LogProgress` (``every_n_iterations``). For ``callbacks`` entries of the config.

    Raises:
        ValueError: ``every_n_iterations`` is not a positive integer.
    """
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return RichProgressBar()
    return LogProgress(every_n_iterations)


class LogProgress(ProgressBar):
    """A progress bar as log lines (logger ``alchemist_pl.progress``, INFO), for runs without a terminal.

    A training iteration is one training batch (in the rate stage: one bilevel iteration, which
    takes two optimizer steps). A line is logged after the first iteration this process runs,
    every ``every_n_iterations`` iterations and after the last, e.g.
    ``iteration 40/550 (7%), epoch 1/10, 1.31 s/it, ETA 0:11:18, rate/val_loss 0.0812, ...``.
    The total is the smaller of ``max_epochs`` epochs of batches and the batches ``max_steps``
    optimizer steps take (counted as the run goes); a resumed run counts on from its checkpoint,
    its s/it and ETA from its own iterations. Only global rank 0 logs.

    Raises:
        ValueError: ``every_n_iterations`` is not a positive integer.
    """

    def __init__(self, every_n_iterations: int = 10):
        super().__init__()
        if isinstance(every_n_iterations, bool) or not isinstance(every_n_iterations, int) or every_n_iterations < 1:
            raise ValueError(f"every_n_iterations must be a positive integer, got {every_n_iterations!r}")
        self.every_n_iterations = every_n_iterations
        self._enabled = True
        self._start: tuple[float, int] | None = None  # (monotonic time, iterations done) at this fit's start

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = (time.monotonic(), trainer.fit_loop.epoch_loop.total_batch_idx + 1)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._enabled or self._start is None:
            return
        done = trainer.fit_loop.epoch_loop.total_batch_idx + 1
        total = total_iterations(trainer, done)
        if done % self.every_n_iterations and done != total and done != self._start[1] + 1:
            return
        log.info("%s", self.line(trainer, done, total))

    def line(self, trainer, done: int, total: int | None) -> str:
        """The log line after ``done`` of ``total`` iterations (None: unknown)."""
        started, before = self._start
        per_it = (time.monotonic() - started) / max(1, done - before)
        parts = [f"iteration {done}/{total} ({100 * done // total}%)" if total else f"iteration {done}"]
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            parts.append(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")
        parts.append(f"{per_it:.2f} s/it")
        if total:
            parts.append(f"ETA {datetime.timedelta(seconds=round(per_it * max(0, total - done)))}")
        parts += [f"{k} {v:.4g}" for k, v in losses(trainer.callback_metrics).items()]
        return ", ".join(parts)


def total_iterations(trainer, done: int) -> int | None:
    """Training iterations (batches) the fit runs in all: ``max_epochs`` epochs of batches, capped by
    ``max_steps`` optimizer steps at the steps per batch seen so far (``global_step / done``).
    None when neither bounds it (an iterable of unknown length and no ``max_steps``)."""
    total = math.inf
    if trainer.max_epochs is not None and trainer.max_epochs > 0:
        total = trainer.num_training_batches * trainer.max_epochs
    if trainer.max_steps is not None and trainer.max_steps > 0 and trainer.global_step > 0:
        total = min(total, round(trainer.max_steps * done / trainer.global_step))
    return None if math.isinf(total) else int(total)


def losses(metrics) -> dict[str, float]:
    """The scalar entries of ``metrics`` whose name holds ``loss``, without a bare name that another
    entry repeats under a prefix (``val_loss`` beside ``rate/val_loss``)."""
    found = {k: float(v) for k, v in metrics.items() if "loss" in k and getattr(v, "numel", lambda: 1)() == 1}
    return {k: v for k, v in found.items() if not any(o.endswith("/" + k) for o in found)}
