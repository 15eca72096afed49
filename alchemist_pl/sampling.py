"""Classifier-free-guidance sampling of a text-to-image UNet and image grids of the results.

:func:`generate` is the one generator of evaluation and sample-grid images: fixed prompts,
fixed per-batch seeds, so two runs with the same settings start from the same noise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image

from .pixels import to_uint8


@torch.no_grad()
def generate(
    unet,
    sampling_scheduler,
    states: torch.Tensor,
    mask: torch.Tensor | None,
    null_states: torch.Tensor,
    null_mask: torch.Tensor | None,
    num_inference_steps: int,
    guidance_scale: float,
    seed: int,
    batch_size: int = 256,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Images for M prompts with classifier-free guidance, ``batch_size`` at a time, on the UNet's device.

    The batch starting at prompt ``s`` draws its initial noise from a CPU generator seeded with
    ``seed * 1_000_003 + s``, so every prompt gets the same noise in every run with these settings.

    Args:
        unet: ``UNet2DConditionModel`` (``config.in_channels``, ``config.sample_size`` give the shape).
        sampling_scheduler: a diffusers scheduler for inference (e.g. ``DDIMScheduler``).
        states, mask: [M, T, D] / [M, T] caption conditioning (any device).
        null_states, null_mask: [T, D] / [T] the empty caption, on the UNet's device.
        num_inference_steps, guidance_scale: the scheduler's steps and the CFG scale.
        decode: for a UNet over VAE latents, latents [B, C, h, w] -> pixels [B, 3, H, W] in [-1, 1]
            (:meth:`alchemist_pl.latents.LatentCodec.decode`); the latents are decoded unclamped.
            None: the UNet works on pixels.

    Returns:
        [M, 3, H, W] float32 images in [-1, 1] (pixels, decoded when ``decode`` is given), on the CPU.
    """
    c = unet.config
    device = null_states.device
    out = []
    for start in range(0, len(states), batch_size):
        sl = slice(start, start + batch_size)
        g = torch.Generator().manual_seed(seed * 1_000_003 + start)
        noise = torch.randn((len(states[sl]), c.in_channels, c.sample_size, c.sample_size), generator=g).to(device)
        cond = (states[sl].to(device), None if mask is None else mask[sl].to(device))
        x = _denoise(
            unet, sampling_scheduler, noise, cond, (null_states, null_mask), num_inference_steps, guidance_scale
        )
        images = x.clamp(-1, 1) if decode is None else decode(x).clamp(-1, 1)
        out.append(images.float().cpu())
    return torch.cat(out)


def pooled_caption(unet, states: torch.Tensor, mask: torch.Tensor | None) -> dict:
    """``{"class_labels": pooled}`` for a UNet with a projection class embedding
    (``class_embed_type="projection"``), else ``{}``.

    ``pooled`` [B, D] is the caption's sentence embedding as MiniLM pools it: the mean of the token
    states over real tokens (``mask`` True; all tokens when None), L2-normalised.
    """
    if getattr(unet.config, "class_embed_type", None) != "projection":
        return {}
    m = torch.ones(states.shape[:2], dtype=states.dtype, device=states.device) if mask is None else mask.to(states)
    mean = (states * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
    return {"class_labels": torch.nn.functional.normalize(mean, dim=-1)}


def _denoise(unet, scheduler, x, cond, null, num_inference_steps: int, guidance_scale: float) -> torch.Tensor:
    """The scheduler's sampling loop from noise ``x`` [B, C, H, W] with classifier-free guidance:
    ``uncond + guidance_scale * (cond - uncond)`` at every step; returns the last sample, unclamped."""
    (states, mask), (null_states, null_mask) = cond, null
    b = x.shape[0]
    scheduler.set_timesteps(num_inference_steps)
    x = x * scheduler.init_noise_sigma
    both = torch.cat([null_states.expand(b, -1, -1), states]).float()
    both_mask = None if mask is None else torch.cat([null_mask.expand(b, -1), mask])
    extra = pooled_caption(unet, both, both_mask)
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(torch.cat([x, x]), t)
        out = unet(inp, t, encoder_hidden_states=both, encoder_attention_mask=both_mask, **extra).sample
        uncond, text = out.chunk(2)
        x = scheduler.step(uncond + guidance_scale * (text - uncond), t, x).prev_sample
    return x


def image_grid(images: torch.Tensor, cols: int = 8) -> Image.Image:
    """[B, C, H, W] in [-1, 1] -> PIL image grid (uint8 RGB), ``cols`` images a row, white padding."""
    imgs = to_uint8(images).cpu()
    b, c, h, w = imgs.shape
    rows = (b + cols - 1) // cols
    grid = torch.full((c, rows * h, cols * w), 255, dtype=torch.uint8)
    for i in range(b):
        r, q = divmod(i, cols)
        grid[:, r * h : (r + 1) * h, q * w : (q + 1) * w] = imgs[i]
    return Image.fromarray(grid.permute(1, 2, 0).numpy())
