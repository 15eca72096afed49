"""Heuristic scorers (paper Table 1) on real emoji images, and their scores.parquet output."""

import itertools

import numpy as np
import pytest
from PIL import Image, ImageFilter

from alchemist_pl.data import decode_image, iter_samples, load_split
from alchemist_pl.heuristics import SCORERS, clarity, edge_density, frequency
from alchemist_pl.scoring import HeuristicScorer


@pytest.fixture(scope="module")
def emoji(emoji_dir):
    """64 real validation emoji at 32 px, uint8 [N, 3, 32, 32], and their sample_ids."""
    raws = list(itertools.islice(iter_samples(emoji_dir / "val"), 64))
    return [r.sample_id for r in raws], np.stack([decode_image(r, 32) for r in raws])


def _blur(images: np.ndarray, radius: float = 1.5) -> np.ndarray:
    out = [np.asarray(Image.fromarray(im.transpose(1, 2, 0)).filter(ImageFilter.GaussianBlur(radius))) for im in images]
    return np.stack(out).transpose(0, 3, 1, 2).copy()


def _busy(images: np.ndarray) -> np.ndarray:
    """Each image with every object drawn twice smaller, side by side (a real image with more detail)."""
    small = [Image.fromarray(im.transpose(1, 2, 0)).resize((16, 16), Image.Resampling.BICUBIC) for im in images]
    out = []
    for s in small:
        tile = Image.new("RGB", (32, 32))
        for x in (0, 16):
            for y in (0, 16):
                tile.paste(s, (x, y))
        out.append(np.asarray(tile))
    return np.stack(out).transpose(0, 3, 1, 2).copy()


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_blurring_lowers_every_score(emoji, name):
    _, images = emoji
    sharp, blurred = SCORERS[name](images), SCORERS[name](_blur(images))
    assert sharp.shape == (len(images),) and np.isfinite(sharp).all()
    assert (blurred < sharp).mean() > 0.9, (blurred < sharp).mean()
    assert sharp.std() > 0  # the scorer tells real images apart


def test_flat_images_score_zero(emoji):
    _, images = emoji
    flat = np.full((3, 3, 32, 32), 255, dtype=np.uint8)
    flat[1] = 0
    flat[2, 0] = 200  # a flat colour
    assert np.array_equal(edge_density(flat), np.zeros(3))
    np.testing.assert_allclose(clarity(flat), 0, atol=1e-20)
    np.testing.assert_array_equal(frequency(flat), np.zeros(3))
    assert (edge_density(images) > 0).all()


def test_more_detail_scores_higher(emoji):
    _, images = emoji
    busy = _busy(images)
    for name in SCORERS:
        assert np.median(SCORERS[name](busy) - SCORERS[name](images)) > 0, name


def test_parameter_checks(emoji):
    _, images = emoji
    with pytest.raises(ValueError):
        frequency(images, cutoff=0.0)
    with pytest.raises(ValueError):
        edge_density(images, threshold=-1.0)
    with pytest.raises(ValueError):
        clarity(images[:, :1])
    assert (frequency(images, cutoff=0.1) >= frequency(images, cutoff=0.3)).all()  # a lower cutoff counts more energy
    assert (edge_density(images, threshold=0.1) >= edge_density(images, threshold=0.4)).all()


def test_score_stage_scorer_scores_the_decoded_images(emoji, emoji_dir, cache_dir):
    """The score stage's scorer sees a pool's images as the heuristics' decoding gives them, in pool order."""
    ids, images = emoji
    pool = load_split(emoji_dir / "val", resolution=32, cache_dir=cache_dir, limit=64)
    assert pool.sample_ids == ids
    np.testing.assert_allclose(HeuristicScorer("clarity")(pool), clarity(images).astype(np.float32), rtol=1e-6)
    assert HeuristicScorer("frequency", {"cutoff": 0.1}).metadata() == {
        "scorer": "frequency",
        "params": {"cutoff": 0.1},
    }
    with pytest.raises(ValueError, match="scorer must be one of"):
        HeuristicScorer("sharpness")
