"""Scoring a pool by the value gap of a rating run's two proxies, without its rater.

A rate stage with ``bilevel=value_gap`` trains two proxies of the same architecture: θ (``proxy.`` in its
checkpoint) on ``ul · L_val + (1 − ul) · Σ W_i ℓ_i``, and θ′ (``value_proxy.``) on the rater-weighted pool
only. Their per-sample gap ``ℓ_i(θ′) − ℓ_i(θ)`` is the signal the rater learns: the value-function term of
the penalty method (Shen & Chen 2023, the ``v(μ) = min_θ Σ_i W_i ℓ_i(θ)`` term that Alchemist Eq. 9-10
drops) and RHO-LOSS's reducible loss (Mindermann et al. 2022) with the D_val-fitted model as the reference.
:class:`ValueGapScorer` evaluates that gap directly on every pool sample at the final θ, θ′ instead of
reading the rater's amortised estimate of it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from . import audit
from .resolvers import register_resolvers

log = logging.getLogger(__name__)

PREFIXES = {"val": "proxy.", "pool": "value_proxy."}  # θ and θ′ in a rate stage's checkpoint
EMA_PREFIXES = {"val": "proxy_ema.module.", "pool": "value_proxy_ema.module."}  # their averages (bilevel.ema_decay > 0)
TERMS = (("val", "own"), ("pool", "own"))


@dataclass
class RatingProxies:
    """θ (``models["val"]``) and θ′ (``models["pool"]``) of a rating run, in eval mode; the run's config
    (resolved where the run wrote ``summary.json``), its noise scheduler and the checkpoint's global step."""

    cfg: DictConfig
    models: dict
    scheduler: object
    checkpoint: Path
    global_step: int


def run_config(run: Path) -> DictConfig:
    """A rate stage's config: the resolved one in ``RUN/summary.json``, else ``RUN/.hydra/config.yaml``.

    Raises:
        FileNotFoundError: neither file exists (names the folder).
    """
    summary = run / "summary.json"
    if summary.is_file():
        return OmegaConf.create(json.loads(summary.read_text())["config"])
    if (run / ".hydra" / "config.yaml").is_file():
        register_resolvers()  # the unresolved config interpolates through them
        return OmegaConf.load(run / ".hydra" / "config.yaml")
    raise FileNotFoundError(f"{run}: no summary.json or .hydra/config.yaml; is it a rate stage's output folder?")


def load_rating_proxies(run, checkpoint=None) -> RatingProxies:
    """θ and θ′ of the rating run folder ``run`` (their moving averages where the rating kept them,
    ``bilevel.ema_decay > 0``: what the rate stage's proxy scores read) from ``checkpoint``: a path, a bilevel iteration N (the run's
    ``checkpoints/iteration=N.ckpt``; a path with ``=`` needs quoting in a Hydra override), or None
    (``RUN/checkpoints/last.ckpt``, the end of training).

    Raises:
        FileNotFoundError: no config or no checkpoint (names the path).
        ValueError: the checkpoint holds no θ′ (a ``bilevel=first_order`` rating; names the folder).
    """
    run = Path(run)
    cfg = run_config(run)
    if isinstance(checkpoint, int) and not isinstance(checkpoint, bool):
        checkpoint = run / "checkpoints" / f"iteration={checkpoint}.ckpt"
    ckpt = Path(checkpoint) if checkpoint else run / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt}: no rating checkpoint (set scorer.checkpoint to one of the run's .ckpt files)")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    models = {}
    averaged = any(k.startswith(EMA_PREFIXES["pool"]) for k in state["state_dict"])
    for name, prefix in (EMA_PREFIXES if averaged else PREFIXES).items():
        weights = {k[len(prefix) :]: v for k, v in state["state_dict"].items() if k.startswith(prefix)}
        if not weights:
            signal = OmegaConf.select(cfg, "bilevel.rater_signal", default="?")
            raise ValueError(
                f"{run}: the checkpoint {ckpt.name} holds no '{prefix}*' weights (bilevel.rater_signal={signal}); "
                "the value-gap scorer needs the pool proxy θ′ of a rating with bilevel=value_gap"
            )
        unet = instantiate(cfg.proxy.unet)
        unet.load_state_dict(weights)
        models[name] = unet.eval()
    return RatingProxies(cfg, models, instantiate(cfg.proxy.scheduler), ckpt, int(state["global_step"]))


def check_pool_shape(run: Path, cfg: DictConfig, pool) -> None:
    """The pool's images [N, C, H, W] must have the channels and size the run's proxy was trained on.

    Raises:
        ValueError: a rating on VAE latents, or a channel count or resolution that differs (names both).
    """
    d = cfg.data
    if d.get("latents"):
        raise ValueError(
            f"{run}: the rating ran on VAE latents (data.latents=true); the value-gap scorer scores pixels"
        )
    proxy = (int(d.image_channels), int(d.image_size), int(d.image_size))
    if tuple(pool.images.shape[1:]) != proxy:
        raise ValueError(
            f"the pool's images are [C, H, W] = {list(pool.images.shape[1:])} but the proxy of {run} was trained on "
            f"{list(proxy)}: score the pool at the rating's data.resolution={d.resolution}"
        )


def check_settings(timesteps, draws, batch_size, num_train_timesteps: int | None, key: str) -> None:
    """The value gap's settings: ``timesteps`` a non-empty list of distinct ints in [0, T) (T =
    ``num_train_timesteps``; None: only >= 0 is checked), ``draws`` and ``batch_size`` positive ints.

    Raises:
        ValueError: naming ``key`` (e.g. ``rate.value_gap``), the setting and what was expected.
    """
    bound = "T" if num_train_timesteps is None else int(num_train_timesteps)
    if (
        not isinstance(timesteps, (list, tuple))
        or not timesteps
        or any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in timesteps)
        or (num_train_timesteps is not None and max(timesteps) >= int(num_train_timesteps))
        or len(set(timesteps)) != len(timesteps)
    ):
        raise ValueError(
            f"{key}.timesteps must be a non-empty list of distinct ints in [0, {bound}), got {timesteps!r}"
        )
    for name, value in (("draws", draws), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key}.{name} must be a positive integer, got {value!r}")


def value_gap_scores(models: dict, scheduler, pool, timesteps, seed: int, draws: int = 1, batch_size: int = 256):
    """``Σ_t z_t(ℓ_i(θ′, t, ε) − ℓ_i(θ, t, ε))`` of every pool sample, z-scored again: [N] float32, unitless.

    Args:
        models: ``{"val": θ, "pool": θ′}``, proxies on the CPU; scheduler: their noise scheduler;
        pool: an image-caption dataset of pixels (uint8 [N, C, H, W]) the proxies' shape;
        timesteps: distinct ints in [0, T); seed: the noise seed; draws: noise draws per (sample, t), averaged
        (one draw shared by θ and θ′: :func:`alchemist_pl.audit.crn_noise`); batch_size: samples per forward.

    Raises:
        ValueError: no timesteps, a timestep outside [0, T) of ``scheduler`` or repeated, draws or batch_size
            not a positive int (:func:`check_settings`).
    """
    num_t = getattr(getattr(scheduler, "config", None), "num_train_timesteps", None)
    check_settings(timesteps, draws, batch_size, num_t, "value_gap_scores")
    losses = audit.score_losses(models, scheduler, pool, {"own": pool.caption_rows}, timesteps, seed, draws,
                                batch_size, terms=TERMS)  # fmt: skip
    gap = losses[("pool", "own")] - losses[("val", "own")]  # [n_t, N]
    log.info(
        "value gap per t (mean over the pool): %s", {t: round(float(g), 6) for t, g in zip(timesteps, gap.mean(1))}
    )
    return audit.band_score(gap, range(len(timesteps))).astype(np.float32)


class ValueGapScorer:
    """A pool scorer: the value gap of a rating run's final proxies, ``Σ_t z_t(ℓ_i(θ′, t, ε) − ℓ_i(θ, t, ε))``,
    [N] unitless z-scores.

    For each timestep t of ``timesteps``, every pool sample gets ``draws`` noise draws ε shared by θ and θ′
    (common random numbers, :func:`alchemist_pl.audit.crn_noise`: a function of (seed, t, draw)); ℓ is the
    per-sample denoising loss of the bilevel loop's proxy hook (:func:`alchemist_pl.audit.denoising_loss`,
    for a diffusers UNet the mean squared ε-prediction error over [C, H, W] of images in [-1, 1]), averaged
    over the draws. The [n_t, N] gaps are z-scored over the pool per t, summed over t and z-scored again
    (:func:`alchemist_pl.audit.band_score`). High = θ′, trained on the pool, fits the sample worse than θ,
    fitted to D_val: the sample is one the clean data explains (keep).

    Cost: two proxy forwards per sample, timestep and draw, against the rater's one small forward per sample:
    with the default proxy at 32 px about 10 ms of CPU per sample and timestep on one thread, about 130× the
    rater's cost side by side (benchmarks/results/rater-amortisation-f2.md). What it buys over the rater's
    amortised estimate of the same signal depends on the rating (benchmarks/results/value-gap-scoring-f2*.md).

    ``scorer(pool)`` -> [N] float32 aligned with ``pool.sample_ids``.

    Args:
        run: a rate stage's output folder (``bilevel=value_gap``).
        checkpoint: a checkpoint of that run: a path, or a bilevel iteration N (``RUN/checkpoints/iteration=N.ckpt``);
            None: ``RUN/checkpoints/last.ckpt`` (the end of training).
        timesteps: ints in [0, T); draws: noise draws per (sample, t); seed: the noise seed;
        batch_size: samples per forward.
        name: the scorer's name in the scores file's metadata.

    Raises:
        ValueError: no timesteps, a timestep outside [0, T) or repeated, draws < 1; when called, a run without θ′ or a pool
            whose channels or resolution differ from the proxy's (:func:`load_rating_proxies`,
            :func:`check_pool_shape`).
        FileNotFoundError: when called, a run folder without config or checkpoint.
    """

    def __init__(self, run, checkpoint=None, timesteps=(50, 100), draws: int = 1, seed: int = 0,
                 batch_size: int = 256, name: str = "value_gap"):  # fmt: skip
        self.run, self.checkpoint = Path(run), checkpoint
        self.timesteps, self.draws, self.seed = [int(t) for t in timesteps], int(draws), int(seed)
        self.batch_size, self.name = int(batch_size), name
        if not self.timesteps or min(self.timesteps) < 0 or len(set(self.timesteps)) != len(self.timesteps):
            raise ValueError(
                f"scorer.timesteps must be a non-empty list of distinct ints in [0, T), got {self.timesteps}"
            )
        if self.draws < 1:
            raise ValueError(f"scorer.draws must be at least 1, got {self.draws}")
        self.global_step = None

    def __call__(self, pool) -> np.ndarray:
        rating = load_rating_proxies(self.run, self.checkpoint)
        self.checkpoint, self.global_step = rating.checkpoint, rating.global_step
        num_t = rating.scheduler.config.num_train_timesteps
        if max(self.timesteps) >= num_t:
            raise ValueError(f"scorer.timesteps must lie in [0, {num_t}), got {self.timesteps}")
        check_pool_shape(self.run, rating.cfg, pool)
        return value_gap_scores(rating.models, rating.scheduler, pool, self.timesteps, self.seed, self.draws,
                                self.batch_size)  # fmt: skip

    def metadata(self) -> dict:
        params = {"timesteps": self.timesteps, "draws": self.draws, "seed": self.seed, "batch_size": self.batch_size}
        checkpoint = None if self.checkpoint is None else str(self.checkpoint)
        return {"scorer": self.name, "params": params, "run": str(self.run), "checkpoint": checkpoint,
                "global_step": self.global_step}  # fmt: skip
