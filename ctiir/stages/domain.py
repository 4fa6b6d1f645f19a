"""Stage II: domain pre-training with single-modality retrieval tasks (the paper's "fashion-related tasks").

Known from the paper: the model still sees single-modality queries, one task being fashion image
retrieval. Reconstructed (ours, configurable): two contrastive tasks, each switchable and weighted,
- ``t2i``: a product description retrieves its image;
- ``i2i``: a reference image retrieves its target (a composed triplet with the text dropped).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ctiir.datamodules.request import Source
from ctiir.stages.base import CTIIRStage

# Each task and the datamodule source that trains it.
TASK_SOURCES: dict[str, Source] = {"t2i": "descriptions", "i2i": "image_pairs"}
DOMAIN_TASKS = tuple(TASK_SOURCES)


class DomainPretraining(CTIIRStage):
    """Stage II. ``tasks`` picks the enabled tasks; ``t2i_weight`` / ``i2i_weight`` weight their losses.

    Reports text->image and image->text recall on the domain's descriptions (when it has them) plus the
    composed zero-shot baseline, so the pipeline shows what this stage adds.
    """

    default_eval_kinds = ("descriptions", "composed")

    def __init__(
        self,
        *args: Any,
        tasks: Sequence[str] = DOMAIN_TASKS,
        t2i_weight: float = 1.0,
        i2i_weight: float = 1.0,
        **kwargs: Any,
    ) -> None:
        unknown = [t for t in tasks if t not in DOMAIN_TASKS]
        if unknown:
            raise ValueError(f"unknown Stage II task(s) {unknown}; known: {list(DOMAIN_TASKS)}")
        if not tasks:
            raise ValueError("Stage II needs at least one task: 't2i' and/or 'i2i'")
        super().__init__(*args, **kwargs)
        self.domain_tasks = tuple(tasks)
        self.task_weights = {"t2i": t2i_weight, "i2i": i2i_weight}

    @property
    def training_sources(self) -> Mapping[str, Source]:  # type: ignore[override]
        """One loader per enabled task, keyed by the task (``batch["t2i"]``, ``batch["i2i"]``)."""
        return {task: TASK_SOURCES[task] for task in self.domain_tasks}

    def stage_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        parts: dict[str, torch.Tensor] = {}
        total = None
        for task in self.domain_tasks:
            sub = batch.get(task) if isinstance(batch, dict) else None
            if sub is None:  # CombinedLoader yields None once a shorter loader is exhausted in some modes
                continue
            if task == "t2i":
                v = self.encode_images(sub["image"])
                t = self.encode_texts(sub["text"])
                loss = self.contrastive(t, v, sub["image_id"], symmetric=True)
            else:
                both = self.encode_images(torch.cat([sub["image_a"], sub["image_b"]]))
                a, b = both.split(sub["image_a"].shape[0])
                loss = self.contrastive(a, b, sub["target_id"])
            parts[task] = loss
            weighted = self.task_weights[task] * loss
            total = weighted if total is None else total + weighted
        if total is None:
            raise ValueError(f"Stage II batch holds none of the enabled tasks {self.domain_tasks}; got {sorted(batch)}")
        return {"loss": total, **parts}
