"""Behaviour unchanged across a refactor: the same scores, subsets and test loss for the same seed
at two commits.

    python benchmarks/same_scores.py BASE [HEAD] --results benchmarks/results/same-scores.md [--overrides K=V ...]

For each commit, in a temporary copy of its tree (``git archive``; ``data/`` linked to this checkout's, so both use the
same dataset and caches), with seed 0:

    train.py +experiment=rate   debug=smoke logger=csv                       -> rate/scores.parquet
    train.py +experiment=prune  debug=smoke logger=csv scores_path=<rate>    -> prune/subset.parquet
    train.py +experiment=subset debug=smoke logger=csv eval.enabled=false scores_path=<rate>
             keep_ratio=0.3                                                  -> train/subset.parquet

(``--overrides``: Hydra overrides added to every stage, e.g. ``proxy=unet_tiny_text bilevel=exact``),
then every column of the three Parquet files and the train stage's test and train loss are
compared exactly. Exit status 1 when anything differs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["debug=smoke", "logger=csv", "seed=0"]
FILES = ("rate/scores.parquet", "prune/subset.parquet", "train/subset.parquet")


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def run_at(commit: str, out: Path, overrides: list[str]) -> dict:
    """Run the three stages at ``commit`` into ``out``; returns the train stage's losses."""
    tree = out / "tree"
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    (tree / "data").symlink_to((ROOT / "data").resolve())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1"}
    scores = out / "rate" / "scores.parquet"
    for args in (
        ["+experiment=rate"],
        ["+experiment=prune", f"scores_path={scores}"],
        ["+experiment=subset", "eval.enabled=false", f"scores_path={scores}", "keep_ratio=0.3"],
    ):
        stage = {"rate": "rate", "prune": "prune", "subset": "train"}[args[0].split("=")[1]]
        cmd = [sys.executable, "train.py", *args, *SMOKE, *overrides, f"hydra.run.dir={out / stage}"]
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{commit}: {' '.join(cmd[2:])} failed:\n{proc.stderr[-3000:]}")
    metrics = json.loads((out / "train" / "summary.json").read_text())["metrics"]
    # the logger that wrote the rate stage's last line: proof that this commit's code ran
    logged = re.search(r"\]\[(alchemist_pl[\w.]*)\]\[INFO\] - rate: scored", (out / "rate" / "train.log").read_text())
    return {**{k: metrics[k] for k in ("test/loss", "train/loss", "train_samples")}, "rate logged by": logged[1]}


def compare(a: Path, b: Path) -> list[tuple[str, int, bool]]:
    """(file, rows, identical) for each of ``FILES``: every column equal, value for value."""
    rows = []
    for name in FILES:
        x, y = pq.read_table(a / name), pq.read_table(b / name)
        same = x.column_names == y.column_names and all(
            x.column(c).to_pylist() == y.column(c).to_pylist() for c in x.column_names
        )
        rows.append((name, x.num_rows, same))
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("base")
    p.add_argument("head", nargs="?", default="HEAD")
    p.add_argument("--results", default=None, help="markdown file to write")
    p.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides for every stage of both commits")
    a = p.parse_args()
    base, head = _git("rev-parse", a.base), _git("rev-parse", a.head)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        runs = {c: run_at(c, Path(tmp) / c[:12], a.overrides) for c in (base, head)}
        rows = compare(Path(tmp) / base[:12], Path(tmp) / head[:12])
    losses = ("test/loss", "train/loss", "train_samples")
    extra = f" --overrides {' '.join(a.overrides)}" if a.overrides else ""
    ok = all(same for _, _, same in rows) and all(runs[base][k] == runs[head][k] for k in losses)
    lines = [
        "# Same scores before and after a refactor",
        "",
        f"Command: `python benchmarks/same_scores.py {base[:12]} {head[:12]}{extra}`; base {base}, head {head}.",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs ({platform.platform()}), shared with other jobs; "
        f"wall time {time.time() - started:.0f} s for both commits.",
        "Stages (seed 0, `debug=smoke`): rate -> prune -> train from the scores at keep_ratio 0.3 (no evaluation).",
        "",
        "| file | rows | every column identical |",
        "|---|---|---|",
        *[f"| {name} | {n} | {'yes' if same else 'NO'} |" for name, n, same in rows],
        "",
        "| train stage | base | head |",
        "|---|---|---|",
        *[f"| {k} | {runs[base][k]} | {runs[head][k]} |" for k in runs[base]],
        "",
        f"Result: {'identical' if ok else 'DIFFERENT'}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.results:
        Path(a.results).parent.mkdir(parents=True, exist_ok=True)
        Path(a.results).write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
