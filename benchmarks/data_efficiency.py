"""The data-efficiency benchmark: does an Alchemist-selected subset train a better downstream model
than a random subset, a baseline scorer's subset or the whole pool?

    python benchmarks/data_efficiency.py --out outputs/efficiency --results benchmarks/results/efficiency

Single ``train.py +experiment=efficiency`` runs (conf/experiment/efficiency.yaml), ``--jobs`` at a time,
each with one torch thread:

1. rate: the default rater (conf/config.yaml's ``rater``, ``bilevel`` and ``rate``), one per seed;
2. score: the CLIP-score filter (``stage=score scorer=clip_score``), once (it does not depend on the seed);
3. train, per seed, ``--steps`` steps evaluated every ``--every`` steps, one run per row of :data:`ROWS`:
   ``full`` (the whole pool), ``alchemist`` (conf/config.yaml's ``method`` on the rater's scores),
   ``random`` and ``clip_score`` (``top_k`` on the CLIP scores), the subsets at ``--keep-ratio``.

Equal steps compares every row at ``--steps``; equal epochs compares full data at ``--steps`` with
each subset at ``--steps`` x keep_ratio, read from the same run's evaluation at that step (a constant
learning rate and a data order that does not depend on the run's length make the shorter run a prefix
of the longer one). :mod:`efficiency_report` writes ``report.md`` and ``curves.png`` to ``--results``,
stamped by :mod:`stamp` (command, commit and whether the code was committed, machine, load, wall and
CPU time); ``times.json`` holds the same stamp and every run's wall time, CPU time and load. A run whose
``summary.json`` exists is not run again; with ``--deadline-min`` no run starts after that many minutes
and the report covers the runs that finished (n per row). Extra arguments after ``--`` go to every ``train.py`` call.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import efficiency_report  # noqa: E402  (benchmarks/, beside this script)
import stamp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

#: row -> (what it trains on, train.py overrides; {out} and {seed} are filled in)
ROWS = {
    "full": ("the whole pool", ("method=full", "keep_ratio=1.0")),
    "alchemist": (
        "the default rater's scores, the default selection (conf/config.yaml: method)",
        ("scores_path={out}/rate/seed{seed}/scores.parquet",),
    ),
    "random": ("a uniform random subset", ("method=random",)),
    "clip_score": (
        "top-k by CLIP score (DataComp's filter)",
        ("method=top_k", "scores_path={out}/score/scores.parquet"),
    ),
}
_PRINT = threading.Lock()


class Job:
    """One ``train.py`` run: its folder, overrides and what must finish first."""

    def __init__(self, name: str, phase: str, run_dir: Path, overrides: list[str], after=()):
        self.name, self.phase, self.run_dir, self.overrides, self.after = name, phase, run_dir, overrides, list(after)
        self.record: dict = {}

    def run(self, base: list[str], futures: dict, deadline: float) -> dict:
        for dep in self.after:
            if futures[dep].result().get("skipped") == "deadline":
                self.record = {"name": self.name, "phase": self.phase, "skipped": "deadline"}
                return self.record
        if time.time() > deadline:
            self.record = {"name": self.name, "phase": self.phase, "skipped": "deadline"}
            return self.record
        summary = self.run_dir / "summary.json"
        if summary.exists() and json.loads(summary.read_text()).get("status") != "failed":
            self.record = {"name": self.name, "phase": self.phase, "skipped": "summary.json exists"}
            return self.record
        self.run_dir.mkdir(parents=True, exist_ok=True)
        cmd = [*base, *self.overrides, f"hydra.run.dir={self.run_dir}"]
        load, started = os.getloadavg()[0], time.time()
        with _PRINT:
            print("+", " ".join(cmd), flush=True)
        with open(self.run_dir.parent / f"{self.run_dir.name}.log", "w") as log:
            env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log, env=env)
            _, status, usage = os.wait4(proc.pid, 0)
        if status != 0:
            raise SystemExit(f"{self.name} failed (wait status {status}); see {self.run_dir}.log")
        self.record = {
            "name": self.name,
            "phase": self.phase,
            "wall_s": round(time.time() - started, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "load_1min_start_end": [round(load, 2), round(os.getloadavg()[0], 2)],
        }
        with _PRINT:
            print(json.dumps(self.record), flush=True)
        return self.record


def jobs_for(out: Path, seeds: list[int], keep_ratio: float, steps: int, every: int) -> list[Job]:
    """The rate, score and train runs in an order where a run's inputs are started before it."""
    rates = [Job(f"rate-seed{s}", "rate", out / "rate" / f"seed{s}", ["stage=rate", f"seed={s}"]) for s in seeds]
    score = Job("score-clip_score", "score", out / "score", ["stage=score", "scorer=clip_score", "seed=0"])
    train = ["stage=train", f"train.max_steps={steps}", "train.epochs=null", f"eval.every_n_steps={every}"]
    jobs = {}
    for s in seeds:
        for row, (_, overrides) in ROWS.items():
            kr = [] if row == "full" else [f"keep_ratio={keep_ratio}"]
            args = [o.format(out=out, seed=s) for o in overrides] + kr + [f"seed={s}", *train]
            after = {"alchemist": [f"rate-seed{s}"], "clip_score": ["score-clip_score"]}.get(row, [])
            jobs[row, s] = Job(f"{row}-seed{s}", "train", out / "train" / f"{row}-seed{s}", args, after)
    order = [rates[0], score]  # seed by seed, so that a deadline leaves whole seeds
    for i, s in enumerate(seeds):
        order += [
            jobs["full", s],
            jobs["random", s],
            *rates[i + 1 : i + 2],
            jobs["alchemist", s],
            jobs["clip_score", s],
        ]
    return order


def run_all(jobs: list[Job], base: list[str], workers: int, deadline: float) -> None:
    futures: dict = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for job in jobs:  # submitted in order; a job waits for the runs it needs inside its worker
            futures[job.name] = pool.submit(job.run, base, futures, deadline)
        for f in futures.values():
            f.result()


def _times(stamp_: dict, started: float, jobs: list[Job], previous_path: Path) -> dict:
    """This invocation's stamp and run records. Runs skipped because an earlier invocation of the same
    command finished them keep that invocation's record; ``invocations`` lists every invocation's
    stamp and wall time, and the totals add them up."""
    this = {**stamp_, "clean_tree": "uncommitted" not in stamp_["commit"], "wall_s": round(time.time() - started, 1)}
    previous = json.loads(previous_path.read_text()) if previous_path.exists() else {}
    same = previous.get("command") == stamp_["command"] and "runs" in previous
    earlier = {r["name"]: r for r in previous.get("runs", []) if "cpu_s" in r} if same else {}
    runs = [
        earlier.get(j.name, j.record) if j.record.get("skipped") == "summary.json exists" else j.record for j in jobs
    ]
    invocations = (previous.get("invocations") or [previous]) if same else []
    invocations = [{k: v for k, v in i.items() if k not in ("runs", "invocations")} for i in invocations] + [this]
    return {
        **this,
        "clean_tree": all(i["clean_tree"] for i in invocations),
        "total_wall_s": round(sum(i.get("wall_s", i.get("total_wall_s", 0.0)) for i in invocations), 1),
        "total_cpu_s": round(sum(r.get("cpu_s", 0.0) for r in runs), 1),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "invocations": invocations,
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/efficiency", help="run folder (summaries, checkpoints, logs)")
    parser.add_argument("--results", default="benchmarks/results/efficiency", help="where report.md goes")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--keep-ratio", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=400, help="training steps of every run (equal steps)")
    parser.add_argument("--every", type=int, default=100, help="evaluate every N steps")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one torch thread each)")
    parser.add_argument(
        "--deadline-min", type=float, default=None, help="start no run after this many minutes (the report says so)"
    )
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every train.py call (after --)")
    args = parser.parse_args()
    half = round(args.steps * args.keep_ratio)
    if args.steps % args.every or half % args.every or half != args.steps * args.keep_ratio:
        raise SystemExit(f"--steps {args.steps} and --steps x --keep-ratio ({half}) must be multiples of --every")

    started_stamp = {
        "command": "python benchmarks/data_efficiency.py " + " ".join(sys.argv[1:]),
        "commit": stamp.commit("alchemist_pl", "conf", "benchmarks", "train.py"),
        "machine": stamp.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    out = Path(args.out).resolve()
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = jobs_for(out, seeds, args.keep_ratio, args.steps, args.every)
    started = time.time()
    deadline = started + 60 * args.deadline_min if args.deadline_min else float("inf")
    run_all(jobs, [sys.executable, "train.py", "+experiment=efficiency", *args.overrides], args.jobs, deadline)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    times = _times(started_stamp, started, jobs, results / "times.json")
    setup = {"steps": args.steps, "every": args.every, "keep_ratio": args.keep_ratio, "seeds": seeds, "rows": ROWS}
    (results / "times.json").write_text(json.dumps(times, indent=2))
    path = efficiency_report.write(out, results, times, setup)
    print(path.read_text())


if __name__ == "__main__":
    main()
