"""Checkpoints of the first ``tiny`` architecture still load after ``ctiir-tiny.json`` changed (issue 11).

A checkpoint stores its backbone's ``model_cfg``, so it rebuilds the architecture it was trained with,
whatever the shipped config says now.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from ctiir.backbones import build_backbone
from ctiir.stages import ComposedRetrieval, DomainPretraining

# ``ctiir/backbones/configs/ctiir-tiny.json`` before issue 11 (8 px patches: 65 image tokens, 6 layers).
OLD_TINY_CFG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": 6, "width": 128, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 4},
}


def save(model: L.LightningModule, path: Path) -> Path:
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


def queries(model: ComposedRetrieval) -> torch.Tensor:
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        return model.encode_query({"image": images, "text": ["is red", "has long sleeves and a collar"]}).query


def test_old_tiny_checkpoint_loads_with_the_current_code(tmp_path: Path) -> None:
    assert build_backbone("tiny").spec["model_cfg"] != OLD_TINY_CFG, "the shipped tiny config no longer is the old one"
    torch.manual_seed(0)
    old = ComposedRetrieval(backbone={"name": "tiny", "model_cfg": OLD_TINY_CFG})
    path = save(old, tmp_path / "old.ckpt")
    stored = torch.load(path, map_location="cpu", weights_only=False)["hyper_parameters"]["backbone"]
    assert stored["name"] == "tiny" and stored["model_cfg"] == OLD_TINY_CFG

    loaded = ComposedRetrieval.load_from_checkpoint(path)
    visual = loaded.backbone.model.visual
    assert tuple(visual.patch_size) == (8, 8) and len(visual.transformer.resblocks) == 6
    assert torch.equal(queries(old), queries(loaded))


def test_old_tiny_checkpoint_starts_a_later_stage_only_with_its_own_architecture(tmp_path: Path) -> None:
    torch.manual_seed(0)
    stage_two = DomainPretraining(backbone={"name": "tiny", "model_cfg": OLD_TINY_CFG})
    path = save(stage_two, tmp_path / "stage2.ckpt")
    with pytest.raises(ValueError, match="init_from.*was trained with backbone"):
        ComposedRetrieval(backbone="tiny", init_from=str(path))  # today's tiny: another architecture, a clear error
    started = ComposedRetrieval(backbone={"name": "tiny", "model_cfg": OLD_TINY_CFG}, init_from=str(path))
    for (name, a), b in zip(stage_two.backbone.state_dict().items(), started.backbone.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
