"""Every run does what its config says: it resumes only its own checkpoint, fails before training
when the config cannot succeed, trains the length it was given, and keeps what finished when it
fails late. Runs on the real emoji data (smoke slices)."""

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from hydra.errors import ConfigCompositionException

from alchemist_pl.data import DataError
from alchemist_pl.resume import ResumeError, run_lock
from alchemist_pl.stages import run

from .conftest import CONF, ROOT

# the downstream model for 2 steps on the smoke slice, checkpointed every step, no evaluation, a
# 16-sample test loss
QUICK_TRAIN = (
    "debug=smoke",
    "~logger",
    "eval.enabled=false",
    "data.limit_test=16",
    "model.num_samples=0",
    "train.max_steps=2",
    "callbacks.model_checkpoint.every_n_train_steps=1",
)
QUICK_RATE = ("+experiment=rate", "debug=smoke", "~logger", "rate.max_epochs=1", "data.limit_train=64")


# ---------------------------------------------------------------- resume only the same run


def test_another_runs_checkpoint_is_not_resumed(make_cfg, tmp_path):
    """The field report: a baseline run, then a random-0.5 seed-1 run into the same folder. The second
    is refused, naming the folder and the differing keys, and the first run's summary stays as it was."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = run(make_cfg("+experiment=baseline", *QUICK_TRAIN))
    assert first["metrics"]["steps"] == 2
    # the identity sits beside the checkpoint folder, which a fresh run leaves to Lightning alone
    assert json.loads((tmp_path / "run-identity.json").read_text())["config"]["task_name"] == "baseline"
    # the downstream model's checkpoints are named by its optimizer steps (one a training iteration)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch=0-step=2.ckpt", "last.ckpt"]
    assert not [w for w in caught if "exists and is not empty" in str(w.message)]
    assert not (tmp_path / "samples.png").exists() and "samples" not in first["outputs"]  # model.num_samples=0
    written = (tmp_path / "summary.json").read_text()
    second = make_cfg("+experiment=subset", "method=random", "keep_ratio=0.5", "seed=1", *QUICK_TRAIN)
    with pytest.raises(ResumeError) as e:
        run(second)
    message = str(e.value)
    assert f"{tmp_path / 'checkpoints'} holds the checkpoint of a different run" in message
    for diff in ("method: full -> random", "keep_ratio: 1.0 -> 0.5", "seed: 0 -> 1", "task_name: baseline -> subset"):
        assert diff in message
    assert "samples of training subset (fingerprint)" in message  # half the pool is another sample set
    assert (tmp_path / "summary.json").read_text() == written


def test_same_config_on_other_samples_is_not_resumed(make_cfg, tmp_path, emoji_dir):
    """Same config, but the data folder now holds other samples: refused, naming the data."""
    from itertools import islice

    import webdataset as wds

    from alchemist_pl.data import iter_samples

    pool = tmp_path / "pool"
    pool.mkdir()
    raws = list(islice(iter_samples(emoji_dir / "train"), 128))

    def write(samples):
        with wds.TarWriter(str(pool / "a.tar"), mtime=1) as sink:
            for r in samples:
                sink.write({"__key__": r.sample_id, "png": r.image, "txt": r.caption})

    write(raws[:64])
    args = ("+experiment=baseline", *QUICK_TRAIN, f"data.train_path={pool}")
    run(make_cfg(*args, output_dir=tmp_path / "out"))
    write(raws[64:])
    with pytest.raises(ResumeError, match=r"samples of training subset \(fingerprint\): [0-9a-f]+\.\.\. -> "):
        run(make_cfg(*args, output_dir=tmp_path / "out"))


def test_a_folder_in_use_is_refused(make_cfg, tmp_path):
    """Two runs into one folder at once (e.g. started in the same second into the timestamped default
    folder): the second is refused while the first holds the folder."""
    with run_lock(tmp_path):
        with pytest.raises(ResumeError, match=rf"{tmp_path}: another run \(pid {os.getpid()}\) is writing"):
            run(make_cfg("+experiment=baseline", *QUICK_TRAIN))
    assert not (tmp_path / "checkpoints").exists()


def test_runs_started_together_get_their_own_default_folders():
    """The default output folder of two runs started at the same moment differs (sub-second time)."""
    code = (
        "from hydra import compose, initialize_config_dir\n"
        f"with initialize_config_dir(version_base='1.3', config_dir={str(CONF)!r}):\n"
        "    cfg = compose('config', overrides=['+experiment=rate'], return_hydra_config=True)\n"
        "print(cfg.hydra.run.dir)\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT) for _ in range(2)
    ]
    dirs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(d.startswith("outputs/rate/runs/") or "/rate/runs/" in d for d in dirs), dirs
    assert dirs[0] != dirs[1]


# ---------------------------------------------------------------- a stage that cannot train fails


@pytest.mark.parametrize(
    "override,match",
    [
        ("data.limit_val=20", r"D_val .* has 20 samples \(20\), fewer than one batch of rate.val_batch_size=32"),
        ("data.limit_train=20", r"training pool .* has 20 samples \(20\), fewer than one batch of rate.batch_size=32"),
    ],
)
def test_split_shorter_than_a_batch_names_the_key(make_cfg, override, match):
    with pytest.raises(DataError, match=match):
        run(make_cfg(*QUICK_RATE, override))


def test_training_subset_shorter_than_a_batch_names_the_key(make_cfg):
    with pytest.raises(DataError, match=r"the subset has 5 samples, fewer than one batch of train.batch_size=32"):
        run(make_cfg("+experiment=subset", "method=random", "keep_ratio=0.01", *QUICK_TRAIN))


@pytest.mark.slow  # two CPU ranks: ~50 s
def test_ddp_rank_share_shorter_than_a_batch_fails(tmp_path):
    """The field report: 2 CPU ranks, D_val of 40 samples, rate.val_batch_size=32: each rank has 20,
    no training batch. The run fails naming the key (it exited 0 and wrote scores of an untrained rater)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1"}
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "train.py", *QUICK_RATE, "trainer=ddp_cpu", "data.limit_val=40", f"hydra.run.dir={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode != 0
    assert "has 40 samples (20 per rank on 2 ranks), fewer than one batch of rate.val_batch_size=32" in proc.stderr
    assert not (out / "scores.parquet").exists()


def test_length_the_data_cannot_fill_fails_before_training(make_cfg, tmp_path):
    """rate.max_iterations=50 with one epoch of 2 iterations (one pass over the 64-sample pool,
    batches of 32) would stop at 2: refused at the start, naming both keys."""
    with pytest.raises(
        ValueError, match=r"rate.max_iterations=50 cannot be reached: rate.max_epochs=1 epochs of 2 batches"
    ):
        run(make_cfg(*QUICK_RATE, "rate.pool_passes=1.0", "rate.max_iterations=50"))
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()


# ---------------------------------------------------------------- one meaning of a step


def test_rate_counts_bilevel_iterations(make_cfg, tmp_path):
    """rate.max_iterations=3 runs 3 bilevel iterations (6 optimizer steps), and a checkpoint period of
    2 counts iterations too: the periodic checkpoint is the one of iteration 2, and its file says so
    (iteration=2.ckpt, not Lightning's epoch=..-step=4.ckpt); last.ckpt holds the end of training
    (iteration 3), not the last periodic state. The ranking grid then cannot be written: the weights kept
    after the late failure are named by iteration too, and the summary counts both."""
    (tmp_path / "ranking.png").mkdir()  # the grid's path is taken by a folder
    cfg = make_cfg(
        *QUICK_RATE, "rate.max_epochs=3", "rate.max_iterations=3", "callbacks.model_checkpoint.every_n_train_steps=2"
    )
    with pytest.raises(IsADirectoryError):
        run(cfg)
    load = lambda name: torch.load(tmp_path / "checkpoints" / name, map_location="cpu", weights_only=False)  # noqa: E731
    assert load("iteration=2.ckpt")["global_step"] == 4  # iteration 2: a proxy and a rater step each
    assert load("last.ckpt")["global_step"] == 6  # the end of training
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["failed-iteration3.pt", "iteration=2.ckpt", "last.ckpt"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    m = summary["metrics"]
    assert m["status"] == "failed" and m["optimizer_steps"] == 6 and m["iterations"] == 3
    assert summary["outputs"]["weights"] == str(tmp_path / "checkpoints" / "failed-iteration3.pt")


@pytest.mark.parametrize(
    "experiment,override,key",
    [
        ("rate", "+trainer.max_steps=10", "rate.max_iterations"),
        ("rate", "+trainer.max_epochs=1", "rate.max_epochs"),
        ("baseline", "+trainer.max_steps=10", "train.max_steps"),
        ("baseline", "+trainer.gradient_clip_val=5", "train.gradient_clip_val"),
    ],
)
def test_trainer_keys_a_stage_sets_are_refused(make_cfg, experiment, override, key):
    """`+trainer.max_steps=10` was accepted, recorded in summary.json and ignored."""
    name = override.split("=")[0][1:]
    with pytest.raises(ValueError, match=rf"sets {name} itself \({name}: set {key} instead\)"):
        run(make_cfg(f"+experiment={experiment}", "debug=smoke", "~logger", override))


def test_old_rate_max_steps_key_is_refused(make_cfg):
    with pytest.raises(ConfigCompositionException, match="max_steps"):
        make_cfg("+experiment=rate", "rate.max_steps=6")


# ---------------------------------------------------------------- checks before training; nothing lost after


@pytest.mark.parametrize(
    "override,match",
    [
        ("eval.num_images=1", r"eval.num_images=1: FID needs at least 2 generated images"),
        ("eval.num_images=100", r"eval.num_images=100 prompts asked for, but the test split data.test_path=.* has 64"),
        (
            "evaluator.kid_subset_size=20",
            r"evaluator.kid_subset_size=20 is more than the eval.num_images=16 generated images",
        ),
    ],
)
def test_evaluation_that_cannot_run_fails_before_training(make_cfg, tmp_path, override, match):
    """The field report: `eval.num_images=1` trained every step, then crashed in FID."""
    with pytest.raises(ValueError, match=match):
        run(make_cfg("+experiment=baseline", "debug=smoke", "~logger", override))
    assert not (tmp_path / "checkpoints").exists()


def test_a_crash_in_evaluation_keeps_the_weights_and_the_summary(make_cfg, tmp_path):
    """The last evaluation fails (its grid cannot be written): the run fails, and summary.json says
    so, with the steps trained and the evaluation values computed; the trained weights are kept."""
    (tmp_path / "eval_samples.png").mkdir()  # the grid's path is taken by a folder
    cfg = make_cfg("+experiment=baseline", "debug=smoke", "~logger", "model.num_samples=0", "train.max_steps=2")
    with pytest.raises(IsADirectoryError):
        run(cfg)
    summary = json.loads((tmp_path / "summary.json").read_text())
    m = summary["metrics"]
    assert m["status"] == "failed" and "IsADirectoryError" in m["error"] and m["optimizer_steps"] == 2
    assert m["eval_curve"][-1]["step"] == 2 and m["eval_curve"][-1]["domain_fid"] > 0
    kept = torch.load(summary["outputs"]["weights"], map_location="cpu", weights_only=False)
    assert kept["global_step"] == 2 and kept["state_dict"]


@pytest.mark.parametrize(
    "override,match",
    [
        ("method=top_kk", r"unknown pruning method 'top_kk'"),
        ("keep_ratio=0", r"keep_ratio must be in \(0, 1\], got 0"),
        ("pipeline.compare=[shift_gsample,randum]", r"unknown pruning method 'randum'"),
        ("eval.num_images=1", r"eval.num_images=1: FID needs at least 2 generated images"),
    ],
)
def test_pipeline_selection_and_evaluation_checked_before_rating(make_cfg, tmp_path, override, match):
    """What prune and train would refuse after the rating is refused before it."""
    with pytest.raises(ValueError, match=match):
        run(make_cfg("+experiment=pipeline", "debug=smoke", "~logger", override))
    assert not (tmp_path / "rate").exists()


def test_last_checkpoint_holds_the_end_of_training(make_cfg, tmp_path):
    """train.max_steps=3 with a checkpoint every 2 steps: last.ckpt is step 3 (the trained model), not step 2
    (Lightning's ModelCheckpoint writes it at the end only when no periodic save wrote it before)."""
    cfg = make_cfg(
        "+experiment=baseline", *QUICK_TRAIN, "train.max_steps=3", "callbacks.model_checkpoint.every_n_train_steps=2"
    )
    run(cfg)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3
