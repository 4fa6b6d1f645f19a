"""The contract of a fusion: how a reference image and a modification text become one query."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Fusion(nn.Module):
    """Combines L2-normalised image and text features into an L2-normalised query.

    ``forward(v, t)`` gets ``v`` and ``t`` of shape (B, D), both already L2-normalised, and returns the
    L2-normalised query (B, D). ``loss(v, t, g)`` is the fusion's own training loss given the normalised
    target embeddings ``g`` (or ``None`` when it has none); the stage adds it to the retrieval loss.
    ``last_weights`` holds the latest per-query ``(w_img, w_txt)`` as a (B, 2) tensor for fusions that
    weight the modalities, else ``None``. ``config`` is a JSON-serialisable ``{"name": ..., **kwargs}``
    such that ``build_fusion(**config)`` rebuilds it.
    """

    config: dict[str, Any]
    last_weights: torch.Tensor | None = None

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim

    def forward(self, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, v: torch.Tensor, t: torch.Tensor, g: torch.Tensor) -> torch.Tensor | None:
        return None
