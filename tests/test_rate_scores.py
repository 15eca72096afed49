"""What the rate stage's scores.parquet holds (rate.scores, alchemist_pl.stages.rate_scores): the choice, and
the proxy scores computed from a rating's θ and θ′ on real emoji at 16 px."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from alchemist_pl.audit import zscore
from alchemist_pl.data import load_split
from alchemist_pl.scores import read_scores
from alchemist_pl.stages.rate_scores import PART_FILES, proxy_scores, score_source
from alchemist_pl.value_gap_scoring import ValueGapScorer, value_gap_scores

from .conftest import compose_run
from .test_signal_audit import _noisy, _train
from .test_value_gap_scoring import _auroc_clean_above_noisy, pool  # noqa: F401  (the 48 clean + 48 noisy pool)


@pytest.mark.parametrize(
    "overrides, expected",
    [([], "value_gap_caption"), (["bilevel=first_order"], "rater"), (["bilevel=exact"], "rater"),
     (["data.latents=true"], "rater"), (["rate.streaming=true"], "rater"), (["rate.scores=rater"], "rater"),
     (["rate.scores=value_gap"], "value_gap")],
)  # fmt: skip
def test_auto_reads_the_proxies_only_where_a_rating_has_them(make_cfg, overrides, expected):
    assert score_source(make_cfg(*overrides)) == expected


@pytest.mark.parametrize(
    "overrides, match",
    [(["rate.scores=value_gap", "bilevel=first_order"], "bilevel.rater_signal=first_order trains no pool proxy"),
     (["rate.scores=value_gap_caption", "data.latents=true"], "data.latents=true: the proxy scores read pixels"),
     (["rate.scores=value_gap", "rate.streaming=true"], "rate.streaming=true"),
     (["rate.scores=rater_only"], "rate.scores must be one of"),
     (["rate.caption_crossfit.folds=1"], "rate.caption_crossfit: folds must be an integer of at least 2"),
     (["rate.caption_crossfit.lr=abc"], "rate.caption_crossfit: lr must be a positive finite number, got 'abc'"),
     (["rate.caption_crossfit.width=12"], r"rate.caption_crossfit: width must be a multiple of 8 \(the encoder.s GroupNorm groups\), got 12"),
     (["rate.caption_crossfit.weight=-2"], "rate.caption_crossfit.weight must be a finite number >= 0")],
)  # fmt: skip
def test_a_choice_the_rating_cannot_compute_is_refused(make_cfg, overrides, match):
    with pytest.raises(ValueError, match=match):
        score_source(make_cfg(*overrides))


@pytest.mark.parametrize("scores", ["value_gap", "value_gap_caption", "auto"])
@pytest.mark.parametrize(
    "override, match",
    [("rate.value_gap.timesteps=[]", r"rate.value_gap.timesteps must be a non-empty list of distinct ints in \[0, 1000\)"),
     ("rate.value_gap.timesteps=[50,1000]", r"in \[0, 1000\), got \[50, 1000\]"),
     ("rate.value_gap.timesteps=[-1]", "rate.value_gap.timesteps"),
     ("rate.value_gap.timesteps=[50.5]", "rate.value_gap.timesteps"),
     ("rate.value_gap.timesteps=[50,50]", "distinct"),
     ("rate.value_gap.timesteps=50", "rate.value_gap.timesteps"),
     ("rate.value_gap.draws=0", "rate.value_gap.draws must be a positive integer, got 0"),
     ("rate.value_gap.draws=1.5", "rate.value_gap.draws"),
     ("+rate.value_gap.draw=4", r"rate.value_gap has unknown key\(s\) \['draw'\]"),
     ("rate.value_gap.batch_size=0", "rate.value_gap.batch_size must be a positive integer, got 0")],
)  # fmt: skip
def test_a_bad_value_gap_setting_is_refused_before_the_rating_trains(make_cfg, scores, override, match):
    with pytest.raises(ValueError, match=match):
        score_source(make_cfg(f"rate.scores={scores}", override))


def test_a_bad_value_gap_setting_is_ignored_where_the_rater_scores(make_cfg):
    assert score_source(make_cfg("rate.scores=rater", "rate.value_gap.timesteps=[]")) == "rater"


def test_the_rate_stage_refuses_a_bad_value_gap_setting_before_it_trains(make_cfg, tmp_path):
    from alchemist_pl.stages import run

    from .test_streaming import RATE_TINY

    with pytest.raises(ValueError, match="rate.value_gap.draws must be a positive integer, got 0"):
        run(make_cfg(*RATE_TINY, "rate.value_gap.draws=0", output_dir=tmp_path / "out"))
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.parametrize(
    "overrides, match",
    [(["rate.caption_crossfit.folds=300"], r"rate.caption_crossfit \(data.train_path's pool\): cross-fitting 300 folds "
      r"needs at least 600 pool samples, got 512"),
     (["data.limit_train=3", "rate.batch_size=2"], "cross-fitting 5 folds needs at least 10 pool samples, got 3")],
)  # fmt: skip
def test_the_rate_stage_refuses_a_pool_the_caption_cross_fit_cannot_split_before_it_trains(
    make_cfg, tmp_path, overrides, match
):
    from alchemist_pl.stages import run

    from .test_streaming import RATE_TINY

    with pytest.raises(ValueError, match=match):
        run(make_cfg(*RATE_TINY, *overrides, output_dir=tmp_path / "out"))
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.fixture(scope="module")
def rating(small_split):
    """A rating's stand-in: θ (``proxy``) fitted to clean images, θ′ (``value_proxy``) to their noisy copies."""
    torch.set_num_threads(1)
    return SimpleNamespace(proxy=_train(small_split), value_proxy=_train(_noisy(small_split)),
                           noise_scheduler=DDPMScheduler())  # fmt: skip


def _cfg(weight=1.0):
    return OmegaConf.create({
        "seed": 0,
        "rate": {"value_gap": {"timesteps": [100, 200], "draws": 1, "batch_size": 40},
                 "caption_crossfit": {"folds": 2, "epochs": 2, "batch_size": 256, "lr": 2e-3, "width": 32,
                                      "num_features": 128, "weight": weight}},
    })  # fmt: skip


def test_value_gap_scores_rank_what_the_pool_proxy_fits_better_low(rating, pool, tmp_path):  # noqa: F811
    """keep = ℓ(θ′) − ℓ(θ) read from the rating's own models: θ′ fitted the noisy images, so they score low; θ and θ′
    exchanged, or the sign flipped, turns this around."""
    dataset, kinds = pool
    rater = np.arange(len(dataset), dtype=np.float32)
    scores, paths = proxy_scores(_cfg(), rating, dataset, rater, "value_gap", tmp_path, {"stage": "rate"})
    assert _auroc_clean_above_noisy(scores, kinds) > 0.8
    # standardised (mean 0, std 1), so value_gap_caption's z-score of this part changes nothing on it
    assert abs(float(scores.mean())) < 1e-5 and abs(float(scores.std()) - 1) < 1e-5
    assert set(paths) == {"rater", "value_gap"}
    ids, saved, _ = read_scores(tmp_path / PART_FILES["rater"])
    assert ids == dataset.sample_ids and np.array_equal(saved, rater)
    np.testing.assert_array_equal(read_scores(tmp_path / PART_FILES["value_gap"])[1], scores)


@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_value_gap_caption_is_the_z_score_sum_of_its_parts(rating, pool, tmp_path, weight):  # noqa: F811
    dataset, kinds = pool
    rater = np.zeros(len(dataset), dtype=np.float32)
    scores, paths = proxy_scores(_cfg(weight), rating, dataset, rater, "value_gap_caption", tmp_path, {})
    vg, caption = (read_scores(paths[p])[1].astype(np.float64) for p in ("value_gap", "caption"))
    np.testing.assert_allclose(scores, zscore(vg) + weight * zscore(caption), rtol=1e-5, atol=1e-5)
    assert _auroc_clean_above_noisy(scores, kinds) > 0.7
    assert read_scores(paths["caption"])[2]["scorer"] == "caption_crossfit"


@pytest.mark.parametrize("weight", [-1.0, float("nan"), True, "1"])
def test_a_bad_caption_weight_is_refused(rating, pool, tmp_path, weight):  # noqa: F811
    dataset, _ = pool
    with pytest.raises(ValueError, match="rate.caption_crossfit.weight must be a finite number >= 0"):
        proxy_scores(_cfg(weight), rating, dataset, np.zeros(len(dataset)), "value_gap_caption", tmp_path, {})


@pytest.mark.parametrize(
    "timesteps, draws, batch_size, match",
    [([], 1, 40, "timesteps must be a non-empty list"), ([100, 1000], 1, 40, r"\[0, 1000\)"),
     ([100], 0, 40, "draws must be a positive integer"), ([100], 1, 0, "batch_size must be a positive integer")],
)  # fmt: skip
def test_value_gap_scores_refuses_settings_that_score_nothing(rating, pool, timesteps, draws, batch_size, match):  # noqa: F811
    """No timestep or no draw used to give every sample the score 0 (a constant z-score) without a word."""
    dataset, _ = pool
    models = {"val": rating.proxy, "pool": rating.value_proxy}
    with pytest.raises(ValueError, match=match):
        value_gap_scores(models, rating.noise_scheduler, dataset, timesteps, 0, draws, batch_size)


@pytest.mark.parametrize("decay", [1.0, -0.1, True, "0.9"])
def test_a_bad_ema_decay_is_refused(make_cfg, decay):
    cfg = make_cfg(f"bilevel.ema_decay={decay!r}" if isinstance(decay, str) else f"bilevel.ema_decay={decay}")
    with pytest.raises((ValueError, InstantiationException), match="ema_decay must be a number in"):
        instantiate(cfg.bilevel)


def test_a_rating_with_moving_averages_is_scored_by_them(tmp_path):
    """bilevel.ema_decay > 0: the rate stage's value gap and scorer=value_gap on its last.ckpt read the same
    averaged θ, θ′ (bit for bit), and the averages are not the trained weights."""
    from alchemist_pl.stages import run

    cfg = compose_run(
        tmp_path, "+experiment=rate", "bilevel.ema_decay=0.8", "rate.caption_crossfit.epochs=1", "data.limit_train=128"
    )
    run(cfg)
    ids, in_stage, _ = read_scores(tmp_path / PART_FILES["value_gap"])
    rated = load_split(cfg.data.train_path, cfg.data.resolution, cfg.data.cache_dir, cfg.data.limit_train)
    assert rated.sample_ids == ids
    scorer = ValueGapScorer(tmp_path, timesteps=list(cfg.rate.value_gap.timesteps), seed=cfg.seed)
    np.testing.assert_array_equal(scorer(rated), in_stage)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    raw, avg = state["value_proxy.conv_in.weight"], state["value_proxy_ema.module.conv_in.weight"]
    assert not torch.equal(raw, avg)


def test_the_moving_averages_pickle_and_match_torchs_update(make_cfg):
    """A ddp_spawn fit pickles the module; the update equals torch's get_ema_multi_avg_fn bit for bit."""
    import pickle

    from torch.optim.swa_utils import get_ema_multi_avg_fn

    module = instantiate(make_cfg("bilevel.ema_decay=0.9").bilevel)
    copy = pickle.loads(pickle.dumps(module))
    assert copy.proxy_ema is not None and copy.value_proxy_ema is not None
    ours = [torch.randn(5), torch.randn(3)]
    theirs = [p.clone() for p in ours]
    current = [torch.randn(5), torch.randn(3)]
    module.proxy_ema.multi_avg_fn(ours, current, 1)
    get_ema_multi_avg_fn(0.9)(theirs, current, 1)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
