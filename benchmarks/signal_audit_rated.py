"""Signal audit on a rating run's own proxies: which caption signal separates caption-level corruption.

    python benchmarks/signal_audit_rated.py --runs 1x=RUNS/default,2x=RUNS/default_2p --seeds 0,1,2 \
        --out outputs/signal-audit-rated --results benchmarks/results/signal-audit-f2.md

For each run folder ``DIR/seed{S}`` of ``train.py +experiment=rate`` with ``bilevel=value_gap``, the
proxy θ and the pool proxy θ′ are read from the run's ``checkpoints/last.ckpt`` (its ``proxy.`` and
``value_proxy.`` weights, :func:`alchemist_pl.value_gap_scoring.load_rating_proxies`; θ trained on
``ul · L_val + (1 − ul) · Σ W_i ℓ_i``, θ′ on the uniformly weighted pool). A stratified subset of the run's
pool (``--clean`` clean samples and ``--per-kind`` of each corruption kind, the same subset for every run)
is scored on the timestep grid ``--timesteps`` with one noise draw per (sample, t) shared by every model and
caption (common random numbers, :func:`alchemist_pl.audit.score_losses`).

Keep-scores (higher = keep), each per timestep and per band (sum of per-t z-scores):
``loss`` = −ℓ(θ; c); ``value_gap`` = ℓ(θ′; c) − ℓ(θ; c); ``contrast`` = ℓ(θ; c₁) − ℓ(θ; c);
``null_gap`` = ℓ(θ; ∅) − ℓ(θ; c); ``contrast_pool`` = ℓ(θ′; c₁) − ℓ(θ′; c); ``contrast_pool_k4`` =
mean_k ℓ(θ′; c_k) − ℓ(θ′; c) over K = 4 other captions c₁..c₄ (each another pool sample's, with a
different caption text, :func:`alchemist_pl.audit.mismatched_rows`); ``value_gap_other`` =
ℓ(θ′; c₁) − ℓ(θ; c₁) (the value gap with both models given a wrong caption); mixes ``value_gap@a-b + λ·X@c-d``
of z-scored bands. Reported: AUROC clean vs corrupted overall (equal samples per kind, as the pool) and
per kind, mean ± std over seeds, per budget label.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from stamp import commit, machine  # noqa: E402

from alchemist_pl import audit  # noqa: E402
from alchemist_pl.corruption import CLEAN, GROUND_TRUTH, KINDS, read_ground_truth  # noqa: E402
from alchemist_pl.data import load_split  # noqa: E402
from alchemist_pl.resolvers import register_resolvers  # noqa: E402
from alchemist_pl.value_gap_scoring import load_rating_proxies  # noqa: E402

OTHERS = 4  # mismatched captions per sample for the averaged contrast
SIGNALS = ("loss", "value_gap", "contrast", "null_gap", "contrast_pool", "contrast_pool_k4", "value_gap_other")
COLUMNS = ("all", "caption_swap", "collage", "near_duplicate", "blur", "noise", "blank")
TERMS = (
    ("val", "own"), ("pool", "own"), ("val", "other1"), ("val", "null"),
    *(("pool", f"other{k}") for k in range(1, OTHERS + 1)),
)  # fmt: skip
LAMBDAS = (0.25, 0.5, 1.0)


class Subset:
    """The rows ``index`` of an :class:`~alchemist_pl.data.ImageCaptionDataset` (images, caption rows)."""

    def __init__(self, dataset, index: torch.Tensor):
        self.images, self.caption_rows, self.text = dataset.images[index], dataset.caption_rows[index], dataset.text

    def __len__(self) -> int:
        return len(self.images)


def stratified(kinds: np.ndarray, clean: int, per_kind: int, seed: int = 0) -> np.ndarray:
    """Sorted positions: ``clean`` clean samples and ``per_kind`` of each corruption kind, drawn at random."""
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(kinds == CLEAN), clean, replace=False)]
    picks += [rng.choice(np.flatnonzero(kinds == k), per_kind, replace=False) for k in KINDS]
    return np.sort(np.concatenate(picks))


def load_run(run: Path):
    """(cfg, θ, θ′, scheduler, global step) of a rating run folder
    (:func:`alchemist_pl.value_gap_scoring.load_rating_proxies`)."""
    rating = load_rating_proxies(run)
    return rating.cfg, rating.models, rating.scheduler, rating.global_step


def score_run(run: Path, seed: int, timesteps, clean: int, per_kind: int) -> dict:
    """Losses of every term of :data:`TERMS` on the stratified subset of the run's pool."""
    started, load0 = time.time(), os.getloadavg()[0]
    cfg, models, scheduler, step = load_run(run)
    d = cfg.data
    pool = load_split(Path(d.train_path), d.resolution, d.cache_dir, None, d.max_tokens)
    truth = read_ground_truth(Path(d.train_path).parent / GROUND_TRUTH)
    kinds = np.asarray([truth[s] for s in pool.sample_ids], dtype=object)
    index = torch.as_tensor(stratified(kinds, clean, per_kind))
    sub = Subset(pool, index)
    captions = {"own": sub.caption_rows, "null": torch.full((len(sub),), audit.null_row(pool), dtype=torch.long)}
    for k in range(1, OTHERS + 1):
        captions[f"other{k}"] = audit.mismatched_rows(sub, torch.Generator().manual_seed(1000 * seed + k))
    losses = audit.score_losses(models, scheduler, sub, captions, list(timesteps), seed, terms=TERMS)
    meta = {"run": str(run), "seed": seed, "global_step": step, "iterations": step // 2, "scored": len(sub)}
    meta.update({"wall_s": time.time() - started, "load_start": load0, "load_end": os.getloadavg()[0]})
    return {"losses": losses, "kinds": kinds[index.numpy()], "meta": meta}


def keep_scores(losses: dict) -> dict:
    """[n_t, N] keep-scores of :data:`SIGNALS` from the scored terms."""
    out = audit.keep_scores({k: v for k, v in losses.items() if k != ("val", "other1")})
    out["contrast"] = losses[("val", "other1")] - losses[("val", "own")]
    own = losses[("pool", "own")]
    out["contrast_pool"] = losses[("pool", "other1")] - own
    out["contrast_pool_k4"] = np.mean([losses[("pool", f"other{k}")] for k in range(1, OTHERS + 1)], axis=0) - own
    out["value_gap_other"] = losses[("pool", "other1")] - losses[("val", "other1")]
    return out


def caption_scale(scored: dict, timesteps) -> dict:
    """Per timestep, on clean samples: mean loss of θ and θ′ and their mean caption contrast relative to it."""
    clean = scored["kinds"] == CLEAN
    L = scored["losses"]
    out = {}
    for i, t in enumerate(timesteps):
        row = {}
        for m in ("val", "pool"):
            own = L[(m, "own")][i, clean]
            row[f"loss_{m}"] = float(own.mean())
            row[f"contrast_rel_{m}"] = float((L[(m, "other1")][i, clean] - own).mean() / own.mean())
        out[str(t)] = row
    return out


def bands(timesteps) -> dict:
    ts = list(timesteps)
    cand = {"50-100": (50, 100), "100-300": (100, 200, 300), "200-500": (200, 300, 500), "300-500": (300, 500)}
    return {name: g for name, g in cand.items() if all(t in ts for t in g)}


def score_table(scored: dict, timesteps) -> dict:
    """name -> [N] keep-score: every signal per timestep and band, and value-gap + caption mixes."""
    ts = list(timesteps)
    out = {}
    for sig, s in keep_scores(scored["losses"]).items():
        out.update({f"{sig}@t{t}": s[i] for i, t in enumerate(ts)})
        out.update({f"{sig}@{b}": audit.band_score(s, [ts.index(t) for t in g]) for b, g in bands(ts).items()})
    for cap in ("contrast", "contrast_pool", "contrast_pool_k4"):
        for band in ("100-300", "200-500"):
            for lam in LAMBDAS:
                if f"{cap}@{band}" in out and "value_gap@50-100" in out:
                    out[f"value_gap@50-100+{lam:g}·{cap}@{band}"] = out["value_gap@50-100"] + lam * out[f"{cap}@{band}"]
    return out


def _ms(values) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v[0]:.2f}" if len(v) == 1 else f"{v.mean():.2f} ± {v.std(ddof=1):.2f}"


def render(numbers: dict, context: dict) -> str:
    lines = [
        "# Signal audit on the rating runs' own proxies (format-2 dataset): caption signals under θ and θ′",
        "",
        f"Command: `{context['command']}`  ",
        f"Commit: {context['commit']}  ",
        f"Machine: {context['machine']}  ",
        f"Date: {context['date']}  ",
        f"Wall time: {context['wall_min']:.1f} min summed over {len(context['meta'])} scorings (one thread each); "
        f"1-min load at start / end of each scoring: "
        + "; ".join(f"{m['label']} s{m['seed']} {m['load_start']:.1f} → {m['load_end']:.1f}" for m in context["meta"]),
        "",
        (__doc__ or "").split("\n\n", 2)[2].strip(),
        "",
        f"Scored: {context['meta'][0]['scored']} samples per run ({context['clean']} clean, {context['per_kind']} per "
        f"kind); timesteps {context['timesteps']}. Runs (label: folder, iterations at last.ckpt): "
        + "; ".join(f"{m['label']} s{m['seed']}: {m['run']} ({m['iterations']})" for m in context["meta"]),
        "",
    ]
    for label, per_seed in numbers.items():
        seeds = sorted(per_seed)
        names = list(per_seed[seeds[0]])
        lines += [f"## `{label}` (seeds {seeds})", "", "| signal | " + " | ".join(COLUMNS) + " |"]
        lines.append("|---" * (len(COLUMNS) + 1) + "|")
        for name in names:
            cells = [_ms([per_seed[s][name][c] for s in seeds]) for c in COLUMNS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
        lines += _scale_lines(context["scale"][label], seeds)
    return "\n".join(lines) + "\n"


def _scale_lines(scale: dict, seeds) -> list[str]:
    lines = [
        "Clean samples, mean over seeds: loss of θ and θ′ and the mismatched-caption contrast relative to the loss",
        "",
        "| t | loss θ | loss θ′ | contrast / loss, θ | contrast / loss, θ′ |",
        "|---|---|---|---|---|",
    ]
    for t in scale[seeds[0]]:
        v = {k: np.mean([scale[s][t][k] for s in seeds]) for k in scale[seeds[0]][t]}
        lines.append(
            f"| {t} | {v['loss_val']:.4f} | {v['loss_pool']:.4f} | {v['contrast_rel_val']:+.4f} | "
            f"{v['contrast_rel_pool']:+.4f} |"
        )
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", required=True, help="label=DIR,... with DIR/seed{S} rating run folders")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--timesteps", default="50,100,200,300,500")
    parser.add_argument("--clean", type=int, default=400)
    parser.add_argument("--per-kind", type=int, default=100)
    parser.add_argument("--out", default="outputs/signal-audit-rated", help="scored losses per run (reused)")
    parser.add_argument("--results", default="benchmarks/results/signal-audit-f2.md")
    parser.add_argument("--notes", default=None, help="a markdown file appended to the report as its reading")
    a = parser.parse_args()
    torch.set_num_threads(1)
    register_resolvers()
    seeds, timesteps = [int(s) for s in a.seeds.split(",")], [int(t) for t in a.timesteps.split(",")]
    runs = dict(item.split("=", 1) for item in a.runs.split(","))
    out, numbers, metas, scales = Path(a.out), {}, [], {}
    for seed in seeds:  # seeds outside: a cut-short audit has whole seeds
        for label, folder in runs.items():
            run, cache = Path(folder) / f"seed{seed}", out / label / f"seed{seed}.npz"
            if not (run / "checkpoints" / "last.ckpt").exists():
                continue
            if not cache.exists():
                scored = score_run(run, seed, timesteps, a.clean, a.per_kind)
                cache.parent.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(cache, kinds=scored["kinds"].astype(str), meta=json.dumps(scored["meta"]),
                                    **{"__".join(k): v for k, v in scored["losses"].items()})  # fmt: skip
            z = np.load(cache)
            kinds = z["kinds"].astype(object)
            scored = {"losses": {tuple(k.split("__")): z[k] for k in z.files if "__" in k}, "kinds": kinds}
            scales.setdefault(label, {})[seed] = caption_scale(scored, timesteps)
            metas.append({"label": label, **json.loads(str(z["meta"]))})
            table = score_table(scored, timesteps)
            numbers.setdefault(label, {})[seed] = {n: audit.separation(s, kinds) for n, s in table.items()}
            print(f"{label} seed {seed}: done", flush=True)
    context = {
        "command": "python benchmarks/signal_audit_rated.py " + " ".join(sys.argv[1:]),
        "commit": commit("alchemist_pl", "conf", "benchmarks/signal_audit_rated.py"),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_min": sum(m["wall_s"] for m in metas) / 60,
        "meta": metas,
        "timesteps": timesteps,
        "clean": a.clean,
        "per_kind": a.per_kind,
        "scale": scales,
    }
    results = Path(a.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    notes = Path(a.notes).read_text() if a.notes else ""
    results.write_text(render(numbers, context) + ("\n## Reading\n\n" + notes if notes else ""))
    results.with_suffix(".json").write_text(json.dumps({"context": context, "numbers": numbers}, indent=1))
    print(results.read_text())


if __name__ == "__main__":
    main()
