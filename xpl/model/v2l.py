"""Vision-to-language projection: region features into the text embedding space."""

from __future__ import annotations

import torch
from torch import nn


class V2L(nn.Module):
    """Linear map `v = W f + b` from a region feature to the text space (dim D).

    Classification is a dot product with class-name embeddings; background has
    a fixed zero embedding, so its logit is exactly 0. `scale` is a fixed
    multiplier on the dot products (1.0 = the paper's plain dot product).
    """

    def __init__(self, in_features: int, embed_dim: int, *, scale: float = 1.0) -> None:
        super().__init__()
        self.proj = nn.Linear(in_features, embed_dim)
        self.scale = scale

    @property
    def embed_dim(self) -> int:
        return self.proj.out_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[R, F] (or [R, ...] flattened) region features -> [R, D] embeddings."""
        return self.proj(features.flatten(start_dim=1))

    def logits(self, v: torch.Tensor, class_embeddings: torch.Tensor) -> torch.Tensor:
        """[R, D] embeddings x [C, D] class embeddings -> [R, C+1] logits, column 0 = background = 0."""
        foreground = self.scale * (v @ class_embeddings.to(v.dtype).T)
        background = foreground.new_zeros(foreground.shape[0], 1)
        return torch.cat([background, foreground], dim=1)
