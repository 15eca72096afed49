"""Exact one-step meta-gradient of the validation loss with respect to the per-sample weights.

One-step lookahead (DataRater, Calian et al. 2025)::

    θ'(w) = θ − η ∇_θ Σ_i w_i ℓ_i(θ)
    ∂L_val(θ')/∂w_i = −η ∇_θ L_val(θ') · ∇_θ ℓ_i(θ)

The right side for the whole batch is ONE forward-mode Jacobian-vector product
(``torch.autograd.forward_ad``) of the map ``θ -> (ℓ_1, ..., ℓ_B)(θ)`` along the tangent ``v = ∇_θ L_val(θ')``: no second-order backward and
no per-sample gradients. :func:`double_backward_meta_gradient` computes the same number by
differentiating through the inner gradient (``create_graph=True``); it exists as a test oracle and
as the baseline of ``benchmarks/metagrad_cost.py``.

Loss functions are passed as functions of a parameter dict (``{name: tensor}``, as
:func:`torch.func.functional_call` takes it), so the same code serves a diffusers UNet and a toy
model. They must be deterministic: the timesteps and the noise are fixed by the caller
(:func:`proxy_loss_fn`), because the JVP re-evaluates the training losses.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call

from .plugins import LossCall

Params = dict[str, torch.Tensor]


@contextmanager
def math_attention():
    """Use the math SDPA kernel: forward-mode and second-order AD are not implemented for the fused
    CPU attention kernels diffusers uses by default (environment.md, "Verified pitfalls")."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        yield


def detached_params(module: torch.nn.Module) -> Params:
    """``{name: parameter.detach()}`` of the trainable parameters of ``module`` (the θ of the lookahead)."""
    return {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}


def proxy_loss_fn(
    proxy, scheduler, batch: dict, timesteps: torch.Tensor, noise: torch.Tensor
) -> Callable[[Params], torch.Tensor]:
    """``params -> [B]`` per-sample losses of ``proxy`` at fixed timesteps and noise.

    Args:
        proxy: a module with the per-sample loss hook or ``UNet2DConditionModel``'s call signature
            (:func:`alchemist_pl.plugins.proxy_loss`).
        scheduler: diffusers ``DDPMScheduler``.
        batch: dict with ``image`` [B, C, H, W], ``states`` [B, T, D], ``mask`` [B, T], ``pooled`` [B, D].
        timesteps: [B] int64; noise: [B, C, H, W].
    """
    call = LossCall(proxy, scheduler)

    def fn(params: Params) -> torch.Tensor:
        named = {f"proxy.{n}": p for n, p in params.items()}
        return functional_call(call, named, (batch, timesteps, noise))

    return fn


def _check_lr(lr: float) -> None:
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")


def _losses_at(train_losses, params: Params, weights: torch.Tensor) -> tuple[Params, torch.Tensor]:
    """θ as leaves that require grad, and ℓ(θ) [B]; checks that ``weights`` match the losses."""
    theta = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    losses = train_losses(theta)
    if losses.shape != weights.shape:
        raise ValueError(f"weights must have the shape of the losses {tuple(losses.shape)}, got {tuple(weights.shape)}")
    return theta, losses


def _lookahead(params: Params, grads, lr: float) -> Params:
    return {n: p - lr * g for (n, p), g in zip(params.items(), grads)}


def _val_grad_after_lookahead(train_losses, val_loss, params: Params, w: torch.Tensor, lr: float, inner_grad):
    """``(∇L_val(θ'), L_val(θ'))`` at ``θ' = θ − η ∇_θ Σ_i w_i ℓ_i(θ)``; gradients in ``params`` order
    (None where L_val does not depend on a tensor), the inner gradient computed unless given."""
    names = list(params)
    with torch.enable_grad():
        if inner_grad is None:
            theta, losses = _losses_at(train_losses, params, w)
            inner_grad = torch.autograd.grad((w * losses).sum(), [theta[n] for n in names], allow_unused=True)
        inner_grad = [torch.zeros_like(params[n]) if g is None else g.detach() for n, g in zip(names, inner_grad)]
        ahead = {n: p.detach().requires_grad_(True) for n, p in _lookahead(params, inner_grad, lr).items()}
        after = val_loss(ahead)
        v = torch.autograd.grad(after, [ahead[n] for n in names], allow_unused=True)
    return v, after


def exact_meta_gradient(
    train_losses: Callable[[Params], torch.Tensor],
    val_loss: Callable[[Params], torch.Tensor],
    params: Params,
    weights: torch.Tensor,
    lr: float,
    inner_grad: tuple[torch.Tensor, ...] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``∂L_val(θ')/∂w`` for the whole batch with one forward-mode JVP.

    Args:
        train_losses: ``params -> [B]`` per-sample training losses ℓ_i(θ) (deterministic).
        val_loss: ``params -> []`` validation loss L_val (deterministic).
        params: θ, a dict of tensors (detached; they are not modified).
        weights: [B] per-sample weights w_i of the inner step (only their values are used).
        lr: η, the step size of the one-step SGD lookahead (> 0).
        inner_grad: ``∇_θ Σ_i w_i ℓ_i(θ)`` in ``params`` order if the caller already has it
            (it saves one forward and backward); computed here if None.

    Returns:
        ``(meta_grad [B], val_loss_after [])``: ``meta_grad_i = −η ∇L_val(θ')·∇ℓ_i(θ)`` and
        ``L_val(θ')``, both detached, in the dtype of the losses.

    Raises:
        ValueError: ``lr <= 0`` or ``weights`` not of shape [B].

    Chain into the rater with an ordinary backward: ``(meta_grad * w(μ)).sum().backward()`` gives
    ``dL_val(θ')/dμ``. Run under :func:`math_attention` for models with attention.
    """
    _check_lr(lr)
    w = weights.detach()
    names = list(params)
    v, after = _val_grad_after_lookahead(train_losses, val_loss, params, w, lr, inner_grad)
    # One forward pass with dual numbers θ + ε v: the tangent of the losses is [B] ∇ℓ_i(θ) · v.
    # (torch.autograd.forward_ad rather than torch.func.jvp: the same numbers, ~15% faster here.)
    with torch.no_grad(), fwAD.dual_level():
        dual = {
            n: fwAD.make_dual(params[n].detach(), torch.zeros_like(params[n]) if g is None else g)
            for n, g in zip(names, v)
        }
        directional = fwAD.unpack_dual(train_losses(dual)).tangent
    if directional is None:  # the losses do not depend on θ
        directional = torch.zeros_like(w)
    return (-lr * directional).detach(), after.detach()


def double_backward_meta_gradient(
    train_losses: Callable[[Params], torch.Tensor],
    val_loss: Callable[[Params], torch.Tensor],
    params: Params,
    weights: torch.Tensor,
    lr: float,
) -> torch.Tensor:
    """The same ``∂L_val(θ')/∂w`` [B] by differentiating through the inner gradient (``create_graph=True``).

    Several times the cost and memory of :func:`exact_meta_gradient`; a test oracle and a benchmark
    baseline. Same arguments and errors as :func:`exact_meta_gradient`.
    """
    _check_lr(lr)
    names = list(params)
    with torch.enable_grad():
        w = weights.detach().clone().requires_grad_(True)
        theta, losses = _losses_at(train_losses, params, w)
        grads = torch.autograd.grad((w * losses).sum(), [theta[n] for n in names], create_graph=True, allow_unused=True)
        grads = [torch.zeros_like(theta[n]) if g is None else g for n, g in zip(names, grads)]
        after = val_loss(_lookahead(theta, grads, lr))
        (meta,) = torch.autograd.grad(after, w)
    return meta.detach()
