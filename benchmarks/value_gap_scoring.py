"""The pool scored by a rating run's own proxies (``scorer=value_gap``) beside the run's rater, the CLIP-score
filter and their combinations, on a planted-noise pool.

    python benchmarks/value_gap_scoring.py --runs /work/amort-out/rating/replay4_reg --seeds 0,1,2 \
        --clip-scores /work/eff-out/score/scores.parquet --out /work/vg-out \
        --results benchmarks/results/value-gap-scoring-f2.md

For each rating run folder ``RUNS/seed{S}`` (``bilevel=value_gap``) the whole pool it rated is scored through
the CLI, ``train.py +experiment=score scorer=value_gap scorer.run=RUNS/seed{S} scorer.seed=S
data.train_path=<the run's pool>``, one process per seed on one thread (outputs in ``OUT/seed{S}``, reused
when present): Σ_t z_t(ℓ(θ′) − ℓ(θ)) at t = 50, 100, one noise draw per (sample, t) shared by θ and θ′.
Rows: the run's rater (its ``scores.parquet``), the value-gap scorer, the CLIP-score filter (``--clip-scores``,
a score stage's ``scorer=clip_score`` output of the same pool, deterministic: one file serves every seed) and
``scorer=combined`` (:class:`alchemist_pl.score_combination.ScoreCombination`, weights 1, 1) of each with the
CLIP-score filter, rank and z. AUROC clean vs corrupted overall and per kind and the corrupted share of the
top-k 50 % subset (:func:`alchemist_pl.audit.separation`; ground truth: the pool's ``corruptions.parquet``),
mean ± std over seeds. CPU s per sample: the scoring process's user + system CPU time (start-up, loading the
pool and the checkpoint included) over the pool size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
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
from alchemist_pl.value_gap_scoring import run_config  # noqa: E402

COLUMNS = ("all", "blur", "noise", "blank", "caption_swap", "near_duplicate", "collage", "top50_corrupted_share")


def score_seed(run: Path, seed: int, out: Path) -> dict:
    """Run the score stage with ``scorer=value_gap`` on the run's pool (unless ``out`` holds its result);
    returns the cost record (wall, CPU, load), also saved as ``out/cost.json``."""
    cost_file = out / "cost.json"
    if (out / "scores.parquet").exists() and cost_file.exists():
        return json.loads(cost_file.read_text())
    pool = run_config(run).data.train_path
    cmd = [sys.executable, "train.py", "+experiment=score", "scorer=value_gap", f"scorer.run={run}",
           f"scorer.seed={seed}", f"data.train_path={pool}", "logger=csv", f"hydra.run.dir={out}"]  # fmt: skip
    before, load0, started = resource.getrusage(resource.RUSAGE_CHILDREN), os.getloadavg()[0], time.time()
    subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    cost = {"command": " ".join(cmd), "wall_s": time.time() - started, "cpu_s": cpu,
            "load_start": load0, "load_end": os.getloadavg()[0]}  # fmt: skip
    cost_file.write_text(json.dumps(cost, indent=1))
    return cost


def rows_for_seed(run: Path, scored: Path, clip: Path) -> tuple[dict, int]:
    """``{row label: separation}`` for one run, and the pool size."""
    ids, _, _ = read_scores(scored / "scores.parquet")
    pool = SimpleNamespace(sample_ids=ids)
    truth = read_ground_truth(Path(run_config(run).data.train_path).parent / GROUND_TRUTH)
    kinds = np.array([truth[i] for i in ids], dtype=object)
    rater, gap = run / "scores.parquet", scored / "scores.parquet"
    scores = {"rater (the run's scores)": ScoreCombination([rater])(pool),
              "value gap (scorer=value_gap)": ScoreCombination([gap])(pool),
              "CLIP-score filter": ScoreCombination([clip])(pool)}  # fmt: skip
    for how in ("rank", "z"):
        scores[f"combined {how}: rater + CLIP"] = ScoreCombination([rater, clip], normalise=how)(pool)
        scores[f"combined {how}: value gap + CLIP"] = ScoreCombination([gap, clip], normalise=how)(pool)
    return {label: separation(s, kinds) for label, s in scores.items()}, len(ids)


def render(per_seed: dict, costs: dict, n: int, clip_meta: dict, args, started: float, host: str) -> str:
    seeds = sorted(per_seed)
    labels = list(per_seed[seeds[0]])
    lines = [
        "# The pool scored by the rating run's own proxies (scorer=value_gap), the rater, the CLIP-score filter",
        "",
        f"- command: `python benchmarks/value_gap_scoring.py {' '.join(sys.argv[1:])}`",
        f"- commit: `{commit('alchemist_pl', 'conf', 'benchmarks/value_gap_scoring.py')}`",
        f"- machine: {host}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; wall time {time.time() - started:.0f} s",
        f"- runs: `{args.runs}/seed{{S}}`, seeds {seeds}; CLIP-score filter: `{args.clip_scores}` (scorer "
        f"{clip_meta.get('scorer')}, train_path {clip_meta.get('train_path')})",
        "",
        (__doc__ or "").split("\n\n", 2)[2].strip(),
        "",
        f"AUROC (clean above corrupted) and top-k 50 % corrupted share, {n} pool samples, mean ± std over seeds {seeds}:",
        "",
        "| score | " + " | ".join(COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for label in labels:
        cells = [mean_std([per_seed[s][label][c] for s in seeds], 3) for c in COLUMNS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Per seed (AUROC all / top-50 % corrupted share):", ""]
    for label in labels:
        lines.append(f"- {label}: " + "; ".join(
            f"seed {s}: {per_seed[s][label]['all']:.3f} / {per_seed[s][label]['top50_corrupted_share']:.3f}"
            for s in seeds))  # fmt: skip
    lines += [
        "",
        "Cost of `scorer=value_gap` per seed (one process, OMP_NUM_THREADS=1; 1-min load at start → end):",
        "",
    ]
    for s in seeds:
        c = costs[s]
        lines.append(f"- seed {s}: wall {c['wall_s']:.0f} s, CPU {c['cpu_s']:.0f} s = {1e3 * c['cpu_s'] / n:.1f} ms "
                     f"per sample (2 timesteps); load {c['load_start']:.1f} → {c['load_end']:.1f}")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, required=True, help="RUNS/seed{S}: rate stage outputs, bilevel=value_gap")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--clip-scores", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="OUT/seed{S}: the score stage outputs (reused)")
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/value-gap-scoring-f2.md"))
    args = p.parse_args()
    started, host = time.time(), machine()
    _, _, clip_meta = read_scores(args.clip_scores)
    per_seed, costs, n = {}, {}, 0
    for seed in [int(s) for s in args.seeds.split(",")]:
        run = args.runs / f"seed{seed}"
        if Path(clip_meta.get("train_path", "")).resolve() != Path(run_config(run).data.train_path).resolve():
            raise SystemExit(f"{args.clip_scores} scores {clip_meta.get('train_path')}, not the pool of {run}")
        costs[seed] = score_seed(run, seed, args.out / f"seed{seed}")
        per_seed[seed], n = rows_for_seed(run, args.out / f"seed{seed}", args.clip_scores)
        print(seed, {k: round(v["all"], 3) for k, v in per_seed[seed].items()}, flush=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(render(per_seed, costs, n, clip_meta, args, started, host))
    print(args.results.read_text())


if __name__ == "__main__":
    main()
