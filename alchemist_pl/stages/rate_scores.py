"""What the rate stage's ``scores.parquet`` holds (``rate.scores``): the rater's scores (the paper's output),
or scores read from the rating's two proxies, with a cross-fitted caption-agreement term.

``value_gap``: ``Σ_t z_t(ℓ_i(θ′) − ℓ_i(θ))`` of every pool sample at the final θ (fitted to D_val) and θ′
(fitted to the pool), z-scored again, :func:`alchemist_pl.value_gap_scoring.value_gap_scores`. ``value_gap_caption``: that
score's z-score plus ``weight`` × the z-score of the pool's cross-fitted caption agreement
(:class:`alchemist_pl.caption_crossfit.CrossFitCaptionScorer`): the value gap sees what a denoising proxy
can see (blur, noise, blank images), the caption term what it cannot at this scale (mismatched captions,
collages).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from ..audit import zscore
from ..caption_crossfit import CrossFitCaptionScorer
from ..runtime import container
from ..scores import write_scores
from ..value_gap_scoring import check_settings, value_gap_scores

log = logging.getLogger(__name__)

SOURCES = ("auto", "rater", "value_gap", "value_gap_caption")
#: the extra scores files a proxy-scored rating writes beside scores.parquet, by part
PART_FILES = {"rater": "rater-scores.parquet", "value_gap": "value-gap-scores.parquet",
              "caption": "caption-scores.parquet"}  # fmt: skip


def score_source(cfg: DictConfig) -> str:
    """``rate.scores`` resolved: ``auto`` is ``value_gap_caption`` for a ``bilevel=value_gap`` rating of pixels
    scored in memory, else ``rater`` (the proxy scores need θ′, pixels and the loaded pool).

    Raises:
        ValueError: an unknown value, or ``value_gap`` / ``value_gap_caption`` with a rating that has no θ′
            (``bilevel.rater_signal`` other than value_gap), on VAE latents, or with ``rate.streaming=true``;
            for those two, a bad ``rate.value_gap`` setting (timesteps not distinct ints in [0, T) of
            ``proxy.scheduler``, draws or batch_size not a positive int, an unknown key); for ``value_gap_caption``, a bad
            ``rate.caption_crossfit`` setting (:func:`caption_scorer`).
    """
    value = cfg.rate.get("scores", "rater")
    if value not in SOURCES:
        raise ValueError(f"rate.scores must be one of {list(SOURCES)}, got {value!r}")
    signal = cfg.bilevel.get("rater_signal")
    blockers = []
    if signal != "value_gap":
        blockers.append(f"bilevel.rater_signal={signal} trains no pool proxy θ′ (use bilevel=value_gap)")
    if cfg.data.get("latents"):
        blockers.append("data.latents=true: the proxy scores read pixels")
    if cfg.rate.get("streaming"):
        blockers.append("rate.streaming=true: the proxy scores need the pool in memory")
    if value == "auto":
        value = "rater" if blockers else "value_gap_caption"
    elif value != "rater" and blockers:
        raise ValueError(f"rate.scores={value} cannot be computed: {'; '.join(blockers)}; or set rate.scores=rater")
    if value != "rater":  # their settings fail here, before the rating trains
        vg = container(cfg.rate.value_gap)
        unknown = sorted(set(vg) - {"timesteps", "draws", "batch_size"})
        if unknown:
            raise ValueError(f"rate.value_gap has unknown key(s) {unknown}; it takes timesteps, draws, batch_size")
        num_t = OmegaConf.select(cfg, "proxy.scheduler.num_train_timesteps", default=None)
        check_settings(vg.get("timesteps"), vg.get("draws"), vg.get("batch_size"), num_t, "rate.value_gap")
    if value == "value_gap_caption":
        caption_scorer(cfg)
    return value


def check_pool(cfg: DictConfig, source: str, pool) -> None:
    """Whether the loaded pool can be scored by ``source`` (``rate.scores``, resolved), before the rating trains:
    for ``value_gap_caption`` the caption cross-fit's folds (:meth:`CrossFitCaptionScorer.check_pool`).

    Raises:
        ValueError: a pool too small for ``rate.caption_crossfit.folds``, with an empty fold, or with fewer than
            two distinct captions outside a fold (names the key, the fold and the counts).
    """
    if source == "value_gap_caption":
        scorer, _ = caption_scorer(cfg)
        try:
            scorer.check_pool(pool)
        except ValueError as e:
            raise ValueError(f"rate.caption_crossfit (data.train_path's pool): {e}") from e


def caption_scorer(cfg: DictConfig) -> tuple[CrossFitCaptionScorer, float]:
    """The cross-fitted caption scorer of ``rate.caption_crossfit`` (seeded by ``seed``) and its weight.

    Raises:
        ValueError: a weight that is not a finite number >= 0, or a bad scorer setting (names the key).
    """
    settings = container(cfg.rate.caption_crossfit)
    weight = settings.pop("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not np.isfinite(weight) or weight < 0:
        raise ValueError(f"rate.caption_crossfit.weight must be a finite number >= 0, got {weight!r}")
    try:
        return CrossFitCaptionScorer(**settings, seed=int(cfg.seed)), float(weight)
    except (TypeError, ValueError) as e:
        raise ValueError(f"rate.caption_crossfit: {e}") from e


def proxy_scores(cfg: DictConfig, model, pool, rater_scores: np.ndarray, source: str, out: Path, meta: dict):
    """Score ``pool`` by ``source`` (``value_gap`` or ``value_gap_caption``) with the rating ``model``'s θ and θ′
    (their moving averages where ``bilevel.ema_decay > 0``; copied to the CPU), and write every part as its own scores file beside ``scores.parquet`` (``PART_FILES``:
    the rater's scores, the value gap, the caption agreement), each usable by the prune stage or ``scorer=combined``.

    Returns:
        ([N] float32 final scores aligned with ``pool.sample_ids``, unitless: for ``value_gap`` the value gap's
        z-scores (mean 0, std 1), for ``value_gap_caption`` ``z(value gap) + weight · z(caption agreement)``
        (mean 0, not rescaled); {part: scores file path}).

    Raises:
        ValueError: a bad ``rate.value_gap`` or ``rate.caption_crossfit`` setting, or a pool the caption
            cross-fit cannot split (:func:`score_source` and :func:`check_pool` refuse these before training).
    """
    vg_cfg = container(cfg.rate.value_gap)
    scorer, weight = caption_scorer(cfg) if source == "value_gap_caption" else (None, 0.0)
    theta, theta_prime = model.proxy, model.value_proxy
    if getattr(model, "proxy_ema", None) is not None and getattr(model, "value_proxy_ema", None) is not None:
        theta, theta_prime = model.proxy_ema.module, model.value_proxy_ema.module  # bilevel.ema_decay > 0
    models = {"val": copy.deepcopy(theta).cpu().float().eval(), "pool": copy.deepcopy(theta_prime).cpu().float().eval()}
    parts = {"rater": (rater_scores, {"scorer": "rater"})}
    vg = value_gap_scores(models, copy.deepcopy(model.noise_scheduler), pool, vg_cfg["timesteps"], int(cfg.seed),
                          vg_cfg["draws"], vg_cfg["batch_size"])  # fmt: skip
    parts["value_gap"] = (vg, {"scorer": "value_gap", "params": vg_cfg})
    scores = vg
    if scorer is not None:
        caption = scorer(pool)
        parts["caption"] = (caption, scorer.metadata())
        scores = (zscore(vg.astype(np.float64)) + weight * zscore(caption.astype(np.float64))).astype(np.float32)
    paths = {}
    for part, (values, part_meta) in parts.items():
        paths[part] = str(write_scores(out / PART_FILES[part], pool.sample_ids, values, {**meta, **part_meta}))
    log.info("rate: scores.parquet holds rate.scores=%s (parts: %s)", source, ", ".join(PART_FILES[p] for p in parts))
    return scores, paths
