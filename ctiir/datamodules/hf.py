"""Hugging Face ``datasets`` as ctiir data: triplets and image-caption pairs whose images are ``Image`` features.

A user with data on the Hub, in parquet or already in a ``datasets.Dataset`` passes it as it is, instead of
writing image files and a JSONL table (the strict readers of ``ctiir.datamodules.tables`` stay, for files).

- **Triplets** (Stage III, Stage II's image->image pairs, the composed evaluation): columns ``reference`` and
  ``target`` (``Image`` features), ``text`` (a string, or a list of one or two strings, combined like
  FashionIQ's two captions), optional ``split`` (``train`` / ``val`` / ``test``; null is ``train``) and
  optional ``reference_id`` / ``target_id``.
- **Image-caption pairs** (Stage I ``caption_pairs``, Stage II ``descriptions``): ``image``, ``text``,
  optional ``split`` and ``id``.

A ``DatasetDict`` gives the splits by its keys (``train``; ``val`` or ``validation``; ``test``) instead of a
``split`` column. A source is a ``Dataset`` / ``DatasetDict``, a folder written by ``save_to_disk``, or
anything ``datasets.load_dataset`` opens (a Hub id, a folder of parquet files).

**Image identity.** The gallery and the false-negative masking need to know when two cells hold the same
image. Without id columns, an image's id is a hash of its encoded bytes (read once, never decoded for it), so
a target that recurs in many rows is one gallery image.

**How the protocol layer sees the rows.** Records and evaluation sets carry image *paths*; here a path names
a cell, ``hf:<table>/<part>/<row>/<column>`` (:func:`row_path`), and the datamodule's ``load_image`` /
``image_present`` (the seam of ``CTIIRDataModule``) decode it from the dataset or say it is empty. Every
protocol rule (missing images under ``on_missing``, reference exclusion, de-duplication) applies unchanged,
and every error names the table, the row and the column.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, DatasetDict
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from ctiir.datamodules.base import CTIIRDataModule, Split
from ctiir.datamodules.custom import triplet_queries
from ctiir.datamodules.errors import AnnotationError, DataError
from ctiir.datamodules.images import to_rgb
from ctiir.datamodules.protocol import ComposedSource, GalleryImage, ProtocolSpec
from ctiir.datamodules.records import ImageText, Triplet
from ctiir.datamodules.tables import SPLITS, MissingSplitError

log = logging.getLogger(__name__)

HFSource = str | Dataset | DatasetDict
ROW_PREFIX = "hf:"
WHOLE = "all"  # the part name of a plain Dataset (its rows carry their split in a column)
SPLIT_KEYS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
TRIPLET_COLUMNS = {"reference": "image", "target": "image", "text": "text", "split": "split", "reference_id": "id", "target_id": "id"}
PAIR_COLUMNS = {"image": "image", "text": "text", "split": "split", "id": "id"}
# The id column of each image column.
ID_COLUMN = {"reference": "reference_id", "target": "target_id", "image": "id"}


# ---------------------------------------------------------------------------------------------- row paths
def row_path(table: str, part: str, row: int, column: str) -> Path:
    """The path that names one image cell: ``hf:triplets/train/17/reference``."""
    return Path(f"{ROW_PREFIX}{table}") / part / str(row) / column


def part_name(table: str, part: str) -> str:
    """How messages name one part of a source: ``triplets dataset`` or ``triplets dataset 'train'``."""
    return f"{table} dataset" + ("" if part == WHOLE else f" {part!r}")


def row_name(table: str, part: str, row: int) -> str:
    """How messages name a row (the ``source`` of its records): ``triplets dataset 'train' row 17``."""
    return f"{part_name(table, part)} row {row}"


@dataclass(frozen=True)
class RowCell:
    table: str
    part: str
    row: int
    column: str

    def describe(self) -> str:
        return f"{row_name(self.table, self.part, self.row)}, column {self.column!r}"


def parse_row_path(path: str | Path) -> RowCell | None:
    """The cell a :func:`row_path` names, or ``None`` for any other path (a file)."""
    parts = Path(path).parts
    if len(parts) != 4 or not parts[0].startswith(ROW_PREFIX) or not parts[2].isdigit():
        return None
    return RowCell(parts[0][len(ROW_PREFIX):], parts[1], int(parts[2]), parts[3])


# ---------------------------------------------------------------------------------------------- sources
def _is_saved_to_disk(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in ("dataset_dict.json", "state.json"))


def open_source(source: HFSource, what: str) -> dict[str, Dataset]:
    """``part -> Dataset`` of a source: a ``DatasetDict``'s splits, or ``{"all": dataset}``.

    A string is a ``save_to_disk`` folder, else whatever ``datasets.load_dataset`` opens (a Hub id, a folder
    of parquet files). Offline, a Hub id that is not cached is an error naming it and ``HF_DATASETS_OFFLINE``.
    """
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        try:
            if _is_saved_to_disk(path):
                source = datasets.load_from_disk(str(path))
            else:
                source = datasets.load_dataset(str(source))
        except ConnectionError as err:  # datasets raises it for the Hub when offline
            raise DataError(
                f"{what}: {str(source)!r} is not a save_to_disk folder, and the Hub cannot be reached for it "
                f"({err}); with HF_DATASETS_OFFLINE=1 only cached datasets load"
            ) from err
        except (FileNotFoundError, ValueError) as err:
            raise DataError(f"{what}: cannot open {str(source)!r} as a Hugging Face dataset ({err})") from err
    if isinstance(source, DatasetDict):
        return dict(source)
    if isinstance(source, Dataset):
        return {WHOLE: source}
    raise TypeError(f"{what}: expected a datasets.Dataset, a DatasetDict or a path/Hub id, got {type(source).__name__}")


@dataclass
class HFTable:
    """One source (triplets, caption pairs or descriptions), checked once: its parts, columns and splits."""

    name: str
    parts: dict[str, Dataset]
    columns: Mapping[str, str]  # column -> kind ("image", "text", "split", "id")
    rows_of: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # split -> (part, row)

    @classmethod
    def open(cls, name: str, source: HFSource, columns: Mapping[str, str]) -> HFTable:
        table = cls(name, open_source(source, name), columns)
        table.check()
        return table

    def check(self) -> None:
        required = [c for c, kind in self.columns.items() if kind in ("image", "text")]
        for part, ds in self.parts.items():
            where = part_name(self.name, part)
            unknown = sorted(set(ds.column_names) - set(self.columns))
            if unknown:
                raise AnnotationError(
                    f"{where}: unknown column(s) {unknown}; expected {required} and optionally "
                    f"{sorted(set(self.columns) - set(required))} (drop others with dataset.remove_columns)"
                )
            missing = [c for c in required if c not in ds.column_names]
            if missing:
                raise AnnotationError(f"{where}: missing column(s) {missing} (has {ds.column_names})")
            for column, kind in self.columns.items():
                if kind == "image" and not isinstance(ds.features[column], datasets.Image):
                    raise AnnotationError(
                        f"{where}: column {column!r} is {ds.features[column]}, not an Image feature; cast it with "
                        f"dataset.cast_column({column!r}, datasets.Image())"
                    )
            if part != WHOLE:
                if part not in SPLIT_KEYS:
                    raise AnnotationError(f"{self.name}: split {part!r} is not one of {sorted(SPLIT_KEYS)}")
                if "split" in ds.column_names:
                    raise AnnotationError(
                        f"{where}: a 'split' column in a DatasetDict, whose keys are already the splits; drop one"
                    )
        self.rows_of = {split: [] for split in SPLITS}
        for part, ds in self.parts.items():
            if part != WHOLE:
                self.rows_of[SPLIT_KEYS[part]].extend((part, i) for i in range(len(ds)))
                continue
            values = ds["split"] if "split" in ds.column_names else [None] * len(ds)
            for i, value in enumerate(values):
                if value is None:
                    value = "train"
                if value not in SPLITS:
                    raise AnnotationError(f"{RowCell(self.name, part, i, 'split').describe()}: {value!r} is not one of {list(SPLITS)}")
                self.rows_of[value].append((part, i))
        if not any(len(ds) for ds in self.parts.values()):
            raise AnnotationError(f"{self.name}: no rows")

    def rows(self, split: str) -> list[tuple[str, int]]:
        """``(part, row)`` of ``split``; "test" without rows is "val", with a warning (as the JSONL readers)."""
        rows = self.rows_of[split]
        if not rows and split == "test" and self.rows_of["val"]:
            log.warning("%s: no rows of split 'test'; evaluating 'test' on its %d 'val' rows", self.name, len(self.rows_of["val"]))
            rows = self.rows_of["val"]
        if not rows:
            raise MissingSplitError(f"{self.name}: no rows of split {split!r} (rows without a split are 'train')")
        return rows


# ---------------------------------------------------------------------------------------------- datamodule
class HFTripletDataModule(CTIIRDataModule):
    """Hugging Face datasets for the whole progressive pipeline (see the module docstring for the columns).

    Args:
        triplets: the composed triplets (Stage III, Stage II image->image, evaluation): a ``Dataset``, a
            ``DatasetDict``, a ``save_to_disk`` folder, or a Hub id / ``load_dataset`` path.
        caption_pairs: image-caption pairs for Stage I.
        descriptions: image-description pairs for Stage II text->image.
        name: the protocol name in metric keys (``val/<name>/R@10``) and messages.
        exclude_reference: remove each query's reference from its ranking.
        **kwargs: ``CTIIRDataModule``'s arguments.

    Evaluation (protocol ``name``): the split's triplets are the queries; the gallery is the de-duplicated
    union of their references and targets (first seen first); R@1/5/10/50, headline R@1/R@10/R@50.
    """

    def __init__(
        self,
        triplets: HFSource | None = None,
        caption_pairs: HFSource | None = None,
        descriptions: HFSource | None = None,
        name: str = "hf",
        exclude_reference: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if triplets is None and caption_pairs is None and descriptions is None:
            raise ValueError("HFTripletDataModule needs at least one of triplets, caption_pairs or descriptions")
        self.sources_given: dict[str, HFSource | None] = {
            "triplets": triplets, "caption_pairs": caption_pairs, "descriptions": descriptions,
        }
        self.name = name
        self.exclude_reference = exclude_reference
        self._tables: dict[str, HFTable] = {}
        self._records: dict[tuple[str, str], list[Any]] = {}
        self._columns: dict[tuple[str, str, str], Dataset] = {}
        self._empty: set[Path] = set()

    # ------------------------------------------------------------------ tables
    def prepare_data(self) -> None:
        """Open every source once (downloads a Hub dataset on one process per node, before ``setup``)."""
        for name in self.sources_given:
            if self.sources_given[name] is not None:
                self.table(name)

    def table(self, name: str) -> HFTable:
        if name not in self._tables:
            source = self.sources_given[name]
            if source is None:
                raise NotImplementedError(f"HFTripletDataModule: set {name} (a datasets.Dataset, a save_to_disk folder or a Hub id)")
            self._tables[name] = HFTable.open(name, source, TRIPLET_COLUMNS if name == "triplets" else PAIR_COLUMNS)
        return self._tables[name]

    def _image_ids(self, table: HFTable, part: str, rows: Sequence[int], column: str) -> list[str]:
        """Each row's image id: its id column, else the hash of the image's encoded bytes. Empty cells are
        remembered (``image_present`` says so) and get an id of their own."""
        ds = table.parts[part]
        id_column = ID_COLUMN[column]
        if id_column in ds.column_names:
            ids = ds.select(rows)[id_column]
            out = []
            for row, value in zip(rows, ids, strict=True):
                if not isinstance(value, (str, int)) or isinstance(value, bool) or value == "":
                    raise AnnotationError(f"{RowCell(table.name, part, row, id_column).describe()}: bad id {value!r:.60}")
                out.append(str(value))
            return out
        raw = ds.select(rows).select_columns([column]).cast_column(column, datasets.Image(decode=False))
        out = []
        for row, cell in zip(rows, raw[column], strict=True):
            where = RowCell(table.name, part, row, column)
            data = None
            if cell is not None:
                data = cell.get("bytes")
                if data is None and cell.get("path"):
                    try:
                        data = Path(cell["path"]).read_bytes()
                    except OSError as err:
                        raise DataError(f"{where.describe()}: cannot read the image file {cell['path']} ({err})") from err
            if data is None:
                self._empty.add(row_path(table.name, part, row, column))
                out.append(f"empty:{table.name}/{part}/{row}/{column}")
            else:
                out.append(hashlib.sha1(data).hexdigest()[:16])
        return out

    def _texts(self, table: HFTable, part: str, rows: Sequence[int], allow_list: bool) -> list[tuple[str, ...]]:
        out = []
        for row, value in zip(rows, table.parts[part].select(rows)["text"], strict=True):
            where = RowCell(table.name, part, row, "text").describe()
            captions = value if isinstance(value, list) and allow_list else [value]
            if not 1 <= len(captions) <= 2:
                raise AnnotationError(f"{where}: must hold one or two captions, got {len(captions)}")
            for caption in captions:
                if not isinstance(caption, str):
                    raise AnnotationError(f"{where}: expected a string, got {type(caption).__name__} {caption!r:.60}")
                if not caption.strip():
                    raise AnnotationError(f"{where}: empty text")
            out.append(tuple(captions))
        return out

    def _by_part(self, name: str, split: Split) -> list[tuple[str, list[int]]]:
        grouped: dict[str, list[int]] = {}
        for part, row in self.table(name).rows(split):
            grouped.setdefault(part, []).append(row)
        return list(grouped.items())

    # ------------------------------------------------------------------ sources
    def triplets(self, split: Split) -> list[Triplet]:
        key = ("triplets", split)
        if key not in self._records:
            table = self.table("triplets")
            records: list[Triplet] = []
            for part, rows in self._by_part("triplets", split):
                texts = self._texts(table, part, rows, allow_list=True)
                refs = self._image_ids(table, part, rows, "reference")
                targets = self._image_ids(table, part, rows, "target")
                for row, captions, ref, target in zip(rows, texts, refs, targets, strict=True):
                    records.append(Triplet(
                        row_path("triplets", part, row, "reference"), row_path("triplets", part, row, "target"),
                        captions, ref, target, source=row_name("triplets", part, row),
                    ))
            self._records[key] = records
        return self._records[key]

    def _pairs(self, name: str, split: Split) -> list[ImageText]:
        key = (name, split)
        if key not in self._records:
            table = self.table(name)
            records: list[ImageText] = []
            for part, rows in self._by_part(name, split):
                texts = self._texts(table, part, rows, allow_list=False)
                ids = self._image_ids(table, part, rows, "image")
                for row, (text,), image_id in zip(rows, texts, ids, strict=True):
                    records.append(
                        ImageText(row_path(name, part, row, "image"), text, image_id, source=row_name(name, part, row))
                    )
            self._records[key] = records
        return self._records[key]

    def caption_pairs(self, split: Split) -> list[ImageText]:
        return self._pairs("caption_pairs", split)

    def description_pairs(self, split: Split) -> list[ImageText]:
        return self._pairs("descriptions", split)

    def composed_sources(self, split: Split) -> list[ComposedSource]:
        triplets = self.triplets(split)
        gallery: dict[str, GalleryImage] = {}  # first seen first; ``source`` is the row that lists it
        for t in triplets:
            gallery.setdefault(t.reference_id, GalleryImage(t.reference_id, t.reference, t.source))
            gallery.setdefault(t.target_id, GalleryImage(t.target_id, t.target, t.source))
        protocol = ProtocolSpec(self.name, (1, 5, 10, 50), ("R@1", "R@10", "R@50"), self.exclude_reference)
        return [ComposedSource(protocol, None, triplet_queries(triplets), list(gallery.values()))]

    # ------------------------------------------------------------------ images: decoded from the rows
    def image_present(self, path: Path) -> bool:
        if parse_row_path(path) is None:
            return super().image_present(path)
        return Path(path) not in self._empty

    def load_image(self, path: Path, context: str) -> Any:
        cell = parse_row_path(path)
        if cell is None:
            return super().load_image(path, context)
        key = (cell.table, cell.part, cell.column)
        if key not in self._columns:  # one column: reading a row does not decode the row's other images
            self._columns[key] = self.table(cell.table).parts[cell.part].select_columns([cell.column])
        where = f"{cell.describe()}" + (f" ({context})" if context else "")
        try:
            image = self._columns[key][cell.row][cell.column]
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            raise DataError(f"unreadable or corrupt image in {where}: {err}") from err
        if image is None:
            raise DataError(f"missing image in {where}")
        if not isinstance(image, PILImage.Image):
            raise DataError(f"{where}: expected an image, got {type(image).__name__}")
        try:
            return to_rgb(image)  # as a file's image becomes RGB: 16-bit scaled, transparency over white
        except ValueError as err:
            raise DataError(f"{where}: {err}") from err
