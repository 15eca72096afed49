"""benchmarks/data_efficiency.py end to end at smoke size: every row and both comparisons in a stamped report."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from .conftest import DATA_DIR, ROOT

SMOKE = (
    "debug=smoke",
    "logger=csv",
    "corruption.pool_size=600",
    f"paths.data_dir={DATA_DIR}",
    "rate.max_epochs=1",
    "rate.pool_passes=0.25",
    "eval.num_images=16",
    "model.num_samples=2",
)


@pytest.mark.slow
def test_data_efficiency_smoke_writes_a_stamped_report(tmp_path, emoji_dir):
    out, results = tmp_path / "runs", tmp_path / "results"
    args = ["--out", str(out), "--results", str(results), "--seeds", "0", "--steps", "4", "--every", "2"]
    args += ["--", *SMOKE]
    proc = subprocess.run(
        [sys.executable, "benchmarks/data_efficiency.py", *args], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    head = git.stdout.strip()
    times = json.loads((results / "times.json").read_text())
    assert times["commit"].split()[0] == head and isinstance(times["clean_tree"], bool)
    assert times["command"].startswith("python benchmarks/data_efficiency.py --out")
    assert times["total_wall_s"] > 0 and "CPU cores" in times["machine"] and "load average" in times["machine"]
    names = {r["name"] for r in times["runs"]}
    assert names == {
        "rate-seed0",
        "score-clip_score",
        *(f"{r}-seed0" for r in ("full", "alchemist", "random", "clip_score")),
    }
    assert all(r["cpu_s"] > 0 for r in times["runs"])
    report = (results / "report.md").read_text()
    assert f"Commit: {head}" in report and times["command"] in report
    assert (
        "## Equal steps: every run 4 steps" in report and "## Equal epochs: full data 4 steps, the subsets 2" in report
    )
    assert "retrieval top-1" in report and "Chance: top-1" in report  # caption following, with its chance level
    assert "| alchemist | random |" in report  # the time to match, over a curve of two evaluations

    # equal epochs reads the subsets at step 2 of their 4-step runs: a run stopped at step 2 must be that prefix
    overrides = yaml.safe_load((out / "train" / "random-seed0" / ".hydra" / "overrides.yaml").read_text())
    short = [o for o in overrides if not o.startswith(("train.max_steps=", "hydra.run.dir="))]
    cmd = [sys.executable, "train.py", *short, "train.max_steps=2", f"hydra.run.dir={tmp_path / 'short'}"]
    one_thread = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # as the benchmark runs its trainings
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=one_thread)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    short_curve = json.loads((tmp_path / "short" / "eval_curve.json").read_text())
    long_curve = json.loads((out / "train" / "random-seed0" / "eval_curve.json").read_text())
    assert short_curve[-1] == next(p for p in long_curve if p["step"] == 2)
