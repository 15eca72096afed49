"""The examples/ models wired by config overrides only (README "Extending"): the custom proxy through
the rate stage, the custom downstream model through the train stage with evaluation, a proxy that
breaks the hook's contract failing the rate stage with its name, and the custom rater backbone."""

import json
import shlex

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from alchemist_pl.rater import sample_weights
from alchemist_pl.scores import read_scores
from alchemist_pl.stages import run
from examples.tiny_backbone import ThumbnailBackbone
from examples.tiny_proxy import TinyConvProxy

from .conftest import ROOT, compose_run

EXAMPLES = f"hydra.searchpath=[file://{ROOT / 'examples' / 'conf'}]"
SMOKE = ("debug=smoke", "logger=csv", "seed=0", EXAMPLES)


class FlatLossProxy(TinyConvProxy):
    """Breaks the contract: one loss for the whole batch instead of one per sample."""

    def per_sample_loss(self, scheduler, images, states, mask, timesteps, noise, pooled):
        return super().per_sample_loss(scheduler, images, states, mask, timesteps, noise, pooled).mean()


def test_custom_proxy_rates_the_pool(tmp_path, emoji_dir):
    """proxy=tiny_conv (examples/conf/proxy): the value-gap rating with θ and θ′ TinyConvProxy."""
    cfg = compose_run(tmp_path, "+experiment=rate", "proxy=tiny_conv", base=SMOKE)
    assert cfg.bilevel.proxy._target_ == "examples.tiny_proxy.TinyConvProxy"
    summary = run(cfg)
    ids, scores, meta = read_scores(tmp_path / "scores.parquet")
    m = summary["metrics"]
    assert len(ids) == 512 and np.isfinite(scores).all() and scores.std() > 0  # the rater moved
    assert m["bilevel_iterations"] == 4 and np.isfinite(m["rate/value_gap"]) and m["rate/ul"] < 1
    assert meta["config"]["proxy"]["unet"]["_target_"] == "examples.tiny_proxy.TinyConvProxy"


def test_custom_downstream_model_trains_and_is_evaluated(tmp_path, emoji_dir):
    """model=tiny_conv (examples/conf/model): trained, tested and evaluated through its generate_images."""
    cfg = compose_run(tmp_path, "+experiment=baseline", "model=tiny_conv", base=SMOKE)
    summary = run(cfg)
    m = summary["metrics"]
    assert m["steps"] == 4 and m["train_samples"] == 512
    assert np.isfinite(m["test/loss"]) and np.isfinite(m["train/loss"])
    curve = json.loads((tmp_path / "eval_curve.json").read_text())
    assert curve[-1]["step"] == 4 and np.isfinite(curve[-1]["domain_fid"])
    assert (tmp_path / "eval_samples.png").stat().st_size > 0 and (tmp_path / "samples.png").stat().st_size > 0
    # the example writes a grid without captions; the summary lists exactly what is there
    assert (
        summary["outputs"]["samples"] == str(tmp_path / "samples.png") and "sample_captions" not in summary["outputs"]
    )
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert any(k.startswith("net.") for k in ckpt["state_dict"])  # the example's own network was trained
    assert ckpt["state_dict"]["null_caption"].abs().sum() > 0  # set_null_caption got the empty caption's states


def test_proxy_breaking_the_hook_contract_fails_the_rate_stage_by_name(tmp_path, emoji_dir):
    cfg = compose_run(
        tmp_path, "+experiment=rate", "proxy=tiny_conv", f"proxy.unet._target_={__name__}.FlatLossProxy", base=SMOKE
    )
    with pytest.raises(
        ValueError, match=r"FlatLossProxy\.per_sample_loss must return .*shape \[B\] = \(32,\).*shape \(\)"
    ):
        run(cfg)


def test_custom_rater_backbone_scores_each_sample_alone(tmp_path, small_split):
    """rater=thumbnail_mlp (examples/conf/rater): the Group MLP on ThumbnailBackbone's features; a
    sample's score does not depend on the batch it is scored in, and the weights train the backbone."""
    torch.manual_seed(0)
    rater = instantiate(compose_run(tmp_path, "rater=thumbnail_mlp", base=SMOKE).rater)
    assert isinstance(rater.backbone, ThumbnailBackbone)
    images = torch.stack([small_split[i]["image"] for i in range(8)])
    pooled = torch.stack([small_split[i]["pooled"] for i in range(8)])
    s, b = rater(images, pooled)
    assert s.shape == (8,) and b.shape == ()
    alone = torch.cat([rater.score(images[i : i + 1], pooled[i : i + 1]) for i in range(8)])
    torch.testing.assert_close(rater.score(images, pooled), alone)
    (sample_weights(s, b) * torch.arange(8.0)).sum().backward()
    assert rater.backbone.mlp[0].weight.grad.abs().sum() > 0


def test_readme_extending_commands_select_the_examples(tmp_path):
    """The commands of README "Extending" compose to the examples' classes."""
    block = (ROOT / "README.md").read_text().split("## Extending")[1].split("```bash")[1].split("```")[0]
    commands = [shlex.split(line)[2:] for line in block.splitlines() if line.startswith("python train.py")]
    chosen = set()
    for args in commands:
        args = [a.replace("file://examples/conf", f"file://{ROOT / 'examples' / 'conf'}") for a in args]
        cfg = compose_run(tmp_path, *args, base=())
        chosen |= {cfg.proxy.unet._target_, cfg.model._target_, cfg.rater.backbone._target_}
    assert {
        "examples.tiny_proxy.TinyConvProxy",
        "examples.tiny_downstream.TinyTextToImage",
        "examples.tiny_backbone.ThumbnailBackbone",
    } <= chosen
