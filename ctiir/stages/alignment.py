"""Stage I: open-domain image-text alignment (the paper's first stage).

A symmetric image<->text contrastive loss on image-caption pairs, as CLIP is trained. With pretrained CLIP
weights the paper reuses them as they are: run this stage with ``max_epochs=0`` to only evaluate.
"""

from __future__ import annotations

from typing import Any

import torch

from ctiir.stages.base import CTIIRStage


class OpenDomainAlignment(CTIIRStage):
    """Stage I. Trains on ``caption_pairs``; reports text->image and image->text recall on them, then the
    composed protocol with the (fixed-sum) fusion: the zero-shot baseline after this stage."""

    training_sources = {"main": "caption_pairs"}
    default_eval_kinds = ("caption_pairs", "composed")

    def stage_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        v = self.encode_images(batch["image"])
        t = self.encode_texts(batch["text"])
        loss = self.contrastive(t, v, batch["image_id"], symmetric=True)
        return {"loss": loss}
