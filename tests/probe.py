"""A test-only Lightning callback that records what each rank saw, for the DDP and resume tests.

Added from the command line: ``+callbacks.probe._target_=tests.probe.Probe +callbacks.probe.out=DIR``.
Each rank writes ``DIR/rank{R}.json``: the dataset indices of every training batch (per loader)
and, at the end of fitting, a hash of every parameter of the module. ``crash_at_batch`` kills the
process (SIGKILL) at the start of that global batch, after the checkpoints of earlier batches.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

from lightning import Callback


class Probe(Callback):
    def __init__(self, out: str, crash_at_batch: int | None = None):
        self.out = Path(out)
        self.crash_at_batch = crash_at_batch
        self.batches: list = []
        self.seen = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.crash_at_batch is not None and self.seen == self.crash_at_batch and not trainer.ckpt_path:
            os.kill(os.getpid(), signal.SIGKILL)
        self.seen += 1
        if isinstance(batch, dict) and "index" in batch:
            self.batches.append(batch["index"].tolist())
        else:
            self.batches.append({k: v["index"].tolist() for k, v in batch.items()})

    def on_train_end(self, trainer, pl_module):
        weights = {
            name: hashlib.sha256(p.detach().cpu().numpy().tobytes()).hexdigest()
            for name, p in pl_module.named_parameters()
        }
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps({"world_size": trainer.world_size, "batches": self.batches, "weights": weights}))
