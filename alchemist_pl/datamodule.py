"""LightningDataModules for rating (pool + D_val) and for training on a subset (train + test).

Resuming mid-epoch reproduces an uninterrupted run exactly: the train loaders are torchdata
``StatefulDataLoader``s with seeded generators (Lightning saves their position in the epoch into
the checkpoint and restores it), and the datamodule's ``state_dict`` carries the process's RNG
states (torch, NumPy, Python), restored with the checkpoint, so the noise and timesteps drawn by
the training step after the resume are those the uninterrupted run drew.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
from pathlib import Path

import numpy as np
import torch
from lightning import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from . import data as data_lib
from .preflight import check_batches_per_rank
from .pruning import choose_subset
from .runtime import process_group
from .sampler import StreamDistributedSampler, SubsetDistributedSampler
from .scores import check_fingerprint, read_scores, read_subset

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4)
def _cached_split(path: str, stamp: float, resolution: int, cache_dir, limit, max_tokens):
    return data_lib.load_split(path, resolution, cache_dir, limit, max_tokens)


def load_split(path, resolution: int, cache_dir=None, limit=None, max_tokens: int = 16):
    """:func:`alchemist_pl.data.load_split`, memoised within the process (the pipeline reads each split once)."""
    p = Path(path).resolve()
    if not p.exists():
        raise data_lib.DataError(f"data path {path} does not exist")
    stamp = max([p.stat().st_mtime] + [q.stat().st_mtime for q in p.glob("*")]) if p.is_dir() else p.stat().st_mtime
    return _cached_split(str(p), stamp, resolution, None if cache_dir is None else str(cache_dir), limit, max_tokens)


class _Base(LightningDataModule):
    def __init__(
        self,
        resolution: int = 32,
        batch_size: int = 32,
        num_workers: int = 0,
        cache_dir: str | os.PathLike | None = None,
        max_tokens: int = 16,
        seed: int = 0,
    ):
        super().__init__()
        self.resolution = resolution
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.cache_dir = cache_dir
        self.max_tokens = max_tokens
        self.seed = seed

    def _load(self, path, limit, key: str):
        """Load one split; ``key`` names its config entry (``data.train_path``) in errors."""
        if not Path(path).exists():
            raise data_lib.DataError(
                f"{key}={path} does not exist (expected a folder of *.tar webdataset "
                f"shards, one shard, or an image folder with metadata.jsonl)"
            )
        return load_split(path, self.resolution, self.cache_dir, limit, self.max_tokens)

    def _loader(self, dataset, batch_size, **kw):
        return DataLoader(
            dataset, batch_size=batch_size, num_workers=self.num_workers, persistent_workers=self.num_workers > 0, **kw
        )

    def _train_loader(self, dataset, batch_size, offset: int = 0, **kw):
        """A resumable loader: its shuffle order and worker seeds come from its own generator.

        ``offset`` gives each loader of the module its own stream (``seed + offset``). Under DDP
        Lightning swaps the shuffling sampler for a ``DistributedSampler`` seeded with the global
        seed and the epoch; the loader keeps its position either way.
        """
        g = torch.Generator()
        g.manual_seed(self.seed + offset)
        return StatefulDataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=g,
            **kw,
        )

    def state_dict(self) -> dict:
        """Saved into every checkpoint: the RNG states of this process at the moment of saving.

        Only tensors and plain Python values, so Lightning's ``weights_only`` checkpoint load
        accepts them.
        """
        name, keys, pos, has_gauss, cached = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "python": random.getstate(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return {"rng_states": state}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the RNG states saved with the checkpoint (a resumed run draws the same noise)."""
        state = state_dict.get("rng_states")
        if not state:
            return
        torch.set_rng_state(state["torch"])
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class RatingDataModule(_Base):
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


class TrainingDataModule(_Base):
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
