"""Run the end-to-end pipeline and write a Markdown report: stage wall times, selected
percentiles, test loss per method, with the exact command, commit and machine.

    python benchmarks/pipeline.py --out benchmarks/results/pipeline-default.md [HYDRA OVERRIDES...]

Or report on a finished pipeline run without rerunning it:

    python benchmarks/pipeline.py --out REPORT.md --from-dir outputs/pipeline/runs/<time>
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from stamp import commit, machine  # noqa: E402  (benchmarks/stamp.py, beside this script)


def report(run_dir: Path, command: str) -> str:
    s = json.loads((run_dir / "summary.json").read_text())
    m = s["metrics"]
    rate = json.loads((run_dir / "rate" / "summary.json").read_text())["metrics"]
    lines = [
        f"# Pipeline run — {datetime.now(timezone.utc):%Y-%m-%d}",
        "",
        f"- command: `{command}`",
        f"- commit: `{commit()}`",
        f"- machine: {machine()}",
        f"- seed: {s['seed']}, keep_ratio: {s['keep_ratio']}, method: {s['method']}",
        f"- samples rated: {m['samples_rated']}; bilevel iterations: {rate.get('bilevel_iterations')}",
        "",
        "## Wall time per stage (s)",
        "",
        "| stage | wall time (s) |",
        "|---|---|",
        *[f"| {k} | {v:.0f} |" for k, v in m["wall_time_s"].items()],
        f"| **total** | {s['wall_time_s']:.0f} |",
        "",
        "## Selected rank percentiles (0 = top score)",
        "",
        "| percentile | selected |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in m["selected_percentile_histogram"].items()],
        "",
        "## Test denoising loss (lower is better; same test inputs for every run)",
        "",
        "| run | training samples | test loss | train time (s) |",
        "|---|---|---|---|",
        *[f"| {r['run']} | {r['samples']} | {r['test_loss']:.4f} | {r['train_time_s']:.0f} |" for r in m["comparison"]],
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--from-dir", type=Path)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    if args.from_dir:
        run_dir, command = args.from_dir, "(report on an existing run)"
        cfg_path = run_dir / "summary.json"
        if cfg_path.exists():
            command = (
                f"python train.py +experiment=pipeline paths.output_dir={run_dir} (see summary.json for the config)"
            )
    else:
        run_dir = Path(tempfile.mkdtemp(prefix="pipeline-"))
        cmd = [sys.executable, "train.py", "+experiment=pipeline", f"paths.output_dir={run_dir}", *args.overrides]
        command = shlex.join(["python", *cmd[1:]])
        subprocess.run(cmd, cwd=ROOT, check=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(run_dir, command))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
