"""The rating DataModule: the training pool and D_val of the bilevel loop, under a pass budget."""

from __future__ import annotations

import math

from lightning.pytorch.utilities import CombinedLoader

from ..preflight import check_batches_per_rank
from ..runtime import process_group
from ..sampler import StreamDistributedSampler
from .base import BaseDataModule


class RatingDataModule(BaseDataModule):
    """Training pool and D_val for the bilevel loop.

    ``train_dataloader`` yields ``{"val": batch, "train": batch}``. The rating budget:

    - ``pool_passes=P`` (a number): the pool batches of all ``epochs`` epochs together cover the
      pool P times, ``iterations_per_epoch = ceil(P * N / (B * W * epochs))`` iterations per epoch
      (N pool samples, B ``batch_size``, W ranks; at least 1). Both loaders draw from a
      :class:`~alchemist_pl.sampler.StreamDistributedSampler`: D_val is cycled as often as the
      budget needs, and the pool is covered evenly (no sample twice before all once).
    - ``pool_passes=None``: the paper's epoch, one pass over D_val (an epoch ends when the shorter
      loader is exhausted), whatever the pool's size.

    After fitting, ``pool`` is the dataset to score (:func:`alchemist_pl.scoring.score_dataset`).

    Raises:
        ValueError: ``pool_passes`` not > 0, or ``epochs`` < 1 (at construction).
    """

    def __init__(
        self,
        train_path,
        val_path,
        val_batch_size: int = 32,
        limit_train=None,
        limit_val=None,
        pool_passes: float | None = None,
        epochs: int = 10,
        **kw,
    ):
        super().__init__(**kw)
        if pool_passes is not None and not (isinstance(pool_passes, int | float) and pool_passes > 0):
            raise ValueError(f"rate.pool_passes must be a number > 0 or null, got {pool_passes!r}")
        if pool_passes is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
            raise ValueError(f"rate.max_epochs must be a positive integer with rate.pool_passes set, got {epochs!r}")
        self.train_path, self.val_path = train_path, val_path
        self.val_batch_size = val_batch_size
        self.limit_train, self.limit_val = limit_train, limit_val
        self.pool_passes, self.epochs = pool_passes, epochs
        self.pool = self.val_set = None

    def iterations_per_epoch(self, world_size: int = 1) -> int | None:
        """Bilevel iterations per epoch under the ``pool_passes`` budget (None without one)."""
        if self.pool_passes is None:
            return None
        return max(1, math.ceil(self.pool_passes * len(self.pool) / (self.batch_size * world_size * self.epochs)))

    def setup(self, stage: str | None = None) -> None:
        if self.pool is None:
            self.pool = self._load(self.train_path, self.limit_train, "data.train_path")
            self.val_set = self._load(self.val_path, self.limit_val, "data.val_path")
        self._check_batches()

    def _check_batches(self) -> None:
        """Each rank's share of the pool and of D_val holds one batch (shares of the current process
        group; the whole split outside one).

        Raises:
            ValueError: naming the split, its share per rank and ``rate.batch_size`` / ``rate.val_batch_size``.
        """
        world, _ = process_group()
        check_batches_per_rank(
            len(self.pool), world, self.batch_size, f"the training pool {self.train_path}", "rate.batch_size"
        )
        check_batches_per_rank(
            len(self.val_set), world, self.val_batch_size, f"D_val {self.val_path}", "rate.val_batch_size"
        )

    def train_dataloader(self):
        self._check_batches()  # under DDP the ranks exist now (setup may have run before them)
        iterations = self.iterations_per_epoch(process_group()[0])
        if iterations is None:
            loaders = {
                "val": self._train_loader(self.val_set, self.val_batch_size, offset=0, shuffle=True, drop_last=True),
                "train": self._train_loader(self.pool, self.batch_size, offset=1, shuffle=True, drop_last=True),
            }
        else:
            loaders = {
                "val": self._budget_loader(self.val_set, self.val_batch_size, iterations, offset=0),
                "train": self._budget_loader(self.pool, self.batch_size, iterations, offset=1),
            }
        return CombinedLoader(loaders, mode="min_size")

    def _budget_loader(self, dataset, batch_size: int, iterations: int, offset: int):
        """``iterations`` batches per epoch drawn by a :class:`StreamDistributedSampler` (seed + offset)."""
        sampler = StreamDistributedSampler(dataset, iterations * batch_size, seed=self.seed + offset)
        return self._train_loader(dataset, batch_size, offset=offset, sampler=sampler, drop_last=True)
