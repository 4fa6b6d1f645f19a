"""A CLIP4Cir-style Combiner (Baldrati et al.): learned fusion with a sigmoid gate and a residual.

Offered beside the paper's adaptive weighting as the strongest widely used learned baseline. The layout
follows CLIP4Cir's Combiner; the size defaults follow its RN50x4 setting (projection 4x, hidden 8x the
feature size), capped at its 2560 / 5120 so that ViT-L-sized features do not get a ~100M-parameter head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ctiir.fusion.base import Fused, Fusion, check_dropout, check_positive_int
from ctiir.fusion.registry import register_fusion

PROJECTION_FACTOR, PROJECTION_CAP = 4, 2560
HIDDEN_FACTOR, HIDDEN_CAP = 8, 5120


@register_fusion("gated", test_kwargs={"projection_dim": 12, "hidden_dim": 16, "dropout": 0.1})
class Gated(Fusion):
    """``q = normalize(MLP([p_t, p_v]) + gate * t + (1 - gate) * v)`` with ``gate = sigmoid(G([p_t, p_v]))``.

    ``p_t`` and ``p_v`` are the text and image features projected to ``projection_dim`` (Linear, ReLU,
    dropout). ``MLP`` is ``2P -> hidden_dim -> D`` (ReLU, dropout) and ``G`` is ``2P -> hidden_dim -> 1``
    (ReLU, dropout). The gate mixes the *input* features as a residual, so the head starts close to a
    learned weighted sum and the MLP adds a correction. Its weights are ``(1 - gate, gate)``.

    ``projection_dim`` / ``hidden_dim`` default (``None``) to ``min(4 D, 2560)`` / ``min(8 D, 5120)``; once
    bound, the attributes (and so ``config``) hold the resolved sizes.
    """

    def __init__(
        self,
        embed_dim: int | None = None,
        projection_dim: int | None = None,
        hidden_dim: int | None = None,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.projection_dim = None if projection_dim is None else check_positive_int(projection_dim, "projection_dim")
        self.hidden_dim = None if hidden_dim is None else check_positive_int(hidden_dim, "hidden_dim")
        self.dropout = check_dropout(dropout)
        self._bind_if_given(embed_dim)

    def _build(self, embed_dim: int) -> None:
        if self.projection_dim is None:
            self.projection_dim = min(PROJECTION_FACTOR * embed_dim, PROJECTION_CAP)
        if self.hidden_dim is None:
            self.hidden_dim = min(HIDDEN_FACTOR * embed_dim, HIDDEN_CAP)
        proj, hidden = self.projection_dim, self.hidden_dim
        self.text_projection = nn.Sequential(nn.Linear(embed_dim, proj), nn.ReLU(), nn.Dropout(self.dropout))
        self.image_projection = nn.Sequential(nn.Linear(embed_dim, proj), nn.ReLU(), nn.Dropout(self.dropout))
        self.combiner = nn.Sequential(
            nn.Linear(2 * proj, hidden), nn.ReLU(), nn.Dropout(self.dropout), nn.Linear(hidden, embed_dim)
        )
        self.gate = nn.Sequential(
            nn.Linear(2 * proj, hidden), nn.ReLU(), nn.Dropout(self.dropout), nn.Linear(hidden, 1), nn.Sigmoid()
        )

    def fuse(self, v: torch.Tensor, t: torch.Tensor) -> Fused:
        self.check_features(v, t)
        joint = torch.cat([self.text_projection(t), self.image_projection(v)], dim=-1)
        gate = self.gate(joint)  # (B, 1): the text's share of the residual
        query = F.normalize(self.combiner(joint) + gate * t + (1.0 - gate) * v, dim=-1)
        return Fused(query, torch.cat([1.0 - gate, gate], dim=-1).detach())
