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

Options (each a constructor argument and a key of ``conf/bilevel/``):

- ``estimator="exact"``: the rater's gradient is the exact one-step meta-gradient
  ``dL_val(θ')/dμ`` with ``θ' = θ − η ∇_θ Σ_i W_i ℓ_i(θ)`` (:mod:`alchemist_pl.metagrad`, one
  forward-mode JVP per batch) instead of Eq. 9-10. The rater loss is ``Σ_i g_i · W_i(μ)`` with
  ``g_i = ∂L_val(θ')/∂W_i`` held fixed; both heads get a true meta-gradient, so no centring.
  The lookahead's inner gradient ``∇_θ Σ W_i ℓ_i`` is also the training part of the proxy step;
  it is computed once and shared (single process without a gradient scaler; otherwise recomputed).
  D_val's timesteps and noise are the same for L_val(θ) in the proxy step and L_val(θ').
- ``rater_timestep_sampling`` ("shared", "stratified", "uniform") and ``rater_noise``
  ("independent", "shared": one noise image for the whole batch) choose the training batch's
  noise; ``rater_loss_weighting="min_snr"`` multiplies each ℓ_i by its min-SNR-γ weight (it only
  changes anything when a batch mixes timesteps; per-bucket centring already scales one t away).
- ``caption_gap_weight=λ > 0``: the per-sample signal becomes ``ℓ_i − λ (ℓ_i(∅) − ℓ_i)`` — a
  sample whose caption does not help the proxy denoise it (diffusion-classifier gap, see
  :func:`alchemist_pl.diffusion.caption_gap`) looks worse. First-order estimator only.

The module records which timestep each pool sample saw (``index`` of the batch items), so
:meth:`BilevelRater.timestep_correlation` can check the final scores are not timestep noise.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from lightning import LightningModule

from .diffusion import caption_gap, draw_timesteps, min_snr_weights, per_sample_loss
from .metagrad import detached_params, exact_meta_gradient, math_attention, proxy_loss_fn
from .rater import sample_weights

NUM_BUCKETS = 10
ESTIMATORS = ("first_order", "exact")
NOISE_MODES = ("independent", "shared")
TIMESTEP_MODES = ("shared", "stratified", "uniform")
LOSS_WEIGHTINGS = ("none", "min_snr")


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
            First-order estimator only.
        estimator: "first_order" (Eq. 9-10, default) or "exact" (one-step meta-gradient by JVP).
        lookahead_lr: η of the exact estimator's SGD lookahead step.
        rater_timestep_sampling: "shared" (default), "stratified" or "uniform" timesteps of the
            training batch, all in ``rater_timesteps``.
        rater_noise: "independent" (default) or "shared" noise across the training batch.
        rater_loss_weighting: "none" (default) or "min_snr" weights on the per-sample losses.
        min_snr_gamma: γ of the min-SNR weighting.
        caption_gap_weight: λ ≥ 0 of the caption-gap term (0 = off, default).

    Raises:
        ValueError: an unknown option, an empty or out-of-range ``rater_timesteps``, a negative
            ``caption_gap_weight``, or ``caption_gap_weight > 0`` with the exact estimator.

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
        estimator: str = "first_order",
        lookahead_lr: float = 0.01,
        rater_timestep_sampling: str = "shared",
        rater_noise: str = "independent",
        rater_loss_weighting: str = "none",
        min_snr_gamma: float = 5.0,
        caption_gap_weight: float = 0.0,
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
        for name, value, allowed in (
            ("estimator", estimator, ESTIMATORS),
            ("rater_noise", rater_noise, NOISE_MODES),
            ("rater_loss_weighting", rater_loss_weighting, LOSS_WEIGHTINGS),
            ("rater_timestep_sampling", rater_timestep_sampling, TIMESTEP_MODES),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if estimator == "exact" and lookahead_lr <= 0:
            raise ValueError(f"lookahead_lr must be > 0, got {lookahead_lr}")
        if caption_gap_weight < 0:
            raise ValueError(f"caption_gap_weight must be >= 0, got {caption_gap_weight}")
        if caption_gap_weight > 0 and estimator == "exact":
            raise ValueError(
                "caption_gap_weight > 0 needs estimator=first_order (the exact estimator's signal is the meta-gradient)"
            )
        if rater_loss_weighting == "min_snr":
            min_snr_weights(noise_scheduler, torch.tensor([low]), min_snr_gamma)  # checks gamma and prediction type
        self.null_caption: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self.share_inner_grad = True  # exact estimator: reuse the proxy step's training gradient (tests turn it off)
        self.seen_index: list[torch.Tensor] = []  # pool positions of the training batches ...
        self.seen_t: list[torch.Tensor] = []  # ... and the timesteps they saw (not checkpointed)
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

    def _bucket(self, t: torch.Tensor) -> torch.Tensor:
        low, high = self.rater_t
        return ((t - low) * NUM_BUCKETS // (high - low)).clamp(0, NUM_BUCKETS - 1)

    def set_null_caption(self, states: torch.Tensor, mask: torch.Tensor | None) -> None:
        """The empty caption's token states [T, D] and mask [T], for ``caption_gap_weight > 0``."""
        self.null_caption = (states, mask)

    def on_fit_start(self) -> None:
        if self.hparams.caption_gap_weight > 0 and self.null_caption is None:
            pool = getattr(getattr(self.trainer, "datamodule", None), "pool", None)
            text = getattr(pool, "text", None)
            if text is None or "" not in text.captions:
                raise ValueError(
                    "caption_gap_weight > 0 needs the empty caption's embedding: call "
                    "set_null_caption() or fit with a RatingDataModule"
                )
            r = text.captions.index("")
            self.set_null_caption(text.states[r].float(), text.mask[r])

    def _train_noise(self, images: torch.Tensor) -> torch.Tensor:
        if self.hparams.rater_noise == "shared":
            return torch.randn_like(images[:1]).expand_as(images).contiguous()
        return torch.randn_like(images)

    def _baselines(self, losses: torch.Tensor, probs: torch.Tensor, buckets: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """c_t of each sample [B] (initialised on first sight of a bucket) and the new softmax-weighted
        mean loss of each bucket present in the batch (applied after the rater step)."""
        updates = {}
        for k in buckets.unique().tolist():
            sel = buckets == k
            updates[k] = (probs[sel] * losses[sel]).sum() / probs[sel].sum()
            if not bool(self.baseline_seen[k]):
                self.baseline[k] = updates[k]
                self.baseline_seen[k] = True
        return self.baseline[buckets].clamp(min=1e-8), updates

    def _exact_rater_loss(self, val, train, t_val, noise_val, t_train, noise_train, loss_weights, weights, inner=None):
        """Σ_i g_i W_i(μ) with g = ∂L_val(θ')/∂W from :func:`exact_meta_gradient` (held fixed);
        ``inner``: ∇_θ Σ_i W_i ℓ_i(θ) if already computed."""
        train_fn = proxy_loss_fn(self.proxy, self.noise_scheduler, train, t_train, noise_train)
        val_fn = proxy_loss_fn(self.proxy, self.noise_scheduler, val, t_val, noise_val)
        with math_attention():
            meta, val_after = exact_meta_gradient(
                lambda p: train_fn(p) * loss_weights,
                lambda p: val_fn(p).mean(),
                detached_params(self.proxy),
                weights.detach(),
                self.hparams.lookahead_lr,
                inner_grad=inner,
            )
        meta = meta.float()
        return (meta * weights).sum(), {"rate/meta_grad_std": meta.std(), "rate/val_loss_lookahead": val_after.float()}

    def timestep_correlation(self, scores: np.ndarray) -> dict:
        """Spearman correlation of final scores with the mean timestep each pool sample saw.

        Args:
            scores: [N] scores of the pool, indexed like the ``index`` of the training batches.

        Returns:
            ``{"score_timestep_spearman": ρ, "samples_seen": n}`` over the samples seen at least
            once (ρ is NaN when fewer than 3 were seen or all saw the same t). |ρ| near 0 means the
            scores are not explained by the timesteps the samples happened to get.
        """
        if not self.seen_index:
            return {"score_timestep_spearman": float("nan"), "samples_seen": 0}
        return timestep_correlation(scores, torch.cat(self.seen_index).numpy(), torch.cat(self.seen_t).numpy())

    def on_before_optimizer_step(self, optimizer) -> None:
        """Clip inside ``opt.step()``: after a GradScaler (16-mixed) unscaled the gradients, before the step."""
        self.clip_gradients(optimizer, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm")

    def training_step(self, batch, batch_idx):
        opt_proxy, opt_rater = self.optimizers()
        val, train = batch["val"], batch["train"]
        ul = self.upper_level_weight()
        num_t = self.noise_scheduler.config.num_train_timesteps

        t_val = torch.randint(0, num_t, (val["image"].shape[0],), device=self.device)
        noise_val = torch.randn_like(val["image"])
        val_loss = per_sample_loss(
            self.proxy, self.noise_scheduler, val["image"], val["states"], val["mask"], t_val, noise_val
        ).mean()

        h = self.hparams
        b_size = train["image"].shape[0]
        t_train = draw_timesteps(h.rater_timestep_sampling, b_size, *self.rater_t, device=self.device)
        noise_train = self._train_noise(train["image"])
        loss_weights = torch.ones(b_size, device=self.device)
        if h.rater_loss_weighting == "min_snr":
            loss_weights = min_snr_weights(self.noise_scheduler, t_train, h.min_snr_gamma).to(self.device)
        with torch.set_grad_enabled(ul < 1.0):  # warm-up: the proxy fits D_val only
            train_losses = loss_weights * per_sample_loss(
                self.proxy, self.noise_scheduler, train["image"], train["states"], train["mask"], t_train, noise_train
            )
        if "index" in train:
            self.seen_index.append(torch.as_tensor(train["index"]).detach().cpu())
            self.seen_t.append(t_train.detach().cpu())

        s, b = self.rater(train["image"], train["pooled"])
        weights = sample_weights(s, b)  # Eq. 7, [B]
        extra, inner = {}, None
        scaler = getattr(getattr(self._trainer, "precision_plugin", None), "scaler", None)
        single = getattr(self._trainer, "world_size", 1) == 1  # under DDP, gradients must come from manual_backward
        if h.estimator == "exact" and ul < 1.0 and self.share_inner_grad and scaler is None and single:
            # ∇_θ Σ W_i ℓ_i(θ) is the lookahead's step and the training part of the proxy step: compute it once.
            proxy_params = [p for p in self.proxy.parameters() if p.requires_grad]
            inner = torch.autograd.grad((weights.detach() * train_losses).sum(), proxy_params, allow_unused=True)
        if h.estimator == "exact":  # meta-gradient at θ_k, before the proxy step
            rater_loss, extra = self._exact_rater_loss(
                val, train, t_val, noise_val, t_train, noise_train, loss_weights, weights, inner
            )

        # Proxy step (Eq. 5), weights held fixed.
        opt_proxy.zero_grad()
        if inner is not None:
            self.manual_backward(ul * val_loss)
            for p, g in zip(proxy_params, inner):
                if g is not None:
                    p.grad = (1.0 - ul) * g if p.grad is None else p.grad.add_(g, alpha=1.0 - ul)
        else:
            proxy_loss = ul * val_loss
            if ul < 1.0:
                proxy_loss = proxy_loss + (1.0 - ul) * (weights.detach() * train_losses).sum()
            self.manual_backward(proxy_loss)
        opt_proxy.step()

        # Rater step (Eq. 9-10) on losses at θ_k, centred and scaled by the running mean c_t
        # (first-order; the exact estimator's rater loss was formed above, also at θ_k).
        losses = train_losses.detach().float()
        probs = torch.softmax(s.detach(), dim=0)
        weighted = (probs * losses).sum()
        c, updates = self._baselines(losses, probs, self._bucket(t_train))
        gap = None
        if h.caption_gap_weight > 0:
            null_states, null_mask = self.null_caption
            with torch.no_grad():
                gap = (
                    loss_weights
                    * caption_gap(
                        self.proxy,
                        self.noise_scheduler,
                        train["image"],
                        train["states"],
                        train["mask"],
                        null_states.to(self.device),
                        None if null_mask is None else null_mask.to(self.device),
                        t_train,
                        noise_train,
                        cond_losses=losses / loss_weights,
                    ).float()
                )
            extra["rate/caption_gap"] = gap.mean()
        if h.estimator == "first_order" and h.rater_objective == "centred":
            rel = (losses - c) / c  # [B] loss relative to the usual weighted loss at this timestep
            if gap is not None:
                rel = rel - h.caption_gap_weight * gap / c  # a caption that does not help looks worse
            z = rel.mean()  # how hard this batch is as a whole (independent of the rater)
            if not bool(self.z_seen):
                self.z_mean.fill_(float(z))
                self.z_seen.fill_(True)
            # instance head: Σ_i softmax(s)_i * b * rel_i (b held fixed); batch head: b * (z - E[z]).
            rater_loss = (torch.softmax(s, 0) * b.detach() * rel).sum() + b * (z - self.z_mean)
        elif h.estimator == "first_order":
            signal = losses if gap is None else losses - h.caption_gap_weight * gap
            rater_loss = (weights * signal).sum()
        opt_rater.zero_grad()
        self.manual_backward(rater_loss)
        opt_rater.step()
        m = h.baseline_momentum
        for k, value in updates.items():
            self.baseline[k] = m * self.baseline[k] + (1 - m) * value
        if h.estimator == "first_order" and h.rater_objective == "centred":
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
                **extra,
            },
            prog_bar=False,
            batch_size=b_size,
        )
        self.log("val_loss", val_loss.detach(), prog_bar=True, batch_size=b_size)
        every = self.hparams.histogram_every
        if every and self.global_step % (2 * every) == 0:  # two optimizer steps per iteration
            log_histogram(self.loggers, "rate/weights", (weights.detach() * b_size).cpu(), self.global_step)


def timestep_correlation(scores: np.ndarray, index: np.ndarray, timesteps: np.ndarray) -> dict:
    """Spearman ρ between ``scores[j]`` and the mean timestep sample j saw, over samples seen.

    Args:
        scores: [N] final scores of the pool.
        index: [M] pool positions of the samples in the training batches (with repeats).
        timesteps: [M] the timestep each of those saw.

    Returns:
        ``{"score_timestep_spearman": ρ, "samples_seen": n}``; ρ is NaN below 3 samples or when
        the scores or the mean timesteps are constant.
    """
    from scipy.stats import spearmanr

    scores = np.asarray(scores, dtype=np.float64)
    index, timesteps = np.asarray(index, dtype=np.int64), np.asarray(timesteps, dtype=np.float64)
    count = np.bincount(index, minlength=len(scores))
    total = np.bincount(index, weights=timesteps, minlength=len(scores))
    seen = count > 0
    n = int(seen.sum())
    mean_t = total[seen] / count[seen]
    if n < 3 or np.ptp(mean_t) == 0 or np.ptp(scores[seen]) == 0:
        return {"score_timestep_spearman": float("nan"), "samples_seen": n}
    return {"score_timestep_spearman": float(spearmanr(scores[seen], mean_t).statistic), "samples_seen": n}


def log_histogram(loggers, name: str, values: torch.Tensor, step: int) -> None:
    """Log a histogram to every W&B logger in ``loggers`` (other loggers have no histogram type)."""
    from lightning.pytorch.loggers import WandbLogger

    for lg in loggers:
        if isinstance(lg, WandbLogger):
            import wandb

            lg.experiment.log({name: wandb.Histogram(values.numpy()), "trainer/global_step": step})
