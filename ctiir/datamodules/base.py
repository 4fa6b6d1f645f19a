"""``CTIIRDataModule``: records in, loaders out, the same way for every dataset.

A concrete datamodule implements the *sources* it has (``caption_pairs``, ``description_pairs``,
``image_pairs``, ``triplets``, ``composed_tasks``). The base class serves whichever the attached stage asks
for: each stage declares ``training_data`` (``"caption_pairs"``, ``"domain"`` or ``"triplets"``), and for
``"domain"`` also ``domain_tasks`` (``"t2i"``, ``"i2i"``). Transforms come from the stage's backbone at
``setup`` unless given, so a LightningCLI config names the backbone once.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset, Subset

from ctiir.datamodules.images import OnMissing, filter_missing, load_rgb
from ctiir.datamodules.records import ImagePair, ImageText, Triplet
from ctiir.datamodules.tasks import ListDataset, RetrievalTask, collate_retrieval
from ctiir.datamodules.text import TextMode, compose_query_text, training_text
from ctiir.datamodules.transforms import Preprocess, resolve_transforms

Split = Literal["train", "val", "test"]
EvalKind = Literal["composed", "caption_pairs", "descriptions"]


class CTIIRDataModule(L.LightningDataModule):
    """Base of every ctiir datamodule.

    Args:
        batch_size: training and evaluation batch size per process.
        num_workers: DataLoader workers.
        preprocess: ``"backbone"`` (the backbone's own transforms) or ``"targetpad"`` (CLIP4Cir's).
        target_pad_ratio: TargetPad's ratio.
        on_missing: ``"error"`` (default): a missing image is an error naming file, split and entry;
            ``"skip"``: drop such entries and log how many.
        train_text_mode: how a triplet's captions become the training query text (see ``text.py``).
        eval_batch_size: batch size for encoding galleries and queries (defaults to ``batch_size``).
        max_val_queries: evaluate only the first N queries per task (for quick runs; ``None`` = all).
    """

    def __init__(
        self,
        batch_size: int = 32,
        num_workers: int = 0,
        preprocess: Preprocess = "backbone",
        target_pad_ratio: float = 1.25,
        on_missing: OnMissing = "error",
        train_text_mode: TextMode = "clip4cir-random-order",
        eval_batch_size: int | None = None,
        max_val_queries: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.preprocess = preprocess
        self.target_pad_ratio = target_pad_ratio
        self.on_missing = on_missing
        self.train_text_mode = train_text_mode
        self.eval_batch_size = eval_batch_size or batch_size
        self.max_val_queries = max_val_queries
        self.seed = seed
        self.train_transform: Callable | None = None
        self.eval_transform: Callable | None = None
        self._task_cache: dict[tuple[str, str], list[RetrievalTask]] = {}

    # ------------------------------------------------------------------ sources (override what you have)
    name: str = "dataset"

    def caption_pairs(self, split: Split) -> list[ImageText]:
        raise NotImplementedError(f"{type(self).__name__} has no Stage I image-caption pairs")

    def description_pairs(self, split: Split) -> list[ImageText]:
        raise NotImplementedError(f"{type(self).__name__} has no Stage II product descriptions")

    def image_pairs(self, split: Split) -> list[ImagePair]:
        """Default: every triplet with its text dropped."""
        return [
            ImagePair(t.reference, t.target, t.reference_id, t.target_id, source=t.source) for t in self.triplets(split)
        ]

    def triplets(self, split: Split) -> list[Triplet]:
        raise NotImplementedError(f"{type(self).__name__} has no composed-retrieval triplets")

    def composed_tasks(self, split: Split) -> list[RetrievalTask]:
        raise NotImplementedError(f"{type(self).__name__} has no composed-retrieval evaluation")

    # ------------------------------------------------------------------ transforms
    def set_transforms(self, train: Callable, eval: Callable) -> None:  # noqa: A002 - mirrors train/eval
        self.train_transform, self.eval_transform = train, eval

    def setup(self, stage: str | None = None) -> None:
        if self.eval_transform is None:
            module = self.trainer.lightning_module if self.trainer is not None else None
            backbone = getattr(module, "backbone", None)
            if backbone is None:
                raise RuntimeError(
                    f"{type(self).__name__}: no transforms; attach it to a trainer with a ctiir stage, "
                    "or call set_transforms(train, eval)"
                )
            self.set_transforms(*resolve_transforms(backbone, self.preprocess, self.target_pad_ratio))

    def _require_transforms(self) -> tuple[Callable, Callable]:
        if self.train_transform is None or self.eval_transform is None:
            self.setup()
        assert self.train_transform is not None and self.eval_transform is not None
        return self.train_transform, self.eval_transform

    # ------------------------------------------------------------------ training datasets
    def _checked(self, records: Sequence[Any], paths: Callable[[Any], Sequence[Path]], what: str) -> list[Any]:
        return filter_missing(records, paths, on_missing=self.on_missing, what=f"{self.name} {what}")

    def image_text_dataset(self, records: Sequence[ImageText], split: str, train: bool) -> Dataset:
        tf = self._require_transforms()[0 if train else 1]
        records = self._checked(records, lambda r: [r.image], f"{split} image-text pairs")

        def make(r: ImageText, i: int) -> dict[str, Any]:
            return {"image": tf(load_rgb(r.image, r.source)), "text": r.text, "image_id": r.image_id}

        return ListDataset(records, make)

    def image_pair_dataset(self, records: Sequence[ImagePair], split: str, train: bool) -> Dataset:
        tf = self._require_transforms()[0 if train else 1]
        records = self._checked(records, lambda r: [r.a, r.b], f"{split} image pairs")

        def make(r: ImagePair, i: int) -> dict[str, Any]:
            return {
                "image_a": tf(load_rgb(r.a, r.source)),
                "image_b": tf(load_rgb(r.b, r.source)),
                "target_id": r.b_id,
            }

        return ListDataset(records, make)

    def triplet_dataset(self, records: Sequence[Triplet], split: str, train: bool) -> Dataset:
        tf = self._require_transforms()[0 if train else 1]
        records = self._checked(records, lambda r: [r.reference, r.target], f"{split} triplets")
        mode = self.train_text_mode if train else "clip4cir"
        rng = random.Random(self.seed)

        def make(r: Triplet, i: int) -> dict[str, Any]:
            return {
                "reference": tf(load_rgb(r.reference, r.source)),
                "target": tf(load_rgb(r.target, r.source)),
                "text": training_text(r.captions, mode, rng) if train else compose_query_text(r.captions, "clip4cir"),
                "target_id": r.target_id,
            }

        return ListDataset(records, make)

    def _stage_attr(self, attr: str, default: Any = None) -> Any:
        module = self.trainer.lightning_module if self.trainer is not None else None
        if module is None or not hasattr(module, attr):
            if default is not None:
                return default
            raise RuntimeError(f"{type(self).__name__} needs a ctiir stage attached to the trainer (for {attr!r})")
        return getattr(module, attr)

    def stage_datasets(self, split: Split, train: bool) -> dict[str, Dataset]:
        """The datasets the attached stage trains on, keyed by task (``"main"`` for single-task stages)."""
        kind = self._stage_attr("training_data")
        if kind == "caption_pairs":
            return {"main": self.image_text_dataset(self.caption_pairs(split), split, train)}
        if kind == "triplets":
            return {"main": self.triplet_dataset(self.triplets(split), split, train)}
        if kind == "domain":
            out: dict[str, Dataset] = {}
            for task in self._stage_attr("domain_tasks"):
                if task == "t2i":
                    out["t2i"] = self.image_text_dataset(self.description_pairs(split), split, train)
                elif task == "i2i":
                    out["i2i"] = self.image_pair_dataset(self.image_pairs(split), split, train)
                else:
                    raise ValueError(f"unknown Stage II task {task!r}; expected 't2i' or 'i2i'")
            if not out:
                raise ValueError("Stage II has every task switched off: enable 't2i' and/or 'i2i'")
            return out
        raise ValueError(f"unknown training_data {kind!r}")

    def _loader(self, dataset: Dataset, shuffle: bool, batch_size: int, drop_last: bool = False) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate_retrieval,
            drop_last=drop_last,
            generator=generator,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> Any:
        datasets = self.stage_datasets("train", train=True)
        for key, ds in datasets.items():
            if len(ds) < 2:
                raise ValueError(f"{self.name}: training set {key!r} has {len(ds)} entries; need at least 2")
        loaders = {k: self._loader(ds, True, self.batch_size, drop_last=len(ds) > self.batch_size) for k, ds in datasets.items()}
        if list(loaders) == ["main"]:
            return loaders["main"]
        return CombinedLoader(loaders, mode="max_size_cycle")

    def val_dataloader(self) -> Any:
        """Validation *loss* batches. Retrieval metrics come from the ``RetrievalEvaluation`` callback."""
        try:
            datasets = self.stage_datasets("val", train=False)
        except (NotImplementedError, FileNotFoundError):
            # No val split of this kind: a fixed slice of the training data keeps the loop (and the
            # retrieval callback, which runs at validation end) going; the loss is then a training loss.
            datasets = {k: Subset(ds, range(min(len(ds), self.eval_batch_size))) for k, ds in self.stage_datasets("train", train=False).items()}
        loaders = {k: self._loader(ds, False, self.eval_batch_size) for k, ds in datasets.items()}
        if list(loaders) == ["main"]:
            return loaders["main"]
        return CombinedLoader(loaders, mode="max_size_cycle")

    def test_dataloader(self) -> Any:
        """The test loop's loss batches (the val split's); test metrics come from the callback's "test" tasks."""
        return self.val_dataloader()

    def predict_dataloader(self) -> list[DataLoader]:
        """For ``ctiir predict``: each composed test task's gallery loader, then its query loader.

        The stage's ``predict_step`` turns them into embeddings with their ids, ready for an external index.
        """
        loaders = []
        for task in self.retrieval_tasks("test", "composed"):
            loaders += [self._loader(task.gallery, False, self.eval_batch_size), self._loader(task.queries, False, self.eval_batch_size)]
        return loaders

    # ------------------------------------------------------------------ evaluation tasks
    def retrieval_tasks(self, split: Split, kind: EvalKind) -> list[RetrievalTask]:
        """Evaluation tasks of one kind, built once per split and kind."""
        key = (split, kind)
        if key not in self._task_cache:
            if kind == "composed":
                tasks = self.composed_tasks(split)
            elif kind == "caption_pairs":
                tasks = self.image_text_tasks(self.caption_pairs(split), f"{self.name}-captions", split)
            elif kind == "descriptions":
                tasks = self.image_text_tasks(self.description_pairs(split), f"{self.name}-descriptions", split)
            else:
                raise ValueError(f"unknown evaluation kind {kind!r}")
            self._task_cache[key] = tasks
        return self._task_cache[key]

    def gallery_dataset(self, names: Sequence[str], paths: Sequence[Path], what: str) -> Dataset:
        tf = self._require_transforms()[1]

        def make(pair: tuple[str, Path], i: int) -> dict[str, Any]:
            return {"gallery_id": i, "image": tf(load_rgb(pair[1], f"{what} gallery image {pair[0]}"))}

        return ListDataset(list(zip(names, paths, strict=True)), make)

    def image_text_tasks(self, records: Sequence[ImageText], protocol: str, split: str) -> list[RetrievalTask]:
        """text->image and image->text tasks over image-caption records (one gallery entry per image)."""
        records = self._checked(records, lambda r: [r.image], f"{split} image-text pairs")
        if self.max_val_queries is not None:
            records = records[: self.max_val_queries]
        first: dict[str, ImageText] = {}
        for r in records:
            first.setdefault(r.image_id, r)
        names = list(first)
        index = {n: i for i, n in enumerate(names)}
        tf = self._require_transforms()[1]
        images = self.gallery_dataset(names, [first[n].image for n in names], protocol)
        t2i_queries = ListDataset(
            records, lambda r, i: {"query_id": i, "target_id": index[r.image_id], "reference_id": -1, "text": r.text}
        )
        texts = ListDataset([first[n] for n in names], lambda r, i: {"gallery_id": i, "text": r.text})
        i2t_queries = ListDataset(
            [first[n] for n in names],
            lambda r, i: {"query_id": i, "target_id": i, "reference_id": -1, "image": tf(load_rgb(r.image, r.source))},
        )
        common = dict(ks=(1, 5, 10), headline=("R@1", "R@5", "R@10"))
        return [
            RetrievalTask(f"{protocol}", "t2i", images, t2i_queries, names, [r.source or r.image_id for r in records], **common),
            RetrievalTask(f"{protocol}", "i2t", texts, i2t_queries, [first[n].text for n in names], names, **common),
        ]
