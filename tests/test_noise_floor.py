"""Domain KID is the unbiased cubic-kernel MMD², and the real-vs-real noise floor of FID / KID."""

import pytest
import torch

from alchemist_pl.domain_encoder import train_domain_encoder
from alchemist_pl.metrics import DomainMetrics, real_noise_floor
from alchemist_pl.pixels import to_model_range


class FirstPixel(torch.nn.Module):
    """A 1-d feature (the top-left red value), so KID can be worked out by hand."""

    num_features = 1

    def forward(self, x):
        return x[:, :1, 0, 0].double()

    def embed(self, x):  # the domain CLIP score's image embedding, [N, 384]
        return torch.nn.functional.normalize(torch.ones(len(x), 384), dim=-1)


def _images(values):
    out = torch.zeros(len(values), 3, 4, 4)
    out[:, 0, 0, 0] = torch.tensor(values, dtype=torch.float32)
    return out


def test_domain_kid_is_the_unbiased_cubic_mmd():
    # d = 1, k(x, y) = (x*y + 1)^3. Real {0, 1}, generated {0, 2}:
    # off-diagonal k_xx: k(0, 1) = 1 twice, mean 1; k_yy: k(0, 2) = 1 twice, mean 1;
    # k_xy: k(0,0) + k(0,2) + k(1,0) + k(1,2) = 1 + 1 + 1 + 27 = 30, mean 7.5.  MMD² = 1 + 1 - 2 * 7.5 = -13.
    metrics = DomainMetrics(FirstPixel(), kid_subset_size=2)
    metrics.set_reference(_images([0.0, 1.0]))
    values = metrics.compute(_images([0.0, 2.0]), torch.ones(2, 384))
    assert values["domain_kid"] == pytest.approx(-13.0)


@pytest.fixture(scope="module")
def real(small_split):
    encoder = train_domain_encoder(small_split, epochs=15, batch_size=32, lr=3e-3, seed=0)
    return encoder, to_model_range(small_split.images), small_split.text.pooled[small_split.caption_rows].float()


def test_noise_floor_rows_and_bias(real):
    encoder, images, pooled = real  # 96 images: halves of 48
    rows = real_noise_floor(encoder, images, pooled, sizes=(16, None), repeats=3, kid_subset_size=16)
    assert [(r["repeat"], r["images"], r["reference_images"]) for r in rows] == [
        (r, m, 48) for r in range(3) for m in (16, 48)
    ]
    assert rows == real_noise_floor(encoder, images, pooled, sizes=(16, None), repeats=3, kid_subset_size=16)
    fid = {m: [r["domain_fid"] for r in rows if r["images"] == m] for m in (16, 48)}
    kid = {m: [r["domain_kid"] for r in rows if r["images"] == m] for m in (16, 48)}
    assert min(fid[48]) > 1e-3  # the halves are disjoint: never the same set twice
    assert min(fid[16]) > max(fid[48])  # FID is biased upwards with fewer images; m is honoured
    # KID is unbiased: its floor sits near 0, far below real images against noise
    metrics = DomainMetrics(encoder, kid_subset_size=16)
    metrics.set_reference(images[:48])
    noise = metrics.compute(
        torch.rand(48, *images.shape[1:], generator=torch.Generator().manual_seed(0)) * 2 - 1, pooled[:48]
    )
    assert max(abs(k) for k in kid[16] + kid[48]) < 0.1 * noise["domain_kid"]
    assert max(fid[48]) < noise["domain_fid"]


def test_noise_floor_rejects_sizes_beyond_a_half(real):
    encoder, images, pooled = real
    with pytest.raises(ValueError, match=r"must lie in \[2, 48\]"):
        real_noise_floor(encoder, images, pooled, sizes=(49,))
