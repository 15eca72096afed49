"""Streaming scoring (``alchemist_pl.streaming.score_shards``) against the rater's forward alone, side by side.

    python benchmarks/streaming_scoring.py --out benchmarks/results/streaming-scoring-cache.md [--rounds 4]
        [--workers 0 1 2] [--repeats 1 4]

The pool is a copy of a shard folder (default: the embedded emoji training split, data/emoji/train);
for the memory rows that copy is hard-linked 1x, 4x under new names (distinct paths: distinct
decoded-cache entries). Throughput: one process with one torch thread runs ``--rounds`` rounds, each
running every mode once, in this order, so a busy machine slows the forward and the streaming path
alike; each mode's rate is compared with the mean of the forward runs just before and just after its
round:

- ``forward``: the rater's ``score`` on the pool's batches, decoded and embedded in memory beforehand;
- ``decode``: ``ShardBatches`` in the process, no rater, no cache (read tar, decode, crop, batch);
- ``uncached, W workers``: ``score_shards`` end to end (tar, decode, caption lookup, forward, one
  Parquet part per shard) with W dataloader processes decoding, no decoded-image cache;
- ``cache build``: the same with an empty decoded-image cache: the first pass, which writes it;
- ``cached``: the second pass, reading the cache that the build wrote (in the scoring process).

Each row gives wall samples/s, CPU time per sample (process + its dataloader workers), samples per
CPU second, and the load average when each run started. Memory: a fresh process per pool and mode
(``uncached`` and ``cache build`` with the last ``--workers`` value, ``cached``) gives the peak RSS
of the scoring process and of its largest worker.

The rater is the default ``conf/rater`` at random initialisation: the forward cost is what counts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from stamp import commit, machine  # noqa: E402  (benchmarks/stamp.py, beside this script)

CHILD = r"""
import json, os, resource, shutil, sys, time
from pathlib import Path
import pyarrow.parquet as pq
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from alchemist_pl.pixels import to_model_range
from alchemist_pl.streaming import PooledCaptions, ShardBatches, score_shards, shard_list

mode, pool, tmp, workers, batch, root, rounds = sys.argv[1:8]
pool, tmp, batch, root, rounds = Path(pool), Path(tmp), int(batch), Path(root), int(rounds)
workers = [int(w) for w in workers.split(",")]
torch.set_num_threads(1)
with initialize_config_dir(version_base="1.3", config_dir=str(root / "conf")):
    cfg = compose("config")
torch.manual_seed(0)
rater = instantiate(cfg.rater).eval()
shards = shard_list(pool)
cache = root / "data" / "cache"


def cpu():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def timed(label, f, **extra):
    load, t, c = os.getloadavg()[0], time.perf_counter(), cpu()
    n = f()
    row = {"label": label, "samples": n, "seconds": time.perf_counter() - t, "cpu_seconds": cpu() - c,
           "load": [load, os.getloadavg()[0]], **extra}
    print(json.dumps(row), flush=True)
    return row


def score(parts, w, decoded):
    written = score_shards(rater, shards, parts, 32, cache, batch_size=batch, num_workers=w, decoded_dir=decoded)
    return sum(pq.read_metadata(p).num_rows for p in written)


if mode == "rounds":  # every mode once per round, in one process; a forward run before and after each round
    captions = PooledCaptions(cache)
    batches = [(to_model_range(b["image"]), captions(b["caption"])) for b in ShardBatches(shards, 32, batch) if b["sample_id"]]

    def forward():
        with torch.no_grad():
            for x, p in batches:
                rater.score(x, p)
        return sum(len(x) for x, _ in batches)

    forward()  # warm-up
    for r in range(rounds):
        timed("forward", forward, round=r)
        timed("decode", lambda: sum(len(b["sample_id"]) for b in ShardBatches(shards, 32, batch)), round=r)
        for w in workers:
            timed(f"uncached, {w} workers", lambda: score(tmp / f"parts-{r}-u{w}", w, None), round=r)
        timed(f"cache build, {workers[-1]} workers", lambda: score(tmp / f"parts-{r}-b", workers[-1], tmp / f"dec-{r}"), round=r)
        timed("cached", lambda: score(tmp / f"parts-{r}-c", 0, tmp / f"dec-{r}"), round=r)
        shutil.rmtree(tmp / f"dec-{r}")
    timed("forward", forward, round=rounds)
else:  # one end-to-end pass in a fresh process, for its peak memory: mode = uncached | build | cached
    decoded = None if mode == "uncached" else tmp / "decoded"
    w = 0 if mode == "cached" else workers[-1]
    timed(mode, lambda: score(tmp / f"parts-{mode}", w, decoded))
    print(json.dumps({"peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                      "worker_peak_gb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20}))
"""


def make_pools(src: Path, tmp: Path, repeats: list[int]) -> dict[int, Path]:
    """``{repeat: folder}``: the shards of ``src`` copied once, then hard-linked ``repeat`` times."""
    base = tmp / "copy"
    base.mkdir()
    for shard in sorted(src.glob("*.tar")):
        shutil.copyfile(shard, base / shard.name)
    pools = {}
    for repeat in sorted({1, *repeats}):
        pools[repeat] = tmp / f"pool-{repeat}x"
        pools[repeat].mkdir()
        for r in range(repeat):
            for shard in sorted(base.glob("*.tar")):
                os.link(shard, pools[repeat] / f"r{r}-{shard.name}")
    return pools


def child(mode: str, pool: Path, tmp: Path, workers: list[int], batch: int, rounds: int = 0) -> list[dict]:
    """Run :data:`CHILD` in a fresh process; its JSON lines, each echoed."""
    args = [mode, str(pool), str(tmp), ",".join(map(str, workers)), str(batch), str(ROOT), str(rounds)]
    proc = subprocess.Popen([sys.executable, "-c", CHILD, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    rows = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        rows.append(json.loads(line))
    if proc.wait():
        raise RuntimeError(f"benchmark child {mode} failed (exit {proc.returncode})")
    return rows


def table(rows: list[dict], rounds: int) -> list[str]:
    """One line per mode over the rounds: wall samples/s and its ratio to the forward alone (the mean of
    the forward runs just before and after that round), CPU time per sample."""
    fwd = [r["samples"] / r["seconds"] for r in rows if r["label"] == "forward"]
    lines = [
        "| mode | samples/s, median (min–max) | % of forward, median (min–max) | CPU µs per sample, median"
        " (process + workers) | samples per CPU second | load avg at start of each run |",
        "|---|---|---|---|---|---|",
    ]
    for label in dict.fromkeys(r["label"] for r in rows):
        mine = [r for r in rows if r["label"] == label and r["round"] < rounds]
        rates = [r["samples"] / r["seconds"] for r in mine]
        pct = [100 * rate / ((fwd[r["round"]] + fwd[r["round"] + 1]) / 2) for rate, r in zip(rates, mine)]
        cpu = statistics.median(1e6 * r["cpu_seconds"] / r["samples"] for r in mine)
        loads = ", ".join(f"{r['load'][0]:.1f}" for r in mine)
        lines.append(
            f"| {label} | {statistics.median(rates):,.0f} ({min(rates):,.0f}–{max(rates):,.0f}) |"
            f" {statistics.median(pct):.0f}% ({min(pct):.0f}–{max(pct):.0f}%) | {cpu:.0f} | {1e6 / cpu:,.0f} |"
            f" {loads} |"
        )
    return lines


def memory_rows(pools: dict[int, Path], tmp: Path, workers: int, batch: int) -> list[str]:
    """Peak RSS of a fresh process per (pool, mode): uncached, cache build, cached."""
    lines = [
        "| pool | shards | samples | mode | samples/s | peak RSS scoring process (GB) | peak RSS largest worker (GB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for repeat, pool in pools.items():
        work = tmp / f"mem-{repeat}x"
        work.mkdir()
        for mode in ("uncached", "build", "cached"):
            row, peak = child(mode, pool, work, [workers], batch)
            label = {"uncached": f"uncached, {workers} workers", "build": f"cache build, {workers} workers"}.get(
                mode, mode
            )
            lines.append(
                f"| {repeat}x | {len(list(pool.glob('*.tar')))} | {row['samples']} | {label} |"
                f" {row['samples'] / row['seconds']:,.0f} | {peak['peak_gb']:.2f} | {peak['worker_peak_gb']:.2f} |"
            )
        shutil.rmtree(work)
    return lines


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--repeats", type=int, nargs="*", default=[1, 4])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--data", type=Path, default=ROOT / "data" / "emoji" / "train", help="shard folder")
    args = p.parse_args()
    started, host = time.time(), machine()  # its load average is the one at the start
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pools = make_pools(args.data, tmp, args.repeats)
        (tmp / "rounds").mkdir()
        rows = child("rounds", pools[1], tmp / "rounds", args.workers, args.batch_size, args.rounds)
        memory = memory_rows({k: pools[k] for k in args.repeats}, tmp, args.workers[-1], args.batch_size)
    n = rows[0]
    cmd = (
        f"python benchmarks/streaming_scoring.py --out {args.out} --rounds {args.rounds} --workers"
        f" {' '.join(map(str, args.workers))} --repeats {' '.join(map(str, args.repeats))} --batch-size {args.batch_size}"
    )
    lines = [
        "# Streaming scoring against the rater's forward alone",
        "",
        f"- command: `{cmd}`",
        f"- commit: `{commit()}`",
        f"- machine: {host}; shared with other jobs (load averages per row below)",
        f"- wall time {time.time() - started:.0f} s; load average at the end {os.getloadavg()}",
        f"- pool: copy of {args.data} ({len(list(args.data.glob('*.tar')))} shards, {n['samples']} samples, 32 px PNG); batch"
        f" {args.batch_size}; one torch thread in the scoring process; rater = conf/rater default",
        "",
        f"## Throughput: {args.rounds} interleaved rounds",
        "",
        *table(rows, args.rounds),
        "",
        "## Peak memory against the number of shards",
        "",
        *memory,
        "",
        "## Raw rows",
        "",
        "```",
        *[json.dumps(r) for r in rows],
        "```",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
