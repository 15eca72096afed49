"""scorer=value_gap (alchemist_pl.value_gap_scoring) on real emoji at 16 px: θ trained on clean images, θ′ on
their noise-corrupted copies, stored as a rating run folder (the rate stage's summary.json and checkpoint)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from alchemist_pl.bilevel import BilevelRater
from alchemist_pl.corruption import CLEAN
from alchemist_pl.data import ImageCaptionDataset
from alchemist_pl.rater import ConvBackbone, Rater
from alchemist_pl.value_gap_scoring import ValueGapScorer

from .test_signal_audit import UNET, _noisy, _train

TIMESTEPS = (100, 200)


def _rating_folder(path, theta, theta_prime, rater_signal="value_gap"):
    """A rating run folder whose checkpoint holds a :class:`BilevelRater`'s state with the given θ and θ′."""
    torch.manual_seed(0)
    rater = Rater(ConvBackbone(channels=(8, 8), feature_dim=16), hidden_dim=8)
    opt = lambda params: torch.optim.AdamW(params)  # noqa: E731
    module = BilevelRater(theta, DDPMScheduler(), rater, opt, opt, rater_signal=rater_signal, histogram_every=0)
    if theta_prime is not None:
        module.value_proxy.load_state_dict(theta_prime.state_dict())
    (path / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": module.state_dict(), "global_step": 7}, path / "checkpoints" / "last.ckpt")
    config = {
        "proxy": {"unet": {"_target_": "diffusers.UNet2DConditionModel", **UNET},
                  "scheduler": {"_target_": "diffusers.DDPMScheduler", "num_train_timesteps": 1000}},
        "data": {"resolution": 16, "image_size": 16, "image_channels": 3, "latents": False},
        "bilevel": {"rater_signal": rater_signal},
    }  # fmt: skip
    (path / "summary.json").write_text(json.dumps({"stage": "rate", "config": config}))
    return path


@pytest.fixture(scope="module")
def runs(small_split, tmp_path_factory):
    """Two rating folders with the same proxies: θ clean-fitted and θ′ noise-fitted, and the roles exchanged."""
    torch.set_num_threads(1)
    clean_model, noisy_model = _train(small_split), _train(_noisy(small_split))
    out = tmp_path_factory.mktemp("vg")
    return _rating_folder(out / "right", clean_model, noisy_model), _rating_folder(
        out / "swapped", noisy_model, clean_model
    )


@pytest.fixture(scope="module")
def pool(small_split):
    """48 clean images and 48 noise-corrupted ones (noise draws neither proxy saw), with their kinds."""
    noisy = _noisy(small_split, seed=5)
    images = torch.cat([small_split.images[:48], noisy.images[48:]])
    kinds = np.array([CLEAN] * 48 + ["noise"] * 48, dtype=object)
    return ImageCaptionDataset(small_split.sample_ids, images, small_split.captions, small_split.text), kinds


def _auroc_clean_above_noisy(scores, kinds) -> float:
    clean, noisy = scores[kinds == CLEAN], scores[kinds != CLEAN]
    return float((clean[:, None] > noisy[None, :]).mean())


def test_samples_the_pool_proxy_fits_better_than_the_clean_proxy_score_low(runs, pool):
    """keep = ℓ(θ′) − ℓ(θ): θ′ fitted the noisy images, so they score below the clean ones; a flipped sign in
    the scorer, or θ read from θ′'s weights, turns this around."""
    right, _ = runs
    dataset, kinds = pool
    scorer = ValueGapScorer(right, timesteps=TIMESTEPS, batch_size=40)
    scores = scorer(dataset)
    assert scores.shape == (len(dataset),) and scores.dtype == np.float32
    assert _auroc_clean_above_noisy(scores, kinds) > 0.8
    meta = scorer.metadata()
    assert meta["run"] == str(right) and meta["checkpoint"] == str(right / "checkpoints" / "last.ckpt")
    assert meta["params"]["timesteps"] == list(TIMESTEPS) and meta["params"]["draws"] == 1
    assert meta["global_step"] == 7


def test_exchanging_the_proxies_negates_the_scores_exactly_and_the_seed_fixes_them(runs, pool):
    right, swapped = runs
    dataset, _ = pool
    scores = ValueGapScorer(right, timesteps=TIMESTEPS, seed=3)(dataset)
    np.testing.assert_array_equal(ValueGapScorer(swapped, timesteps=TIMESTEPS, seed=3)(dataset), -scores)
    np.testing.assert_array_equal(ValueGapScorer(right, timesteps=TIMESTEPS, seed=3)(dataset), scores)
    # the batch size changes float rounding only; another seed, other noise draws
    rebatched = ValueGapScorer(right, timesteps=TIMESTEPS, seed=3, batch_size=17)(dataset)
    np.testing.assert_allclose(rebatched, scores, rtol=1e-4, atol=1e-4)
    other = ValueGapScorer(right, timesteps=TIMESTEPS, seed=4)(dataset)
    assert np.abs(other - scores).max() > 1e-2


def test_a_first_order_rating_is_refused_by_name(small_split, tmp_path):
    run = _rating_folder(tmp_path / "fo", _train(small_split, steps=1), None, rater_signal="first_order")
    with pytest.raises(ValueError, match=rf"{run}.*first_order.*bilevel=value_gap"):
        ValueGapScorer(run)(small_split)


def test_a_pool_at_another_resolution_is_refused_naming_both(runs, small_split):
    right, _ = runs
    small = ImageCaptionDataset(
        small_split.sample_ids, small_split.images[:, :, :8, :8].contiguous(), small_split.captions, small_split.text
    )
    with pytest.raises(ValueError, match=r"\[3, 8, 8\].*\[3, 16, 16\].*data.resolution=16"):
        ValueGapScorer(right)(small)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="draws"):
        ValueGapScorer("x", draws=0)
    with pytest.raises(ValueError, match="timesteps"):
        ValueGapScorer("x", timesteps=[])
    with pytest.raises(ValueError, match=r"scorer.timesteps must be a non-empty list of distinct ints"):
        ValueGapScorer("x", timesteps=[50, 50])  # would count t=50 twice in the sum over t


def test_a_checkpoint_named_by_its_iteration(runs, pool, tmp_path):
    """scorer.checkpoint=N reads RUN/checkpoints/iteration=N.ckpt (a path with '=' needs quoting in Hydra)."""
    right, swapped = runs
    dataset, _ = pool
    shutil.copy(swapped / "checkpoints" / "last.ckpt", right / "checkpoints" / "iteration=3.ckpt")
    by_iteration = ValueGapScorer(right, checkpoint=3, timesteps=TIMESTEPS, batch_size=40)
    np.testing.assert_array_equal(
        by_iteration(dataset), ValueGapScorer(swapped, timesteps=TIMESTEPS, batch_size=40)(dataset)
    )
    assert by_iteration.metadata()["checkpoint"] == str(right / "checkpoints" / "iteration=3.ckpt")
    with pytest.raises(FileNotFoundError, match="iteration=4.ckpt: no rating checkpoint"):
        ValueGapScorer(right, checkpoint=4, timesteps=TIMESTEPS)(dataset)
