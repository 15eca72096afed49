"""Checks that a stage runs before it trains, and checks that it trained what the config asked for.

A config that cannot succeed fails before the first training step, naming the config key to
change: a rank's share of a split shorter than one batch, trainer keys a stage sets itself, an
evaluation the test split or the metrics cannot support, a training length the data cannot fill.
After fitting, :func:`check_trained` refuses a stage that trained no step.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback

from .data import iter_samples
from .errors import DataError
from .pruning import check_keep_ratio, check_method

#: trainer settings each stage derives from its own keys; setting them under ``trainer`` is refused
STAGE_TRAINER_KEYS = {
    "rate": {"max_steps": "rate.max_iterations", "max_epochs": "rate.max_epochs"},
    "train": {
        "max_steps": "train.max_steps",
        "max_epochs": "train.max_steps",
        "gradient_clip_val": "train.gradient_clip_val",
    },
}
#: trainer arguments every stage builds from other config groups
BUILT_TRAINER_KEYS = {"logger": "logger", "callbacks": "callbacks", "default_root_dir": "paths.output_dir"}

#: FID's covariance needs at least two images on each side
MIN_FID_IMAGES = 2


def check_trainer_keys(trainer_cfg, stage: str) -> None:
    """Refuse ``trainer.<key>`` settings the stage overrides (they would be recorded and ignored).

    Raises:
        ValueError: naming each such key and the key that sets it.
    """
    owned = {**STAGE_TRAINER_KEYS.get(stage, {}), **BUILT_TRAINER_KEYS}
    clash = [k for k in owned if k in trainer_cfg]
    if clash:
        hints = "; ".join(f"trainer.{k}: set {owned[k]} instead" for k in clash)
        raise ValueError(f"the {stage} stage sets {', '.join('trainer.' + k for k in clash)} itself ({hints})")


def samples_per_rank(n: int, world_size: int) -> int:
    """Samples each of ``world_size`` ranks gets from a split of ``n`` when the tail that does not
    divide evenly is dropped (the shortest share; every rank runs as many batches as it)."""
    return n // world_size


def check_batches_per_rank(n: int, world_size: int, batch_size: int, what: str, key: str) -> int:
    """Full batches of ``batch_size`` per rank (the last partial batch dropped); at least one.

    Raises:
        DataError: a rank's share is shorter than one batch (names ``what``, the share and ``key``).
    """
    share = samples_per_rank(n, world_size)
    if share < batch_size:
        ranks = f"{share} per rank on {world_size} ranks" if world_size > 1 else f"{share}"
        raise DataError(
            f"{what} has {n} samples ({ranks}), fewer than one batch of {key}={batch_size}: "
            f"lower {key}, add samples{' or use fewer ranks' if world_size > 1 else ''}"
        )
    return share // batch_size


def check_evaluation(num_images: int, kid_subset_size: int | None, test_size: int, test_key: str) -> None:
    """The evaluation ``eval`` and ``evaluator`` describe can run on a test split of ``test_size`` images.

    Raises:
        ValueError: ``eval.num_images`` below FID's minimum or above the test split's size, or
            ``evaluator.kid_subset_size`` (None: no KID) above the number of generated images.
    """
    if num_images < MIN_FID_IMAGES:
        raise ValueError(f"eval.num_images={num_images}: FID needs at least {MIN_FID_IMAGES} generated images")
    if num_images > test_size:
        raise ValueError(
            f"eval.num_images={num_images} prompts asked for, but the test split {test_key} has {test_size} "
            f"samples: lower eval.num_images or use a larger test split"
        )
    if kid_subset_size is not None and int(kid_subset_size) > num_images:
        raise ValueError(
            f"evaluator.kid_subset_size={kid_subset_size} is more than the eval.num_images={num_images} generated "
            f"images: KID draws subsets of that size from each side; lower evaluator.kid_subset_size"
        )


class PlannedTraining(Callback):
    """Refuses, at the start of fitting, a run whose data cannot fill the configured length.

    With ``max_steps`` > 0 and ``max_epochs`` > 0, the data gives ``max_epochs * batches per
    epoch * optimizer_steps_per_batch`` optimizer steps; fewer than ``max_steps`` means the run
    would stop early. Zero batches per epoch is refused too.

    Args:
        steps_key: the key that sets the length, counted in training batches (``rate.max_iterations``).
        epochs_key, batch_keys: the keys of the epoch count and the batch sizes, named in errors.
        optimizer_steps_per_batch: optimizer steps one training batch takes (2 in the bilevel loop:
            one proxy step and one rater step), i.e. Lightning's ``global_step`` per unit of ``steps_key``.
    """

    def __init__(self, steps_key: str, epochs_key: str, batch_keys: str, optimizer_steps_per_batch: int = 1):
        self.steps_key, self.epochs_key, self.batch_keys = steps_key, epochs_key, batch_keys
        self.per_batch = optimizer_steps_per_batch

    def on_train_start(self, trainer, pl_module) -> None:
        batches = trainer.num_training_batches
        if batches == 0:
            raise ValueError(f"no training batch on this rank: lower {self.batch_keys} or add samples")
        if trainer.max_steps > 0 and trainer.max_epochs is not None and trainer.max_epochs > 0:
            planned = trainer.max_epochs * int(batches) * self.per_batch
            if planned < trainer.max_steps:
                units = trainer.max_steps // self.per_batch
                raise ValueError(
                    f"{self.steps_key}={units} cannot be reached: {self.epochs_key}={trainer.max_epochs} epochs of "
                    f"{int(batches)} batches per rank give {planned // self.per_batch}; raise {self.epochs_key} or "
                    f"lower {self.steps_key}"
                )


def check_trained(global_step: int | None, stage: str, keys: str) -> None:
    """Refuse a fit that ran no optimizer step (e.g. every rank's share shorter than one batch).

    ``global_step`` None (unknown: a ``ddp_spawn`` fit does not return it) is accepted.

    Raises:
        RuntimeError: naming the stage and the keys to change.
    """
    if global_step is not None and global_step == 0:
        raise RuntimeError(f"the {stage} stage trained 0 steps: no training batch was drawn; check {keys}")


def fitted_steps(trainer) -> int | None:
    """Optimizer steps the fit ran in this process, or None where it cannot say: a fit whose ranks
    ran in spawned processes (``ddp_spawn``) does not carry ``global_step`` back."""
    if getattr(trainer.strategy, "_start_method", None) in ("spawn", "fork", "forkserver"):
        return None
    return int(trainer.global_step)


def check_config(cfg) -> None:
    """Every check a stage's config allows before any data is trained on: trainer keys the stage
    sets itself (:func:`check_trainer_keys`), the selection (:func:`check_selection`) and, when
    the stage trains the downstream model with evaluation, the evaluation against the test
    split's size (:func:`check_evaluation`). A pipeline checks all of them before rating.

    Raises:
        ValueError: see those functions.
        DataError: the test split cannot be read.
    """
    stages = ("rate", "prune", "train") if cfg.stage == "pipeline" else (cfg.stage,)
    for stage in stages:
        if stage in STAGE_TRAINER_KEYS:
            check_trainer_keys(cfg.trainer, stage)
    if cfg.stage == "pipeline":
        check_selection(cfg.method, cfg.keep_ratio, cfg.pipeline.compare)
    elif cfg.stage in ("prune", "train") and not cfg.get("subset_path"):
        check_selection(cfg.method, cfg.keep_ratio)
    if cfg.get("data") is not None and cfg.data.get("latents"):
        check_latent_space(cfg, stages)
    e = cfg.get("eval")
    if "train" in stages and e is not None and e.enabled:
        size = count_samples(cfg.data.test_path, cfg.data.get("limit_test"))
        kid = (cfg.get("evaluator") or {}).get("kid_subset_size")
        check_evaluation(int(e.num_images), kid, size, f"data.test_path={cfg.data.test_path}")


def check_latent_space(cfg, stages) -> None:
    """With ``data.latents=true``: the latent side ``data.image_size`` halves evenly through each UNet's
    downsampling blocks (``proxy.unet``, ``model.unet``), and the rate stage does not stream pixels.

    Raises:
        ValueError: naming the UNet's key, its blocks and the latent size; or ``rate.streaming=true``.
    """
    size = int(cfg.data.image_size)
    nets = {"rate": ("proxy.unet", cfg.get("proxy")), "train": ("model.unet", cfg.get("model"))}
    for stage, (key, node) in nets.items():
        unet = node.get("unet") if stage in stages and node is not None else None
        blocks = None if unet is None else unet.get("block_out_channels")
        if blocks is not None and size % 2 ** (len(blocks) - 1):
            raise ValueError(
                f"{key} downsamples {len(blocks) - 1} times, but the latents are {size} x {size} "
                f"(data.image_size, from data.resolution / vae.downsample_factor): use a UNet with fewer "
                f"blocks or a larger data.resolution"
            )
    if "rate" in stages and cfg.get("rate") is not None and cfg.rate.get("streaming"):
        raise ValueError(
            "rate.streaming=true scores decoded pixels shard by shard, but with data.latents=true the rater "
            "takes VAE latents: set rate.streaming=false"
        )


def check_selection(method: str, keep_ratio, compare=()) -> None:
    """``method``, ``keep_ratio`` and the pipeline's compared runs name a selection that exists.

    Raises:
        ValueError: an unknown method (also in ``pipeline.compare``), a keep_ratio outside (0, 1].
    """
    check_method(method)
    for name in compare:
        if name not in ("full", "random", "alchemist"):
            check_method(name)
    check_keep_ratio(keep_ratio)


def count_samples(path, limit: int | None = None) -> int:
    """Samples in a split (at most ``limit``), read without decoding images."""
    n = 0
    for _ in iter_samples(path):
        n += 1
        if limit is not None and n >= limit:
            break
    return n
