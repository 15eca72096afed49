"""Progress without a terminal: under nohup or a pipe the stages log plain progress lines
(iteration / total, s/it, ETA, losses) instead of a live bar that shows nothing there."""

import io
import logging
import re

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import RichProgressBar
from torch.utils.data import DataLoader, TensorDataset

from alchemist_pl.progress import LogProgress, progress_bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


class TwoSteps(L.LightningModule):
    """Two optimizers stepped per batch, as the bilevel loop steps a proxy and a rater."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.a, self.b = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        for opt, m, name in zip(self.optimizers(), (self.a, self.b), ("upper", "lower")):
            loss = m(batch[0]).pow(2).mean()
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
            self.log(f"tiny/{name}_loss", loss)
        self.log("lower_loss", loss)  # the same value under a bare name: shown once

    def configure_optimizers(self):
        return [torch.optim.SGD(self.a.parameters(), lr=0.1), torch.optim.SGD(self.b.parameters(), lr=0.1)]


def fit(tmp_path, every=2, ckpt=None, **limits):
    """Fit TwoSteps on 10 batches an epoch; returns (trainer, the progress lines logged)."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("alchemist_pl.progress")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        trainer = L.Trainer(
            callbacks=[progress_bar(every, stream=io.StringIO())],
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
            **limits,
        )
        data = DataLoader(TensorDataset(torch.randn(20, 2)), batch_size=2)
        trainer.fit(TwoSteps(), data, ckpt_path=ckpt)
    finally:
        logger.removeHandler(handler)
    return trainer, [r.getMessage() for r in records]


def test_rich_on_a_terminal_log_lines_elsewhere():
    assert isinstance(progress_bar(stream=Terminal()), RichProgressBar)
    assert isinstance(progress_bar(stream=io.StringIO()), LogProgress)
    with pytest.raises(ValueError, match="every_n_iterations must be a positive integer, got 0"):
        progress_bar(0, stream=io.StringIO())


def test_lines_count_iterations_not_optimizer_steps(tmp_path):
    """max_steps=10 optimizer steps at two a batch: 5 iterations; a line after the first, every 2nd, the last."""
    _, lines = fit(tmp_path, every=2, max_epochs=3, max_steps=10)
    heads = [line.split(", epoch")[0] for line in lines]
    assert heads == ["iteration 1/5 (20%)", "iteration 2/5 (40%)", "iteration 4/5 (80%)", "iteration 5/5 (100%)"]
    pattern = r"iteration 4/5 \(80%\), epoch 1/3, \d+\.\d\d s/it, ETA \d+:\d\d:\d\d, tiny/upper_loss \S+, tiny/lower_loss \S+$"
    assert re.fullmatch(pattern, lines[2]), lines[2]


def test_epochs_bound_the_total_and_a_resumed_run_counts_on(tmp_path):
    trainer, lines = fit(tmp_path, every=10, max_epochs=2)
    assert [line.split(",")[0] for line in lines] == [
        "iteration 1/20 (5%)",
        "iteration 10/20 (50%)",
        "iteration 20/20 (100%)",
    ]
    assert "epoch 2/2" in lines[-1]
    ckpt = tmp_path / "half.ckpt"
    trainer, _ = fit(tmp_path, every=10, max_epochs=-1, max_steps=14)  # 7 iterations, mid-epoch
    trainer.save_checkpoint(ckpt)
    _, lines = fit(tmp_path, every=10, max_epochs=-1, max_steps=24, ckpt=str(ckpt))
    assert [line.split(",")[0] for line in lines] == [
        "iteration 8/12 (66%)",
        "iteration 10/12 (83%)",
        "iteration 12/12 (100%)",
    ]
    assert "epoch" not in lines[0]  # no epoch bound
