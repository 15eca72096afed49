"""The training DataModule: the downstream model's training subset and its test split."""

from __future__ import annotations

import logging

import numpy as np
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

from .. import data as data_lib
from ..pruning import choose_subset
from ..runtime import process_group
from ..sampler import SubsetDistributedSampler
from ..scores import check_fingerprint, read_scores, read_subset
from .base import BaseDataModule

log = logging.getLogger(__name__)


class TrainingDataModule(BaseDataModule):
    """Training set (optionally reduced to a subset) and test split for the downstream model.

    The subset comes from, in order of precedence: ``subset_path`` (a ``subset.parquet``),
    ``scores_path`` (a ``scores.parquet``: drawn with ``method`` and ``keep_ratio``), or, with
    ``method="random"``, a uniform draw; ``method="full"`` trains on everything. It is chosen once
    in ``setup`` by :func:`alchemist_pl.pruning.choose_subset` (the same on every rank: same files,
    scores and seed); the train loader's :class:`SubsetDistributedSampler` only shards it.

    Attributes (after ``setup``):
        subset: [k] int64 positions in ``train_set`` of the training subset.
        subset_percentile: [k] rank percentile of each kept sample among the scores (0 = top),
            or None when the subset was not drawn from scores.
        scores: [N] scores (float32 or float64) aligned with ``train_set``, or None without ``scores_path``.
    """

    def __init__(
        self,
        train_path,
        test_path,
        subset_path=None,
        scores_path=None,
        keep_ratio: float = 1.0,
        method: str = "full",
        pruning_params: dict | None = None,
        seed: int = 0,
        limit_train=None,
        limit_test=None,
        test_batch_size: int = 128,
        **kw,
    ):
        super().__init__(seed=seed, **kw)
        self.train_path, self.test_path = train_path, test_path
        self.subset_path, self.scores_path = subset_path, scores_path
        self.keep_ratio, self.method = keep_ratio, method
        self.pruning_params = dict(pruning_params or {})
        self.limit_train, self.limit_test = limit_train, limit_test
        self.test_batch_size = test_batch_size
        self.train_set = self.test_set = None
        self.subset = self.subset_percentile = self.scores = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.train_set = self._load(self.train_path, self.limit_train, "data.train_path")
        self.test_set = self._load(self.test_path, self.limit_test, "data.test_path")
        indices = None
        if self.subset_path is not None:
            ids, _ = read_subset(self.subset_path)
            indices = self.train_set.index_of(ids, str(self.subset_path))
        elif self.scores_path is not None:
            self.scores = self._aligned_scores()
        self.subset, self.subset_percentile = choose_subset(
            len(self.train_set),
            indices=indices,
            scores=self.scores,
            keep_ratio=self.keep_ratio,
            method=self.method,
            seed=self.seed,
            **self.pruning_params,
        )
        k = len(self.subset)
        if k < self.batch_size:
            raise data_lib.DataError(
                f"the subset has {k} samples, fewer than one batch of train.batch_size={self.batch_size}: "
                f"lower train.batch_size or raise keep_ratio"
            )
        log.info("training on %d of %d samples (method=%s)", k, len(self.train_set), self.method)

    def _aligned_scores(self) -> np.ndarray:
        """[N] scores of ``scores_path`` in ``train_set`` order, in the file's precision (float32 or float64).

        Raises:
            ScoresError: the file was made for another dataset.
            DataError: a training sample has no score.
        """
        n = len(self.train_set)
        ids, scores, meta = read_scores(self.scores_path)
        check_fingerprint(
            self.scores_path,
            meta,
            self.train_set.sample_ids,
            f"the training set data.train_path={self.train_path} ({n} samples)",
        )
        aligned = np.full(n, np.nan, dtype=scores.dtype)  # float64 scores keep their precision
        aligned[self.train_set.index_of(ids, str(self.scores_path))] = scores
        if np.isnan(aligned).any():
            missing = [self.train_set.sample_ids[i] for i in np.flatnonzero(np.isnan(aligned))[:3]]
            raise data_lib.DataError(
                f"{self.scores_path}: {int(np.isnan(aligned).sum())} training samples have no score (first: {missing})"
            )
        return aligned

    def null_caption(self):
        """(states [T, D], mask [T]) of the empty caption, for classifier-free guidance."""
        r = self.train_set.text.captions.index("")
        return self.train_set.text.states[r].float(), self.train_set.text.mask[r]

    def sample_prompts(self, num: int) -> dict:
        """Conditioning of the first ``num`` test captions: ``states`` [M, T, D], ``mask`` [M, T],
        ``captions`` (M str); the same under any sharding (for the downstream model's sample grid)."""
        m = min(num, len(self.test_set))
        rows = self.test_set.caption_rows[:m]
        return {
            "states": self.test_set.text.states[rows].float(),
            "mask": self.test_set.text.mask[rows],
            "captions": list(self.test_set.captions[:m]),
        }

    def train_dataloader(self):
        """Batches of this rank's shard of the subset (:class:`SubsetDistributedSampler`: the
        subset reshuffled with ``seed + epoch``, then every W-th position from this rank's).

        The per-rank shard is fixed here, when the process group exists (under ``ddp`` setup can
        run before it).

        Raises:
            DataError: the shard of one rank is shorter than one batch.
        """
        world, rank = process_group()
        sampler = SubsetDistributedSampler(
            self.train_set, indices=self.subset, seed=self.seed, shuffle=True, num_replicas=world, rank=rank
        )
        if len(sampler) < self.batch_size:
            raise data_lib.DataError(
                f"the subset has {len(self.subset)} samples: {len(sampler)} per rank on {world} ranks, "
                f"fewer than one batch of train.batch_size={self.batch_size} (lower train.batch_size or use fewer ranks)"
            )
        return self._train_loader(self.train_set, self.batch_size, sampler=sampler, drop_last=True)

    def test_dataloader(self):
        """The test split in order; under DDP rank r of W gets positions r, r + W, ... with no
        padding, so every test sample is scored exactly once (the module sums over ranks)."""
        world, rank = process_group()
        if world == 1:
            return self._loader(self.test_set, self.test_batch_size, shuffle=False)
        sampler = UnrepeatedDistributedSampler(self.test_set, num_replicas=world, rank=rank, shuffle=False)
        return self._loader(self.test_set, self.test_batch_size, sampler=sampler)
