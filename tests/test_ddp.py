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

from alchemist_pl.audit import zscore
from alchemist_pl.data import load_split
from alchemist_pl.pruning import choose_subset
from alchemist_pl.sampler import SubsetDistributedSampler
from alchemist_pl.scores import read_scores
from alchemist_pl.scoring import score_dataset

from .conftest import DATA_DIR, ROOT

# 64 pool samples, D_val 32: with 2 ranks, batches of 8 and one pass over the pool in 2 epochs, two
# bilevel iterations per epoch per rank (the rating budget's stream sampler, sharded across the ranks)
TINY = [
    "debug=smoke",
    "data.limit_train=64",
    "data.limit_val=32",
    "rate.batch_size=8",
    "rate.val_batch_size=8",
    "rate.pool_passes=1.0",
    "rate.score_batch_size=16",
    "+callbacks.probe._target_=tests.probe.Probe",
]


def cli(*args):
    # one thread per process: on a small shared CPU, oversubscribed OpenMP threads make each step ~10x slower
    env = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "train.py", *args, f"paths.data_dir={DATA_DIR}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def probes(folder):
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def ddp_rate(tmp_path_factory, emoji_dir):
    out = tmp_path_factory.mktemp("ddp-rate")
    cli(
        "+experiment=rate",
        "trainer=ddp_cpu",
        "logger=csv",
        *TINY,
        f"+callbacks.probe.out={out}/probe",
        f"hydra.run.dir={out}",
    )
    return out


@pytest.mark.slow
def test_ranks_hold_identical_weights(ddp_rate):
    ranks = probes(ddp_rate / "probe")
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert len(ranks[0]["batches"]) == 4  # 2 epochs x 2 iterations on each rank
    assert len(ranks[0]["weights"]) > 100 and ranks[0]["weights"] == ranks[1]["weights"]  # proxy and rater


@pytest.mark.slow
def test_ranks_see_disjoint_shards_reshuffled_each_epoch(ddp_rate):
    ranks = probes(ddp_rate / "probe")
    for epoch in range(2):
        b0, b1 = (r["batches"][2 * epoch : 2 * epoch + 2] for r in ranks)
        val = [sum((b["val"] for b in bs), []) for bs in (b0, b1)]
        train = [sum((b["train"] for b in bs), []) for bs in (b0, b1)]
        assert sorted(val[0] + val[1]) == list(range(32))  # D_val: disjoint and covering every epoch
        assert not set(train[0]) & set(train[1])  # pool batches: disjoint
    assert ranks[0]["batches"][0] != ranks[0]["batches"][2]  # epoch 1 reshuffles


@pytest.mark.slow
def test_two_rank_scores_equal_one_process_scores(ddp_rate, emoji_dir, cache_dir):
    """The rater's scores gathered from both ranks equal one process's; rank 0 reads scores.parquet from the
    proxies (rate.scores=auto) as the z-score sum of the parts it writes beside it."""
    ids, scores, meta = read_scores(ddp_rate / "rater-scores.parquet")
    assert meta["world_size"] == 2 and len(ids) == 64
    final_ids, final, final_meta = read_scores(ddp_rate / "scores.parquet")
    assert final_ids == ids and final_meta["scores_from"] == "value_gap_caption" and final_meta["world_size"] == 2
    gap, caption = (read_scores(ddp_rate / f)[1] for f in ("value-gap-scores.parquet", "caption-scores.parquet"))
    np.testing.assert_allclose(final, zscore(gap.astype(float)) + zscore(caption.astype(float)), rtol=1e-5, atol=1e-5)
    saved = torch.load(ddp_rate / "rater.pt")
    rater = instantiate(saved["config"])
    rater.load_state_dict(saved["state_dict"])
    pool = load_split(emoji_dir / "train", 32, cache_dir, limit=64)
    assert pool.sample_ids == ids
    np.testing.assert_allclose(scores, score_dataset(rater, pool, batch_size=7), rtol=1e-5, atol=1e-6)
    assert json.loads((ddp_rate / "summary.json").read_text())["metrics"]["samples_rated"] == 64


@pytest.mark.slow
def test_multirun_with_ddp_spawn(tmp_path, emoji_dir):
    """`-m` with trainer=ddp_spawn_cpu: each job of the sweep runs once, on 2 ranks."""
    cli(
        "-m",
        "+experiment=rate",
        "trainer=ddp_spawn_cpu",
        "~logger",
        "rate.max_epochs=1",
        "seed=0,1",
        *TINY,
        "+callbacks.probe.out=${paths.output_dir}/probe",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["0", "1"]
    first = {}
    for job in ("0", "1"):
        ranks = probes(tmp_path / job / "probe")
        assert [r["world_size"] for r in ranks] == [2, 2] and ranks[0]["weights"] == ranks[1]["weights"]
        ids, scores, _ = read_scores(tmp_path / job / "scores.parquet")
        first[job] = scores
    assert not np.allclose(first["0"], first["1"])  # the seeds differ


# Downstream training on 2 ranks: 32-sample subset of a 64-sample pool, batches of 8 -> 2 steps per
# epoch per rank; train.epochs=2 -> 4 steps (32 * 2 / (8 * 2 ranks)); an odd test split (63) so the
# ranks' test shares differ in size.
# Each rank's paths.output_dir is <run>/rank<LOCAL_RANK>: whatever a rank writes is visible as its own.
TRAIN_TINY = [
    "debug=smoke",
    "data.limit_train=64",
    "data.limit_test=63",
    "train.batch_size=8",
    "train.epochs=2",
    "train.max_steps=1",  # replaced by the epochs' 4 steps
    "eval.every_n_steps=2",
    "+callbacks.probe._target_=tests.probe.Probe",
    "paths.output_dir=${hydra:runtime.output_dir}/rank${oc.env:LOCAL_RANK,0}",
]


@pytest.fixture(scope="module")
def ddp_train(tmp_path_factory, emoji_dir):
    from itertools import islice

    from alchemist_pl.data import iter_samples
    from alchemist_pl.scores import write_scores

    out = tmp_path_factory.mktemp("ddp-train")
    ids = [raw.sample_id for raw in islice(iter_samples(emoji_dir / "train"), 64)]
    write_scores(out / "scores.parquet", ids, np.random.default_rng(0).normal(size=64), {"stage": "test"})
    cli(
        "+experiment=subset",
        f"scores_path={out}/scores.parquet",
        "method=shift_gsample",
        "keep_ratio=0.5",
        "trainer=ddp_cpu",
        "logger=csv",
        *TRAIN_TINY,
        f"+callbacks.probe.out={out}/probe",
        f"hydra.run.dir={out}/run",
    )
    return out, ids


@pytest.mark.slow
def test_training_ranks_hold_identical_weights_and_split_the_subset(ddp_train):
    from alchemist_pl.scores import read_subset

    out, ids = ddp_train
    subset, meta = read_subset(out / "run" / "rank0" / "subset.parquet")
    assert len(subset) == 32 and meta["method"] == "shift_gsample"
    position = {s: i for i, s in enumerate(ids)}
    ranks = probes(out / "probe")
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert len(ranks[0]["weights"]) > 50 and ranks[0]["weights"] == ranks[1]["weights"]  # the UNet
    assert [len(r["batches"]) for r in ranks] == [4, 4]
    for epoch in range(2):
        shards = [sum(r["batches"][2 * epoch : 2 * epoch + 2], []) for r in ranks]
        assert not set(shards[0]) & set(shards[1])  # disjoint
        assert sorted(shards[0] + shards[1]) == sorted(position[s] for s in subset)  # covering: the subset
    assert ranks[0]["batches"][:2] != ranks[0]["batches"][2:]  # the second epoch reshuffles


@pytest.mark.slow
def test_training_outputs_written_once_by_rank_zero(ddp_train):
    out, _ = ddp_train
    rank0, rank1 = out / "run" / "rank0", out / "run" / "rank1"
    assert [p for p in rank1.rglob("*") if p.is_file()] == []  # rank 1 wrote nothing
    for name in (
        "summary.json",
        "subset.parquet",
        "samples.png",
        "samples.txt",
        "eval_samples.png",
        "checkpoints/last.ckpt",
    ):
        assert (rank0 / name).stat().st_size > 0, name
    summary = json.loads((rank0 / "summary.json").read_text())["metrics"]
    assert summary["world_size"] == 2 and summary["steps"] == 4 and summary["train_samples"] == 32
    assert [p["step"] for p in summary["eval_curve"]] == [2, 4]  # rank 0 evaluated; rank 1 waited
    assert len((rank0 / "samples.txt").read_text().splitlines()) == 8


@pytest.mark.slow
def test_two_rank_test_loss_equals_one_process_test_loss(ddp_train, make_cfg, emoji_dir, cache_dir):
    """The ranks score disjoint shares of the test split (32 + 31 samples) and sum: the same value
    as one process testing the final checkpoint."""
    import lightning as L

    from alchemist_pl.datamodule import TrainingDataModule

    out, _ = ddp_train
    summary = json.loads((out / "run" / "rank0" / "summary.json").read_text())["metrics"]
    ckpt = torch.load(out / "run" / "rank0" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4
    model = instantiate(make_cfg("debug=smoke").model)
    model.load_state_dict(ckpt["state_dict"])
    model.hparams.num_samples = 0  # the loss only
    dm = TrainingDataModule(
        emoji_dir / "train",
        emoji_dir / "test",
        limit_train=64,
        limit_test=63,
        batch_size=8,
        resolution=32,
        cache_dir=cache_dir,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        default_root_dir=out / "one-process",
    )
    one = trainer.test(model, datamodule=dm, verbose=False)[0]
    for key in ("test/loss", "test/loss_t100", "test/loss_t900"):
        assert summary[key] == pytest.approx(one[key], rel=1e-5), key


@pytest.mark.slow
def test_pipeline_on_two_ranks(tmp_path, emoji_dir):
    """rate -> prune -> train in one 2-rank command: rank 1 trains on the subset file rank 0 wrote."""
    from alchemist_pl.scores import read_subset

    cli(
        "+experiment=pipeline",
        "trainer=ddp_cpu",
        "logger=csv",
        *TINY,
        "rate.max_epochs=1",
        "data.limit_test=32",
        "train.batch_size=8",
        "train.max_steps=2",
        "pipeline.compare=[top_k]",
        "eval.enabled=false",
        f"+callbacks.probe.out={tmp_path}/probe",
        f"hydra.run.dir={tmp_path}",
    )
    subset, _ = read_subset(tmp_path / "prune" / "subset.parquet")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["metrics"]["comparison"][0]["samples"] == len(subset) == 32
    train = json.loads((tmp_path / "train-top_k" / "summary.json").read_text())["metrics"]
    assert train["world_size"] == 2 and train["steps"] == 2
    ranks = probes(tmp_path / "probe")  # the last fit: the downstream model
    assert ranks[0]["weights"] == ranks[1]["weights"]
    ids = read_scores(tmp_path / "rate" / "scores.parquet")[0]
    seen = sum(ranks[0]["batches"] + ranks[1]["batches"], [])
    assert sorted(seen) == sorted(ids.index(s) for s in subset)  # one epoch of the subset, split in two
    assert (tmp_path / "prune" / "percentiles.png").stat().st_size > 0
    assert (tmp_path / "train-top_k" / "samples.png").stat().st_size > 0


@pytest.mark.slow
def test_training_with_ddp_spawn(tmp_path, emoji_dir):
    """trainer=ddp_spawn_cpu (the form for multirun): the main process gets the spawned rank 0's
    evaluation curve from eval_curve.json (≈ 65 s on the 2-core CPU)."""
    cli(
        "+experiment=baseline",
        "trainer=ddp_spawn_cpu",
        "~logger",
        "method=random",
        "keep_ratio=0.5",
        "debug=smoke",
        "data.limit_train=64",
        "data.limit_test=63",
        "train.batch_size=8",
        "train.max_steps=2",
        f"hydra.run.dir={tmp_path}",
    )
    summary = json.loads((tmp_path / "summary.json").read_text())["metrics"]
    assert summary["world_size"] == 2 and summary["steps"] == 2 and np.isfinite(summary["test/loss"])
    assert [p["step"] for p in summary["eval_curve"]] == [2]
    assert json.loads((tmp_path / "eval_curve.json").read_text()) == summary["eval_curve"]


def _subset():
    scores = np.random.default_rng(0).normal(size=100).astype(np.float32)
    return choose_subset(100, scores=scores, keep_ratio=0.5, method="shift_gsample", seed=3)[0]


def _sampler_shards(rank, world, port, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        s = SubsetDistributedSampler(range(100), indices=_subset(), seed=3)
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
    # fork: the ranks inherit this process's imports (a spawned rank spends seconds importing them)
    mp.start_processes(_sampler_shards, args=(world, port, out), nprocs=world, start_method="fork")
    assert sorted((v[0], v[1]) for v in out.values()) == [(world, r) for r in range(world)]
    subset = _subset()
    for epoch in (0, 1):
        shards = [out[r][2][epoch] for r in range(world)]
        flat = sum(shards, [])
        assert set(flat) == set(subset.tolist())  # covering (padded with repeats to equal lengths)
        assert len(flat) - len(subset) < world and len({len(x) for x in shards}) == 1
        if len(subset) % world == 0:
            assert len(flat) == len(set(flat))  # disjoint
    assert all(out[r][2][0] == out[r][2][2] for r in range(world))  # same epoch, same order
    assert out[0][2][0] != out[0][2][1]  # next epoch, new order


class _Strategy:
    """The collective calls the rate stage makes through a DDP trainer's strategy, over the real gloo group."""

    def barrier(self, name=None):
        dist.barrier()

    def broadcast(self, obj, src=0):
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]


def _score_pool_on_rank(rank, port, out, args):
    from datetime import timedelta
    from types import SimpleNamespace

    from alchemist_pl.stages.rate import _score_pool

    cfg, model, pool, folder = args
    # a rank left waiting for another fails after 20 s instead of the default 30 min
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=20))  # fmt: skip
    try:
        trainer = SimpleNamespace(is_global_zero=rank == 0, strategy=_Strategy())
        try:
            scores, _, parts = _score_pool(cfg, model, trainer, pool, folder / "scores.parquet", {}, False, "value_gap")
            out[rank] = ("scores", scores.tolist(), sorted(parts))
        except Exception as e:
            out[rank] = ("error", f"{type(e).__name__}: {e}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("timesteps", [[100], []])
def test_rank_zero_proxy_scores_reach_every_rank_and_so_does_its_failure(timesteps, make_cfg, small_split, tmp_path):
    """rate.scores=value_gap under DDP: rank 0 computes and writes scores.parquet, rank 1 reads it back; when rank 0
    fails (here rate.value_gap.timesteps=[], past score_source), rank 1 stops with an error naming rank 0's, rather
    than waiting at a barrier for a file that never comes."""
    import socket
    from types import SimpleNamespace

    from diffusers import DDPMScheduler
    from omegaconf import OmegaConf

    from .test_signal_audit import _train, _unet

    torch.set_num_threads(1)
    cfg = make_cfg("rate.scores=value_gap", "rate.score_batch_size=16")
    OmegaConf.update(cfg, "rate.value_gap", {"timesteps": timesteps, "draws": 1, "batch_size": 16})
    torch.manual_seed(0)
    rater = instantiate(cfg.rater).eval()
    model = SimpleNamespace(rater=rater, proxy=_unet(), value_proxy=_train(small_split, steps=2),
                            noise_scheduler=DDPMScheduler(),
                            device="cpu")  # fmt: skip
    pool = small_split
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = mp.Manager().dict()
    mp.start_processes(_score_pool_on_rank, args=(port, out, (cfg, model, pool, tmp_path)), nprocs=2,
                       start_method="fork")  # fmt: skip
    if timesteps:
        assert out[0][0] == out[1][0] == "scores" and out[0][2] == ["rater", "value_gap"] and out[1][2] == []
        np.testing.assert_array_equal(out[1][1], out[0][1])
        assert np.std(out[0][1]) > 0
    else:
        assert out[0] == ("error", "ValueError: value_gap_scores.timesteps must be a non-empty list of distinct "
                                   "ints in [0, 1000), got []")  # fmt: skip
        assert out[1][0] == "error" and out[1][1].startswith("RuntimeError: rate.scores=value_gap: rank 0 failed")
        assert out[0][1] in out[1][1]
