"""Wall time, CPU time and peak memory of every pruning method on 10^6..10^8 float32 scores.

    python benchmarks/pruning_scale.py --out benchmarks/results/pruning-scale.md [--sizes 1e6 1e7 1e8] [--repeat 3]

Rows per N (keep_ratio 0.5, seed 0, standard-normal float32 scores: at 10^8 most values tie):

- every method of ``pruning.select`` (``alchemist`` is shift_gsample);
- ``prune``: what the prune stage does after reading the scores: ``choose_subset`` (the draw and
  the kept samples' tie-aware percentiles from one sort), the percentile histogram, and
  ``write_subset`` of the kept samples to a Parquet file (their sample_id strings, the decimal
  index, are made inside the timed section from the kept indices; reading scores.parquet and the
  pool's N sample_ids is not part of the row);
- ``percentiles``: ``ranking.percentiles`` of all N scores;
- ``np.argsort``: ``np.argsort(scores)`` (NumPy's default sort), the reference in the same run.

Each (N, row) runs ``--repeat`` times, each in a fresh subprocess, so its peak RSS (``ru_maxrss``
of that process) is its own; the table gives the median wall time, the median process CPU time
(user + sys, all threads) of the timed section, the median peak RSS, and the peak minus the RSS
after the scores were made (the memory the method needs on top of its input).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROWS = [
    "shift_gsample",
    "gsample",
    "random",
    "top_k",
    "bottom_k",
    "block",
    "full",
    "prune",
    "percentiles",
    "np.argsort",
]

CHILD = r"""
import json, resource, sys, tempfile, time
from pathlib import Path
import numpy as np
from alchemist_pl.pruning import choose_subset, percentiles, select
n, row = int(float(sys.argv[1])), sys.argv[2]
scores = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
keep = 1.0 if row == "full" else 0.5
if row == "prune":  # imported before the clock starts
    import pyarrow as pa, pyarrow.compute as pc, pyarrow.parquet
    from alchemist_pl.scores import write_subset
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with tempfile.TemporaryDirectory() as tmp:
    t, c = time.perf_counter(), cpu()
    if row == "prune":
        idx, pct = choose_subset(n, scores=scores, keep_ratio=keep, method="shift_gsample", seed=0)
        hist = np.histogram(pct, bins=10, range=(0.0, 1.0))
        ids = pc.cast(pa.array(idx), pa.string())  # the kept sample_ids: their decimal index
        write_subset(Path(tmp) / "subset.parquet", ids, scores[idx], pct, {"stage": "prune"})
        k = len(idx)
    elif row == "percentiles":
        k = len(percentiles(scores))
    elif row == "np.argsort":
        k = len(np.argsort(scores))
    else:
        k = len(select(scores, keep, row, seed=0))
    wall, proc = time.perf_counter() - t, cpu() - c
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"wall": wall, "cpu": proc, "peak_gb": peak / 2**20, "extra_gb": (peak - base) / 2**20, "k": k}))
"""


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _measure(n: str, row: str, repeat: int, root: Path) -> dict:
    runs = []
    for _ in range(repeat):
        load = os.getloadavg()[0]
        out = subprocess.run([sys.executable, "-c", CHILD, n, row], cwd=root, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"{row} at N={n} failed:\n{out.stderr}")
        runs.append({**json.loads(out.stdout.strip().splitlines()[-1]), "load": load})
    keys = ("wall", "cpu", "peak_gb", "extra_gb", "load")
    return {"n": float(n), "row": row, **{k: _median([r[k] for r in runs]) for k in keys}, "runs": runs}


def _table(rows: list[dict]) -> list[str]:
    lines = [
        "| N | method | wall (s) | CPU (s) | peak RSS (GB) | extra over the input (GB) | load at start | all runs: wall / CPU (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        runs = ", ".join(f"{x['wall']:.1f} / {x['cpu']:.1f}" for x in r["runs"])
        lines.append(
            f"| {r['n']:.0e} | {r['row']} | {r['wall']:.2f} | {r['cpu']:.2f} | {r['peak_gb']:.2f} |"
            f" {r['extra_gb']:.2f} | {r['load']:.1f} | {runs} |"
        )
    return lines


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--sizes", nargs="*", default=["1e6", "1e7", "1e8"])
    p.add_argument("--repeat", type=int, default=3, help="runs per (N, row), each in a fresh process; medians reported")
    p.add_argument("--rows", nargs="*", default=ROWS, choices=ROWS)
    p.add_argument(
        "--src", type=Path, default=Path(__file__).resolve().parents[1], help="checkout whose alchemist_pl is timed"
    )
    args = p.parse_args()
    root = args.src.resolve()
    git = lambda *a: subprocess.run(["git", *a], cwd=root, capture_output=True, text=True).stdout.strip()  # noqa: E731
    commit, dirty = git("rev-parse", "--short", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    load0, started = os.getloadavg(), time.time()
    rows = []
    for n in args.sizes:
        for row in args.rows:
            rows.append(_measure(n, row, args.repeat, root))
            print({k: v for k, v in rows[-1].items() if k != "runs"}, flush=True)
    minutes = (time.time() - started) / 60
    lines = [
        "# Pruning at scale: every method, the prune stage's path and np.argsort (keep_ratio 0.5, float32 scores)",
        "",
        f"- command: `python benchmarks/pruning_scale.py --out {args.out} --sizes {' '.join(args.sizes)}"
        f" --repeat {args.repeat}{' --rows ' + ' '.join(args.rows) if args.rows != ROWS else ''}"
        f"{' --src ' + str(args.src) if root != Path(__file__).resolve().parents[1] else ''}`",
        f"- commit of the timed alchemist_pl: `{commit}`{' (with uncommitted changes)' if dirty else ''}",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()},"
        f" OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; shared with other jobs: load average"
        f" {load0[0]:.1f} / {load0[1]:.1f} / {load0[2]:.1f} (1 / 5 / 15 min) at the start,"
        f" {os.getloadavg()[0]:.1f} at the end; wall time of the whole run {minutes:.1f} min",
        f"- each cell: median of {args.repeat} runs, each in a fresh process; CPU = user + sys of the timed section"
        " (all threads); peak RSS = the process's ru_maxrss; load at start = the 1-min load average as the run began",
        "",
        *_table(rows),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
