"""FashionIQ (Wu et al., CVPR 2021) in its official on-disk layout, with both evaluation protocols.

Layout (the synthetic benchmark writes the same one)::

    root/captions/cap.{cat}.{split}.json       list of {"candidate", "target", "captions": [c0, c1]}
    root/image_splits/split.{cat}.{split}.json list of image ids
    root/images/<id>.png | <id>.jpg            the extension is found per id; a folder may mix them

The annotation files may live apart from the images (``annotations_root``), so that a filtered copy written
by ``ctiir check-data --write_filtered`` can be used with the original image folder.

The parsing functions at the top are pure and image-free: ``ctiir check-data`` and the tests use them on the
real annotation files. Official test targets are withheld, so ``"test"`` means the val files everywhere.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ctiir.datamodules.annotations import check_image_id, read_json, require
from ctiir.datamodules.base import CTIIRDataModule, Split
from ctiir.datamodules.errors import AnnotationError, DataError
from ctiir.datamodules.protocol import ComposedQuery, ComposedSource, GalleryImage, ProtocolSpec
from ctiir.datamodules.records import Triplet
from ctiir.datamodules.text import TextMode, clip4cir_concat, compose_query_text

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


def query_name(file_name: str, index: int) -> str:
    """A FashionIQ query's name: its caption file and entry, ``cap.dress.val.json#12``."""
    return f"{file_name}#{index}"


def caption_index(name: str) -> int:
    """The caption-file entry a query's name points at (``cap.dress.val.json#12/swapped`` -> 12)."""
    try:
        return int(name.split("#", 1)[1].split("/", 1)[0])
    except (IndexError, ValueError):
        raise ValueError(f"{name!r} is not a FashionIQ query name (<caption file>#<entry>)") from None


def fashioniq_queries(
    captions: Sequence[FashionIQCaption], locate: Callable[[str], Path], query_text: str
) -> list[ComposedQuery]:
    """Turn caption entries into composed queries for one query-text mode.

    ``clip4cir``: one query with CLIP4Cir's concatenation. ``average``: one query whose text is both orders
    (the stage averages the two fused embeddings). ``two-queries``: one query per order, with distinct names
    (``cap.dress.val.json#12`` and ``cap.dress.val.json#12/swapped``) and the same target.
    ``locate`` maps an image id to its file.
    """
    if query_text not in QUERY_TEXTS:
        raise ValueError(f"unknown query_text {query_text!r}; expected one of {', '.join(QUERY_TEXTS)}")
    out: list[ComposedQuery] = []
    for c in captions:
        if c.target is None:
            raise AnnotationError(f"{c.source}: this evaluation query has no 'target'")
        name = query_name(c.file.name, c.index)
        reference, target = locate(c.candidate), locate(c.target)
        if query_text == "two-queries":
            c0, c1 = c.captions
            texts: list[tuple[str, str | list[str]]] = [(name, clip4cir_concat(c0, c1)), (f"{name}/swapped", clip4cir_concat(c1, c0))]
        else:
            mode: TextMode = "average" if query_text == "average" else "clip4cir"
            texts = [(name, compose_query_text(c.captions, mode))]
        for named, text in texts:
            out.append(ComposedQuery(named, c.candidate, reference, text, c.target, target, source=c.source))
    return out


def fashioniq_source(
    protocol: ProtocolSpec,
    category: str,
    captions: Sequence[FashionIQCaption],
    locate: Callable[[str], Path],
    query_text: str,
    split_ids: Sequence[str] | None = None,
    split_path: Path | None = None,
) -> ComposedSource:
    """One category's evaluation source from its val files.

    ``original``: the gallery is every id of ``split.{cat}.val.json`` (``split_ids``, in file order).
    ``val-split`` (``split_ids=None``): the gallery is derived from the queries (their candidates and targets).
    The queries are every caption entry in both.
    """
    gallery = None
    if split_ids is not None:
        where = split_path if split_path is not None else f"split.{category}.val.json"
        gallery = [GalleryImage(i, locate(i), f"{where} entry {n}") for n, i in enumerate(split_ids)]
    return ComposedSource(protocol, category, fashioniq_queries(captions, locate, query_text), gallery)


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
            copy written by ``ctiir check-data --write_filtered``.
        caption_pairs: Stage I image-caption JSONL/CSV file (relative to ``root`` or absolute).
        descriptions: Stage II product-description JSONL/CSV file (relative to ``root`` or absolute).
        **kwargs: ``CTIIRDataModule``'s arguments (batch size, workers, preprocessing, ``on_missing``, ...).
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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
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
    def annotation_split(self, split: str) -> str:
        """``"test"`` reads the val files (and the val rows of the Stage I/II tables): test targets are withheld."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected train, val or test")
        return "val" if split == "test" else split

    def triplets(self, split: Split) -> list[Triplet]:
        """Triplets of every selected category together (``Triplet.category`` says which)."""
        ann_split = self.annotation_split(split)
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

    def protocol_name(self) -> str:
        """The protocol tag in metric keys, e.g. ``fashioniq-original`` in ``val/fashioniq-original/dress/R@10``."""
        return f"fashioniq-{self.protocol}"

    def evaluation_protocol(self) -> ProtocolSpec:
        """FashionIQ's scoring: R@1/5/10/50, headline the mean of R@10 and R@50 (averaged over categories)."""
        return ProtocolSpec(self.protocol_name(), KS, HEADLINE, self.exclude_reference)

    def category_source(self, category: str) -> ComposedSource:
        """One category's gallery and queries from the val files (``"test"`` too: test targets are withheld)."""
        captions = read_fashioniq_captions(self.annotations_root, category, "val")
        split_ids = None
        if self.protocol == "original":
            split_ids = read_fashioniq_split(self.annotations_root, category, "val")
        return fashioniq_source(
            self.evaluation_protocol(),
            category,
            captions,
            self.images.path,
            self.query_text,
            split_ids=split_ids,
            split_path=split_file(self.annotations_root, category, "val"),
        )

    def composed_sources(self, split: Split) -> list[ComposedSource]:
        """One source per category over the val files."""
        if self.annotation_split(split) != "val":
            raise ValueError(f"FashionIQ evaluates on the val files; got split {split!r} (use 'val' or 'test')")
        return [self.category_source(cat) for cat in self.categories]
