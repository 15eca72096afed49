"""Combine the scores of several scorers of one pool (e.g. the rater's and the CLIP-score filter's) into
one score, as a pool scorer for the score stage.

Scorers see different corruptions: on planted noise the value-gap rater separates blurred, noisy and
blank images, the CLIP-score filter mismatched captions. A weighted sum of their normalised scores
keeps a sample only when no weighted scorer ranks it low.
"""

from __future__ import annotations

import numpy as np

from .errors import DataError
from .ranking import percentiles
from .scores import read_scores

NORMALISATIONS = ("rank", "z")


def normalise(scores: np.ndarray, how: str) -> np.ndarray:
    """``rank``: the percentile rank in (0, 1], 1 = highest: ``1 −`` :func:`alchemist_pl.ranking.percentiles`
    (ties share their mean rank, as in the pruning); ``z``: (s − mean) / std
    (all zeros for constant scores). Input and output [N]; output float64.

    Raises:
        ValueError: unknown ``how``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if how == "rank":
        return 1.0 - percentiles(scores)
    if how == "z":
        std = scores.std()
        return (scores - scores.mean()) / std if std > 0 else np.zeros_like(scores)
    raise ValueError(f"normalise must be one of {NORMALISATIONS}, got {how!r}")


def aligned(path: str, sample_ids: list[str]) -> np.ndarray:
    """The scores of ``path`` (a scores file or folder) in the order of ``sample_ids`` [N].

    Raises:
        DataError: the file scores other samples than ``sample_ids`` (names the file, how many differ
            and the first ones).
        ScoresError: a bad scores file (:func:`alchemist_pl.scores.read_scores`).
    """
    ids, scores, _ = read_scores(path)
    row = {sample_id: i for i, sample_id in enumerate(ids)}
    missing = [s for s in sample_ids if s not in row]
    if missing or len(ids) != len(sample_ids):
        extra = sorted(set(ids) - set(sample_ids))
        raise DataError(
            f"{path}: its scores must cover exactly the pool's {len(sample_ids)} samples; {len(missing)} pool "
            f"samples have no score (first: {missing[:3]}), {len(extra)} scored samples are not in the pool "
            f"(first: {extra[:3]}). Score the same data.train_path with every source."
        )
    return scores[np.fromiter((row[s] for s in sample_ids), dtype=np.int64, count=len(sample_ids))]


class ScoreCombination:
    """A pool scorer: ``Σ_k w_k · normalise(s_k)`` over the score files ``sources`` of the same pool.

    ``scorer(pool)`` -> [N] float32 aligned with ``pool.sample_ids`` (higher = keep first with ``top_k``).

    Args:
        sources: paths of ``scores.parquet`` files (or folders of them), e.g. a rate stage's and a score
            stage's output, each covering exactly the pool's samples.
        weights: one real weight per source (a negative weight turns a lower-is-better score around);
            default all 1.
        normalise: ``rank`` (percentile ranks, default: scale-free and robust to outliers) or ``z``.
        name: the scorer's name in the scores file's metadata.

    Raises:
        ValueError: no source, a weight count that differs from the source count, all-zero or
            non-finite weights, an unknown normalisation.
        DataError / ScoresError: when called, a source that does not score exactly the pool's samples
            or is not a valid scores file (names the file and samples).
    """

    def __init__(self, sources, weights=None, normalise: str = "rank", name: str = "combined"):
        self.sources = [str(s) for s in (sources or [])]
        self.weights = [1.0] * len(self.sources) if weights is None else [float(w) for w in weights]
        if not self.sources:
            raise ValueError("scorer.sources: give at least one scores file to combine")
        if len(self.weights) != len(self.sources):
            raise ValueError(f"scorer.weights: {len(self.weights)} weights for {len(self.sources)} sources")
        if not np.all(np.isfinite(self.weights)) or not any(self.weights):
            raise ValueError(f"scorer.weights must be finite and not all zero, got {self.weights}")
        if normalise not in NORMALISATIONS:
            raise ValueError(f"scorer.normalise must be one of {NORMALISATIONS}, got {normalise!r}")
        self.how, self.name = normalise, name

    def __call__(self, pool) -> np.ndarray:
        ids = list(pool.sample_ids)
        total = np.zeros(len(ids))
        for path, weight in zip(self.sources, self.weights):
            total += weight * normalise(aligned(path, ids), self.how)
        return total.astype(np.float32)

    def metadata(self) -> dict:
        params = {"sources": self.sources, "weights": self.weights, "normalise": self.how}
        return {"scorer": self.name, "params": params}
