"""Denoising loss, timestep draws and loss weights around diffusers' UNet2DConditionModel and schedulers.

The shipped proxy model (rating) and downstream model (training) are both a pixel-space
``UNet2DConditionModel`` cross-attending to caption token states; the noise schedule is diffusers'
``DDPMScheduler``. The per-sample loss is the denoising MSE (``reduction="none"``, mean over C, H,
W), the ``L`` of the paper's Eq. 2-3: :func:`per_sample_loss` is the per-sample loss hook of every
proxy with ``UNet2DConditionModel``'s call signature (:func:`alchemist_pl.plugins.proxy_loss`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import PixArtTransformer2DModel
from diffusers.training_utils import compute_snr


def per_sample_loss(
    unet,
    scheduler,
    images: torch.Tensor,
    states: torch.Tensor,
    mask: torch.Tensor | None,
    timesteps: torch.Tensor,
    noise: torch.Tensor | None = None,
    class_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Denoising loss of each sample.

    Args:
        unet: diffusers ``UNet2DConditionModel``.
        scheduler: diffusers ``DDPMScheduler`` (``add_noise``, ``get_velocity``, ``config.prediction_type``).
        images: [B, C, H, W] clean images in [-1, 1].
        states: [B, T, D] caption token states; mask: [B, T] bool (True = real token) or None.
        timesteps: [B] int64 in [0, num_train_timesteps).
        noise: [B, C, H, W] Gaussian noise (drawn if None).
        class_labels: [B, D] pooled caption embeddings for a UNet with a projection class
            embedding (``class_embed_type="projection"``: the caption is added to the time
            embedding); None for a UNet without one.

    Returns:
        [B] MSE between the UNet's prediction and its target (epsilon, v or sample): float32, or
        float64 when the model runs in float64 (exact meta-gradient tests).
    """
    if noise is None:
        noise = torch.randn_like(images)
    noisy = scheduler.add_noise(images, noise, timesteps)
    extra = {} if class_labels is None else {"class_labels": class_labels.to(images.dtype)}
    pred = unet(
        noisy, timesteps, encoder_hidden_states=states.to(images.dtype), encoder_attention_mask=mask, **extra
    ).sample
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
    rater's within-batch softmax (the per-sample diffusion loss varies far more with t than with
    sample quality).
    """
    t = torch.randint(low, high, (1,), device=device, generator=generator)
    return t.expand(batch_size).contiguous()


class PixArtProxy(torch.nn.Module):
    """A diffusers ``PixArtTransformer2DModel`` (DiT with cross-attention and adaLN-single) called like
    a ``UNet2DConditionModel``: ``forward(sample, timestep, encoder_hidden_states, encoder_attention_mask)``.

    Keyword arguments go to ``PixArtTransformer2DModel`` (``caption_channels`` projects the caption
    states; ``use_additional_conditions`` stays off, there is no resolution/aspect conditioning).
    Shapes: sample [B, C, H, W], timestep [B] or scalar int64, encoder_hidden_states [B, T, D],
    encoder_attention_mask [B, T] bool -> output with ``.sample`` [B, out_channels, H, W].
    """

    def __init__(self, **kwargs):
        super().__init__()
        self.transformer = PixArtTransformer2DModel(use_additional_conditions=False, **kwargs)

    def forward(self, sample, timestep, encoder_hidden_states=None, encoder_attention_mask=None):
        timestep = torch.as_tensor(timestep, device=sample.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(sample.shape[0])
        if encoder_attention_mask is not None:
            encoder_attention_mask = encoder_attention_mask.to(sample.dtype)
        return self.transformer(
            sample,
            encoder_hidden_states=encoder_hidden_states,
            timestep=timestep,
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            encoder_attention_mask=encoder_attention_mask,
        )


def stratified_timesteps(batch_size: int, low: int, high: int, device, generator=None) -> torch.Tensor:
    """One timestep per stratum: [low, high) cut into ``batch_size`` equal strata, one uniform draw in
    each, in random order over the batch: [B] int64.

    Every batch covers the whole range evenly (less variance of the batch's mean loss than
    independent draws); a sample's timestep is still random, so compare samples across batches,
    not within one (see ``bilevel.rater_timestep_sampling``).
    """
    width = (high - low) / batch_size
    u = torch.rand(batch_size, generator=generator, device=device)
    order = torch.randperm(batch_size, generator=generator, device=device)
    t = low + ((order + u) * width).long()
    return t.clamp(low, high - 1)


def draw_timesteps(mode: str, batch_size: int, low: int, high: int, device, generator=None) -> torch.Tensor:
    """The training batch's timesteps [B] int64 in [low, high): ``mode`` = "shared" (one t for the
    batch), "stratified" (one per stratum) or "uniform" (independent draws).

    Raises:
        ValueError: unknown ``mode``.
    """
    if mode == "shared":
        return shared_timesteps(batch_size, low, high, device, generator)
    if mode == "stratified":
        return stratified_timesteps(batch_size, low, high, device, generator)
    if mode == "uniform":
        return torch.randint(low, high, (batch_size,), device=device, generator=generator)
    raise ValueError(f"timestep sampling must be 'shared', 'stratified' or 'uniform', got {mode!r}")


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weights (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
    Weighting Strategy", Eq. 7 for ε- and v-prediction): [B] timesteps -> [B] float32 weights.

    ``min(SNR(t), γ) / SNR(t)`` for epsilon prediction, ``min(SNR(t), γ) / (SNR(t) + 1)`` for
    v-prediction; SNR from diffusers' ``compute_snr``. With ε-prediction this down-weights the
    high-SNR (low-noise) timesteps, where SNR > γ.

    Raises:
        ValueError: ``gamma <= 0`` or a prediction type other than epsilon / v_prediction.
    """
    if gamma <= 0:
        raise ValueError(f"min_snr_gamma must be > 0, got {gamma}")
    snr = compute_snr(scheduler, timesteps).float()
    clipped = torch.clamp(snr, max=gamma)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return clipped / snr
    if kind == "v_prediction":
        return clipped / (snr + 1)
    raise ValueError(f"min-SNR weighting supports epsilon and v_prediction, not {kind!r}")
