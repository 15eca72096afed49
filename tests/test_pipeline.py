"""End to end on a slice of the real data, through the real composed configs and the CLI.

The whole smoke pipeline (rate -> prune -> three trainings with evaluation) is marked slow; the
other tests start from a one-epoch rating of the same corrupted slice (``rated``).
"""

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hydra.errors import ConfigCompositionException, InstantiationException
from rich.console import Console

from alchemist_pl import pruning
from alchemist_pl.scores import read_scores, read_subset
from alchemist_pl.stages import run
from alchemist_pl.stages.pipeline import comparison_table
from alchemist_pl.stages.rate import _views

from .conftest import DATA_DIR, ROOT, compose_run


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, emoji_dir):
    out = tmp_path_factory.mktemp("smoke")
    return out, run(compose_run(out, "+experiment=pipeline"))


@pytest.fixture(scope="module")
def rated(tmp_path_factory, emoji_dir):
    """A one-epoch rating of the smoke slice (``out/rate/scores.parquet``, 512 samples) and its
    Shift-Gsample 50% subset (``out/prune/subset.parquet``)."""
    out = tmp_path_factory.mktemp("rated")
    run(compose_run(out / "rate", "+experiment=rate", "rate.max_epochs=1"))
    run(compose_run(out / "prune", "+experiment=prune", f"scores_path={out / 'rate' / 'scores.parquet'}"))
    return out, None


@pytest.mark.slow
def test_smoke_pipeline_outputs(smoke):
    out, summary = smoke
    assert json.loads((out / "summary.json").read_text())["stage"] == "pipeline"
    rows = {r["run"]: r for r in summary["metrics"]["comparison"]}
    assert set(rows) == {"top_k", "random", "full"}  # the default: the value-gap rater's scores, top-k
    assert rows["full"]["samples"] == 512 and rows["top_k"]["samples"] == rows["random"]["samples"] == 256
    assert all(np.isfinite(r["test_loss"]) and r["test_loss"] > 0 for r in rows.values())
    assert all(np.isfinite(r["domain_kid"]) and np.isfinite(r["domain_fid"]) for r in rows.values())

    ids, scores, meta = read_scores(out / "rate" / "scores.parquet")
    assert len(ids) == 512 and len(set(ids)) == 512 and scores.std() > 0
    assert meta["stage"] == "rate" and Path(meta["rater_checkpoint"]).is_file()

    subset, smeta = read_subset(out / "prune" / "subset.parquet")
    assert len(subset) == 256 and set(subset) <= set(ids)
    # the subset is exactly what select() draws from those scores
    expected = pruning.select(scores, 0.5, "top_k", seed=0)
    assert sorted(subset) == sorted(ids[i] for i in expected)
    assert smeta["method"] == "top_k"
    hist = summary["metrics"]["selected_percentile_histogram"]
    assert sum(v for k, v in hist.items() if float(k.split("-")[0]) >= 0.5) == 0 and sum(hist.values()) == 256

    for run_dir in ("rate", "prune", "train-top_k", "train-random", "train-full"):
        s = json.loads((out / run_dir / "summary.json").read_text())
        assert s["config"]["stage"] == run_dir.split("-")[0]
        if run_dir.startswith("train"):
            assert np.isfinite(s["metrics"]["train/loss"]) and s["metrics"]["steps"] == 4
    assert (out / "train-full" / "samples.png").stat().st_size > 0
    assert len((out / "train-full" / "samples.txt").read_text().splitlines()) == 8
    assert (out / "prune" / "percentiles.png").stat().st_size > 0


@pytest.mark.slow
def test_smoke_evidence_on_planted_noise(smoke):
    out, summary = smoke
    rate = json.loads((out / "rate" / "summary.json").read_text())["metrics"]
    quality = rate["rating_quality"]
    assert set(quality["per_kind"]) == {"clean", "caption_swap", "blur", "noise", "blank", "collage", "near_duplicate"}
    assert 0 <= quality["auroc"] <= 1 and sum(k["count"] for k in quality["per_kind"].values()) == 512
    assert (out / "rate" / "ranking.png").stat().st_size > 0
    for name in ("top_k", "random", "full"):
        m = json.loads((out / f"train-{name}" / "summary.json").read_text())["metrics"]
        assert m["subset_quality"]["subset_size"] == m["train_samples"]
        assert m["eval_curve"][-1]["step"] == 4 and np.isfinite(m["eval/domain_fid"]) and m["eval/domain_fid"] > 0
        assert 0 <= m["eval/domain_clip"] <= 100 and m["evaluator"]["sha256"]
    full = json.loads((out / "train-full" / "summary.json").read_text())["metrics"]["subset_quality"]
    assert full["subset_corrupted_share"] == full["pool_corrupted_share"]
    # the same prompts, seeds and evaluator: two runs' generated images differ only through their weights
    ev = [
        json.loads((out / f"train-{n}" / "summary.json").read_text())["metrics"]["evaluator"]
        for n in ("random", "full")
    ]
    assert ev[0]["sha256"] == ev[1]["sha256"] and ev[0]["num_images"] == ev[1]["num_images"] == 16


@pytest.mark.slow
def test_compare_report_from_the_runs(smoke, tmp_path):
    from alchemist_pl.compare import report

    out, summary = smoke
    path = report([out], tmp_path)
    text = path.read_text()
    fid = {
        n: json.loads((out / f"train-{n}" / "summary.json").read_text())["metrics"]["eval/domain_fid"]
        for n in ("top_k", "random", "full")
    }
    for label, name in (("top-k", "top_k"), ("random", "random"), ("full data", "full")):
        row = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
        assert f"{fid[name]:.2f}" in row  # one seed: the value itself, no spread
    assert "Rating quality (1 rate runs)" in text and "corrupted share of subset" in text
    assert (tmp_path / "metric_vs_keep_ratio.png").stat().st_size > 0
    assert (tmp_path / "selected_percentiles.png").stat().st_size > 0  # train-full has no scores, the others do


def _cli(*args, cwd=ROOT):
    env = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1"}
    return subprocess.run(
        [sys.executable, "train.py", *args, f"paths.data_dir={DATA_DIR}"],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.mark.slow
def test_cli_prune_with_wandb_offline(rated, tmp_path):
    out, _ = rated
    proc = _cli(
        "+experiment=prune",
        f"scores_path={out / 'rate' / 'scores.parquet'}",
        "method=top_k",
        "keep_ratio=0.25",
        f"hydra.run.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ids, scores, _ = read_scores(out / "rate" / "scores.parquet")
    subset, _ = read_subset(tmp_path / "subset.parquet")
    top = np.argsort(-scores)[:128]
    assert sorted(subset) == sorted(ids[i] for i in top)
    assert list((tmp_path / "wandb").glob("offline-run-*")), "W&B offline run missing"
    assert "prune: top_k kept 128 of 512 samples" in (tmp_path / "train.log").read_text()


@pytest.mark.slow
def test_cli_multirun_sweeps_keep_ratio(rated, tmp_path):
    out, _ = rated
    proc = _cli(
        "-m",
        "+experiment=prune",
        f"scores_path={out / 'rate' / 'scores.parquet'}",
        "keep_ratio=0.2,0.5",
        "logger=csv",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sizes = sorted(json.loads(p.read_text())["metrics"]["subset_size"] for p in tmp_path.glob("*/summary.json"))
    assert sizes == [round(0.2 * 512), 256]


@pytest.mark.parametrize("scorer", ["clarity", "clip_score"])
def test_score_stage_writes_baseline_scores(rated, make_cfg, tmp_path, scorer):
    """stage=score: a rater-free scores.parquet for the same pool, with the rating report, usable by prune."""
    cfg = make_cfg(
        "+experiment=score",
        "debug=smoke",
        "logger=csv",
        "corruption=web",
        "corruption.pool_size=600",
        f"scorer={scorer}",
        *(["scorer.encoder.epochs=2"] if scorer == "clip_score" else []),
    )
    summary = run(cfg)
    ids, scores, meta = read_scores(tmp_path / "scores.parquet")
    rated_ids, _, _ = read_scores(rated[0] / "rate" / "scores.parquet")
    assert ids == rated_ids and len(np.unique(scores)) > len(ids) // 2  # the same pool, every sample, real values
    assert meta["scorer"] == scorer and meta["stage"] == "score"
    per_kind = summary["metrics"]["rating_quality"]["per_kind"]
    if scorer == "clarity":
        assert per_kind["blur"]["auroc"] > 0.9  # blurred images lose their Laplacian variance
    else:
        assert len(meta["encoder"]["sha256"]) == 64
    assert (tmp_path / "ranking.png").exists()
    pruned = run(
        make_cfg(
            "+experiment=prune",
            "debug=smoke",
            "logger=csv",
            f"scores_path={tmp_path / 'scores.parquet'}",
            "method=top_k",
            "keep_ratio=0.5",
            output_dir=tmp_path / "prune",
        )
    )
    assert pruned["metrics"]["subset_size"] == len(ids) // 2


def test_score_stage_value_gap_scores_the_pool_by_the_rating_proxies(rated, make_cfg, tmp_path):
    """scorer=value_gap on the rate stage's output folder: its θ and θ′ score the pool's samples, the run and
    checkpoint in the scores file's metadata."""
    rate_dir = rated[0] / "rate"
    smoke = ("debug=smoke", "logger=csv", "corruption=web", "corruption.pool_size=600", "data.limit_train=64")
    run(make_cfg("+experiment=score", *smoke, "scorer=value_gap", f"scorer.run={rate_dir}"))
    ids, scores, meta = read_scores(tmp_path / "scores.parquet")
    rated_ids, _, _ = read_scores(rate_dir / "scores.parquet")
    assert ids == rated_ids[:64] and np.isfinite(scores).all() and len(np.unique(scores)) == 64
    assert meta["scorer"] == "value_gap" and meta["run"] == str(rate_dir)
    assert meta["checkpoint"] == str(rate_dir / "checkpoints" / "last.ckpt") and meta["params"]["timesteps"] == [
        50,
        100,
    ]


def test_score_stage_rejects_an_unknown_scorer(make_cfg):
    with pytest.raises(ConfigCompositionException, match=r"scorer/sharpness(.|\n)*clip_score"):
        make_cfg("+experiment=score", "scorer=sharpness")  # names the choices
    with pytest.raises(InstantiationException, match=r"scorer must be one of .*'edge_density'.*got 'sharpness'"):
        run(make_cfg("+experiment=score", "debug=smoke", "logger=csv", "scorer.name=sharpness"))


def test_train_from_scores_file_draws_subset(rated, make_cfg, tmp_path):
    out, _ = rated
    scores_path = out / "rate" / "scores.parquet"
    cfg = make_cfg(
        "+experiment=subset",
        "debug=smoke",
        "logger=csv",
        f"scores_path={scores_path}",
        "method=bottom_k",
        "keep_ratio=0.25",
        "train.max_steps=2",
        "model.num_samples=0",
        "eval.enabled=false",
        "data.limit_test=16",
    )
    summary = run(cfg)
    assert summary["metrics"]["train_samples"] == 128
    assert np.isfinite(summary["metrics"]["test/loss"])
    # the subset file the train stage writes: bottom_k of the scores, each with its rank percentile
    import pyarrow.parquet as pq

    ids, scores, _ = read_scores(scores_path)
    table = pq.read_table(tmp_path / "subset.parquet").to_pydict()
    want = np.sort(pruning.select(scores, 0.25, "bottom_k"))
    got = np.sort([ids.index(i) for i in table["sample_id"]])
    np.testing.assert_array_equal(got, want)
    pct = dict(zip(ids, pruning.percentiles(scores)))
    np.testing.assert_allclose(table["percentile"], [pct[i] for i in table["sample_id"]], rtol=1e-6)  # stored float32
    assert min(table["percentile"]) >= 0.74  # the lowest quarter


def test_scores_from_another_dataset_rejected(rated, make_cfg, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = tmp_path / "other.parquet"
    pq.write_table(pa.table({"sample_id": ["not-a-sample", "x2"], "score": [1.0, 2.0]}), bad)
    cfg = make_cfg("+experiment=subset", "debug=smoke", "logger=csv", f"scores_path={bad}")
    with pytest.raises(ValueError, match=r"other.parquet: 2 of 2 sample_ids are not in this dataset.*another dataset"):
        run(cfg)


def test_rerun_resumes_from_last_checkpoint(rated, make_cfg, tmp_path):
    """A second run into the same output directory continues from checkpoints/last.ckpt."""
    base = (
        "+experiment=baseline",
        "debug=smoke",
        "logger=csv",
        "model.num_samples=0",
        "eval.enabled=false",
        "data.limit_test=16",
        "callbacks.model_checkpoint.every_n_train_steps=1",
    )
    first = run(make_cfg(*base, "train.max_steps=2"))
    assert first["metrics"]["steps"] == 2 and (tmp_path / "checkpoints" / "last.ckpt").is_file()
    second = run(make_cfg(*base, "train.max_steps=3"))
    assert second["metrics"]["steps"] == 3


def test_subset_file_run_is_labelled_by_the_file(rated, make_cfg):
    out, _ = rated
    cfg = make_cfg(
        "+experiment=subset",
        "debug=smoke",
        "logger=csv",
        f"subset_path={out / 'prune' / 'subset.parquet'}",
        "method=random",
        "keep_ratio=0.9",
        "train.max_steps=1",
        "model.num_samples=0",
        "eval.enabled=false",
        "data.limit_test=16",
    )
    summary = run(cfg)
    assert (summary["method"], summary["keep_ratio"]) == ("top_k", 0.5)  # the prune stage's default
    assert summary["metrics"]["train_samples"] == 256


def test_equal_epochs_sets_the_steps(make_cfg):
    """train.epochs: max_steps = ceil(epochs * subset size / (batch size * ranks)), here 1 rank."""
    cfg = make_cfg(
        "+experiment=baseline",
        "debug=smoke",
        "logger=csv",
        "data.limit_train=64",
        "method=random",
        "keep_ratio=0.5",
        "train.batch_size=8",
        "train.epochs=1.5",
        "eval.enabled=false",
        "data.limit_test=16",
        "model.num_samples=0",
    )
    metrics = run(cfg)["metrics"]
    assert (metrics["train_samples"], metrics["world_size"], metrics["steps"]) == (32, 1, 6)


def test_rating_reports_how_often_the_rater_saw_the_pool(rated, caplog):
    """debug=smoke rates with rate.pool_passes=0.25: ceil(0.25 * 512 / 32) = 4 iterations in the one
    epoch, an average pool sample seen 0.25 times, D_val's 64 samples twice. The smoke config's own
    budget does not warn; the default threshold (0.5) warns at that budget."""
    out, _ = rated
    m = json.loads((out / "rate" / "summary.json").read_text())["metrics"]
    assert m["bilevel_iterations"] == 4
    assert m["pool_views_per_sample"] == 0.25 and m["val_views_per_sample"] == 2.0
    smoke = compose_run(out / "unused", "+experiment=rate")
    default = compose_run(out / "unused", "+experiment=rate", base=())
    dm = SimpleNamespace(batch_size=32, val_batch_size=32, pool=range(512), val_set=range(64), pool_passes=0.25)
    trainer = SimpleNamespace(global_step=8, world_size=1)
    with caplog.at_level("WARNING"):
        _views(dm, trainer, smoke.rate.warn_below_pool_views)
    assert "rate.pool_passes" not in caplog.text
    with caplog.at_level("WARNING"):
        _views(dm, trainer, default.rate.warn_below_pool_views)
    assert "rate.pool_passes" in caplog.text


def test_comparison_table_shows_kid_first_and_each_metric_direction():
    """The printed table leads with domain KID, then FID; each metric header carries its own direction."""
    rows = [
        dict(
            run="top_k",
            samples=256,
            domain_kid=0.0123,
            domain_fid=45.6,
            domain_clip=0.25,
            test_loss=0.1,
            train_time_s=9,
        ),
        dict(
            run="full", samples=512, domain_kid=None, domain_fid=None, domain_clip=None, test_loss=0.2, train_time_s=18
        ),
    ]
    console = Console(record=True, width=200, file=io.StringIO())
    console.print(comparison_table(rows, 0.5, 0))
    lines = console.export_text().splitlines()
    header = next(line for line in lines if "run" in line and "samples" in line)
    assert header.index("KID ↓") < header.index("FID ↓") < header.index("CLIP ↑")
    assert "test loss ↓" in header and "lower is better" not in lines[0]
    top_k = next(line for line in lines if "top_k" in line).split()
    assert "0.0123" in top_k and "45.60" in top_k and "0.2500" in top_k
    assert next(line for line in lines if "full" in line).count("—") == 3
