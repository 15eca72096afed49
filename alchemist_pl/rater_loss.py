"""The rater's loss for each signal of the bilevel loop (:class:`alchemist_pl.bilevel.BilevelRater`).

A mixin of :class:`~alchemist_pl.bilevel.BilevelRater`: the methods read its proxy, hyperparameters,
running statistics (``baseline``, ``z_mean``, ``value_moments``, ``contrast_moments``) and
``_losses``. Every signal is taken at θ_k, before the proxy's step, and is detached: only the
rater's weights carry a gradient.

Signals (``rater_signal``):

- ``first_order``: the paper's rule (Eq. 9-10), the penalty method without its value-function
  term: the signal is ℓ_i(θ). ``rater_objective="centred"`` (default) uses
  ``rel_i = (ℓ_i − c_t) / c_t`` (``c_t``: running softmax-weighted mean loss of the timestep
  bucket) for the instance head and ``b · (z − E[z])``, ``z = mean_i rel_i``, for the batch head;
  ``"literal"`` minimises ``Σ_i W_i ℓ_i`` as written, which drives b to 0 (every ℓ_i > 0).
- ``value_gap``: the penalty method with the value-function term kept: the signal is
  ``d_i = ℓ_i(θ) − ℓ_i(θ′)`` (low: the D_val-informed model explains sample i better than a model
  of the weighted pool — RHO-LOSS's reducible loss, Mindermann et al. 2022), scaled by its running
  standard deviation per timestep bucket and centred by its running mean (``signal_centring``),
  with the same two-head loss as ``centred``. θ′ (``value_proxy``) is a copy of θ at construction
  (same architecture, same initial weights) with its own optimizer; with ``value_timesteps="uniform"``
  it learns the pool at every timestep, as θ learns D_val, so that the gap at the signal's low
  timesteps does not just measure which model specialised there.
- ``exact``: the exact one-step meta-gradient ``dL_val(θ′)/dμ``, ``θ′ = θ − η ∇_θ Σ_i W_i ℓ_i(θ)``
  (:mod:`alchemist_pl.metagrad`, one forward-mode JVP); the lookahead's inner gradient doubles as
  the training part of the proxy step (single process without a gradient scaler).

Both ``first_order`` (centred) and ``value_gap`` centre the batch head's term by the running mean
of the batch signal ``z`` (without it b drifts to 0 or 1 as the signal's level moves during
training). ``logit_anchor = λ`` adds ``λ · mean_B(a)²``: the batch softmax leaves the instance
logits' common level free, and Adam otherwise drifts it until the sigmoid saturates.

Replay (``replay_steps`` > 0): the per-sample signal of each batch (after the draws' mean and the
caption contrast) goes with its samples into a buffer (:class:`alchemist_pl.replay.SignalReplay`), and
extra rater steps on buffer batches minimise the instance-head term above (``replay_objective="instance"``)
or the squared error between the instance logit and the negated signal (``"regression"``). The batch
head learns from live batches only. The replay steps use the rater's optimizer without counting as
Lightning steps; their backward goes through ``manual_backward``, so under DDP the data-parallel
reducer averages their rater gradients over the ranks as it does the live step's.

Captions: ``caption_dropout`` replaces a share of captions (token states, mask and pooled) by the
empty caption's in both proxy terms and for θ′ (needs ``null_caption``). A proxy with a projection
class embedding (diffusers ``class_embed_type="projection"``) gets the pooled caption as
``class_labels``. ``caption_contrast_weight = λ > 0`` subtracts ``λ · c_i / σ_c`` from the signal,
``c_i = ℓ_i(θ | caption of sample i+1) − ℓ_i(θ | own caption)`` at a timestep of
``contrast_timesteps`` with the first draw's noise (a caption that does not help denoise its image
looks worse); the mean gap is logged per 100-step timestep band (``rate/caption_gap_t{band}``).
``contrast_captions = K`` averages the first term over the captions of samples i+1..i+K;
``contrast_model="value"`` takes both terms from θ′ instead of θ (``value_gap`` only): θ′ has fitted
the pool's own captions, θ mostly D_val's, so θ′ can tell a pool image's caption from another's
where θ must generalise to captions it never saw.
"""

from __future__ import annotations

import logging

import torch

from .diffusion import draw_timesteps
from .metagrad import detached_params, exact_meta_gradient, math_attention, proxy_loss_fn
from .rater import sample_weights
from .signals import roll_captions

log = logging.getLogger(__name__)


class RaterLosses:
    """Rater-loss methods of :class:`alchemist_pl.bilevel.BilevelRater` (see the module docstring)."""

    def _signal_loss(self, raw, draw, losses, prime, s, b):
        """The rater's loss for ``first_order`` / ``value_gap`` (signal from θ_k, detached), its logs and
        the per-sample signal [B] of the instance head (None for the literal objective)."""
        h, k = self.hparams, self.hparams.draws_per_sample
        if h.rater_signal == "first_order" and h.rater_objective == "literal":
            return (sample_weights(s, b).repeat(k) * losses.detach()).sum() / k, {}, None
        if h.rater_signal == "first_order":
            signal, logs = self._relative_loss(losses.detach(), s, draw.t)
        else:
            signal, logs = self._value_gap(losses.detach(), prime.detach(), draw.t)
        signal = signal.view(k, -1).mean(0)
        if h.caption_contrast_weight > 0:
            contrast, more = self._caption_contrast(raw, draw)
            signal, logs = signal - h.caption_contrast_weight * contrast, {**logs, **more}
        z = signal.mean()  # how the batch as a whole compares (independent of the rater) ...
        if not bool(self.z_seen):
            self.z_mean.fill_(float(z))
            self.z_seen.fill_(True)
        z_ref = self.z_mean.clone()  # ... to the usual batch (running mean over every iteration)
        self.z_mean.mul_(h.baseline_momentum).add_((1 - h.baseline_momentum) * z)
        # instance head: Σ_i softmax(s)_i · b · signal_i (b held fixed); batch head: b · (z − E[z]).
        return self._instance_loss(s, b, signal) + b * (z - z_ref), logs, signal

    def _instance_loss(self, s, b, signal):
        """``Σ_i softmax_B(s)_i · b · signal_i`` (b held fixed) ``+ λ · mean_B(a)²`` (``logit_anchor``)."""
        anchor = self.hparams.logit_anchor * torch.logit(s, eps=1e-6).mean().pow(2)
        return (torch.softmax(s, 0) * b.detach() * signal).sum() + anchor

    def _replay_loss(self, s, b, signal):
        """The loss of a replay step on buffer rows: ``replay_objective="instance"``: :meth:`_instance_loss`;
        ``"regression"``: ``mean_B (a_i + signal_i)²``, the instance logit ``a`` regressed on the negated
        signal (a keep-score in the signal's units; the signal is centred, so this also anchors ``a``'s level)."""
        if self.hparams.replay_objective == "instance":
            return self._instance_loss(s, b, signal)
        return (torch.logit(s, eps=1e-6) + signal).pow(2).mean()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """The replay buffer goes into the checkpoint (``checkpoint["replay"]``), so a resumed rating
        replays the rows the uninterrupted one would."""
        if self.replay is not None:
            checkpoint["replay"] = self.replay.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.replay is None:
            return
        if "replay" not in checkpoint:
            log.warning("the checkpoint holds no replay buffer (written without replay): it starts empty")
            return
        self.replay.load_state_dict(checkpoint["replay"])

    def _replay_steps(self, n: int) -> torch.Tensor:
        """``replay_steps`` rater steps on random buffer batches of ``n`` samples; returns their mean loss."""
        h, opt = self.hparams, self.optimizers(use_pl_optimizer=False)[1]  # not counted as Lightning steps
        total = torch.zeros((), device=self.device)
        for _ in range(h.replay_steps):
            images, pooled, signal = self.replay.sample(n)
            s, b = self.rater(images, pooled)
            loss = self._replay_loss(s, b, signal)
            self._plain_step(opt, loss, self.rater)
            total += loss.detach()
        return total / h.replay_steps

    def _relative_loss(self, losses, s, t):
        """``(ℓ_i − c_t) / c_t`` [K·B], with ``c_t`` the running softmax-weighted mean of the bucket."""
        probs = torch.softmax(s.detach(), 0).repeat(self.hparams.draws_per_sample)
        buckets = self.value_moments.bucket(t)
        updates = {}
        for j in buckets.unique().tolist():
            sel = buckets == j
            updates[j] = (probs[sel] * losses[sel]).sum() / probs[sel].sum()
            if not bool(self.baseline_seen[j]):
                self.baseline[j], self.baseline_seen[j] = updates[j], True
        c = self.baseline[buckets].clamp(min=1e-8)
        m = self.hparams.baseline_momentum
        for j, value in updates.items():
            self.baseline[j] = m * self.baseline[j] + (1 - m) * value
        return (losses - c) / c, {}

    def _value_gap(self, losses, prime, t):
        """``d = ℓ(θ) − ℓ(θ′)`` [K·B] in units of its running standard deviation per timestep bucket."""
        d = losses.float() - prime.float()
        signal = self.value_moments.normalise(d, t, centre=self.hparams.signal_centring)
        self.value_moments.update(d, t)
        return signal, {"rate/value_gap": d.mean(), "rate/value_gap_z": signal.mean()}

    @torch.no_grad()
    def _caption_contrast(self, raw, draw):
        """``c_i / σ_c`` [B]: ``mean_k ℓ_i(m | caption of i+k) − ℓ_i(m | own caption)``, k = 1..K
        (``contrast_captions``), at one contrast timestep with the first draw's noise for every caption;
        ``m`` = θ (``contrast_model="proxy"``) or θ′ (``"value"``).

        Raises:
            ValueError: K ≥ B (a roll by B pairs a sample with its own caption).
        """
        b, k = len(raw["image"]), self.hparams.contrast_captions
        if k >= b:
            raise ValueError(f"contrast_captions={k} needs a training batch of more than {k} samples, got {b}")
        model = self.value_proxy if self.hparams.contrast_model == "value" else self.proxy
        t = draw_timesteps("shared", b, *self.contrast_t, device=self.device)
        noise = draw.noise[:b]
        own = self._losses(model, raw, t, noise)
        gap = torch.stack([self._losses(model, roll_captions(raw, j), t, noise) for j in range(1, k + 1)]).mean(0) - own
        z = self.contrast_moments.normalise(gap, t)
        self.contrast_moments.update(gap, t)
        band = int(t[0]) // 100 * 100
        return z, {f"rate/caption_gap_t{band}": gap.mean(), f"rate/caption_gap_rel_t{band}": gap.mean() / own.mean()}

    def _exact_loss(self, ul, val, val_draw, draw, weights):
        """``Σ_i g_i W_i(μ)``, ``g = ∂L_val(θ′)/∂W`` held fixed; returns the inner gradient if shared."""
        inner = None
        scaler = getattr(getattr(self._trainer, "precision_plugin", None), "scaler", None)
        single = getattr(self._trainer, "world_size", 1) == 1  # under DDP gradients must come from manual_backward
        train_fn = proxy_loss_fn(self.proxy, self.noise_scheduler, draw.item, draw.t, draw.noise)
        val_fn = proxy_loss_fn(self.proxy, self.noise_scheduler, val, *val_draw)
        params = detached_params(self.proxy)
        if ul < 1.0 and self.share_inner_grad and scaler is None and single:
            live = [p for p in self.proxy.parameters() if p.requires_grad]
            with torch.enable_grad():
                inner_loss = (
                    weights.detach() * draw.loss_weights * self._losses(self.proxy, draw.item, draw.t, draw.noise)
                ).sum()
                inner = torch.autograd.grad(inner_loss, live, allow_unused=True)
        with math_attention():
            meta, after = exact_meta_gradient(
                lambda p: train_fn(p) * draw.loss_weights,
                lambda p: val_fn(p).mean(),
                params,
                weights.detach(),
                self.hparams.lookahead_lr,
                inner_grad=inner,
            )
        meta = meta.float()
        logs = {"rate/meta_grad_std": meta.std(), "rate/val_loss_lookahead": after.float()}
        return (meta * weights).sum(), logs, inner
