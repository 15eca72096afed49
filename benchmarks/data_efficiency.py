"""The data-efficiency benchmark: does an Alchemist-selected subset train a better model?

    python benchmarks/data_efficiency.py --out outputs/efficiency --results benchmarks/results/efficiency

Three Hydra multiruns of ``train.py +experiment=efficiency`` (conf/experiment/efficiency.yaml:
4,000-sample pool with 30% planted web-style noise, 0.45M-parameter downstream UNet, equal epochs):

1. rate:  seed in --seeds                                   (one rater + proxy per seed)
2. train: method=full x seed
3. train: method in --methods x keep_ratio in --keep-ratios x seed, each from its seed's scores

then ``python -m alchemist_pl.compare`` over all of it, into --results (report.md + plots), with
this run's stamp prepended: command, commit, whether the tree was clean, machine, date and wall
times; ``times.json`` holds the same stamp and the wall time of each phase. Extra arguments after ``--`` go to
every ``train.py`` call (e.g. ``-- trainer=gpu logger=csv``).
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

ROOT = Path(__file__).resolve().parents[1]
SETUP = (
    "Setup unless the overrides above change it (conf/experiment/efficiency.yaml): 4,000-sample emoji pool, "
    "30% planted noise (5% each: caption swap, blur, heavy noise, blank, collage, near-duplicate), clean "
    "D_val and test from data.val_path / data.test_path; downstream UNet (16,32,32) 0.45M params at 32 px, 2 epochs over each "
    "subset (batch 32); rater: 6 epochs over D_val; domain metrics every 50 steps on 128 fixed test "
    "prompts (reference: all test images), 10 DDIM steps, CFG 3; retrieval top-1/top-5 of the generated "
    "images against those prompts' captions (benchmarks/results/downstream-regime.md gives chance and the ceiling)."
)


def _run(args: list[str], log_path: Path, env: dict | None = None) -> float:
    started = time.time()
    print("+", " ".join(args), flush=True)
    with open(log_path, "w") as log:
        proc = subprocess.run(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = log_path.read_text()[-4000:]
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(args)}\n--- {log_path} (tail) ---\n{tail}")
    return time.time() - started


def _machine() -> str:
    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {dev}, "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )


def _stamp(argv: list[str], times: dict) -> dict:
    """Command, commit (and whether the tracked tree was clean), machine, date and wall times."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
    )
    return {
        "command": "python benchmarks/data_efficiency.py " + " ".join(argv),
        "commit": commit.stdout.strip() or "unknown",
        "clean_tree": commit.returncode == 0 and not dirty.stdout.strip(),
        "machine": _machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_s": {k: round(v, 1) for k, v in times.items()},
        "total_wall_s": round(sum(times.values()), 1),
    }


def _header(stamp: dict) -> list[str]:
    return [
        "# Data-efficiency benchmark",
        "",
        f"Command: `{stamp['command']}`  ",
        f"Commit: {stamp['commit']}{'' if stamp['clean_tree'] else ' (with uncommitted changes)'}  ",
        f"Machine: {stamp['machine']}  ",
        f"Date: {stamp['date']}  ",
        "Wall time: "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in stamp["wall_s"].items())
        + f", total {stamp['total_wall_s'] / 60:.1f} min",
        "",
        SETUP,
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/efficiency", help="run folder (summaries, checkpoints, logs)")
    parser.add_argument("--results", default="benchmarks/results/efficiency", help="where report.md and plots go")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default="shift_gsample,random,top_k,gsample")
    parser.add_argument("--keep-ratios", default="0.2,0.5")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every train.py call (after --)")
    args = parser.parse_args()

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    py = [sys.executable, "train.py", "-m", "+experiment=efficiency", *args.overrides]
    times = {}
    times["rate"] = _run(
        py + ["stage=rate", f"seed={args.seeds}", f"hydra.sweep.dir={out}/rate", "hydra.sweep.subdir=seed${seed}"],
        out / "rate.log",
    )
    times["train (full)"] = _run(
        py
        + [
            "stage=train",
            "method=full",
            "keep_ratio=1.0",
            f"seed={args.seeds}",
            f"hydra.sweep.dir={out}/full",
            "hydra.sweep.subdir=full-seed${seed}",
        ],
        out / "full.log",
    )
    times["train (subsets)"] = _run(
        py
        + [
            "stage=train",
            f"method={args.methods}",
            f"keep_ratio={args.keep_ratios}",
            f"seed={args.seeds}",
            f"scores_path={out}/rate/seed${{seed}}/scores.parquet",
            f"hydra.sweep.dir={out}/train",
            "hydra.sweep.subdir=${method}-${keep_ratio}-seed${seed}",
        ],
        out / "train.log",
    )

    sys.path.insert(0, str(ROOT))
    from alchemist_pl.compare import report

    results = Path(args.results)
    path = report([out], results)
    stamp = _stamp(sys.argv[1:], times)
    path.write_text("\n".join(_header(stamp)) + path.read_text().split("\n", 1)[1])
    (results / "times.json").write_text(json.dumps(stamp, indent=2))
    print(path.read_text())


if __name__ == "__main__":
    main()
