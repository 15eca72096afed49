"""The exact one-step meta-gradient by forward-mode JVP against double backward and finite differences."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

from alchemist_pl.metagrad import (
    detached_params,
    double_backward_meta_gradient,
    exact_meta_gradient,
    math_attention,
    proxy_loss_fn,
)

LR = 0.5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _finite_differences(train_losses, val_loss, params, w, lr, eps=1e-6) -> torch.Tensor:
    """Central differences of w -> L_val(θ − η ∇θ Σ w_i ℓ_i(θ)), one weight at a time."""
    names = list(params)

    def outer(weights):
        theta = {n: p.detach().requires_grad_(True) for n, p in params.items()}
        with torch.enable_grad():
            grads = torch.autograd.grad((weights * train_losses(theta)).sum(), [theta[n] for n in names])
        with torch.no_grad():
            return val_loss({n: params[n] - lr * g for n, g in zip(names, grads)})

    out = torch.empty_like(w)
    for i in range(len(w)):
        e = torch.zeros_like(w)
        e[i] = eps
        out[i] = (outer(w + e) - outer(w - e)) / (2 * eps)
    return out


def _check(train_losses, val_loss, params, w):
    exact, after = exact_meta_gradient(train_losses, val_loss, params, w, LR)
    oracle = double_backward_meta_gradient(train_losses, val_loss, params, w, LR)
    fd = _finite_differences(train_losses, val_loss, params, w, LR)
    assert exact.shape == w.shape and exact.dtype == torch.float64
    assert exact.abs().max() > 1e-6  # a non-trivial signal, not all zeros
    assert _rel(exact, oracle) < 1e-4, (exact, oracle)
    assert _rel(exact, fd) < 1e-4, (exact, fd)
    assert torch.isfinite(after)
    return exact


def tiny_attention_unet():
    """An 8 px UNet2DConditionModel that reads the caption (cross-attention at 4x4), seeded."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 8),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        mid_block_type=None,
        cross_attention_dim=384,
        attention_head_dim=4,
        norm_num_groups=4,
    )


def test_exact_meta_gradient_on_a_tiny_mlp():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    xv, yv = torch.randn(10, 5, dtype=torch.float64), torch.randn(10, dtype=torch.float64)

    def train_losses(p):
        return (functional_call(net, p, (x,)).squeeze(-1) - y) ** 2

    def val_loss(p):
        return ((functional_call(net, p, (xv,)).squeeze(-1) - yv) ** 2).mean()

    w = torch.softmax(torch.randn(6, dtype=torch.float64), 0)
    _check(train_losses, val_loss, detached_params(net), w)


def _proxy_check(unet, small_split):
    """_check on real emoji + captions at 8 px: 4 training samples at one shared timestep, 6 for D_val."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000)
    items = [small_split[i] for i in range(10)]

    def batch(rows):
        b = {k: torch.stack([torch.as_tensor(items[i][k]) for i in rows]) for k in ("image", "states", "mask")}
        b["image"] = torch.nn.functional.interpolate(b["image"], size=8, mode="area").double()
        b["states"] = b["states"].double()
        return b

    train, val = batch(range(4)), batch(range(4, 10))
    gen = torch.Generator().manual_seed(1)
    t_train = torch.full((4,), 300)  # shared timestep, as the bilevel loop draws it
    t_val = torch.randint(0, 1000, (6,), generator=gen)
    n_train = torch.randn(train["image"].shape, generator=gen, dtype=torch.float64)
    n_val = torch.randn(val["image"].shape, generator=gen, dtype=torch.float64)
    train_losses = proxy_loss_fn(unet, sched, train, t_train, n_train)
    val_fn = proxy_loss_fn(unet, sched, val, t_val, n_val)
    w = torch.tensor([0.1, 0.4, 0.3, 0.2], dtype=torch.float64)
    with math_attention():
        exact = _check(train_losses, lambda p: val_fn(p).mean(), detached_params(unet), w)
    assert len(set(exact.tolist())) == 4  # samples get different meta-gradients


def test_exact_meta_gradient_on_a_tiny_diffusers_proxy(small_split):
    """The real proxy path: a tiny UNet2DConditionModel with cross-attention on real emoji + captions."""
    _proxy_check(tiny_attention_unet().double(), small_split)


def test_exact_meta_gradient_on_a_tiny_pixart_proxy(small_split):
    """The optional transformer proxy (conf/proxy/pixart_tiny.yaml's class) at 8 px, one layer."""
    from alchemist_pl.diffusion import PixArtProxy

    torch.manual_seed(0)
    proxy = PixArtProxy(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        patch_size=2,
        num_layers=1,
        num_attention_heads=2,
        attention_head_dim=8,
        cross_attention_dim=16,
        caption_channels=384,
        norm_num_groups=1,
    )
    _proxy_check(proxy.double(), small_split)


def test_inner_grad_reuse_and_errors():
    torch.manual_seed(0)
    net = nn.Linear(3, 1).double()
    x = torch.randn(4, 3, dtype=torch.float64)

    def train_losses(p):
        return functional_call(net, p, (x,)).squeeze(-1) ** 2

    def val_loss(p):
        return functional_call(net, p, (x + 1,)).pow(2).mean()

    params = detached_params(net)
    w = torch.full((4,), 0.25, dtype=torch.float64)
    theta = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    inner = torch.autograd.grad((w * train_losses(theta)).sum(), list(theta.values()))
    a, _ = exact_meta_gradient(train_losses, val_loss, params, w, LR)
    b, _ = exact_meta_gradient(train_losses, val_loss, params, w, LR, inner_grad=inner)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="lr"):
        exact_meta_gradient(train_losses, val_loss, params, w, 0.0)
    with pytest.raises(ValueError, match="shape"):
        exact_meta_gradient(train_losses, val_loss, params, w[:3], LR)
