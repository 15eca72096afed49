"""Data-parallel runs on CPU (gloo, 2 ranks) through the real CLI and configs, on a slice of the real data.

The probe callback (tests/probe.py) records each rank's batches and, at the end of fitting, a hash
of every parameter.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hydra.utils import instantiate

from alchemist_pl.data import load_split
from alchemist_pl.sampler import SubsetDistributedSampler
from alchemist_pl.scores import read_scores, score_dataset

from .conftest import DATA_DIR, ROOT

# 64 pool samples, D_val 32: with 2 ranks and batches of 8, two bilevel iterations per epoch per rank
TINY = ["debug=smoke", "data.limit_train=64", "data.limit_val=32", "rate.batch_size=8", "rate.val_batch_size=8",
        "rate.score_batch_size=16", "+callbacks.probe._target_=tests.probe.Probe"]


def cli(*args):
    # one thread per process: on a small shared CPU, oversubscribed OpenMP threads make each step ~10x slower
    env = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "train.py", *args, f"paths.data_dir={DATA_DIR}"], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def probes(folder):
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def ddp_rate(tmp_path_factory, emoji_dir):
    out = tmp_path_factory.mktemp("ddp-rate")
    cli("+experiment=rate", "trainer=ddp_cpu", "logger=csv", *TINY, f"+callbacks.probe.out={out}/probe",
        f"hydra.run.dir={out}")
    return out


def test_ranks_hold_identical_weights(ddp_rate):
    ranks = probes(ddp_rate / "probe")
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert len(ranks[0]["batches"]) == 4  # 2 epochs x 2 iterations on each rank
    assert len(ranks[0]["weights"]) > 100 and ranks[0]["weights"] == ranks[1]["weights"]  # proxy and rater


def test_ranks_see_disjoint_shards_reshuffled_each_epoch(ddp_rate):
    ranks = probes(ddp_rate / "probe")
    for epoch in range(2):
        b0, b1 = (r["batches"][2 * epoch: 2 * epoch + 2] for r in ranks)
        val = [sum((b["val"] for b in bs), []) for bs in (b0, b1)]
        train = [sum((b["train"] for b in bs), []) for bs in (b0, b1)]
        assert sorted(val[0] + val[1]) == list(range(32))  # D_val: disjoint and covering every epoch
        assert not set(train[0]) & set(train[1])  # pool batches: disjoint
    assert ranks[0]["batches"][0] != ranks[0]["batches"][2]  # epoch 1 reshuffles


def test_two_rank_scores_equal_one_process_scores(ddp_rate, emoji_dir, cache_dir):
    ids, scores, meta = read_scores(ddp_rate / "scores.parquet")
    assert meta["world_size"] == 2 and len(ids) == 64
    saved = torch.load(ddp_rate / "rater.pt")
    rater = instantiate(saved["config"])
    rater.load_state_dict(saved["state_dict"])
    pool = load_split(emoji_dir / "train", 32, cache_dir, limit=64)
    assert pool.sample_ids == ids
    np.testing.assert_allclose(scores, score_dataset(rater, pool, batch_size=7), rtol=1e-5, atol=1e-6)
    assert json.loads((ddp_rate / "summary.json").read_text())["metrics"]["samples_rated"] == 64


def test_multirun_with_ddp_spawn(tmp_path, emoji_dir):
    """`-m` with trainer=ddp_spawn_cpu: each job of the sweep runs once, on 2 ranks."""
    cli("-m", "+experiment=rate", "trainer=ddp_spawn_cpu", "~logger", "rate.max_epochs=1", "seed=0,1", *TINY,
        "+callbacks.probe.out=${paths.output_dir}/probe", f"hydra.sweep.dir={tmp_path}")
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["0", "1"]
    first = {}
    for job in ("0", "1"):
        ranks = probes(tmp_path / job / "probe")
        assert [r["world_size"] for r in ranks] == [2, 2] and ranks[0]["weights"] == ranks[1]["weights"]
        ids, scores, _ = read_scores(tmp_path / job / "scores.parquet")
        first[job] = scores
    assert not np.allclose(first["0"], first["1"])  # the seeds differ


def _sampler_shards(rank, world, port, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        scores = np.random.default_rng(0).normal(size=100).astype(np.float32)
        s = SubsetDistributedSampler(range(100), scores=scores, keep_ratio=0.5, method="shift_gsample", seed=3)
        got = []
        for epoch in (0, 1, 0):
            s.set_epoch(epoch)
            got.append(list(s))
        out[rank] = (s.num_replicas, s.rank, got)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [1, 2, 3])
def test_sampler_takes_its_shard_from_the_process_group(world):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_sampler_shards, args=(world, port, out), nprocs=world)
    assert sorted((v[0], v[1]) for v in out.values()) == [(world, r) for r in range(world)]
    subset = SubsetDistributedSampler(range(100), scores=np.random.default_rng(0).normal(size=100).astype(np.float32),
                                      keep_ratio=0.5, method="shift_gsample", seed=3).subset
    for epoch in (0, 1):
        shards = [out[r][2][epoch] for r in range(world)]
        flat = sum(shards, [])
        assert set(flat) == set(subset.tolist())  # covering (padded with repeats to equal lengths)
        assert len(flat) - len(subset) < world and len({len(x) for x in shards}) == 1
        if len(subset) % world == 0:
            assert len(flat) == len(set(flat))  # disjoint
    assert all(out[r][2][0] == out[r][2][2] for r in range(world))  # same epoch, same order
    assert out[0][2][0] != out[0][2][1]  # next epoch, new order
