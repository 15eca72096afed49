"""The default rating's cost beside the paper's rule, measured side by side in one process on one thread.

    python benchmarks/rating_cost.py --results benchmarks/results/rating-cost-f2.md

1. Seconds per bilevel iteration of ``bilevel=first_order`` (the paper's rule) and of the shipped default
   (``bilevel=value_gap``), interleaved (``--repeats`` rounds of ``--iterations`` iterations each, the first
   iteration of each variant left out; :func:`signal_rating.measure_cost`) on the 4,000-sample planted-noise
   pool (pool seed 0) with batches of 32 + 32.
2. The scoring the default's rate stage does after its iterations (``rate.scores=auto``), timed on the same
   pool with a freshly initialised θ, θ′ (the cost does not depend on the weights): the rater's forward
   (what ``rate.scores=rater`` costs), the value gap at the default timesteps, and the cross-fitted caption
   agreement with the default settings. CPU seconds of this process per pool sample.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's alchemist_pl, not another installed copy
sys.path.insert(0, str(ROOT / "benchmarks"))

from signal_rating import COMMON, measure_cost  # noqa: E402
from stamp import commit, machine  # noqa: E402


def scoring_cost() -> dict:
    """CPU seconds per pool sample of each scoring step of the default rate stage, on one thread."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from alchemist_pl.data import load_split
    from alchemist_pl.scoring import score_dataset
    from alchemist_pl.stages.rate_scores import caption_scorer
    from alchemist_pl.value_gap_scoring import value_gap_scores

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("config", overrides=COMMON)
    d = cfg.data
    pool = load_split(d.train_path, d.resolution, d.cache_dir, None, d.max_tokens)
    model = instantiate(cfg.bilevel)
    vg = cfg.rate.value_gap
    steps = {
        "rater": lambda: score_dataset(model.rater, pool, cfg.rate.score_batch_size),
        "value_gap": lambda: value_gap_scores(
            {"val": model.proxy.eval(), "pool": model.value_proxy.eval()},
            model.noise_scheduler,
            pool,
            list(vg.timesteps),
            0,
            int(vg.draws),
            int(vg.batch_size),
        ),  # fmt: skip
        "caption_crossfit": lambda: caption_scorer(cfg)[0](pool),
    }
    out = {}
    for name, step in steps.items():
        cpu0, wall0 = time.process_time(), time.perf_counter()
        step()
        out[name] = {"cpu_ms_per_sample": 1e3 * (time.process_time() - cpu0) / len(pool),
                     "wall_s": time.perf_counter() - wall0}  # fmt: skip
    out["pool_size"] = len(pool)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/rating-cost-f2.md"))
    a = p.parse_args()
    torch.set_num_threads(1)
    host, started = machine(), time.time()
    cost = measure_cost(["first_order", "default"], a.iterations, a.repeats)
    scoring = scoring_cost()
    n = scoring.pop("pool_size")
    fo, df = cost["first_order"], cost["default"]
    per_iter = {k: v["cpu_ms_per_sample"] * n / 1e3 for k, v in scoring.items()}
    lines = [
        "# The default rating's cost beside the paper's rule",
        "",
        f"- command: `python benchmarks/rating_cost.py {' '.join(sys.argv[1:])}`",
        f"- commit: `{commit('alchemist_pl', 'conf', 'benchmarks/rating_cost.py', 'benchmarks/signal_rating.py')}`",
        f"- machine: {host}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; wall time {time.time() - started:.0f} s",
        "",
        (__doc__ or "").split("\n\n", 2)[2].strip(),
        "",
        "| bilevel iteration | median s | × first_order | iterations timed |",
        "|---|---|---|---|",
        f"| first_order (the paper's rule) | {fo['median_s']:.3f} | 1.00 | {fo['n']} |",
        f"| default (value_gap, replay off) | {df['median_s']:.3f} | {df['ratio']:.2f} | {df['n']} |",
        "",
        f"| scoring step ({n} pool samples) | CPU ms per sample | CPU s for the pool | = default iterations |",
        "|---|---|---|---|",
    ]
    for name, v in scoring.items():
        lines.append(f"| {name} | {v['cpu_ms_per_sample']:.2f} | {per_iter[name]:.1f} | "
                     f"{per_iter[name] / df['median_s']:.0f} |")  # fmt: skip
    a.results.parent.mkdir(parents=True, exist_ok=True)
    a.results.write_text("\n".join(lines) + "\n")
    print(a.results.read_text())


if __name__ == "__main__":
    main()
