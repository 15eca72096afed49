"""Streaming scoring (``alchemist_pl.streaming.score_shards``) against the rater's forward alone, side by side.

    python benchmarks/streaming_scoring.py --out benchmarks/results/streaming-scoring.md [--rounds 3]
        [--workers 0 1 2] [--repeats 1 4]

The pool is a copy of the embedded emoji training split (data/emoji/train), and for the memory
rows that copy hard-linked 1x, 2x, 4x under new names (distinct paths: distinct cache entries).
Each measurement runs in a fresh subprocess with one torch thread; ``--rounds`` rounds run every
throughput mode once each, interleaved, so a busy machine slows the forward and the streaming
path alike and each round's ratio compares runs minutes apart:

- ``forward``: the rater's ``score`` on the pool's batches, decoded into memory beforehand;
- ``decode``: ``ShardBatches`` in the process, no rater, no cache (read tar, decode, crop, batch);
- ``uncached, W workers``: ``score_shards`` end to end (tar, decode, caption lookup, forward, one
  Parquet part per shard) with W dataloader processes decoding, no decoded-image cache;
- ``cache build``: the same, first pass with an empty decoded-image cache (it writes the cache);
- ``cached``: the second pass, reading the cache that the build wrote.

Each row gives wall samples/s, CPU seconds (process + its dataloader workers) per sample, the
rate per CPU core (samples per CPU second), and the load average before and after. The memory rows
run ``uncached`` (the last ``--workers`` value), ``cache build`` and ``cached`` on the repeated
pools and give the peak RSS of the scoring process and of its largest worker.

The rater is the default ``conf/rater`` at random initialisation: the forward cost is what counts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from alchemist_pl.pixels import to_model_range
from alchemist_pl.streaming import PooledCaptions, ShardBatches, score_shards, shard_list

mode, pool, parts, workers, batch, root, decoded = sys.argv[1:8]
pool, workers, batch, root = Path(pool), int(workers), int(batch), Path(root)
decoded = None if decoded == "-" else Path(decoded)
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

if mode == "forward":
    captions = PooledCaptions(cache)
    batches = [(to_model_range(b["image"]), captions(b["caption"])) for b in ShardBatches(shards, 32, batch) if b["sample_id"]]
    n = sum(len(x) for x, _ in batches)
    with torch.no_grad():
        rater.score(*batches[0])  # warm-up
        t, c = time.perf_counter(), cpu()
        for x, p in batches:
            rater.score(x, p)
elif mode == "decode":
    t, c = time.perf_counter(), cpu()
    n = sum(len(b["sample_id"]) for b in ShardBatches(shards, 32, batch))
else:
    import pyarrow.parquet as pq
    t, c = time.perf_counter(), cpu()
    written = score_shards(rater, shards, Path(parts), 32, cache, batch_size=batch, num_workers=workers, decoded_dir=decoded)
    n = sum(pq.read_metadata(p).num_rows for p in written)
dt, dc = time.perf_counter() - t, cpu() - c
print(json.dumps({"samples": n, "shards": len(shards), "seconds": dt, "cpu_seconds": dc,
                  "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
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


def run(label: str, mode: str, pool: Path, parts: Path, workers: int, batch: int, decoded: Path | None) -> dict:
    load_before = os.getloadavg()[0]
    args = [mode, str(pool), str(parts), str(workers), str(batch), str(ROOT), str(decoded) if decoded else "-"]
    out = subprocess.run([sys.executable, "-c", CHILD, *args], cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    row = {**json.loads(out.stdout.strip().splitlines()[-1]), "label": label, "workers": workers}
    row.update(rate=row["samples"] / row["seconds"], per_core=row["samples"] / row["cpu_seconds"])
    row.update(load=(load_before, os.getloadavg()[0]))
    print(json.dumps(row), flush=True)
    return row


def one_round(pool: Path, tmp: Path, workers: list[int], batch: int, tag: str) -> list[dict]:
    """Every throughput mode once, in a fixed order; fresh parts (and cache) folders."""
    rows = [run("forward", "forward", pool, tmp / "unused", 0, batch, None)]
    rows.append(run("decode", "decode", pool, tmp / "unused", 0, batch, None))
    for w in workers:
        rows.append(run(f"uncached, {w} workers", "score", pool, tmp / f"parts-{tag}-u{w}", w, batch, None))
    decoded = tmp / f"decoded-{tag}"
    rows.append(
        run(f"cache build, {workers[-1]} workers", "score", pool, tmp / f"parts-{tag}-b", workers[-1], batch, decoded)
    )
    rows.append(run("cached", "score", pool, tmp / f"parts-{tag}-c", 0, batch, decoded))
    return rows


def table(rounds: list[list[dict]]) -> list[str]:
    """One line per mode: median (min-max) over rounds of wall rate, % of the same round's forward, CPU rate."""
    lines = [
        "| mode | samples/s (median, min-max) | % of forward, same round (median, min-max) | CPU µs per sample | samples per CPU second | load avg before→after |",
        "|---|---|---|---|---|---|",
    ]
    for i, first in enumerate(rounds[0]):
        rows = [r[i] for r in rounds]
        rates = [r["rate"] for r in rows]
        pct = [100 * r[i]["rate"] / r[0]["rate"] for r in rounds]
        cpu = [1e6 * r["cpu_seconds"] / r["samples"] for r in rows]
        loads = ", ".join(f"{a:.1f}→{b:.1f}" for a, b in (r["load"] for r in rows))
        lines.append(
            f"| {first['label']} | {statistics.median(rates):,.0f} ({min(rates):,.0f}–{max(rates):,.0f}) |"
            f" {statistics.median(pct):.0f}% ({min(pct):.0f}–{max(pct):.0f}%) | {statistics.median(cpu):.0f} |"
            f" {1e6 / statistics.median(cpu):,.0f} | {loads} |"
        )
    return lines


def memory_rows(pools: dict[int, Path], tmp: Path, workers: int, batch: int) -> list[str]:
    lines = [
        "| pool | shards | samples | mode | samples/s | peak RSS scoring process (GB) | peak RSS largest worker (GB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for repeat, pool in pools.items():
        decoded = tmp / f"decoded-mem-{repeat}x"
        for tag, label, w, dec in (
            ("u", f"uncached, {workers} workers", workers, None),
            ("b", f"cache build, {workers} workers", workers, decoded),
            ("c", "cached", 0, decoded),
        ):
            r = run(label, "score", pool, tmp / f"parts-mem-{repeat}x-{tag}", w, batch, dec)
            lines.append(
                f"| {repeat}x | {r['shards']} | {r['samples']} | {label} | {r['rate']:,.0f} | {r['peak_gb']:.2f} |"
                f" {r['worker_peak_gb']:.2f} |"
            )
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
    started = time.time()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pools = make_pools(args.data, tmp, args.repeats)
        rounds = [one_round(pools[1], tmp, args.workers, args.batch_size, f"r{i}") for i in range(args.rounds)]
        memory = memory_rows({k: pools[k] for k in args.repeats}, tmp, args.workers[-1], args.batch_size)
    n = rounds[0][0]
    cmd = (
        f"python benchmarks/streaming_scoring.py --out {args.out} --rounds {args.rounds} --workers"
        f" {' '.join(map(str, args.workers))} --repeats {' '.join(map(str, args.repeats))} --batch-size {args.batch_size}"
    )
    lines = [
        "# Streaming scoring against the rater's forward alone",
        "",
        f"- command: `{cmd}`",
        f"- commit: `{commit.stdout.strip()}`{' (with uncommitted changes)' if dirty.stdout.strip() else ''}",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; shared with"
        " other jobs (load averages per row below)",
        f"- wall time {time.time() - started:.0f} s; load average at the end {os.getloadavg()}",
        f"- pool: copy of {args.data} ({n['shards']} shards, {n['samples']} samples, 32 px PNG); batch"
        f" {args.batch_size}; one torch thread in the scoring process; rater = conf/rater default",
        "",
        f"## Throughput: {args.rounds} interleaved rounds",
        "",
        *table(rounds),
        "",
        "## Peak memory against the number of shards",
        "",
        *memory,
        "",
        "## Raw rows",
        "",
        "```",
        *[json.dumps(r) for rows in rounds for r in rows],
        "```",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
