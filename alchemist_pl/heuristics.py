"""Heuristic image-quality scorers, the baselines of the paper's Table 1.

- ``clarity``: variance of the Laplacian of the grey image (a sharp image has strong second
  derivatives; blur removes them);
- ``frequency``: share of the spectral energy (DC excluded) above a radial frequency cutoff;
- ``edge_density``: share of pixels whose Sobel gradient magnitude exceeds a threshold.

Higher score = more of the property (sharper, more high-frequency, more edges), so ``top_k``
keeps the sharpest / busiest images. Filters and FFT come from SciPy (``scipy.ndimage``,
``scipy.fft``). Images are decoded as the rest of the tool decodes them (alpha on white, centre
crop, resize to ``resolution``), then turned grey with ITU-R BT.601 luma weights, in [0, 1].

The score stage applies them to a pool (:class:`alchemist_pl.scoring.HeuristicScorer`,
``python train.py +experiment=score scorer=clarity``) and writes ``scores.parquet``, which goes
straight into ``prune`` / ``subset`` (``scores_path=...``).
"""

from __future__ import annotations

import numpy as np
from scipy import fft, ndimage

LUMA = np.array([0.299, 0.587, 0.114])


def to_grey(images: np.ndarray) -> np.ndarray:
    """uint8 RGB [N, 3, H, W] (or one [3, H, W]) -> float64 grey [N, H, W] in [0, 1]."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images [N, 3, H, W], got shape {images.shape}")
    return np.tensordot(LUMA, images.astype(np.float64) / 255.0, axes=([0], [1]))


def clarity(images: np.ndarray) -> np.ndarray:
    """Variance of the Laplacian per image: [N, 3, H, W] uint8 -> [N] float64 (units: grey level², grey in [0, 1]).

    0 for a flat or linear-ramp image; falls when the image is blurred.
    """
    grey = to_grey(images)
    lap = ndimage.laplace(grey, mode="reflect", axes=(1, 2))
    return lap.reshape(len(lap), -1).var(axis=1)


def frequency(images: np.ndarray, cutoff: float = 0.25) -> np.ndarray:
    """Share of spectral energy above ``cutoff`` (cycles per pixel, radial; Nyquist = 0.5).

    [N, 3, H, W] uint8 -> [N] float64 in [0, 1]; the DC term (mean brightness) is excluded and a
    flat image scores 0.

    Raises:
        ValueError: ``cutoff`` not in (0, 0.5·√2).
    """
    if not 0 < cutoff < 0.5 * np.sqrt(2):
        raise ValueError(f"cutoff must be in (0, {0.5 * np.sqrt(2):.3f}) cycles per pixel, got {cutoff}")
    grey = to_grey(images)
    h, w = grey.shape[1:]
    power = np.abs(fft.fft2(grey, axes=(1, 2))) ** 2
    radius = np.hypot(*np.meshgrid(fft.fftfreq(h), fft.fftfreq(w), indexing="ij"))
    total = power[:, radius > 0].sum(axis=1)
    high = power[:, radius > cutoff].sum(axis=1)
    return np.divide(high, total, out=np.zeros_like(total), where=total > 1e-12 * h * w)


def edge_density(images: np.ndarray, threshold: float = 0.3) -> np.ndarray:
    """Share of pixels with Sobel gradient magnitude > ``threshold`` (grey levels per pixel, grey in [0, 1]).

    [N, 3, H, W] uint8 -> [N] float64 in [0, 1]; exactly 0 for a flat image. The Sobel responses are
    divided by 4 (the kernel's weight on each side) so a unit step edge has magnitude 1. The default
    0.3 counts strong edges only: 32 px emoji are dense in weak edges (over 70% of pixels exceed
    0.1), and a blur widens weak edges, so at low thresholds blurring can raise the count.

    Raises:
        ValueError: ``threshold <= 0``.
    """
    if threshold <= 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    grey = to_grey(images)
    gy = ndimage.sobel(grey, axis=1, mode="nearest") / 4.0
    gx = ndimage.sobel(grey, axis=2, mode="nearest") / 4.0
    return (np.hypot(gx, gy) > threshold).reshape(len(grey), -1).mean(axis=1)


SCORERS = {"clarity": clarity, "frequency": frequency, "edge_density": edge_density}


def score_images(images: np.ndarray, scorer: str, **params) -> np.ndarray:
    """Scores [N] float64 of uint8 images [N, 3, H, W] with the named scorer (``SCORERS``).

    Raises:
        ValueError: unknown scorer.
    """
    if scorer not in SCORERS:
        raise ValueError(f"scorer must be one of {sorted(SCORERS)}, got {scorer!r}")
    return SCORERS[scorer](images, **params)
