"""Wall time, CPU time and peak memory of every pruning method and of the prune stage's path at 10^6..10^8 scores.

    python benchmarks/pruning_scale.py --out benchmarks/results/pruning-scale.md [--sizes 1e8] [--repeat 1]
        [--rows ROW ...] [--before DIR]

Rows per N (keep_ratio 0.5, seed 0, standard-normal float32 scores: at 10^8 most values tie):

- every method of ``pruning.select`` (``alchemist`` is shift_gsample);
- ``prune``: the prune stage's data path, ``stages.prune.prune_file`` with shift_gsample: read the
  score column of ``scores.parquet`` (N rows, sample_id = the decimal row index, written by
  ``write_scores`` before the row in its own process), ``choose_subset`` (the draw and the kept
  samples' tie-aware percentiles), read and check the N sample_ids, write ``subset.parquet``;
- ``prune steps``: the same calls as ``prune_file`` makes, one at a time, each timed (a second table);
- ``percentiles``: ``ranking.percentiles`` of all N scores;
- ``np.argsort``: ``np.argsort(scores)`` (NumPy's default sort), the yardstick in the same run.

Each (N, row) runs ``--repeat`` times, each in a fresh subprocess, so its peak RSS (``ru_maxrss``
of that process) is its own; the table gives the median wall time, the median process CPU time
(user + sys, all threads) of the timed section, the median peak RSS, the peak minus the RSS before
the timed section (the memory the method needs on top of its input), and the 1-min load average
as the row's first run began and as its last ended. On a shared machine wall time grows with the
load and CPU time much less. ``--before DIR`` (a checkout of another commit, ``git worktree add
DIR COMMIT``) runs each row there too, run by run alternating with this checkout, so that both see
the same load: rows ``ROW (before)``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stamp import commit, machine

ROWS = [
    "shift_gsample",
    "gsample",
    "random",
    "top_k",
    "bottom_k",
    "block",
    "full",
    "prune",
    "prune steps",
    "percentiles",
    "np.argsort",
]

WRITE = r"""
import sys, numpy as np, pyarrow as pa, pyarrow.compute as pc
from alchemist_pl.scores import write_scores
n = int(float(sys.argv[1]))
ids = pc.cast(pa.array(np.arange(n)), pa.string())
write_scores(sys.argv[2], ids, np.random.default_rng(0).standard_normal(n, dtype=np.float32), {"stage": "benchmark"})
"""

CHILD = r"""
import json, resource, sys, tempfile, time
from pathlib import Path
import numpy as np
from alchemist_pl.pruning import percentiles, select
n, row, scores_path = int(float(sys.argv[1])), sys.argv[2], sys.argv[3]
scores = None if row.startswith("prune") else np.random.default_rng(0).standard_normal(n, dtype=np.float32)
keep = 1.0 if row == "full" else 0.5
if row.startswith("prune"):  # imported before the clock starts, with the stage's dependencies
    from alchemist_pl.pruning import choose_subset
    from alchemist_pl.scores import read_kept_ids, read_score_values, write_subset
    from alchemist_pl.stages.prune import prune_file
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
steps, last = {}, [0.0, 0.0]
def step(name):
    now = [time.perf_counter(), cpu()]
    steps[name] = [now[0] - last[0], now[1] - last[1]]
    last[:] = now
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with tempfile.TemporaryDirectory() as tmp:
    t, c = time.perf_counter(), cpu()
    last[:] = [t, c]
    if row == "prune":
        k = len(prune_file(scores_path, Path(tmp) / "subset.parquet", keep, "shift_gsample", 0, {}, {})[2])
    elif row == "prune steps":  # prune_file's calls
        scores, meta = read_score_values(scores_path); step("read the score column")
        idx, pct = choose_subset(len(scores), scores=scores, keep_ratio=keep, method="shift_gsample", seed=0)
        step("the draw and the kept samples' percentiles (choose_subset)")
        kept_scores, k = scores[idx], len(idx)
        del scores
        ids = read_kept_ids(scores_path, meta, idx); step("read and check the sample_ids, keep the kept ones")
        write_subset(Path(tmp) / "subset.parquet", ids, kept_scores, pct, {"scores_metadata": meta})
        step("write subset.parquet")
    elif row == "percentiles":
        k = len(percentiles(scores))
    elif row == "np.argsort":
        k = len(np.argsort(scores))
    else:
        k = len(select(scores, keep, row, seed=0))
    wall, proc = time.perf_counter() - t, cpu() - c
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"wall": wall, "cpu": proc, "peak_gb": peak / 2**20, "extra_gb": (peak - base) / 2**20, "k": k, "steps": steps}))
"""


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _measure(n: str, row: str, repeat: int, roots: dict, scores_path: Path) -> list[dict]:
    """The row's runs in each checkout of ``roots`` (label -> folder), alternating run by run."""
    runs = {label: [] for label in roots}
    load = os.getloadavg()[0]
    for _ in range(repeat):
        for label, root in roots.items():
            cmd = [sys.executable, "-c", CHILD, n, row, str(scores_path)]
            out = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
            if out.returncode:
                raise RuntimeError(f"{row} at N={n} in {root} failed (exit status {out.returncode}):\n{out.stderr}")
            runs[label].append(json.loads(out.stdout.strip().splitlines()[-1]))
    keys, end = ("wall", "cpu", "peak_gb", "extra_gb"), os.getloadavg()[0]
    return [
        {
            "n": float(n),
            "row": row + label,
            **{k: _median([r[k] for r in got]) for k in keys},
            "load": (load, end),
            "runs": got,
        }
        for label, got in runs.items()
    ]


def _table(rows: list[dict]) -> list[str]:
    lines = [
        "| N | method | wall (s) | CPU (s) | peak RSS (GB) | extra over the input (GB) | 1-min load: start / end |"
        " all runs: wall / CPU (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        runs = ", ".join(f"{x['wall']:.1f} / {x['cpu']:.1f}" for x in r["runs"])
        lines.append(
            f"| {r['n']:.0e} | {r['row']} | {r['wall']:.2f} | {r['cpu']:.2f} | {r['peak_gb']:.2f} |"
            f" {r['extra_gb']:.2f} | {r['load'][0]:.1f} / {r['load'][1]:.1f} | {runs} |"
        )
    return lines


def _steps_table(rows: list[dict]) -> list[str]:
    """The ``prune steps`` rows: each step's median wall and CPU time over the runs."""
    lines = []
    for r in (r for r in rows if r["row"].startswith("prune steps")):
        lines += [
            "",
            f"The prune path's steps at N = {r['n']:.0e}{r['row'][len('prune steps') :]} (median of {len(r['runs'])}"
            " run(s); all runs: wall / CPU):",
            "",
            "| step | wall (s) | CPU (s) | all runs: wall / CPU (s) |",
            "|---|---|---|---|",
        ]
        for name in r["runs"][0]["steps"]:
            got = [x["steps"][name] for x in r["runs"]]
            runs = ", ".join(f"{w:.1f} / {c:.1f}" for w, c in got)
            lines.append(
                f"| {name} | {_median([w for w, _ in got]):.2f} | {_median([c for _, c in got]):.2f} | {runs} |"
            )
    return lines


def _head(folder: Path) -> str:
    """The short commit checked out in ``folder``, with `` (+ uncommitted changes)`` if its library differs."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=folder, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "alchemist_pl"], cwd=folder, capture_output=True, text=True)
    return head.strip() + (" (+ uncommitted changes)" if dirty.stdout.strip() else "")


def _scores_file(n: str, root: Path, folder: Path) -> tuple[Path, float]:
    """``scores.parquet`` of N rows written by ``write_scores`` in its own process; its wall time (s)."""
    path, t = folder / f"scores-{n}.parquet", time.perf_counter()
    out = subprocess.run([sys.executable, "-c", WRITE, n, str(path)], cwd=root, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"writing the scores file of N={n} failed:\n{out.stderr}")
    return path, time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--sizes", nargs="*", default=["1e8"])
    p.add_argument("--repeat", type=int, default=1, help="runs per (N, row), each in a fresh process; medians reported")
    p.add_argument("--rows", nargs="*", default=ROWS, choices=ROWS)
    p.add_argument(
        "--before", type=Path, help="another checkout (git worktree add DIR COMMIT): each row also runs there"
    )
    args = p.parse_args()
    root = Path(__file__).resolve().parents[1]
    roots = {" (before)": args.before, "": root} if args.before else {"": root}
    stamp, started, rows, setup = machine(), time.time(), [], []
    with tempfile.TemporaryDirectory() as folder:
        for n in args.sizes:
            prunes = any(r.startswith("prune") for r in args.rows)
            scores_path, seconds = _scores_file(n, root, Path(folder)) if prunes else (Path(), 0.0)
            setup.append(f"{n}: {seconds:.0f} s")
            for row in args.rows:
                rows += _measure(n, row, args.repeat, roots, scores_path)
                print([{k: v for k, v in r.items() if k != "runs"} for r in rows[-len(roots) :]], flush=True)
    minutes = (time.time() - started) / 60
    command = (
        f"python benchmarks/pruning_scale.py --out {args.out} --sizes {' '.join(args.sizes)} --repeat {args.repeat}"
        + (f" --before {args.before}" if args.before else "")
    )
    lines = [
        "# Pruning at scale: every method, the prune stage's path and np.argsort (keep_ratio 0.5, float32 scores)",
        "",
        f"- command: `{command}{' --rows ' + ' '.join(args.rows) if args.rows != ROWS else ''}`",
        f"- commit of the timed alchemist_pl: `{commit()}`"
        + (
            f"; rows `(before)`: `{_head(args.before)}` in {args.before}, run by run alternating with the timed commit"
            if args.before
            else ""
        ),
        f"- machine: {stamp}; 1-min load at the end {os.getloadavg()[0]:.1f}; OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}; wall time of the whole run {minutes:.1f} min"
        f" (writing the prune row's scores file, outside the rows: {', '.join(setup)})",
        f"- each cell: median of {args.repeat} run(s), each in a fresh process; CPU = user + sys of the timed section"
        " (all threads); peak RSS = the process's ru_maxrss",
        "",
        *_table(rows),
        *_steps_table(rows),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
