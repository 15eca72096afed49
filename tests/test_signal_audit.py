"""The signal audit's scoring (alchemist_pl.audit) on a small slice of the real D_val split at 16 px."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from alchemist_pl import audit
from alchemist_pl.corruption import CLEAN, corrupt_image
from alchemist_pl.data import ImageCaptionDataset
from examples.tiny_proxy import TinyConvProxy

# conf/proxy/unet_tiny.yaml at 16 px, with the pooled caption path of the audit's cfg_pooled variant
UNET = dict(
    sample_size=16,
    in_channels=3,
    out_channels=3,
    block_out_channels=[16, 32, 32],
    layers_per_block=1,
    down_block_types=["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
    cross_attention_dim=384,
    attention_head_dim=8,
    norm_num_groups=8,
    class_embed_type="projection",
    projection_class_embeddings_input_dim=384,
)
TIMESTEPS = (100, 200)


def _unet(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**UNET)


def _noisy(split, seed: int = 0) -> ImageCaptionDataset:
    """The same samples under the planted-noise corruption (sigma 0.35 of the pixel range)."""
    rng = np.random.default_rng(seed)
    images = np.stack([corrupt_image("noise", x.numpy(), rng) for x in split.images])
    return ImageCaptionDataset(split.sample_ids, torch.from_numpy(images), split.captions, split.text)


def _train(dataset, steps: int = 20) -> UNet2DConditionModel:
    unet = _unet()
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)
    g = torch.Generator().manual_seed(1)
    audit.train_proxy(unet, DDPMScheduler(), dataset, torch.arange(len(dataset)), steps, 16, opt, 2.0, 0.1, g)
    return unet


@pytest.fixture(scope="module")
def proxies(small_split):
    """θ_val trained on clean images, θ′ on their noise-corrupted copies (same init, same batches)."""
    torch.set_num_threads(1)
    return _train(small_split), _train(_noisy(small_split))


def _value_gap_auroc(models, split) -> float:
    """AUROC (clean above noisy) of the value gap on 48 held-out clean and 48 noisy images."""
    clean_part, noisy_part = split, _noisy(split, seed=5)
    images = torch.cat([clean_part.images[:48], noisy_part.images[48:]])
    mixed = ImageCaptionDataset(split.sample_ids, images, split.captions, split.text)
    kinds = np.array([CLEAN] * 48 + ["noise"] * 48, dtype=object)
    own = {"own": mixed.caption_rows}
    losses = audit.score_losses(
        models, DDPMScheduler(), mixed, own, TIMESTEPS, seed=0, terms=(("val", "own"), ("pool", "own"))
    )
    vf = audit.keep_scores(losses)["value_gap"]
    return audit.separation(audit.band_score(vf, range(len(TIMESTEPS))), kinds)["noise"]


def test_value_gap_ranks_what_the_pool_model_fits_better_low_and_flips_with_the_models(proxies, small_split):
    clean_model, noisy_model = proxies
    assert _value_gap_auroc({"val": clean_model, "pool": noisy_model}, small_split) > 0.8
    # θ and θ′ exchanged: the signal must point the other way
    assert _value_gap_auroc({"val": noisy_model, "pool": clean_model}, small_split) < 0.2


def test_common_random_numbers_give_exact_zero_differences(small_split):
    """The same model under two names, and a caption against itself: differences are exactly 0 only if every
    term sees the same noise for the same (sample, t); the losses themselves vary over t."""
    split = ImageCaptionDataset(
        small_split.sample_ids[:24], small_split.images[:24], small_split.captions[:24], small_split.text
    )
    unet = _unet()
    captions = {"own": split.caption_rows, "other": split.caption_rows.clone(), "null": split.caption_rows}
    losses = audit.score_losses(
        {"val": unet, "pool": unet}, DDPMScheduler(), split, captions, (50, 500), seed=3, batch_size=10
    )
    scores = audit.keep_scores(losses)
    assert np.all(scores["value_gap"] == 0) and np.all(scores["contrast"] == 0)
    assert not np.allclose(losses[("val", "own")][0], losses[("val", "own")][1])
    assert torch.equal(audit.crn_noise((2, 3, 4, 4), 3, 50, 0), audit.crn_noise((2, 3, 4, 4), 3, 50, 0))
    assert not torch.equal(audit.crn_noise((2, 3, 4, 4), 3, 50, 0), audit.crn_noise((2, 3, 4, 4), 3, 50, 1))


def test_mismatched_captions_differ_and_separation_counts_the_top_half(small_split):
    other = audit.mismatched_rows(small_split, torch.Generator().manual_seed(0))
    texts = small_split.text.captions
    assert all(texts[o] != texts[c] for o, c in zip(other.tolist(), small_split.caption_rows.tolist()))
    kinds = np.array([CLEAN] * 6 + ["blur"] * 2 + ["noise"] * 2, dtype=object)
    scores = np.array([9, 8, 7, 6, 5, 0.5, 4, 0.2, 3, 2], dtype=float)
    sep = audit.separation(scores, kinds)
    assert sep["blur"] == pytest.approx(11 / 12) and sep["noise"] == pytest.approx(10 / 12)
    assert sep["top50_corrupted_share"] == 0.0


def _tiny_proxy(seed: int = 0) -> TinyConvProxy:
    torch.manual_seed(seed)
    return TinyConvProxy(width=16)


def test_a_custom_proxy_is_audited_through_its_own_hook(small_split):
    """examples/tiny_proxy's TinyConvProxy (no diffusers UNet) trains and scores through its
    per_sample_loss hook: the audit's losses are the hook's at the same (t, ε), common random numbers."""
    torch.set_num_threads(1)
    split = ImageCaptionDataset(
        small_split.sample_ids[:32], small_split.images[:32], small_split.captions[:32], small_split.text
    )
    scheduler = DDPMScheduler()
    proxy = _tiny_proxy()
    opt = torch.optim.AdamW(proxy.parameters(), lr=1e-3)
    history = audit.train_proxy(proxy, scheduler, split, torch.arange(32), 3, 16, opt, 2.0, 0.1, torch.Generator())
    assert len(history) == 3 and np.isfinite(history).all()
    own = {"own": split.caption_rows}
    terms = (("val", "own"), ("pool", "own"))
    losses = audit.score_losses({"val": proxy, "pool": proxy}, scheduler, split, own, (100,), seed=2, terms=terms)
    assert np.all(audit.keep_scores(losses)["value_gap"] == 0)
    text, rows = split.text, split.caption_rows
    states, mask, pooled = text.states[rows].float(), text.mask[rows], text.pooled[rows].float()
    images = split.images.float() / 127.5 - 1.0
    noise = audit.crn_noise(split.images.shape, 2, 100, 0)
    t = torch.full((32,), 100, dtype=torch.long)
    with torch.no_grad():
        expected = proxy.per_sample_loss(scheduler, images, states, mask, t, noise, pooled)
    np.testing.assert_allclose(losses[("val", "own")][0], expected.double().numpy(), rtol=1e-5)
