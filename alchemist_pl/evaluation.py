"""Offline evaluation of generated images: domain FID, domain KID and domain CLIP score.

No package ships Inception or CLIP weights, and this tool never downloads any. The domain
evaluator is a small image encoder (:class:`DomainEncoder`) trained contrastively against the
frozen MiniLM caption embeddings (:mod:`alchemist_pl.text`) on clean training images:

- **domain FID / domain KID**: torchmetrics' ``FrechetInceptionDistance`` and
  ``KernelInceptionDistance`` with the encoder's pooled features ([N, 128]) as the ``feature``
  module instead of Inception-v3. Lower is better. Comparable only between runs that use the
  same encoder (its sha256 is recorded) and the same number of generated images.
- **domain CLIP score**: ``100 * max(cos(E_img(x), E_txt(c)), 0)`` averaged over generated
  images, with the encoder's 384-d image embedding and the caption's MiniLM sentence embedding
  (torchmetrics' CLIPScore convention). Higher is better.

These are not the paper's FID (Inception on MJHQ-30K) or CLIP score: always say "domain".
``eval.backend=standard`` selects torchmetrics' standard FID and CLIPScore for machines that
have those weights; without them it raises at once with a message instead of hanging.

The encoder is trained once per (training data, encoder settings) and cached as
``{cache_dir}/domain-encoder-{key}.pt``; every run reuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

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
        imgs = dataset.images[start : start + batch_size].float() / 127.5 - 1.0
        sims = encoder.embed(imgs) @ text.T
        top = sims.topk(min(5, len(cap_ids)), dim=1).indices
        want = torch.tensor([pos[int(r)] for r in rows[start : start + batch_size]])
        hit1 += int((top[:, 0] == want).sum())
        hit5 += int((top == want[:, None]).any(1).sum())
    return {"top1": hit1 / len(dataset), "top5": hit5 / len(dataset), "captions": len(cap_ids)}


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
        imgs = dataset.images[start : start + batch_size].float() / 127.5 - 1.0
        text = F.normalize(dataset.text.pooled[dataset.caption_rows[start : start + batch_size]].float(), dim=-1)
        out[start : start + len(imgs)] = (encoder.embed(imgs) * text).sum(-1)
    return out


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
            images = dataset.images[idx].float() / 127.5 - 1.0
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
    from .emoji import manifest_hash
    from .scores import dataset_fingerprint

    p = Path(path).resolve()
    h = manifest_hash(p.parent)
    if h:
        return f"{p.name}:{h}"
    from .data import iter_samples

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
        from .datamodule import load_split

        started = time.time()
        log.info("training the domain evaluator on %s (once; cached as %s)", data_path, path)
        train_set = load_split(data_path, resolution, cache_dir, None, max_tokens)
        enc = train_domain_encoder(train_set, epochs, batch_size, lr, seed, width, num_features)
        retrieval = (
            caption_retrieval(enc, load_split(test_path, resolution, cache_dir, None, max_tokens))
            if test_path
            else None
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        torch.save(
            {
                "state_dict": enc.state_dict(),
                "params": params,
                "retrieval": retrieval,
                "train_time_s": round(time.time() - started, 1),
            },
            tmp,
        )
        os.replace(tmp, path)
        log.info("domain evaluator: caption retrieval on %s: %s", test_path, retrieval)
    blob = torch.load(path, weights_only=True)
    enc = DomainEncoder(width, num_features)
    enc.load_state_dict(blob["state_dict"])
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return enc.eval(), {
        "path": str(path),
        "sha256": sha,
        "retrieval": blob.get("retrieval"),
        "train_time_s": blob.get("train_time_s"),
    }


class _Embedder(nn.Module):
    """The CLIP-score side of the encoder as a feature module (no grad)."""

    def __init__(self, encoder: DomainEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, images):
        return self.encoder.embed(images)


class DomainMetrics:
    """Domain FID, KID and CLIP score of generated images against a fixed real reference set.

    Args:
        encoder: a trained :class:`DomainEncoder`.
        kid_subset_size: KID subset size (at most the number of generated images).

    Use: ``set_reference(real_images)`` once ([N, 3, H, W] in [-1, 1]); then per evaluation
    ``compute(fake_images, caption_pooled)`` with fake images [M, 3, H, W] in [-1, 1] and the
    prompts' MiniLM sentence embeddings [M, 384] -> ``{"domain_fid", "domain_kid", "domain_clip"}``.
    """

    def __init__(self, encoder: DomainEncoder, kid_subset_size: int = 100):
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        self.encoder = encoder.eval().requires_grad_(False)
        # sync_on_compute=False: under DDP one rank evaluates (GenerationEvaluation); no gathering
        self.fid = FrechetInceptionDistance(feature=self.encoder, reset_real_features=False, sync_on_compute=False)
        self.kid_subset_size = kid_subset_size
        self.kid = KernelInceptionDistance(
            feature=self.encoder, reset_real_features=False, subset_size=kid_subset_size, sync_on_compute=False
        )
        self.has_reference = False

    def to(self, device):
        self.fid.to(device)
        self.kid.to(device)
        return self

    @torch.no_grad()
    def set_reference(self, real_images: torch.Tensor, batch_size: int = 512) -> None:
        for i in range(0, len(real_images), batch_size):
            b = real_images[i : i + batch_size].float()
            self.fid.update(b, real=True)
            self.kid.update(b, real=True)
        self.has_reference = True

    @torch.no_grad()
    def compute(self, fake_images: torch.Tensor, caption_pooled: torch.Tensor) -> dict:
        if not self.has_reference:
            raise RuntimeError("DomainMetrics.compute before set_reference")
        fake = fake_images.float()
        self.fid.reset()
        self.kid.reset()
        self.kid.subset_size = min(self.kid_subset_size, len(fake))
        self.fid.update(fake, real=False)
        self.kid.update(fake, real=False)
        emb = self.encoder.embed(fake)
        cos = (emb * F.normalize(caption_pooled.float().to(emb.device), dim=-1)).sum(-1)
        kid_mean, _ = self.kid.compute()
        return {
            "domain_fid": float(self.fid.compute()),
            "domain_kid": float(kid_mean),
            "domain_clip": float(100 * cos.clamp(min=0).mean()),
        }


class StandardMetrics:
    """torchmetrics' standard FID (Inception-v3) and CLIPScore, for machines that have those weights.

    Raises:
        RuntimeError: when the weights (or the packages that load them) are not available; the
            check runs at construction with a short network timeout, so an offline machine gets
            the message at once instead of a hang.
    """

    def __init__(self, clip_model: str = "openai/clip-vit-base-patch16", timeout_s: float = 10.0):
        import socket

        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout_s)
        try:
            from torchmetrics.image.fid import FrechetInceptionDistance
            from torchmetrics.multimodal.clip_score import CLIPScore

            self.fid = FrechetInceptionDistance(
                feature=2048, reset_real_features=False, normalize=True, sync_on_compute=False
            )
            self.clip = CLIPScore(model_name_or_path=clip_model, sync_on_compute=False)
        except Exception as e:
            raise RuntimeError(
                "eval.backend=standard needs torchmetrics' Inception-v3 weights (torch-fidelity) and the CLIP "
                f"model {clip_model!r} on this machine; loading them failed ({type(e).__name__}: {e}). "
                "This tool never downloads weights at run time: use eval.backend=domain (the default), or "
                "pre-populate the torch/huggingface caches and set HF_HUB_OFFLINE=1."
            ) from e
        finally:
            socket.setdefaulttimeout(old)
        self.has_reference = False

    def to(self, device):
        self.fid.to(device)
        self.clip.to(device)
        return self

    @torch.no_grad()
    def set_reference(self, real_images: torch.Tensor, batch_size: int = 256) -> None:
        for i in range(0, len(real_images), batch_size):
            self.fid.update((real_images[i : i + batch_size].float() + 1) / 2, real=True)
        self.has_reference = True

    @torch.no_grad()
    def compute(self, fake_images: torch.Tensor, captions: list[str]) -> dict:
        self.fid.reset()
        self.clip.reset()
        self.fid.update((fake_images.float() + 1) / 2, real=False)
        uint8 = ((fake_images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        self.clip.update(list(uint8), captions)
        return {"fid": float(self.fid.compute()), "clip_score": float(self.clip.compute())}


def _callback_base():
    from lightning.pytorch.callbacks import Callback

    return Callback


class GenerationEvaluation(_callback_base()):
    """Lightning callback: every ``every_n_steps`` optimizer steps (and at the last step) generate
    images for a fixed prompt set with fixed seeds and log their metrics as ``eval/<name>``.

    Every run evaluated with the same prompts, seeds, sampler settings and metrics object sees
    exactly the same initial noise, so the curves of different subsets are comparable step for
    step. ``curve`` (a list of ``{"step": int, <metric>: float}``) is saved in checkpoints, so a
    resumed run keeps its earlier points. Under DDP global rank 0 alone generates, computes,
    logs and saves the grid (the weights are the same on every rank); the other ranks wait for
    its values (broadcast), so every rank holds the same ``curve``.

    Args:
        metrics: :class:`DomainMetrics` or :class:`StandardMetrics` with its reference set.
        prompts: dict with ``states`` [M, T, D], ``mask`` [M, T], ``pooled`` [M, D], ``captions`` (M str).
        every_n_steps: evaluation period in optimizer steps (0: only at the end).
        sample_steps, guidance_scale: the sampling scheduler's steps and the CFG scale.
        seed: seed of the initial noise.
        batch_size: images generated per forward batch.
        grid_path: where a grid of the last evaluation's first 32 images is saved (None: nowhere).
        curve_path: where ``curve`` is written as JSON after each evaluation (None: nowhere); a
            ``ddp_spawn`` fit runs the callback in child processes, so the main process reads it there.
    """

    def __init__(
        self,
        metrics,
        prompts: dict,
        every_n_steps: int = 100,
        sample_steps: int = 20,
        guidance_scale: float = 3.0,
        seed: int = 4321,
        batch_size: int = 256,
        grid_path=None,
        curve_path=None,
    ):
        self.metrics = metrics
        self.prompts = prompts
        self.every_n_steps = int(every_n_steps)
        self.sample_steps = sample_steps
        self.guidance_scale = guidance_scale
        self.seed = seed
        self.batch_size = batch_size
        self.grid_path = grid_path
        self.curve_path = curve_path
        self.curve: list[dict] = []

    @torch.no_grad()
    def generate(self, pl_module) -> torch.Tensor:
        """[M, 3, H, W] images in [-1, 1] for the prompt set."""
        from .diffusion import sample_images

        unet = pl_module.unet
        c = unet.config
        out = []
        m = len(self.prompts["captions"])
        for start in range(0, m, self.batch_size):
            sl = slice(start, start + self.batch_size)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + start)
            out.append(
                sample_images(
                    unet,
                    pl_module.sampling_scheduler,
                    self.prompts["states"][sl].to(pl_module.device),
                    self.prompts["mask"][sl].to(pl_module.device),
                    pl_module.null_states,
                    pl_module.null_mask,
                    (c.in_channels, c.sample_size, c.sample_size),
                    self.sample_steps,
                    self.guidance_scale,
                    generator=g,
                )
                .float()
                .cpu()
            )
        return torch.cat(out)

    def evaluate(self, trainer, pl_module) -> dict:
        was_training = pl_module.training
        pl_module.eval()
        started = time.time()
        try:
            images = self.generate(pl_module)
        finally:
            pl_module.train(was_training)
        if isinstance(self.metrics, StandardMetrics):
            values = self.metrics.compute(images, self.prompts["captions"])
        else:
            values = self.metrics.compute(images.to(self.metrics.fid.device), self.prompts["pooled"])
        step = int(trainer.global_step)
        self.curve.append({"step": step, **values})
        if self.curve_path is not None:
            tmp = Path(self.curve_path).with_name(f".{Path(self.curve_path).name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps(self.curve))
            os.replace(tmp, self.curve_path)
        for lg in trainer.loggers:
            lg.log_metrics({f"eval/{k}": v for k, v in values.items()}, step=step)
        log.info(
            "eval at step %d (%.1f s): %s",
            step,
            time.time() - started,
            ", ".join(f"{k} {v:.4g}" for k, v in values.items()),
        )
        if self.grid_path is not None:
            from .diffusion import image_grid

            image_grid(images[:32]).save(self.grid_path)
            for lg in trainer.loggers:
                if type(lg).__name__ == "WandbLogger":
                    lg.log_image("eval/samples", [str(self.grid_path)], step=step)
        return values

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.curve and self.curve[-1]["step"] == step:
            return
        last = trainer.max_steps > 0 and step >= trainer.max_steps
        if last or (self.every_n_steps > 0 and step % self.every_n_steps == 0):
            values = self.evaluate(trainer, pl_module) if trainer.is_global_zero else None
            if trainer.world_size > 1:
                values = trainer.strategy.broadcast(values, src=0)
                if not trainer.is_global_zero:
                    self.curve.append({"step": int(step), **values})

    def state_dict(self) -> dict:
        return {"curve": list(self.curve)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.curve = list(state_dict.get("curve", []))
