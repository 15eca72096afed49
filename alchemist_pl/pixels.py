"""Pixel ranges: datasets store images as uint8 [0, 255]; the models work in float [-1, 1]."""

from __future__ import annotations

import torch


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 (or float) pixels in [0, 255] -> float32 in [-1, 1], same shape."""
    return images.float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float pixels in [-1, 1] (clamped) -> uint8 in [0, 255], rounded, same shape and device."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
