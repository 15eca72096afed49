"""Caption agreement of a pool, cross-fitted on the pool itself.

The pool is split into ``folds`` folds by a hash of each ``sample_id``. For each fold a
:class:`~alchemist_pl.domain_encoder.DomainEncoder` (an image encoder trained contrastively against the
frozen MiniLM caption embeddings) is trained on the *other* folds and scores the fold by
``cos(E_img(x_i), E_txt(c_i))``, the CLIP-score filter of DataComp (Gadre et al. 2023). No sample is
scored by an encoder that saw it (cross-fitting), so a mismatched pair cannot be memorised into a good
score: the encoder learns the pool's majority image-caption relation and a sample that breaks it scores
low. An encoder trained on the clean D_val alone sees far fewer captions and misses more mismatches
(benchmarks/results/caption-crossfit-f2.md).
"""

from __future__ import annotations

import hashlib
import logging
import time

import numpy as np
import torch

from .domain_encoder import train_domain_encoder
from .runtime import preserved_rng
from .scoring import caption_agreement

log = logging.getLogger(__name__)


def fold_of(sample_ids, folds: int) -> np.ndarray:
    """The fold of each sample: ``int(sha256(sample_id)[-8 bytes]) mod folds``, [N] int64; it depends on the
    sample_id alone, so a sample keeps its fold whatever the pool's order or size."""
    return np.array(
        [int.from_bytes(hashlib.sha256(s.encode()).digest()[-8:], "big") % folds for s in sample_ids], dtype=np.int64
    )


class _Rows:
    """The rows ``index`` of an image-caption dataset: what :func:`train_domain_encoder` and
    :func:`caption_agreement` read (``images``, ``text``, ``caption_rows``, ``len``)."""

    def __init__(self, dataset, index: torch.Tensor):
        self.images, self.text, self.caption_rows = dataset.images[index], dataset.text, dataset.caption_rows[index]

    def __len__(self) -> int:
        return len(self.images)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class CrossFitCaptionScorer:
    """A pool scorer: the caption agreement ``cos(E_img(x_i), E_txt(c_i))`` in [-1, 1] of every sample under
    an encoder trained on the other folds of the same pool (module docstring).

    ``scorer(pool)`` -> [N] float32 aligned with ``pool.sample_ids``; higher = the caption describes the
    image as the rest of the pool's captions describe theirs (keep).

    Cost: ``folds`` encoder trainings of ``epochs`` passes over ``(folds − 1) / folds`` of the pool, then one
    encoder forward per sample: about 10 ms of CPU per pool sample at 32 px with the defaults on one thread
    (benchmarks/results/caption-crossfit-f2.md). Images are pixels ([N, 3, H, W] uint8) at any resolution.

    Args:
        folds: folds of the pool (at least 2); each encoder trains on ``folds − 1`` of them.
        epochs: passes of each encoder over its training folds; batch_size: contrastive batch, at least 2
            (a fold with fewer training samples trains on all of them in one batch); lr: peak learning rate
            (one-cycle); seed: the encoders' initialisation and batch order (fold ``f`` uses ``seed + f``);
            width, num_features: the encoder's size, multiples of 8
            (:class:`~alchemist_pl.domain_encoder.DomainEncoder`, GroupNorm in 8 groups).
        name: the scorer's name in the scores file's metadata.

    Raises:
        ValueError: folds < 2, a non-positive epochs, width or num_features, a batch_size < 2, a width or
            num_features that is not a multiple of 8, an lr that is not a positive finite number, a seed that is
            not an integer; when called, a pool :meth:`check_pool` refuses (fewer than ``2 · folds`` samples, an
            empty fold, or training folds with fewer than two distinct captions; names the fold and the counts).
    """

    def __init__(self, folds: int = 2, epochs: int = 10, batch_size: int = 256, lr: float = 2e-3, seed: int = 0,
                 width: int = 32, num_features: int = 128, name: str = "caption_crossfit"):  # fmt: skip
        if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
            raise ValueError(
                f"folds must be an integer of at least 2 (each fold is scored by the others), got {folds!r}"
            )
        self.folds = folds
        self.epochs = _positive_int("epochs", epochs)
        self.batch_size = _positive_int("batch_size", batch_size)
        if batch_size < 2:  # one sample per batch: a 1 x 1 contrastive softmax, a zero loss, an untrained encoder
            raise ValueError(f"batch_size must be at least 2 (a contrastive batch), got {batch_size}")
        self.width = _positive_int("width", width)
        self.num_features = _positive_int("num_features", num_features)
        for key, value in (("width", width), ("num_features", num_features)):
            if value % 8:  # the encoder's GroupNorm(8, channels) layers would refuse it only when a fold trains
                raise ValueError(f"{key} must be a multiple of 8 (the encoder's GroupNorm groups), got {value}")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (np.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {lr!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.lr, self.seed, self.name = float(lr), int(seed), name
        self.fold_sizes = None
        self.train_time_s = None

    def check_pool(self, pool) -> np.ndarray:
        """Whether ``pool`` (``sample_ids``, ``caption_rows``) can be cross-fitted, before anything trains; returns
        its [N] folds (:func:`fold_of`).

        Raises:
            ValueError: fewer than ``2 · folds`` samples, a fold that holds no sample, or a fold whose other folds
                hold fewer than two distinct captions (names the fold and the counts).
        """
        n = len(pool)
        if n < 2 * self.folds:
            raise ValueError(f"cross-fitting {self.folds} folds needs at least {2 * self.folds} pool samples, got {n}")
        fold = fold_of(pool.sample_ids, self.folds)
        sizes = np.bincount(fold, minlength=self.folds)
        if (sizes == 0).any():
            raise ValueError(
                f"fold {int(np.flatnonzero(sizes == 0)[0])} of {self.folds} holds none of the {n} pool samples "
                f"(fold sizes {sizes.tolist()}, by sha256 of the sample_id); use fewer folds"
            )
        for f in range(self.folds):
            trained = torch.from_numpy(np.flatnonzero(fold != f))
            captions = len(torch.unique(pool.caption_rows[trained]))
            if captions < 2:
                raise ValueError(
                    f"fold {f}: the {len(trained)} samples of the other folds have {captions} distinct caption(s); "
                    "the contrastive encoder needs at least two"
                )
        return fold

    def __call__(self, pool) -> np.ndarray:
        n = len(pool)
        fold = self.check_pool(pool)
        out = np.full(n, np.nan, dtype=np.float32)
        started = time.time()
        self.fold_sizes = [int((fold == f).sum()) for f in range(self.folds)]
        for f in range(self.folds):
            scored = torch.from_numpy(np.flatnonzero(fold == f))
            trained = torch.from_numpy(np.flatnonzero(fold != f))
            train_set = _Rows(pool, trained)
            with preserved_rng():
                encoder = train_domain_encoder(
                    train_set, self.epochs, min(self.batch_size, len(train_set)), self.lr, self.seed + f,
                    self.width, self.num_features,
                )  # fmt: skip
            out[scored.numpy()] = caption_agreement(encoder, _Rows(pool, scored)).numpy()
            log.info("caption cross-fit: fold %d/%d scored (%d samples, encoder on %d)", f + 1, self.folds,
                     len(scored), len(trained))  # fmt: skip
        self.train_time_s = round(time.time() - started, 1)
        return out

    def metadata(self) -> dict:
        params = {"folds": self.folds, "epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                  "seed": self.seed, "width": self.width, "num_features": self.num_features}  # fmt: skip
        return {"scorer": self.name, "params": params, "fold_sizes": self.fold_sizes, "time_s": self.train_time_s}
