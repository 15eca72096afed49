"""The kinds of planted web-style noise, applied to one uint8 image at a time.

Web-crawled image-caption data is bad in a few recurring ways:

==================  ===========================================================================
kind                what the sample becomes
==================  ===========================================================================
``caption_swap``    its image with another sample's caption (misaligned pair)
``blur``            its image downsampled 4x and blown up again, then blurred (low detail)
``noise``           its image under heavy Gaussian pixel noise (sigma 0.35 of the range)
``blank``           a near-plain image: one random flat colour with faint noise, caption kept
``collage``         a 2x2 mosaic of its image and three others, under its own caption (cluttered)
``near_duplicate``  another sample's image and caption, shifted by 1-2 px and slightly re-lit
==================  ===========================================================================
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

KINDS = ("caption_swap", "blur", "noise", "blank", "collage", "near_duplicate")
CLEAN = "clean"


def _pil(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(arr.transpose(1, 2, 0))


def _arr(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1).copy()


def corrupt_image(kind: str, image: np.ndarray, rng: np.random.Generator, others: list[np.ndarray] = ()) -> np.ndarray:
    """Apply one image corruption.

    Args:
        kind: one of ``blur``, ``noise``, ``blank``, ``collage``, ``near_duplicate`` (``caption_swap``
            leaves the image alone).
        image: uint8 [3, H, W].
        rng: the random source.
        others: uint8 [3, H, W] images to borrow: three for ``collage``, one for ``near_duplicate``.

    Returns:
        uint8 [3, H, W].

    Raises:
        ValueError: unknown kind, or too few ``others``.
    """
    _, h, w = image.shape
    if kind == "caption_swap":
        return image.copy()
    if kind == "blur":
        small = _pil(image).resize((max(1, w // 4), max(1, h // 4)), Image.Resampling.BILINEAR)
        return _arr(small.resize((w, h), Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(1.0)))
    if kind == "noise":
        noisy = image.astype(np.float32) + rng.normal(0.0, 0.35 * 255, image.shape)
        return np.clip(noisy, 0, 255).round().astype(np.uint8)
    if kind == "blank":
        colour = rng.integers(0, 256, size=(3, 1, 1)).astype(np.float32)
        flat = colour + rng.normal(0.0, 4.0, image.shape)
        return np.clip(flat, 0, 255).round().astype(np.uint8)
    if kind == "collage":
        if len(others) < 3:
            raise ValueError("collage needs three other images")
        tiles = [_pil(x).resize((w // 2, h // 2), Image.Resampling.BILINEAR) for x in (image, *others[:3])]
        canvas = Image.new("RGB", (w, h), (255, 255, 255))
        for i, tile in enumerate(tiles):
            canvas.paste(tile, ((i % 2) * (w // 2), (i // 2) * (h // 2)))
        return _arr(canvas)
    if kind == "near_duplicate":
        if len(others) < 1:
            raise ValueError("near_duplicate needs the image it duplicates")
        dx, dy = (int(v) for v in rng.integers(-2, 3, size=2))
        shifted = _pil(others[0]).transform(
            (w, h), Image.Transform.AFFINE, (1, 0, -dx, 0, 1, -dy), fillcolor=(255, 255, 255)
        )
        gain = float(rng.uniform(0.92, 1.08))
        return np.clip(_arr(shifted).astype(np.float32) * gain, 0, 255).round().astype(np.uint8)
    raise ValueError(f"unknown corruption kind {kind!r}; expected one of {KINDS}")
