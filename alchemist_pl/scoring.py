"""Scoring a pool: rater inference (order-free, in one process or split across the ranks of a
process group; the rater's ``score`` depends on its own sample only) and the CLIP-score baseline
scorer (:func:`caption_agreement`), beside the image heuristics of :mod:`alchemist_pl.heuristics`,
and the oracle (:class:`GroundTruthScorer`) on a pool with planted noise.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from . import heuristics
from .corruption import CLEAN, ground_truth_for, read_ground_truth
from .domain_encoder import DomainEncoder, load_domain_encoder
from .errors import DataError
from .pixels import to_model_range
from .runtime import process_group


def rater_hash(rater: torch.nn.Module) -> str:
    """sha256 (hex) of the rater's parameters and buffers, by name: the same weights, the same hash."""
    h = hashlib.sha256()
    for name, t in sorted(rater.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def score_dataset(rater, dataset, batch_size: int = 256, device="cpu") -> np.ndarray:
    """Order-free score of every sample of ``dataset``: [N] float32 instance logits.

    Each score depends on its own sample only (``Rater.score``), so batch size and order do not
    change it beyond float rounding.
    """
    out = np.full(len(dataset), np.nan, dtype=np.float32)
    _score_into(out, rater, dataset, batch_size, device)
    return out


def _score_into(out: np.ndarray, rater, dataset, batch_size: int, device) -> None:
    """Write the score of each item of ``dataset`` into ``out[item["index"]]``."""
    was_training = rater.training
    rater.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in loader:
        s = rater.score(batch["image"].to(device), batch["pooled"].to(device))
        out[batch["index"].numpy()] = s.float().cpu().numpy()
    rater.train(was_training)


@torch.no_grad()
def score_dataset_distributed(rater, dataset, batch_size: int = 256, device="cpu") -> np.ndarray:
    """:func:`score_dataset` split across the ranks of the current ``torch.distributed`` group.

    Rank r of W scores positions r, r + W, r + 2W, ...; the shards are all-gathered, so every rank
    returns the same [N] float32 array, equal to a single process's :func:`score_dataset` (each
    score depends on its own sample only). Without an initialised process group (one process, or
    the main process after a ``ddp_spawn`` fit) it is :func:`score_dataset`.
    """
    world, rank = process_group()
    if world == 1:
        return score_dataset(rater, dataset, batch_size, device)
    n = len(dataset)
    per = math.ceil(n / world)
    full = np.full(n, np.nan, dtype=np.float32)
    mine = list(range(rank, n, world))
    _score_into(full, rater, torch.utils.data.Subset(dataset, mine), batch_size, device)
    local = torch.full((per,), float("nan"), dtype=torch.float32)
    local[: len(mine)] = torch.from_numpy(full[mine])
    local = local.to(device)
    parts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(parts, local)
    # parts[r][j] is the score of position r + j * W
    return torch.stack(parts).cpu().T.reshape(-1)[:n].numpy().copy()


@torch.no_grad()
def caption_agreement(encoder: DomainEncoder, dataset, batch_size: int = 512) -> torch.Tensor:
    """Per-sample caption-image agreement, the CLIP-score filter of DataComp (Gadre et al. 2023) with
    the domain evaluator in place of CLIP: ``cos(E_img(x_i), E_txt(c_i))`` in [-1, 1].

    Args:
        encoder: a trained :class:`DomainEncoder` (trained on clean images; never on the pool it filters).
        dataset: an :class:`~alchemist_pl.data.ImageCaptionDataset` (uint8 images [N, 3, H, W], MiniLM
            sentence embeddings of its captions).

    Returns:
        [N] float32, aligned with ``dataset.sample_ids``; higher = caption and image agree more.
    """
    encoder.eval()
    out = torch.empty(len(dataset), dtype=torch.float32)
    for start in range(0, len(dataset), batch_size):
        imgs = to_model_range(dataset.images[start : start + batch_size])
        text = F.normalize(dataset.text.pooled[dataset.caption_rows[start : start + batch_size]].float(), dim=-1)
        out[start : start + len(imgs)] = (encoder.embed(imgs) * text).sum(-1)
    return out


class HeuristicScorer:
    """An image heuristic of the paper's Table 1 (:mod:`alchemist_pl.heuristics`) as a pool scorer.

    ``scorer(pool)`` -> [N] float32 scores aligned with ``pool.sample_ids`` (higher = more of the
    property). ``params``: the heuristic's keyword arguments (frequency: cutoff; edge_density: threshold).

    Raises:
        ValueError: unknown ``name`` (or, when called, bad parameters).
    """

    def __init__(self, name: str, params: dict | None = None):
        if name not in heuristics.SCORERS:
            raise ValueError(f"scorer must be one of {sorted(heuristics.SCORERS)}, got {name!r}")
        self.name, self.params = name, dict(params or {})

    def __call__(self, pool) -> np.ndarray:
        return heuristics.score_images(pool.images.numpy(), self.name, **self.params).astype(np.float32)

    def metadata(self) -> dict:
        return {"scorer": self.name, "params": self.params}


class CaptionAgreementScorer:
    """The CLIP-score filter with the domain evaluator (:func:`caption_agreement`) as a pool scorer.

    Args:
        encoder: keyword arguments of :func:`alchemist_pl.domain_encoder.load_domain_encoder`
            (data to train on: clean data such as D_val, never the pool it filters).
        name: the scorer's name in the scores file's metadata.
    """

    def __init__(self, encoder: dict, name: str = "clip_score"):
        self.encoder_args, self.name = dict(encoder), name
        self.encoder_info = None

    def __call__(self, pool) -> np.ndarray:
        encoder, self.encoder_info = load_domain_encoder(**self.encoder_args)
        return caption_agreement(encoder, pool).numpy()

    def metadata(self) -> dict:
        return {"scorer": self.name, "params": {}, "encoder": self.encoder_info}


class GroundTruthScorer:
    """The oracle on a pool with planted noise (:mod:`alchemist_pl.corruption`): score 1.0 for a
    clean sample, 0.0 for a corrupted one, read from the pool's ground truth. Not a method: the
    ceiling of any scorer's selection on planted noise, and a check that the score -> prune ->
    subset path keeps what scores high.

    ``scorer(pool)`` -> [N] float32 aligned with ``pool.sample_ids``.

    Args:
        pool_path: the pool's path (``data.train_path``); its ground truth is the
            ``corruptions.parquet`` beside it (:func:`~alchemist_pl.corruption.ground_truth_for`).
        name: the scorer's name in the scores file's metadata.

    Raises:
        DataError: the pool has no ground truth, or a pool sample has no row in it (names the file
            and the first such sample_ids).
    """

    def __init__(self, pool_path: str, name: str = "oracle"):
        self.pool_path, self.name = str(pool_path), name
        self.ground_truth = None

    def __call__(self, pool) -> np.ndarray:
        self.ground_truth = ground_truth_for(self.pool_path)
        if self.ground_truth is None:
            raise DataError(
                f"the oracle scorer needs a pool with planted noise: no corruptions.parquet in or beside "
                f"data.train_path={self.pool_path} (use corruption=web)"
            )
        truth = read_ground_truth(self.ground_truth)
        missing = [i for i in pool.sample_ids if i not in truth]
        if missing:
            raise DataError(
                f"{self.ground_truth}: {len(missing)} of {len(pool)} pool samples have no ground-truth row "
                f"(first: {missing[:3]}); was it written for another pool?"
            )
        return np.array([truth[i] == CLEAN for i in pool.sample_ids], dtype=np.float32)

    def metadata(self) -> dict:
        return {"scorer": self.name, "params": {}, "ground_truth": str(self.ground_truth)}
