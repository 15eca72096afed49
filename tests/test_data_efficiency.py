"""benchmarks/data_efficiency.py end to end at smoke size: the report and times.json carry the stamp."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import DATA_DIR, ROOT

SMOKE = (
    "debug=smoke",
    "logger=csv",
    "corruption.pool_size=600",
    f"paths.data_dir={DATA_DIR}",
    "rate.max_epochs=1",
    "rate.pool_passes=0.25",
    "train.epochs=null",
    "train.max_steps=4",
    "eval.every_n_steps=0",
    "eval.num_images=16",
    "model.num_samples=2",
)


@pytest.mark.slow
def test_data_efficiency_smoke_writes_a_stamped_report(tmp_path, emoji_dir):
    out, results = tmp_path / "runs", tmp_path / "results"
    args = ["--out", str(out), "--results", str(results), "--seeds", "0", "--methods", "random"]
    args += ["--keep-ratios", "0.5", "--", *SMOKE]
    proc = subprocess.run(
        [sys.executable, "benchmarks/data_efficiency.py", *args], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    head = git.stdout.strip()
    times = json.loads((results / "times.json").read_text())
    assert times["commit"] == head and isinstance(times["clean_tree"], bool)
    assert times["command"].startswith("python benchmarks/data_efficiency.py --out")
    assert set(times["wall_s"]) == {"rate", "train (full)", "train (subsets)"} and times["total_wall_s"] > 0
    assert "CPU cores" in times["machine"]
    report = (results / "report.md").read_text()
    assert f"Commit: {head}" in report and times["command"] in report
    assert "retrieval top-1" in report  # the downstream model's caption following is in the table
