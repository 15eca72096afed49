"""The downstream model's evaluation callback from the config: the ``evaluator`` group's metrics
(instantiated) with the ``eval`` block's prompts, sampler settings and schedule."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from ..evaluation import GenerationEvaluation
from ..pixels import to_model_range
from ..preflight import check_evaluation


def make_evaluation(cfg: DictConfig, test_set, grid_path=None, curve_path=None, decode=None):
    """The :class:`~alchemist_pl.evaluation.GenerationEvaluation` callback ``cfg.eval`` and
    ``cfg.evaluator`` describe.

    Prompts: the first ``eval.num_images`` samples of ``test_set`` (captions unseen in training);
    reference: all of ``test_set``'s images (pixels). ``decode``: latents -> pixels for a model over
    VAE latents (None: pixels). Returns (callback, info about the evaluator).
    """
    e = cfg.eval
    m = int(e.num_images)
    check_evaluation(m, cfg.evaluator.get("kid_subset_size"), len(test_set), f"data.test_path={cfg.data.test_path}")
    rows = test_set.caption_rows[:m]
    prompts = {
        "states": test_set.text.states[rows].float(),
        "mask": test_set.text.mask[rows],
        "pooled": test_set.text.pooled[rows].float(),
        "captions": test_set.captions[:m],
    }
    metrics = instantiate(cfg.evaluator, _convert_="all")
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
        decode=decode,
    )
    return callback, {**metrics.info, "num_images": m, "reference_images": len(test_set)}
