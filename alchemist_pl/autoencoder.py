"""The small ``AutoencoderKL`` of the offline latent space, trained from scratch on clean images.

No pretrained image autoencoder ships with this tool and none is downloaded; for 32 px images a
two-level diffusers ``AutoencoderKL`` (widths 32 and 64, one downsampling: 32 px -> 16 x 16 x 4)
trained for a few hundred steps on CPU. The loss is the pixel MSE of the reconstruction of the
posterior mean (the latent the other modules use) plus ``kl_weight`` times the KL divergence to
N(0, I) per latent element, which keeps the latents near the origin (the KL-regularised
autoencoder of Rombach et al. 2022, Sec. 3, decoded deterministically and without its perceptual
and adversarial terms, whose networks would need pretrained weights).
"""

from __future__ import annotations

import logging
import math
import time

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from .pixels import to_model_range

log = logging.getLogger(__name__)


def small_autoencoder(
    resolution: int = 32, block_out_channels=(32, 64), latent_channels: int = 4, layers_per_block: int = 1
) -> AutoencoderKL:
    """A diffusers ``AutoencoderKL`` that downsamples by ``2 ** (len(block_out_channels) - 1)``.

    Shapes: images [B, 3, R, R] in [-1, 1] -> latents [B, latent_channels, R/f, R/f] (f = 2 for two levels).
    """
    n = len(block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        latent_channels=latent_channels,
        norm_num_groups=min(32, block_out_channels[0]),
        sample_size=resolution,
        mid_block_add_attention=False,
        scaling_factor=1.0,
    )


@torch.no_grad()
def reconstruction_error(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 512) -> dict:
    """Error of decoding the posterior mean of uint8 images [N, 3, H, W], in the [-1, 1] range:
    ``mse``, ``mae`` and ``psnr_db`` (peak-to-peak 2: ``10 log10(4 / mse)``), over N samples."""
    vae.eval()
    se = ae = 0.0
    for start in range(0, len(images), batch_size):
        x = to_model_range(images[start : start + batch_size])
        y = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        se += float(((y - x) ** 2).sum())
        ae += float((y - x).abs().sum())
    n = images.numel()
    mse = se / n
    return {"mse": mse, "mae": ae / n, "psnr_db": 10 * math.log10(4 / mse), "samples": len(images)}


@torch.no_grad()
def latent_scale(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 512) -> tuple[float, float]:
    """(mean, std) of the posterior means of uint8 images [N, 3, H, W] over all latent elements;
    the scaling factor is ``1 / std`` (Stable Diffusion's estimate, Rombach et al. 2022, App. G)."""
    vae.eval()
    means = torch.cat(
        [
            vae.encode(to_model_range(images[s : s + batch_size])).latent_dist.mean
            for s in range(0, len(images), batch_size)
        ]
    )
    return float(means.mean()), float(means.std())


def _batches(images: torch.Tensor, batch_size: int, steps: int, g: torch.Generator):
    """``steps`` batches in [-1, 1] drawn without replacement (reshuffled each pass), half flipped."""
    order, pos = torch.randperm(len(images), generator=g), 0
    for _ in range(steps):
        if pos + batch_size > len(order):
            order, pos = torch.randperm(len(images), generator=g), 0
        x = to_model_range(images[order[pos : pos + batch_size]])
        pos += batch_size
        yield x.flip(3) if torch.rand((), generator=g) < 0.5 else x


def _vae_loss(vae: AutoencoderKL, x: torch.Tensor, kl_weight: float) -> torch.Tensor:
    """MSE of decoding the posterior mean + ``kl_weight`` x the KL per latent element."""
    posterior = vae.encode(x).latent_dist
    recon = vae.decode(posterior.mean).sample
    kl = posterior.kl().mean() / posterior.mean[0].numel()
    return F.mse_loss(recon, x) + kl_weight * kl


def train_autoencoder(
    images: torch.Tensor,
    block_out_channels=(32, 64),
    latent_channels: int = 4,
    layers_per_block: int = 1,
    steps: int = 400,
    batch_size: int = 64,
    lr: float = 5e-3,
    kl_weight: float = 1e-4,
    seed: int = 0,
) -> tuple[AutoencoderKL, dict]:
    """Train :func:`small_autoencoder` on uint8 images [N, 3, R, R] and set its ``scaling_factor``.

    AdamW with a one-cycle schedule over ``steps`` steps of ``batch_size`` images drawn without
    replacement (reshuffled each pass), random horizontal flips.

    Returns:
        (autoencoder in eval mode, info): ``reconstruction_train`` (:func:`reconstruction_error` on
        up to 2,048 training images), ``latent_mean`` / ``latent_std`` (before scaling),
        ``scaling_factor`` (1 / latent_std), ``train_time_s``, ``steps``, ``final_loss``.
    """
    started = time.time()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    vae = small_autoencoder(images.shape[-1], block_out_channels, latent_channels, layers_per_block)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    vae.train()
    recent = []
    for step, x in enumerate(_batches(images, batch_size, steps, g)):
        loss = _vae_loss(vae, x, kl_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        recent = (recent + [float(loss.detach())])[-20:]
        if (step + 1) % 100 == 0:
            log.info("autoencoder step %d/%d: loss %.4f", step + 1, steps, sum(recent) / len(recent))
    vae.eval()
    mean, std = latent_scale(vae, images)
    vae.register_to_config(scaling_factor=1.0 / std)
    info = {
        "reconstruction_train": reconstruction_error(vae, images[:2048]),
        "latent_mean": mean,
        "latent_std": std,
        "scaling_factor": 1.0 / std,
        "steps": steps,
        "final_loss": sum(recent) / len(recent),
        "train_time_s": round(time.time() - started, 1),
    }
    return vae, info
