"""A custom proxy that is not a diffusers UNet: a small text-conditioned conv denoiser with the
per-sample loss hook (:class:`alchemist_pl.plugins.ProxyLoss`).

Select it with ``hydra.searchpath=[file://examples/conf] proxy=tiny_conv`` from the repository root
(``examples/conf/proxy/tiny_conv.yaml``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_features(timesteps: torch.Tensor, dim: int, num_train_timesteps: int) -> torch.Tensor:
    """Sinusoidal features of the timesteps: [B] int64 -> [B, dim] float32 (``dim`` even)."""
    t = timesteps.float()[:, None] / num_train_timesteps
    freqs = torch.exp(torch.arange(dim // 2, device=t.device) * (-math.log(1000.0) / (dim // 2)))
    angles = 1000.0 * t * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class TinyDenoiser(nn.Module):
    """ε-prediction conv net conditioned on a caption vector by FiLM (scale and shift per channel).

    Args:
        channels: image channels C.
        width: hidden channels.
        text_dim: size D of the caption vector.
        num_train_timesteps: the noise schedule's length (scales the timestep features).

    ``forward(noisy [B, C, H, W], timesteps [B] int64, caption [B, D]) -> ε̂ [B, C, H, W]``.
    """

    def __init__(self, channels: int = 3, width: int = 32, text_dim: int = 384, num_train_timesteps: int = 1000):
        super().__init__()
        self.width, self.num_train_timesteps = width, num_train_timesteps
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.cond = nn.Sequential(nn.Linear(width + text_dim, 2 * width), nn.SiLU(), nn.Linear(2 * width, 2 * width))
        self.body = nn.Sequential(
            nn.GroupNorm(8, width), nn.SiLU(), nn.Conv2d(width, width, 3, padding=1),
            nn.GroupNorm(8, width), nn.SiLU(), nn.Conv2d(width, width, 3, padding=1),
        )  # fmt: skip
        self.out = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, caption: torch.Tensor) -> torch.Tensor:
        t = timestep_features(timesteps, self.width, self.num_train_timesteps).to(noisy.dtype)
        scale, shift = self.cond(torch.cat([t, caption.to(noisy.dtype)], dim=-1)).chunk(2, dim=-1)
        h = self.inp(noisy) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        return self.out(h + self.body(h))


class TinyConvProxy(TinyDenoiser):
    """The proxy θ: :class:`TinyDenoiser` on the pooled caption, with the per-sample loss hook."""

    def per_sample_loss(self, scheduler, images, states, mask, timesteps, noise, pooled) -> torch.Tensor:
        """ε-MSE of each sample at the caller's timesteps and noise: [B] (Alchemist's ``ℓ_i``).

        images, noise: [B, C, H, W]; pooled: [B, D]; timesteps: [B] int64; states / mask unused.

        Raises:
            ValueError: the scheduler predicts something other than ε.
        """
        if scheduler.config.prediction_type != "epsilon":
            raise ValueError(f"TinyConvProxy predicts epsilon, the scheduler {scheduler.config.prediction_type!r}")
        noisy = scheduler.add_noise(images, noise, timesteps)
        pred = self(noisy, timesteps, pooled)
        dtype = torch.promote_types(pred.dtype, torch.float32)  # float32 under bf16/fp16, float64 in float64
        return F.mse_loss(pred.to(dtype), noise.to(dtype), reduction="none").mean(dim=(1, 2, 3))
