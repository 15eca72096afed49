"""The rater's scores, a baseline scorer's and their combination (``scorer=combined``) on a planted-noise
pool: AUROC clean vs corrupted overall and per kind, and the corrupted share of the top-k 50 % subset.

    python benchmarks/combined_scoring.py --rater-runs RUNS --scorer-scores SCORES.parquet \
        --pool data/emoji-web-f0.3-n4000-s0 --seeds 0,1,2 --out benchmarks/results/combined-scoring-f2.md

``RUNS/seed{S}/scores.parquet`` are rate-stage outputs of the pool (e.g. benchmarks/signal_rating.py's
``default`` variant), ``SCORES.parquet`` a score-stage output of the same pool (e.g. ``scorer=clip_score``,
deterministic, so one file serves every seed); the pool's ``corruptions.parquet`` is the ground truth.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's alchemist_pl, not another installed copy
sys.path.insert(0, str(ROOT / "benchmarks"))

from stamp import commit, machine, mean_std  # noqa: E402

from alchemist_pl.audit import separation  # noqa: E402
from alchemist_pl.corruption import GROUND_TRUTH, read_ground_truth  # noqa: E402
from alchemist_pl.score_combination import ScoreCombination  # noqa: E402
from alchemist_pl.scores import read_scores  # noqa: E402

KINDS = ("blur", "noise", "blank", "caption_swap", "near_duplicate", "collage")


def rows_for_seed(rater: Path, scorer: Path, truth: dict, weights: list[float]) -> dict:
    """``{row label: separation dict}`` for one rating run."""
    ids, _, _ = read_scores(rater)
    pool = SimpleNamespace(sample_ids=ids)
    kinds = np.array([truth[i] for i in ids], dtype=object)
    scores = {
        "rater": ScoreCombination([rater])(pool),
        "scorer": ScoreCombination([scorer])(pool),
        **{
            f"combined, {how}, weights {weights}": ScoreCombination([rater, scorer], weights, normalise=how)(pool)
            for how in ("rank", "z")
        },
    }
    return {label: separation(s, kinds) for label, s in scores.items()}


def render(per_seed: dict, args, started: float, host: str) -> str:
    labels = list(next(iter(per_seed.values())))
    cols = ["all", *KINDS, "top50_corrupted_share"]
    lines = [
        "# The rater, a baseline scorer and their combination on planted noise",
        "",
        f"- command: `python benchmarks/combined_scoring.py {' '.join(sys.argv[1:])}`",
        f"- commit: `{commit('alchemist_pl', 'benchmarks/combined_scoring.py')}`",
        f"- machine: {host}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; wall time {time.time() - started:.0f} s",
        f"- rater: `{args.rater_runs}/seed{{S}}/scores.parquet`, seeds {sorted(per_seed)}; scorer: `{args.scorer_scores}`",
        f"- ground truth: `{args.pool}/{GROUND_TRUTH}`",
        "",
        "AUROC (clean above corrupted) overall and per kind, and the corrupted share of the top 50 %;",
        "mean ± std over the rater's seeds (the scorer's row varies only through ties and order).",
        "",
        "| score | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for label in labels:
        cells = [mean_std([per_seed[s][label].get(c) for s in per_seed], 3) for c in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Per seed (AUROC all / top-50 % corrupted share):", ""]
    for label in labels:
        per = "; ".join(
            f"seed {s}: {per_seed[s][label]['all']:.3f} / {per_seed[s][label]['top50_corrupted_share']:.3f}"
            for s in per_seed
        )
        lines.append(f"- {label}: {per}")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rater-runs", type=Path, required=True)
    p.add_argument("--scorer-scores", type=Path, required=True)
    p.add_argument("--pool", type=Path, required=True, help="the pool folder holding corruptions.parquet")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--weights", default="1,1", help="rater weight, scorer weight")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    started, host = time.time(), machine()  # its load average is the one at the start
    truth = read_ground_truth(args.pool / GROUND_TRUTH)
    weights = [float(w) for w in args.weights.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    per_seed = {
        s: rows_for_seed(args.rater_runs / f"seed{s}" / "scores.parquet", args.scorer_scores, truth, weights)
        for s in seeds
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(per_seed, args, started, host))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
