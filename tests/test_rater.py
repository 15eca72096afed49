"""The Group MLP, order-free scores, and the bilevel loop's rater on real data."""

import numpy as np
import pytest
import torch
from lightning import Callback, Trainer
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Subset

from alchemist_pl.bilevel import BilevelRater
from alchemist_pl.rater import ConvBackbone, GroupMLP, Rater, sample_weights
from alchemist_pl.scores import score_dataset


def test_group_mlp_shapes_and_normalisation():
    torch.manual_seed(0)
    f = torch.randn(12, 20)
    with torch.no_grad():
        s, b = GroupMLP(20, 16)(f)
    assert s.shape == (12,) and b.shape == ()
    assert torch.all((s > 0) & (s < 1))  # instance scores pass through a sigmoid
    assert 0 < float(b) < 1
    w = sample_weights(s, b)
    assert w.shape == (12,)
    assert torch.all(w > 0)
    assert float(w.sum()) == pytest.approx(float(b), rel=1e-6)  # Eq. 7: softmax over the batch times b
    torch.testing.assert_close(w / b, torch.softmax(s, 0))


def test_batch_head_sees_the_batch_instance_head_does_not():
    torch.manual_seed(0)
    mlp = GroupMLP(8, 16)
    f = torch.randn(10, 8)
    s1, b1 = mlp(f)
    s2, b2 = mlp(torch.cat([f[:5], 3 * torch.randn(5, 8)]))
    torch.testing.assert_close(s1[:5], s2[:5])  # instance logits: per sample
    assert abs(float(b1) - float(b2)) > 1e-4  # batch weight: depends on the batch statistics


def test_scores_do_not_depend_on_batch_or_order(small_split):
    torch.manual_seed(0)
    rater = Rater(ConvBackbone(channels=(16, 16), feature_dim=32), hidden_dim=16)
    a = score_dataset(rater, small_split, batch_size=96)
    b = score_dataset(rater, small_split, batch_size=7)
    perm = np.random.default_rng(0).permutation(len(small_split))
    shuffled = score_dataset(rater, Subset(small_split, perm.tolist()), batch_size=32)  # index = original position
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a, shuffled, rtol=1e-5, atol=1e-6)
    assert a.std() > 0


def _tiny_bilevel(objective: str) -> BilevelRater:
    from diffusers import DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    # A real but tiny proxy (8 px, no attention) keeps 2 x 300 bilevel iterations within seconds.
    proxy = UNet2DConditionModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        mid_block_type=None, cross_attention_dim=384, norm_num_groups=8,
    )
    rater = Rater(ConvBackbone(channels=(16, 16), feature_dim=32), hidden_dim=16)
    opt = lambda lr: (lambda params: torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.05))  # noqa: E731
    return BilevelRater(
        proxy, DDPMScheduler(num_train_timesteps=1000), rater, opt(1e-3), opt(3e-3),
        ul_init=0.8, ul_decay=0.0, rater_timesteps=(0, 600), histogram_every=0, rater_objective=objective,
    )


class _Track(Callback):
    def __init__(self, probe):
        self.probe, self.b, self.scores = probe, [], []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.b.append(float(trainer.callback_metrics["rate/batch_weight"]))
        if len(self.b) % 50 == 0:
            self.scores.append(module.rater.score(self.probe["image"], self.probe["pooled"]).clone())


@pytest.fixture(scope="module")
def tiny_split(emoji_dir, cache_dir):
    """128 real D_val samples at 8 px."""
    from alchemist_pl.data import load_split

    return load_split(emoji_dir / "val", resolution=8, cache_dir=cache_dir, limit=128)


def _run(small_split, objective, iterations=300):
    model = _tiny_bilevel(objective)
    loader = lambda: DataLoader(small_split, batch_size=16, shuffle=True, drop_last=True)  # noqa: E731
    probe = next(iter(DataLoader(small_split, batch_size=32)))
    track = _Track(probe)
    trainer = Trainer(accelerator="cpu", max_steps=2 * iterations, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[track])
    trainer.fit(model, train_dataloaders=CombinedLoader({"val": loader(), "train": loader()}, "min_size"))
    return np.array(track.b), track.scores


def test_centred_rater_keeps_learning(tiny_split):
    """The batch weight stays away from 0 and the instance logits keep moving for 300 iterations."""
    b, scores = _run(tiny_split, "centred")
    assert len(b) == 300
    assert b[-100:].min() > 0.05, b[-100:].min()
    late_change = (scores[-1] - scores[-2]).abs().mean() / scores[-2].std()
    assert late_change > 0.01, late_change


def test_literal_rater_loss_collapses_the_batch_weight(tiny_split):
    """The failure mode the centred objective exists to avoid (method.md, measured facts)."""
    b, _ = _run(tiny_split, "literal")
    assert b[-1] < 0.05 < b[0]
