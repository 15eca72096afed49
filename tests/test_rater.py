"""The Group MLP, order-free scores, and the bilevel loop's rater on real data."""

import numpy as np
import pytest
import torch
from lightning import Callback, Trainer
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Subset

from alchemist_pl.bilevel import BilevelRater
from alchemist_pl.rater import ConvBackbone, GroupMLP, Rater, sample_weights
from alchemist_pl.scoring import score_dataset


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


def _second_difference(backbone, images, captions):
    """f(x1, c1) − f(x1, c2) − f(x2, c1) + f(x2, c2): zero wherever f is additive in image and caption."""
    x = images[[0, 0, 1, 1]]
    c = captions[[0, 1, 0, 1]]
    with torch.no_grad():
        f = backbone(x, c)
    return f[0] - f[1] - f[2] + f[3]


def test_interaction_features_depend_on_image_and_caption_jointly():
    torch.manual_seed(0)
    images, captions = torch.rand(2, 3, 16, 16) * 2 - 1, torch.randn(2, 384)
    additive = ConvBackbone(channels=(16, 16), feature_dim=32)
    torch.manual_seed(0)
    joint = ConvBackbone(channels=(16, 16), feature_dim=32, interaction=8)
    assert joint.feature_dim == 40 and joint(images, captions).shape == (2, 40)
    # the image and caption projections stay additive; only the interaction block is not
    torch.testing.assert_close(_second_difference(additive, images, captions), torch.zeros(32), atol=1e-5, rtol=0)
    second = _second_difference(joint, images, captions)
    torch.testing.assert_close(second[:32], torch.zeros(32), atol=1e-5, rtol=0)
    # the block is the product of the image and caption projections (a bilinear form): its second
    # difference is (U x1 − U x2) ⊙ (V c1 − V c2)
    with torch.no_grad():
        x = joint.conv(images).mean(dim=(2, 3))
        expected = (joint.image_pair(x[0]) - joint.image_pair(x[1])) * (
            joint.text_pair(captions[0]) - joint.text_pair(captions[1])
        )
    assert float(expected.abs().min()) > 0
    torch.testing.assert_close(second[32:], expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="interaction"):
        ConvBackbone(interaction=-1)


def test_interaction_lets_the_instance_head_learn_caption_agreement():
    """Keep-scores for "caption matches image" (an XOR of two image and two caption classes) from a
    linear instance head: separable with the interaction block, not without it."""
    torch.manual_seed(0)
    images = torch.stack([torch.full((3, 8, 8), v) for v in (-0.8, 0.8)])
    captions = torch.randn(2, 384)
    x, c = images.repeat_interleave(2, 0), captions.repeat(2, 1)  # pairs (0,0) (0,1) (1,0) (1,1)
    target = torch.tensor([1.0, 0.0, 0.0, 1.0])  # the caption agrees with the image
    separated = {}
    for r in (0, 8):
        torch.manual_seed(1)
        backbone = ConvBackbone(channels=(8,), feature_dim=16, interaction=r)
        head = torch.nn.Linear(backbone.feature_dim, 1)
        opt = torch.optim.Adam([*backbone.parameters(), *head.parameters()], lr=1e-2)
        for _ in range(300):
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(head(backbone(x, c)).squeeze(-1), target)
            loss.backward()
            opt.step()
        with torch.no_grad():
            a = head(backbone(x, c)).squeeze(-1)
        separated[r] = float(a[[0, 3]].min() > a[[1, 2]].max())
    assert separated == {0: 0.0, 8: 1.0}


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


def _tiny_bilevel(objective: str, batch_head: bool = True, **options) -> BilevelRater:
    from diffusers import DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    # A real but tiny proxy (8 px, no attention) keeps a few hundred bilevel iterations within seconds.
    proxy = UNet2DConditionModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        mid_block_type=None,
        cross_attention_dim=384,
        norm_num_groups=8,
    )
    rater = Rater(ConvBackbone(channels=(16, 16), feature_dim=32), hidden_dim=16, batch_head=batch_head)
    opt = lambda lr: lambda params: torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.05)  # noqa: E731
    return BilevelRater(
        proxy,
        DDPMScheduler(num_train_timesteps=1000),
        rater,
        opt(1e-3),
        opt(3e-3),
        **{
            "ul_init": 0.8,
            "ul_decay": 0.0,
            "rater_timesteps": (0, 600),
            "histogram_every": 0,
            "rater_objective": objective,
            **options,
        },
    )


class _Track(Callback):
    def __init__(self, probe, every: int = 50):
        self.probe, self.every, self.b, self.scores = probe, every, [], []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.b.append(float(trainer.callback_metrics["rate/batch_weight"]))
        if len(self.b) % self.every == 0:
            self.scores.append(module.rater.score(self.probe["image"], self.probe["pooled"]).clone())


@pytest.fixture(scope="module")
def tiny_split(emoji_dir, cache_dir):
    """128 real D_val samples at 8 px."""
    from alchemist_pl.data import load_split

    return load_split(emoji_dir / "val", resolution=8, cache_dir=cache_dir, limit=128)


def _run(small_split, objective, iterations=300, batch_head=True, probe_every=50, **options):
    """Fit for ``iterations``; returns the batch weight of every iteration and the scores of a probe
    batch every ``probe_every`` iterations."""
    model = _tiny_bilevel(objective, batch_head, **options)
    loader = lambda: DataLoader(small_split, batch_size=16, shuffle=True, drop_last=True)  # noqa: E731
    probe = next(iter(DataLoader(small_split, batch_size=32)))
    track = _Track(probe, probe_every)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=2 * iterations,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[track],
    )
    trainer.fit(model, train_dataloaders=CombinedLoader({"val": loader(), "train": loader()}, "min_size"))
    _run.last = (model, trainer)
    return np.array(track.b), track.scores


def test_centred_rater_keeps_learning(tiny_split):
    """The batch weight stays away from 0 and the instance logits keep moving for 200 iterations
    (the literal objective, below, drives the batch weight under 0.05 within 60)."""
    b, scores = _run(tiny_split, "centred", iterations=200)
    assert len(b) == 200
    assert b[-100:].min() > 0.05, b[-100:].min()
    late_change = (scores[-1] - scores[-2]).abs().mean() / scores[-2].std()
    assert late_change > 0.01, late_change


def test_literal_rater_loss_collapses_the_batch_weight(tiny_split):
    """The failure mode the centred objective exists to avoid: minimising Σ_i W_i ℓ_i as written
    drives the batch weight b to 0 (every ℓ_i > 0)."""
    b, _ = _run(tiny_split, "literal", iterations=60)
    assert b[-1] < 0.05 < b[0]


# ---------------------------------------------------------------- method options


def test_instance_head_only_rater(tiny_split):
    """Ablation rater=instance_only: no batch head, b = 1, weights softmax_B(s); the instance head still learns."""
    mlp = GroupMLP(8, 16, batch_head=False)
    assert mlp.batch_head is None and not any("batch_head" in k for k in mlp.state_dict())
    s, b = mlp(torch.randn(6, 8))
    assert float(b) == 1.0
    torch.testing.assert_close(sample_weights(s, b), torch.softmax(s, 0))
    b, scores = _run(tiny_split, "centred", iterations=50, batch_head=False, probe_every=25)
    assert np.all(b == 1.0)
    change = (scores[-1] - scores[0]).abs().mean() / scores[0].std()
    assert change > 0.01, change


def test_exact_estimator_trains_the_rater(tiny_split):
    """The exact one-step meta-gradient drives the rater through the real loop on real data."""
    b, scores = _run(tiny_split, "centred", iterations=50, probe_every=25, rater_signal="exact", lookahead_lr=0.1)
    model, trainer = _run.last
    assert len(b) == 50 and np.isfinite(b).all()
    assert float(trainer.callback_metrics["rate/meta_grad_std"]) > 0
    assert np.isfinite(float(trainer.callback_metrics["rate/val_loss_lookahead"]))
    change = (scores[-1] - scores[0]).abs().mean() / scores[0].std()
    assert change > 0.01, change


def test_exact_estimator_reuses_the_inner_gradient_without_changing_the_step(tiny_split):
    """Sharing ∇Σ W_i ℓ_i between the lookahead and the proxy step leaves the proxy's gradient as it was."""
    grads = []
    for share in (True, False):
        model = _tiny_bilevel("centred", rater_signal="exact", lookahead_lr=0.1)
        model.share_inner_grad = share
        torch.manual_seed(1)
        loader = CombinedLoader(
            {k: DataLoader(tiny_split, batch_size=16, drop_last=True) for k in ("val", "train")}, "min_size"
        )
        Trainer(
            accelerator="cpu",
            max_steps=2,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        ).fit(model, train_dataloaders=loader)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert grads[0].shape == grads[1].shape and grads[0].abs().max() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "options",
    [
        {"rater_signal": "second_order"},
        {"rater_noise": "fresh"},
        {"rater_timestep_sampling": "sorted"},
        {"rater_loss_weighting": "p2"},
        {"value_weights": "pool"},
        {"inner_steps": 0},
        {"draws_per_sample": 0},
        {"caption_dropout": 1.0},
        {"contrast_timesteps": (500, 300)},
        {"rater_timesteps": (0, 1001)},
        {"caption_contrast_weight": -1.0},
        {"caption_contrast_weight": 0.5, "rater_signal": "exact"},
        {"draws_per_sample": 2, "rater_signal": "exact"},
        {"caption_contrast_weight": 0.5, "rater_objective": "literal"},
        {"logit_anchor": -0.1},
        {"rater_signal": "exact", "lookahead_lr": 0.0},
    ],
)
def test_bad_options_raise(options):
    with pytest.raises(ValueError):
        _tiny_bilevel("centred", **options)
    with pytest.raises(ValueError, match="rater_objective"):
        _tiny_bilevel("greedy")


def test_stratified_shared_and_timestep_records(tiny_split):
    """Stratified batches cover every stratum; shared noise is one image; the loop records each sample's t."""
    from alchemist_pl.diffusion import draw_timesteps

    t = draw_timesteps("stratified", 12, 0, 600, "cpu")
    assert sorted((t // 50).tolist()) == list(range(12))
    shared = draw_timesteps("shared", 12, 0, 600, "cpu")
    assert shared.unique().numel() == 1 and 0 <= int(shared[0]) < 600
    model = _tiny_bilevel(
        "centred", rater_noise="shared", rater_timestep_sampling="stratified", rater_loss_weighting="min_snr"
    )
    noise = model._draw({"image": torch.zeros(4, 3, 8, 8)}).noise
    assert torch.equal(noise[0], noise[3]) and noise.std() > 0
    _run(tiny_split, "centred", iterations=6, rater_timestep_sampling="stratified", rater_loss_weighting="min_snr")
    model, _ = _run.last
    index, seen_t = torch.cat(model.seen_index), torch.cat(model.seen_t)
    assert len(index) == len(seen_t) == 6 * 16
    assert all(len(set((x // 37.5).long().tolist())) == 16 for x in model.seen_t)  # one per stratum
    result = model.timestep_correlation(np.random.default_rng(0).normal(size=len(tiny_split)))
    assert result["samples_seen"] == len(set(index.tolist()))
    assert abs(result["score_timestep_spearman"]) < 0.5


def test_timestep_correlation_detects_timestep_scores():
    from alchemist_pl.bilevel import timestep_correlation

    rng = np.random.default_rng(0)
    index = rng.integers(0, 200, size=600)
    t = rng.integers(0, 600, size=600).astype(float)
    count = np.bincount(index, minlength=200)
    mean_t = np.bincount(index, weights=t, minlength=200) / np.maximum(count, 1)
    leaky = -mean_t + rng.normal(scale=10, size=200)  # scores that mostly say "this sample saw a low t"
    r = timestep_correlation(leaky, index, t)
    assert r["samples_seen"] == int((count > 0).sum())
    assert r["score_timestep_spearman"] < -0.9
    assert abs(timestep_correlation(rng.normal(size=200), index, t)["score_timestep_spearman"]) < 0.2
    assert np.isnan(timestep_correlation(np.zeros(200), index, t)["score_timestep_spearman"])


def test_min_snr_weights_follow_the_formula():
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    from alchemist_pl.diffusion import min_snr_weights

    sched = DDPMScheduler(num_train_timesteps=1000)
    t = torch.tensor([0, 20, 100, 400, 999])
    snr = compute_snr(sched, t)
    torch.testing.assert_close(min_snr_weights(sched, t, 5.0), (torch.clamp(snr, max=5.0) / snr).float())
    w = min_snr_weights(sched, t, 5.0)
    assert w[0] < w[1] < w[2] <= 1.0 and float(w[-1]) == 1.0  # low-noise timesteps are down-weighted
    with pytest.raises(ValueError):
        min_snr_weights(sched, t, 0.0)


def test_pixart_proxy_config_runs_the_exact_loop(make_cfg, tiny_split):
    """proxy=pixart_tiny bilevel=exact composes, instantiates and trains (at 8 px) through the real loop."""
    from hydra.utils import instantiate

    cfg = make_cfg(
        "proxy=pixart_tiny", "bilevel=exact", "data.resolution=8", "bilevel.histogram_every=0", "bilevel.ul_init=0.9"
    )
    model = instantiate(cfg.bilevel)
    assert type(model.proxy).__name__ == "PixArtProxy" and model.hparams.rater_signal == "exact"
    loader = CombinedLoader(
        {k: DataLoader(tiny_split, batch_size=16, shuffle=True, drop_last=True) for k in ("val", "train")}, "min_size"
    )
    before = [p.detach().clone() for p in model.proxy.parameters()]
    trainer = Trainer(
        accelerator="cpu",
        max_steps=4,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, train_dataloaders=loader)
    assert np.isfinite(float(trainer.callback_metrics["rate/meta_grad_std"]))
    assert any(not torch.equal(a, p) for a, p in zip(before, model.proxy.parameters()))
