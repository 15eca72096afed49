"""Retrieval of images by their own prompt (alchemist_pl.metrics.prompt_retrieval) on real images."""

from __future__ import annotations

import pytest
import torch

from alchemist_pl.domain_encoder import train_domain_encoder
from alchemist_pl.metrics import prompt_retrieval
from alchemist_pl.pixels import to_model_range


@pytest.fixture(scope="module")
def encoder(small_split):
    return train_domain_encoder(small_split, epochs=15, batch_size=32, lr=3e-3, seed=0)


def test_real_images_retrieve_their_own_captions_and_the_shuffled_control_does_not(encoder, small_split):
    emb = encoder.embed(to_model_range(small_split.images))
    pooled = small_split.text.pooled[small_split.caption_rows].float()
    r = prompt_retrieval(emb, pooled)
    chance1, chance5 = r["retrieval_chance_top1"], r["retrieval_chance_top5"]
    assert chance1 < 0.1  # enough distinct captions for chance to be low
    assert r["retrieval_top1"] > 5 * chance1 and r["retrieval_top5"] > 2 * chance5
    assert r["retrieval_top1_shuffled"] < 3 * chance1 and r["retrieval_top5_shuffled"] < 2 * chance5
    # a broken pairing (images rolled against their captions) falls to the control's level
    rolled = prompt_retrieval(emb.roll(1, dims=0), pooled)
    assert rolled["retrieval_top1"] < 3 * chance1


def test_retrieval_counts_shared_captions_as_one_candidate():
    emb = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 1.0, 0]])  # image 1 looks like caption B
    pooled = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]])  # images 0 and 1 share caption A
    r = prompt_retrieval(emb, pooled)
    assert r["retrieval_chance_top1"] == 0.5 and r["retrieval_chance_top5"] == 1.0
    assert r["retrieval_top1"] == pytest.approx(2 / 3) and r["retrieval_top5"] == 1.0
    with pytest.raises(ValueError, match="2 captions"):
        prompt_retrieval(emb, pooled[:2])
