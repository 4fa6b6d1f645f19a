"""Stage III: hybrid-modality queries (the paper's third stage).

The query is ``fusion(v, t)`` of the reference image and the modification text, trained with in-batch
contrastive learning against the target images (false negatives masked). The fusion's own loss (the
adaptive weighting's self-supervised weight loss) is added.
"""

from __future__ import annotations

from typing import Any

import torch

from ctiir.stages.base import CTIIRStage, FusionArg


class ComposedRetrieval(CTIIRStage):
    """Stage III. ``fusion`` swaps in one line: ``ComposedRetrieval(fusion="gated")``."""

    training_sources = {"main": "triplets"}
    default_eval_kinds = ("composed",)
    train_fusion = True

    def __init__(self, *args: Any, fusion: FusionArg = "adaptive", **kwargs: Any) -> None:
        super().__init__(*args, fusion=fusion, **kwargs)

    def stage_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        images = self.encode_images(torch.cat([batch["reference"], batch["target"]]))
        v, g = images.split(batch["reference"].shape[0])
        t = self.encode_texts(batch["text"])
        q, weights = self.fusion.fuse(v, t)
        retrieval = self.contrastive(q, g, batch["target_id"])
        parts = {"retrieval": retrieval}
        total = retrieval
        fusion_loss = self.fusion.loss(v, t, g)
        if fusion_loss is not None:
            parts["fusion"] = fusion_loss
            total = total + fusion_loss
        if weights is not None:
            parts["w_img"] = weights[:, 0].mean()
        return {"loss": total, **parts}
