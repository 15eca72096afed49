"""Denoising loss and sampling around diffusers' UNet2DConditionModel and schedulers.

The proxy model (rating) and the downstream model (training) are both a pixel-space
``UNet2DConditionModel`` cross-attending to caption token states; the noise schedule is diffusers'
``DDPMScheduler``. The per-sample loss is the denoising MSE (``reduction="none"``, mean over C, H,
W), the ``L`` of the paper's Eq. 2-3.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def per_sample_loss(
    unet,
    scheduler,
    images: torch.Tensor,
    states: torch.Tensor,
    mask: torch.Tensor | None,
    timesteps: torch.Tensor,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Denoising loss of each sample.

    Args:
        unet: diffusers ``UNet2DConditionModel``.
        scheduler: diffusers ``DDPMScheduler`` (``add_noise``, ``get_velocity``, ``config.prediction_type``).
        images: [B, C, H, W] clean images in [-1, 1].
        states: [B, T, D] caption token states; mask: [B, T] bool (True = real token) or None.
        timesteps: [B] int64 in [0, num_train_timesteps).
        noise: [B, C, H, W] Gaussian noise (drawn if None).

    Returns:
        [B] MSE between the UNet's prediction and its target (epsilon, v or sample): float32, or
        float64 when the model runs in float64 (exact meta-gradient tests).
    """
    if noise is None:
        noise = torch.randn_like(images)
    noisy = scheduler.add_noise(images, noise, timesteps)
    pred = unet(noisy, timesteps, encoder_hidden_states=states.to(images.dtype),
                encoder_attention_mask=mask).sample
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = scheduler.get_velocity(images, noise, timesteps)
    elif kind == "sample":
        target = images
    else:
        raise ValueError(f"unsupported prediction_type {kind!r}")
    dtype = torch.promote_types(pred.dtype, torch.float32)
    return F.mse_loss(pred.to(dtype), target.to(dtype), reduction="none").mean(dim=(1, 2, 3))


def shared_timesteps(batch_size: int, low: int, high: int, device, generator=None) -> torch.Tensor:
    """One timestep drawn uniformly from [low, high), repeated for the whole batch: [B] int64.

    Comparing samples inside a batch at the same noise level keeps timestep noise out of the
    rater's within-batch softmax (method.md: the per-sample diffusion loss varies far more with t
    than with sample quality).
    """
    t = torch.randint(low, high, (1,), device=device, generator=generator)
    return t.expand(batch_size).contiguous()


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


def image_grid(images: torch.Tensor, cols: int = 8):
    """[B, C, H, W] in [-1, 1] -> PIL image grid (uint8 RGB)."""
    from PIL import Image

    imgs = ((images.float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu()
    b, c, h, w = imgs.shape
    rows = (b + cols - 1) // cols
    grid = torch.full((c, rows * h, cols * w), 255, dtype=torch.uint8)
    for i in range(b):
        r, q = divmod(i, cols)
        grid[:, r * h:(r + 1) * h, q * w:(q + 1) * w] = imgs[i]
    return Image.fromarray(grid.permute(1, 2, 0).numpy())
