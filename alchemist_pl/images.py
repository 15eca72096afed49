"""Decode an image file as an image viewer shows it, then to a square uint8 RGB array.

What the file says about how to display it is applied, in this order:

1. the first frame of an animated image (GIF, APNG, WebP), as a still thumbnail shows it;
2. the EXIF orientation (tag 274, values 1-8: rotations and mirrorings; ``PIL.ImageOps.exif_transpose``,
   as image viewers, browsers and img2dataset's OpenCV decode do);
3. 16-bit grey scaled to 8 bits (``0..65535 -> 0..255``);
4. an embedded ICC colour profile: pixels converted from it to sRGB (LittleCMS through
   ``PIL.ImageCms``, perceptual intent), as colour-managed viewers and browsers do;
5. transparency (alpha, or a palette's transparent index) composited on white;
6. any other mode (palette, grey, CMYK: Pillow inverts Adobe CMYK JPEGs) converted to RGB.
"""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image, ImageCms, ImageOps

from .errors import DataError

_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
_ICC_MODES = {"RGB ": "RGB", "GRAY": "L", "CMYK": "CMYK"}  # profile colour space -> Pillow mode


def decode_image(raw, resolution: int) -> np.ndarray:
    """Decode ``raw.image`` to uint8 RGB [3, resolution, resolution]: displayed as above, centre crop, resize.

    ``raw``: a :class:`~alchemist_pl.data.RawSample` (``image`` bytes, ``sample_id`` and ``source``
    for errors). An image stored at ``resolution`` x ``resolution`` is not resampled.

    Raises:
        DataError: the bytes are not a decodable image, or its ICC profile cannot be applied
            (names the file and sample).
    """
    try:
        with Image.open(io.BytesIO(raw.image)) as im:
            im.seek(0)
            im.load()
            im = _as_displayed(im)
            if im.size != (resolution, resolution):
                im = ImageOps.fit(im, (resolution, resolution), Image.Resampling.BICUBIC)
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy()
    except Exception as e:  # PIL raises many types for corrupt files
        raise DataError(f"{raw.source}: sample {raw.sample_id!r}: cannot decode image ({type(e).__name__}: {e})") from e


def _as_displayed(im: Image.Image) -> Image.Image:
    """Steps 2-6 of the module docstring on a loaded frame; returns an RGB image."""
    icc = im.info.get("icc_profile")
    ImageOps.exif_transpose(im, in_place=True)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: scale 0..65535 to 0..255
        arr = np.asarray(im, dtype=np.float32)
        im = Image.fromarray(np.clip(arr / 257.0, 0, 255).round().astype(np.uint8))
    has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
    if has_alpha and im.mode != "RGBA":
        im = im.convert("RGBA")
    if icc:
        im = _to_srgb(im, icc)
    if has_alpha:
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return im if im.mode == "RGB" else im.convert("RGB")


def _to_srgb(im: Image.Image, icc: bytes) -> Image.Image:
    """``im`` converted from its embedded ICC profile to sRGB (alpha kept).

    Raises:
        ValueError: the profile's colour space does not fit the image's pixels.
    """
    space = _profile(icc).profile.xcolor_space
    base = _ICC_MODES.get(space)
    alpha = im.getchannel("A") if im.mode == "RGBA" else None
    if im.mode in ("RGBA", "P", "1") and base in ("RGB", "L"):
        im = im.convert(base)
    if im.mode == "L" and base == "RGB":
        im = im.convert("RGB")
    if im.mode != base:
        raise ValueError(f"its ICC profile is for colour space {space.strip()!r}, but the pixels are mode {im.mode}")
    out = ImageCms.applyTransform(im, _transform(icc, base))
    if alpha is not None:
        out.putalpha(alpha)
    return out


@functools.lru_cache(maxsize=16)
def _profile(icc: bytes) -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(io.BytesIO(icc))


@functools.lru_cache(maxsize=16)
def _transform(icc: bytes, mode: str) -> ImageCms.ImageCmsTransform:
    return ImageCms.buildTransform(_profile(icc), _SRGB, mode, "RGB", ImageCms.Intent.PERCEPTUAL)
