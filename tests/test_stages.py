"""The three stages on the tiny backbone and the embedded benchmark (its smallest size)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from ctiir.callbacks import RetrievalEvaluation
from ctiir.datamodules import SyntheticDataModule
from ctiir.fusion import AdaptiveWeighting, Gated
from ctiir.stages import ComposedRetrieval, DomainPretraining, OpenDomainAlignment


def data(root: Path, **kwargs) -> SyntheticDataModule:
    return SyntheticDataModule(root=str(root), size="tiny", batch_size=16, **kwargs)


def trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    defaults = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(tmp_path),
    )
    return L.Trainer(**{**defaults, **kwargs})


def batch_outputs(model: ComposedRetrieval, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(3, 3, model.backbone.image_size, model.backbone.image_size, generator=g)
    model.eval()
    with torch.no_grad():
        return model.encode_query({"image": images, "text": ["is red", "has long sleeves", "is shorter and blue"]}).query


@pytest.mark.parametrize("stage_cls", [OpenDomainAlignment, DomainPretraining, ComposedRetrieval])
def test_checkpoint_rebuilds_the_model_with_no_other_input(stage_cls, synth_root: Path, tmp_path: Path) -> None:
    model = stage_cls(backbone="tiny", lr_backbone=1e-3)
    t = trainer(tmp_path, max_steps=2, limit_val_batches=0)
    t.fit(model, datamodule=data(synth_root))
    path = tmp_path / "stage.ckpt"
    t.save_checkpoint(path)
    hparams = torch.load(path, map_location="cpu", weights_only=False)["hyper_parameters"]
    assert hparams["backbone"]["name"] == "tiny" and hparams["backbone"]["pretrained"] is None
    assert hparams["fusion"]["name"] in ("fixed", "adaptive")
    loaded = stage_cls.load_from_checkpoint(path)
    assert torch.allclose(batch_outputs(model), batch_outputs(loaded), atol=1e-6)


def test_the_checkpoint_records_the_preprocessing_and_inference_uses_it(synth_root: Path, tmp_path: Path) -> None:
    """Trained with TargetPad: the checkpoint says so, the loaded model's transform is TargetPad, and a
    datamodule asking for another preprocessing gets a warning naming both (and the checkpoint's is used)."""
    model = ComposedRetrieval(backbone="tiny")
    t = trainer(tmp_path, max_steps=1, limit_val_batches=0)
    t.fit(model, datamodule=data(synth_root, preprocess="targetpad", target_pad_ratio=1.5))
    path = tmp_path / "stage.ckpt"
    t.save_checkpoint(path)
    recorded = torch.load(path, map_location="cpu", weights_only=False)["hyper_parameters"]["preprocess"]
    assert recorded == {"mode": "targetpad", "size": model.backbone.image_size, "target_pad_ratio": 1.5}
    loaded = ComposedRetrieval.load_from_checkpoint(path)
    assert "TargetPad(target_ratio=1.5)" in repr(loaded.eval_transform)
    assert "TargetPad" not in repr(ComposedRetrieval(backbone="tiny").eval_transform), "default: the backbone's own"
    other = data(synth_root, max_val_queries=2)  # asks for the backbone's own transforms
    with pytest.warns(UserWarning, match=r"asks for the backbone's own transforms .* trained with TargetPad \(ratio 1.5"):
        trainer(tmp_path).validate(loaded, datamodule=other, verbose=False)
    assert other.preprocessing == loaded.preprocessing and "TargetPad" in repr(other.eval_transform)


def test_the_stage_asks_its_datamodule_for_data_in_one_request(synth_root: Path) -> None:
    """The contract: a datamodule serves a DataRequest and never looks at the stage."""
    from ctiir.datamodules import DataRequest

    dm = data(synth_root)
    with pytest.raises(RuntimeError, match="no stage has asked for data"):
        dm.train_dataloader()
    two = DomainPretraining(backbone="tiny")
    assert two.data_request().sources == {"t2i": "descriptions", "i2i": "image_pairs"}
    assert DomainPretraining(backbone="tiny", tasks=["i2i"]).data_request().sources == {"i2i": "image_pairs"}
    used = dm.serve(two.data_request())
    assert used.mode == "backbone" and used.size == two.backbone.image_size
    batch = next(iter(dm.train_dataloader()))[0]
    assert set(batch) == {"t2i", "i2i"} and batch["i2i"]["image_a"].shape[0] == 16
    with pytest.raises(ValueError, match="unknown training source"):
        DataRequest({"main": "captions"}, two.backbone)


def test_fusion_swaps_in_one_line() -> None:
    assert isinstance(ComposedRetrieval(fusion="gated").fusion, Gated)
    adaptive = ComposedRetrieval(fusion=AdaptiveWeighting(mode="rank"))
    assert isinstance(adaptive.fusion, AdaptiveWeighting) and adaptive.fusion.embed_dim == adaptive.backbone.embed_dim
    assert adaptive.hparams["fusion"]["mode"] == "rank"
    assert isinstance(ComposedRetrieval().fusion, AdaptiveWeighting), "Stage III defaults to the paper's adaptive weighting"
    with pytest.raises(KeyError, match="known fusions"):
        ComposedRetrieval(fusion="no-such-fusion")


def test_stage_one_and_two_freeze_their_evaluation_fusion() -> None:
    model = DomainPretraining(fusion="gated")
    assert not any(p.requires_grad for p in model.fusion.parameters())


def test_init_from_carries_weights_and_rejects_another_backbone(tmp_path: Path) -> None:
    source = OpenDomainAlignment(backbone="tiny")
    with torch.no_grad():
        for p in source.backbone.parameters():
            p.add_(0.01)
    path = tmp_path / "stage1.ckpt"
    t = trainer(tmp_path)
    t.strategy.connect(source)
    t.save_checkpoint(path)
    started = ComposedRetrieval(backbone="tiny", init_from=str(path))
    for (name, a), b in zip(source.backbone.state_dict().items(), started.backbone.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert started.hparams["initialized_from"] == str(path) and started.hparams["init_from"] is None
    # Its own checkpoint records where it started, and loads back (the record is not an argument it rejects).
    second = tmp_path / "stage3.ckpt"
    t.strategy.connect(started)
    t.save_checkpoint(second)
    loaded = ComposedRetrieval.load_from_checkpoint(second)
    assert loaded.hparams["initialized_from"] == str(path)
    for (name, a), b in zip(started.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    other = BACKBONE_OTHER()
    with pytest.raises(ValueError, match="backbone"):
        ComposedRetrieval(backbone=other, init_from=str(path))
    with pytest.raises(FileNotFoundError, match="not found"):
        ComposedRetrieval(init_from=str(tmp_path / "missing.ckpt"))


def BACKBONE_OTHER():
    from ctiir.backbones import build_backbone
    from ctiir.backbones.registry import BACKBONES

    return build_backbone("hf-clip", **BACKBONES.test_kwargs("hf-clip"))


class RecordLR(L.Callback):
    def __init__(self) -> None:
        self.lrs: list[dict[str, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append({g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups})


def test_optimizer_groups_and_schedule(synth_root: Path, tmp_path: Path) -> None:
    model = ComposedRetrieval(lr_backbone=1e-4, lr_heads=1e-2, warmup_steps=2)
    record = RecordLR()
    t = trainer(tmp_path, max_steps=8, limit_val_batches=0, callbacks=[record])
    t.fit(model, datamodule=data(synth_root))
    groups = {g["name"]: g for g in t.optimizers[0].param_groups}
    assert groups["backbone"]["initial_lr"] == 1e-4 and groups["heads"]["initial_lr"] == 1e-2
    assert groups["backbone_no_decay"]["weight_decay"] == 0.0 and groups["backbone"]["weight_decay"] > 0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].startswith("backbone.") for p in groups["backbone"]["params"])
    assert any(names[id(p)] == "criterion.logit_scale" for p in groups["heads_no_decay"]["params"])
    backbone = [r["backbone"] for r in record.lrs]
    heads = [r["heads"] for r in record.lrs]
    assert backbone[0] == 0.0, "linear warm-up starts at zero"
    assert backbone[2] == pytest.approx(1e-4) and heads[2] == pytest.approx(1e-2), "warm-up reaches the peak"
    assert backbone[2] > backbone[5] > backbone[7] > 0, "then cosine decay"
    assert heads[5] / backbone[5] == pytest.approx(100.0), "the groups keep their own learning rates"


def test_stage_two_tasks_switch_off(synth_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one task"):
        DomainPretraining(tasks=[])
    with pytest.raises(ValueError, match="unknown Stage II"):
        DomainPretraining(tasks=["t2t"])
    model = DomainPretraining(tasks=["i2i"])
    t = trainer(tmp_path, max_steps=2, limit_val_batches=0, logger=L.pytorch.loggers.CSVLogger(tmp_path))
    t.fit(model, datamodule=data(synth_root))
    logged = set(t.callback_metrics)
    assert "train/i2i" in logged and "train/t2i" not in logged


@pytest.mark.slow
def test_stage_three_learns_composed_retrieval(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """A real behaviour check: the loss falls and recall rises well above chance and above the start.

    The "small" size is needed: the "tiny" one has too few triplets to generalise from. Three epochs of
    38 steps from scratch.
    """
    from ctiir.datamodules.synthetic import generate

    root = generate(tmp_path_factory.mktemp("synth-small") / "data", seed=0, size="small")
    torch.manual_seed(0)
    dm = SyntheticDataModule(root=str(root), size="small", batch_size=32)
    model = ComposedRetrieval(backbone="tiny", fusion="adaptive", lr_backbone=1e-3, lr_heads=1e-3, warmup_steps=0.05)
    evaluation = RetrievalEvaluation()
    t = trainer(tmp_path, max_epochs=3, callbacks=[evaluation], logger=L.pytorch.loggers.CSVLogger(tmp_path), log_every_n_steps=1)
    t.validate(model, datamodule=dm, verbose=False)
    start = dict(evaluation.results["val"])
    t.fit(model, datamodule=dm)
    after = evaluation.results["val"]
    gallery = sum(len(task.gallery_names) for task in dm.retrieval_tasks("val", "composed")) / 3
    chance = 100 * 10 / gallery
    key = "synthetic/avg/R@10"
    assert after[key] > max(3 * chance, start[key] + 5), (start[key], after[key], chance)
    import csv

    rows = csv.DictReader((Path(t.logger.log_dir) / "metrics.csv").open())
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.3, losses


def test_predict_gives_gallery_and_query_embeddings(synth_root: Path, tmp_path: Path) -> None:
    dm = SyntheticDataModule(root=str(synth_root), size="tiny", batch_size=16, max_val_queries=5)
    model = ComposedRetrieval()
    outputs = trainer(tmp_path).predict(model, datamodule=dm)
    assert len(outputs) == 6, "a gallery and a query loader per category"
    gallery, queries = outputs[0], outputs[1]
    assert sum(len(b["gallery_id"]) for b in gallery) == len(dm.retrieval_tasks("test", "composed")[0].gallery_names)
    assert sum(len(b["query_id"]) for b in queries) == 5
    emb = torch.cat([b["embedding"] for b in queries])
    assert emb.shape[1] == model.backbone.embed_dim and torch.allclose(emb.norm(dim=1), torch.ones(5), atol=1e-5)


def test_a_plain_trainer_reports_recall_and_a_given_callback_is_kept(synth_root: Path, tmp_path: Path) -> None:
    dm = SyntheticDataModule(root=str(synth_root), size="tiny", batch_size=16, max_val_queries=6)
    t = trainer(tmp_path, max_epochs=1, limit_train_batches=1)
    t.fit(ComposedRetrieval(), datamodule=dm)
    assert "val/synthetic/avg/R@10" in t.callback_metrics and "val/score" in t.callback_metrics
    own = RetrievalEvaluation(kinds=["composed"])
    t = trainer(tmp_path, max_epochs=1, limit_train_batches=1, callbacks=[own])
    t.fit(ComposedRetrieval(), datamodule=dm)
    assert [c for c in t.callbacks if isinstance(c, RetrievalEvaluation)] == [own]
    assert own.results["val"]["synthetic/avg/R@10"] == pytest.approx(float(t.callback_metrics["val/synthetic/avg/R@10"]))
