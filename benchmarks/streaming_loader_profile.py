"""Where the streaming loader's time goes: CPU time per sample of each layer, one process, one thread.

    python benchmarks/streaming_loader_profile.py [--shards 2] [--repeats 10] [--resolution 32] [--out FILE.md]

Layers, each timed alone over the first ``--shards`` shards of data/emoji/train (best of
``--repeats`` process-CPU-time runs, interleaved, so a busy machine inflates every row alike):

- ``tarfile`` stream read of every member (the floor of any Python tar reader);
- ``webdataset.WebDataset`` grouping members into samples;
- ``alchemist_pl.data.iter_samples`` (webdataset plus the checks and RawSample);
- ``decode_image`` of the already-read samples (PNG decode, composite on white, crop/resize);
- ``PIL open + asarray``: the bare decoder on the same bytes, nothing of ``decode_image``'s display
  steps (the floor of any change to them with Pillow);
- ``ShardBatches``: all of the above plus batching, as ``score_shards`` uses it;
- the tar read and ``ShardBatches`` again on a copy of the same shards rewritten with an integer
  member mtime (``alchemist_pl.data.SHARD_MTIME``: no PAX header per member), checked to hold the
  same samples;
- ``decoded cache read``: ``ShardBatches`` over the same shards from a decoded-image cache
  (:mod:`alchemist_pl.decoded_cache`, written once beforehand);
- ``rater forward``: the default rater's ``score`` (one thread) on the same samples' batches,
  decoded and caption-embedded in memory beforehand: what the loader has to keep up with.

Prints a Markdown table: µs per sample and samples/s per core (and writes it to ``--out``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's alchemist_pl, not another installed one
sys.path.insert(0, str(ROOT / "benchmarks"))
from stamp import commit  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    started = time.time()
    import io

    import numpy as np
    import torch
    import webdataset as wds
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from PIL import Image

    from alchemist_pl import data as D
    from alchemist_pl.pixels import to_model_range
    from alchemist_pl.streaming import PooledCaptions, ShardBatches

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

    decoded = copy_dir / "decoded"
    list(ShardBatches(shards, res, 256, decoded_dir=decoded))  # writes the decoded-image cache
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        torch.manual_seed(0)
        rater = instantiate(compose("config").rater).eval()
    captions = PooledCaptions(ROOT / "data" / "cache")
    batches = [(to_model_range(b["image"]), captions(b["caption"])) for b in ShardBatches(shards, res, 256)]

    def forward():
        with torch.no_grad():
            for x, p in batches:
                if len(x):
                    rater.score(x, p)

    def bare_decode():
        for r in raws:
            with Image.open(io.BytesIO(r.image)) as im:
                np.asarray(im)

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
        "PIL open + asarray (decoder floor)": bare_decode,
        "ShardBatches (all of the above + batching)": lambda: list(ShardBatches(shards, res, 256)),
        "int-mtime copy: tarfile stream read": lambda: tar_floor(copies),
        "int-mtime copy: ShardBatches": lambda: list(ShardBatches(copies, res, 256)),
        "decoded cache read (ShardBatches, memmap)": lambda: list(ShardBatches(shards, res, 256, decoded_dir=decoded)),
        "rater forward (batches in memory)": forward,
    }
    best = dict.fromkeys(layers, float("inf"))
    for _ in range(args.repeats):
        for name, f in layers.items():
            t = time.process_time()
            f()
            best[name] = min(best[name], time.process_time() - t)
    shutil.rmtree(copy_dir)
    size = sum(s.stat().st_size for s in shards) / 2**20
    lines = [
        f"- command: `python benchmarks/streaming_loader_profile.py --shards {args.shards} --repeats {args.repeats}"
        f" --resolution {args.resolution}{f' --out {args.out}' if args.out else ''}`; commit `{commit()}`",
        f"- {len(raws)} samples in {len(shards)} shards ({size:.1f} MiB); best of {args.repeats} interleaved runs,"
        f" process CPU time, one thread; {os.cpu_count()} cores; load average at the end"
        f" {tuple(round(x, 2) for x in os.getloadavg())}; wall time {time.time() - started:.0f} s",
        "",
        "| layer | µs per sample (CPU) | samples/s per core |",
        "|---|---|---|",
        *[f"| {name} | {s / len(raws) * 1e6:.0f} | {len(raws) / s:.0f} |" for name, s in best.items()],
        "",
    ]
    print("\n".join(lines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            "# Where the streaming loader's CPU goes, beside the rater's forward\n\n" + "\n".join(lines)
        )


if __name__ == "__main__":
    main()
