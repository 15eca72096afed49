"""The pipeline stage: rate -> prune -> train for each entry of ``cfg.pipeline.compare``."""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig, open_dict
from rich.console import Console
from rich.table import Table

from ..runtime import is_global_zero, write_summary
from .prune import prune
from .rate import rate
from .train import train


def _substage(cfg: DictConfig, stage: str, subdir: str, **values) -> DictConfig:
    sub = cfg.copy()
    with open_dict(sub):
        sub.stage = stage
        sub.paths.output_dir = str(Path(cfg.paths.output_dir) / subdir)
        for k, v in values.items():
            sub[k] = v
    return sub


def _train_config(cfg: DictConfig, name: str, scores_path: str, subset_path: str) -> DictConfig:
    """The train stage's config for one compared run: full data, a random draw, a pruned subset file
    (``name`` = ``cfg.method`` or ``alchemist``, or any name with ``cfg.dedup.enabled``), or another method
    drawn from the same scores."""
    if name == "full":
        return _substage(cfg, "train", "train-full", method="full", keep_ratio=1.0)
    if name == cfg.method or name == "alchemist" or cfg.dedup.enabled:
        return _substage(cfg, "train", f"train-{name}", subset_path=subset_path)
    if name == "random":
        return _substage(cfg, "train", "train-random", method="random")
    return _substage(cfg, "train", f"train-{name}", method=name, scores_path=scores_path)


def _own_prune(cfg: DictConfig, name: str, scores_path: str) -> dict | None:
    """With ``cfg.dedup.enabled``, the summary of compared selection ``name``'s own prune stage
    (``prune-<name>/``, de-duplicated as the main one); None without dedup, for ``full`` and for ``cfg.method``."""
    if not cfg.dedup.enabled or name in ("full", "alchemist", cfg.method):
        return None
    return prune(_substage(cfg, "prune", f"prune-{name}", scores_path=scores_path, method=name))


def pipeline(cfg: DictConfig) -> dict:
    """rate -> prune -> train on each of ``cfg.pipeline.compare`` (alchemist, random, full, ...); with
    ``cfg.dedup.enabled`` each compared selection is pruned too (:func:`_own_prune`)."""
    started = time.time()
    results = {"rate": rate(_substage(cfg, "rate", "rate"))}
    scores_path = results["rate"]["outputs"]["scores"]
    results["prune"] = prune(_substage(cfg, "prune", "prune", scores_path=scores_path))
    for name in cfg.pipeline.compare:
        subset_path = results["prune"]["outputs"]["subset"]
        own = _own_prune(cfg, name, scores_path)
        if own is not None:
            results[f"prune-{name}"], subset_path = own, own["outputs"]["subset"]
        results[f"train-{name}"] = train(_train_config(cfg, name, scores_path, subset_path))
    rows = [
        {
            "run": k[len("train-") :],
            "samples": v["metrics"]["train_samples"],
            "test_loss": v["metrics"]["test/loss"],
            "domain_kid": v["metrics"].get("eval/domain_kid"),
            "domain_fid": v["metrics"].get("eval/domain_fid"),
            "domain_clip": v["metrics"].get("eval/domain_clip"),
            "train_time_s": v["metrics"]["train_time_s"],
        }
        for k, v in results.items()
        if k.startswith("train-")
    ]
    if is_global_zero():
        print_comparison(rows, cfg.keep_ratio, cfg.seed)
    metrics = {
        "comparison": rows,
        "wall_time_s": {k: v["wall_time_s"] for k, v in results.items()},
        "samples_rated": results["rate"]["metrics"]["samples_rated"],
        "selected_percentile_histogram": results["prune"]["metrics"]["selected_percentile_histogram"],
    }
    outputs = {k: str(Path(cfg.paths.output_dir) / k / "summary.json") for k in results}
    return write_summary(cfg, "pipeline", started, metrics, outputs)


# row key, column label, lower is better (None: not a quality metric), format
COLUMNS = (
    ("samples", "samples", None, "{}"),
    ("domain_kid", "KID", True, "{:.4f}"),
    ("domain_fid", "FID", True, "{:.2f}"),
    ("domain_clip", "CLIP", False, "{:.4f}"),
    ("test_loss", "test loss", True, "{:.4f}"),
    ("train_time_s", "time (s)", None, "{:.0f}"),
)


def comparison_table(rows: list[dict], keep_ratio: float, seed: int) -> Table:
    """The compared runs as a table: one row per run, one column per entry of :data:`COLUMNS`.

    Domain KID comes first among the metrics (its estimator is unbiased at small sample counts,
    FID's is not), then domain FID, CLIP score and test loss; each metric's header carries its
    direction (``↓`` lower is better, ``↑`` higher is better). A metric a run did not compute
    (``None``, e.g. no evaluator) shows ``—``.
    """
    table = Table(
        title=f"keep_ratio={keep_ratio}, seed={seed}; KID, FID, CLIP score on the domain evaluator",
        caption="↓ lower is better, ↑ higher is better",
    )
    table.add_column("run", no_wrap=True)
    for _, label, lower, _ in COLUMNS:
        table.add_column(label if lower is None else f"{label} {'↓' if lower else '↑'}", justify="right", no_wrap=True)
    for r in rows:
        cells = ["—" if r.get(key) is None else form.format(r[key]) for key, _, _, form in COLUMNS]
        table.add_row(r["run"], *cells)
    return table


def print_comparison(rows: list[dict], keep_ratio: float, seed: int) -> None:
    """Print :func:`comparison_table` of ``rows`` on the console."""
    Console().print(comparison_table(rows, keep_ratio, seed))
