"""The rater: instance features of (image, caption) pairs and the Group MLP (paper Sec. 3.2).

``Rater(images, pooled) -> (s, b)``:

- instance feature ``f_i``: a small convolutional backbone over pixels, concatenated with a
  projection of the caption's sentence embedding (the paper uses the proxy's own backbone
  conditioned on text; here any small backbone is pluggable), optionally with an image × caption
  interaction block (a low-rank bilinear form, so that the heads can read caption agreement);
- instance head: ``MLP(f_i) -> a_i`` (a logit), ``s_i = sigmoid(a_i)``, ``W_inst = softmax_B(s)``
  (as in the released code: the sigmoid bounds how peaked the batch softmax can get — without it
  the logits grew to a spread of ~12 and each batch's weight sat on one sample);
- batch head: ``MLP([mean_B(f); var_B(f)]) -> sigmoid -> b``, one scalar per batch;
- weight (Eq. 7): ``W_i = softmax_B(s)_i * b``.

The saved score of a sample is its instance logit ``a_i`` (monotone in ``s_i``, without the
sigmoid's saturation): it depends on that sample alone, not on the batch it was scored in (the
released code saves the batch-relative product instead).
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBackbone(nn.Module):
    """Image + caption -> instance feature ``f``.

    Args:
        in_channels: image channels.
        channels: widths of the strided 3x3 conv stages (each halves H and W).
        text_dim: caption embedding size (384 for MiniLM).
        feature_dim: size d of the image and caption projections together.
        interaction: r ≥ 0; with r > 0, ``f`` also holds ``U·x ⊙ V·c`` (r extra features): the
            elementwise product of an image and a caption projection, a rank-r bilinear form
            ``x^T U_k^T V_k c`` per feature. Without it the image and caption parts of ``f`` are
            additive (a caption's effect on ``f`` does not depend on the image).

    Shapes: images [B, C, H, W] in [-1, 1], pooled [B, text_dim] -> f [B, feature_dim + interaction].
    No batch statistics are used (GroupNorm), so ``f_i`` depends on sample i only.

    Raises:
        ValueError: ``interaction`` < 0.
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels=(32, 64, 64),
        text_dim: int = 384,
        feature_dim: int = 128,
        interaction: int = 0,
    ):
        super().__init__()
        if isinstance(interaction, bool) or not isinstance(interaction, int) or interaction < 0:
            raise ValueError(f"rater.backbone.interaction must be an integer >= 0, got {interaction!r}")
        layers, c = [], in_channels
        for w in channels:
            layers += [nn.Conv2d(c, w, 3, stride=2, padding=1), nn.GroupNorm(8, w), nn.GELU()]
            c = w
        self.conv = nn.Sequential(*layers)
        self.image_proj = nn.Linear(c, feature_dim // 2)
        self.text_proj = nn.Linear(text_dim, feature_dim - feature_dim // 2)
        self.image_pair = nn.Linear(c, interaction) if interaction else None
        self.text_pair = nn.Linear(text_dim, interaction) if interaction else None
        self.feature_dim = feature_dim + interaction

    def forward(self, images: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        x = self.conv(images).mean(dim=(2, 3))
        parts = [self.image_proj(x), self.text_proj(pooled)]
        if self.image_pair is not None:
            parts.append(self.image_pair(x) * self.text_pair(pooled))
        return torch.cat(parts, dim=-1)


class GroupMLP(nn.Module):
    """Instance head and batch head of the Group MLP.

    Args:
        feature_dim: d, size of ``f_i``.
        hidden_dim: width of both heads (the released code uses 64).
        batch_head: False for the "instance head only" ablation (paper Section 3.2 motivates the
            batch head): no batch head, ``b`` fixed at 1, so the weights are ``softmax_B(s)``.

    ``forward(f [B, d]) -> (s [B], b [])``: instance scores ``sigmoid(a)`` and the batch weight,
    both in (0, 1] (b = 1 exactly without a batch head). ``instance_logit(f) -> a [B]``.
    """

    def __init__(self, feature_dim: int, hidden_dim: int = 64, batch_head: bool = True):
        super().__init__()
        self.instance_head = nn.Sequential(nn.Linear(feature_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, 1))
        self.batch_head = (
            nn.Sequential(nn.Linear(2 * feature_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, 1))
            if batch_head
            else None
        )

    def instance_logit(self, f: torch.Tensor) -> torch.Tensor:
        return self.instance_head(f).squeeze(-1)

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = torch.sigmoid(self.instance_logit(f))
        if self.batch_head is None:
            return s, torch.ones((), dtype=s.dtype, device=s.device)
        stats = torch.cat([f.mean(0), f.var(0, unbiased=False)], dim=-1)
        b = torch.sigmoid(self.batch_head(stats)).squeeze(-1)
        return s, b


def sample_weights(s: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Eq. 7: ``W_i = softmax_B(s)_i * b``; [B] instance scores and scalar b -> [B] weights summing to b."""
    return torch.softmax(s, dim=0) * b


class Rater(nn.Module):
    """Backbone + Group MLP. ``forward(images, pooled) -> (s [B], b [])``; ``score`` -> instance logits."""

    def __init__(self, backbone: nn.Module, hidden_dim: int = 64, batch_head: bool = True):
        super().__init__()
        self.backbone = backbone
        self.group_mlp = GroupMLP(backbone.feature_dim, hidden_dim, batch_head)

    def forward(self, images: torch.Tensor, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.group_mlp(self.backbone(images, pooled))

    @torch.no_grad()
    def score(self, images: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """Order-free score of each sample: the instance logit ``a_i``, [B] float32."""
        return self.group_mlp.instance_logit(self.backbone(images, pooled)).float()
