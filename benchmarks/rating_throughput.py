"""Rating-step throughput: bilevel iterations per second, fp32 vs bf16-mixed, by batch size.

    python benchmarks/rating_throughput.py --out benchmarks/results/rating-throughput-gpu.md [-- overrides]

Runs the real rate stage's LightningModule (proxy + rater, manual optimization) on the real D_val
and training pool through a Lightning Trainer for --iterations bilevel iterations per setting, and
times the iterations after --warmup (CUDA synchronised). One iteration = one D_val batch + one
training batch of the same size B (two optimizer steps).
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--batches", default="32,128,512")
    parser.add_argument("--precisions", default="32-true,bf16-mixed")
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    import lightning as L
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import Callback

    from alchemist_pl.stages import ensure_data

    class Clock(Callback):
        """Times the bilevel iterations after ``warmup`` (counted across epochs)."""

        def __init__(self, warmup):
            self.warmup, self.calls, self.t0, self.t1, self.n = warmup, 0, None, None, 0

        def _sync(self):
            if torch.cuda.is_available():
                torch.cuda.synchronize()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if self.calls == self.warmup:
                self._sync()
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.calls += 1
            if self.t0 is not None:
                self._sync()
                self.t1 = time.perf_counter()
                self.n = self.calls - self.warmup

    accel = "gpu" if torch.cuda.is_available() else "cpu"
    rows = []
    for precision in args.precisions.split(","):
        for b in (int(x) for x in args.batches.split(",")):
            with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
                cfg = compose(
                    "config",
                    overrides=[
                        "stage=rate",
                        "paths.output_dir=/tmp/rating-throughput",
                        f"rate.batch_size={b}",
                        f"rate.val_batch_size={b}",
                        *args.overrides,
                    ],
                )
            ensure_data(cfg)
            L.seed_everything(0)
            dm = instantiate(cfg.datamodule.rating)  # batch sizes: the rate.* overrides above
            model = instantiate(cfg.bilevel)
            clock = Clock(args.warmup)
            steps = args.iterations + args.warmup
            trainer = L.Trainer(
                accelerator=accel,
                devices=1,
                precision=precision,
                max_steps=2 * steps,
                max_epochs=-1,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                callbacks=[clock],
                num_sanity_val_steps=0,
            )
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            trainer.fit(model, datamodule=dm)
            dt = (clock.t1 - clock.t0) / clock.n  # includes epoch ends (D_val reshuffle) at large B
            mem = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
            rows.append((precision, b, clock.n, dt * 1e3, 1 / dt, 2 * b / dt, mem))
            print(rows[-1], flush=True)

    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor()})"
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    lines = [
        "# Rating-step throughput",
        "",
        f"Command: `python benchmarks/rating_throughput.py {' '.join(sys.argv[1:])}`  ",
        f"Commit: {commit or 'unknown'}  ",
        f"Machine: {dev}, torch {torch.__version__}  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "Default proxy (conf/proxy/unet_tiny.yaml, 32 px) + Group MLP rater; one iteration = D_val batch B "
        "+ training batch B, proxy step + rater step.",
        "",
        "| precision | B | timed iterations | ms / iteration | iterations / s | samples / s | peak GPU memory (GiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {p} | {b} | {n} | {ms:.1f} | {its:.1f} | {sps:.0f} | {mem:.2f} |" for p, b, n, ms, its, sps, mem in rows
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
