"""Metrics of generated images: domain FID, domain KID and domain CLIP score, or the standard ones.

- **domain FID / domain KID**: torchmetrics' ``FrechetInceptionDistance`` and
  ``KernelInceptionDistance`` with the domain encoder's pooled features ([N, 128],
  :class:`~alchemist_pl.domain_encoder.DomainEncoder`) as the ``feature`` module instead of
  Inception-v3. Lower is better. Comparable only between runs that use the same encoder (its
  sha256 is recorded) and the same number of generated images.
- **domain CLIP score**: ``100 * max(cos(E_img(x), E_txt(c)), 0)`` averaged over generated
  images, with the encoder's 384-d image embedding and the caption's MiniLM sentence embedding
  (torchmetrics' CLIPScore convention). Higher is better.
- **retrieval top-1 / top-5** (:func:`prompt_retrieval`): the share of generated images whose own
  prompt is the nearest (among the 5 nearest) of the prompt set's distinct captions in the
  encoder's caption space; chance is ``1/K`` and ``min(5, K)/K`` for K distinct captions
  (``retrieval_chance_top1`` / ``_top5``). ``retrieval_top1_shuffled`` / ``_top5_shuffled``: the
  same with the image-caption pairing permuted (the control; near chance for any generator).

KID is torchmetrics' estimator (Bińkowski et al. 2018, "Demystifying MMD GANs"): the unbiased
MMD² with the cubic polynomial kernel ``k(x, y) = (x·y / d + 1)^3``, averaged over 100 random
subsets of ``kid_subset_size`` real and generated features. It is unbiased at any sample size;
FID is not (with M generated images in d = 128 dimensions its covariance has rank < M and its
value grows as M shrinks). :func:`real_noise_floor` measures both between real images.

These are not the paper's FID (Inception on MJHQ-30K) or CLIP score: always say "domain".
``evaluator=standard`` selects torchmetrics' standard FID and CLIPScore for machines that
have those weights; without them it raises at once with a message instead of hanging.
"""

from __future__ import annotations

import socket

import torch
import torch.nn.functional as F
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from .domain_encoder import DomainEncoder, load_domain_encoder
from .pixels import to_uint8


class DomainMetrics:
    """Domain FID, KID and CLIP score of generated images against a fixed real reference set.

    Args:
        encoder: a trained :class:`DomainEncoder`.
        kid_subset_size: KID subset size (at most the number of generated images).

    Use: ``set_reference(real_images)`` once ([N, 3, H, W] in [-1, 1]; a second call adds to the
    reference, so use a new object for another reference set); then per evaluation
    ``compute(fake_images, caption_pooled)`` with fake images [M, 3, H, W] in [-1, 1] and the
    prompts' MiniLM sentence embeddings [M, 384] -> ``{"domain_fid", "domain_kid", "domain_clip"}``
    and the :func:`prompt_retrieval` values.
    """

    def __init__(self, encoder: DomainEncoder, kid_subset_size: int = 100, info: dict | None = None):
        self.info = info or {}  # the encoder's path, sha256 and caption retrieval (summaries record it)
        self.encoder = encoder.eval().requires_grad_(False)
        # sync_on_compute=False: under DDP one rank evaluates (GenerationEvaluation); no gathering
        self.fid = FrechetInceptionDistance(feature=self.encoder, reset_real_features=False, sync_on_compute=False)
        self.kid_subset_size = kid_subset_size
        self.kid = KernelInceptionDistance(
            feature=self.encoder, reset_real_features=False, subset_size=kid_subset_size, sync_on_compute=False
        )
        self.has_reference = False

    @classmethod
    def from_cache(cls, encoder: dict, kid_subset_size: int = 100) -> DomainMetrics:
        """With the cached domain encoder ``encoder`` describes (keyword arguments of
        :func:`~alchemist_pl.domain_encoder.load_domain_encoder`; trained on first use)."""
        enc, info = load_domain_encoder(**encoder)
        return cls(enc, kid_subset_size, info)

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
            **prompt_retrieval(emb, caption_pooled.to(emb.device)),
        }


@torch.no_grad()
def prompt_retrieval(image_emb: torch.Tensor, caption_pooled: torch.Tensor, seed: int = 0) -> dict:
    """Top-1 / top-5 retrieval of each image's own caption among the prompt set's distinct captions.

    Image i's candidates are the K distinct rows of ``caption_pooled`` (prompts that share a caption
    share a candidate); scores are cosine similarities in the domain encoder's caption space. The
    control permutes which caption counts as image i's own (a ``torch.Generator`` seeded ``seed``),
    which keeps the candidates and their frequencies and breaks only the pairing.

    Args:
        image_emb: [M, D] L2-normalised image embeddings (:meth:`DomainEncoder.embed`).
        caption_pooled: [M, D] the prompts' MiniLM sentence embeddings, row i = image i's prompt.

    Returns:
        ``retrieval_top1``, ``retrieval_top5``, ``retrieval_top1_shuffled``, ``retrieval_top5_shuffled``
        (fractions in [0, 1]) and ``retrieval_chance_top1`` = 1/K, ``retrieval_chance_top5`` = min(5, K)/K.

    Raises:
        ValueError: ``image_emb`` and ``caption_pooled`` differ in number of rows, or M = 0.
    """
    m = len(image_emb)
    if m == 0 or len(caption_pooled) != m:
        raise ValueError(f"prompt_retrieval: {m} images but {len(caption_pooled)} captions (need equal, > 0)")
    captions, own = torch.unique(caption_pooled.float(), dim=0, return_inverse=True)
    k = len(captions)
    sims = image_emb.float() @ F.normalize(captions, dim=-1).T  # [M, K]
    top = sims.topk(min(5, k), dim=1).indices
    shuffled = own[torch.randperm(m, generator=torch.Generator().manual_seed(seed))]
    out = {}
    for name, target in (("", own), ("_shuffled", shuffled)):
        out[f"retrieval_top1{name}"] = float((top[:, 0] == target).float().mean())
        out[f"retrieval_top5{name}"] = float((top == target[:, None]).any(1).float().mean())
    out["retrieval_chance_top1"], out["retrieval_chance_top5"] = 1 / k, min(5, k) / k
    return out


@torch.no_grad()
def real_noise_floor(
    encoder: DomainEncoder,
    images: torch.Tensor,
    caption_pooled: torch.Tensor,
    sizes: tuple = (128, 256, None),
    repeats: int = 5,
    kid_subset_size: int = 100,
    seed: int = 0,
) -> list[dict]:
    """Domain FID / KID / CLIP score of real images against real images: what a generator that
    draws exactly from the data distribution would get, at a given number of images.

    Each repeat splits ``images`` into two disjoint random halves (permutation from a
    ``torch.Generator`` seeded ``seed + repeat``): half A is the reference, and the first ``m``
    images of half B stand for the generated images, scored by :meth:`DomainMetrics.compute` as in
    a training run. KID's random subsets are drawn under ``torch.manual_seed(seed + repeat)``
    inside a forked RNG (the caller's RNG state is untouched).

    Args:
        encoder: the trained :class:`DomainEncoder` the runs use.
        images: [N, 3, H, W] real images in [-1, 1] (the test split), N >= 4.
        caption_pooled: [N, 384] their captions' MiniLM sentence embeddings.
        sizes: numbers ``m`` of stand-in generated images; None = all of half B.
        repeats: random splits.
        kid_subset_size: KID subset size (at most ``m``, as in :meth:`DomainMetrics.compute`).

    Returns:
        one dict per (repeat, m): ``repeat``, ``reference_images`` (N // 2), ``images`` (m),
        ``domain_fid``, ``domain_kid``, ``domain_clip``.

    Raises:
        ValueError: fewer than 4 images, or an ``m`` below 2 or above half B (N - N // 2).
    """
    n = len(images)
    half = n // 2
    ms = [n - half if m is None else int(m) for m in sizes]
    if n < 4 or any(not 2 <= m <= n - half for m in ms):
        raise ValueError(f"real_noise_floor: sizes {list(sizes)} must lie in [2, {n - half}] (half of {n} images)")
    rows = []
    for r in range(repeats):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + r))
        ref, other = perm[:half], perm[half:]
        metrics = DomainMetrics(encoder, kid_subset_size)
        metrics.set_reference(images[ref])
        for m in ms:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + r)
                values = metrics.compute(images[other[:m]], caption_pooled[other[:m]])
            rows.append({"repeat": r, "reference_images": half, "images": m, **values})
    return rows


class StandardMetrics:
    """torchmetrics' standard FID (Inception-v3) and CLIPScore, for machines that have those weights.

    Raises:
        RuntimeError: when the weights (or the packages that load them) are not available; the
            check runs at construction with a short network timeout, so an offline machine gets
            the message at once instead of a hang.
    """

    def __init__(self, clip_model: str = "openai/clip-vit-base-patch16", timeout_s: float = 10.0):
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout_s)
        try:
            from torchmetrics.multimodal.clip_score import CLIPScore  # optional: needs transformers' CLIP

            self.fid = FrechetInceptionDistance(
                feature=2048, reset_real_features=False, normalize=True, sync_on_compute=False
            )
            self.clip = CLIPScore(model_name_or_path=clip_model, sync_on_compute=False)
        except Exception as e:
            raise RuntimeError(
                "evaluator=standard needs torchmetrics' Inception-v3 weights (torch-fidelity) and the CLIP "
                f"model {clip_model!r} on this machine; loading them failed ({type(e).__name__}: {e}). "
                "This tool never downloads weights at run time: use evaluator=domain (the default), or "
                "pre-populate the torch/huggingface caches and set HF_HUB_OFFLINE=1."
            ) from e
        finally:
            socket.setdefaulttimeout(old)
        self.has_reference = False
        self.info = {"backend": "standard"}

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
        self.clip.update(list(to_uint8(fake_images)), captions)
        return {"fid": float(self.fid.compute()), "clip_score": float(self.clip.compute())}
