"""The default rating (``train.py +experiment=rate``, ``rate.scores=auto``) on planted-noise pools, beside
its own parts and the baseline scorers.

    python benchmarks/default_rating.py --pools 0,1 --seeds 0,1,2 --out /work/dr-out \
        --results benchmarks/results/default-rating-f2.md

For each pool seed P (``corruption=web corruption.pool_size=4000 corruption.seed=P``: 4,000 samples of the
emoji training split, 30 % corrupted, 200 of each of six kinds) and rating seed S, through the CLI, one
process on one thread (outputs in ``OUT/pool{P}/seed{S}``, reused when present): the rate stage with the
shipped defaults, then the prune stage at ``keep_ratio=0.5`` with ``method=top_k``. Per pool, once
(deterministic): the score stage with ``scorer=clip_score`` (the CLIP-score filter, encoder trained on D_val)
and ``scorer=clarity``. Rows: the rate stage's ``scores.parquet`` and the parts it writes beside it (the
rater's scores, the value gap of θ and θ′, the cross-fitted caption agreement), the baselines, and z-score
sums (:class:`alchemist_pl.score_combination.ScoreCombination`, weights 1, 1) that replace one part of the
default by a baseline. AUROC clean vs corrupted overall and per kind and the corrupted share of the top-k
50 % subset (:func:`alchemist_pl.audit.separation`; ground truth: the pool's ``corruptions.parquet``);
``subset share`` is the corrupted share of the prune stage's ``subset.parquet``. Mean ± std over the
rating seeds, per pool and over both pools.
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
from alchemist_pl.scores import read_scores, read_subset  # noqa: E402

COLUMNS = ("all", "blur", "noise", "blank", "caption_swap", "near_duplicate", "collage", "top50_corrupted_share")
POOL = ["corruption=web", "corruption.pool_size=4000", "logger=csv", "threads=1"]


def _run(cmd: list[str], log: Path) -> dict:
    """Run ``cmd`` in the checkout on one thread; its wall, CPU and 1-min load at start and end."""
    before, load0, started = resource.getrusage(resource.RUSAGE_CHILDREN), os.getloadavg()[0], time.time()
    with open(log, "w") as f:
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=f, stderr=subprocess.STDOUT,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"command": " ".join(cmd[1:]), "wall_s": time.time() - started, "cpu_s": cpu,
            "load_start": load0, "load_end": os.getloadavg()[0]}  # fmt: skip


def run_pool(pool: int, seeds: list[int], out: Path, extra: list[str] = (), dedup: bool = False) -> None:
    """The baseline scorers once, then the default rating (with the ``extra`` overrides) and its top-k 50 %
    prune per seed (``dedup``: also with ``dedup.enabled=true``, into ``prune-top_k-dedup``)."""
    py, base = [sys.executable, "train.py"], [*POOL, f"corruption.seed={pool}"]
    out.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        d = out / f"seed{seed}"
        if not (d / "cost.json").exists():
            cmd = py + ["+experiment=rate", *base, *extra, f"seed={seed}", f"hydra.run.dir={d}"]
            cost = _run(cmd, out / f"rate{seed}.log")
            (d / "cost.json").write_text(json.dumps(cost, indent=1))
        for name, more in [("prune-top_k", [])] + ([("prune-top_k-dedup", ["dedup.enabled=true"])] if dedup else []):
            p = d / name
            if not (p / "summary.json").exists():
                _run(py + ["+experiment=prune", *base, f"seed={seed}", "method=top_k", "keep_ratio=0.5", *more,
                           f"scores_path={d}/scores.parquet", f"hydra.run.dir={p}"], out / f"{name}{seed}.log")  # fmt: skip
    for scorer in ("clip_score", "clarity"):
        d = out / scorer
        if not (d / "scores.parquet").exists():
            _run(py + ["+experiment=score", *base, f"scorer={scorer}", f"hydra.run.dir={d}"], out / f"{scorer}.log")


def rows_for_seed(out: Path, seed: int) -> tuple[dict, dict, int]:
    """``{row label: separation}`` of one rating, ``{prune folder: its subset's corrupted share}``, the pool size."""
    d = out / f"seed{seed}"
    ids, _, meta = read_scores(d / "scores.parquet")
    truth = read_ground_truth(Path(meta["train_path"]).parent / GROUND_TRUTH)
    kinds = np.array([truth[i] for i in ids], dtype=object)
    pool = SimpleNamespace(sample_ids=ids)
    files = {"default rating (scores.parquet)": [d / "scores.parquet"],
             "part: the rater (rater-scores.parquet)": [d / "rater-scores.parquet"],
             "part: value gap (value-gap-scores.parquet)": [d / "value-gap-scores.parquet"],
             "part: caption cross-fit (caption-scores.parquet)": [d / "caption-scores.parquet"],
             "CLIP-score filter (encoder on D_val)": [out / "clip_score" / "scores.parquet"],
             "clarity": [out / "clarity" / "scores.parquet"],
             "value gap + CLIP-score filter (D_val) (z)": [d / "value-gap-scores.parquet", out / "clip_score" / "scores.parquet"],
             "clarity + caption cross-fit (z)": [out / "clarity" / "scores.parquet", d / "caption-scores.parquet"],
             "rater + caption cross-fit (z)": [d / "rater-scores.parquet", d / "caption-scores.parquet"]}  # fmt: skip
    rows = {label: separation(ScoreCombination(paths, normalise="z")(pool), kinds) for label, paths in files.items()}
    shares = {}
    for name in ("prune-top_k", "prune-top_k-dedup"):
        if (d / name / "subset.parquet").exists():
            subset, _ = read_subset(d / name / "subset.parquet")
            shares[name] = float(np.mean([truth[s] != "clean" for s in subset]))
    return rows, shares, len(ids)


def render(results: dict, args, started: float, host: str) -> str:
    lines = [
        "# The default rating on planted-noise pools: its scores, its parts, the baselines",
        "",
        f"- command: `python benchmarks/default_rating.py {' '.join(sys.argv[1:])}`",
        f"- commit: `{commit('alchemist_pl', 'conf', 'benchmarks/default_rating.py')}`",
        f"- machine: {host}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; wall time {time.time() - started:.0f} s",
        "",
        (__doc__ or "").split("\n\n", 2)[2].strip(),
        "",
    ]
    pools = sorted(results)
    groups = [(f"pool seed {p}", [(p, s) for s in sorted(results[p]["rows"])]) for p in pools]
    if len(pools) > 1:
        groups.append((f"pool seeds {pools} together", [(p, s) for p in pools for s in sorted(results[p]["rows"])]))
    for title, keys in groups:
        first = results[keys[0][0]]["rows"][keys[0][1]]
        lines += [f"## {title}: {len(keys)} ratings, mean ± std", "",
                  "| score | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]  # fmt: skip
        for label in first:
            cells = [mean_std([results[p]["rows"][s][label][c] for p, s in keys], 3) for c in COLUMNS]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        shares = [results[p]["subset_share"][s]["prune-top_k"] for p, s in keys]
        lines += ["", f"Prune stage, `method=top_k keep_ratio=0.5` on the default rating: corrupted share of "
                      f"subset.parquet {mean_std(shares, 3)} (pool 0.300)"]  # fmt: skip
        dedup = [results[p]["subset_share"][s].get("prune-top_k-dedup") for p, s in keys]
        if all(x is not None for x in dedup):
            lines += ["", f"The same with `dedup.enabled=true` (near-duplicate removal before the selection): "
                          f"{mean_std(dedup, 3)}; per rating " + ", ".join(f"{x:.4f}" for x in dedup)]  # fmt: skip
        lines += [""]
    lines += ["## Per rating", "", "| pool | seed | AUROC | caption_swap | top-50 % share | rate wall s | rate CPU s | "
              "fit s | scoring s | 1-min load start → end |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for p in pools:
        for s in sorted(results[p]["rows"]):
            r, c, m = (
                results[p]["rows"][s]["default rating (scores.parquet)"],
                results[p]["cost"][s],
                results[p]["summary"][s],
            )
            lines.append(f"| {p} | {s} | {r['all']:.3f} | {r['caption_swap']:.3f} | {r['top50_corrupted_share']:.3f} | "
                         f"{c['wall_s']:.0f} | {c['cpu_s']:.0f} | {m['wall_s'] - m['scoring_time_s']:.0f} | "
                         f"{m['scoring_time_s']:.0f} | {c['load_start']:.1f} → {c['load_end']:.1f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pools", default="0,1", help="corruption.seed of each pool")
    p.add_argument("--seeds", default="0,1,2", help="rating seeds")
    p.add_argument("--out", type=Path, required=True, help="OUT/pool{P}/seed{S}: the runs (reused)")
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/default-rating-f2.md"))
    p.add_argument("--report-only", action="store_true", help="read the runs in OUT; run nothing")
    p.add_argument("--dedup", action="store_true", help="also prune with dedup.enabled=true")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides of the rate stage (after --)")
    args = p.parse_args()
    host, started = machine(), time.time()
    pools, seeds = [int(x) for x in args.pools.split(",")], [int(x) for x in args.seeds.split(",")]
    results = {}
    for pool in pools:
        out = args.out / f"pool{pool}"
        if not args.report_only:
            run_pool(pool, seeds, out, args.overrides, args.dedup)
        res = {"rows": {}, "subset_share": {}, "cost": {}, "summary": {}}
        for s in seeds:
            res["rows"][s], res["subset_share"][s], _ = rows_for_seed(out, s)
            res["cost"][s] = json.loads((out / f"seed{s}" / "cost.json").read_text())
            summary = json.loads((out / f"seed{s}" / "summary.json").read_text())
            res["summary"][s] = {"wall_s": summary.get("wall_time_s", float("nan")),
                                 "scoring_time_s": summary["metrics"]["scoring_time_s"]}  # fmt: skip
        results[pool] = res
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(render(results, args, started, host))
    print(args.results.read_text())


if __name__ == "__main__":
    main()
