"""``report.md`` and ``curves.png`` of benchmarks/data_efficiency.py: rows at equal steps and at equal
epochs with 95 % t-intervals over seeds, the paired time to match, the full-data curve and the
rating quality of the rater and of the CLIP-score filter."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's alchemist_pl
from alchemist_pl.compare_stats import curve_at, paired_time_to_match, t_interval  # noqa: E402

#: (eval_curve key, label, lower is better, decimals)
METRICS = (
    ("domain_kid", "domain KID ↓", True, 4),
    ("domain_fid", "domain FID ↓", True, 2),
    ("retrieval_top1", "retrieval top-1 ↑", False, 3),
    ("retrieval_top5", "retrieval top-5 ↑", False, 3),
    ("domain_clip", "domain CLIP score ↑", False, 2),
)
#: (subset row, baseline row) pairs of the time-to-match table
MATCHES = (("alchemist", "random"), ("random", "alchemist"), ("clip_score", "random"), ("alchemist", "full"))


def _cell(values, digits: int) -> str:
    mean, half, n = t_interval(values)
    if n == 0:
        return "—"
    return f"{mean:.{digits}f}" if math.isnan(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def load(out: Path, rows, seeds) -> dict:
    """``{row: {seed: train summary}}`` from ``{out}/train/{row}-seed{seed}/summary.json``, the runs that exist."""
    paths = {r: {s: out / "train" / f"{r}-seed{s}" / "summary.json" for s in seeds} for r in rows}
    return {r: {s: json.loads(p.read_text()) for s, p in by_seed.items() if p.exists()} for r, by_seed in paths.items()}


def _row_table(runs: dict, step_of, title: str) -> list[str]:
    """One row per benchmark row: each metric of its evaluation at ``step_of(row)`` over the seeds."""
    head = ["row", "n", "samples", "steps", "corrupted share", *(m[1] for m in METRICS)]
    lines = [title, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, by_seed in runs.items():
        step = step_of(row)
        ms = [s["metrics"] for s in by_seed.values()]
        if not ms:
            lines.append(f"| {row} | 0 | not run (deadline) |" + " |" * (len(head) - 3))
            continue
        share = [m.get("subset_quality", {}).get("subset_corrupted_share") for m in ms]
        cells = [row, str(len(ms)), f"{np.mean([m['train_samples'] for m in ms]):.0f}", str(step), _cell(share, 3)]
        cells += [_cell([curve_at(s, k, step) for s in by_seed.values()], d) for k, _, _, d in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _chance(runs: dict, steps: int) -> list[str]:
    p = next(pt for pt in runs["full"][min(runs["full"])]["metrics"]["eval_curve"] if pt["step"] == steps)
    shuffled = [
        _cell([curve_at(s, f"retrieval_top{k}_shuffled", steps) for s in runs["full"].values()], 3) for k in (1, 5)
    ]
    return [
        f"Retrieval: each generated image's own caption among the {round(1 / p['retrieval_chance_top1'])} distinct "
        f"captions of the evaluation prompts, ranked by the domain encoder. Chance: top-1 "
        f"{p['retrieval_chance_top1']:.3f}, top-5 {p['retrieval_chance_top5']:.3f}. Shuffled-pairing control of "
        f"full data at step {steps}: top-1 {shuffled[0]}, top-5 {shuffled[1]}.",
        "",
    ]


def _time_to_match(runs: dict, steps: int, every: int) -> list[str]:
    lines = [
        "## Time to match (domain KID)",
        "",
        f"Per seed s: the training steps at which the subset's seed-s run first reaches the final KID (step {steps}) "
        f"of the baseline's seed-s run, linearly interpolated between the evaluations every {every} steps; ratio = "
        "those steps / the baseline's steps. Mean ± 95 % t-interval over the seeds that reach it; a crossing at the "
        f"first evaluation is only known to be at or before step {every}.",
        "",
        "| subset | baseline | steps per seed | reached | mean steps | ratio |",
        "|---|---|---|---|---|---|",
    ]
    if any(len(s["metrics"].get("eval_curve", [])) < 2 for by_seed in runs.values() for s in by_seed.values()):
        return [
            *lines[:2],
            "Not computed: a run has one evaluation point (a crossing needs a curve; --every < --steps).",
            "",
        ]
    for sub, base in MATCHES:
        if not set(runs[sub]) & set(runs[base]):
            lines.append(f"| {sub} | {base} | no seed with both runs | — | — | — |")
            continue
        t = paired_time_to_match(runs[sub], runs[base], "domain_kid")
        per = ", ".join(
            "not reached" if v["steps"] is None else f"{v['steps']:.0f}" + ("*" if v["steps"] == v["first"] else "")
            for v in t["per_seed"].values()
        )
        mean = "—" if t["reached"] == 0 else _fmt_interval(t["steps"], 0)
        ratio = "—" if t["reached"] == 0 else _fmt_interval(t["ratio"], 2)
        lines.append(f"| {sub} | {base} | {per} | {t['reached']} of {t['n']} | {mean} | {ratio} |")
    return [*lines, "", "\\* at the first evaluation: the crossing is at or before that step.", ""]


def _fmt_interval(t: tuple, digits: int) -> str:
    mean, half, _ = t
    return f"{mean:.{digits}f}" if math.isnan(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def _curves(runs: dict) -> list[str]:
    """Mean KID of every row at every evaluation, and full data's retrieval: the flattening."""
    steps = [p["step"] for p in next(iter(runs["full"].values()))["metrics"]["eval_curve"]]
    head = ["step", *(f"{r} KID" for r in runs), "full top-1", "full top-5", "full top-5 shuffled"]
    lines = [
        "## Curves (mean ± 95 % t-interval over seeds)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for step in steps:
        cells = [str(step)] + [_cell([curve_at(s, "domain_kid", step) for s in runs[r].values()], 4) for r in runs]
        full = runs["full"].values()
        cells += [_cell([curve_at(s, k, step) for s in full], 3) for k in ("retrieval_top1", "retrieval_top5")]
        cells.append(_cell([curve_at(s, "retrieval_top5_shuffled", step) for s in full], 3))
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, "", "![curves](curves.png)", ""]


def _rating(out: Path, seeds) -> list[str]:
    def auroc(path: Path):
        q = json.loads(path.read_text())["metrics"].get("rating_quality") if path.exists() else None
        return None if q is None else q["auroc"]

    seeds = [s for s in seeds if (out / "rate" / f"seed{s}" / "summary.json").exists()]
    rate = [auroc(out / "rate" / f"seed{s}" / "summary.json") for s in seeds]
    clip = auroc(out / "score" / "summary.json")
    return [
        "## Rating quality on the planted noise",
        "",
        f"AUROC of the score, clean vs corrupted: the rater {_cell(rate, 3)} (seeds {', '.join(map(str, seeds))}); "
        f"the CLIP-score filter {'—' if clip is None else f'{clip:.3f}'} (one scoring, seed-independent).",
        "",
    ]


def _plot(runs: dict, chance5: float, path: Path) -> None:
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for row, by_seed in runs.items():
        if not by_seed:
            continue
        steps = [p["step"] for p in next(iter(by_seed.values()))["metrics"]["eval_curve"]]
        for a, key in zip(ax, ("domain_kid", "retrieval_top5"), strict=True):
            ci = [t_interval([curve_at(s, key, t) for s in by_seed.values()]) for t in steps]
            mean, half = np.array([c[0] for c in ci]), np.nan_to_num(np.array([c[1] for c in ci]))
            a.plot(steps, mean, marker="o", label=row)
            a.fill_between(steps, mean - half, mean + half, alpha=0.15)
    ax[1].axhline(chance5, color="grey", ls="--", label="chance")
    ax[0].set(xlabel="training steps", ylabel="domain KID")
    ax[1].set(xlabel="training steps", ylabel="retrieval top-5")
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _invocations(times: dict) -> str:
    inv = times.get("invocations", [])
    if len(inv) < 2:
        return ""
    parts = [
        f"{i['date']} at {i['commit'].split()[0]}, {i.get('wall_s', i.get('total_wall_s', 0.0)) / 60:.1f} min"
        for i in inv
    ]
    return f"; {len(inv)} invocations of the command, each running what the earlier left: " + "; ".join(parts)


def _header(times: dict, setup: dict) -> list[str]:
    clean = "clean tree" if times["clean_tree"] else "uncommitted changes"
    return [
        "# Data-efficiency benchmark: Alchemist vs random vs the CLIP-score filter vs full data",
        "",
        f"Command: `{times['command']}`  ",
        f"Commit: {times['commit'].split()[0]} ({clean})  ",
        f"Machine: {times['machine']}; 1-min load at end {times['load_average_at_end'][0]}  ",
        f"Date: {times['date']}  ",
        f"Wall time {times['total_wall_s'] / 60:.1f} min; CPU time of all runs {times['total_cpu_s'] / 60:.1f} min "
        "(user + system; per run in times.json)" + _invocations(times),
        "",
        "Rows: " + "; ".join(f"**{r}**: {d}" for r, (d, _) in setup["rows"].items()) + f". Subsets keep "
        f"{setup['keep_ratio']:g} of the pool. Seeds {', '.join(map(str, setup['seeds']))}; each row's cell is the "
        "mean ± the half-width of the 95 % t-interval over seeds (t with n − 1 degrees of freedom).",
        "",
    ]


def _setup(runs: dict, out: Path, seeds) -> list[str]:
    """What the runs trained and measured, read from the resolved configs they recorded."""
    cfg = next(iter(runs["full"].values()))["config"]
    unet, m, ev = cfg["model"]["unet"], cfg["model"], cfg["eval"]
    rate_path = out / "rate" / f"seed{seeds[0]}" / "summary.json"
    rc = json.loads(rate_path.read_text())["config"] if rate_path.exists() else cfg
    pooled = " + pooled caption" if unet.get("class_embed_type") == "projection" else ""
    return [
        f"Setup (from the runs' resolved configs): pool {cfg['data']['train_path']} ({cfg['corruption']['pool_size']} "
        f"samples, {cfg['corruption']['fraction']:g} planted noise: {', '.join(cfg['corruption']['kinds'])}); "
        f"downstream UNet {unet['block_out_channels']} at {unet['sample_size']} px, "
        f"{m['noise_scheduler']['prediction_type']}{pooled}, AdamW lr {m['optimizer']['lr']:g}, batch "
        f"{cfg['train']['batch_size']}, caption dropout {m['caption_dropout']:g}; evaluation on the first "
        f"{ev['num_images']} test prompts (fixed seeds, {ev['sample_steps']} DDIM steps, CFG {ev['guidance_scale']:g}) "
        f"against all test images. Rater: {rc['bilevel'].get('rater_signal', 'first_order')} signal, "
        f"rate.max_epochs {rc['rate']['max_epochs']}, rate.pool_passes {rc['rate']['pool_passes']}; the alchemist "
        f"subset is `{runs['alchemist'][min(runs['alchemist'])]['method'] if runs['alchemist'] else '?'}` on its scores.",
        "",
    ]


def write(out: Path, results: Path, times: dict, setup: dict) -> Path:
    """Write ``report.md`` and ``curves.png`` to ``results`` from the runs under ``out``; returns the report."""
    steps, half = setup["steps"], round(setup["steps"] * setup["keep_ratio"])
    runs = load(out, setup["rows"], setup["seeds"])
    lines = _header(times, setup) + _setup(runs, out, setup["seeds"])
    lines += _row_table(runs, lambda r: steps, f"## Equal steps: every run {steps} steps")
    lines += _row_table(
        runs,
        lambda r: steps if r == "full" else half,
        f"## Equal epochs: full data {steps} steps, the subsets {half} (their evaluation at that step)",
    )
    lines += _chance(runs, steps)
    lines += _time_to_match(runs, steps, setup["every"])
    lines += _curves(runs)
    lines += _rating(out, setup["seeds"])
    chance5 = next(iter(runs["full"].values()))["metrics"]["eval_curve"][-1]["retrieval_chance_top5"]
    _plot(runs, chance5, results / "curves.png")
    path = results / "report.md"
    path.write_text("\n".join(lines))
    return path
