"""The domain evaluator on real emoji: it learns the caption space, its metrics order real vs broken images."""

import shutil

import numpy as np
import pytest
import torch

from alchemist_pl.domain_encoder import caption_retrieval, load_domain_encoder, train_domain_encoder
from alchemist_pl.metrics import DomainMetrics, StandardMetrics
from alchemist_pl.pixels import to_model_range
from alchemist_pl.scoring import caption_agreement


@pytest.fixture(scope="module")
def encoder(small_split):
    return train_domain_encoder(small_split, epochs=15, batch_size=32, lr=3e-3, seed=0)


def test_encoder_learns_the_caption_space(encoder, small_split):
    chance_top5 = 5 / len(torch.unique(small_split.caption_rows))
    untrained = train_domain_encoder(small_split, epochs=0, batch_size=32)
    trained = caption_retrieval(encoder, small_split)
    assert trained["top5"] > 3 * chance_top5
    assert trained["top5"] > caption_retrieval(untrained, small_split)["top5"]


def test_domain_metrics_order_real_and_broken_images(encoder, small_split):
    real = to_model_range(small_split.images)
    pooled = small_split.text.pooled[small_split.caption_rows].float()
    metrics = DomainMetrics(encoder, kid_subset_size=32)
    metrics.set_reference(real[:48])
    same = metrics.compute(real[48:], pooled[48:])  # other real images of the same domain
    g = torch.Generator().manual_seed(0)
    noise = metrics.compute(torch.rand(real[48:].shape, generator=g) * 2 - 1, pooled[48:])
    assert same["domain_fid"] < noise["domain_fid"] and same["domain_kid"] < noise["domain_kid"]
    shuffled = metrics.compute(real[48:], pooled[48:].roll(7, dims=0))  # images with wrong captions
    assert same["domain_clip"] > shuffled["domain_clip"]
    again = metrics.compute(real[48:], pooled[48:])
    assert again["domain_fid"] == pytest.approx(same["domain_fid"], rel=1e-6)  # fake features reset each time
    with pytest.raises(RuntimeError, match="set_reference"):
        DomainMetrics(encoder).compute(real[:4], pooled[:4])


def test_caption_agreement_ranks_swapped_captions_lower(encoder, small_split):
    """The CLIP-score filter baseline: true image-caption pairs agree more than swapped ones."""
    import copy

    true = caption_agreement(encoder, small_split, batch_size=40)  # batch size that does not divide N
    assert true.shape == (len(small_split),) and torch.isfinite(true).all()
    swapped = copy.copy(small_split)
    swapped.caption_rows = small_split.caption_rows.roll(11)
    wrong = caption_agreement(encoder, swapped)
    different = small_split.caption_rows != swapped.caption_rows
    assert (true[different] > wrong[different]).float().mean() > 0.7


def test_encoder_is_cached_by_content(emoji_dir, cache_dir, tmp_path):
    for captions in cache_dir.glob("captions-*.pt"):  # the caption embeddings, not the encoder, come cached
        shutil.copy(captions, tmp_path)
    kw = dict(resolution=16, cache_dir=tmp_path, max_tokens=16, epochs=1, batch_size=64)
    torch.manual_seed(7), np.random.seed(7)
    enc, info = load_domain_encoder(emoji_dir / "val", test_path=emoji_dir / "test", **kw)
    cold = torch.rand(3).tolist(), np.random.rand(3).tolist()
    assert info["retrieval"]["captions"] > 100 and 0 <= info["retrieval"]["top1"] <= 1
    torch.manual_seed(7), np.random.seed(7)
    enc2, info2 = load_domain_encoder(emoji_dir / "val", **kw)
    # training it on a cold cache leaves the run's random streams where a warm cache leaves them
    assert (torch.rand(3).tolist(), np.random.rand(3).tolist()) == cold
    assert info2["sha256"] == info["sha256"] and info2["path"] == info["path"]  # reused, not retrained
    x = torch.zeros(2, 3, 16, 16)
    assert torch.equal(enc(x), enc2(x))
    _, info3 = load_domain_encoder(emoji_dir / "val", **{**kw, "epochs": 2})
    assert info3["path"] != info["path"]


def test_standard_backend_fails_fast_and_clearly_offline():
    # No Inception / CLIP weights on this machine, and no downloads: a clear error, not a hang.
    pytest.importorskip("torchmetrics")
    try:
        StandardMetrics(timeout_s=2.0)
    except RuntimeError as e:
        assert "evaluator=domain" in str(e)
    else:  # a machine with the weights cached: nothing to check here
        pytest.skip("standard FID/CLIP weights are available on this machine")
