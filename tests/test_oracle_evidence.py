"""The evidence path can see data quality: scores from the ground truth of a planted-noise slice,
pruned at keep_ratio 0.5 through the real score and prune stages, give a cleaner subset than random."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alchemist_pl.errors import DataError
from alchemist_pl.scores import read_scores
from alchemist_pl.scoring import GroundTruthScorer
from alchemist_pl.stages import run

from .conftest import compose_run


@pytest.fixture(scope="module")
def oracle_scores(tmp_path_factory, emoji_dir):
    """``(out, summary)`` of the score stage with ``scorer=oracle`` on the slice (``out/score``)."""
    out = tmp_path_factory.mktemp("oracle")
    return out, run(compose_run(out / "score", "+experiment=score", "scorer=oracle"))


def _subset_quality(out, name: str, *overrides) -> dict:
    scores = out / "score" / "scores.parquet"
    summary = run(compose_run(out / name, "+experiment=prune", f"scores_path={scores}", "keep_ratio=0.5", *overrides))
    return summary["metrics"]["subset_quality"]


def test_oracle_subset_is_cleaner_than_random(oracle_scores):
    out, summary = oracle_scores
    ids, _, meta = read_scores(out / "score" / "scores.parquet")
    assert meta["scorer"] == "oracle" and len(ids) == 512
    assert summary["metrics"]["rating_quality"]["auroc"] > 0.99  # clean ranks above corrupted
    oracle = _subset_quality(out, "top_k", "method=top_k")
    pool_share = oracle["pool_corrupted_share"]
    assert 0.25 < pool_share < 0.35 and oracle["subset_size"] == 256
    random = [
        _subset_quality(out, f"random-{seed}", "method=random", f"seed={seed}")["subset_corrupted_share"]
        for seed in range(3)
    ]
    assert all(abs(share - pool_share) < 0.1 for share in random)  # random keeps the pool's share
    assert oracle["subset_corrupted_share"] < min(random) - 0.1


def test_oracle_needs_a_ground_truth(tmp_path, small_split):
    with pytest.raises(DataError, match=r"oracle scorer needs a pool with planted noise.*corruption=web"):
        GroundTruthScorer(str(tmp_path / "train"))(small_split)


def test_oracle_rejects_a_ground_truth_of_another_pool(tmp_path, small_split):
    (tmp_path / "train").mkdir()
    table = pa.table({"sample_id": ["another-pool"], "corruption": ["clean"], "other_id": [""]})
    pq.write_table(table, tmp_path / "corruptions.parquet")
    with pytest.raises(DataError, match=r"96 of 96 pool samples have no ground-truth row.*another pool"):
        GroundTruthScorer(str(tmp_path / "train"))(small_split)


def test_score_stage_combines_score_files(oracle_scores):
    """``scorer=combined`` through the real score stage: the oracle's scores combined with a second copy
    turned around at a smaller weight still rank clean samples first; the sources are recorded."""
    out, _ = oracle_scores
    oracle = out / "score" / "scores.parquet"
    summary = run(
        compose_run(
            out / "combined", "+experiment=score", "scorer=combined", f"scorer.sources=[{oracle},{oracle}]",
            "scorer.weights=[1.0,-0.5]",
        )
    )  # fmt: skip
    assert summary["metrics"]["rating_quality"]["auroc"] > 0.99
    _, _, meta = read_scores(out / "combined" / "scores.parquet")
    assert meta["scorer"] == "combined" and meta["params"]["weights"] == [1.0, -0.5]
    assert meta["params"]["sources"] == [str(oracle)] * 2
