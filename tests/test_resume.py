"""Exact resume: a Stage III run stopped and resumed from its last checkpoint ends with the same weights as one
that was never stopped (deterministic mode, CPU), at an epoch boundary and mid-epoch."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from ctiir.checkpoints import SafeCheckpointIO
from ctiir.datamodules import SyntheticDataModule
from ctiir.stages import ComposedRetrieval

EPOCHS = 2
BATCHES = 2  # per epoch (limit_train_batches)


class Interrupt(RuntimeError):
    """Stands for a kill: raised before a step, after the previous step's checkpoint was written."""


class StopBefore(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            raise Interrupt(f"interrupted before step {self.step}")


def run(root: Path, folder: Path, stop_before: int | None = None, ckpt_path: str | None = None) -> ComposedRetrieval:
    """Stage III on the tiny benchmark: random crops, shuffled batches, caption order and fusion dropout all
    draw random numbers, so any state lost on resume shows in the weights."""
    L.seed_everything(0, workers=True)
    model = ComposedRetrieval(backbone="tiny", fusion="adaptive", lr_backbone=1e-3, lr_heads=1e-3, warmup_steps=2)
    data = SyntheticDataModule(root=str(root), size="tiny", batch_size=16)
    callbacks: list[L.Callback] = []
    if stop_before is not None:  # the checkpoint written after the step before the interruption
        saver = ModelCheckpoint(dirpath=folder, filename="{step}", every_n_train_steps=stop_before, save_top_k=-1)
        callbacks = [saver, StopBefore(stop_before)]
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=EPOCHS, limit_train_batches=BATCHES, limit_val_batches=0,
        deterministic=True, logger=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, callbacks=callbacks, enable_checkpointing=stop_before is not None, plugins=[SafeCheckpointIO()], default_root_dir=str(folder),
    )
    if stop_before is None:
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
        assert trainer.global_step == EPOCHS * BATCHES
    else:
        with pytest.raises(Interrupt):
            trainer.fit(model, datamodule=data)
    return model


def max_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)


@pytest.fixture(scope="module")
def uninterrupted(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> ComposedRetrieval:
    return run(synth_root, tmp_path_factory.mktemp("straight"))


@pytest.mark.slow
@pytest.mark.parametrize("stop_before", [BATCHES, BATCHES + 1], ids=["epoch-boundary", "mid-epoch"])
def test_a_resumed_stage_three_run_ends_with_the_uninterrupted_weights(
    stop_before: int, synth_root: Path, tmp_path: Path, uninterrupted: ComposedRetrieval
) -> None:
    run(synth_root, tmp_path, stop_before=stop_before)
    last = tmp_path / f"step={stop_before}.ckpt"
    assert last.is_file()
    resumed = run(synth_root, tmp_path / "resumed", ckpt_path=str(last))
    difference = max_difference(uninterrupted, resumed)
    print(f"max |weight difference| resumed before step {stop_before}: {difference:.3g}")
    assert difference <= 1e-6


# ---------------------------------------------------------------------------------------------- progressive
def progressive_config(tmp_path: Path, root: Path, run_dir: Path) -> Path:
    """Stages I and II, two batches an epoch, one category; no validation (the tested weights are the last
    ones). Stage II's image-pair loader is shorter than its description loader, so it restarts within an
    epoch (a second pass), which the resume must replay too."""
    config = tmp_path / f"{run_dir.name}.yaml"
    config.write_text(
        f"""
run_dir: {run_dir}
seed: 0
backbone: tiny
progress_bar: false
data:
  class_path: ctiir.datamodules.SyntheticDataModule
  init_args: {{root: {root}, size: tiny, batch_size: 16, max_val_queries: 6, categories: [dress]}}
trainer: {{accelerator: cpu, devices: 1, limit_train_batches: 2, limit_val_batches: 0, limit_test_batches: 1, deterministic: true}}
stages:
  I: {{max_epochs: 1, eval_kinds: [composed]}}
  II: {{max_epochs: 2, eval_kinds: [composed], model: {{tasks: [t2i, i2i]}}}}
  III: {{enabled: false}}
"""
    )
    return config


def stage_weights(run_dir: Path, stage: str) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / f"stage-{stage}" / "best.ckpt", map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_progressive_interrupted_in_stage_two_resumes_it_and_keeps_stage_one(
    synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ctiir import pipeline
    from ctiir.stages import DomainPretraining

    straight = tmp_path / "straight"
    assert pipeline.progressive_main(["--config", str(progressive_config(tmp_path, synth_root, straight))]) == 0

    run_dir = tmp_path / "interrupted"
    config = str(progressive_config(tmp_path, synth_root, run_dir))
    original_step = DomainPretraining.training_step
    steps: list[int] = []

    def counted_step(self, batch, batch_idx):
        steps.append(self.global_step)
        if interrupt and self.global_step == 2:  # the first step of Stage II's second epoch
            raise Interrupt("killed during Stage II")
        return original_step(self, batch, batch_idx)

    monkeypatch.setattr(DomainPretraining, "training_step", counted_step)
    interrupt = True
    with pytest.raises(Interrupt):
        pipeline.progressive_main(["--config", config])
    stage_one = run_dir / "stage-I" / "best.ckpt"
    assert (run_dir / "stage-I" / "outcome.json").is_file() and not (run_dir / "stage-II" / "outcome.json").exists()
    assert (run_dir / "stage-II" / "last.ckpt").is_file() and not (run_dir / "results.json").exists()
    stage_one_written = stage_one.stat().st_mtime_ns

    ran: list[str] = []
    real_run_stage = pipeline.run_stage
    monkeypatch.setattr(pipeline, "run_stage", lambda name, *a, **k: ran.append(name) or real_run_stage(name, *a, **k))
    interrupt, steps[:] = False, []
    assert pipeline.progressive_main(["--config", config]) == 0
    assert ran == ["II"], "Stage I finished in the first invocation and is not run again"
    assert stage_one.stat().st_mtime_ns == stage_one_written
    assert steps == [2, 3], "Stage II resumed from its epoch-1 checkpoint: only the second epoch's two steps ran"
    assert {p.name for p in (run_dir / "stage-II").glob("logs*")} == {"logs", "logs-resumed-1"}, "no log is lost"
    for stage in ("I", "II"):
        theirs, ours = stage_weights(straight, stage), stage_weights(run_dir, stage)
        difference = max(float((theirs[k] - ours[k]).abs().max()) for k in theirs)
        print(f"progressive, stage {stage}: max |weight difference| resumed vs uninterrupted: {difference:.3g}")
        assert difference <= 1e-6, stage
    results = json.loads((run_dir / "results.json").read_text())
    reference = json.loads((straight / "results.json").read_text())
    assert results["stages"]["II"]["metrics"] == pytest.approx(reference["stages"]["II"]["metrics"], abs=1e-6)
