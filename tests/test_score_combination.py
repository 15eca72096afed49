"""Combining scorers: aligned by sample_id, normalised, weighted; a scorer that sees one corruption kind
and one that sees another combine into one that sees both."""

from types import SimpleNamespace

import numpy as np
import pytest

from alchemist_pl.analysis import auroc
from alchemist_pl.errors import DataError
from alchemist_pl.score_combination import ScoreCombination, normalise
from alchemist_pl.scores import write_scores

IDS = [f"s{i:03d}" for i in range(60)]
# 30 clean, 15 corrupted of kind "a", 15 of kind "b"
KIND = np.array(["clean"] * 30 + ["a"] * 15 + ["b"] * 15)


def _file(path, sees: str, rng, reverse_order: bool = False):
    """Scores that put the samples of kind ``sees`` low and are noise otherwise, written in file order
    reversed when asked (the combination must align by sample_id, not by row)."""
    scores = rng.normal(size=len(IDS)) + np.where(KIND == sees, -4.0, 0.0)
    order = np.arange(len(IDS))[::-1] if reverse_order else np.arange(len(IDS))
    write_scores(path, [IDS[i] for i in order], scores[order].astype(np.float32), {"stage": "test"})
    return scores


@pytest.fixture
def two_sources(tmp_path):
    rng = np.random.default_rng(0)
    _file(tmp_path / "a.parquet", "a", rng)
    _file(tmp_path / "b.parquet", "b", rng, reverse_order=True)
    return [tmp_path / "a.parquet", tmp_path / "b.parquet"]


@pytest.mark.parametrize("how", ["rank", "z"])
def test_combination_sees_what_either_source_sees(two_sources, how):
    pool = SimpleNamespace(sample_ids=IDS)
    clean = KIND == "clean"
    single = [ScoreCombination([p], normalise=how)(pool) for p in two_sources]
    both = ScoreCombination(two_sources, normalise=how)(pool)
    alone = [auroc(scores[clean], scores[~clean]) for scores in single]
    assert max(alone) < 0.8  # each source alone misses the other kind
    assert auroc(both[clean], both[~clean]) > max(alone) + 0.1
    assert both.dtype == np.float32 and both.shape == (len(IDS),)


def test_a_negative_weight_turns_a_source_around(two_sources):
    pool = SimpleNamespace(sample_ids=IDS)
    clean = KIND == "clean"
    turned = ScoreCombination(two_sources, weights=[1.0, -1.0])(pool)
    b = KIND == "b"
    assert auroc(turned[clean], turned[b]) < 0.2  # kind b now ranks above clean samples


def test_scores_follow_the_pool_order(two_sources):
    combined = ScoreCombination(two_sources)
    forward = combined(SimpleNamespace(sample_ids=IDS))
    backward = combined(SimpleNamespace(sample_ids=IDS[::-1]))
    np.testing.assert_array_equal(forward, backward[::-1])


def test_normalise_rank_shares_ties_and_z_is_standard():
    np.testing.assert_allclose(normalise(np.array([3.0, 1.0, 3.0, 2.0]), "rank"), [0.875, 0.25, 0.875, 0.5])
    z = normalise(np.array([1.0, 2.0, 3.0, 6.0]), "z")
    assert abs(z.mean()) < 1e-12 and abs(z.std() - 1) < 1e-12
    np.testing.assert_array_equal(normalise(np.ones(4), "z"), np.zeros(4))
    with pytest.raises(ValueError, match="normalise must be one of"):
        normalise(np.ones(3), "minmax")


def test_a_source_of_another_pool_is_refused(tmp_path, two_sources):
    write_scores(tmp_path / "other.parquet", IDS[:-1] + ["x999"], np.zeros(len(IDS), np.float32), {})
    combined = ScoreCombination([two_sources[0], tmp_path / "other.parquet"])
    with pytest.raises(DataError, match=r"other\.parquet: .*1 pool samples have no score \(first: \['s059'\]\)"):
        combined(SimpleNamespace(sample_ids=IDS))
    with pytest.raises(DataError, match=r"1 scored samples are not in the pool \(first: \['s059'\]\)"):
        ScoreCombination(two_sources)(SimpleNamespace(sample_ids=IDS[:-1]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sources": []}, "at least one scores file"),
        ({"sources": ["a", "b"], "weights": [1.0]}, "1 weights for 2 sources"),
        ({"sources": ["a"], "weights": [0.0]}, "not all zero"),
        ({"sources": ["a"], "weights": [float("nan")]}, "must be finite"),
        ({"sources": ["a"], "normalise": "minmax"}, "normalise must be one of"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ScoreCombination(**kwargs)
