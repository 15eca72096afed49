"""The downstream text-to-image model trained on a selected subset (or on the full data).

A diffusers ``UNet2DConditionModel`` in pixel space, ``DDPMScheduler`` noise, per-sample denoising
MSE averaged over the batch, caption dropout for classifier-free guidance. A UNet built with
``class_embed_type="projection"`` (``projection_class_embeddings_input_dim`` = the caption width)
also gets the pooled caption added to its time embedding (:func:`alchemist_pl.sampling.pooled_caption`).
``snr_gamma`` weights each sample's loss by min-SNR-γ (Hang et al. 2023, "Efficient Diffusion
Training via Min-SNR Weighting Strategy", Eq. 7-8): ``min(SNR(t), γ) / SNR(t)`` for epsilon
prediction, ``min(SNR(t), γ) / (SNR(t) + 1)`` for v-prediction.

Evaluation (``trainer.test``):

- ``test/loss``: denoising loss on the test split at fixed timesteps (``eval_timesteps``) with
  noise drawn from a generator seeded by each sample's index, so every run — any subset, any
  batch size, any number of ranks — is scored on exactly the same noisy inputs;
  ``test/loss_t{t}`` per timestep. It is the mean over test samples: per-sample losses are
  summed (float64) on each rank and the sums all-reduced, so under DDP (each rank scoring its
  share of the test split) every rank logs the same value as one process would.
- a grid of images generated from the first ``num_samples`` test captions with fixed seeds
  (:func:`alchemist_pl.sampling.generate`), saved as ``samples.png`` (captions in ``samples.txt``)
  in the run directory and logged to W&B; under DDP by global rank 0 alone. The prompts are given
  with :meth:`TextToImageModule.set_sample_prompts` (else the first test batch's captions).

The module never reads the datamodule: the empty caption for guidance is given with
:meth:`TextToImageModule.set_null_caption` (it is saved with the weights). A model trained on VAE
latents is given the decoder of its latents with :meth:`TextToImageModule.set_decoder`; its sample
grid shows decoded pixels.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.training_utils import compute_snr
from lightning import LightningModule

from .diffusion import per_sample_loss
from .runtime import is_wandb
from .sampling import generate, image_grid, pooled_caption


class TextToImageModule(LightningModule):
    """Args:
    unet: diffusers ``UNet2DConditionModel``.
    noise_scheduler: diffusers ``DDPMScheduler`` (training noise).
    sampling_scheduler: diffusers scheduler for generation (e.g. ``DDIMScheduler``).
    optimizer: partial optimizer constructor.
    caption_dropout: probability of training a sample with the empty caption (for CFG).
    eval_timesteps: timesteps of the test loss.
    eval_seed: seed of the test noise and of the sample grid.
    num_samples, sample_steps, guidance_scale: the sample grid.
    max_tokens, text_dim: shape of the caption states [T, D].
    snr_gamma: min-SNR-γ loss weighting (None: unweighted MSE).
    """

    def __init__(
        self,
        unet,
        noise_scheduler,
        sampling_scheduler,
        optimizer,
        caption_dropout: float = 0.1,
        eval_timesteps=(100, 300, 500, 700, 900),
        eval_seed: int = 1234,
        num_samples: int = 16,
        sample_steps: int = 25,
        guidance_scale: float = 3.0,
        max_tokens: int = 16,
        text_dim: int = 384,
        snr_gamma: float | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["unet", "noise_scheduler", "sampling_scheduler", "optimizer"])
        self.unet = unet
        self.noise_scheduler = noise_scheduler
        self.sampling_scheduler = sampling_scheduler
        self.optimizer = optimizer
        self.register_buffer("null_states", torch.zeros(max_tokens, text_dim))
        self.register_buffer("null_mask", torch.zeros(max_tokens, dtype=torch.bool))
        self._sample_batch = None
        self._sample_prompts = None
        self.decode = None

    def set_decoder(self, decode) -> None:
        """Latents [B, C, h, w] -> pixels [B, 3, H, W] in [-1, 1] for a UNet over VAE latents
        (:meth:`alchemist_pl.latents.LatentCodec.decode`; not saved with the weights); None: pixels."""
        self.decode = decode

    def set_null_caption(self, states: torch.Tensor, mask: torch.Tensor) -> None:
        """The empty caption's conditioning (states [T, D], mask [T]) for caption dropout and CFG."""
        self.null_states.copy_(states)
        self.null_mask.copy_(mask)

    def set_sample_prompts(self, prompts: dict) -> None:
        """Prompts of the sample grid: ``states`` [M, T, D], ``mask`` [M, T], ``captions`` (M str);
        the first ``num_samples`` are used."""
        self._sample_prompts = prompts

    def configure_optimizers(self):
        return self.optimizer(self.unet.parameters())

    def training_step(self, batch, batch_idx):
        images, states, mask = batch["image"], batch["states"], batch["mask"]
        b = images.shape[0]
        drop = torch.rand(b, device=self.device) < self.hparams.caption_dropout
        states = torch.where(drop[:, None, None], self.null_states.expand_as(states), states)
        mask = torch.where(drop[:, None], self.null_mask.expand_as(mask), mask)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (b,), device=self.device)
        loss = per_sample_loss(
            self.unet, self.noise_scheduler, images, states, mask, t, **pooled_caption(self.unet, states, mask)
        )
        loss = (loss * self._snr_weight(t)).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        return loss

    def _snr_weight(self, t: torch.Tensor) -> torch.Tensor:
        """[B] min-SNR-γ weights of timesteps ``t`` (ones when ``snr_gamma`` is None)."""
        gamma = self.hparams.snr_gamma
        if gamma is None:
            return torch.ones(len(t), device=t.device)
        snr = compute_snr(self.noise_scheduler, t)
        clipped = snr.clamp(max=float(gamma))
        v = self.noise_scheduler.config.prediction_type == "v_prediction"
        return clipped / (snr + 1) if v else clipped / snr

    def _eval_noise(self, indices: torch.Tensor, shape) -> torch.Tensor:
        out = []
        for i in indices.tolist():
            g = torch.Generator().manual_seed(self.hparams.eval_seed * 1_000_003 + i)
            out.append(torch.randn((len(self.hparams.eval_timesteps), *shape), generator=g))
        return torch.stack(out, dim=1).to(self.device)  # [K, B, C, H, W]

    def on_test_epoch_start(self) -> None:
        self._test_sums = torch.zeros(len(self.hparams.eval_timesteps), dtype=torch.float64)
        self._test_count = 0

    def test_step(self, batch, batch_idx):
        images = batch["image"]
        b = images.shape[0]
        noise = self._eval_noise(batch["index"], images.shape[1:])
        for j, t in enumerate(self.hparams.eval_timesteps):
            tt = torch.full((b,), int(t), device=self.device, dtype=torch.long)
            cond = (batch["states"], batch["mask"])
            loss = per_sample_loss(
                self.unet, self.noise_scheduler, images, *cond, tt, noise[j], **pooled_caption(self.unet, *cond)
            )
            self._test_sums[j] += loss.detach().double().sum().cpu()
        self._test_count += b
        if self._sample_batch is None:
            self._sample_batch = {k: batch[k][: self.hparams.num_samples] for k in ("states", "mask")}

    def on_test_epoch_end(self) -> None:
        # all ranks: sum the per-sample losses and counts over ranks (each scored its share)
        totals = torch.cat([self._test_sums, torch.tensor([float(self._test_count)], dtype=torch.float64)])
        totals = self.trainer.strategy.reduce(totals.to(self.device), reduce_op="sum").cpu()
        per_t = totals[:-1] / totals[-1]
        for j, t in enumerate(self.hparams.eval_timesteps):
            self.log(f"test/loss_t{int(t)}", per_t[j].float(), sync_dist=True)  # equal on every rank already
        self.log("test/loss", per_t.mean().float(), prog_bar=True, sync_dist=True)
        sb, self._sample_batch = self._sample_batch, None
        if self.trainer.is_global_zero and self.hparams.num_samples > 0:
            self._save_samples(sb)

    def _save_samples(self, first_batch) -> None:
        prompts = self._sample_prompts or first_batch
        if prompts is None:
            return
        m = self.hparams.num_samples
        images = generate(
            self.unet,
            self.sampling_scheduler,
            prompts["states"][:m],
            prompts["mask"][:m],
            self.null_states,
            self.null_mask,
            self.hparams.sample_steps,
            self.hparams.guidance_scale,
            seed=self.hparams.eval_seed,
            batch_size=m,
            decode=self.decode,
        )
        grid = image_grid(images)
        out = Path(self.trainer.default_root_dir)
        grid.save(out / "samples.png")
        if "captions" in prompts:  # the captions, row by row, beside the grid
            (out / "samples.txt").write_text("\n".join(prompts["captions"][:m]) + "\n")
        for lg in self.loggers:
            if is_wandb(lg):
                lg.log_image("samples", [grid], step=self.global_step)
