"""FashionIQ (Wu et al., CVPR 2021) in its official on-disk layout, with both evaluation protocols.

Layout (the synthetic benchmark writes the same one)::

    root/captions/cap.{cat}.{split}.json       list of {"candidate", "target", "captions": [c0, c1]}
    root/image_splits/split.{cat}.{split}.json list of image ids
    root/images/<id>.png | <id>.jpg            the extension is found per id; a folder may mix them

The annotation files may live apart from the images (``annotations_root``), so that a filtered copy written
by ``ctiir check-data --write-filtered`` can be used with the original image folder.

The parsing functions at the top are pure and image-free: ``ctiir check-data`` and the tests use them on the
real annotation files. Official test targets are withheld, so ``"test"`` means the val files everywhere.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ctiir.datamodules.annotations import check_image_id, read_json, require
from ctiir.datamodules.base import CTIIRDataModule, Split
from ctiir.datamodules.errors import AnnotationError, DataError
from ctiir.datamodules.images import OnMissing, load_rgb
from ctiir.datamodules.records import ImageText, Triplet
from ctiir.datamodules.tasks import ListDataset, RetrievalTask
from ctiir.datamodules.text import TextMode, clip4cir_concat, compose_query_text
from ctiir.datamodules.transforms import Preprocess

log = logging.getLogger(__name__)

Category = Literal["dress", "shirt", "toptee"]
Protocol = Literal["original", "val-split"]
QueryText = Literal["clip4cir", "average", "two-queries"]

CATEGORIES: tuple[str, ...] = ("dress", "shirt", "toptee")
PROTOCOLS: tuple[str, ...] = ("original", "val-split")
QUERY_TEXTS: tuple[str, ...] = ("clip4cir", "average", "two-queries")
SPLITS: tuple[str, ...] = ("train", "val", "test")
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg")
KS: tuple[int, ...] = (1, 5, 10, 50)
HEADLINE: tuple[str, ...] = ("R@10", "R@50")


# ---------------------------------------------------------------------------------------------- parsing
@dataclass(frozen=True)
class FashionIQCaption:
    """One entry of ``cap.{cat}.{split}.json``. ``target`` is ``None`` in the test split (withheld).

    ``captions`` is kept verbatim: the official files hold a few entries with one blank caption (e.g.
    ``cap.shirt.val.json`` entry 1928), and the official query counts include them, so only an entry whose
    captions are *all* blank is rejected.
    """

    candidate: str
    target: str | None
    captions: tuple[str, ...]
    file: Path
    index: int

    @property
    def source(self) -> str:
        """Where the entry comes from, for error messages: ``<file> entry <index>``."""
        return f"{self.file} entry {self.index}"


def split_file(root: str | Path, category: str, split: str) -> Path:
    return Path(root) / "image_splits" / f"split.{category}.{split}.json"


def caption_file(root: str | Path, category: str, split: str) -> Path:
    return Path(root) / "captions" / f"cap.{category}.{split}.json"


def _check_names(category: str, split: str) -> None:
    if category not in CATEGORIES:
        raise ValueError(f"unknown FashionIQ category {category!r}; expected one of {', '.join(CATEGORIES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown FashionIQ split {split!r}; expected one of {', '.join(SPLITS)}")


def _require_list(data: Any, path: Path) -> list[Any]:
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: expected a JSON list at the top level, got {type(data).__name__}")
    return data


def parse_split_entry(value: Any, where: str) -> str:
    """One entry of a split file: an image id (a non-empty string without path separators or ``..``)."""
    return check_image_id(value, where, key="image id")


def parse_caption_entry(entry: Any, file: Path, index: int, split: str) -> FashionIQCaption:
    """One entry of a caption file, validated; every defect is an ``AnnotationError`` naming file and index.

    ``target`` is required except in the test split, whose targets are withheld (one given there is still
    validated). ``captions`` must be a list of exactly two strings, not both blank.
    """
    where = f"{file} entry {index}"
    candidate = check_image_id(require(entry, "candidate", str, where), where, key="candidate")
    if split == "test" and "target" not in entry:
        target = None
    else:
        target = check_image_id(require(entry, "target", str, where), where, key="target")
    raw = require(entry, "captions", list, where)
    if len(raw) != 2:
        raise AnnotationError(f"{where}: 'captions' must hold 2 captions, got {len(raw)}")
    captions = []
    for k, caption in enumerate(raw):
        if isinstance(caption, bool) or not isinstance(caption, str):
            raise AnnotationError(
                f"{where}: captions[{k}] must be a string, got {type(caption).__name__} {caption!r:.60}"
            )
        captions.append(caption)
    if not any(c.strip() for c in captions):
        raise AnnotationError(f"{where}: every caption is empty")
    return FashionIQCaption(candidate, target, tuple(captions), file, index)


def read_fashioniq_split(root: str | Path, category: str, split: str) -> list[str]:
    """The image ids of ``image_splits/split.{category}.{split}.json``, in file order.

    A duplicated id is an error (it would make two gallery entries of one image), naming both entries.
    """
    _check_names(category, split)
    path = split_file(root, category, split)
    data = _require_list(read_json(path), path)
    seen: dict[str, int] = {}
    for i, value in enumerate(data):
        image_id = parse_split_entry(value, f"{path} entry {i}")
        if image_id in seen:
            raise AnnotationError(f"{path} entry {i}: image id {image_id!r} duplicates entry {seen[image_id]}")
        seen[image_id] = i
    return list(seen)


def read_fashioniq_captions(root: str | Path, category: str, split: str) -> list[FashionIQCaption]:
    """The validated entries of ``captions/cap.{category}.{split}.json``, in file order."""
    _check_names(category, split)
    path = caption_file(root, category, split)
    data = _require_list(read_json(path), path)
    return [parse_caption_entry(entry, path, i, split) for i, entry in enumerate(data)]


def val_split_gallery(queries: Sequence[FashionIQCaption]) -> list[str]:
    """The ``val-split`` gallery: the distinct candidates and targets, in first-seen order (candidate first)."""
    seen: dict[str, None] = {}
    for q in queries:
        seen.setdefault(q.candidate)
        if q.target is not None:
            seen.setdefault(q.target)
    return list(seen)


def check_targets(gallery_ids: Sequence[str], queries: Sequence[FashionIQCaption], what: str) -> None:
    """Every query needs a target, and the target must be in the gallery: otherwise it can never be found."""
    gallery = set(gallery_ids)
    for q in queries:
        if q.target is None:
            raise AnnotationError(f"{q.source}: {what} query has no 'target'")
        if q.target not in gallery:
            raise AnnotationError(f"{q.source}: target {q.target!r} of this {what} query is not in the gallery")


def fashioniq_protocol(root: str | Path, category: str, protocol: str) -> tuple[list[str], list[FashionIQCaption]]:
    """The evaluation sets of one category: ``(gallery_ids, queries)`` from the val files.

    ``original``: the gallery is every id of ``split.{cat}.val.json``. ``val-split``: the distinct candidates
    and targets of the val queries. The queries are every entry of ``cap.{cat}.val.json`` in both.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown FashionIQ protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    queries = read_fashioniq_captions(root, category, "val")
    gallery = read_fashioniq_split(root, category, "val") if protocol == "original" else val_split_gallery(queries)
    check_targets(gallery, queries, f"fashioniq {category} val ({protocol})")
    return gallery, queries


@dataclass(frozen=True)
class FashionIQQuery:
    """One evaluation query: the reference (candidate) image, its text, and gallery positions."""

    name: str
    candidate: str
    text: str | list[str]
    target_index: int
    reference_index: int
    source: str


def build_queries(
    captions: Sequence[FashionIQCaption], gallery_ids: Sequence[str], query_text: str
) -> list[FashionIQQuery]:
    """Turn caption entries into queries for one query-text mode.

    ``clip4cir``: one query with CLIP4Cir's concatenation. ``average``: one query whose text is both orders
    (the stage averages the two fused embeddings). ``two-queries``: one query per order, with distinct names
    and the same target. ``reference_index`` is the candidate's gallery position, or -1 if it is absent.
    """
    if query_text not in QUERY_TEXTS:
        raise ValueError(f"unknown query_text {query_text!r}; expected one of {', '.join(QUERY_TEXTS)}")
    index = {name: i for i, name in enumerate(gallery_ids)}
    out: list[FashionIQQuery] = []
    for c in captions:
        if c.target is None or c.target not in index:
            raise AnnotationError(f"{c.source}: target {c.target!r} is not in the gallery")
        target, reference = index[c.target], index.get(c.candidate, -1)
        name = f"{c.file.name}#{c.index}"
        if query_text == "two-queries":
            c0, c1 = c.captions
            out.append(FashionIQQuery(name, c.candidate, clip4cir_concat(c0, c1), target, reference, c.source))
            out.append(
                FashionIQQuery(f"{name}/swapped", c.candidate, clip4cir_concat(c1, c0), target, reference, c.source)
            )
        else:
            mode: TextMode = "average" if query_text == "average" else "clip4cir"
            out.append(
                FashionIQQuery(name, c.candidate, compose_query_text(c.captions, mode), target, reference, c.source)
            )
    return out


# ---------------------------------------------------------------------------------------------- images
class ImageFolder:
    """A FashionIQ ``images/`` folder, indexed by id in one directory scan (on first use).

    The extension is found per id (``.png``, ``.jpg`` or ``.jpeg``, any case); an id present with two
    extensions is ambiguous, and using it is an error naming both files.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._index: dict[str, list[Path]] | None = None

    def _scan(self) -> dict[str, list[Path]]:
        if self._index is None:
            index: dict[str, list[Path]] = {}
            if self.folder.is_dir():
                with os.scandir(self.folder) as entries:
                    for entry in entries:
                        stem, ext = os.path.splitext(entry.name)
                        if ext.lower() in IMAGE_EXTENSIONS and entry.is_file():
                            index.setdefault(stem, []).append(Path(entry.path))
            for paths in index.values():
                paths.sort()
            self._index = index
        return self._index

    def find(self, image_id: str) -> Path | None:
        """The file of ``image_id``, or ``None`` if there is none."""
        paths = self._scan().get(image_id)
        if not paths:
            return None
        if len(paths) > 1:
            raise DataError(f"image id {image_id!r} is ambiguous: {', '.join(str(p) for p in paths)}; keep one file")
        return paths[0]

    def path(self, image_id: str) -> Path:
        """The file of ``image_id``; for a missing one, the ``.png`` path where it was looked for."""
        return self.find(image_id) or self.folder / f"{image_id}.png"

    def describe_missing(self, image_id: str) -> str:
        where = "" if self.folder.is_dir() else f" (the folder {self.folder} does not exist)"
        return f"{self.folder / image_id}.png|.jpg{where}"


# ---------------------------------------------------------------------------------------------- datamodule
class FashionIQDataModule(CTIIRDataModule):
    """FashionIQ for all three stages: triplets for Stage III, optional JSONL text for Stages I and II.

    Args:
        root: the dataset folder holding ``images/`` (and the annotations unless ``annotations_root``).
        categories: which of dress, shirt, toptee to train on and evaluate (each evaluated on its own).
        protocol: ``"original"`` (gallery = the val split file) or ``"val-split"`` (gallery = the distinct
            candidates and targets of the val queries).
        query_text: ``"clip4cir"`` (CLIP4Cir's concatenation), ``"average"`` (both orders; their fused
            embeddings are averaged) or ``"two-queries"`` (one query per caption order).
        exclude_reference: remove the reference image from each ranking (DQU-CIR, ARTEMIS) or keep it
            (CLIP4Cir, the default).
        annotations_root: where ``captions/`` and ``image_splits/`` are (default ``root``), e.g. a filtered
            copy written by ``ctiir check-data --write-filtered``.
        caption_pairs: Stage I image-caption JSONL/CSV file (relative to ``root`` or absolute).
        descriptions: Stage II product-description JSONL/CSV file (relative to ``root`` or absolute).
        batch_size, num_workers, preprocess, target_pad_ratio, on_missing, train_text_mode, eval_batch_size,
        max_val_queries, seed: see ``CTIIRDataModule``.
    """

    name = "fashioniq"

    def __init__(
        self,
        root: str,
        categories: Sequence[Category] = ("dress", "shirt", "toptee"),
        protocol: Protocol = "original",
        query_text: QueryText = "clip4cir",
        exclude_reference: bool = False,
        annotations_root: str | None = None,
        caption_pairs: str | None = None,
        descriptions: str | None = None,
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
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            preprocess=preprocess,
            target_pad_ratio=target_pad_ratio,
            on_missing=on_missing,
            train_text_mode=train_text_mode,
            eval_batch_size=eval_batch_size,
            max_val_queries=max_val_queries,
            seed=seed,
        )
        if isinstance(categories, str):
            categories = (categories,)  # type: ignore[assignment]
        categories = tuple(categories)
        if not categories:
            raise ValueError("FashionIQDataModule: categories is empty; choose from dress, shirt, toptee")
        for cat in categories:
            if cat not in CATEGORIES:
                raise ValueError(f"FashionIQDataModule: unknown category {cat!r}; expected dress, shirt or toptee")
        if len(set(categories)) != len(categories):
            raise ValueError(f"FashionIQDataModule: categories {list(categories)} list one twice")
        if protocol not in PROTOCOLS:
            raise ValueError(f"FashionIQDataModule: unknown protocol {protocol!r}; expected original or val-split")
        if query_text not in QUERY_TEXTS:
            raise ValueError(
                f"FashionIQDataModule: unknown query_text {query_text!r}; expected {', '.join(QUERY_TEXTS)}"
            )
        if on_missing not in ("error", "skip"):
            raise ValueError(f"FashionIQDataModule: on_missing must be 'error' or 'skip', got {on_missing!r}")
        self.root = Path(root)
        self.annotations_root = Path(annotations_root) if annotations_root is not None else self.root
        self.categories: tuple[str, ...] = categories
        self.protocol = protocol
        self.query_text = query_text
        self.exclude_reference = exclude_reference
        self.caption_pairs_file = caption_pairs
        self.descriptions_file = descriptions
        self.images = ImageFolder(self.root / "images")

    # -------------------------------------------------------------------------------------- sources
    @staticmethod
    def _annotation_split(split: str) -> str:
        """``"test"`` reads the val files: the official test targets are withheld."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected train, val or test")
        return "val" if split == "test" else split

    def triplets(self, split: Split) -> list[Triplet]:
        """Triplets of every selected category together (``Triplet.category`` says which)."""
        ann_split = self._annotation_split(split)
        out: list[Triplet] = []
        for cat in self.categories:
            for c in read_fashioniq_captions(self.annotations_root, cat, ann_split):
                assert c.target is not None  # required outside the test split
                out.append(
                    Triplet(
                        reference=self.images.path(c.candidate),
                        target=self.images.path(c.target),
                        captions=c.captions,
                        reference_id=c.candidate,
                        target_id=c.target,
                        category=cat,
                        source=c.source,
                    )
                )
        return out

    def _text_pairs(self, file: str | None, argument: str, what: str, split: Split) -> list[ImageText]:
        if file is None:
            raise NotImplementedError(
                f"FashionIQDataModule has no {what}: set {argument}=<JSONL or CSV file of image/text pairs>"
            )
        from ctiir.datamodules.custom import read_image_text_pairs

        # Relative paths are resolved against ``root`` first (then the working directory) by the reader.
        return read_image_text_pairs(file, self.root, self._annotation_split(split))

    def caption_pairs(self, split: Split) -> list[ImageText]:
        """Stage I image-caption pairs from the ``caption_pairs`` file (its ``split`` column; test = val)."""
        return self._text_pairs(self.caption_pairs_file, "caption_pairs", "Stage I image-caption pairs", split)

    def description_pairs(self, split: Split) -> list[ImageText]:
        """Stage II description->image pairs from the ``descriptions`` file (its ``split`` column; test = val)."""
        return self._text_pairs(self.descriptions_file, "descriptions", "Stage II product descriptions", split)

    # -------------------------------------------------------------------------------------- evaluation
    def _missing(self, image_id: str, what: str, source: str) -> DataError:
        return DataError(
            f"missing image {self.images.describe_missing(image_id)} in {what}, annotation entry {source}; "
            "fix the data (see `ctiir check-data`) or pass on_missing='skip'"
        )

    def evaluation_sets(self, category: str) -> tuple[list[str], list[FashionIQCaption]]:
        """``(gallery_ids, queries)`` of one category under this protocol, with missing images handled.

        ``on_missing="error"``: a missing gallery or query image is an error naming the file, the split and
        the annotation entry. ``"skip"``: missing gallery images are removed, then every query whose
        candidate or target image is missing (so also one whose target was removed); both counts are logged.
        """
        what = f"fashioniq {category} val ({self.protocol})"
        queries = read_fashioniq_captions(self.annotations_root, category, "val")
        dropped_gallery = 0
        if self.protocol == "original":
            split_path = split_file(self.annotations_root, category, "val")
            gallery = []
            for i, image_id in enumerate(read_fashioniq_split(self.annotations_root, category, "val")):
                if self.images.find(image_id) is not None:
                    gallery.append(image_id)
                elif self.on_missing == "error":
                    raise self._missing(image_id, f"{what} gallery", f"{split_path} entry {i}")
                else:
                    dropped_gallery += 1
        kept: list[FashionIQCaption] = []
        for q in queries:
            absent = [i for i in (q.candidate, q.target) if i is not None and self.images.find(i) is None]
            if not absent:
                kept.append(q)
            elif self.on_missing == "error":
                raise self._missing(absent[0], f"{what} queries", q.source)
        if self.protocol == "val-split":
            gallery = val_split_gallery(kept)
        if self.on_missing == "skip" and (dropped_gallery or len(kept) < len(queries)):
            log.warning(
                "%s: skipped %d of %d gallery images and %d of %d queries with missing images (on_missing='skip')",
                what,
                dropped_gallery,
                len(gallery) + dropped_gallery,
                len(queries) - len(kept),
                len(queries),
            )
        check_targets(gallery, kept, what)
        return gallery, kept

    def protocol_name(self) -> str:
        """The protocol tag in metric keys, e.g. ``fashioniq-original`` in ``val/fashioniq-original/dress/R@10``."""
        return f"fashioniq-{self.protocol}"

    def composed_tasks(self, split: Split) -> list[RetrievalTask]:
        """One ``RetrievalTask`` per category over the val files (``"test"`` too: test targets are withheld)."""
        if self._annotation_split(split) != "val":
            raise ValueError(f"FashionIQ evaluates on the val files; got split {split!r} (use 'val' or 'test')")
        tf = self._require_transforms()[1]
        tasks = []
        for cat in self.categories:
            gallery_ids, captions = self.evaluation_sets(cat)
            queries = build_queries(captions, gallery_ids, self.query_text)
            if self.max_val_queries is not None:
                queries = queries[: self.max_val_queries]
            protocol = self.protocol_name()
            gallery = self.gallery_dataset(gallery_ids, [self.images.path(i) for i in gallery_ids], f"{protocol} {cat}")
            paths = {q.candidate: self.images.path(q.candidate) for q in queries}

            def make(q: FashionIQQuery, i: int, paths: dict[str, Path] = paths) -> dict[str, Any]:
                return {
                    "query_id": i,
                    "target_id": q.target_index,
                    "reference_id": q.reference_index,
                    "image": tf(load_rgb(paths[q.candidate], f"reference of {q.source}")),
                    "text": q.text,
                }

            tasks.append(
                RetrievalTask(
                    protocol=protocol,
                    subset=cat,
                    gallery=gallery,
                    queries=ListDataset(queries, make),
                    gallery_names=list(gallery_ids),
                    query_names=[q.name for q in queries],
                    ks=KS,
                    exclude_reference=self.exclude_reference,
                    headline=HEADLINE,
                    extra={"query_text": self.query_text, "split": split},
                )
            )
        return tasks
