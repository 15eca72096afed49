"""Time and peak memory of ``alchemist_pl.pruning.select`` on 10^6..10^8 float32 scores.

Two more rows per N time what the prune stage does (shift_gsample subset + the rank percentiles
of every score): with two sorts (``select`` and ``percentiles`` each sorting) and with one
shared ``descending_order`` passed to both.

    python benchmarks/pruning_scale.py --out benchmarks/results/pruning-scale.md [--sizes 1e6 1e7 1e8]

Each (N, method) runs in a fresh subprocess so its peak RSS is its own; the table reports the
select() wall time and the process's peak RSS minus the RSS after the scores were created
(i.e. the memory select itself needs on top of the input).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

METHODS = ["shift_gsample", "gsample", "random", "top_k", "bottom_k", "block", "prune:two-sorts", "prune:one-sort"]

CHILD = r"""
import json, resource, sys, time
import numpy as np
from alchemist_pl.pruning import descending_order, percentiles, select
n, method = int(float(sys.argv[1])), sys.argv[2]
scores = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if method == "prune:two-sorts":
    idx = select(scores, 0.5, "shift_gsample", seed=0)
    pct = percentiles(scores)
elif method == "prune:one-sort":
    order = descending_order(scores)
    idx = select(scores, 0.5, "shift_gsample", seed=0, order=order)
    pct = percentiles(scores, order=order)
else:
    idx = select(scores, 0.5, method, seed=0)
dt = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"n": n, "method": method, "seconds": dt, "peak_gb": peak / 2**20, "extra_gb": (peak - base) / 2**20, "k": len(idx)}))
"""


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--sizes", nargs="*", default=["1e6", "1e7", "1e8"])
    p.add_argument("--repeat", type=int, default=1, help="runs per (N, method); the table reports the median time")
    args = p.parse_args()
    root = Path(__file__).resolve().parents[1]
    rows = []
    for n in args.sizes:
        for m in METHODS:
            runs = []
            for _ in range(args.repeat):
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, n, m], cwd=root, capture_output=True, text=True, check=True
                )
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            runs.sort(key=lambda r: r["seconds"])
            rows.append({**runs[len(runs) // 2], "all_seconds": [round(r["seconds"], 2) for r in runs]})
            print(rows[-1], flush=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
    ).stdout.strip()
    lines = [
        "# pruning.select at scale (keep_ratio 0.5, float32 scores)",
        "",
        f"- command: `python benchmarks/pruning_scale.py --out {args.out} --sizes {' '.join(args.sizes)}"
        f" --repeat {args.repeat}` (median of {args.repeat} runs; all runs in the last column)",
        f"- commit: `{commit}`",
        f"- machine: {platform.machine()}, {__import__('os').cpu_count()} cores, Python {platform.python_version()};"
        f" load average at the end {__import__('os').getloadavg()[0]:.1f} (the machine was shared: times are noisy)",
        "",
        "| N | method | time (s) | process peak RSS (GB) | extra over the input (GB) | all runs (s) |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r['n']:.0e} | {r['method']} | {r['seconds']:.2f} | {r['peak_gb']:.2f} | {r['extra_gb']:.2f} |"
            f" {', '.join(map(str, r['all_seconds']))} |"
            for r in rows
        ],
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
