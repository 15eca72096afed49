"""The contracts a user's own models meet: the proxy's per-sample loss hook and the downstream model.

**Proxy** (θ of the bilevel loop, ``proxy.unet`` in the config): any ``torch.nn.Module`` that either

- defines the hook :class:`ProxyLoss` ``per_sample_loss(scheduler, images, states, mask, timesteps,
  noise, pooled) -> [B]``, or
- has diffusers ``UNet2DConditionModel``'s call signature (``forward(sample, timestep,
  encoder_hidden_states=..., encoder_attention_mask=...)`` returning ``.sample``): then
  :func:`alchemist_pl.diffusion.per_sample_loss` is its hook (the shipped proxies).

The caller draws the timesteps and the noise, so that θ and the value-function copy θ′ are compared on
the same (t, ε) (common random numbers); the hook must not draw its own. :func:`proxy_loss` calls the
hook, checks the shape of what it returns and, the first time it calls a hook on a module, that the
hook gives the same losses for the same inputs.

**Downstream model** (``model`` in the config): any ``LightningModule`` that trains on the batches of
:class:`alchemist_pl.datamodule.TrainingDataModule` and defines ``test_step``. Optional methods the
train stage calls when present (:func:`prepare_downstream`): ``set_null_caption``,
``set_sample_prompts``; and, for the evaluation callback, ``generate_images`` (:func:`generate_images`).
"""

from __future__ import annotations

import inspect
import weakref
from typing import Protocol, runtime_checkable

import torch
from lightning import LightningModule
from lightning.pytorch.utilities.model_helpers import is_overridden

from .diffusion import per_sample_loss
from .sampling import generate

#: modules whose hook passed the same-inputs check of :func:`proxy_loss`
_checked: weakref.WeakSet = weakref.WeakSet()


@runtime_checkable
class ProxyLoss(Protocol):
    """The proxy's per-sample loss hook (``ℓ_i(θ)`` of Alchemist Eq. 2-3).

    ``per_sample_loss(scheduler, images, states, mask, timesteps, noise, pooled) -> losses``, called
    with keyword arguments:

    - scheduler: the noise schedule (``bilevel.noise_scheduler``, diffusers ``DDPMScheduler``;
      ``scheduler.add_noise(images, noise, timesteps)`` noises the images);
    - images: [B, C, H, W] float32 clean images in [-1, 1];
    - states: [B, T, D] float32 caption token states (T = ``data.max_tokens``, D = 384);
    - mask: [B, T] bool, True = real token;
    - pooled: [B, D] float32 sentence embedding of the caption;
    - timesteps: [B] int64 in [0, ``scheduler.config.num_train_timesteps``);
    - noise: [B, C, H, W] standard Gaussian noise, drawn by the caller;
    - returns: [B] floating per-sample losses, differentiable in the module's parameters.

    The losses must be a function of the arguments and the parameters alone (no random draws inside),
    and with ``bilevel=exact`` work under ``torch.func.functional_call`` and forward-mode AD.
    """

    def per_sample_loss(
        self,
        scheduler,
        images: torch.Tensor,
        states: torch.Tensor,
        mask: torch.Tensor,
        timesteps: torch.Tensor,
        noise: torch.Tensor,
        pooled: torch.Tensor,
    ) -> torch.Tensor: ...


def module_name(module) -> str:
    """``package.module.Class`` of ``module``'s class, for error messages."""
    return f"{type(module).__module__}.{type(module).__qualname__}"


def proxy_loss(proxy, scheduler, batch: dict, timesteps: torch.Tensor, noise: torch.Tensor, check: bool = True):
    """Per-sample losses ``ℓ_i(θ)`` [B] of ``proxy`` on ``batch`` at the caller's (t, ε).

    Args:
        proxy: a module with the :class:`ProxyLoss` hook, or with ``UNet2DConditionModel``'s call
            signature (then :func:`alchemist_pl.diffusion.per_sample_loss`, with ``batch["pooled"]``
            as ``class_labels`` when the module has a ``class_embedding``).
        scheduler: diffusers ``DDPMScheduler``.
        batch: ``image`` [B, C, H, W], ``states`` [B, T, D], ``mask`` [B, T], ``pooled`` [B, D].
        timesteps: [B] int64; noise: [B, C, H, W].
        check: on the first call of a hook on this module, call it twice and compare (turned off
            inside :func:`torch.func.functional_call`).

    Returns:
        [B] losses in the hook's dtype.

    Raises:
        TypeError: the proxy has neither the hook nor the diffusers call signature.
        ValueError: the hook returned something other than a floating tensor of shape [B], or, on
            the first call, different losses for the same inputs (it draws its own t, ε or dropout).
    """
    hook = getattr(proxy, "per_sample_loss", None)
    if hook is None:
        return _diffusers_loss(proxy, scheduler, batch, timesteps, noise)
    args = {
        "scheduler": scheduler,
        "images": batch["image"],
        "states": batch["states"],
        "mask": batch["mask"],
        "timesteps": timesteps,
        "noise": noise,
        "pooled": batch["pooled"],
    }
    first = check and proxy not in _checked
    if first:
        with torch.no_grad():
            reference = check_losses(proxy, hook(**args), len(batch["image"]))
    losses = check_losses(proxy, hook(**args), len(batch["image"]))
    if first:
        _check_same(proxy, reference, losses.detach())
        _checked.add(proxy)
    return losses


def check_losses(proxy, losses, batch_size: int) -> torch.Tensor:
    """``losses`` if it is a floating tensor of shape [``batch_size``]; else ValueError naming the proxy."""
    shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else None
    if shape != (batch_size,) or not losses.is_floating_point():
        got = f"a {losses.dtype} tensor of shape {shape}" if shape is not None else repr(type(losses))
        raise ValueError(
            f"{module_name(proxy)}.per_sample_loss must return one floating loss per sample, shape [B] = "
            f"({batch_size},), got {got}"
        )
    return losses


def _check_same(proxy, a: torch.Tensor, b: torch.Tensor) -> None:
    if not torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-6):
        raise ValueError(
            f"{module_name(proxy)}.per_sample_loss gave different losses for the same inputs "
            f"(max difference {(a.float() - b.float()).abs().max().item():.3g}): the hook must use the "
            "caller's timesteps and noise and draw nothing itself (θ and θ′ are compared on the same draw)"
        )


def _diffusers_loss(proxy, scheduler, batch, timesteps, noise) -> torch.Tensor:
    forward = getattr(proxy, "forward", None)
    if forward is None or "encoder_hidden_states" not in inspect.signature(forward).parameters:
        raise TypeError(
            f"{module_name(proxy)} cannot be the proxy: define per_sample_loss(scheduler, images, states, mask, "
            "timesteps, noise, pooled) -> [B] (alchemist_pl.plugins.ProxyLoss), or give it "
            "UNet2DConditionModel's call signature forward(sample, timestep, encoder_hidden_states, ...)"
        )
    labels = batch["pooled"] if getattr(proxy, "class_embedding", None) is not None else None
    return per_sample_loss(proxy, scheduler, batch["image"], batch["states"], batch["mask"], timesteps, noise, labels)


class LossCall(torch.nn.Module):
    """``forward(batch, timesteps, noise) -> proxy_loss(proxy, ...)``: the hook as a module's forward, so
    :func:`torch.func.functional_call` can run it with substituted parameters (names ``proxy.<name>``)."""

    def __init__(self, proxy: torch.nn.Module, scheduler):
        super().__init__()
        self.proxy = proxy
        self.scheduler = scheduler

    def forward(self, batch: dict, timesteps: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return proxy_loss(self.proxy, self.scheduler, batch, timesteps, noise, check=False)


# ---------------------------------------------------------------- the downstream model


def prepare_downstream(model, datamodule, evaluate: bool) -> None:
    """Give the downstream model what the train stage has for it, and check it can be trained and tested.

    Calls, when the model defines them:

    - ``set_null_caption(states [T, D] float32, mask [T] bool)``: the empty caption (caption dropout, CFG);
    - ``set_sample_prompts({"states": [M, T, D] float32, "mask": [M, T] bool, "captions": M str})``: the
      first ``M = model.hparams.num_samples`` (default 16) test captions, for a sample grid.

    Raises:
        TypeError: the model is not a ``LightningModule`` with ``training_step`` and ``test_step``, or
            ``evaluate`` (``eval.enabled``) and it can generate no images (:func:`generate_images`).
    """
    name = module_name(model)
    if not isinstance(model, LightningModule):
        raise TypeError(f"the downstream model {name} must be a LightningModule")
    missing = [m for m in ("training_step", "test_step") if not is_overridden(m, model)]
    if missing:
        raise TypeError(f"the downstream model {name} must define {' and '.join(missing)} (a LightningModule)")
    if evaluate and not hasattr(model, "generate_images") and not _is_diffusers_t2i(model):
        raise TypeError(
            f"eval.enabled=true, but the downstream model {name} defines no generate_images(states, mask, "
            "num_inference_steps, guidance_scale, seed, batch_size) -> [M, 3, H, W]; define it or set eval.enabled=false"
        )
    if hasattr(model, "set_null_caption"):
        model.set_null_caption(*datamodule.null_caption())
    if hasattr(model, "set_sample_prompts"):
        num = getattr(model, "hparams", {}).get("num_samples", 16)
        model.set_sample_prompts(datamodule.sample_prompts(int(num)))


def _is_diffusers_t2i(model) -> bool:
    return all(hasattr(model, a) for a in ("unet", "sampling_scheduler", "null_states", "null_mask"))


def generate_images(
    model, states, mask, num_inference_steps: int, guidance_scale: float, seed: int, batch_size: int
) -> torch.Tensor:
    """Images of the downstream model for M prompts, [M, 3, H, W] float32 in [-1, 1] on the CPU.

    ``model.generate_images(states, mask, num_inference_steps, guidance_scale, seed, batch_size)`` when
    the model defines it (states [M, T, D] float32, mask [M, T] bool; the same seed must give the
    same images); else, for a model with ``unet``, ``sampling_scheduler``, ``null_states`` and
    ``null_mask`` (:class:`alchemist_pl.t2i.TextToImageModule`), :func:`alchemist_pl.sampling.generate`.
    """
    if hasattr(model, "generate_images"):
        return model.generate_images(states, mask, num_inference_steps, guidance_scale, seed, batch_size)
    return generate(
        model.unet,
        model.sampling_scheduler,
        states,
        mask,
        model.null_states,
        model.null_mask,
        num_inference_steps,
        guidance_scale,
        seed=seed,
        batch_size=batch_size,
    )
