"""Offline audit of per-sample rating signals: two proxies, a fixed timestep grid, common random numbers.

A rater can only learn what its training signal carries. This module measures that signal without a
rater: it trains two proxies of the same architecture from the same initial weights, ``θ_val`` on the
clean D_val and ``θ′`` on the (uniformly weighted) pool, then scores every pool sample at fixed
timesteps with one noise draw per (sample, t, draw) shared by every model and caption (common random
numbers), so that differences between losses carry no noise-draw variance.

Keep-scores (higher = keep) computed from those losses, each [n_t, N]:

===============  ================================================  ==========================================
signal           definition                                        source
===============  ================================================  ==========================================
``loss``         ``−ℓ(θ_val; c)``                                   first-order rater (Alchemist Eq. 9-10)
``value_gap``    ``ℓ(θ′; c) − ℓ(θ_val; c)``                         penalty method with the value-function term
                                                                    (Shen & Chen 2023); RHO-LOSS reducible loss
``contrast``     ``ℓ(θ_val; c_other) − ℓ(θ_val; c)``                mismatched-caption contrast (diffusion
                                                                    classifier, Li et al. 2023)
``null_gap``     ``ℓ(θ_val; ∅) − ℓ(θ_val; c)``                      conditional vs unconditional loss
===============  ================================================  ==========================================

``c`` is the sample's own caption, ``c_other`` the caption of another pool sample with a different
caption text (:func:`mismatched_rows`), ``∅`` the empty caption. Losses are the paper's per-sample
``ℓ_i``, taken through the proxy hook the bilevel loop uses (:func:`alchemist_pl.plugins.proxy_loss`),
so a proxy is a diffusers UNet or any module with the :class:`~alchemist_pl.plugins.ProxyLoss` hook.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from .analysis import auroc
from .corruption import CLEAN
from .pixels import to_model_range
from .plugins import proxy_loss

log = logging.getLogger(__name__)

SIGNALS = ("loss", "value_gap", "contrast", "null_gap")
# (model, caption) pairs scored: every signal above is a difference of two of them
LOSS_TERMS = (("val", "own"), ("pool", "own"), ("val", "other"), ("val", "null"))


def denoising_loss(proxy, scheduler, images, states, mask, pooled, timesteps, noise) -> torch.Tensor:
    """Per-sample losses [B] of ``proxy`` through the proxy hook the bilevel loop calls
    (:func:`alchemist_pl.plugins.proxy_loss`): its own ``per_sample_loss`` hook when it defines one,
    else the diffusers UNet's denoising MSE (:func:`alchemist_pl.diffusion.per_sample_loss`, the pooled
    caption as ``class_labels`` when the UNet has a class embedding).

    Args: images [B, C, H, W] in [-1, 1]; states [B, T, D]; mask [B, T] bool; pooled [B, D];
    timesteps [B] int64; noise [B, C, H, W].

    Raises:
        TypeError: the proxy has neither the hook nor the diffusers call signature.
        ValueError: the hook returns no [B] floating losses or draws its own noise; for a diffusers
            UNet, a prediction type other than epsilon / v / sample.
    """
    batch = {"image": images, "states": states, "mask": mask, "pooled": pooled}
    return proxy_loss(proxy, scheduler, batch, timesteps, noise)


def null_row(dataset) -> int:
    """Row of the empty caption in ``dataset.text`` (:func:`alchemist_pl.data.load_split` embeds it)."""
    try:
        return dataset.text.captions.index("")
    except ValueError:
        raise ValueError("the dataset's caption embeddings hold no empty caption; load it with load_split") from None


def mismatched_rows(dataset, generator: torch.Generator) -> torch.Tensor:
    """For each sample, the caption row of another sample whose caption text differs: [N] int64.

    A random permutation, with every position that kept the same caption redrawn uniformly.

    Raises:
        ValueError: all samples share one caption (no mismatched caption exists).
    """
    own = dataset.caption_rows
    n = len(own)
    if len(set(own.tolist())) < 2:
        raise ValueError("every sample has the same caption: no mismatched caption exists")
    other = own[torch.randperm(n, generator=generator)]
    same = torch.nonzero(other == own).flatten().tolist()
    for i in same:
        while other[i] == own[i]:
            other[i] = own[int(torch.randint(n, (1,), generator=generator))]
    return other


def _conditioning(dataset, rows: torch.Tensor):
    text = dataset.text
    return text.states[rows].float(), text.mask[rows], text.pooled[rows].float()


def train_proxy(
    proxy, scheduler, dataset, indices, steps: int, batch_size: int, optimizer, grad_clip: float,
    caption_dropout: float, generator: torch.Generator,
) -> list[float]:  # fmt: skip
    """Train ``proxy`` in place (any proxy :func:`denoising_loss` accepts) for ``steps`` steps on
    ``dataset[indices]`` with uniform sample weights.

    Batches of ``batch_size`` come from a fresh shuffle per pass (drop_last, as the rating loaders);
    t ~ U{0, …, T−1}; a ``caption_dropout`` share of each batch's captions (states, mask, pooled) is
    replaced by the empty caption's. Returns the ``steps`` batch-mean losses.

    Raises:
        ValueError: fewer than ``batch_size`` samples.
    """
    indices = torch.as_tensor(indices, dtype=torch.long)
    if len(indices) < batch_size:
        raise ValueError(f"{len(indices)} samples, fewer than one batch of {batch_size}")
    per_pass = len(indices) // batch_size
    null = null_row(dataset)
    num_t = scheduler.config.num_train_timesteps
    proxy.train()
    history, order = [], None
    for step in range(steps):
        if step % per_pass == 0:
            order = indices[torch.randperm(len(indices), generator=generator)]
        idx = order[(step % per_pass) * batch_size : (step % per_pass + 1) * batch_size]
        rows = dataset.caption_rows[idx].clone()
        rows[torch.rand(len(idx), generator=generator) < caption_dropout] = null
        states, mask, pooled = _conditioning(dataset, rows)
        images = to_model_range(dataset.images[idx])
        t = torch.randint(0, num_t, (len(idx),), generator=generator)
        noise = torch.randn(images.shape, generator=generator)
        loss = denoising_loss(proxy, scheduler, images, states, mask, pooled, t, noise).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(proxy.parameters(), grad_clip)
        optimizer.step()
        history.append(loss.item())
    proxy.eval()
    return history


def crn_noise(shape, seed: int, t: int, draw: int) -> torch.Tensor:
    """The noise of every scored sample at timestep ``t``, draw ``draw``: [N, C, H, W], a pure function
    of (seed, t, draw) — every model and caption sees the same noise for the same sample."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(t) * 101 + int(draw))
    return torch.randn(shape, generator=g)


@torch.no_grad()
def score_losses(
    models: dict, scheduler, dataset, captions: dict, timesteps, seed: int, draws: int = 1, batch_size: int = 256,
    terms=LOSS_TERMS,
) -> dict:  # fmt: skip
    """Per-sample losses of every (model, caption) term on a fixed timestep grid, common random numbers.

    Args:
        models: name -> proxy (e.g. ``{"val": θ_val, "pool": θ′}``; any proxy :func:`denoising_loss` accepts).
        captions: name -> [N] caption rows into ``dataset.text`` (e.g. own, other, null).
        timesteps: the grid, ints in [0, T); draws: noise draws per (sample, t), averaged.
        terms: (model name, caption name) pairs to score.

    Returns:
        ``{(model, caption): ndarray [len(timesteps), N] float64}``, losses averaged over the draws.
    """
    n = len(dataset)
    out = {term: np.zeros((len(timesteps), n)) for term in terms}
    for m in models.values():
        m.eval()
    for ti, t in enumerate(timesteps):
        for d in range(draws):
            noise = crn_noise(dataset.images.shape, seed, t, d)
            for lo in range(0, n, batch_size):
                sl = slice(lo, min(n, lo + batch_size))
                images = to_model_range(dataset.images[sl])
                tt = torch.full((images.shape[0],), int(t), dtype=torch.long)
                for model_name, caption_name in terms:
                    states, mask, pooled = _conditioning(dataset, captions[caption_name][sl])
                    loss = denoising_loss(models[model_name], scheduler, images, states, mask, pooled, tt, noise[sl])
                    out[(model_name, caption_name)][ti, sl] += loss.double().numpy() / draws
        log.info("scored t=%d (%d/%d)", t, ti + 1, len(timesteps))
    return out


def keep_scores(losses: dict) -> dict:
    """The keep-scores of :data:`SIGNALS` (higher = keep) from :func:`score_losses`' output, each [n_t, N];
    a signal whose loss terms were not scored is left out."""
    own = losses[("val", "own")]
    parts = {"value_gap": ("pool", "own"), "contrast": ("val", "other"), "null_gap": ("val", "null")}
    out = {"loss": -own}
    out.update({name: losses[term] - own for name, term in parts.items() if term in losses})
    return out


def zscore(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Standardise along ``axis`` (mean 0, std 1; a constant row becomes 0)."""
    sd = x.std(axis=axis, keepdims=True)
    return (x - x.mean(axis=axis, keepdims=True)) / np.where(sd > 0, sd, 1.0)


def band_score(scores: np.ndarray, rows) -> np.ndarray:
    """Sum over the timestep rows ``rows`` of per-timestep z-scores, standardised again: [n_t, N] -> [N]."""
    return zscore(zscore(scores[list(rows)], axis=1).sum(axis=0))


def separation(scores: np.ndarray, kinds: np.ndarray) -> dict:
    """AUROC (clean = positive) overall and per corruption kind, and the corrupted share of the top half.

    Args: scores [N] keep-scores; kinds [N] ground-truth labels ("clean" or a kind).

    Returns:
        ``{"all": auroc, kind: auroc per kind, "top50_corrupted_share": share}``; ties in the top-half cut
        are broken by position (stable sort).
    """
    scores, kinds = np.asarray(scores, dtype=np.float64), np.asarray(kinds, dtype=object)
    clean = kinds == CLEAN
    out = {"all": auroc(scores[clean], scores[~clean])}
    for kind in sorted(set(kinds.tolist()) - {CLEAN}):
        out[kind] = auroc(scores[clean], scores[kinds == kind])
    top = np.argsort(-scores, kind="stable")[: len(scores) // 2]
    out["top50_corrupted_share"] = float((~clean[top]).mean())
    return out
