"""The fixed weighted sum: CLIP4Cir's zero-shot baseline and the paper's "fixed weighting" ablation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ctiir.fusion.base import Fused, Fusion
from ctiir.fusion.registry import register_fusion


@register_fusion("fixed", test_kwargs={"alpha": 0.3})
class FixedSum(Fusion):
    """``q = normalize(alpha * v + (1 - alpha) * t)``, the same ``alpha`` for every query.

    No parameters and no loss: it is the reference the adaptive weighting has to beat (the paper ablates
    fixed against adaptive weighting). ``alpha=0.5`` is the plain sum CLIP4Cir uses zero-shot.
    """

    def __init__(self, embed_dim: int | None = None, alpha: float = 0.5) -> None:
        super().__init__()
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha (the image weight) must be a float in [0, 1], got {alpha!r}")
        self.alpha = float(alpha)
        self._bind_if_given(embed_dim)

    def _build(self, embed_dim: int) -> None:
        """Nothing to create: the sum has no layers, only the size check needs ``embed_dim``."""

    def fuse(self, v: torch.Tensor, t: torch.Tensor) -> Fused:
        self.check_features(v, t)
        weights = v.new_tensor([self.alpha, 1.0 - self.alpha]).expand(v.shape[0], 2)
        return Fused(F.normalize(self.alpha * v + (1.0 - self.alpha) * t, dim=-1), weights.detach())
