"""Mixed precision in the bilevel loop's manual optimization: gradients are clipped after the
GradScaler unscales them, so fp16 runs take the steps fp32 runs take (on CPU, with Lightning's
``MixedPrecision("16-mixed", "cpu", GradScaler("cpu"))``)."""

import pytest
import torch
from hydra.utils import instantiate
from lightning import Callback, Trainer, seed_everything
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader


class _NormAtStep(Callback):
    """The gradient norm each optimizer steps with: read inside ``optimizer.step`` (after the
    precision plugin's unscaling and the module's clipping)."""

    def __init__(self):
        self.norms = []

    def on_train_start(self, trainer, module):
        for i, opt in enumerate(trainer.optimizers):
            opt.register_step_pre_hook(lambda o, args, kwargs, i=i: self.norms.append((i, _norm(o))))


def _norm(opt) -> float:
    grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))


def _first_steps(make_cfg, split, plugin, iterations=2):
    cfg = make_cfg("data.resolution=16", "bilevel=first_order")  # value_gap refuses a gradient scaler
    seed_everything(0)
    model = instantiate(cfg.bilevel)
    loader = DataLoader(split, batch_size=16, shuffle=False, drop_last=True)
    track = _NormAtStep()
    trainer = Trainer(
        accelerator="cpu",
        max_steps=2 * iterations,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[track],
        plugins=[plugin] if plugin else None,
    )
    trainer.fit(model, train_dataloaders=CombinedLoader({"val": loader, "train": loader}, "min_size"))
    return track.norms, float(model.hparams.grad_clip)


def test_fp16_mixed_clips_unscaled_gradients(make_cfg, small_split):
    """The proxy and rater steps of a 16-mixed run use the fp32 run's clipped gradient norms (within
    fp16 rounding), not norms shrunk by the loss scale (2^16). The GradScaler may skip a step whose
    scaled gradients overflow (here the rater's first), as it is designed to; the steps it takes match."""
    from torch.amp import GradScaler

    fp32, clip = _first_steps(make_cfg, small_split, None)
    fp16, _ = _first_steps(make_cfg, small_split, MixedPrecision("16-mixed", "cpu", GradScaler("cpu")))
    assert all(n <= clip * (1 + 1e-3) for _, n in fp32 + fp16)
    proxy32, proxy16 = ([n for i, n in steps if i == 0] for steps in (fp32, fp16))
    assert len(proxy16) == len(proxy32) == 2 and proxy16 == pytest.approx(proxy32, rel=0.05)
    rater32, rater16 = ([n for i, n in steps if i == 1] for steps in (fp32, fp16))
    assert rater16 and rater16[-1] == pytest.approx(rater32[-1], rel=0.25)  # the same iteration's rater step
