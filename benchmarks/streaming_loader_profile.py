"""Where the streaming loader's time goes: CPU time per sample of each layer, one process, one thread.

    python benchmarks/streaming_loader_profile.py [--shards 2] [--repeats 10] [--resolution 32]

Layers, each timed alone over the first ``--shards`` shards of data/emoji/train (best of
``--repeats`` process-CPU-time runs, interleaved, so a busy machine inflates every row alike):

- ``tarfile`` stream read of every member (the floor of any Python tar reader);
- ``webdataset.WebDataset`` grouping members into samples;
- ``alchemist_pl.data.iter_samples`` (webdataset plus the checks and RawSample);
- ``decode_image`` of the already-read samples (PNG decode, composite on white, crop/resize);
- ``ShardBatches``: all of the above plus batching, as ``score_shards`` uses it;
- the tar read and ``ShardBatches`` again on a copy of the same shards rewritten with an integer
  member mtime (``alchemist_pl.data.SHARD_MTIME``: no PAX header per member), checked to hold the
  same samples.

Prints a Markdown table: µs per sample and samples/s per core.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--resolution", type=int, default=32)
    args = ap.parse_args()
    import torch
    import webdataset as wds

    from alchemist_pl import data as D
    from alchemist_pl.streaming import ShardBatches

    torch.set_num_threads(1)
    shards = sorted((ROOT / "data" / "emoji" / "train").glob("*.tar"))[: args.shards]
    raws = [r for s in shards for r in D.iter_samples(s)]
    res = args.resolution
    copy_dir = Path(tempfile.mkdtemp(prefix="int-mtime-"))
    for s in shards:  # the same samples, written with an integer mtime
        with wds.TarWriter(str(copy_dir / s.name), mtime=D.SHARD_MTIME) as w:
            for sample in wds.WebDataset(
                str(s), shardshuffle=False, empty_check=False, nodesplitter=None, workersplitter=None
            ):
                w.write({k: v for k, v in sample.items() if k == "__key__" or not k.startswith("__")})
    copies = [copy_dir / s.name for s in shards]
    for a, b in zip(ShardBatches(shards, res, 256), ShardBatches(copies, res, 256)):
        assert a["sample_id"] == b["sample_id"] and a["caption"] == b["caption"] and torch.equal(a["image"], b["image"])

    def tar_floor(shards=shards):
        for s in shards:
            with tarfile.open(s, "r|") as tf:
                for m in tf:
                    if m.isfile():
                        tf.extractfile(m).read()

    layers = {
        "tarfile stream read (floor)": tar_floor,
        "webdataset.WebDataset": lambda: [
            0
            for s in shards
            for _ in wds.WebDataset(
                str(s), shardshuffle=False, empty_check=False, nodesplitter=None, workersplitter=None
            )
        ],
        "iter_samples (webdataset + checks)": lambda: [0 for s in shards for _ in D.iter_samples(s)],
        "decode_image (PNG -> uint8 CHW)": lambda: [D.decode_image(r, res) for r in raws],
        "ShardBatches (all of the above + batching)": lambda: list(ShardBatches(shards, res, 256)),
        "int-mtime copy: tarfile stream read": lambda: tar_floor(copies),
        "int-mtime copy: ShardBatches": lambda: list(ShardBatches(copies, res, 256)),
    }
    best = dict.fromkeys(layers, float("inf"))
    for _ in range(args.repeats):
        for name, f in layers.items():
            t = time.process_time()
            f()
            best[name] = min(best[name], time.process_time() - t)
    shutil.rmtree(copy_dir)
    size = sum(s.stat().st_size for s in shards) / 2**20
    print(
        f"{len(raws)} samples in {len(shards)} shards ({size:.1f} MiB); best of {args.repeats}; "
        f"load average {tuple(round(x, 2) for x in os.getloadavg())}"
    )
    print("| layer | µs per sample (CPU) | samples/s per core |\n|---|---|---|")
    for name, s in best.items():
        print(f"| {name} | {s / len(raws) * 1e6:.0f} | {len(raws) / s:.0f} |")


if __name__ == "__main__":
    main()
