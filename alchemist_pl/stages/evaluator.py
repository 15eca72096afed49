"""The downstream model's evaluation as ``cfg.eval`` describes it: the domain evaluator (cached
encoder) and the :class:`~alchemist_pl.evaluation.GenerationEvaluation` callback."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from ..domain_encoder import load_domain_encoder
from ..evaluation import GenerationEvaluation
from ..metrics import DomainMetrics, StandardMetrics
from ..pixels import to_model_range


def domain_encoder(cfg: DictConfig, **override):
    """The cached domain evaluator ``cfg.eval.encoder`` describes, with ``override`` (keys of
    ``eval.encoder``) on top; trained on clean images on first use. Returns (encoder, info)."""
    e = OmegaConf.merge(cfg.eval.encoder, override)
    return load_domain_encoder(
        e.data_path,
        cfg.data.resolution,
        cfg.data.cache_dir,
        cfg.data.max_tokens,
        test_path=cfg.data.test_path,
        epochs=e.epochs,
        batch_size=e.batch_size,
        lr=e.lr,
        seed=e.seed,
    )


def make_evaluation(cfg: DictConfig, test_set, grid_path=None, curve_path=None):
    """The :class:`~alchemist_pl.evaluation.GenerationEvaluation` callback ``cfg.eval`` describes.

    Prompts: the first ``eval.num_images`` samples of ``test_set`` (captions unseen in training);
    reference: all of ``test_set``'s images. Returns (callback, info about the evaluator).

    Raises:
        ValueError: ``eval.backend`` is neither ``domain`` nor ``standard``.
    """
    e = cfg.eval
    m = min(int(e.num_images), len(test_set))
    rows = test_set.caption_rows[:m]
    prompts = {
        "states": test_set.text.states[rows].float(),
        "mask": test_set.text.mask[rows],
        "pooled": test_set.text.pooled[rows].float(),
        "captions": test_set.captions[:m],
    }
    if e.backend == "domain":
        encoder, info = domain_encoder(cfg)
        metrics = DomainMetrics(encoder, kid_subset_size=int(e.kid_subset_size))
    elif e.backend == "standard":
        metrics, info = StandardMetrics(), {"backend": "standard"}
    else:
        raise ValueError(f"eval.backend must be 'domain' or 'standard', got {e.backend!r}")
    metrics.set_reference(to_model_range(test_set.images))
    callback = GenerationEvaluation(
        metrics,
        prompts,
        every_n_steps=e.every_n_steps,
        sample_steps=e.sample_steps,
        guidance_scale=e.guidance_scale,
        seed=e.seed,
        batch_size=e.batch_size,
        grid_path=grid_path,
        curve_path=curve_path,
    )
    return callback, {**info, "num_images": m, "reference_images": len(test_set)}
