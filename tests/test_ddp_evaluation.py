"""DDP evaluation parity through the ``RetrievalEvaluation`` callback.

One checkpoint is evaluated on val and on test by one process and by two CPU processes (``ddp_spawn``,
gloo). Every rank must report exactly the single-process recall, and the same mean fusion weights, on two
tasks of 101 queries each (an odd count: the ``DistributedSampler`` pads rank 1 with a repeat of query 0,
which the metric and the weight means must count once), each with an odd gallery too:

- a FashionIQ-layout task (the composed protocol the synthetic benchmark uses);
- a CIRR-layout task: the reference removed from each ranking, and Rsubset within each image set.

Both are written here, read by the real readers, and evaluated in one run: the CIRR datamodule with the
FashionIQ task's source added (``BothLayouts``), because each ``ddp_spawn`` launch costs two fresh Python
processes. The model is untrained but fixed (a seeded ``ComposedRetrieval`` with the tiny backbone and the
adaptive fusion, saved with ``trainer.save_checkpoint``), so no training is needed. Each rank writes what its
callback computed (``callback.results[prefix]``, an ``EvaluationResult``) to a file for the test to compare.
"""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from PIL import Image

from ctiir.callbacks import RetrievalEvaluation
from ctiir.callbacks.results import EvaluationResult
from ctiir.datamodules.base import Split
from ctiir.datamodules.cirr import CIRRDataModule
from ctiir.datamodules.fashioniq import FashionIQDataModule
from ctiir.datamodules.protocol import ComposedSource
from ctiir.stages import ComposedRetrieval

QUERIES = 101  # per task: odd, so that the sampler pads
SET_SIZE = 6  # CIRR image sets
WORDS = ("red", "blue", "green", "striped", "dotted", "longer", "shorter", "darker", "with sleeves", "plain")


# ---------------------------------------------------------------------------------------------- data written here
def write_images(folder: Path, names: list[str], seed: int) -> None:
    """Distinct images (random 4x4 colour grids, 32 px), so that the untrained model ranks without ties."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for name in names:
        grid = Image.new("RGB", (4, 4))
        grid.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(16)])
        grid.resize((32, 32), Image.Resampling.NEAREST).save(folder / f"{name}.png")


def caption(rng: random.Random) -> str:
    return " and ".join(rng.sample(WORDS, 2))


def fashioniq_dataset(root: Path) -> Path:
    """One category, 101 val queries over a gallery of 203 images."""
    rng = random.Random(1)
    gallery = [f"D{i:05d}" for i in range(2 * QUERIES + 1)]
    write_images(root / "images", gallery, seed=1)
    (root / "captions").mkdir(parents=True)
    (root / "image_splits").mkdir(parents=True)
    val = [{"candidate": gallery[2 * i], "target": gallery[2 * i + 1], "captions": [caption(rng), caption(rng)]} for i in range(QUERIES)]
    (root / "captions" / "cap.dress.val.json").write_text(json.dumps(val))
    (root / "image_splits" / "split.dress.val.json").write_text(json.dumps(gallery))
    return root


def cirr_dataset(root: Path) -> Path:
    """17 image sets of 6 (one query per member: reference i, target i+1), the last query dropped: 101 queries;
    the gallery is the 102 members and one image outside every set (103)."""
    rng = random.Random(2)
    sets = [[f"set{s:02d}-img{m}" for m in range(SET_SIZE)] for s in range(-(-QUERIES // SET_SIZE))]
    names = [name for members in sets for name in members] + ["loner"]
    write_images(root / "img", names, seed=2)
    entries = [
        {
            "pairid": 100 * s + i,
            "reference": members[i],
            "target_hard": members[(i + 1) % SET_SIZE],
            "target_soft": {members[(i + 1) % SET_SIZE]: 1.0},
            "caption": caption(rng),
            "img_set": {"id": s, "members": members, "reference_rank": i},
        }
        for s, members in enumerate(sets)
        for i in range(SET_SIZE)
    ][:QUERIES]
    (root / "captions").mkdir(parents=True)
    (root / "image_splits").mkdir(parents=True)
    (root / "captions" / "cap.rc2.val.json").write_text(json.dumps(entries))
    (root / "image_splits" / "split.rc2.val.json").write_text(json.dumps({n: f"./img/{n}.png" for n in names}))
    return root


class BothLayouts(CIRRDataModule):
    """The CIRR-layout data (its val triplets give the loss batches), with the FashionIQ-layout task's source
    added to its composed evaluation: the callback then evaluates both tasks in one launch."""

    def __init__(self, root: str, fashioniq_root: str, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.fashioniq = FashionIQDataModule(fashioniq_root, categories=["dress"])

    def composed_sources(self, split: Split) -> list[ComposedSource]:
        return super().composed_sources(split) + self.fashioniq.composed_sources(split)


# ---------------------------------------------------------------------------------------------- the runs
class WriteResults(L.Callback):
    """After ``RetrievalEvaluation`` (listed before it), write what it computed on this rank to a file."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def write(self, trainer: L.Trainer, prefix: str) -> None:
        (evaluation,) = [c for c in trainer.callbacks if isinstance(c, RetrievalEvaluation)]
        record = {"result": evaluation.results[prefix], "world_size": trainer.world_size}
        (Path(self.out_dir) / f"{prefix}-rank{trainer.global_rank}.pkl").write_bytes(pickle.dumps(record))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.write(trainer, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.write(trainer, "test")


def fixed_checkpoint(path: Path) -> Path:
    """An untrained ComposedRetrieval, fixed by its seed, saved as a Lightning checkpoint.

    Its fusion's parameters are redrawn wider, so that the per-query modality weights differ clearly and
    counting a padding repeat twice would move their mean.
    """
    torch.manual_seed(0)
    model = ComposedRetrieval(backbone="tiny", fusion="adaptive")
    with torch.no_grad():  # the adaptive fusion starts at ~(0.5, 0.5) for every query: spread its weights out
        for parameter in model.fusion.parameters():
            parameter.normal_(std=0.5)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(path.parent))
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


def evaluate(checkpoint: Path, data: BothLayouts, out_dir: Path, **trainer_args: Any) -> None:
    """``validate`` then ``test`` of the checkpoint; every rank writes its results to ``out_dir``.

    ``data`` must be fresh: ``ddp_spawn`` pickles it, and built tasks hold their item functions.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    model = ComposedRetrieval.load_from_checkpoint(checkpoint)
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1,  # the loss batches: the callback evaluates every query regardless
        limit_test_batches=1,
        callbacks=[RetrievalEvaluation(), WriteResults(str(out_dir))],
        default_root_dir=str(out_dir),
        **trainer_args,
    )
    trainer.validate(model, datamodule=data, verbose=False)
    trainer.test(model, datamodule=data, verbose=False)


def read(out_dir: Path, prefix: str, rank: int) -> tuple[EvaluationResult, int]:
    record = pickle.loads((out_dir / f"{prefix}-rank{rank}.pkl").read_bytes())
    return record["result"], record["world_size"]


# ---------------------------------------------------------------------------------------------- the test
@pytest.mark.slow  # 62 s (35 s of CPU) on a 2-core machine loaded by other work: two ddp_spawn launches
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_every_rank_reports_the_single_process_evaluation(tmp_path: Path) -> None:
    checkpoint = fixed_checkpoint(tmp_path / "fixed.ckpt")
    roots = str(cirr_dataset(tmp_path / "cirr")), str(fashioniq_dataset(tmp_path / "fashioniq"))
    probe = BothLayouts(*roots)
    probe.set_transforms(*[lambda image: image] * 2)
    tasks = {task.protocol: task for task in probe.composed_tasks("val")}
    assert sorted(tasks) == ["cirr", "fashioniq-original"]
    for task in tasks.values():
        assert len(task.queries) == QUERIES and len(task.gallery) % 2 == 1  # both shards of both are padded
    assert tasks["cirr"].exclude_reference and tasks["cirr"].subset_ks == (1, 2, 3)

    single, ddp = tmp_path / "single", tmp_path / "ddp"
    # One thread, as Lightning gives each of the two DDP processes on a 2-core machine: the same arithmetic.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        evaluate(checkpoint, BothLayouts(*roots, batch_size=16), single, devices=1)
    finally:
        torch.set_num_threads(threads)
    evaluate(checkpoint, BothLayouts(*roots, batch_size=16), ddp, devices=2, strategy="ddp_spawn")

    for prefix in ("val", "test"):
        expected, world = read(single, prefix, 0)
        assert world == 1
        recall = {k: v for k, v in expected.items() if "/R@" in k or "/Rsubset@" in k}
        weights = {k: v for k, v in expected.items() if k.endswith(("/w_img", "/w_txt"))}
        assert {k.split("/")[0] for k in recall} == {"cirr", "fashioniq-original"}
        assert {"cirr/Rsubset@1", "cirr/Rsubset@3", "fashioniq-original/dress/R@10"} <= recall.keys()
        assert len(weights) == 4, sorted(expected)
        # the check has teeth: counting query 0 twice would change any recall that is neither 0 nor 100
        for protocol in ("cirr", "fashioniq-original"):
            assert any(0 < v < 100 for k, v in recall.items() if k.startswith(protocol)), recall
        for rank in (0, 1):
            got, world = read(ddp, prefix, rank)
            assert world == 2
            assert got.keys() == expected.keys(), (prefix, rank)
            for key, value in expected.items():
                if key in weights:
                    assert got[key] == pytest.approx(value, abs=1e-6), (prefix, rank, key)
                else:
                    assert got[key] == value, (prefix, rank, key)
