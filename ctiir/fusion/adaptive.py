"""The paper's self-supervised adaptive weighting of the image and the text, per query.

**Paper (known):** each query gets its own weights for the reference image and the modification text,
because "the contribution of each modality varies across retrieval scenarios", and the weighting is learned
with self-supervision, i.e. from the training triplets with no extra labels.

**Ours (reconstructed, every choice an argument):** the weights are a softmax over 2 logits from a small MLP
on ``[v, t]`` (optionally ``v * t`` and ``|v - t|`` too); the query is ``normalize(w_img v + w_txt t)``; the
self-supervision target comes in three modes (``soft``, ``rank``, ``implicit``); the weight loss is
``lambda_w * KL(target || w)``; the MLP's last layer starts near zero so the weights start near (0.5, 0.5).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from ctiir.fusion.base import Fused, Fusion, check_dropout, check_positive_int
from ctiir.fusion.registry import register_fusion

WeightMode = Literal["soft", "rank", "implicit"]
WEIGHT_MODES: tuple[str, ...] = get_args(WeightMode)
HIDDEN_CAP = 512
# The last layer's init scale: logits of order 1e-3, so the first weights are 0.5 +- 1e-3 while every layer
# still gets a non-zero gradient from the first step (a zero init would starve the layers below it).
LAST_LAYER_STD = 1e-3


def soft_targets(v: torch.Tensor, t: torch.Tensor, g: torch.Tensor, tau_w: float) -> torch.Tensor:
    """``softmax([cos(v, g), cos(t, g)] / tau_w)`` per query, without gradient.

    The modality whose feature is already closer to the target gets the larger share. Cosines across
    modalities are compared directly, so a backbone with a large image-text modality gap biases it to the
    image; :func:`rank_targets` does not have that bias.
    """
    with torch.no_grad():
        cos = torch.stack([F.cosine_similarity(v, g, dim=-1), F.cosine_similarity(t, g, dim=-1)], dim=-1)
        return torch.softmax(cos.float() / tau_w, dim=-1)


def rank_targets(v: torch.Tensor, t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """One-hot on the modality whose single-modality query ranks query i's target ``g[i]`` higher in the batch.

    The gallery is the batch's targets ``g`` (B, D), ``g[i]`` being the target of query i. A rank is the number
    of gallery items scored strictly above the target (a duplicate of the target, the same image twice in a
    batch, ties with it and is not counted). Equal ranks give (0.5, 0.5). Each modality is only compared with
    itself, so the image-text modality gap cannot bias the target. Under DDP the gallery is the local batch.
    """
    with torch.no_grad():
        ranks = []
        for query in (v, t):
            scores = query @ g.T  # (B, B): query i against every target in the batch
            positive = scores.diagonal().unsqueeze(1)
            ranks.append((scores > positive).sum(dim=1))
        rank_v, rank_t = ranks
        target = torch.full((v.shape[0], 2), 0.5, device=v.device)
        target[rank_v < rank_t] = torch.tensor([1.0, 0.0], device=v.device)
        target[rank_t < rank_v] = torch.tensor([0.0, 1.0], device=v.device)
        return target


@register_fusion("adaptive", test_kwargs={"hidden_dim": 16, "dropout": 0.1, "interactions": True, "mode": "soft"})
class AdaptiveWeighting(Fusion):
    """Per-query ``(w_img, w_txt) = softmax(MLP(x))`` with ``x = [v, t]`` (``+ [v * t, |v - t|]`` when
    ``interactions``); ``q = normalize(w_img * v + w_txt * t)``.

    The per-query weighting and its self-supervision are the paper's; the MLP, the target modes and the KL
    loss are our reconstruction:

    - ``mode="soft"`` (default): target ``softmax([cos(v, g), cos(t, g)] / tau_w)``;
    - ``mode="rank"``: a one-hot target on the modality whose own query ranks the target higher among the
      batch's targets (ties 0.5 / 0.5);
    - ``mode="implicit"``: no weight loss, the weights learn through the retrieval loss alone.

    ``loss`` is ``lambda_w * KL(target || w)``, the batch mean. With ``detach_features`` (default) the weight
    loss trains the MLP only; the encoders learn from the retrieval loss, as with the other fusions. At
    inference the weights depend on ``(v, t)`` only (:meth:`weights`), so gallery embeddings are unaffected.
    ``hidden_dim=None`` resolves to ``min(D, 512)`` at bind time.
    """

    def __init__(
        self,
        embed_dim: int | None = None,
        mode: WeightMode = "soft",
        tau_w: float = 0.05,
        lambda_w: float = 1.0,
        hidden_dim: int | None = None,
        interactions: bool = False,
        dropout: float = 0.1,
        detach_features: bool = True,
    ) -> None:
        super().__init__()
        if mode not in WEIGHT_MODES:
            raise ValueError(f"mode must be one of {', '.join(WEIGHT_MODES)}; got {mode!r}")
        for name, value in (("tau_w", tau_w), ("lambda_w", lambda_w)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a float, got {value!r}")
        if not tau_w > 0:
            raise ValueError(f"tau_w (the soft-target temperature) must be > 0, got {tau_w!r}")
        if not lambda_w >= 0:
            raise ValueError(f"lambda_w (the weight-loss factor) must be >= 0, got {lambda_w!r}")
        for name, flag in (("interactions", interactions), ("detach_features", detach_features)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be a bool, got {flag!r}")
        self.mode: WeightMode = mode
        self.tau_w = float(tau_w)
        self.lambda_w = float(lambda_w)
        self.hidden_dim = None if hidden_dim is None else check_positive_int(hidden_dim, "hidden_dim")
        self.interactions = interactions
        self.dropout = check_dropout(dropout)
        self.detach_features = detach_features
        self._bind_if_given(embed_dim)

    def _build(self, embed_dim: int) -> None:
        if self.hidden_dim is None:
            self.hidden_dim = min(embed_dim, HIDDEN_CAP)
        in_dim = (4 if self.interactions else 2) * embed_dim
        last = nn.Linear(self.hidden_dim, 2)
        nn.init.normal_(last.weight, std=LAST_LAYER_STD)
        nn.init.zeros_(last.bias)
        # LayerNorm first: unit-norm features have entries of order 1/sqrt(D), which would otherwise leave
        # the MLP's activations, and its learning speed, dependent on the backbone's width.
        self.mlp = nn.Sequential(
            nn.LayerNorm(in_dim), nn.Linear(in_dim, self.hidden_dim), nn.GELU(), nn.Dropout(self.dropout), last
        )

    def _logits(self, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        parts = [v, t, v * t, (v - t).abs()] if self.interactions else [v, t]
        return self.mlp(torch.cat(parts, dim=-1))

    def weights(self, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The per-query ``(w_img, w_txt)`` (B, 2), rows summing to 1; a function of ``(v, t)`` only."""
        self.check_features(v, t)
        return torch.softmax(self._logits(v, t).float(), dim=-1)

    def fuse(self, v: torch.Tensor, t: torch.Tensor) -> Fused:
        w = self.weights(v, t)
        query_w = w.to(v.dtype)
        return Fused(F.normalize(query_w[:, :1] * v + query_w[:, 1:] * t, dim=-1), w.detach())

    def targets(self, v: torch.Tensor, t: torch.Tensor, g: torch.Tensor) -> torch.Tensor | None:
        """The self-supervision target (B, 2) of the current mode; ``None`` for ``implicit``."""
        self.check_features(v, t)
        self.check_targets(v, g)
        if self.mode == "soft":
            return soft_targets(v, t, g, self.tau_w)
        if self.mode == "rank":
            return rank_targets(v, t, g)
        return None

    def loss(self, v: torch.Tensor, t: torch.Tensor, g: torch.Tensor) -> torch.Tensor | None:
        """``lambda_w * KL(target || w)`` averaged over the batch; ``None`` in ``implicit`` mode."""
        target = self.targets(v, t, g)
        if target is None:
            return None
        if self.detach_features:
            v, t = v.detach(), t.detach()
        log_w = torch.log_softmax(self._logits(v, t).float(), dim=-1)
        # kl_div(input=log q, target=p) = sum p (log p - log q), with 0 log 0 = 0 for one-hot rank targets.
        return self.lambda_w * F.kl_div(log_w, target, reduction="batchmean")

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, mode={self.mode!r}, tau_w={self.tau_w}, lambda_w={self.lambda_w}"
