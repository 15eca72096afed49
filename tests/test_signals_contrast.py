"""The mismatched-caption contrast of the rater's signal: which model it reads (θ or θ′), its sign,
and the average over several other captions; on real emoji with their real caption embeddings."""

import pytest
import torch
from diffusers import DDPMScheduler
from torch import nn
from torch.utils.data import DataLoader

from alchemist_pl.analysis import auroc
from alchemist_pl.bilevel import BilevelRater
from alchemist_pl.data import load_split
from alchemist_pl.draws import draw_batch
from alchemist_pl.rater import ConvBackbone, Rater
from alchemist_pl.signals import roll_captions

B, SWAPPED = 16, [0, 1, 2, 3]  # the planted caption swaps: samples 0-3 carry each other's captions


class CaptionReader(nn.Module):
    """A proxy with the per-sample loss hook: how badly a linear read-out of the image predicts the
    caption's pooled embedding, ``mean((x W − s · pooled)²)``; ``s = 0`` reads no caption."""

    def __init__(self, pixels: int, dim: int = 384):
        super().__init__()
        self.read = nn.Parameter(torch.zeros(pixels, dim))
        self.register_buffer("caption_scale", torch.zeros(()))

    def per_sample_loss(self, scheduler, images, states, mask, timesteps, noise, pooled):
        return (images.flatten(1) @ self.read - self.caption_scale * pooled).pow(2).mean(1)


@pytest.fixture(scope="module")
def batch(tiny_split):
    """16 real emoji at 8 px; the captions of samples 0-3 rotated among themselves (caption swaps)."""
    clean = next(iter(DataLoader(tiny_split, batch_size=B)))
    swapped = dict(clean)
    for k in ("states", "mask", "pooled"):
        swapped[k] = clean[k].clone()
        swapped[k][SWAPPED] = clean[k][SWAPPED].roll(1, dims=0)
    return clean, swapped


@pytest.fixture(scope="module")
def tiny_split(emoji_dir, cache_dir):
    return load_split(emoji_dir / "val", resolution=8, cache_dir=cache_dir, limit=64)


def _model(clean: dict, **options) -> BilevelRater:
    """θ reads no caption; θ′ has fitted the batch's true (image, caption) pairs (least squares)."""
    torch.manual_seed(0)
    proxy = CaptionReader(clean["image"][0].numel())
    rater = Rater(ConvBackbone(channels=(16, 16), feature_dim=32), hidden_dim=16)
    opt = lambda params: torch.optim.AdamW(params, lr=1e-3)  # noqa: E731
    options = {"rater_signal": "value_gap", "histogram_every": 0, "caption_contrast_weight": 1.0, **options}
    model = BilevelRater(proxy, DDPMScheduler(num_train_timesteps=1000), rater, opt, opt, **options)
    fit = torch.linalg.lstsq(clean["image"].flatten(1), clean["pooled"].float()).solution
    model.value_proxy.read.data.copy_(fit)
    model.value_proxy.caption_scale.fill_(1.0)
    return model


def _rater_gradient(model, item) -> torch.Tensor:
    """∂(rater loss)/∂s [B] with a zero value gap, so that the caption contrast alone moves the rater."""
    draw = draw_batch(item, 1, "shared", model.rater_t, "cpu")
    zeros = torch.zeros(B)
    s, b = torch.full((B,), 0.5, requires_grad=True), torch.tensor(1.0)
    loss, _, _ = model._signal_loss(item, draw, zeros, zeros, s, b)
    loss.backward()
    return s.grad


def test_contrast_of_the_value_proxy_moves_the_rater_towards_samples_with_their_own_caption(batch):
    """θ′ knows the pool's captions: the rater's gradient raises the clean samples' scores above the
    caption-swapped ones. Fails if the contrast's sign is flipped or θ is read instead of θ′."""
    clean, swapped = batch
    grad = _rater_gradient(_model(clean, contrast_model="value"), swapped)
    ok = torch.ones(B, dtype=torch.bool)
    ok[SWAPPED] = False
    assert auroc(-grad[ok].numpy(), -grad[~ok].numpy()) > 0.95  # descent raises s where the gradient is low


def test_contrast_of_a_caption_blind_proxy_says_nothing(batch):
    """contrast_model=proxy reads θ, which ignores captions here: no gradient on the instance scores."""
    clean, swapped = batch
    grad = _rater_gradient(_model(clean, contrast_model="proxy"), swapped)
    assert torch.allclose(grad, torch.zeros(B), atol=1e-7)


def test_contrast_averages_the_other_captions(batch):
    clean, swapped = batch
    model = _model(clean, contrast_model="value", contrast_captions=3)
    draw = draw_batch(swapped, 1, "shared", model.rater_t, "cpu")
    _, logs = model._caption_contrast(swapped, draw)
    (gap,) = [v for k, v in logs.items() if k.startswith("rate/caption_gap_t")]
    own = model.value_proxy.per_sample_loss(None, swapped["image"], None, None, None, None, swapped["pooled"])
    others = [
        model.value_proxy.per_sample_loss(
            None, swapped["image"], None, None, None, None, roll_captions(swapped, j)["pooled"]
        )
        for j in (1, 2, 3)
    ]
    assert torch.allclose(gap, (torch.stack(others).mean(0) - own).mean())
    with pytest.raises(ValueError, match="contrast_captions=16"):
        _model(clean, contrast_model="value", contrast_captions=B)._caption_contrast(swapped, draw)


@pytest.mark.parametrize(
    "options",
    [{"contrast_model": "theta"}, {"contrast_captions": 0}, {"contrast_model": "value", "rater_signal": "first_order"}],
)
def test_contrast_options_are_checked(batch, options):
    with pytest.raises(ValueError):
        _model(batch[0], **options)
