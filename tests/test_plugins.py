"""The plugin contracts on real data: the proxy's per-sample loss hook (shape, same inputs -> same
losses, θ and θ′ on the same draw, the exact meta-gradient through the hook), the diffusers adapter,
and the downstream model's checks."""

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from lightning import LightningModule, Trainer
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader

from alchemist_pl.bilevel import BilevelRater
from alchemist_pl.diffusion import per_sample_loss
from alchemist_pl.metagrad import detached_params, double_backward_meta_gradient, exact_meta_gradient, proxy_loss_fn
from alchemist_pl.plugins import ProxyLoss, prepare_downstream, proxy_loss
from alchemist_pl.rater import ConvBackbone, Rater
from examples.tiny_proxy import TinyConvProxy

SCHED = DDPMScheduler(num_train_timesteps=1000)


def _batch(split, rows, size=16):
    b = {k: torch.stack([torch.as_tensor(split[i][k]) for i in rows]) for k in ("image", "states", "mask", "pooled")}
    b["image"] = torch.nn.functional.interpolate(b["image"], size=size, mode="area")
    return b


def _draw(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, 1000, (len(batch["image"]),), generator=g)
    return t, torch.randn(batch["image"].shape, generator=g, dtype=batch["image"].dtype)


class PixelLossProxy(TinyConvProxy):
    """Violates the contract: returns the unreduced [B, C, H, W] error."""

    def per_sample_loss(self, scheduler, images, states, mask, timesteps, noise, pooled):
        return (self(scheduler.add_noise(images, noise, timesteps), timesteps, pooled) - noise) ** 2


class OwnNoiseProxy(TinyConvProxy):
    """Violates the contract: ignores the caller's noise and draws its own."""

    def per_sample_loss(self, scheduler, images, states, mask, timesteps, noise, pooled):
        return super().per_sample_loss(scheduler, images, states, mask, timesteps, torch.randn_like(noise), pooled)


def test_example_proxy_meets_the_hook_protocol_and_losses_follow_the_draw(small_split):
    torch.manual_seed(0)
    proxy, batch = TinyConvProxy(), _batch(small_split, range(8))
    t, noise = _draw(batch)
    assert isinstance(proxy, ProxyLoss)
    losses = proxy_loss(proxy, SCHED, batch, t, noise)
    assert losses.shape == (8,) and losses.requires_grad and torch.isfinite(losses).all()
    assert torch.equal(losses, proxy_loss(proxy, SCHED, batch, t, noise))  # the caller's draw decides
    assert not torch.equal(losses, proxy_loss(proxy, SCHED, batch, t, -noise))
    assert not torch.equal(losses, proxy_loss(proxy, SCHED, batch, 999 - t, noise))


@pytest.mark.parametrize("text", [False, True])
def test_diffusers_adapter_is_the_denoising_loss(small_split, text):
    """A module without the hook: the UNet's denoising MSE, the pooled caption as class_labels when it
    has a class embedding (the shipped proxies: unet_tiny, unet_tiny_text)."""
    torch.manual_seed(0)
    extra = {"class_embed_type": "projection", "projection_class_embeddings_input_dim": 384} if text else {}
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8, cross_attention_dim=384,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=8, **extra,
    )  # fmt: skip
    batch = _batch(small_split, range(4))
    t, noise = _draw(batch)
    labels = batch["pooled"] if text else None
    expected = per_sample_loss(unet, SCHED, batch["image"], batch["states"], batch["mask"], t, noise, labels)
    assert torch.equal(proxy_loss(unet, SCHED, batch, t, noise), expected)


def test_hook_returning_the_wrong_shape_is_named(small_split):
    batch = _batch(small_split, range(4))
    with pytest.raises(ValueError, match=r"test_plugins\.PixelLossProxy\.per_sample_loss must return .*\[B\] = \(4,\)"):
        proxy_loss(PixelLossProxy(), SCHED, batch, *_draw(batch))


def test_hook_drawing_its_own_noise_is_refused(small_split):
    batch = _batch(small_split, range(4))
    with pytest.raises(ValueError, match=r"OwnNoiseProxy\.per_sample_loss gave different losses for the same inputs"):
        proxy_loss(OwnNoiseProxy(), SCHED, batch, *_draw(batch))


def test_module_without_hook_or_unet_signature_is_named(small_split):
    batch = _batch(small_split, range(4))
    with pytest.raises(
        TypeError, match=r"torch\.nn\.modules\.conv\.Conv2d cannot be the proxy: define per_sample_loss"
    ):
        proxy_loss(torch.nn.Conv2d(3, 3, 1), SCHED, batch, *_draw(batch))


def test_exact_meta_gradient_through_the_hook(small_split):
    """bilevel=exact runs the hook under functional_call and forward-mode AD: the JVP meta-gradient
    equals the double-backward one."""
    torch.manual_seed(0)
    proxy = TinyConvProxy(width=8).double()
    train, val = _batch(small_split, range(4), size=8), _batch(small_split, range(4, 10), size=8)
    train, val = ({k: v.double() if v.is_floating_point() else v for k, v in b.items()} for b in (train, val))
    train_fn, val_fn = (
        proxy_loss_fn(proxy, SCHED, train, *_draw(train)),
        proxy_loss_fn(proxy, SCHED, val, *_draw(val, 1)),
    )
    params, w = detached_params(proxy), torch.tensor([0.1, 0.4, 0.3, 0.2], dtype=torch.float64)
    exact, _ = exact_meta_gradient(train_fn, lambda p: val_fn(p).mean(), params, w, lr=0.05)
    oracle = double_backward_meta_gradient(train_fn, lambda p: val_fn(p).mean(), params, w, lr=0.05)
    assert exact.abs().min() > 0 and len(set(exact.tolist())) == 4
    torch.testing.assert_close(exact, oracle, rtol=1e-7, atol=1e-12)


def test_theta_and_value_proxy_get_the_same_draw_through_the_hook(small_split):
    """value_gap with a hook proxy: θ′'s inputs (noisy image, t, caption) equal θ's on the training batch."""
    torch.manual_seed(0)
    rater = Rater(ConvBackbone(channels=(16, 16), feature_dim=32), hidden_dim=16)
    opt = lambda params: torch.optim.AdamW(params, lr=1e-3)  # noqa: E731
    proxy = TinyConvProxy(width=8)
    model = BilevelRater(proxy, SCHED, rater, opt, opt, rater_signal="value_gap", ul_init=0.5, histogram_every=0)
    calls = {"proxy": [], "value_proxy": []}
    for name in calls:
        record = lambda module, args, name=name: calls[name].append([a.detach().clone() for a in args])  # noqa: E731
        getattr(model, name).register_forward_pre_hook(record)
    data = [small_split[i] for i in range(32)]
    loaders = {k: DataLoader(data[j : j + 16], batch_size=16) for k, j in (("val", 0), ("train", 16))}
    trainer = Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(model, CombinedLoader(loaders, mode="max_size_cycle"))
    theirs = calls["value_proxy"]
    ours = [c for c in calls["proxy"] if torch.equal(c[2], theirs[0][2])]  # θ's calls on the training batch
    assert len(theirs) >= 1 and len(ours) >= 1
    assert all(torch.equal(a, b) for c in theirs for a, b in zip(c, ours[0]))


class NoTestStep(LightningModule):
    def training_step(self, batch, batch_idx):
        return None


class NoImages(NoTestStep):
    def test_step(self, batch, batch_idx):
        return None


def test_downstream_model_without_test_step_or_images_is_named():
    with pytest.raises(
        TypeError, match=r"downstream model examples\.tiny_proxy\.TinyConvProxy must be a LightningModule"
    ):
        prepare_downstream(TinyConvProxy(), None, evaluate=False)
    with pytest.raises(TypeError, match=r"test_plugins\.NoTestStep must define test_step"):
        prepare_downstream(NoTestStep(), None, evaluate=False)
    with pytest.raises(
        TypeError, match=r"eval.enabled=true, but the downstream model .*NoImages defines no generate_images"
    ):
        prepare_downstream(NoImages(), None, evaluate=True)
