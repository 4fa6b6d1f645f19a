"""Stage III under 2-process CPU DDP (``ddp_spawn``): negatives come from both ranks, and the recall it
reports equals a single-process evaluation of the same checkpoint."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

from ctiir.callbacks import RetrievalEvaluation
from ctiir.datamodules import SyntheticDataModule
from ctiir.stages import ComposedRetrieval


@pytest.mark.slow
def test_stage_three_ddp_gathers_negatives_and_matches_single_process(tmp_path: Path) -> None:
    from ctiir.datamodules.synthetic import generate

    root = generate(tmp_path / "synth", seed=0, size="tiny")
    # An odd number of queries per task makes the DistributedSampler pad: the metric must drop the repeat.
    data = SyntheticDataModule(root=str(root), size="tiny", batch_size=8, max_val_queries=7)
    model = ComposedRetrieval(backbone="tiny", fusion="adaptive", lr_backbone=1e-3, lr_heads=1e-3)
    evaluation = RetrievalEvaluation()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="final", monitor="val/score", mode="max")
    trainer = L.Trainer(
        strategy="ddp_spawn", accelerator="cpu", devices=2, max_epochs=1, limit_train_batches=3,
        logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[evaluation, checkpoint], default_root_dir=str(tmp_path),
    )
    trainer.fit(model, datamodule=data)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert metrics["train/keys_per_query"] == 16.0, "each rank's 8 queries are scored against both ranks' 8 targets"
    ddp_recall = {k: v for k, v in metrics.items() if k.startswith("val/synthetic/") and "/R@" in k}
    assert len(ddp_recall) >= 12, sorted(metrics)

    single = ComposedRetrieval.load_from_checkpoint(checkpoint.best_model_path)
    reference = RetrievalEvaluation()
    L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[reference]).validate(
        single, datamodule=SyntheticDataModule(root=str(root), size="tiny", batch_size=8, max_val_queries=7), verbose=False
    )
    single_recall = {f"val/{k}": v for k, v in reference.results["val"].items() if k.startswith("synthetic/") and "/R@" in k}
    assert single_recall.keys() == ddp_recall.keys()
    for key, value in single_recall.items():
        assert ddp_recall[key] == pytest.approx(value, abs=1e-4), key
