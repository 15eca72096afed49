"""Joint training of the proxy diffusion model (θ) and the rater (μ): the bilevel loop (paper Sec. 3.1).

Objective (Eq. 2-3)::

    μ* = argmin_μ  E_{x~D_val} L(θ*(μ); x),   θ*(μ) = argmin_θ Σ_i W_i(μ) L(θ; x_i)

solved with the paper's first-order penalty form. Each iteration takes one D_val batch and one
training-pool batch of size B:

1. ``W = softmax_B(s) * b`` from the rater (Eq. 7), no gradient to μ in step 2;
2. proxy step on ``ul * L_val(θ) + (1 - ul) * Σ_i W_i ℓ_i(θ)`` (Eq. 5);
3. rater step (Eq. 9-10) with ℓ_i from *before* the proxy step. With ``rel_i = (ℓ_i - c_t) / c_t``
   (``c_t``: running mean of the weighted training loss at the batch's timestep bucket) and
   ``z = mean_i rel_i`` (how hard the batch is as a whole, independent of the rater), the loss is
   ``Σ_i softmax_B(s)_i(μ) · b · rel_i`` for the instance head plus ``b(μ) · (z - E[z])`` for the
   batch head (``E[z]``: running mean of z).

Departures from the paper, each for a measured reason (method.md, "Measured on data like ours"):

- The rater's loss is centred. Minimising ``Σ ℓ_i W_i`` literally drives the batch weight b to 0
  (every ℓ_i > 0; measured: b ~ 1e-6 within 100 iterations, then the rater froze). Subtracting
  ``c_t`` leaves the instance head's gradient direction unchanged (Σ softmax = 1); the batch
  head's gradient becomes ``z - E[z]``, "is this batch easier than the usual one at this noise
  level", the batch head's stated purpose, so b no longer collapses to 0. Measured: while the
  proxy's loss falls, the running means lag and b drifts up (0.95-1 by the end of a default run).
- A diffusion proxy: the training batch shares one timestep drawn from ``rater_timesteps``
  (default [0, 600) of 1000), so the within-batch softmax compares samples at one noise level,
  and only where the per-sample loss carries signal. D_val batches use uniform timesteps.
"""

from __future__ import annotations

import math

import torch
from lightning import LightningModule

from .diffusion import per_sample_loss, shared_timesteps
from .rater import sample_weights

NUM_BUCKETS = 10


class BilevelRater(LightningModule):
    """LightningModule with manual optimization of the proxy (optimizer 0) and the rater (optimizer 1).

    Args:
        proxy: diffusers ``UNet2DConditionModel`` (the proxy model θ), trained from scratch.
        noise_scheduler: diffusers ``DDPMScheduler``.
        rater: :class:`alchemist_pl.rater.Rater` (μ).
        proxy_optimizer, rater_optimizer: partial optimizer constructors (``params -> Optimizer``).
        ul_init, ul_decay, ul_min: upper-level weight ``ul = max(ul_min, ul_init - ul_decay * epoch)``
            (released code: 1.0 in the first epoch, then minus 0.03 per epoch).
        grad_clip: max gradient norm for both optimizers.
        rater_timesteps: [low, high) range of the training batch's shared timestep.
        baseline_momentum: momentum of the per-timestep-bucket running mean ``c_t``.
        histogram_every: log a histogram of W every this many steps (W&B only; 0 = never).
        rater_objective: "centred" (default, see module docstring) or "literal": the paper's
            ``Σ_i W_i(μ) ℓ_i`` as written, kept for ablations; it collapses b toward 0.

    Batches: ``{"val": item, "train": item}`` with items as produced by
    :class:`alchemist_pl.data.ImageCaptionDataset` (images [B, 3, H, W], states [B, T, D],
    mask [B, T], pooled [B, D]).
    """

    def __init__(
        self,
        proxy,
        noise_scheduler,
        rater,
        proxy_optimizer,
        rater_optimizer,
        ul_init: float = 1.0,
        ul_decay: float = 0.03,
        ul_min: float = 0.0,
        grad_clip: float = 2.0,
        rater_timesteps: tuple[int, int] = (0, 600),
        baseline_momentum: float = 0.9,
        histogram_every: int = 50,
        rater_objective: str = "centred",
    ):
        super().__init__()
        self.automatic_optimization = False
        self.save_hyperparameters(ignore=["proxy", "noise_scheduler", "rater", "proxy_optimizer", "rater_optimizer"])
        self.proxy = proxy
        self.noise_scheduler = noise_scheduler
        self.rater = rater
        self.proxy_optimizer = proxy_optimizer
        self.rater_optimizer = rater_optimizer
        low, high = int(rater_timesteps[0]), int(rater_timesteps[1])
        num_t = noise_scheduler.config.num_train_timesteps
        if not (0 <= low < high <= num_t):
            raise ValueError(f"rater_timesteps must satisfy 0 <= low < high <= {num_t}, got {rater_timesteps}")
        self.rater_t = (low, high)
        if rater_objective not in ("centred", "literal"):
            raise ValueError(f"rater_objective must be 'centred' or 'literal', got {rater_objective!r}")
        self.register_buffer("baseline", torch.zeros(NUM_BUCKETS))
        self.register_buffer("baseline_seen", torch.zeros(NUM_BUCKETS, dtype=torch.bool))
        self.register_buffer("z_mean", torch.zeros(()))
        self.register_buffer("z_seen", torch.zeros((), dtype=torch.bool))

    def configure_optimizers(self):
        return [self.proxy_optimizer(self.proxy.parameters()), self.rater_optimizer(self.rater.parameters())]

    def upper_level_weight(self) -> float:
        """``ul`` of Eq. 5 for the current epoch."""
        h = self.hparams
        return max(h.ul_min, h.ul_init - h.ul_decay * self.current_epoch)

    def _bucket(self, t: int) -> int:
        low, high = self.rater_t
        return min(NUM_BUCKETS - 1, (t - low) * NUM_BUCKETS // (high - low))

    def training_step(self, batch, batch_idx):
        opt_proxy, opt_rater = self.optimizers()
        val, train = batch["val"], batch["train"]
        ul = self.upper_level_weight()
        num_t = self.noise_scheduler.config.num_train_timesteps

        t_val = torch.randint(0, num_t, (val["image"].shape[0],), device=self.device)
        val_loss = per_sample_loss(self.proxy, self.noise_scheduler, val["image"], val["states"], val["mask"], t_val).mean()

        b_size = train["image"].shape[0]
        t_train = shared_timesteps(b_size, *self.rater_t, device=self.device)
        with torch.set_grad_enabled(ul < 1.0):  # warm-up: the proxy fits D_val only
            train_losses = per_sample_loss(
                self.proxy, self.noise_scheduler, train["image"], train["states"], train["mask"], t_train
            )

        s, b = self.rater(train["image"], train["pooled"])
        weights = sample_weights(s, b)  # Eq. 7, [B]

        # Proxy step (Eq. 5), weights held fixed.
        proxy_loss = ul * val_loss
        if ul < 1.0:
            proxy_loss = proxy_loss + (1.0 - ul) * (weights.detach() * train_losses).sum()
        opt_proxy.zero_grad()
        self.manual_backward(proxy_loss)
        self.clip_gradients(opt_proxy, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm")
        opt_proxy.step()

        # Rater step (Eq. 9-10) on losses at θ_k, centred and scaled by the running mean c_t.
        losses = train_losses.detach().float()
        probs = torch.softmax(s.detach(), dim=0)
        weighted = (probs * losses).sum()
        k = self._bucket(int(t_train[0]))
        if not bool(self.baseline_seen[k]):
            self.baseline[k] = weighted
            self.baseline_seen[k] = True
        c = self.baseline[k].clamp(min=1e-8)
        if self.hparams.rater_objective == "centred":
            rel = (losses - c) / c  # [B] loss relative to the usual weighted loss at this timestep
            z = rel.mean()  # how hard this batch is as a whole (independent of the rater)
            if not bool(self.z_seen):
                self.z_mean.fill_(float(z))
                self.z_seen.fill_(True)
            # instance head: Σ_i softmax(s)_i * b * rel_i (b held fixed); batch head: b * (z - E[z]).
            rater_loss = (torch.softmax(s, 0) * b.detach() * rel).sum() + b * (z - self.z_mean)
        else:
            rater_loss = (weights * losses).sum()
        opt_rater.zero_grad()
        self.manual_backward(rater_loss)
        self.clip_gradients(opt_rater, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm")
        opt_rater.step()
        m = self.hparams.baseline_momentum
        self.baseline[k] = m * self.baseline[k] + (1 - m) * weighted
        if self.hparams.rater_objective == "centred":
            self.z_mean.mul_(m).add_((1 - m) * z)

        entropy = -(probs * probs.clamp(min=1e-12).log()).sum() / math.log(b_size)
        self.log_dict(
            {
                "rate/val_loss": val_loss.detach(),
                "rate/train_loss": losses.mean(),
                "rate/train_weighted_loss": weighted,
                "rate/rater_loss": rater_loss.detach(),
                "rate/batch_weight": b.detach(),
                "rate/weight_entropy": entropy,
                "rate/instance_score_std": s.detach().std(),
                "rate/ul": ul,
            },
            prog_bar=False,
            batch_size=b_size,
        )
        self.log("val_loss", val_loss.detach(), prog_bar=True, batch_size=b_size)
        every = self.hparams.histogram_every
        if every and self.global_step % (2 * every) == 0:  # two optimizer steps per iteration
            log_histogram(self.loggers, "rate/weights", (weights.detach() * b_size).cpu(), self.global_step)


def log_histogram(loggers, name: str, values: torch.Tensor, step: int) -> None:
    """Log a histogram to every W&B logger in ``loggers`` (other loggers have no histogram type)."""
    from lightning.pytorch.loggers import WandbLogger

    for lg in loggers:
        if isinstance(lg, WandbLogger):
            import wandb

            lg.experiment.log({name: wandb.Histogram(values.numpy()), "trainer/global_step": step})
