"""The rater's amortisation gap: can the shipped rater learn the offline value gap of its own run?

    python benchmarks/rater_amortisation.py --runs /work/sig3-out/f2/default --seeds 0,1,2 \
        --out outputs/rater-amortisation --results benchmarks/results/rater-amortisation-f2.md

For each rating run folder ``RUNS/seed{S}`` (``bilevel=value_gap``), θ and θ′ are read from its
``checkpoints/last.ckpt`` (:func:`signal_audit_rated.load_run`) and the WHOLE pool is scored (cached in
``--out``):

- ``offline``: the value gap ``ℓ(θ′) − ℓ(θ)`` at t = 50 and t = 100, one noise draw per (sample, t)
  shared by both models (common random numbers, :func:`alchemist_pl.audit.score_losses`), band score =
  sum of per-t z-scores (:func:`alchemist_pl.audit.band_score`), the audit's ``value_gap@50-100``;
- ``one_draw``: the same gap at ONE t drawn uniformly from the run's ``rater_timesteps`` and one noise
  draw per sample, what a single rating iteration hands the rater for a sample (at the final θ, θ′).

Raters are then fitted on half A of the pool (sha256(sample_id) even, as ``signal_rating.in_half_a``)
and scored on half B (never seen); AUROC clean vs corrupted on half B overall and per kind, mean ± std
over seeds. Fits (:func:`fits`, AdamW lr 1e-3, betas (0.9, 0.95), weight decay 0.05, clip 2, as the
rater's optimizer): ``fresh``: a freshly initialised rater of the shipped architecture
(the run's own ``rater`` config, ``conf/rater/group_mlp.yaml``: conv backbone + caption projection + instance head), its instance logit
fitted to the target by ``regress`` (MSE to the z-scored target, batch 64), ``rank`` (logistic loss on
random pairs of the batch, batch 64) or the ``shipped loss`` (the bilevel loop's instance-head term
``Σ softmax_B(sigmoid(a))·(−z)`` + 0.1·mean(a)², batch 32), for 40 epochs of half A or for 130 steps (the
default rating's iteration count); ``fixed X + new head``: a new 64-unit MLP head regressed on fixed
features X: ``heuristics`` (log clarity, frequency, edge density, per-channel mean and std),
``run_backbone`` (the run's own trained rater backbone, frozen), ``domain`` (the domain encoder's image
embedding, trained on clean images). ``run rater``: the run's own scores (its rater saw both halves).
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
from hydra.utils import instantiate
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from signal_audit_rated import load_run  # noqa: E402
from signal_rating import in_half_a  # noqa: E402
from stamp import commit, machine, mean_std  # noqa: E402

from alchemist_pl import audit, heuristics  # noqa: E402
from alchemist_pl.corruption import GROUND_TRUTH, read_ground_truth  # noqa: E402
from alchemist_pl.data import load_split  # noqa: E402
from alchemist_pl.pixels import to_model_range  # noqa: E402
from alchemist_pl.plugins import proxy_loss  # noqa: E402
from alchemist_pl.resolvers import register_resolvers  # noqa: E402

TIMESTEPS = (50, 100)
COLUMNS = ("all", "blur", "noise", "blank", "caption_swap", "near_duplicate", "collage")


def load_pool(run: Path):
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    d = cfg.data
    pool = load_split(Path(d.train_path), d.resolution, d.cache_dir, None, d.max_tokens)
    truth = read_ground_truth(Path(d.train_path).parent / GROUND_TRUTH)
    kinds = np.asarray([truth[s] for s in pool.sample_ids], dtype=object)
    return cfg, pool, kinds


@torch.no_grad()
def one_draw_gap(models, scheduler, pool, band, seed: int, batch_size: int = 256) -> np.ndarray:
    """``ℓ(θ′) − ℓ(θ)`` [N] at one t ~ U[band) and one noise draw per sample (shared by both models)."""
    g = torch.Generator().manual_seed(10_000 + seed)
    n = len(pool)
    t = torch.randint(band[0], band[1], (n,), generator=g)
    noise = torch.randn(pool.images.shape, generator=g)
    out = np.zeros(n)
    for lo in range(0, n, batch_size):
        sl = slice(lo, min(n, lo + batch_size))
        rows = pool.caption_rows[sl]
        batch = {
            "image": to_model_range(pool.images[sl]),
            "states": pool.text.states[rows].float(),
            "mask": pool.text.mask[rows],
            "pooled": pool.text.pooled[rows].float(),
        }
        own = proxy_loss(models["val"], scheduler, batch, t[sl], noise[sl])
        prime = proxy_loss(models["pool"], scheduler, batch, t[sl], noise[sl])
        out[sl] = (prime - own).double().numpy()
    return out


def score_seed(run: Path, seed: int, cache: Path) -> dict:
    if cache.exists():
        z = np.load(cache, allow_pickle=False)
        return {k: z[k] for k in z.files}
    started, load0 = time.time(), os.getloadavg()[0]
    cfg, models, scheduler, step = load_run(run)
    _, pool, kinds = load_pool(run)
    captions = {"own": pool.caption_rows}
    terms = (("val", "own"), ("pool", "own"))
    losses = audit.score_losses(models, scheduler, pool, captions, list(TIMESTEPS), seed, terms=terms)
    gap = losses[("pool", "own")] - losses[("val", "own")]  # [n_t, N] keep-score
    band = tuple(cfg.bilevel.rater_timesteps)
    out = {
        "offline": audit.band_score(gap, range(len(TIMESTEPS))),
        "offline_raw": gap,
        "one_draw": one_draw_gap(models, scheduler, pool, band, seed),
        "kinds": kinds.astype(str),
        "half_a": np.array([in_half_a(s) for s in pool.sample_ids]),
        "meta": json.dumps({"step": step, "wall_s": time.time() - started, "load": [load0, os.getloadavg()[0]]}),
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cache, **out)
    return out


def rater_config(run: Path):
    """The rater config the run was rated with (its resolved ``rater`` group)."""
    return OmegaConf.to_container(OmegaConf.load(run / ".hydra" / "config.yaml").rater, resolve=True)


def inputs(pool, index: np.ndarray):
    rows = pool.caption_rows[index]
    return to_model_range(pool.images[index]), pool.text.pooled[rows].float()


def zs(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / x.std()


def fit(model, features, target: np.ndarray, objective: str, steps: int, batch: int, seed: int, lr=1e-3):
    """Fit ``model`` (features -> logit) to the keep-target on the rows given; returns the model.

    ``regress``: MSE of the logit to z(target); ``rank``: logistic pairwise loss on random pairs of the batch;
    ``shipped``: the bilevel loop's instance-head loss ``Σ softmax_B(sigmoid(a))·(−z(target))`` + 0.1·mean(a)².
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.as_tensor(zs(target), dtype=torch.float32)
    n = len(y)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.95),
                            weight_decay=0.05)  # fmt: skip
    order, pos = torch.randperm(n, generator=g), 0
    for _ in range(steps):
        if pos + batch > n:
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos : pos + batch]
        pos += batch
        a = model(*[f[idx] for f in features])
        if objective == "regress":
            loss = (a - y[idx]).pow(2).mean()
        elif objective == "rank":
            j = torch.randperm(len(idx), generator=g)
            sign = torch.sign(y[idx] - y[idx][j])
            loss = torch.nn.functional.softplus(-sign * (a - a[j])).mean()
        else:
            loss = (torch.softmax(torch.sigmoid(a), 0) * -y[idx]).sum() + 0.1 * a.mean().pow(2)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
    return model


class Logit(torch.nn.Module):
    """A rater's instance logit as a module of (images, pooled)."""

    def __init__(self, rater):
        super().__init__()
        self.rater = rater

    def forward(self, images, pooled):
        return self.rater.group_mlp.instance_logit(self.rater.backbone(images, pooled))


def head(dim: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(dim, 64), torch.nn.GELU(), torch.nn.Linear(64, 1), torch.nn.Flatten(0))


@torch.no_grad()
def predict(model, features, batch: int = 512) -> np.ndarray:
    n = len(features[0])
    return np.concatenate([model(*[f[i : i + batch] for f in features]).numpy() for i in range(0, n, batch)])


def fixed_features(pool, run: Path) -> dict:
    """[N, F] fixed features: image heuristics, the run's rater backbone, the domain encoder's image embedding."""
    imgs = pool.images.numpy()
    x = pool.images.float() / 255.0
    heur = np.stack(
        [np.log1p(heuristics.clarity(imgs)), heuristics.frequency(imgs), heuristics.edge_density(imgs)]
        + [x.mean((2, 3))[:, c].numpy() for c in range(3)]
        + [x.std((2, 3))[:, c].numpy() for c in range(3)],
        axis=1,
    )
    state = torch.load(run / "rater.pt", weights_only=True)
    rater = instantiate(state["config"])
    rater.load_state_dict(state["state_dict"])
    images, pooled = inputs(pool, np.arange(len(pool)))
    with torch.no_grad():
        frozen = torch.cat([rater.backbone(images[i : i + 512], pooled[i : i + 512]) for i in range(0, len(pool), 512)])
    out = {"heuristics": torch.as_tensor(zs_cols(heur), dtype=torch.float32), "run_backbone": frozen}
    enc = domain_encoder(run)
    if enc is not None:
        with torch.no_grad():
            emb = torch.cat([enc.embed(images[i : i + 512]) for i in range(0, len(pool), 512)])
        out["domain+heuristics"] = torch.cat([emb, out["heuristics"]], 1)
    return out


def zs_cols(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)


def domain_encoder(run: Path):
    from alchemist_pl.domain_encoder import load_domain_encoder

    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    d = cfg.data
    path = cfg.corruption.source if "source" in cfg.corruption else d.train_path
    try:
        enc, _ = load_domain_encoder(path, d.resolution, d.cache_dir, d.max_tokens, test_path=d.test_path)
    except Exception as err:  # noqa: BLE001 - a diagnostic: report and go on without it
        print("no domain encoder:", err, flush=True)
        return None
    return enc.eval()


def fits(pool, scored, run: Path, seed: int) -> dict:
    """keep-scores [N] of every fit (trained on half A)."""
    a = scored["half_a"]
    ia = np.flatnonzero(a)
    images, pooled = inputs(pool, np.arange(len(pool)))
    px = (images, pooled)
    pxa = (images[ia], pooled[ia])
    out = {"target: offline": scored["offline"], "target: one_draw": scored["one_draw"]}
    from alchemist_pl.scores import read_scores

    ids, sc, _ = read_scores(run / "scores.parquet")
    pos = {s: i for i, s in enumerate(ids)}
    out["run rater (online, 130 it)"] = np.asarray(sc)[[pos[s] for s in pool.sample_ids]]
    plan = [  # (label, target, objective, steps, batch)
        ("fresh, regress offline, 40 ep", "offline", "regress", 1250, 64),
        ("fresh, rank offline, 40 ep", "offline", "rank", 1250, 64),
        ("fresh, shipped loss offline, 40 ep", "offline", "shipped", 2500, 32),
        ("fresh, shipped loss offline, 130 steps", "offline", "shipped", 130, 32),
        ("fresh, shipped loss one_draw, 130 steps", "one_draw", "shipped", 130, 32),
        ("fresh, shipped loss one_draw, 40 ep", "one_draw", "shipped", 2500, 32),
        ("fresh, regress one_draw, 40 ep", "one_draw", "regress", 1250, 64),
    ]
    for label, target, objective, steps, batch in plan:
        torch.manual_seed(seed)
        model = Logit(instantiate(rater_config(run)))
        fit(model, pxa, scored[target][ia], objective, steps, batch, seed)
        out[label] = predict(model, px)
        print(seed, label, audit.separation(out[label][~a], scored["kinds"][~a].astype(object))["all"], flush=True)
    for name, feats in fixed_features(pool, run).items():
        torch.manual_seed(seed)
        model = head(feats.shape[1])
        fit(model, (feats[ia],), scored["offline"][ia], "regress", 1250, 64, seed)
        out[f"fixed {name} + new head, regress offline"] = predict(model, (feats,))
        print(seed, name, audit.separation(out[f"fixed {name} + new head, regress offline"][~a],
                                           scored["kinds"][~a].astype(object))["all"], flush=True)  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="outputs/rater-amortisation")
    parser.add_argument("--score-only", action="store_true")
    parser.add_argument("--results", default="benchmarks/results/rater-amortisation-f2.md")
    a = parser.parse_args()
    saved = Path(a.out, "fits.json")
    numbers = {int(k): v for k, v in json.loads(saved.read_text()).items()} if saved.exists() else {}
    direct: dict = {}
    torch.set_num_threads(1)
    register_resolvers()
    for seed in [int(s) for s in a.seeds.split(",")]:
        scored = score_seed(Path(a.runs) / f"seed{seed}", seed, Path(a.out) / f"seed{seed}.npz")
        kinds = scored["kinds"].astype(object)
        for name in ("offline", "one_draw"):
            print(seed, name, audit.separation(scored[name], kinds), json.loads(str(scored["meta"])), flush=True)
        if a.score_only:
            continue
        run = Path(a.runs) / f"seed{seed}"
        _, pool, _ = load_pool(run)
        direct[seed] = direct_scores(pool, scored, run, kinds)
        if seed in numbers:
            continue
        started = time.time()
        table = fits(pool, scored, run, seed)
        b = ~scored["half_a"]
        numbers[seed] = {k: audit.separation(v[b], kinds[b]) for k, v in table.items()}
        numbers[seed]["_fit_wall_s"] = time.time() - started
        Path(a.out, "fits.json").write_text(json.dumps(numbers, indent=1))
    if not a.score_only:
        cost = scoring_cost(Path(a.runs) / f"seed{min(numbers)}")
        Path(a.results).write_text(render(numbers, a) + render_direct(direct, cost))
        print(Path(a.results).read_text())


def direct_scores(pool, scored, run: Path, kinds) -> dict:
    """Whole-pool separation of the pool scored without a rater (the final θ, θ′'s value gap) and blended with it."""
    from alchemist_pl.scores import read_scores

    ids, sc, _ = read_scores(run / "scores.parquet")
    pos = {s: i for i, s in enumerate(ids)}
    rater = np.asarray(sc, dtype=np.float64)[[pos[s] for s in pool.sample_ids]]
    table = {
        "run rater (online)": rater,
        "value gap t = 50, 100 (2 timesteps, CRN)": scored["offline"],
        "value gap, one t in the rater's band": scored["one_draw"],
        "z(rater) + z(value gap t = 50, 100)": zs(rater) + zs(scored["offline"]),
        "z(rater) + z(value gap, one t)": zs(rater) + zs(scored["one_draw"]),
    }
    return {k: audit.separation(v, kinds) for k, v in table.items()}


@torch.no_grad()
def scoring_cost(run: Path, n: int = 256, repeats: int = 5) -> dict:
    """Seconds per pool sample (batch ``n``, one thread, median of ``repeats``, interleaved): the rater's score and the
    value gap at one timestep (θ and θ′ forwards at a common (t, ε))."""
    cfg, models, scheduler, _ = load_run(run)
    _, pool, _ = load_pool(run)
    state = torch.load(run / "rater.pt", weights_only=True)
    rater = instantiate(state["config"])
    rater.load_state_dict(state["state_dict"])
    rater.eval()
    idx = np.arange(n)
    images, pooled = inputs(pool, idx)
    rows = pool.caption_rows[idx]
    batch = {"image": images, "states": pool.text.states[rows].float(), "mask": pool.text.mask[rows], "pooled": pooled}
    t, noise = torch.full((n,), 50), torch.randn(images.shape)

    fns = {
        "rater_s_per_sample": lambda: rater.score(images, pooled),
        "value_gap_s_per_sample_per_t": lambda: [proxy_loss(m, scheduler, batch, t, noise) for m in models.values()],
    }
    times = {k: [] for k in fns}
    for _ in range(repeats):  # interleaved, so both see the same machine load
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {**{k: float(np.median(v)) / n for k, v in times.items()}, "load": os.getloadavg()[0]}


def table(numbers: dict, seeds: list, names: list, first: str) -> list[str]:
    """Markdown rows: per name, mean ± std over seeds of each kind's AUROC and the top-50% share."""
    lines = [f"| {first} | " + " | ".join(COLUMNS) + " | top-50% corrupted share |", "|---" * (len(COLUMNS) + 2) + "|"]
    for name in names:
        cells = [mean_std([numbers[s][name][c] for s in seeds], 2) for c in COLUMNS]
        cells.append(mean_std([numbers[s][name]["top50_corrupted_share"] for s in seeds], 3))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def render_direct(direct: dict, cost: dict) -> str:
    seeds = sorted(direct)
    names = list(direct[seeds[0]])
    lines = [
        "",
        f"## Scoring the whole pool without the rater (final θ, θ′ of each run), mean ± std over seeds {seeds}",
        "",
        *table(direct, seeds, names, "score (all 4,000 samples)"),
    ]
    lines += [
        "",
        f"Scoring cost per pool sample (batch 256, one thread, median of 5 interleaved; 1-min load {cost['load']:.1f}): rater "
        f"{1e3 * cost['rater_s_per_sample']:.3f} ms; value gap {1e3 * cost['value_gap_s_per_sample_per_t']:.3f} ms per "
        f"timestep (two proxy forwards), i.e. "
        f"{cost['value_gap_s_per_sample_per_t'] / cost['rater_s_per_sample']:.1f}× the rater per timestep.",
    ]
    return "\n".join(lines) + "\n"


def render(numbers: dict, a) -> str:
    seeds = sorted(numbers)
    names = [k for k in numbers[seeds[0]] if not k.startswith("_")]
    lines = [
        "# Rater amortisation on format 2: what a rater of the shipped architecture can learn of the offline signal",
        "",
        f"Command: `python benchmarks/rater_amortisation.py {' '.join(sys.argv[1:])}`  ",
        f"Commit: {commit('alchemist_pl', 'conf', 'benchmarks/rater_amortisation.py')}  ",
        f"Machine: {machine()}  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
        "Fit wall per seed (s): " + ", ".join(f"{numbers[s]['_fit_wall_s']:.0f}" for s in seeds),
        "",
        (__doc__ or "").split("\n\n", 2)[2].strip(),
        "",
        f"AUROC on half B (clean vs corrupted), mean ± std over seeds {seeds}:",
        "",
        *table(numbers, seeds, names, "score"),
    ]
    lines += ["", "Per seed (AUROC on half B):", ""]
    for name in names:
        lines.append(f"- {name}: " + " / ".join(f"{numbers[s][name]['all']:.3f}" for s in seeds))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
