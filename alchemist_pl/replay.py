"""A replay buffer of the rater's recent (sample, signal) pairs (:class:`alchemist_pl.bilevel.BilevelRater`).

The bilevel loop computes a signal for each training-pool sample it draws (a proxy forward or two)
and takes one rater step on it; the rater sees each pool sample about once. Rater steps cost a small
fraction of the proxies' forwards and backwards, so the loop can keep the last ``capacity`` samples
with their signals and take extra rater steps on random batches of them: more steps per signal
computed, on signals from the current proxies (experience replay, Lin 1992; Mnih et al. 2015).

The buffer holds the rater's inputs (image [C, H, W], pooled caption [D]) and the signal the rater's
loss used for that sample (detached, in the units of the loss: z-units for ``value_gap``), written
together into one slot so a signal never leaves its sample. It is saved in the rating checkpoint
(:meth:`SignalReplay.state_dict`), so a resumed run replays the same rows; under data parallelism the
checkpoint holds rank 0's buffer, which every rank resumes from.
"""

from __future__ import annotations

import torch


class SignalReplay:
    """Ring buffer of ``capacity`` (image, pooled, signal) rows, oldest overwritten first.

    ``add(images [B, C, H, W], pooled [B, D], signal [B])`` stores a batch (rows beyond ``capacity``
    keep the batch's last ones); ``sample(n, generator) -> (images [n, ...], pooled [n, D], signal [n])``
    draws n distinct rows uniformly (all rows when fewer are stored). Tensors are stored detached, on
    the device they came from.

    ``state_dict()`` / ``load_state_dict(state)`` carry the rows, the fill level and the next slot.

    Raises:
        ValueError: ``capacity`` < 1; ``add`` with inputs of different lengths; ``sample`` from an empty
            buffer; ``load_state_dict`` of a buffer with another capacity.
    """

    def __init__(self, capacity: int):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"replay capacity must be an integer >= 1, got {capacity!r}")
        self.capacity = capacity
        self.images: torch.Tensor | None = None
        self.pooled: torch.Tensor | None = None
        self.signal: torch.Tensor | None = None
        self.size = 0
        self.next = 0  # the slot the next row goes to

    def __len__(self) -> int:
        return self.size

    def add(self, images: torch.Tensor, pooled: torch.Tensor, signal: torch.Tensor) -> None:
        if not len(images) == len(pooled) == len(signal):
            raise ValueError(
                f"replay rows must align: {len(images)} images, {len(pooled)} captions, {len(signal)} signals"
            )
        images, pooled, signal = images[-self.capacity :], pooled[-self.capacity :], signal[-self.capacity :]
        if self.images is None:
            self.images = images.new_zeros((self.capacity, *images.shape[1:]))
            self.pooled = pooled.new_zeros((self.capacity, *pooled.shape[1:]))
            self.signal = signal.new_zeros((self.capacity,), dtype=torch.float32)
        slots = (self.next + torch.arange(len(images))) % self.capacity
        self.images[slots] = images.detach()
        self.pooled[slots] = pooled.detach()
        self.signal[slots] = signal.detach().float()
        self.next = int(slots[-1] + 1) % self.capacity
        self.size = min(self.capacity, self.size + len(images))

    def sample(self, n: int, generator: torch.Generator | None = None):
        if self.size == 0:
            raise ValueError("the replay buffer is empty")
        rows = torch.randperm(self.size, generator=generator)[:n].to(self.images.device)
        return self.images[rows], self.pooled[rows], self.signal[rows]

    def state_dict(self) -> dict:
        rows = {k: getattr(self, k) for k in ("images", "pooled", "signal")}
        return {"capacity": self.capacity, "size": self.size, "next": self.next, **rows}

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity:
            raise ValueError(
                f"the checkpoint's replay buffer holds {state['capacity']} rows, this run's "
                f"bilevel.replay_size is {self.capacity}"
            )
        self.size, self.next = int(state["size"]), int(state["next"])
        self.images, self.pooled, self.signal = state["images"], state["pooled"], state["signal"]
