"""Every experiment overlay (conf/experiment/**/*.yaml) composes; the cheap ones run on a tiny slice.

The runs double as the default suite's fast end-to-end check of each stage (rate, score, prune,
train, pipeline) through the real composed configs; the larger smoke runs are in test_pipeline.py
(marked slow).
"""

import io
import json
import logging
import re
import sys

import numpy as np
import pytest

from alchemist_pl.data import iter_samples
from alchemist_pl.scores import read_scores, read_subset
from alchemist_pl.stages import STAGES, run

from .conftest import CONF, ROOT

OVERLAYS = sorted(
    str(p.relative_to(CONF / "experiment").with_suffix("")) for p in (CONF / "experiment").rglob("*.yaml")
)
ABLATIONS = [o for o in OVERLAYS if o.startswith("ablation/")]
EXPERIMENTS = [o for o in OVERLAYS if o not in ABLATIONS]
# the efficiency benchmark builds a 4,000-sample corrupted pool: composed here, run by benchmarks/
CHEAP = ["baseline", "pipeline", "prune", "rate", "score", "subset"]
TINY = (
    "debug=smoke",
    "logger=csv",
    "data.limit_train=64",
    "data.limit_val=32",
    "data.limit_test=32",
    "rate.max_epochs=1",
    "rate.batch_size=16",
    "rate.val_batch_size=16",
    "train.max_steps=2",
    "train.batch_size=16",
    "eval.num_images=8",
    "evaluator.encoder.epochs=1",
    "model.num_samples=4",
)


def _overlay(name: str) -> str:
    """The command-line override that applies overlay ``name`` (``ablation/x``: ``+experiment/ablation=x``)."""
    group, _, leaf = name.rpartition("/")
    return f"+experiment/{group}={leaf}" if group else f"+experiment={name}"


@pytest.fixture(scope="module")
def tiny_scores(tmp_path_factory, emoji_dir):
    """scores.parquet of a one-epoch rating of the tiny slice (the input of prune and subset)."""
    from hydra import compose, initialize_config_dir

    from .conftest import DATA_DIR

    out = tmp_path_factory.mktemp("tiny-rate")
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(
            "config", overrides=["+experiment=rate", *TINY, f"paths.data_dir={DATA_DIR}", f"paths.output_dir={out}"]
        )
    run(cfg)
    return out / "scores.parquet"


def test_every_overlay_is_listed():
    assert set(CHEAP) <= set(EXPERIMENTS) and "efficiency" in EXPERIMENTS
    assert {"ablation/alchemist", "ablation/exact", "ablation/instance_only"} <= set(ABLATIONS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(make_cfg, name):
    cfg = make_cfg(_overlay(name))
    assert cfg.stage in STAGES
    assert cfg.task_name.startswith(name)


@pytest.mark.parametrize("name", ABLATIONS)
def test_ablation_composes_on_the_efficiency_benchmark(make_cfg, name):
    base = make_cfg("+experiment=efficiency")
    cfg = make_cfg("+experiment=efficiency", _overlay(name))
    assert cfg.ablation and cfg.corruption.pool_size == base.corruption.pool_size
    changed = {k for k in ("rater", "bilevel") if cfg[k] != base[k]}
    assert changed or name == "ablation/alchemist"  # every other overlay changes the rater or the loop


@pytest.mark.parametrize("name", CHEAP)
def test_experiment_runs(make_cfg, tmp_path, tiny_scores, name, caplog, monkeypatch):
    # the pipeline's three trainings without evaluation (baseline and subset evaluate; the slow smoke
    # pipeline evaluates its trainings)
    quick = ("eval.enabled=false",) if name == "pipeline" else ()
    cfg = make_cfg(_overlay(name), *TINY, f"scores_path={tiny_scores}", *quick)
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # no terminal, as under nohup
    caplog.set_level(logging.INFO, logger="alchemist_pl.progress")
    summary = run(cfg)
    _check_progress_lines(
        cfg.stage, summary["metrics"], [r.getMessage() for r in caplog.records if r.name == "alchemist_pl.progress"]
    )
    _check_outputs_listed(tmp_path, cfg.stage)
    assert json.loads((tmp_path / "summary.json").read_text())["stage"] == cfg.stage == summary["stage"]
    m = summary["metrics"]
    if cfg.stage in ("rate", "score"):
        ids, scores, _ = read_scores(tmp_path / "scores.parquet")
        assert len(ids) == 64 and np.isfinite(scores).all() and scores.std() > 0
    elif cfg.stage == "prune":
        ids, _ = read_subset(tmp_path / "subset.parquet")
        assert len(ids) == m["subset_size"] == 32
    elif cfg.stage == "train":
        assert (
            m["steps"] == 2 and np.isfinite(m["test/loss"]) and m["train_samples"] == (64 if name == "baseline" else 32)
        )
        assert np.isfinite(m["eval/domain_fid"]) and (tmp_path / "samples.png").stat().st_size > 0
        # the sample grid's prompts are the first test captions, given to the model by the stage
        first = [raw.caption for raw, _ in zip(iter_samples(cfg.data.test_path), range(4))]
        assert (tmp_path / "samples.txt").read_text().splitlines() == first
    else:
        assert [r["run"] for r in m["comparison"]] == list(cfg.pipeline.compare)
        assert all(np.isfinite(r["test_loss"]) for r in m["comparison"])


def _check_progress_lines(stage: str, m: dict, lines: list[str]) -> None:
    """Without a terminal, the stages that train log their progress in iterations (the smoke config
    logs every one), the last line at 100 % with the stage's losses; the others log none."""
    if stage not in ("rate", "train", "pipeline"):
        assert not lines
        return
    assert lines and all(line.startswith("iteration ") and " s/it, ETA " in line for line in lines)
    if stage == "rate":
        n = m["bilevel_iterations"]
        assert [line.split(" (")[0] for line in lines] == [f"iteration {i}/{n}" for i in range(1, n + 1)]
        assert "rate/val_loss" in lines[-1] and "rate/rater_loss" in lines[-1]
    else:  # the (last) downstream training: 2 steps
        assert lines[-1].startswith("iteration 2/2 (100%)") and "train/loss" in lines[-1]


def _readme_outputs() -> list[re.Pattern]:
    """The files README's Outputs table lists, as patterns (``<N>``: any name part; ``dir/``: all in it)."""
    section = (ROOT / "README.md").read_text().split("\n## Outputs\n")[1].split("\n## ")[0]
    cells = [row.split(" | ")[0] for row in section.splitlines() if row.startswith("| `")]
    names = [n for cell in cells for n in re.findall(r"`([^`]+)`", cell)]
    return [
        re.compile(re.sub(r"<[^>]+>", "[^/]+", n.replace(".", r"\.")) + (".*" if n.endswith("/") else ""))
        for n in names
    ]


def _check_outputs_listed(out, stage: str) -> None:
    """Every file a stage leaves in its folder (a pipeline: in its rate/, prune/, train-<method>/) is
    one README's Outputs table lists."""
    patterns = _readme_outputs()
    files = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()]
    if stage == "pipeline":
        files = [re.sub(r"^(rate|prune|train-[^/]+)/", "", f) for f in files]
    unlisted = [f for f in files if not any(p.fullmatch(f) for p in patterns)]
    assert not unlisted, f"files the README's Outputs table does not list: {unlisted}"
