"""Statistics over the summaries of many runs: grouping by method and keep_ratio, mean ± std over
seeds, mean evaluation curves and the steps a method needs to match a baseline (time to match)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

METRICS = (  # key in summary["metrics"], label, lower is better
    ("eval/domain_fid", "domain FID", True),
    ("eval/domain_kid", "domain KID", True),
    ("eval/domain_clip", "domain CLIP score", False),
    ("eval/retrieval_top1", "retrieval top-1", False),
    ("eval/retrieval_top5", "retrieval top-5", False),
    ("test/loss", "test loss", True),
)
LABELS = {
    "shift_gsample": "alchemist (Shift-Gsample)",
    "alchemist": "alchemist (Shift-Gsample)",
    "gsample": "Gsample (no head discard)",
    "top_k": "top-k",
    "random": "random",
    "full": "full data",
    "bottom_k": "bottom-k",
    "block": "block",
}


def load_summaries(dirs, stages=("train", "rate")) -> list[dict]:
    """Every ``summary.json`` of ``stages`` below ``dirs`` (pipeline summaries are skipped: their parts are read)."""
    out = []
    for d in dirs:
        for path in sorted(Path(d).rglob("summary.json")):
            try:
                s = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from e
            if s.get("stage") in stages:
                s["_path"] = str(path)
                out.append(s)
    return out


def _key(s: dict) -> tuple[str, float]:
    method = "shift_gsample" if s["method"] == "alchemist" else s["method"]
    return method, 1.0 if method == "full" else float(s["keep_ratio"])


def mean_std(values) -> tuple[float, float, int]:
    """(mean, sample std, n) of the values that are not None or NaN; (nan, nan, 0) for none."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    if len(v) == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)


def fmt(m: float, s: float, n: int, digits: int) -> str:
    """``m ± s`` with ``digits`` decimals (``m`` alone for n = 1, a dash for n = 0)."""
    if n == 0:
        return "—"
    return f"{m:.{digits}f} ± {s:.{digits}f}" if n > 1 else f"{m:.{digits}f}"


def group_runs(summaries) -> dict:
    """``{(method, keep_ratio): [train summaries]}``, largest keep_ratio first (full data = 1.0)."""
    groups = defaultdict(list)
    for s in summaries:
        if s["stage"] == "train":
            groups[_key(s)].append(s)
    return dict(sorted(groups.items(), key=lambda kv: (-kv[0][1], kv[0][0])))


def mean_curve(runs, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, mean value) over the runs' ``eval_curve`` at the steps all runs evaluated."""
    curves = [{p["step"]: p[metric.split("/")[-1]] for p in r["metrics"].get("eval_curve", [])} for r in runs]
    curves = [c for c in curves if c]
    if not curves:
        return np.array([]), np.array([])
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    return np.asarray(steps), np.asarray([np.mean([c[t] for c in curves]) for t in steps])


def time_to_match(groups, method, baseline, metric: str = "eval/domain_fid", lower: bool = True) -> dict | None:
    """Steps ``method`` needs (mean curve, linear interpolation) to reach ``baseline``'s final mean value.

    Returns ``{"target", "baseline_steps", "steps", "ratio"}`` (``steps``/``ratio`` None if never
    reached within the run), or None when either group or its curves are missing.
    """
    if method not in groups or baseline not in groups:
        return None
    bs, bv = mean_curve(groups[baseline], metric)
    ms, mv = mean_curve(groups[method], metric)
    if len(bs) == 0 or len(ms) == 0:
        return None
    target = float(bv[-1])
    hit = crossing(ms, mv, target, lower)
    return {
        "target": target,
        "baseline_steps": int(bs[-1]),
        "steps": hit,
        "ratio": None if hit is None else hit / float(bs[-1]),
    }


def crossing(steps, values, target: float, lower: bool = True) -> float | None:
    """The first step at which the curve ``values`` (at ``steps``) reaches ``target`` (≤ when
    ``lower``, else ≥), linearly interpolated between the evaluation points around the crossing;
    ``steps[0]`` when the first point already reaches it (the crossing is then only known to be at
    or before it); None when no point does."""
    steps, values = np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)
    better = (values <= target) if lower else (values >= target)
    if not better.any():
        return None
    j = int(np.argmax(better))
    if j == 0:
        return float(steps[0])
    v0, v1, s0, s1 = values[j - 1], values[j], steps[j - 1], steps[j]
    return float(s0 + (s1 - s0) * (target - v0) / (v1 - v0)) if v1 != v0 else float(s1)


def t_interval(values, level: float = 0.95) -> tuple[float, float, int]:
    """(mean, half-width, n) of the two-sided Student-t interval for the mean of ``values`` (None and
    NaN left out): mean ± t_{(1+level)/2, n-1} · s / √n with s the sample std. Half-width NaN for n < 2."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    if len(v) == 0:
        return float("nan"), float("nan"), 0
    if len(v) == 1:
        return float(v[0]), float("nan"), 1
    half = stats.t.ppf((1 + level) / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return float(v.mean()), float(half), len(v)


def curve_at(run: dict, metric: str, step: int) -> float | None:
    """``metric`` (e.g. ``domain_kid``) of ``run``'s evaluation at ``step``; None if it has none there."""
    return next((p[metric] for p in run["metrics"].get("eval_curve", []) if p["step"] == step), None)


def paired_time_to_match(runs: dict, baselines: dict, metric: str, lower: bool = True) -> dict:
    """Per seed: the steps run ``runs[seed]`` needs to reach the final value of ``baselines[seed]``
    (same seed; :func:`crossing` on its evaluation curve), and their mean with a 95 % t-interval.

    ``runs`` / ``baselines``: ``{seed: train summary}``. Returns ``{"per_seed": {seed: {"target", "first",
    "steps", "baseline_steps"}}, "reached": n, "n": seeds, "at_first_point": n, "steps": (mean,
    half, n) over the seeds that reached it, "ratio": the same for steps / baseline steps}``.
    ``steps`` of a seed is None when its curve never reaches the target; a seed that reaches it at its
    first evaluation counts in ``at_first_point`` (its crossing is only bounded by that step).

    Raises:
        ValueError: no common seed, or a run has fewer than two evaluation points (a crossing
            needs a curve).
    """
    seeds = sorted(set(runs) & set(baselines))
    if not seeds:
        raise ValueError(f"paired_time_to_match: no common seed ({sorted(runs)} vs {sorted(baselines)})")
    per_seed = {}
    for seed in seeds:
        curve, base = runs[seed]["metrics"].get("eval_curve", []), baselines[seed]["metrics"].get("eval_curve", [])
        if len(curve) < 2 or not base:
            raise ValueError(f"paired_time_to_match: seed {seed} has {len(curve)} evaluation point(s); need >= 2")
        target = base[-1][metric]
        hit = crossing([p["step"] for p in curve], [p[metric] for p in curve], target, lower)
        per_seed[seed] = {"target": target, "steps": hit, "baseline_steps": base[-1]["step"], "first": curve[0]["step"]}
    hits = [v for v in per_seed.values() if v["steps"] is not None]
    return {
        "per_seed": per_seed,
        "n": len(seeds),
        "reached": len(hits),
        "at_first_point": sum(v["steps"] == v["first"] for v in hits),
        "steps": t_interval([v["steps"] for v in hits]),
        "ratio": t_interval([v["steps"] / v["baseline_steps"] for v in hits]),
    }
