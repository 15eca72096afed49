"""The rater's replay buffer: signals stay with their samples, replay steps learn the signal's sign, and
the bilevel loop with replay ranks planted noise below clean samples."""

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from lightning import Trainer
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.utilities import CombinedLoader
from torch.amp import GradScaler
from torch.utils.data import DataLoader

from alchemist_pl.analysis import auroc
from alchemist_pl.replay import SignalReplay
from alchemist_pl.scoring import score_dataset

from .test_signals import _fit, _model, planted  # noqa: F401 - the planted-noise pool fixture


def _rows(n: int, start: int = 0):
    """Images whose every pixel is their row number, captions likewise, signal = −row number."""
    ids = torch.arange(start, start + n, dtype=torch.float32)
    return ids.view(-1, 1, 1, 1).expand(n, 3, 4, 4).clone(), ids.view(-1, 1).expand(n, 5).clone(), -ids


def test_replay_keeps_each_signal_with_its_sample_and_drops_the_oldest():
    buf = SignalReplay(10)
    for start in (0, 4, 8):  # 12 rows into 10 slots: rows 0 and 1 are overwritten
        buf.add(*_rows(4, start))
    assert len(buf) == 10
    images, pooled, signal = buf.sample(10, torch.Generator().manual_seed(0))
    row = images[:, 0, 0, 0]
    assert torch.equal(pooled[:, 0], row) and torch.equal(signal, -row)
    assert sorted(row.tolist()) == list(range(2, 12))
    part = buf.sample(3, torch.Generator().manual_seed(1))
    assert len(part[0]) == 3 and torch.equal(part[2], -part[0][:, 0, 0, 0])


def test_replay_keeps_the_last_rows_of_a_batch_larger_than_it():
    buf = SignalReplay(3)
    buf.add(*_rows(5))
    assert sorted(buf.sample(5)[2].tolist()) == [-4.0, -3.0, -2.0]


@pytest.mark.parametrize(
    "call", [lambda b: b.add(*_rows(3)[:2], torch.zeros(2)), lambda b: b.sample(1), lambda b: SignalReplay(0)]
)
def test_replay_rejects_bad_use(call):
    with pytest.raises(ValueError):
        call(SignalReplay(4))


@pytest.mark.parametrize("objective", ["instance", "regression"])
def test_replay_steps_learn_the_stored_signal(planted, objective):  # noqa: F811
    """Replay steps alone (no live batch): a rater fed the buffer's (sample, signal) pairs, with signal
    +1 on noise and blank samples (bad) and −1 on clean ones, must rank clean samples above them."""
    pool, _, kinds = planted
    model = _model(
        16, rater_signal="value_gap", replay_steps=60, replay_size=256, logit_anchor=0.1, replay_objective=objective
    )
    images = pool.images.float() / 127.5 - 1.0
    pooled = pool.text.pooled[pool.caption_rows].float()
    model.replay.add(images, pooled, torch.as_tensor(np.where(kinds == "clean", -1.0, 1.0), dtype=torch.float32))
    opt = torch.optim.AdamW(model.rater.parameters(), lr=3e-3)
    model.optimizers = lambda use_pl_optimizer=True: [None, opt]
    model.manual_backward = lambda loss: loss.backward()
    model._replay_steps(16)
    scores = score_dataset(model.rater, pool, batch_size=64)
    clean = scores[kinds == "clean"]
    for kind in ("noise", "blank"):
        assert auroc(clean, scores[kinds == kind]) > 0.8, kind


@pytest.mark.slow
def test_value_gap_rater_with_replay_separates_noise_sooner(planted):  # noqa: F811
    """The bilevel loop with replay: the buffer fills with the loop's own signals, and in 150 iterations
    the rater ranks noise and blank samples below clean ones, noise by a margin the loop without replay
    does not reach in as many iterations (0.77 at this seed and size; with replay 0.95)."""
    pool, val, kinds = planted
    model = _model(
        16,
        rater_signal="value_gap",
        ul_init=1.0,
        rater_timesteps=(20, 120),
        logit_anchor=0.1,
        replay_steps=4,
        replay_size=128,
        replay_objective="regression",
    )
    trainer, metrics = _fit(model, val, pool, iterations=150)
    assert trainer.global_step == 300  # replay steps are not Lightning steps
    assert len(model.replay) == 128 and "rate/replay_loss" in metrics[-1]
    scores = score_dataset(model.rater, pool, batch_size=64)
    clean = scores[kinds == "clean"]
    result = {k: auroc(clean, scores[kinds == k]) for k in ("noise", "blank")}
    assert result["noise"] > 0.85 and result["blank"] > 0.6, result


@pytest.mark.parametrize(
    "options",
    [
        {"replay_steps": -1},
        {"replay_steps": 2, "rater_signal": "exact"},
        {"replay_steps": 1.5},
        {"replay_objective": "ranking"},
    ],
)
def test_replay_options_are_checked(options):
    with pytest.raises(ValueError, match="replay"):
        _model(**options)


def test_replay_state_round_trips_and_refuses_another_capacity():
    buffer = SignalReplay(4)
    buffer.add(torch.arange(3.0).view(3, 1, 1, 1), torch.arange(3.0).view(3, 1), torch.arange(3.0))
    copy = SignalReplay(4)
    copy.load_state_dict(buffer.state_dict())
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    for a, b in zip(buffer.sample(3, g1), copy.sample(3, g2)):
        torch.testing.assert_close(a, b)
    copy.add(torch.full((1, 1, 1, 1), 9.0), torch.full((1, 1), 9.0), torch.tensor([9.0]))
    assert copy.signal.tolist() == [0.0, 1.0, 2.0, 9.0] and len(copy) == 4  # the next slot came with the state
    with pytest.raises(ValueError, match="holds 4 rows, this run's bilevel.replay_size is 8"):
        SignalReplay(8).load_state_dict(buffer.state_dict())


@pytest.mark.parametrize("overrides", [["bilevel=first_order", "bilevel.replay_steps=1"], ["bilevel=value_gap"]])
def test_steps_outside_the_scaler_refuse_a_gradient_scaler(make_cfg, small_split, overrides):
    """Replay steps and θ′'s steps are plain optimizer steps: a 16-mixed GradScaler would not unscale them."""
    model = instantiate(make_cfg("data.resolution=16", *overrides).bilevel)
    loader = DataLoader(small_split, batch_size=16, drop_last=True)
    trainer = Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, plugins=[MixedPrecision("16-mixed", "cpu", GradScaler("cpu"))],
    )  # fmt: skip
    with pytest.raises(ValueError, match="need a precision without a gradient scaler"):
        trainer.fit(model, train_dataloaders=CombinedLoader({"val": loader, "train": loader}, "min_size"))
