"""Per-sample signals of the bilevel loop and the tools that make them comparable across timesteps.

- :func:`drop_captions`: caption dropout (the proxy's conditioning replaced by the empty caption's
  for a random share of a batch, as the authors' code does in both proxy terms);
- :func:`roll_captions`: every sample of a batch paired with another sample's caption (the
  mismatched-caption contrast ``ℓ(x_i | c_{i+1}) − ℓ(x_i | c_i)``, the diffusion-classifier idea of
  Li et al. 2023, "Your Diffusion Model is Secretly a Zero-Shot Classifier");
- :class:`BucketMoments`: running mean and standard deviation of a signal per timestep bucket, so
  signals drawn at different noise levels share one scale (z-units);
- :func:`embed_null_caption`: the empty caption's embedding from the packaged text encoder;
- :func:`timestep_correlation`: whether final scores merely record the timesteps samples saw.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from .text import embed_captions

CAPTION_KEYS = ("states", "mask", "pooled")


def embed_null_caption(cache_dir=None, max_tokens: int = 16) -> dict[str, torch.Tensor]:
    """The empty caption ``""``: ``{"states": [T, D] float32, "mask": [T] bool, "pooled": [D] float32}``.

    Read from the caption-embedding cache of :func:`alchemist_pl.text.embed_captions` (every loaded
    split adds ``""`` to it), encoded with the packaged MiniLM if missing. ``max_tokens`` must be the
    data's ``max_tokens``.
    """
    text = embed_captions([""], cache_dir, max_tokens)
    return {"states": text.states[0].float(), "mask": text.mask[0], "pooled": text.pooled[0].float()}


def drop_captions(
    item: dict, null: dict, p: float, generator: torch.Generator | None = None
) -> tuple[dict, torch.Tensor]:
    """Replace the caption of each sample by the empty caption with probability ``p``.

    Args:
        item: batch dict with ``states`` [B, T, D], ``mask`` [B, T], ``pooled`` [B, D] (and others,
            passed through unchanged).
        null: the empty caption, as :func:`embed_null_caption` returns it.
        p: dropout probability in [0, 1).

    Returns:
        ``(new item, dropped [B] bool)``; the input is not modified.
    """
    b = item["states"].shape[0]
    dropped = torch.rand(b, generator=generator, device="cpu").to(item["states"].device) < p
    if not bool(dropped.any()):
        return item, dropped
    out = dict(item)
    for k in CAPTION_KEYS:
        value = null[k].to(device=item[k].device, dtype=item[k].dtype)
        shape = (b,) + (1,) * value.dim()
        out[k] = torch.where(dropped.view(shape), value.unsqueeze(0), item[k])
    return out, dropped


def roll_captions(item: dict, shift: int = 1) -> dict:
    """The batch with sample i's caption (states, mask, pooled) taken from sample ``i + shift`` (mod B)."""
    out = dict(item)
    for k in CAPTION_KEYS:
        out[k] = item[k].roll(shift, dims=0)
    return out


def repeat_batch(item: dict, k: int) -> dict:
    """Each tensor of ``item`` repeated ``k`` times along the batch: [B, ...] -> [k·B, ...] (draw-major)."""
    if k == 1:
        return item
    return {key: v.repeat(k, *([1] * (v.dim() - 1))) if torch.is_tensor(v) else v for key, v in item.items()}


class BucketMoments(nn.Module):
    """Running mean and variance of a scalar signal in ``num_buckets`` timestep buckets of [low, high).

    ``normalise(x, t)`` returns ``(x − m_t) / σ_t`` (``centre=False``: ``x / σ_t``) with the
    statistics from *before* this batch; a bucket's first batch initialises them. ``update(x, t)``
    then moves them by an exponential average with ``momentum``. The statistics are buffers, saved in
    checkpoints. Shapes: x [N] float, t [N] int64 -> [N] float32.
    """

    def __init__(self, low: int, high: int, num_buckets: int = 10, momentum: float = 0.9):
        super().__init__()
        self.low, self.high, self.num_buckets, self.momentum = low, high, num_buckets, momentum
        self.register_buffer("mean", torch.zeros(num_buckets))
        self.register_buffer("sq", torch.ones(num_buckets))
        self.register_buffer("seen", torch.zeros(num_buckets, dtype=torch.bool))

    def bucket(self, t: torch.Tensor) -> torch.Tensor:
        return ((t - self.low) * self.num_buckets // (self.high - self.low)).clamp(0, self.num_buckets - 1)

    def _batch_moments(self, x: torch.Tensor, k: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Mean and mean square of x per bucket present, skipping buckets where x is constant (such
        as ℓ(θ) − ℓ(θ′) before the first step, when θ′ = θ): they say nothing about the scale."""
        out = {}
        for j in k.unique().tolist():
            xj = x[k == j]
            if float(xj.max() - xj.min()) > 0:
                out[j] = (xj.mean(), xj.pow(2).mean())
        return out

    def normalise(self, x: torch.Tensor, t: torch.Tensor, centre: bool = True) -> torch.Tensor:
        x = x.detach().float()
        k = self.bucket(t)
        for j, (m, sq) in self._batch_moments(x, k).items():
            if not bool(self.seen[j]):
                self.mean[j], self.sq[j], self.seen[j] = m, sq, True
        std = (self.sq[k] - self.mean[k].pow(2)).clamp(min=0).sqrt()
        z = ((x - self.mean[k]) if centre else x) / std.clamp(min=1e-6 * self.sq[k].sqrt().clamp(min=1e-12))
        return torch.where(self.seen[k], z, torch.zeros_like(z))  # unseen bucket: no scale yet, no signal

    def update(self, x: torch.Tensor, t: torch.Tensor) -> None:
        x = x.detach().float()
        m = self.momentum
        for j, (mean, sq) in self._batch_moments(x, self.bucket(t)).items():
            self.mean[j] = m * self.mean[j] + (1 - m) * mean
            self.sq[j] = m * self.sq[j] + (1 - m) * sq


def timestep_correlation(scores: np.ndarray, index: np.ndarray, timesteps: np.ndarray) -> dict:
    """Spearman ρ between ``scores[j]`` and the mean timestep sample j saw, over samples seen.

    Args:
        scores: [N] final scores of the pool.
        index: [M] pool positions of the samples in the training batches (with repeats).
        timesteps: [M] the timestep each of those saw.

    Returns:
        ``{"score_timestep_spearman": ρ, "samples_seen": n}``; ρ is NaN below 3 samples or when
        the scores or the mean timesteps are constant.
    """
    scores = np.asarray(scores, dtype=np.float64)
    index, timesteps = np.asarray(index, dtype=np.int64), np.asarray(timesteps, dtype=np.float64)
    count = np.bincount(index, minlength=len(scores))
    total = np.bincount(index, weights=timesteps, minlength=len(scores))
    seen = count > 0
    n = int(seen.sum())
    mean_t = total[seen] / count[seen]
    if n < 3 or np.ptp(mean_t) == 0 or np.ptp(scores[seen]) == 0:
        return {"score_timestep_spearman": float("nan"), "samples_seen": n}
    return {"score_timestep_spearman": float(spearmanr(scores[seen], mean_t).statistic), "samples_seen": n}
