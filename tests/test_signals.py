"""The rater's signals on real data: the value gap ℓ(θ) − ℓ(θ′) with a train-only proxy θ′, the
paper's first-order rule, the ``ul`` schedule, common random numbers, caption dropout and contrast."""

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from lightning import Callback, Trainer
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader

from alchemist_pl.analysis import auroc
from alchemist_pl.bilevel import BilevelRater
from alchemist_pl.corruption import build_corrupted_pool, read_ground_truth
from alchemist_pl.data import load_split
from alchemist_pl.rater import ConvBackbone, Rater
from alchemist_pl.scoring import score_dataset
from alchemist_pl.signals import BucketMoments, drop_captions, roll_captions


def _proxy(size: int, text: bool = False):
    """A real but tiny UNet proxy; ``text``: cross-attention at size/2 and the pooled caption path."""
    kw = dict(sample_size=size, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1)
    if text:
        kw.update(
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=8,
            class_embed_type="projection",
            projection_class_embeddings_input_dim=384,
        )
    else:
        kw.update(down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2, mid_block_type=None)
    return UNet2DConditionModel(cross_attention_dim=384, norm_num_groups=8, **kw)


def _model(size=8, text=False, seed=0, **options) -> BilevelRater:
    torch.manual_seed(seed)
    rater = Rater(ConvBackbone(channels=(16, 16), feature_dim=32), hidden_dim=16)
    opt = lambda lr: lambda params: torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.05)  # noqa: E731
    options = {"ul_init": 0.8, "ul_decay": 0.0, "histogram_every": 0, **options}
    return BilevelRater(
        _proxy(size, text), DDPMScheduler(num_train_timesteps=1000), rater, opt(3e-3), opt(3e-3), **options
    )


class _Track(Callback):
    def __init__(self):
        self.metrics: list[dict] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def _fit(model, val, pool, iterations=None, epochs=None, batch_size=16, seed=0, shuffle=True, **trainer_kw):
    g = torch.Generator().manual_seed(seed)
    loaders = {
        "val": DataLoader(val, batch_size=batch_size, shuffle=shuffle, drop_last=True, generator=g),
        "train": DataLoader(pool, batch_size=batch_size, shuffle=shuffle, drop_last=True, generator=g),
    }
    track = _Track()
    trainer = Trainer(
        accelerator="cpu",
        max_steps=-1 if iterations is None else 2 * iterations,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[track],
        **trainer_kw,
    )
    trainer.fit(model, train_dataloaders=CombinedLoader(loaders, "max_size_cycle" if epochs is None else "min_size"))
    return trainer, track.metrics


@pytest.fixture(scope="module")
def planted(tmp_path_factory, emoji_dir, cache_dir):
    """256 real emoji at 16 px, half corrupted (heavy pixel noise, near-blank images); D_val: 256 clean."""
    out = build_corrupted_pool(
        emoji_dir / "train", tmp_path_factory.mktemp("planted"), 0.5, ["noise", "blank"], 0, 256, 16
    )
    pool = load_split(out / "train", 16, cache_dir)
    gt = read_ground_truth(out / "corruptions.parquet")
    return pool, load_split(emoji_dir / "val", 16, cache_dir, limit=256), np.array([gt[s] for s in pool.sample_ids])


@pytest.fixture(scope="module")
def tiny(emoji_dir, cache_dir):
    return load_split(emoji_dir / "val", resolution=8, cache_dir=cache_dir, limit=64)


def _kind_auroc(model, pool, kinds) -> dict:
    scores = score_dataset(model.rater, pool, batch_size=64)
    return {k: auroc(scores[kinds == "clean"], scores[kinds == k]) for k in ("noise", "blank")}


def test_value_gap_rater_ranks_noise_and_blank_below_clean(planted):
    """θ fits D_val (ul = 1), θ′ the pool: the rater learns that corrupted samples are those θ′
    explains better than θ — both the hard (noise) and the easy (blank) corruption."""
    pool, val, kinds = planted
    model = _model(16, rater_signal="value_gap", ul_init=1.0, rater_timesteps=(20, 120), logit_anchor=0.1)
    _, metrics = _fit(model, val, pool, iterations=300)
    result = _kind_auroc(model, pool, kinds)
    assert result["noise"] > 0.75 and result["blank"] > 0.75, result
    b = np.array([m["rate/batch_weight"] for m in metrics])
    assert 0.1 < b[-100:].mean() < 0.9, b[-100:].mean()  # the batch head neither collapses nor saturates


@pytest.mark.slow
def test_first_order_rater_ranks_noise_below_clean_and_blank_above(planted):
    """The paper's rule on the same pool: low loss under the D_val-fitted proxy is "good", so heavy
    noise goes to the tail and near-blank images, the easiest to denoise, to the head."""
    pool, val, kinds = planted
    model = _model(16, rater_signal="first_order", rater_timesteps=(0, 600), logit_anchor=0.1)
    _fit(model, val, pool, iterations=200)
    result = _kind_auroc(model, pool, kinds)
    assert result["noise"] > 0.55 and result["blank"] < 0.1, result


def test_upper_level_weight_schedule(tiny):
    """ul = ul_init in the first epoch, then minus ul_decay per epoch, never below ul_min."""
    model = _model(ul_init=1.0, ul_decay=0.3, ul_min=0.35, rater_signal="value_gap")
    _, metrics = _fit(model, tiny, tiny, epochs=4, batch_size=32, shuffle=False)
    per_epoch = [m["rate/ul"] for m in metrics][::2]  # two iterations per epoch
    np.testing.assert_allclose(per_epoch, [1.0, 0.7, 0.4, 0.35], atol=1e-6)


def test_value_proxy_never_sees_dval(tiny, emoji_dir, cache_dir):
    """θ′ after training is the same whatever D_val holds (uniform weights); θ is not."""
    other = load_split(emoji_dir / "test", resolution=8, cache_dir=cache_dir, limit=64)
    runs = []
    for val in (tiny, other):
        model = _model(rater_signal="value_gap", value_weights="uniform")
        _fit(model, val, tiny, iterations=4, shuffle=False)
        runs.append(model)
    same = [torch.equal(a, b) for a, b in zip(runs[0].value_proxy.parameters(), runs[1].value_proxy.parameters())]
    assert all(same)
    assert not all(torch.equal(a, b) for a, b in zip(runs[0].proxy.parameters(), runs[1].proxy.parameters()))


def test_theta_and_value_proxy_see_the_same_noise_timestep_and_caption(tiny):
    """Common random numbers: θ′'s inputs (noisy image, t, caption after dropout, pooled caption)
    equal those of θ's training-batch call, for every draw; θ′ starts as a copy of θ."""
    model = _model(
        text=True,
        rater_signal="value_gap",
        caption_dropout=0.5,
        caption_contrast_weight=0.5,
        draws_per_sample=2,
        rater_timestep_sampling="uniform",
    )
    r = tiny.text.captions.index("")
    model.set_null_caption(tiny.text.states[r].float(), tiny.text.mask[r], tiny.text.pooled[r])
    for a, b in zip(model.proxy.state_dict().values(), model.value_proxy.state_dict().values()):
        assert torch.equal(a, b)
    calls = {"proxy": [], "value_proxy": []}

    def hook(name):
        def record(module, args, kwargs):
            calls[name].append(
                [x.detach().clone() for x in (*args[:2], kwargs["encoder_hidden_states"], kwargs["class_labels"])]
            )

        return record

    model.proxy.register_forward_pre_hook(hook("proxy"), with_kwargs=True)
    model.value_proxy.register_forward_pre_hook(hook("value_proxy"), with_kwargs=True)
    trainer, _ = _fit(model, tiny, tiny, iterations=1)
    (theirs,) = calls["value_proxy"]
    assert len(theirs[0]) == 2 * 16  # two draws of the 16-sample batch
    matches = [c for c in calls["proxy"] if len(c[0]) == len(theirs[0])]
    assert len(matches) == 1 and all(torch.equal(a, b) for a, b in zip(matches[0], theirs))
    assert theirs[1][:16].unique().numel() > 1 and not torch.equal(theirs[1][:16], theirs[1][16:])  # fresh t per draw
    null = tiny.text.states[r].float()
    dropped = (theirs[2][:16] == null).flatten(1).all(1)
    assert 0 < int(dropped.sum()) < 16 and torch.equal(dropped, (theirs[2][16:] == null).flatten(1).all(1))
    assert any(k.startswith("rate/caption_gap_t") for k in trainer.callback_metrics)


def test_value_proxy_is_checkpointed(tiny, tmp_path):
    model = _model(rater_signal="value_gap")
    trainer, _ = _fit(model, tiny, tiny, iterations=2)
    assert trainer.global_step == 4  # θ′'s steps do not count: two Lightning steps per iteration
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    ckpt = torch.load(tmp_path / "c.ckpt", weights_only=False)
    assert len(ckpt["optimizer_states"]) == 3 and any(k.startswith("value_proxy.") for k in ckpt["state_dict"])
    fresh = _model(seed=1, rater_signal="value_gap")
    fresh.load_state_dict(ckpt["state_dict"])
    assert all(torch.equal(a, b) for a, b in zip(fresh.value_proxy.parameters(), model.value_proxy.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(model.value_proxy.parameters(), model.proxy.parameters()))


def test_caption_dropout_needs_the_null_caption(tiny):
    with pytest.raises(ValueError, match="empty caption"):
        _fit(_model(caption_dropout=0.1), tiny, tiny, iterations=1)


def test_drop_and_roll_captions(tiny):
    batch = next(iter(DataLoader(tiny, batch_size=32)))
    r = tiny.text.captions.index("")
    null = {"states": tiny.text.states[r].float(), "mask": tiny.text.mask[r], "pooled": tiny.text.pooled[r]}
    out, dropped = drop_captions(batch, null, 0.5, torch.Generator().manual_seed(0))
    assert 0 < int(dropped.sum()) < 32 and torch.equal(out["image"], batch["image"])
    for k in ("states", "mask", "pooled"):
        assert torch.equal(out[k][dropped], null[k].expand_as(out[k][dropped]))
        assert torch.equal(out[k][~dropped], batch[k][~dropped])
    rolled = roll_captions(batch)
    assert torch.equal(rolled["pooled"][1:], batch["pooled"][:-1]) and torch.equal(
        rolled["pooled"][0], batch["pooled"][-1]
    )
    assert torch.equal(rolled["image"], batch["image"])


def test_pooled_caption_changes_the_proxy_loss(tiny):
    from alchemist_pl.diffusion import per_sample_loss

    batch = next(iter(DataLoader(tiny, batch_size=8)))
    unet, sched = _proxy(8, text=True), DDPMScheduler(num_train_timesteps=1000)
    t, noise = torch.full((8,), 300), torch.randn(batch["image"].shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        own = per_sample_loss(unet, sched, batch["image"], batch["states"], batch["mask"], t, noise, batch["pooled"])
        other = per_sample_loss(unet, sched, batch["image"], batch["states"], batch["mask"], t, noise, -batch["pooled"])
    assert not torch.allclose(own, other)


def test_bucket_moments_scale_each_bucket_to_unit_variance():
    torch.manual_seed(0)
    moments = BucketMoments(0, 100, num_buckets=2, momentum=0.5)
    t = torch.tensor([10] * 500 + [90] * 500)
    x = torch.cat([1.0 + 0.1 * torch.randn(500), -5.0 + 3.0 * torch.randn(500)])
    z = moments.normalise(x, t)
    assert abs(float(z[:500].std()) - 1) < 0.05 and abs(float(z[500:].std()) - 1) < 0.05
    assert abs(float(z[:500].mean())) < 0.05 and abs(float(z[500:].mean())) < 0.05
    fresh = BucketMoments(0, 100, num_buckets=2)
    assert torch.equal(fresh.normalise(torch.zeros(3), torch.tensor([10] * 3)), torch.zeros(3))  # constant: no scale
    assert not bool(fresh.seen[0])


def test_value_proxy_steps_at_every_timestep_when_uniform(tiny):
    """value_timesteps=uniform: θ′'s signal forward shares θ's (t, ε); its training forward draws t
    over all timesteps (θ sees D_val at every t), on the training batch's images."""
    model = _model(rater_signal="value_gap", value_timesteps="uniform", rater_timesteps=(20, 120))
    calls = {"proxy": [], "value_proxy": []}
    for name in calls:
        getattr(model, name).register_forward_pre_hook(
            lambda m, args, kw, name=name: calls[name].append((args[0].detach().clone(), args[1].detach().clone())),
            with_kwargs=True,
        )
    _fit(model, tiny, tiny, iterations=3, shuffle=False)
    assert len(calls["value_proxy"]) == 6  # per iteration: the signal, then one step
    for i in range(3):
        signal, step = calls["value_proxy"][2 * i : 2 * i + 2]
        train = calls["proxy"][2 * i + 1]  # θ's calls: D_val, then the training batch
        assert torch.equal(signal[0], train[0]) and torch.equal(signal[1], train[1])
        assert ((train[1] >= 20) & (train[1] < 120)).all()
    steps_t = torch.cat([calls["value_proxy"][2 * i + 1][1] for i in range(3)])
    assert steps_t.max() >= 120 and steps_t.unique().numel() > 10  # per-sample t over [0, 1000)
