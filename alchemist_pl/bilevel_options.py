"""Validation of the bilevel loop's options (:class:`alchemist_pl.bilevel.BilevelRater` arguments)."""

from __future__ import annotations

import torch

from .diffusion import min_snr_weights

RATER_SIGNALS = ("first_order", "value_gap", "exact")
OBJECTIVES = ("centred", "literal")
NOISE_MODES = ("independent", "shared")
TIMESTEP_MODES = ("shared", "stratified", "uniform")
LOSS_WEIGHTINGS = ("none", "min_snr")
VALUE_WEIGHTS = ("uniform", "rater")
CONTRAST_MODELS = ("proxy", "value")


def _range(name: str, value, num_t: int) -> tuple[int, int]:
    low, high = int(value[0]), int(value[1])
    if not (0 <= low < high <= num_t):
        raise ValueError(f"{name} must satisfy 0 <= low < high <= {num_t}, got {list(value)}")
    return low, high


def check_options(h, noise_scheduler) -> tuple[tuple[int, int], tuple[int, int]]:
    """Check the options in ``h`` (the module's hyperparameters) against each other.

    Returns:
        ``(rater_timesteps, contrast_timesteps)`` as (low, high) int pairs.

    Raises:
        ValueError: an unknown choice, a range outside [0, num_train_timesteps), a negative weight
            or probability, ``inner_steps``, ``draws_per_sample`` or ``contrast_captions`` < 1, or a
            combination the signal does not support (the exact estimator with a caption contrast or K > 1 draws;
            the literal objective with a caption contrast; θ′'s contrast without θ′; replay with the exact
            estimator or the literal objective; ``replay_steps`` < 0; the buffer's capacity is checked by
            :class:`alchemist_pl.replay.SignalReplay`).
    """
    num_t = noise_scheduler.config.num_train_timesteps
    rater_t = _range("rater_timesteps", h.rater_timesteps, num_t)
    contrast_t = _range("contrast_timesteps", h.contrast_timesteps, num_t)
    for name, allowed in (
        ("rater_signal", RATER_SIGNALS),
        ("rater_objective", OBJECTIVES),
        ("rater_noise", NOISE_MODES),
        ("rater_loss_weighting", LOSS_WEIGHTINGS),
        ("rater_timestep_sampling", TIMESTEP_MODES),
        ("value_weights", VALUE_WEIGHTS),
        ("value_timesteps", ("signal", "uniform")),
        ("contrast_model", CONTRAST_MODELS),
        ("replay_objective", ("instance", "regression")),
    ):
        if h[name] not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {h[name]!r}")
    if h.lookahead_lr <= 0:
        raise ValueError(f"lookahead_lr must be > 0, got {h.lookahead_lr}")
    if not 0 <= h.caption_dropout < 1:
        raise ValueError(f"caption_dropout must be in [0, 1), got {h.caption_dropout}")
    if h.logit_anchor < 0:
        raise ValueError(f"logit_anchor must be >= 0, got {h.logit_anchor}")
    decay = h.get("ema_decay", 0.0)
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1:
        raise ValueError(f"ema_decay must be a number in [0, 1), got {decay!r}")
    if h.caption_contrast_weight < 0:
        raise ValueError(f"caption_contrast_weight must be >= 0, got {h.caption_contrast_weight}")
    if h.inner_steps < 1 or h.draws_per_sample < 1:
        raise ValueError(f"inner_steps and draws_per_sample must be >= 1, got {h.inner_steps}, {h.draws_per_sample}")
    if h.contrast_captions < 1:
        raise ValueError(f"contrast_captions must be >= 1, got {h.contrast_captions}")
    if h.contrast_model == "value" and h.rater_signal != "value_gap":
        raise ValueError(f"contrast_model=value needs rater_signal=value_gap (θ′), got {h.rater_signal!r}")
    if h.rater_signal == "exact" and (h.caption_contrast_weight > 0 or h.draws_per_sample > 1):
        raise ValueError("rater_signal=exact takes neither a caption contrast nor draws_per_sample > 1")
    if h.rater_signal == "first_order" and h.rater_objective == "literal" and h.caption_contrast_weight > 0:
        raise ValueError("the literal objective takes no caption contrast (it has no common scale)")
    if isinstance(h.replay_steps, bool) or not isinstance(h.replay_steps, int) or h.replay_steps < 0:
        raise ValueError(f"replay_steps must be an integer >= 0, got {h.replay_steps!r}")
    if h.replay_steps > 0 and (
        h.rater_signal == "exact" or (h.rater_signal == "first_order" and h.rater_objective == "literal")
    ):
        raise ValueError(
            "replay_steps > 0 needs a signed per-sample signal: rater_signal value_gap or centred first_order"
        )
    if h.rater_loss_weighting == "min_snr":
        min_snr_weights(noise_scheduler, torch.tensor([rater_t[0]]), h.min_snr_gamma)  # checks γ and prediction
    return rater_t, contrast_t
