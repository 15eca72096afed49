"""The downstream model's levers: the pooled-caption path and min-SNR-γ weighting (alchemist_pl.t2i)."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from alchemist_pl.sampling import generate, pooled_caption
from alchemist_pl.t2i import TextToImageModule


def _unet(**kw):
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=384,
        attention_head_dim=4,
        norm_num_groups=4,
        **kw,
    )


def test_pooled_caption_is_the_datasets_sentence_embedding(small_split):
    rows = small_split.caption_rows[:32]
    states, mask = small_split.text.states[rows].float(), small_split.text.mask[rows]
    unet = _unet(class_embed_type="projection", projection_class_embeddings_input_dim=384)
    pooled = pooled_caption(unet, states, mask)["class_labels"]
    want = small_split.text.pooled[rows].float()
    assert torch.allclose(pooled, want, atol=2e-3)  # states are stored in float16
    assert pooled_caption(_unet(), states, mask) == {}  # a UNet without the projection gets nothing


def test_the_pooled_caption_reaches_the_generated_images(small_split):
    rows = small_split.caption_rows[:2]
    states, mask = small_split.text.states[rows].float(), small_split.text.mask[rows]
    torch.manual_seed(0)
    unet = _unet(class_embed_type="projection", projection_class_embeddings_input_dim=384).eval()
    with torch.no_grad():  # a visible class embedding: the images must depend on the pooled caption
        unet.class_embedding.linear_1.weight.mul_(50)
    sched = DDPMScheduler(num_train_timesteps=100)
    null = (torch.zeros(16, 384), torch.ones(16, dtype=torch.bool))
    a = generate(unet, sched, states, mask, *null, num_inference_steps=2, guidance_scale=1.0, seed=0)
    unet.class_embedding.linear_1.weight.data.zero_()
    unet.class_embedding.linear_1.bias.data.zero_()
    b = generate(unet, sched, states, mask, *null, num_inference_steps=2, guidance_scale=1.0, seed=0)
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_down_the_low_noise_steps_only(prediction_type):
    sched = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    model = TextToImageModule(_unet(), sched, sched, torch.optim.AdamW, snr_gamma=5.0)
    t = torch.tensor([1, 50, 500, 999])
    w = model._snr_weight(t)
    snr = sched.alphas_cumprod[t] / (1 - sched.alphas_cumprod[t])
    assert snr[0] > 5 > snr[2]  # the schedule spans both sides of gamma
    assert w[0] < w[1] < 1.0  # low noise (high SNR) is weighted down, more so the cleaner
    expected_high_noise = 1.0 if prediction_type == "epsilon" else snr[2:] / (snr[2:] + 1)
    assert torch.allclose(w[2:], torch.as_tensor(expected_high_noise, dtype=w.dtype), atol=1e-6)
    unweighted = TextToImageModule(_unet(), sched, sched, torch.optim.AdamW)._snr_weight(t)
    assert torch.equal(unweighted, torch.ones(4))
