"""Classifier-free-guidance sampling of a text-to-image UNet and image grids of the results.

:func:`generate` is the one generator of evaluation and sample-grid images: fixed prompts,
fixed per-batch seeds, so two runs with the same settings start from the same noise.
"""

from __future__ import annotations

import torch
from PIL import Image

from .pixels import to_uint8


@torch.no_grad()
def sample_images(
    unet,
    sampling_scheduler,
    states: torch.Tensor,
    mask: torch.Tensor | None,
    null_states: torch.Tensor,
    null_mask: torch.Tensor | None,
    image_shape: tuple[int, int, int],
    num_inference_steps: int = 25,
    guidance_scale: float = 3.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Generate images with classifier-free guidance.

    Args:
        unet: the trained ``UNet2DConditionModel``.
        sampling_scheduler: a diffusers scheduler for inference (e.g. ``DDIMScheduler``).
        states, mask: [B, T, D] / [B, T] caption conditioning.
        null_states, null_mask: [T, D] / [T] embedding of the empty caption.
        image_shape: (C, H, W).
        generator: CPU generator for the initial noise (fixed seeds give comparable grids).

    Returns:
        [B, C, H, W] images in [-1, 1].
    """
    b = states.shape[0]
    device = states.device
    x = torch.randn((b, *image_shape), generator=generator).to(device)
    sampling_scheduler.set_timesteps(num_inference_steps)
    x = x * sampling_scheduler.init_noise_sigma
    cond = torch.cat([null_states.expand(b, -1, -1), states]).float()
    cmask = None if mask is None else torch.cat([null_mask.expand(b, -1), mask])
    for t in sampling_scheduler.timesteps:
        inp = sampling_scheduler.scale_model_input(torch.cat([x, x]), t)
        out = unet(inp, t, encoder_hidden_states=cond, encoder_attention_mask=cmask).sample
        uncond, text = out.chunk(2)
        guided = uncond + guidance_scale * (text - uncond)
        x = sampling_scheduler.step(guided, t, x).prev_sample
    return x.clamp(-1, 1)


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
) -> torch.Tensor:
    """Images for M prompts, ``batch_size`` at a time, on the UNet's device.

    The batch starting at prompt ``s`` draws its initial noise from a CPU generator seeded with
    ``seed * 1_000_003 + s``, so every prompt gets the same noise in every run with these settings.

    Args:
        unet: ``UNet2DConditionModel`` (``config.in_channels``, ``config.sample_size`` give the shape).
        states, mask: [M, T, D] / [M, T] caption conditioning (any device).
        null_states, null_mask: [T, D] / [T] the empty caption, on the UNet's device.

    Returns:
        [M, C, H, W] float32 images in [-1, 1], on the CPU.
    """
    c = unet.config
    device = null_states.device
    out = []
    for start in range(0, len(states), batch_size):
        sl = slice(start, start + batch_size)
        g = torch.Generator().manual_seed(seed * 1_000_003 + start)
        images = sample_images(
            unet,
            sampling_scheduler,
            states[sl].to(device),
            None if mask is None else mask[sl].to(device),
            null_states,
            null_mask,
            (c.in_channels, c.sample_size, c.sample_size),
            num_inference_steps,
            guidance_scale,
            generator=g,
        )
        out.append(images.float().cpu())
    return torch.cat(out)


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
