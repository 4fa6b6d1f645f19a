"""Shoes (Guo et al. 2018, "Dialog-based interactive image retrieval"): relative captions on the Attribute
Discovery shoe images.

Annotation files, under ``annotations_root`` (default ``root``):

- ``relative_captions_shoes.json``: ``[{"ImageName": target, "ReferenceImageName": reference,
  "RelativeCaption": text}, ...]``;
- ``train_im_names.txt`` / ``eval_im_names.txt``: one image file name per line (10,000 / 4,658);
- ``captions_shoes.json``: ``[{"ImageName": name, "Caption": text}, ...]`` single-image captions (Stage II).

Images are looked up by file name anywhere under the image root (the Attribute Discovery folders
``womens_*/...`` nest differently in different copies): the tree is indexed once, on first use, and a needed
name found twice is an error naming both paths.

Protocol (key ``"shoes"``): the gallery is the 4,658 eval images; a triplet is a test query iff its reference
is an eval image (1,761 with the official files); the reference is excluded from the ranking; R@1, R@10,
R@50, all three in the headline score. Training triplets are those whose reference is a train image (8,990).
"test" means the eval split (Shoes has no other).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctiir.datamodules.annotations import check_caption, check_image_id, read_json, require
from ctiir.datamodules.base import CTIIRDataModule, Split
from ctiir.datamodules.errors import AnnotationError, DataError
from ctiir.datamodules.protocol import ComposedQuery, ComposedSource, GalleryImage, ProtocolSpec
from ctiir.datamodules.records import ImageText, Triplet

TRIPLETS_FILE = "relative_captions_shoes.json"
CAPTIONS_FILE = "captions_shoes.json"
TRAIN_NAMES_FILE = "train_im_names.txt"
EVAL_NAMES_FILE = "eval_im_names.txt"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
PROTOCOL = ProtocolSpec("shoes", ks=(1, 10, 50), headline=("R@1", "R@10", "R@50"), exclude_reference=True)


@dataclass(frozen=True)
class ShoesTriplet:
    reference: str
    target: str
    caption: str
    source: str


@dataclass(frozen=True)
class ShoesAnnotations:
    """The validated Shoes annotation files, with no image access."""

    triplets: list[ShoesTriplet]
    train_names: list[str]
    eval_names: list[str]
    captions: list[tuple[str, str, str]]  # (image name, caption, source)

    def split_triplets(self, split: Split) -> list[ShoesTriplet]:
        """Training triplets (reference in train) or evaluation triplets (reference in eval: "val" and "test")."""
        names = set(self.train_names if split == "train" else self.eval_names)
        return [t for t in self.triplets if t.reference in names]

    def split_captions(self, split: Split) -> list[tuple[str, str, str]]:
        """Single-image captions of the train images ("train") or of the eval images ("val" / "test")."""
        names = set(self.train_names if split == "train" else self.eval_names)
        return [c for c in self.captions if c[0] in names]


def name_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, name)`` of a name list's non-blank lines; an unreadable file is an ``AnnotationError``."""
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found")
    try:
        lines = path.read_bytes().decode("utf-8").split("\n")
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{path}: not UTF-8 text ({err})") from err
    return [(number, line.strip()) for number, line in enumerate(lines, start=1) if line.strip()]


def read_names(path: Path) -> list[str]:
    """A name list: one file name per line; blank lines are ignored, a repeated name is an error."""
    names: list[str] = []
    seen: dict[str, int] = {}
    for number, name in name_lines(path):
        check_image_id(name, f"{path} line {number}", key="image name")
        if name in seen:
            raise AnnotationError(f"{path} line {number}: {name!r} repeats line {seen[name]}")
        seen[name] = number
        names.append(name)
    if not names:
        raise AnnotationError(f"{path}: no image names")
    return names


def json_entries(path: Path) -> list[Any]:
    """A Shoes JSON file's entries (a JSON array)."""
    data = read_json(path)
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: expected a JSON array of entries, got {type(data).__name__}")
    return data


def parse_triplet(entry: Any, where: str) -> ShoesTriplet:
    """One ``relative_captions_shoes.json`` entry, checked on its own (types, names, a non-blank caption)."""
    target = check_image_id(require(entry, "ImageName", str, where), where, "ImageName")
    reference = check_image_id(require(entry, "ReferenceImageName", str, where), where, "ReferenceImageName")
    caption = check_caption(require(entry, "RelativeCaption", str, where), where, "RelativeCaption")
    return ShoesTriplet(reference, target, caption, where)


def triplet_membership(t: ShoesTriplet, train: Collection[str], evals: Collection[str]) -> str | None:
    """Why a triplet does not fit the name lists, or ``None``: its reference must be in one, and an
    evaluation triplet's target in the eval list (the gallery)."""
    if t.reference not in train and t.reference not in evals:
        return f"ReferenceImageName {t.reference!r} is in neither {TRAIN_NAMES_FILE} nor {EVAL_NAMES_FILE}"
    if t.reference in evals and t.target not in evals:
        return f"evaluation triplet's target {t.target!r} is not in {EVAL_NAMES_FILE} (the gallery)"
    return None


def parse_caption(entry: Any, where: str) -> tuple[str, str, str]:
    """One ``captions_shoes.json`` entry: ``(image name, caption, where)``."""
    name = check_image_id(require(entry, "ImageName", str, where), where, "ImageName")
    caption = check_caption(require(entry, "Caption", str, where), where, "Caption")
    return name, caption, where


def read_shoes(annotations_root: str | Path) -> ShoesAnnotations:
    """Read and cross-check the four Shoes files. Every defect is an ``AnnotationError`` naming file and entry.

    Checks: the train and eval lists are disjoint; every triplet's reference is in one of them; an eval
    triplet's target is an eval image (it must be in the gallery); every captioned image is in a list.
    """
    root = Path(annotations_root)
    train = read_names(root / TRAIN_NAMES_FILE)
    evals = read_names(root / EVAL_NAMES_FILE)
    train_set, eval_set = set(train), set(evals)
    both = sorted(train_set & eval_set)
    if both:
        raise AnnotationError(
            f"{root / TRAIN_NAMES_FILE} and {root / EVAL_NAMES_FILE} share {len(both)} names, e.g. {both[0]!r}"
        )
    path = root / TRIPLETS_FILE
    triplets: list[ShoesTriplet] = []
    for i, entry in enumerate(json_entries(path)):
        triplet = parse_triplet(entry, f"{path} entry {i}")
        problem = triplet_membership(triplet, train_set, eval_set)
        if problem is not None:
            raise AnnotationError(f"{triplet.source}: {problem}")
        triplets.append(triplet)
    path = root / CAPTIONS_FILE
    captions: list[tuple[str, str, str]] = []
    for i, entry in enumerate(json_entries(path)):
        name, caption, where = parse_caption(entry, f"{path} entry {i}")
        if name not in train_set and name not in eval_set:
            raise AnnotationError(f"{where}: ImageName {name!r} is in neither {TRAIN_NAMES_FILE} nor {EVAL_NAMES_FILE}")
        captions.append((name, caption, where))
    return ShoesAnnotations(triplets, train, evals, captions)


def shoes_source(annotations: ShoesAnnotations, locate: Callable[[str], Path]) -> ComposedSource:
    """The evaluation: the gallery is the eval images, the queries every triplet whose reference is one."""
    gallery = [GalleryImage(n, locate(n), f"{EVAL_NAMES_FILE} name {n}") for n in annotations.eval_names]
    queries = [
        ComposedQuery(t.source, t.reference, locate(t.reference), t.caption, t.target, locate(t.target), source=t.source)
        for t in annotations.split_triplets("test")
    ]
    return ComposedSource(PROTOCOL, None, queries, gallery)


def index_images(image_root: str | Path) -> dict[str, list[Path]]:
    """Every image file under ``image_root`` (recursively, following no links out of it) by file name."""
    root = Path(image_root)
    if not root.is_dir():
        raise DataError(f"Shoes image root {root} is not a directory")
    found: dict[str, list[Path]] = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name.lower().endswith(IMAGE_SUFFIXES):
                found.setdefault(name, []).append(Path(folder) / name)
    return found


def find_image(index: dict[str, list[Path]], name: str, image_root: Path) -> Path | None:
    """The one file named ``name`` in ``index`` (:func:`index_images`); ``None`` if there is none, and a
    ``DataError`` if the name is found twice (which one the annotations mean cannot be told)."""
    paths = sorted(index.get(name, []))
    if len(paths) > 1:
        raise DataError(f"Shoes image {name!r} is found twice under {image_root}: {paths[0]} and {paths[1]}")
    return paths[0] if paths else None


class ShoesDataModule(CTIIRDataModule):
    """Shoes for Stage II (captions, image pairs) and Stage III (triplets), evaluated on the eval images.

    Args:
        root: the image root (images are found by name anywhere below it).
        annotations_root: folder of the four annotation files (default: ``root``).
        caption_pairs: optional open-domain image-caption JSONL/CSV file for Stage I (Shoes has none of its
            own; see ``ctiir.datamodules.tables`` for the format, paths relative to ``root``).
        **kwargs: ``CTIIRDataModule``'s arguments.
    """

    name = "shoes"

    def __init__(
        self,
        root: str,
        annotations_root: str | None = None,
        caption_pairs: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self.annotations_root = Path(annotations_root) if annotations_root is not None else self.root
        self.caption_pairs_file = caption_pairs
        self._annotations: ShoesAnnotations | None = None
        self._index: dict[str, list[Path]] | None = None

    @property
    def annotations(self) -> ShoesAnnotations:
        if self._annotations is None:
            self._annotations = read_shoes(self.annotations_root)
        return self._annotations

    def image_path(self, name: str) -> Path:
        """Where image ``name`` is; a name found twice is an error, a missing one maps to ``root/name``
        (reported as missing by the ``on_missing`` check, whose message names the entry)."""
        if self._index is None:
            self._index = index_images(self.root)
        return find_image(self._index, name, self.root) or self.root / name

    # ------------------------------------------------------------------ sources
    def triplets(self, split: Split) -> list[Triplet]:
        return [
            Triplet(
                self.image_path(t.reference),
                self.image_path(t.target),
                (t.caption,),
                t.reference,
                t.target,
                source=t.source,
            )
            for t in self.annotations.split_triplets(split)
        ]

    def description_pairs(self, split: Split) -> list[ImageText]:
        return [ImageText(self.image_path(n), c, n, source=s) for n, c, s in self.annotations.split_captions(split)]

    def composed_sources(self, split: Split) -> list[ComposedSource]:
        if split not in ("val", "test"):
            raise ValueError(f"Shoes evaluates on the eval images: split must be 'val' or 'test', got {split!r}")
        return [shoes_source(self.annotations, self.image_path)]
