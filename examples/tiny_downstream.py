"""A custom downstream model: a LightningModule around :class:`examples.tiny_proxy.TinyDenoiser`,
conditioned on the masked mean of the caption's token states, with its own DDIM sampler.

Select it with ``hydra.searchpath=[file://examples/conf] model=tiny_conv`` from the repository root
(``examples/conf/model/tiny_conv.yaml``). It implements the downstream contract of
:mod:`alchemist_pl.plugins`: ``training_step`` and ``test_step`` on the TrainingDataModule's batches,
``set_null_caption``, ``set_sample_prompts`` and ``generate_images``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from lightning import LightningModule

from alchemist_pl.sampling import image_grid

from .tiny_proxy import TinyDenoiser


def caption_vector(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the real tokens' states: states [B, T, D], mask [B, T] bool -> [B, D] (zeros if no token)."""
    m = mask.to(states.dtype)[..., None]
    return (states * m).sum(1) / m.sum(1).clamp(min=1.0)


class TinyTextToImage(LightningModule):
    """Args:
    width: hidden channels of the denoiser; text_dim: D of the caption states; resolution: H = W.
    lr: AdamW learning rate; caption_dropout: probability of the empty caption in training (CFG).
    eval_timesteps, eval_seed: the test loss's timesteps and noise seed.
    num_samples, sample_steps, guidance_scale: the sample grid written at the end of ``trainer.test``.
    num_train_timesteps: the DDPM schedule's length.

    Batches (TrainingDataModule): ``image`` [B, 3, H, W] float32 in [-1, 1], ``states`` [B, T, D]
    float32, ``mask`` [B, T] bool, ``pooled`` [B, D] float32, ``index`` [B] int64.
    """

    def __init__(
        self,
        width: int = 32,
        text_dim: int = 384,
        resolution: int = 32,
        lr: float = 1e-3,
        caption_dropout: float = 0.1,
        eval_timesteps=(100, 500, 900),
        eval_seed: int = 1234,
        num_samples: int = 8,
        sample_steps: int = 10,
        guidance_scale: float = 3.0,
        num_train_timesteps: int = 1000,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.net = TinyDenoiser(3, width, text_dim, num_train_timesteps)
        self.noise_scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps)
        self.register_buffer("null_caption", torch.zeros(text_dim))
        self._prompts = None

    def set_null_caption(self, states: torch.Tensor, mask: torch.Tensor) -> None:
        """The empty caption: states [T, D], mask [T]."""
        self.null_caption.copy_(caption_vector(states[None], mask[None])[0])

    def set_sample_prompts(self, prompts: dict) -> None:
        """``states`` [M, T, D], ``mask`` [M, T], ``captions`` (M str) of the sample grid."""
        self._prompts = prompts

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)

    def _loss(self, images, caption, t, noise) -> torch.Tensor:
        noisy = self.noise_scheduler.add_noise(images, noise, t)
        return F.mse_loss(self.net(noisy, t, caption), noise, reduction="none").mean(dim=(1, 2, 3))

    def training_step(self, batch, batch_idx):
        images, b = batch["image"], len(batch["image"])
        caption = caption_vector(batch["states"], batch["mask"])
        drop = torch.rand(b, device=self.device) < self.hparams.caption_dropout
        caption = torch.where(drop[:, None], self.null_caption.expand_as(caption), caption)
        t = torch.randint(0, self.hparams.num_train_timesteps, (b,), device=self.device)
        loss = self._loss(images, caption, t, torch.randn_like(images)).mean()
        self.log("train/loss", loss, batch_size=b)
        return loss

    def test_step(self, batch, batch_idx):
        images, b = batch["image"], len(batch["image"])
        caption = caption_vector(batch["states"], batch["mask"])
        losses = []
        for t in self.hparams.eval_timesteps:  # noise seeded by sample index: the same for every run
            gens = [torch.Generator().manual_seed(self.hparams.eval_seed * 1_000_003 + int(i)) for i in batch["index"]]
            noise = torch.stack([torch.randn(images.shape[1:], generator=g) for g in gens]).to(self.device)
            tt = torch.full((b,), int(t), device=self.device, dtype=torch.long)
            losses.append(self._loss(images, caption, tt, noise))
        self.log("test/loss", torch.stack(losses).mean(), batch_size=b)

    def on_test_epoch_end(self) -> None:
        if self._prompts is None or not self.trainer.is_global_zero:
            return
        h, p = self.hparams, self._prompts
        images = self.generate_images(p["states"], p["mask"], h.sample_steps, h.guidance_scale, h.eval_seed, 64)
        image_grid(images).save(Path(self.trainer.default_root_dir) / "samples.png")

    @torch.no_grad()
    def generate_images(self, states, mask, num_inference_steps, guidance_scale, seed, batch_size) -> torch.Tensor:
        """DDIM with classifier-free guidance: states [M, T, D], mask [M, T] -> [M, 3, H, W] float32 in
        [-1, 1] on the CPU; the batch starting at prompt s starts from noise seeded ``seed * 1_000_003 + s``."""
        h, out = self.hparams, []
        sampler = DDIMScheduler(num_train_timesteps=h.num_train_timesteps)
        sampler.set_timesteps(num_inference_steps)
        for s in range(0, len(states), batch_size):
            caption = caption_vector(states[s : s + batch_size], mask[s : s + batch_size]).to(self.device)
            g = torch.Generator().manual_seed(seed * 1_000_003 + s)
            x = torch.randn((len(caption), 3, h.resolution, h.resolution), generator=g).to(self.device)
            null = self.null_caption.expand_as(caption)
            for t in sampler.timesteps:
                tt = torch.full((len(x),), int(t), device=self.device, dtype=torch.long)
                cond, uncond = self.net(x, tt, caption), self.net(x, tt, null)
                x = sampler.step(uncond + guidance_scale * (cond - uncond), t, x).prev_sample
            out.append(x.clamp(-1, 1).float().cpu())
        return torch.cat(out)
