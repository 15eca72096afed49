"""The cross-fitted caption agreement (alchemist_pl.caption_crossfit) on the real D_val split at 16 px with a
quarter of its captions swapped."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alchemist_pl.caption_crossfit import CrossFitCaptionScorer, fold_of
from alchemist_pl.data import ImageCaptionDataset, load_split
from alchemist_pl.domain_encoder import train_domain_encoder
from alchemist_pl.scoring import caption_agreement


def _with_captions(split, captions) -> ImageCaptionDataset:
    return ImageCaptionDataset(split.sample_ids, split.images, captions, split.text)


@pytest.fixture(scope="module")
def swapped(emoji_dir, cache_dir):
    """D_val at 16 px with the captions of every 4th sample rotated among those samples (each gets another
    sample's caption text); returns the dataset and the [N] bool mask of swapped samples."""
    torch.set_num_threads(1)
    split = load_split(emoji_dir / "val", resolution=16, cache_dir=cache_dir)
    captions = list(split.captions)
    chosen = list(range(0, len(captions), 4))
    rotated = [captions[i] for i in chosen[7:] + chosen[:7]]
    mask = np.zeros(len(captions), dtype=bool)
    for i, c in zip(chosen, rotated):
        if c != captions[i]:
            captions[i], mask[i] = c, True
    return _with_captions(split, captions), mask


def _auroc(scores, bad) -> float:
    good, worse = scores[~bad], scores[bad]
    return float((good[:, None] > worse[None, :]).mean())


def test_swapped_captions_score_below_matched_ones(swapped):
    """Each fold's encoder learns the pool's image-caption relation from the other folds, so a sample whose
    caption was swapped scores low; a flipped sign or the image paired with the wrong caption row fails this."""
    dataset, bad = swapped
    scorer = CrossFitCaptionScorer(folds=2, epochs=10, seed=0)
    scores = scorer(dataset)
    assert scores.shape == (len(dataset),) and scores.dtype == np.float32 and np.isfinite(scores).all()
    assert _auroc(scores, bad) > 0.75
    meta = scorer.metadata()
    assert meta["params"]["folds"] == 2 and sum(meta["fold_sizes"]) == len(dataset)


def test_a_sample_is_scored_by_an_encoder_that_never_saw_it(swapped):
    """Changing one sample's caption changes no other score of its fold (that fold's encoder trained on the
    other folds only) and changes the scores of the other fold (whose encoder trained on it)."""
    dataset, _ = swapped
    folds = fold_of(dataset.sample_ids, 2)
    scorer = CrossFitCaptionScorer(folds=2, epochs=2, seed=3)
    before = scorer(dataset)
    i = int(np.flatnonzero(folds == 0)[0])
    captions = list(dataset.captions)
    captions[i] = next(c for c in dataset.text.captions if c and c != captions[i])
    after = scorer(_with_captions(dataset, captions))
    same_fold = (folds == 0) & (np.arange(len(folds)) != i)
    np.testing.assert_array_equal(after[same_fold], before[same_fold])
    assert not np.allclose(after[folds == 1], before[folds == 1])


def test_folds_depend_on_the_sample_id_alone():
    ids = [f"s{i:04d}" for i in range(200)]
    f = fold_of(ids, 3)
    assert set(f.tolist()) == {0, 1, 2}
    np.testing.assert_array_equal(fold_of(ids[::-1], 3), f[::-1])
    np.testing.assert_array_equal(fold_of(ids[:50], 3), f[:50])


@pytest.mark.parametrize(
    "kwargs, match",
    [({"folds": 1}, "folds must be an integer of at least 2"), ({"folds": True}, "folds"),
     ({"epochs": 0}, "epochs must be a positive integer"), ({"batch_size": 2.5}, "batch_size"),
     ({"batch_size": 1}, "batch_size must be at least 2"),
     ({"lr": 0}, "lr must be a positive finite number"), ({"lr": True}, "lr must be a positive finite number"),
     ({"lr": "2e-3"}, "lr must be a positive finite number, got '2e-3'"), ({"lr": None}, "lr must be"),
     ({"lr": float("inf")}, "lr must be a positive finite number"), ({"seed": 2.7}, "seed must be an integer"),
     ({"width": 12}, "width must be a multiple of 8"), ({"num_features": 100}, "num_features must be a multiple of 8")],
)  # fmt: skip
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CrossFitCaptionScorer(**kwargs)


def test_a_pool_too_small_or_with_one_caption_is_refused(swapped):
    dataset, _ = swapped
    tiny = ImageCaptionDataset(dataset.sample_ids[:3], dataset.images[:3], dataset.captions[:3], dataset.text)
    with pytest.raises(ValueError, match="needs at least 4 pool samples, got 3"):
        CrossFitCaptionScorer()(tiny)
    one = _with_captions(dataset, [dataset.captions[0]] * len(dataset))
    with pytest.raises(ValueError, match=r"fold 0: the \d+ samples of the other folds have 1 distinct caption"):
        CrossFitCaptionScorer(epochs=1)(one)


def test_a_pool_with_an_empty_fold_is_refused_before_anything_trains(swapped):
    """Six samples none of which hashes to fold 2 of 3: scoring them would silently cross-fit 2 folds, not 3."""
    dataset, _ = swapped
    keep = np.flatnonzero(fold_of(dataset.sample_ids, 3) != 2)[:6].tolist()
    pool = ImageCaptionDataset([dataset.sample_ids[i] for i in keep], dataset.images[keep],
                               [dataset.captions[i] for i in keep], dataset.text)  # fmt: skip
    scorer = CrossFitCaptionScorer(folds=3, epochs=1)
    with pytest.raises(ValueError, match=r"fold 2 of 3 holds none of the 6 pool samples \(fold sizes \[\d, \d, 0\]"):
        scorer.check_pool(pool)
    with pytest.raises(ValueError, match="fold 2 of 3 holds none"):
        scorer(pool)
    assert scorer.fold_sizes is None  # refused before any encoder trained


def _subset(dataset, mask) -> ImageCaptionDataset:
    keep = np.flatnonzero(mask).tolist()
    return ImageCaptionDataset([dataset.sample_ids[i] for i in keep], dataset.images[keep],
                               [dataset.captions[i] for i in keep], dataset.text)  # fmt: skip


def test_fold_f_is_scored_by_an_encoder_trained_on_the_other_folds_with_seed_plus_f(swapped):
    """The documented recipe rebuilt from its public parts for fold 1 of 2: an encoder trained on fold 0 alone with
    seed + 1, then the caption agreement of fold 1, gives the scorer's fold-1 scores (one seed for every fold, or
    a fold's own samples in its encoder's training set, does not)."""
    dataset, _ = swapped
    folds = fold_of(dataset.sample_ids, 2)
    scores = CrossFitCaptionScorer(folds=2, epochs=2, batch_size=256, lr=2e-3, seed=3, width=32, num_features=128)(
        dataset
    )
    train = _subset(dataset, folds == 0)
    encoder = train_domain_encoder(train, 2, min(256, len(train)), 2e-3, 3 + 1, 32, 128)
    expected = caption_agreement(encoder, _subset(dataset, folds == 1)).numpy()
    np.testing.assert_allclose(scores[folds == 1], expected, rtol=1e-6, atol=1e-6)
