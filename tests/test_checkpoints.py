"""Checkpoint files named by training iteration where an iteration takes several optimizer steps."""

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from alchemist_pl.checkpoints import IterationCheckpoint, counted_in_iterations


class OwnNames(ModelCheckpoint):
    """A user's checkpoint callback: the rate stage converts its period, not its class."""


def test_names_say_the_iteration(tmp_path):
    ckpt = IterationCheckpoint(steps_per_iteration=2, dirpath=tmp_path)
    metrics = {"epoch": torch.tensor(7), "step": torch.tensor(200)}
    assert ckpt.format_checkpoint_name(dict(metrics)).endswith("/iteration=100.ckpt")
    named = IterationCheckpoint(steps_per_iteration=2, dirpath=tmp_path, filename="{epoch}-{iteration}")
    assert named.format_checkpoint_name(dict(metrics)).endswith("/epoch=7-iteration=100.ckpt")
    assert ckpt.format_checkpoint_name(dict(metrics), ckpt.CHECKPOINT_NAME_LAST).endswith("/last.ckpt")
    with pytest.raises(ValueError, match="steps_per_iteration must be a positive integer, got 0"):
        IterationCheckpoint(steps_per_iteration=0)


def test_the_config_counted_in_iterations(make_cfg):
    cfg = make_cfg(
        "+experiment=rate",
        "+callbacks.own._target_=tests.test_checkpoints.OwnNames",
        "+callbacks.own.every_n_train_steps=5",
    )
    out = counted_in_iterations(cfg, 2).callbacks
    assert out.model_checkpoint._target_ == "alchemist_pl.checkpoints.IterationCheckpoint"
    assert out.model_checkpoint.steps_per_iteration == 2 and out.model_checkpoint.every_n_train_steps == 200
    assert out.own._target_ == "tests.test_checkpoints.OwnNames" and out.own.every_n_train_steps == 10
    assert "steps_per_iteration" not in out.own and out.progress_bar == cfg.callbacks.progress_bar
    assert cfg.callbacks.model_checkpoint.every_n_train_steps == 100  # the given config is left as it was
