"""``CTIIRDataModule``: records in, loaders out, the same way for every dataset.

A concrete datamodule implements the *sources* it has (``caption_pairs``, ``description_pairs``,
``image_pairs``, ``triplets``) and, for the composed evaluation, ``composed_sources`` (its reader's gallery and
queries; ``ctiir.datamodules.protocol`` turns them into tasks). The base class serves whichever sources the
stage asks for: a ctiir stage calls :meth:`CTIIRDataModule.serve` once, in its ``setup`` hook, with a
``DataRequest`` (the sources and the backbone); ``serve`` resolves the transforms and answers with the
preprocessing used, which the stage records in its checkpoint. Without a stage, call ``set_transforms``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import CombinedLoader, rank_zero_warn
from torch.utils.data import DataLoader, Dataset, Subset

from ctiir.datamodules.images import OnMissing, filter_missing, is_file, load_rgb
from ctiir.datamodules.protocol import (
    IMAGE_TEXT_HEADLINE,
    IMAGE_TEXT_KS,
    ComposedQuery,
    ComposedSource,
    EvaluationSet,
    ResolvedQuery,
    build_evaluation,
    build_image_text_evaluation,
)
from ctiir.datamodules.records import ImagePair, ImageText, Triplet
from ctiir.datamodules.request import DataRequest, Source
from ctiir.datamodules.sampling import DrawnDataset, EpochSampler, ResumableLoader
from ctiir.datamodules.tables import read_image_text_pairs, split_records
from ctiir.datamodules.tasks import ListDataset, RetrievalTask, collate_retrieval
from ctiir.datamodules.text import TextMode, compose_query_text, training_text
from ctiir.datamodules.transforms import Preprocess, Preprocessing, build_transforms

Split = Literal["train", "val", "test"]
EvalKind = Literal["composed", "caption_pairs", "descriptions"]
CAPTION_LENGTHS = ((6, "short"), (12, "medium"))  # up to N words; longer captions are "long"


def caption_length(text: str | list[str]) -> str:
    """``short`` / ``medium`` / ``long`` by the word count of the query text (of its first variant)."""
    words = len((text[0] if isinstance(text, list) else text).split())
    return next((name for limit, name in CAPTION_LENGTHS if words <= limit), "long")


class CTIIRDataModule(L.LightningDataModule):
    """Base of every ctiir datamodule.

    Subclasses take their own arguments and forward the rest (``**kwargs``) here; jsonargparse follows the
    forwarding, so LightningCLI lists these arguments for every datamodule.

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
        seed: seeds the training shuffle and the caption-order augmentation.
        breakdown: query attributes to break the composed results down by (logged as
            ``<protocol>/<subset>/<attribute>=<value>/R@10``): ``caption_length`` (every dataset: ``short``
            up to 6 words, ``medium`` 7-12, ``long`` 13 or more) and what a dataset adds (``breakdown_attributes``,
            e.g. the synthetic benchmark's ``scenario``).
    """

    name: str = "dataset"
    root: Path  # every dataset's folder; relative table paths are looked up under it first
    # Optional image-text tables (``ctiir.datamodules.tables``) for Stages I and II, relative to ``root``.
    caption_pairs_file: str | None = None
    descriptions_file: str | None = None
    # Query attributes this dataset can break results down by; subclasses extend it (query_attribute).
    breakdown_attributes: tuple[str, ...] = ("caption_length",)

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
        breakdown: Sequence[str] = (),
    ) -> None:
        super().__init__()
        if on_missing not in ("error", "skip"):
            raise ValueError(f"{type(self).__name__}: on_missing must be 'error' or 'skip', got {on_missing!r}")
        Preprocessing.choose(preprocess, 1, target_pad_ratio)  # the arguments' own checks, before any data
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.preprocess = preprocess
        self.target_pad_ratio = target_pad_ratio
        self.on_missing = on_missing
        self.train_text_mode = train_text_mode
        self.eval_batch_size = eval_batch_size or batch_size
        self.max_val_queries = max_val_queries
        self.seed = seed
        self.breakdown = (breakdown,) if isinstance(breakdown, str) else tuple(breakdown)
        unknown = [a for a in self.breakdown if a not in self.breakdown_attributes]
        if unknown:
            raise ValueError(
                f"{type(self).__name__}: cannot break results down by {unknown}; known attributes: "
                f"{', '.join(self.breakdown_attributes)}"
            )
        self.train_transform: Callable | None = None
        self.eval_transform: Callable | None = None
        self.sources: dict[str, Source] | None = None
        self.preprocessing: Preprocessing | None = None
        self._task_cache: dict[tuple[str, str], list[RetrievalTask]] = {}
        self._train_loaders: dict[str, DataLoader] = {}
        self._positions_to_restore: dict[str, dict[str, int]] = {}

    # ------------------------------------------------------------------ sources (override what you have)
    def caption_pairs(self, split: Split) -> list[ImageText]:
        """Stage I image-caption pairs: by default the rows of the ``caption_pairs`` table for ``split``."""
        return self.table_pairs(self.caption_pairs_file, "caption_pairs", "Stage I image-caption pairs", split)

    def description_pairs(self, split: Split) -> list[ImageText]:
        """Stage II description->image pairs: by default the rows of the ``descriptions`` table."""
        return self.table_pairs(self.descriptions_file, "descriptions", "Stage II product descriptions", split)

    def annotation_split(self, split: Split) -> str:
        """The split whose annotations serve ``split`` (FashionIQ-like datasets read "val" for "test")."""
        return split

    def table_pairs(self, file: str | None, argument: str, what: str, split: Split) -> list[ImageText]:
        """The rows of an image-text table for ``split`` (a split without rows is a ``MissingSplitError``)."""
        if file is None:
            raise NotImplementedError(f"{type(self).__name__} has no {what}: set {argument}=<a JSONL/CSV file of image/text pairs>")
        return split_records(read_image_text_pairs, file, self.root, self.annotation_split(split))

    def image_pairs(self, split: Split) -> list[ImagePair]:
        """Default: every triplet with its text dropped."""
        return [
            ImagePair(t.reference, t.target, t.reference_id, t.target_id, source=t.source) for t in self.triplets(split)
        ]

    def triplets(self, split: Split) -> list[Triplet]:
        raise NotImplementedError(f"{type(self).__name__} has no composed-retrieval triplets")

    def composed_sources(self, split: Split) -> list[ComposedSource]:
        """The composed evaluation's gallery and queries per subset, as this dataset's reader gives them."""
        raise NotImplementedError(f"{type(self).__name__} has no composed-retrieval evaluation")

    # ------------------------------------------------------------------ the stage contract
    def serve(self, request: DataRequest) -> Preprocessing:
        """Take a stage's request (``ctiir.datamodules.request``): its training sources and its backbone.

        Resolves the transforms and returns the preprocessing used, for the stage to record: this
        datamodule's ``preprocess`` choice when training, the checkpoint's (``request.trained_with``) when
        only evaluating or predicting. Where the two differ, a warning names both and says which is used.
        """
        asked = Preprocessing.choose(self.preprocess, request.backbone.image_size, self.target_pad_ratio)
        used = asked
        if request.trained_with is not None and request.trained_with != asked:
            if request.inference:
                used = request.trained_with
                rank_zero_warn(
                    f"{type(self).__name__} asks for {asked.describe()}, but the model was trained with "
                    f"{used.describe()}; evaluating with the checkpoint's preprocessing"
                )
            else:
                rank_zero_warn(
                    f"{type(self).__name__} preprocesses images with {asked.describe()}, but the weights were trained "
                    f"with {request.trained_with.describe()}; training goes on with the datamodule's choice"
                )
        self.set_transforms(*build_transforms(request.backbone, used))
        self.sources = dict(request.sources)
        self.preprocessing = used
        return used

    def set_transforms(self, train: Callable, eval: Callable) -> None:  # noqa: A002 - mirrors train/eval
        """Set the transforms directly (using the datamodule without a stage); built tasks are rebuilt."""
        self.train_transform, self.eval_transform = train, eval
        self._task_cache.clear()

    def _require_transforms(self) -> tuple[Callable, Callable]:
        if self.train_transform is None or self.eval_transform is None:
            raise RuntimeError(
                f"{type(self).__name__}: no transforms yet; attach it to a trainer with a ctiir stage (which calls "
                "serve), or call set_transforms(train, eval)"
            )
        return self.train_transform, self.eval_transform

    # ------------------------------------------------------------------ training datasets
    # ------------------------------------------------------------------ images (override where they are not files)
    def load_image(self, path: Path, context: str) -> Any:
        """The RGB image that a record's ``path`` names; ``context`` says which entry needs it, for errors.

        Records and evaluation sets carry image *paths*. For files (every dataset read from folders) this is
        ``load_rgb``. A datamodule whose images live elsewhere (``HFTripletDataModule``: rows of a
        ``datasets.Dataset``) gives its records paths that identify them and overrides this and
        :meth:`image_present`; every loader, task and protocol rule then works on them unchanged.
        """
        return load_rgb(path, context)

    def image_present(self, path: Path) -> bool:
        """Whether the image at ``path`` exists (the ``on_missing`` rule's test); a regular file by default."""
        return is_file(path)

    def _checked(self, records: Sequence[Any], paths: Callable[[Any], Sequence[Path]], what: str) -> list[Any]:
        return filter_missing(
            records, paths, on_missing=self.on_missing, what=f"{self.name} {what}", is_present=self.image_present
        )

    def image_text_dataset(self, records: Sequence[ImageText], split: str, train: bool) -> Dataset:
        tf = self._require_transforms()[0 if train else 1]
        records = self._checked(records, lambda r: [r.image], f"{split} image-text pairs")

        def make(r: ImageText, i: int, rng: Any) -> dict[str, Any]:
            return {"image": tf(self.load_image(r.image, r.source)), "text": r.text, "image_id": r.image_id}

        return DrawnDataset(records, make)

    def image_pair_dataset(self, records: Sequence[ImagePair], split: str, train: bool) -> Dataset:
        tf = self._require_transforms()[0 if train else 1]
        records = self._checked(records, lambda r: [r.a, r.b], f"{split} image pairs")

        def make(r: ImagePair, i: int, rng: Any) -> dict[str, Any]:
            return {
                "image_a": tf(self.load_image(r.a, r.source)),
                "image_b": tf(self.load_image(r.b, r.source)),
                "target_id": r.b_id,
            }

        return DrawnDataset(records, make)

    def triplet_dataset(self, records: Sequence[Triplet], split: str, train: bool) -> Dataset:
        tf = self._require_transforms()[0 if train else 1]
        records = self._checked(records, lambda r: [r.reference, r.target], f"{split} triplets")
        mode = self.train_text_mode if train else "clip4cir"

        def make(r: Triplet, i: int, rng: Any) -> dict[str, Any]:
            return {
                "reference": tf(self.load_image(r.reference, r.source)),
                "target": tf(self.load_image(r.target, r.source)),
                "text": training_text(r.captions, mode, rng) if train else compose_query_text(r.captions, "clip4cir"),
                "target_id": r.target_id,
            }

        return DrawnDataset(records, make)

    def source_dataset(self, source: Source, split: Split, train: bool) -> Dataset:
        """The dataset of one training source (``DataRequest.sources`` names them)."""
        if source == "caption_pairs":
            return self.image_text_dataset(self.caption_pairs(split), split, train)
        if source == "descriptions":
            return self.image_text_dataset(self.description_pairs(split), split, train)
        if source == "image_pairs":
            return self.image_pair_dataset(self.image_pairs(split), split, train)
        if source == "triplets":
            return self.triplet_dataset(self.triplets(split), split, train)
        raise ValueError(f"unknown training source {source!r}")

    def training_datasets(self, split: Split, train: bool) -> dict[str, Dataset]:
        """The datasets the served stage trains on, keyed as its request keys them."""
        if self.sources is None:
            raise RuntimeError(
                f"{type(self).__name__}: no stage has asked for data; attach it to a trainer with a ctiir stage, or "
                "call serve(DataRequest(...))"
            )
        return {key: self.source_dataset(source, split, train) for key, source in self.sources.items()}

    def _loader(self, dataset: Dataset, shuffle: bool, batch_size: int, drop_last: bool = False) -> DataLoader:
        """A loader; a shuffled (training) one is a ``ResumableLoader`` whose order, augmentation and position
        derive from ``seed`` and the epoch (``ctiir.datamodules.sampling``), so a resumed run replays them."""
        common = dict(
            batch_size=batch_size,
            num_workers=self.num_workers,
            collate_fn=collate_retrieval,
            drop_last=drop_last,
            persistent_workers=self.num_workers > 0,
        )
        if not shuffle:
            return DataLoader(dataset, shuffle=False, **common)
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        # Its own generator: creating an iterator then draws its worker base seed from it, not from the
        # process-wide RNG, whose state (dropout) the stage keeps in the checkpoint.
        return ResumableLoader(
            dataset,
            sampler=EpochSampler(dataset, self.seed, replicas, rank),
            generator=torch.Generator().manual_seed(self.seed),
            **common,
        )

    @staticmethod
    def _combined(loaders: Mapping[str, DataLoader]) -> Any:
        if list(loaders) == ["main"]:
            return loaders["main"]
        return CombinedLoader(dict(loaders), mode="max_size_cycle")

    def train_dataloader(self) -> Any:
        datasets = self.training_datasets("train", train=True)
        for key, ds in datasets.items():
            if len(ds) < 2:
                raise ValueError(f"{self.name}: training set {key!r} has {len(ds)} entries; need at least 2")
        self._train_loaders = {
            k: self._loader(ds, True, self.batch_size, drop_last=len(ds) > self.batch_size) for k, ds in datasets.items()
        }
        self._restore_positions()
        return self._combined(self._train_loaders)

    def teardown(self, stage: str) -> None:
        """Let go of the training loaders after ``fit``: their persistent workers stop with them (the
        datamodule keeps them during training, for the positions that ``state_dict`` saves)."""
        if stage == "fit":
            self._train_loaders = {}
        super().teardown(stage)

    # ------------------------------------------------------------------ exact resume
    def state_dict(self) -> dict[str, Any]:
        """Where each training loader is (epoch, pass, batches delivered), saved with every checkpoint.

        Lightning also saves such loader states in its loop state, but does not give them back when
        ``configure_optimizers`` reads ``trainer.estimated_stepping_batches`` (Lightning issue #20550), as
        the ctiir stages do; the datamodule's own state is always restored.
        """
        positions = {k: loader.state_dict() for k, loader in self._train_loaders.items() if isinstance(loader, ResumableLoader)}
        return {"train_positions": positions} if positions else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._positions_to_restore = dict(state_dict.get("train_positions", {}))
        self._restore_positions()

    def _restore_positions(self) -> None:
        for key, loader in self._train_loaders.items():
            if key in self._positions_to_restore and isinstance(loader, ResumableLoader):
                loader.load_state_dict(self._positions_to_restore.pop(key))

    def val_dataloader(self) -> Any:
        """Validation *loss* batches. Retrieval metrics come from the ``RetrievalEvaluation`` callback."""
        try:
            datasets = self.training_datasets("val", train=False)
        except (NotImplementedError, FileNotFoundError):
            # No val split of this kind: a fixed slice of the training data keeps the loop (and the
            # retrieval callback, which runs at validation end) going; the loss is then a training loss.
            datasets = {
                k: Subset(ds, range(min(len(ds), self.eval_batch_size)))
                for k, ds in self.training_datasets("train", train=False).items()
            }
        return self._combined({k: self._loader(ds, False, self.eval_batch_size) for k, ds in datasets.items()})

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

    # ------------------------------------------------------------------ evaluation
    def evaluation_sets(self, split: Split, limit: bool = True) -> list[EvaluationSet]:
        """The composed protocol on ``split``, one set per subset; ``limit`` applies ``max_val_queries``.

        Queries carry the ``breakdown`` attributes in ``ComposedQuery.groups``.
        """
        return [
            build_evaluation(
                self.with_groups(source, split),
                split,
                on_missing=self.on_missing,
                max_queries=self.max_val_queries if limit else None,
                is_present=self.image_present,
            )
            for source in self.composed_sources(split)
        ]

    def with_groups(self, source: ComposedSource, split: Split) -> ComposedSource:
        """``source`` with each query's ``breakdown`` attributes added to its ``groups``."""
        if not self.breakdown:
            return source
        queries = [
            replace(q, groups={**q.groups, **{a: self.query_attribute(a, q, source.subset, split) for a in self.breakdown}})
            for q in source.queries
        ]
        return replace(source, queries=queries)

    def query_attribute(self, attribute: str, query: ComposedQuery, subset: str | None, split: Split) -> str:
        """The value of one breakdown attribute for ``query``; subclasses add their own attributes."""
        if attribute == "caption_length":
            return caption_length(query.text)
        raise ValueError(f"{type(self).__name__} has no query attribute {attribute!r}")

    def retrieval_tasks(self, split: Split, kind: EvalKind) -> list[RetrievalTask]:
        """Evaluation tasks of one kind, built once per split and kind."""
        key = (split, kind)
        if key not in self._task_cache:
            if kind == "composed":
                tasks = [self.composed_task(ev) for ev in self.evaluation_sets(split)]
            elif kind == "caption_pairs":
                tasks = self.image_text_tasks(self.caption_pairs(split), f"{self.name}-captions", split)
            elif kind == "descriptions":
                tasks = self.image_text_tasks(self.description_pairs(split), f"{self.name}-descriptions", split)
            else:
                raise ValueError(f"unknown evaluation kind {kind!r}; expected composed, caption_pairs or descriptions")
            self._task_cache[key] = tasks
        return self._task_cache[key]

    def composed_tasks(self, split: Split) -> list[RetrievalTask]:
        """The composed evaluation tasks of ``split`` (one per subset)."""
        return self.retrieval_tasks(split, "composed")

    def composed_task(self, evaluation: EvaluationSet) -> RetrievalTask:
        """Datasets over an evaluation set: images are decoded and transformed on access."""
        tf = self._require_transforms()[1]
        key, width = evaluation.key, evaluation.member_width

        def gallery_item(image: Any, i: int) -> dict[str, Any]:
            return {"gallery_id": i, "image": tf(self.load_image(image.path, f"{key} gallery image {image.id}"))}

        def query_item(r: ResolvedQuery, i: int) -> dict[str, Any]:
            q = r.query
            item: dict[str, Any] = {"query_id": i, "target_id": r.target_index, "reference_id": r.excluded_index}
            if width:
                item["member_ids"] = list(r.member_indices) + [-1] * (width - len(r.member_indices))
            item["image"] = tf(self.load_image(q.reference, q.source or q.name))
            item["text"] = q.text
            return item

        protocol = evaluation.protocol
        return RetrievalTask(
            protocol.name,
            evaluation.subset,
            ListDataset(evaluation.gallery, gallery_item),
            ListDataset(evaluation.queries, query_item),
            evaluation.gallery_names,
            evaluation.query_names,
            ks=protocol.ks,
            subset_ks=protocol.subset_ks,
            exclude_reference=protocol.exclude_reference,
            headline=protocol.headline,
            split=evaluation.split,
            evaluation=evaluation,
        )

    def image_text_tasks(self, records: Sequence[ImageText], protocol: str, split: str) -> list[RetrievalTask]:
        """text->image and image->text tasks over image-caption records (one gallery entry per image)."""
        found = build_image_text_evaluation(
            records, protocol, split, on_missing=self.on_missing, max_queries=self.max_val_queries,
            is_present=self.image_present,
        )
        tf = self._require_transforms()[1]
        names = [r.image_id for r in found.images]
        images = ListDataset(
            found.images, lambda r, i: {"gallery_id": i, "image": tf(self.load_image(r.image, f"{protocol} gallery image {r.image_id}"))}
        )
        t2i_queries = ListDataset(
            list(zip(found.captions, found.targets, strict=True)),
            lambda rt, i: {"query_id": i, "target_id": rt[1], "reference_id": -1, "text": rt[0].text},
        )
        texts = ListDataset(found.images, lambda r, i: {"gallery_id": i, "text": r.text})
        i2t_queries = ListDataset(
            found.images,
            lambda r, i: {"query_id": i, "target_id": i, "reference_id": -1, "image": tf(self.load_image(r.image, r.source))},
        )
        common = dict(ks=IMAGE_TEXT_KS, headline=IMAGE_TEXT_HEADLINE, split=split)
        return [
            RetrievalTask(protocol, "t2i", images, t2i_queries, names, [r.source or r.image_id for r in found.captions], **common),
            RetrievalTask(protocol, "i2t", texts, i2t_queries, [r.text for r in found.images], names, **common),
        ]
