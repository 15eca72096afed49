"""The (t, ε) draws of a bilevel iteration's training batch (:class:`alchemist_pl.bilevel.BilevelRater`).

θ and θ′ see the same draw (common random numbers), so the signal ``ℓ_i(θ) − ℓ_i(θ′)`` compares the
two models on the same noisy input rather than on two noise draws.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .diffusion import draw_timesteps, min_snr_weights
from .signals import repeat_batch


class Draw(NamedTuple):
    """The training batch's conditioning repeated K times, with one (t, ε) per row: [K·B] rows."""

    item: dict
    t: torch.Tensor
    noise: torch.Tensor
    loss_weights: torch.Tensor


def batch_noise(images: torch.Tensor, shared: bool) -> torch.Tensor:
    """Gaussian noise shaped like ``images`` [B, C, H, W]: independent per sample, or (``shared``) one
    noise image for the whole batch."""
    if shared:
        return torch.randn_like(images[:1]).expand_as(images).contiguous()
    return torch.randn_like(images)


def draw_batch(
    item: dict,
    k: int,
    mode: str,
    band: tuple[int, int],
    device,
    shared_noise: bool = False,
    scheduler=None,
    min_snr_gamma: float | None = None,
) -> Draw:
    """``k`` (t, ε) draws for each of the B samples of ``item`` (rows draw-major: [K·B]).

    Timesteps in [low, high) of ``band`` by :func:`alchemist_pl.diffusion.draw_timesteps` with
    ``mode`` (all K draws first), then the noise by :func:`batch_noise`. The per-row loss weights
    [K·B] are the min-SNR-γ weights of ``scheduler`` when ``min_snr_gamma`` is given, else ones.

    Raises:
        ValueError: an unknown ``mode``; ``min_snr_gamma <= 0``.
    """
    b = len(item["image"])
    t = torch.cat([draw_timesteps(mode, b, *band, device=device) for _ in range(k)])
    noise = torch.cat([batch_noise(item["image"], shared_noise) for _ in range(k)])
    w = torch.ones(len(t), device=device)
    if min_snr_gamma is not None:
        w = min_snr_weights(scheduler, t, min_snr_gamma).to(device)
    return Draw(repeat_batch(item, k), t, noise, w)
