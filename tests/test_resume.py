"""Nothing lost: rating killed mid-epoch resumes from its last checkpoint and ends where an
uninterrupted run with the same seed ends (same batches, same weights, same scores)."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from alchemist_pl.resume import ResumeError, resume_checkpoint
from alchemist_pl.scores import read_scores

from .conftest import DATA_DIR, ROOT

# 64 pool samples, D_val 16, batches of 4, half a pass over the pool: 4 bilevel iterations per
# epoch (the rating budget's stream sampler, D_val cycled), 2 epochs; a checkpoint after every iteration
TINY = [
    "+experiment=rate",
    "debug=smoke",
    "~logger",
    "data.limit_train=64",
    "data.limit_val=16",
    "rate.batch_size=4",
    "rate.val_batch_size=4",
    "rate.pool_passes=0.5",
    "rate.score_batch_size=16",
    "callbacks.model_checkpoint.every_n_train_steps=1",
    "+callbacks.probe._target_=tests.probe.Probe",
    f"paths.data_dir={DATA_DIR}",
]


def rate(out, *extra):
    # one thread per process: on a small shared CPU, oversubscribed OpenMP threads make each step ~10x slower
    env = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "train.py", *TINY, f"+callbacks.probe.out={out}/probe", f"hydra.run.dir={out}", *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.mark.slow
def test_killed_rating_resumes_to_the_same_scores(tmp_path, emoji_dir):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    proc = rate(whole)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # killed (SIGKILL) at the start of iteration 6 = epoch 1, batch 1: mid-epoch, after 5 checkpoints
    proc = rate(cut, "+callbacks.probe.crash_at_batch=5")
    assert proc.returncode == -signal.SIGKILL
    assert (cut / "checkpoints" / "last.ckpt").is_file()
    assert not (cut / "scores.parquet").exists()
    assert not [p.name for p in cut.rglob(".*tmp*")]  # no half-written output left behind
    proc = rate(cut, "+callbacks.probe.crash_at_batch=5")  # rerun into the same folder: resumes, no crash
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Restoring states from the checkpoint path" in proc.stderr + proc.stdout

    a, b = (json.loads((d / "probe" / "rank0.json").read_text()) for d in (whole, cut))
    assert len(a["batches"]) == 8 and b["batches"] == a["batches"][5:]  # same data order after the resume
    assert b["weights"] == a["weights"]  # bit-identical proxy and rater
    ids_a, scores_a, meta_a = read_scores(whole / "scores.parquet")
    ids_b, scores_b, meta_b = read_scores(cut / "scores.parquet")
    assert ids_a == ids_b
    np.testing.assert_array_equal(scores_a, scores_b)
    assert meta_b["dataset_fingerprint"] == meta_a["dataset_fingerprint"]
    assert meta_b["version"] and "commit" in meta_b and meta_b["config"]["seed"] == 0


def test_a_record_in_the_checkpoint_folder_is_still_read(tmp_path):
    """A run folder whose identity sits in checkpoints/ (where earlier versions wrote it) resumes when
    the identity matches and is refused, naming the key, when it does not."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "last.ckpt").write_bytes(b"")
    identity = {"config": {"seed": 0}, "data": {"pool": "abc"}}
    (folder / "run-identity.json").write_text(json.dumps(identity))
    assert resume_checkpoint(tmp_path, identity) == str(folder / "last.ckpt")
    with pytest.raises(ResumeError, match="seed: 0 -> 1"):
        resume_checkpoint(tmp_path, {"config": {"seed": 1}, "data": {"pool": "abc"}})
    (folder / "run-identity.json").unlink()
    with pytest.raises(ResumeError, match="no record"):
        resume_checkpoint(tmp_path, identity)
