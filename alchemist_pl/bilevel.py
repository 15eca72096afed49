"""Joint training of the proxy diffusion model (θ) and the rater (μ): the bilevel loop (paper Sec. 3.1).

Objective (Eq. 2-3)::

    μ* = argmin_μ  E_{x~D_val} L(θ*(μ); x),   θ*(μ) = argmin_θ Σ_i W_i(μ) ℓ_i(θ)

solved with the penalty method of Shen & Chen (2023, "On penalty-based bilevel gradient descent"),
whose μ-gradient is ``(1 − ul) Σ_i ∇_μ W_i(μ) [ℓ_i(θ) − ℓ_i(θ′*)]`` with θ′* a minimiser of the
train-only weighted loss (the value function ``v(μ) = min_θ′ Σ_i W_i ℓ_i(θ′)``). Each iteration
takes one D_val batch and one training-pool batch of size B:

1. draw the training batch's timesteps and noise (``draws_per_sample`` draws per sample); θ and
   θ′ see the same (t, ε) and the same caption-dropout mask (common random numbers);
2. ``W = softmax_B(s) * b`` from the rater (Eq. 7);
3. per-sample losses ℓ_i(θ) (and ℓ_i(θ′)) at θ_k, before any step;
4. the rater's loss from the signal ``rater_signal`` (below), at θ_k;
5. proxy step on ``ul * L_val(θ) + (1 − ul) * Σ_i W_i ℓ_i(θ)`` (Eq. 5), W held fixed;
6. ``value_gap`` only: ``inner_steps`` steps of θ′ on ``Σ_i w_i ℓ_i(θ′)`` over the training batch
   (never D_val; also during the ``ul = 1`` warm-up), ``w`` uniform or the rater's weights;
7. rater step; with a replay buffer (``replay_steps`` > 0), the batch and its signals join the
   buffer and the rater takes ``replay_steps`` more steps on random batches of it
   (:mod:`alchemist_pl.replay`).

The rater-loss of each signal (``rater_signal``: ``first_order``, the paper's rule; ``value_gap``;
``exact``) and the caption terms are described in :mod:`alchemist_pl.rater_loss`.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from lightning import LightningModule
from torch.optim.swa_utils import AveragedModel

from .bilevel_options import check_options
from .draws import Draw, draw_batch
from .plugins import proxy_loss
from .rater import sample_weights
from .rater_loss import RaterLosses
from .replay import SignalReplay
from .runtime import log_histogram
from .signals import BucketMoments, drop_captions, timestep_correlation

NUM_BUCKETS = 10
__all__ = ["BilevelRater", "timestep_correlation"]


class _EmaUpdate:
    """The update of :func:`torch.optim.swa_utils.get_ema_multi_avg_fn` (``avg ← decay · avg + (1 − decay) · θ``,
    the same operations) as an object that pickles: a ``ddp_spawn`` fit pickles the module, and torch's
    function is a closure."""

    def __init__(self, decay: float):
        self.decay = float(decay)

    @torch.no_grad()
    def __call__(self, averaged: list, current: list, _num_averaged) -> None:
        if torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1 - self.decay)
        else:
            for a, c in zip(averaged, current, strict=True):
                a.copy_(a * self.decay + c * (1 - self.decay))


def _ema(model, decay: float):
    """An exponential moving average of ``model``'s parameters (:class:`torch.optim.swa_utils.AveragedModel`),
    not trainable (no optimizer or DDP gradient sync sees it)."""
    ema = AveragedModel(model, multi_avg_fn=_EmaUpdate(decay))
    ema.requires_grad_(False)
    return ema


class BilevelRater(RaterLosses, LightningModule):
    """LightningModule with manual optimization of the proxy θ, the rater μ and (``value_gap``) θ′.

    Args:
        proxy: a module with the per-sample loss hook (:class:`alchemist_pl.plugins.ProxyLoss`) or
            with diffusers ``UNet2DConditionModel``'s call signature, from scratch.
        noise_scheduler: diffusers ``DDPMScheduler``.
        rater: :class:`alchemist_pl.rater.Rater` (μ).
        proxy_optimizer, rater_optimizer: partial optimizer constructors (``params -> Optimizer``).
        value_optimizer: θ′'s optimizer constructor (None: the proxy's).
        rater_signal: "first_order", "value_gap" or "exact" (module docstring).
        ul_init, ul_decay, ul_min: ``ul = max(ul_min, ul_init − ul_decay · epoch)``.
        grad_clip: max gradient norm of every optimizer.
        rater_timesteps: [low, high) of the training batch's timesteps.
        baseline_momentum: momentum of every running statistic.
        histogram_every: log a histogram of W every this many iterations (W&B only; 0 = never).
        rater_objective: "centred" or "literal" (``first_order`` only).
        lookahead_lr: η of the ``exact`` lookahead.
        rater_timestep_sampling: "shared", "stratified" or "uniform" (:func:`draw_timesteps`).
        rater_noise: "independent" or "shared" (one noise image per batch and draw).
        rater_loss_weighting, min_snr_gamma: "none" or "min_snr" weights on the per-sample losses.
        value_weights: θ′'s data weights: "uniform" or "rater" (``softmax_B(s)``, detached).
        inner_steps: θ′ steps per iteration (later steps draw fresh (t, ε) on the same batch).
        value_timesteps: "signal": θ′ steps on the signal's draw (t in ``rater_timesteps``);
            "uniform": on a fresh draw with t uniform over all timesteps, as θ sees D_val (then ℓ(θ′)
            of the signal is one extra forward without gradient).
        signal_centring: subtract the running mean of ``d`` per bucket (``value_gap``).
        caption_dropout: probability of the empty caption in both proxy terms and for θ′.
        null_caption: ``{"states": [T, D], "mask": [T], "pooled": [D]}`` of the empty caption
            (:func:`alchemist_pl.signals.embed_null_caption`); needed when ``caption_dropout > 0``.
        caption_contrast_weight: λ ≥ 0 of the mismatched-caption contrast.
        contrast_timesteps: [low, high) of the contrast's timestep.
        contrast_model: "proxy" (θ) or "value" (θ′, ``value_gap`` only): the model whose losses form
            the caption contrast.
        contrast_captions: K ≥ 1 other captions per sample, their losses averaged in the contrast.
        draws_per_sample: K (t, ε) draws per training sample; signals are averaged over them.
        logit_anchor: λ ≥ 0 of ``λ · mean_B(a)²`` in the rater's loss, ``a`` the instance logits. The
            batch softmax leaves the logits' common level free; without an anchor Adam can drift it
            until the instance head's sigmoid saturates and the head stops learning.
        replay_steps: extra rater steps per iteration on batches (of the training batch's size) from a
            buffer of the last ``replay_size`` training samples and their signals (``value_gap`` and
            centred ``first_order`` only; 0 = off); loss ``replay_objective``: "instance" or
            "regression" (:mod:`alchemist_pl.rater_loss`). Under DDP each rank has its own buffer.
        replay_size: capacity of that buffer in samples.
        ema_decay: d in [0, 1) of exponential moving averages of θ and θ′ (``proxy_ema``, ``value_proxy_ema``:
            :class:`torch.optim.swa_utils.AveragedModel`, ``avg ← d · avg + (1 − d) · θ`` after each step, the
            first step copied); 0 = none. They are not trained on and change no step; the rate stage's proxy
            scores read them where they exist.

    Raises:
        ValueError: an unknown option or an invalid value (:func:`check_options`); at fit start,
            ``caption_dropout > 0`` without a null caption.

    Batches: ``{"val": item, "train": item}`` with items as produced by
    :class:`alchemist_pl.data.ImageCaptionDataset` (image [B, 3, H, W], states [B, T, D], mask
    [B, T], pooled [B, D], index [B]).
    """

    def __init__(
        self,
        proxy,
        noise_scheduler,
        rater,
        proxy_optimizer,
        rater_optimizer,
        value_optimizer=None,
        rater_signal: str = "first_order",
        ul_init: float = 1.0,
        ul_decay: float = 0.03,
        ul_min: float = 0.0,
        grad_clip: float = 2.0,
        rater_timesteps: tuple[int, int] = (0, 600),
        baseline_momentum: float = 0.9,
        histogram_every: int = 50,
        rater_objective: str = "centred",
        lookahead_lr: float = 0.01,
        rater_timestep_sampling: str = "shared",
        rater_noise: str = "independent",
        rater_loss_weighting: str = "none",
        min_snr_gamma: float = 5.0,
        value_weights: str = "uniform",
        inner_steps: int = 1,
        signal_centring: bool = True,
        caption_dropout: float = 0.0,
        null_caption: dict | None = None,
        caption_contrast_weight: float = 0.0,
        contrast_timesteps: tuple[int, int] = (300, 500),
        contrast_model: str = "proxy",
        contrast_captions: int = 1,
        draws_per_sample: int = 1,
        logit_anchor: float = 0.0,
        value_timesteps: str = "signal",
        replay_steps: int = 0,
        replay_size: int = 512,
        replay_objective: str = "instance",
        ema_decay: float = 0.0,
    ):
        super().__init__()
        self.automatic_optimization = False
        models = ["proxy", "noise_scheduler", "rater", "proxy_optimizer", "rater_optimizer", "value_optimizer"]
        self.save_hyperparameters(ignore=[*models, "null_caption"])
        self.rater_t, self.contrast_t = check_options(self.hparams, noise_scheduler)
        self.proxy, self.noise_scheduler, self.rater = proxy, noise_scheduler, rater
        self.proxy_optimizer, self.rater_optimizer = proxy_optimizer, rater_optimizer
        self.value_optimizer = value_optimizer or proxy_optimizer
        self.value_proxy = copy.deepcopy(proxy) if rater_signal == "value_gap" else None
        self.null_caption = null_caption
        self.replay = SignalReplay(replay_size) if replay_steps > 0 else None
        # exponential moving averages of θ and θ′ (torch.optim.swa_utils), updated after each of their steps
        self.proxy_ema = _ema(proxy, ema_decay) if ema_decay > 0 else None
        self.value_proxy_ema = _ema(self.value_proxy, ema_decay) if ema_decay > 0 and self.value_proxy else None
        self.share_inner_grad = True  # exact: reuse the proxy step's training gradient (tests turn it off)
        self.seen_index: list[torch.Tensor] = []  # pool positions of the training batches ...
        self.seen_t: list[torch.Tensor] = []  # ... and the timesteps they saw (not checkpointed)
        self._init_running_statistics(baseline_momentum)

    def _init_running_statistics(self, momentum: float) -> None:
        """The signals' running statistics (checkpointed): per-bucket moments, baseline, mean of z."""
        self.value_moments = BucketMoments(*self.rater_t, NUM_BUCKETS, momentum)
        self.contrast_moments = BucketMoments(*self.contrast_t, NUM_BUCKETS, momentum)
        self.register_buffer("baseline", torch.zeros(NUM_BUCKETS))
        self.register_buffer("baseline_seen", torch.zeros(NUM_BUCKETS, dtype=torch.bool))
        self.register_buffer("z_mean", torch.zeros(()))
        self.register_buffer("z_seen", torch.zeros((), dtype=torch.bool))

    def configure_optimizers(self):
        opts = [self.proxy_optimizer(self.proxy.parameters()), self.rater_optimizer(self.rater.parameters())]
        if self.value_proxy is not None:
            opts.append(self.value_optimizer(self.value_proxy.parameters()))
        return opts

    def upper_level_weight(self) -> float:
        """``ul`` of Eq. 5 for the current epoch."""
        h = self.hparams
        return max(h.ul_min, h.ul_init - h.ul_decay * self.current_epoch)

    def set_null_caption(self, states: torch.Tensor, mask: torch.Tensor, pooled: torch.Tensor) -> None:
        """The empty caption's token states [T, D], mask [T] and pooled embedding [D]."""
        self.null_caption = {"states": states, "mask": mask, "pooled": pooled}

    def on_fit_start(self) -> None:
        if (self.value_proxy is not None or self.replay is not None) and getattr(
            self.trainer.precision_plugin, "scaler", None
        ) is not None:  # their steps (_plain_step) bypass the scaler
            raise ValueError(
                "rater_signal=value_gap and replay_steps > 0 need a precision without a gradient scaler "
                "(32-true, bf16-mixed)"
            )
        if self.hparams.caption_dropout > 0 and self.null_caption is None:
            raise ValueError(
                "caption_dropout > 0 needs the empty caption's embedding: pass null_caption= "
                "(alchemist_pl.signals.embed_null_caption) or call set_null_caption()"
            )

    def timestep_correlation(self, scores: np.ndarray) -> dict:
        """:func:`alchemist_pl.signals.timestep_correlation` of the pool's final scores [N] with the
        timesteps each pool sample saw in the training batches."""
        if not self.seen_index:
            return {"score_timestep_spearman": float("nan"), "samples_seen": 0}
        return timestep_correlation(scores, torch.cat(self.seen_index).numpy(), torch.cat(self.seen_t).numpy())

    # ------------------------------------------------------------ the algorithm box

    def training_step(self, batch, batch_idx):
        h, ul = self.hparams, self.upper_level_weight()
        raw = batch["train"]
        val, train = self._condition(batch["val"]), self._condition(raw)  # caption dropout, proxy terms only
        val_t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(val["image"]),))
        val_draw = (val_t.to(self.device), torch.randn_like(val["image"]))
        draw = self._draw(train)  # shared by θ and θ′
        self._record(raw, draw)
        s, b = self.rater(raw["image"], raw["pooled"])
        weights = sample_weights(s, b)  # Eq. 7, [B]
        val_loss = self._losses(self.proxy, val, *val_draw).mean()
        with torch.set_grad_enabled(ul < 1.0):  # warm-up: the proxy fits D_val only
            losses = draw.loss_weights * self._losses(self.proxy, draw.item, draw.t, draw.noise)  # ℓ(θ_k), [K·B]
        prime = None
        if self.value_proxy is not None:  # ℓ(θ′_k) at the same (t, ε), before either step
            with torch.set_grad_enabled(h.value_timesteps == "signal"):  # "signal": θ′ steps on this draw
                prime = draw.loss_weights * self._losses(self.value_proxy, draw.item, draw.t, draw.noise)
        inner = None
        if h.rater_signal == "exact":
            rater_loss, logs, inner = self._exact_loss(ul, val, val_draw, draw, weights)
        else:
            rater_loss, logs, signal = self._signal_loss(raw, draw, losses, prime, s, b)
        self._proxy_step(ul, val_loss, losses, weights, inner)  # Eq. 5
        if self.proxy_ema is not None:
            self.proxy_ema.update_parameters(self.proxy)
        if prime is not None:
            self._value_step(train, draw, prime, s)
            if self.value_proxy_ema is not None:
                self.value_proxy_ema.update_parameters(self.value_proxy)
        self._rater_step(rater_loss)
        if self.replay is not None:
            self.replay.add(raw["image"], raw["pooled"], signal)
            logs["rate/replay_loss"] = self._replay_steps(len(raw["image"]))
        self._log(val_loss, losses, rater_loss, s, b, weights, ul, logs)

    # ------------------------------------------------------------ steps

    def _proxy_step(self, ul, val_loss, losses, weights, inner=None):
        """One step of θ on ``ul · L_val + (1 − ul) · Σ_i W_i ℓ_i`` (Eq. 5), W held fixed."""
        opt, k = self.optimizers()[0], self.hparams.draws_per_sample
        opt.zero_grad()
        if inner is not None:  # the training part was computed once for the exact lookahead
            self.manual_backward(ul * val_loss)
            for p, g in zip([p for p in self.proxy.parameters() if p.requires_grad], inner):
                if g is not None:
                    p.grad = (1.0 - ul) * g if p.grad is None else p.grad.add_(g, alpha=1.0 - ul)
        elif ul < 1.0:
            self.manual_backward(ul * val_loss + (1.0 - ul) * (weights.detach().repeat(k) * losses).sum() / k)
        else:
            self.manual_backward(val_loss)
        opt.step()  # clipped in on_before_optimizer_step

    def _value_step(self, train, draw, prime, s):
        """``inner_steps`` steps of θ′ on ``Σ_i w_i ℓ_i(θ′)`` over the training batch only."""
        # The plain torch optimizer: θ′'s steps do not count as Lightning steps, so global_step stays
        # two per iteration (max_steps and checkpoint intervals keep their meaning).
        h, opt = self.hparams, self.optimizers(use_pl_optimizer=False)[2]
        w = torch.full_like(s, 1.0 / len(s)) if h.value_weights == "uniform" else torch.softmax(s.detach(), 0)
        w = w.detach().repeat(h.draws_per_sample) / h.draws_per_sample
        for step in range(h.inner_steps):
            if step > 0 or h.value_timesteps == "uniform":  # fresh (t, ε) on the same batch
                draw = self._draw(train, (0, self.noise_scheduler.config.num_train_timesteps))
                prime = draw.loss_weights * self._losses(self.value_proxy, draw.item, draw.t, draw.noise)
            self._plain_step(opt, (w * prime).sum(), self.value_proxy)

    def _plain_step(self, opt, loss, module) -> None:
        """A step of the plain torch optimizer ``opt`` on ``loss``, ``module``'s gradient norm clipped to
        ``grad_clip``: not a Lightning step (``global_step`` does not count it) and not through a
        GradScaler, which :meth:`on_fit_start` refuses for the runs that take such steps."""
        opt.zero_grad()
        self.manual_backward(loss)
        torch.nn.utils.clip_grad_norm_(module.parameters(), self.hparams.grad_clip)
        opt.step()

    def _rater_step(self, rater_loss):
        opt = self.optimizers()[1]
        opt.zero_grad()
        self.manual_backward(rater_loss)
        opt.step()  # clipped in on_before_optimizer_step

    def on_before_optimizer_step(self, optimizer) -> None:
        """Clip inside ``opt.step()``: after a GradScaler (16-mixed) unscaled the gradients, before the step."""
        self.clip_gradients(optimizer, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm")

    # ------------------------------------------------------------ helpers

    def _condition(self, item: dict) -> dict:
        if self.hparams.caption_dropout > 0:
            item, _ = drop_captions(item, self.null_caption, self.hparams.caption_dropout)
        return item

    def _draw(self, train: dict, band: tuple[int, int] | None = None) -> Draw:
        h = self.hparams
        uniform = band is not None and h.value_timesteps == "uniform"  # θ′'s own step: per-sample t over band
        mode, band = ("uniform", band) if uniform else (h.rater_timestep_sampling, self.rater_t)
        gamma = h.min_snr_gamma if h.rater_loss_weighting == "min_snr" else None
        shared = h.rater_noise == "shared"
        return draw_batch(train, h.draws_per_sample, mode, band, self.device, shared, self.noise_scheduler, gamma)

    def _losses(self, model, item, t, noise):
        return proxy_loss(model, self.noise_scheduler, item, t, noise)  # the proxy's hook at the caller's (t, ε)

    def _record(self, raw: dict, draw: Draw) -> None:
        if "index" in raw:
            self.seen_index.append(torch.as_tensor(raw["index"]).detach().cpu().repeat(self.hparams.draws_per_sample))
            self.seen_t.append(draw.t.detach().cpu())

    def _log(self, val_loss, losses, rater_loss, s, b, weights, ul, logs):
        probs = torch.softmax(s.detach(), dim=0)
        n = len(s)
        entropy = -(probs * probs.clamp(min=1e-12).log()).sum() / math.log(n)
        metrics = {
            "rate/val_loss": val_loss.detach(),
            "rate/train_loss": losses.detach().float().mean(),
            "rate/rater_loss": rater_loss.detach(),
            "rate/batch_weight": b.detach(),
            "rate/weight_entropy": entropy,
            "rate/instance_score_std": s.detach().std(),
            "rate/ul": ul,
            **logs,
        }
        self.log_dict(metrics, prog_bar=False, batch_size=n)
        self.log("val_loss", val_loss.detach(), prog_bar=True, batch_size=n)
        every = self.hparams.histogram_every
        if every and self.global_step % (2 * every) == 0:  # two Lightning steps per iteration
            log_histogram(self.loggers, "rate/weights", (weights.detach() * n).cpu(), self.global_step)
