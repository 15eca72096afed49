"""Streaming scoring (``alchemist_pl.streaming.score_shards``): throughput and peak memory.

    python benchmarks/streaming_scoring.py --out benchmarks/results/streaming-scoring.md [--repeats 1 2 4] [--workers 0 2]

The pool is the embedded emoji training split (data/emoji/train, its shards repeated 1x, 2x, 4x
under new names by symlinks). Each measurement runs in a fresh subprocess:

- ``end to end``: ``score_shards`` over every shard (read tar, decode PNG, resize, caption-embedding
  lookup, rater forward, one Parquet part per shard), samples/s;
- ``forward only``: the rater's ``score`` on the same batches, decoded into memory beforehand
  (1x only), samples/s;
- ``loader only``: the streaming dataloader alone (read tar, decode, resize; no rater), 1x, samples/s:
  the ceiling the end-to-end rate can reach with that many workers;
- peak RSS of the process (and of its dataloader workers, largest one) while scoring.

The rater is the default ``conf/rater`` at random initialisation: the forward cost is what counts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
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

mode, pool, parts, workers, batch, root = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), Path(sys.argv[6])
torch.set_num_threads(int(sys.argv[7]))
with initialize_config_dir(version_base="1.3", config_dir=str(root / "conf")):
    cfg = compose("config")
torch.manual_seed(0)
rater = instantiate(cfg.rater).eval()
shards = shard_list(pool)
cache = root / "data" / "cache"
if mode == "end-to-end":
    t = time.perf_counter()
    written = score_shards(rater, shards, parts, 32, cache, batch_size=batch, num_workers=workers)
    dt = time.perf_counter() - t
    import pyarrow.parquet as pq
    n = sum(pq.read_metadata(p).num_rows for p in written)
elif mode == "loader-only":
    loader = torch.utils.data.DataLoader(ShardBatches(shards, 32, batch), batch_size=None, num_workers=workers)
    t = time.perf_counter()
    n = sum(len(b["sample_id"]) for b in loader)
    dt = time.perf_counter() - t
else:
    captions = PooledCaptions(cache)
    batches = [(to_model_range(b["image"]), captions(b["caption"])) for b in ShardBatches(shards, 32, batch) if b["sample_id"]]
    n = sum(len(x) for x, _ in batches)
    with torch.no_grad():
        rater.score(*batches[0])  # warm-up
        t = time.perf_counter()
        for x, p in batches:
            rater.score(x, p)
        dt = time.perf_counter() - t
self_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
child_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
print(json.dumps({"mode": mode, "samples": n, "shards": len(shards), "seconds": dt, "samples_per_s": n / dt,
                  "peak_gb": self_gb, "worker_peak_gb": child_gb}))
"""


def repeated_pool(src: Path, dst: Path, repeat: int) -> Path:
    """``dst`` with every shard of ``src`` linked ``repeat`` times under distinct names."""
    dst.mkdir(parents=True, exist_ok=True)
    for r in range(repeat):
        for shard in sorted(src.glob("*.tar")):
            link = dst / f"r{r}-{shard.name}"
            if not link.exists():
                link.symlink_to(shard.resolve())
    return dst


def run(mode: str, pool: Path, parts: Path, workers: int, batch: int, threads: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(pool), str(parts), str(workers), str(batch), str(ROOT), str(threads)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(row, flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--repeats", type=int, nargs="*", default=[1, 2, 4])
    p.add_argument("--workers", type=int, nargs="*", default=[0, 2])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the scoring process")
    p.add_argument(
        "--data",
        type=Path,
        default=ROOT / "data" / "emoji" / "train",
        help="shard folder to repeat (default: the embedded emoji training split)",
    )
    args = p.parse_args()
    src = args.data
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        one = repeated_pool(src, tmp / "pool-1x", 1)
        forward = run("forward-only", one, tmp / "unused", 0, args.batch_size, args.threads)
        loader = {w: run("loader-only", one, tmp / "unused", w, args.batch_size, args.threads) for w in args.workers}
        for repeat in args.repeats:
            pool = repeated_pool(src, tmp / f"pool-{repeat}x", repeat)
            for workers in args.workers:
                row = run(
                    "end-to-end", pool, tmp / f"parts-{repeat}x-{workers}w", workers, args.batch_size, args.threads
                )
                rows.append({**row, "repeat": repeat, "workers": workers})
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    lines = [
        "# Streaming scoring: throughput and peak memory",
        "",
        f"- command: `python benchmarks/streaming_scoring.py --out {args.out} --repeats {' '.join(map(str, args.repeats))}"
        f" --workers {' '.join(map(str, args.workers))} --batch-size {args.batch_size} --threads {args.threads}"
        f" --data {args.data}`",
        f"- commit: `{commit}`",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; load average at"
        f" the end {os.getloadavg()[0]:.1f} (shared machine: times are noisy)",
        f"- pool: {args.data} ({forward['shards']} shards, {forward['samples']} samples, 32 px PNG), repeated;"
        f" batch {args.batch_size}; rater = conf/rater default",
        "",
        f"Rater forward alone on the same batches (decoded in memory beforehand): **{forward['samples_per_s']:.0f} samples/s**.",
        "Streaming loader alone (read tar + decode + resize, no rater), 1x: "
        + ", ".join(f"{w} workers **{r['samples_per_s']:.0f} samples/s**" for w, r in loader.items())
        + ".",
        "",
        "| pool | shards | samples | dataloader workers | end-to-end samples/s | % of forward alone | peak RSS scoring process (GB) | peak RSS largest worker (GB) |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {r['repeat']}x | {r['shards']} | {r['samples']} | {r['workers']} | {r['samples_per_s']:.0f} |"
            f" {100 * r['samples_per_s'] / forward['samples_per_s']:.0f}% | {r['peak_gb']:.2f} |"
            f" {r['worker_peak_gb']:.2f} |"
            for r in rows
        ],
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
