"""The domain evaluator: a small image encoder trained contrastively against the frozen MiniLM
caption embeddings (:mod:`alchemist_pl.text`) on clean training images, and its cache.

No package ships Inception or CLIP weights, and this tool never downloads any; the encoder's
pooled features ([N, 128]) stand in for Inception's (domain FID / KID) and its 384-d embedding,
aligned with the caption space, for CLIP's (domain CLIP score); see :mod:`alchemist_pl.metrics`.

The encoder is trained once per (training data, encoder settings) and cached as
``{cache_dir}/domain-encoder-{key}.pt``; every run reuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .data import iter_samples
from .datamodule import load_split
from .emoji import manifest_hash
from .pixels import to_model_range
from .runtime import preserved_rng, write_atomic
from .scores import dataset_fingerprint

log = logging.getLogger(__name__)

ENCODER_VERSION = 1


class DomainEncoder(nn.Module):
    """A 4-stage CNN image encoder for 32 px (or any size) images.

    ``forward(images)``: images [N, 3, H, W] in [-1, 1] -> pooled features [N, ``num_features``]
    (the FID/KID feature space). ``embed(images)`` -> L2-normalised [N, ``embed_dim``] embedding
    aligned with the MiniLM caption space (the CLIP-score space).
    """

    def __init__(self, width: int = 32, num_features: int = 128, embed_dim: int = 384):
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, num_features]
        layers = []
        for i in range(4):
            layers += [
                nn.Conv2d(chans[i], chans[i + 1], 3, stride=1 if i == 0 else 2, padding=1),
                nn.GroupNorm(8, chans[i + 1]),
                nn.SiLU(),
            ]
        self.body = nn.Sequential(*layers)
        self.proj = nn.Linear(num_features, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(2.659))  # log(1 / 0.07), as CLIP
        self.num_features = num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images.float()).mean(dim=(2, 3))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(self(images)), dim=-1)


def _contrastive_loss(encoder: DomainEncoder, images, text, caption_rows) -> torch.Tensor:
    """Symmetric InfoNCE; samples that share a caption are all positives of each other."""
    img = encoder.embed(images)
    logits = encoder.logit_scale.exp().clamp(max=100) * img @ text.T
    same = (caption_rows[:, None] == caption_rows[None, :]).float()
    targets = same / same.sum(1, keepdim=True)
    return 0.5 * (
        torch.sum(-targets * logits.log_softmax(1), 1).mean() + torch.sum(-targets * logits.log_softmax(0).T, 1).mean()
    )


@torch.no_grad()
def caption_retrieval(encoder: DomainEncoder, dataset, batch_size: int = 512) -> dict:
    """Top-1 / top-5 accuracy of retrieving each image's caption among the dataset's distinct captions."""
    encoder.eval()
    rows = dataset.caption_rows
    cap_ids = torch.unique(rows)
    text = dataset.text.pooled[cap_ids].float()
    pos = {int(r): i for i, r in enumerate(cap_ids)}
    hit1 = hit5 = 0
    for start in range(0, len(dataset), batch_size):
        imgs = to_model_range(dataset.images[start : start + batch_size])
        sims = encoder.embed(imgs) @ text.T
        top = sims.topk(min(5, len(cap_ids)), dim=1).indices
        want = torch.tensor([pos[int(r)] for r in rows[start : start + batch_size]])
        hit1 += int((top[:, 0] == want).sum())
        hit5 += int((top == want[:, None]).any(1).sum())
    return {"top1": hit1 / len(dataset), "top5": hit5 / len(dataset), "captions": len(cap_ids)}


def train_domain_encoder(
    dataset,
    epochs: int = 6,
    batch_size: int = 256,
    lr: float = 2e-3,
    seed: int = 0,
    width: int = 32,
    num_features: int = 128,
) -> DomainEncoder:
    """Train a :class:`DomainEncoder` on an :class:`~alchemist_pl.data.ImageCaptionDataset` (clean images)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    enc = DomainEncoder(width, num_features, dataset.text.pooled.shape[1])
    opt = torch.optim.AdamW(enc.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * (len(dataset) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1))
    text = dataset.text.pooled.float()
    enc.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(dataset), generator=g)
        total = 0.0
        for k in range(len(dataset) // batch_size):
            idx = perm[k * batch_size : (k + 1) * batch_size]
            images = to_model_range(dataset.images[idx])
            if torch.rand((), generator=g) < 0.5:
                images = images.flip(3)
            rows = dataset.caption_rows[idx]
            loss = _contrastive_loss(enc, images, text[rows], rows)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        log.info(
            "domain encoder epoch %d/%d: contrastive loss %.3f",
            epoch + 1,
            epochs,
            total / max(1, len(dataset) // batch_size),
        )
    return enc.eval()


def _data_key(path) -> str:
    p = Path(path).resolve()
    h = manifest_hash(p.parent)
    if h:
        return f"{p.name}:{h}"
    return "ids:" + dataset_fingerprint(r.sample_id for r in iter_samples(p))


def load_domain_encoder(
    data_path,
    resolution: int,
    cache_dir,
    max_tokens: int = 16,
    test_path=None,
    epochs: int = 6,
    batch_size: int = 256,
    lr: float = 2e-3,
    seed: int = 0,
    width: int = 32,
    num_features: int = 128,
) -> tuple[DomainEncoder, dict]:
    """The cached domain encoder for ``data_path`` (trained and saved on first use).

    Args:
        data_path: clean image-caption data to train on (never the corrupted pool).
        test_path: split with unseen captions on which caption retrieval is reported.
        cache_dir: where ``domain-encoder-{key}.pt`` lives; ``key`` hashes the data's manifest
            (or its sample_ids) and every training setting.

    Returns:
        (encoder in eval mode, info): info has ``path``, ``sha256`` (of the weights file) and
        ``retrieval`` (top-1 / top-5 caption retrieval on ``test_path``).
    """
    params = {
        "version": ENCODER_VERSION,
        "data": _data_key(data_path),
        "resolution": resolution,
        "max_tokens": max_tokens,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "width": width,
        "num_features": num_features,
    }
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"domain-encoder-{key}.pt"
    if not path.exists():
        train_set = load_split(data_path, resolution, cache_dir, None, max_tokens)
        test_set = load_split(test_path, resolution, cache_dir, None, max_tokens) if test_path else None
        with preserved_rng():
            _train_and_save(path, params, train_set, test_set)
    return _load_saved(path, width, num_features)


def _load_saved(path: Path, width: int, num_features: int) -> tuple[DomainEncoder, dict]:
    """The encoder saved at ``path`` in eval mode, and ``path``, ``sha256``, ``retrieval``, ``train_time_s``."""
    blob = torch.load(path, weights_only=True)
    enc = DomainEncoder(width, num_features)
    enc.load_state_dict(blob["state_dict"])
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    info = {
        "path": str(path),
        "sha256": sha,
        "retrieval": blob.get("retrieval"),
        "train_time_s": blob.get("train_time_s"),
    }
    return enc.eval(), info


def _train_and_save(path: Path, params: dict, train_set, test_set) -> None:
    """Train the encoder ``params`` describes on ``train_set``, report caption retrieval on
    ``test_set`` (if any) and save both atomically to ``path``."""
    started = time.time()
    log.info("training the domain evaluator (once; cached as %s)", path)
    keys = ("epochs", "batch_size", "lr", "seed", "width", "num_features")
    enc = train_domain_encoder(train_set, *(params[k] for k in keys))
    retrieval = caption_retrieval(enc, test_set) if test_set is not None else None
    blob = {
        "state_dict": enc.state_dict(),
        "params": params,
        "retrieval": retrieval,
        "train_time_s": round(time.time() - started, 1),
    }
    write_atomic(path, lambda tmp: torch.save(blob, tmp))
    log.info("domain evaluator: caption retrieval on the test split: %s", retrieval)
