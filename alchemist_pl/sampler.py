"""A DistributedSampler over a given subset of a dataset.

Lightning keeps a sampler that already is a ``DistributedSampler`` under DDP (it would replace or
wrap any other), so the subset lives in a subclass: the subset is chosen beforehand
(:func:`alchemist_pl.pruning.choose_subset`, the same on every rank), then each epoch it is
shuffled with ``seed + epoch`` and split into disjoint, equally long per-rank shards.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from .runtime import process_group


def replicas(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """``(num_replicas, rank)``, each defaulting to the current process group's (1 and 0 outside one)."""
    world, own_rank = process_group()
    return (world if num_replicas is None else num_replicas), (own_rank if rank is None else rank)


class SubsetDistributedSampler(DistributedSampler):
    """Sample the dataset positions ``indices``, sharded across replicas.

    Args:
        dataset: the full training set (length N).
        indices: [k] dataset positions of the subset, in [0, N) (None: the whole dataset).
        num_replicas, rank: default to the process group, or 1 and 0 outside one.
        shuffle: reshuffle the subset each epoch (``seed + epoch``).
        seed: seed of the shuffles.
        drop_last: drop the tail so shards have equal length instead of padding with repeats.

    Attributes:
        subset: [k] int64 dataset positions of the subset.

    Raises:
        ValueError: an empty subset or indices outside [0, N).
    """

    def __init__(
        self,
        dataset: Dataset,
        indices=None,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        num_replicas, rank = replicas(num_replicas, rank)
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        n = len(dataset)
        indices = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)
        if len(indices) == 0:
            raise ValueError("the subset is empty")
        if indices.min() < 0 or indices.max() >= n:
            raise ValueError(f"subset indices must lie in [0, {n}); got range [{indices.min()}, {indices.max()}]")
        self.subset = indices
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


class StreamDistributedSampler(DistributedSampler):
    """A fixed number of draws per epoch from an endless stream of shuffles of the dataset, sharded
    across replicas.

    The stream is shuffle 0, shuffle 1, ... of the N dataset positions (shuffle j is seeded with
    ``(seed, j)``). Epoch e takes the stream's items ``[e * L, (e + 1) * L)``, ``L = samples_per_rank
    * num_replicas``, and rank r every ``num_replicas``-th of them from the r-th on. Over any run
    every sample is drawn as often as every other one, up to one: a budget shorter than a pass
    still never draws a sample twice before all were drawn once, and one longer than a pass
    cycles through the data in fresh orders. Deterministic for (seed, epoch), so a resumed loader
    replays the same draws; ``state_dict`` / ``load_state_dict`` carry the epoch and the position
    in it through a checkpoint (torchdata's ``StatefulDataLoader`` saves and restores them).

    Args:
        dataset: the dataset (length N ≥ 1).
        samples_per_rank: draws per epoch and rank (the loader's length in samples).
        num_replicas, rank: default to the process group, or 1 and 0 outside one.
        seed: seed of the shuffles.

    Raises:
        ValueError: an empty dataset or ``samples_per_rank`` < 1.
    """

    def __init__(
        self,
        dataset: Dataset,
        samples_per_rank: int,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
    ) -> None:
        num_replicas, rank = replicas(num_replicas, rank)
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        if len(dataset) == 0:
            raise ValueError("the dataset is empty")
        if samples_per_rank < 1:
            raise ValueError(f"samples_per_rank must be >= 1, got {samples_per_rank}")
        self.num_samples = int(samples_per_rank)
        self.total_size = self.num_samples * self.num_replicas
        self.yielded = self._resume_at = 0

    def _shuffle(self, j: int) -> np.ndarray:
        return np.random.default_rng([self.seed, j]).permutation(len(self.dataset))

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        start = self.epoch * self.total_size
        end = start + self.total_size
        parts = []
        for j in range(start // n, (end - 1) // n + 1):
            lo, hi = max(start, j * n) - j * n, min(end, (j + 1) * n) - j * n
            parts.append(self._shuffle(j)[lo:hi])
        mine = np.concatenate(parts)[self.rank :: self.num_replicas].tolist()
        self.yielded, self._resume_at = self._resume_at, 0
        for index in mine[self.yielded :]:
            self.yielded += 1
            yield index

    def state_dict(self) -> dict:
        """The epoch and the draws this rank yielded in it (a resumable loader saves it)."""
        return {"epoch": self.epoch, "yielded": self.yielded}

    def load_state_dict(self, state: dict) -> None:
        """Continue the saved epoch after its ``yielded`` draws at the next ``iter``."""
        self.epoch, self._resume_at = int(state["epoch"]), int(state["yielded"])

    def __len__(self) -> int:
        return self.num_samples
