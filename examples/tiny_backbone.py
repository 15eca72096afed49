"""A custom rater backbone: per-channel statistics and a 4x4 thumbnail of the image with the caption
embedding, through an MLP (no convolution).

Select it with ``hydra.searchpath=[file://examples/conf] rater=thumbnail_mlp`` from the repository
root (``examples/conf/rater/thumbnail_mlp.yaml``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ThumbnailBackbone(nn.Module):
    """Image + caption -> instance feature ``f``, as :class:`alchemist_pl.rater.Rater` expects.

    Args:
        in_channels: image channels C.
        text_dim: caption embedding size D (384).
        feature_dim: output size d (the Group MLP reads it from ``self.feature_dim``).
        thumbnail: side of the average-pooled thumbnail.

    Shapes: images [B, C, H, W] in [-1, 1], pooled [B, D] -> f [B, feature_dim]. Every statistic is
    per image, so ``f_i`` depends on sample i alone.
    """

    def __init__(self, in_channels: int = 3, text_dim: int = 384, feature_dim: int = 64, thumbnail: int = 4):
        super().__init__()
        self.feature_dim, self.thumbnail = feature_dim, thumbnail
        n = in_channels * (2 + thumbnail * thumbnail) + text_dim
        self.mlp = nn.Sequential(nn.Linear(n, feature_dim), nn.GELU(), nn.Linear(feature_dim, feature_dim))

    def forward(self, images: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        thumb = F.adaptive_avg_pool2d(images, self.thumbnail).flatten(1)
        x = torch.cat([images.mean(dim=(2, 3)), images.std(dim=(2, 3)), thumb, pooled.to(images.dtype)], dim=-1)
        return self.mlp(x)
