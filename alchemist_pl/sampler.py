"""A DistributedSampler that trains on a subset: given by indices, or drawn from scores itself.

Lightning keeps a sampler that already is a ``DistributedSampler`` under DDP (it would replace or
wrap any other), so the subset logic lives in a subclass: the subset is fixed once (same on every
rank: same scores, same seed), then each epoch it is shuffled with ``seed + epoch`` and split
into disjoint, equally long per-rank shards.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

from . import pruning


class SubsetDistributedSampler(DistributedSampler):
    """Sample a subset of ``dataset``, sharded across replicas.

    Args:
        dataset: the full training set (length N).
        indices: [k] dataset positions of the subset; or None to draw it from ``scores``.
        scores: [N] scores aligned with the dataset (used when ``indices`` is None).
        keep_ratio, method, pruning_params: passed to :func:`alchemist_pl.pruning.select`.
        num_replicas, rank: default to the process group, or 1 and 0 outside one.
        shuffle: reshuffle the subset each epoch (``seed + epoch``).
        seed: seed of the subset draw and of the shuffles.
        drop_last: drop the tail so shards have equal length instead of padding with repeats.

    With neither ``indices`` nor ``scores`` the subset is the whole dataset (``method="full"``) or a
    uniform draw (``method="random"``).

    Attributes:
        subset: [k] int64 dataset positions of the subset.
        subset_percentile: [k] float64 rank percentile of each kept sample among all N scores
            (0 = highest), from the same sort as the draw; None when the subset was not drawn
            from ``scores``.
    """

    def __init__(
        self,
        dataset: Dataset,
        indices=None,
        scores=None,
        keep_ratio: float = 1.0,
        method: str = "full",
        pruning_params: dict | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        n = len(dataset)
        method = pruning.check_method(method)
        scores_given = scores is not None
        if indices is None and scores is None and method == "random":
            scores = np.zeros(n, dtype=np.float32)  # random ignores the scores
        if indices is None and scores is None and method != "full":
            raise ValueError(f"method {method!r} needs scores (or a precomputed subset)")
        subset_percentile = None
        if indices is None and scores is not None:
            scores = np.asarray(scores)
            if len(scores) != n:
                raise ValueError(f"got {len(scores)} scores for a dataset of {n} samples")
            # one sort, shared by the draw and the percentiles (none for the placeholder scores of random)
            order = pruning.descending_order(scores) if scores_given else None
            indices = pruning.select(scores, keep_ratio, method, seed, order=order, **(pruning_params or {}))
            if order is not None:
                subset_percentile = pruning.percentiles(scores, order=order)[indices]
            del order
        if indices is None:
            indices = np.arange(n)
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) == 0:
            raise ValueError("the subset is empty")
        if indices.min() < 0 or indices.max() >= n:
            raise ValueError(f"subset indices must lie in [0, {n}); got range [{indices.min()}, {indices.max()}]")
        if len(np.unique(indices)) != len(indices):
            raise ValueError("subset indices contain duplicates")
        self.subset = indices
        self.subset_percentile = subset_percentile
        k = len(indices)
        if self.drop_last and k % self.num_replicas:
            self.num_samples = k // self.num_replicas
        else:
            self.num_samples = math.ceil(k / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def __iter__(self) -> Iterator[int]:
        order = torch.arange(len(self.subset))
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(self.subset), generator=g)
        positions = order.tolist()
        if self.total_size > len(positions):  # pad with repeats so every rank gets num_samples
            pad = self.total_size - len(positions)
            positions += (positions * math.ceil(pad / len(positions)))[:pad]
        else:
            positions = positions[: self.total_size]
        mine = positions[self.rank : self.total_size : self.num_replicas]
        return iter(self.subset[mine].tolist())

    def __len__(self) -> int:
        return self.num_samples
