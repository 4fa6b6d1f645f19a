"""Custom data: your own catalogue as JSONL / JSON / CSV files, for every stage of the progressive pipeline.

Two file kinds, each one row per record (paths relative to ``root``, or absolute):

- image-text pairs (Stage I captions, Stage II product descriptions): columns ``image``, ``text``, optional
  ``split`` (``train`` / ``val`` / ``test``; a row without one is ``train``) and optional ``id`` (default:
  the image path as written, normalised);
- triplets (Stage III and the composed evaluation): columns ``reference``, ``target``, ``text`` (a string;
  in JSON files also a list of one or two strings, combined like FashionIQ's two captions), optional
  ``split``.

The readers are strict because a catalogue is usually hand-made: an unknown column (a typo such as
``spilt`` would otherwise put every row in ``train``), a missing or empty value, a non-string value or a
path that climbs out of ``root`` with ``..`` is an ``AnnotationError`` naming the file and the row. They use
the standard library's ``json`` and ``csv`` parsers directly (not ``datasets``) so that every error can
name its line, nothing is cached next to the user's data and CSV values keep their text (``007.jpg`` stays
``007.jpg``).

This module also holds the helper that turns gallery images and composed queries into a ``RetrievalTask``
(with ``on_missing`` applied); the Shoes and CIRR datamodules use it too.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import posixpath
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ctiir.datamodules.annotations import read_json
from ctiir.datamodules.base import CTIIRDataModule, Split
from ctiir.datamodules.errors import AnnotationError, DataError
from ctiir.datamodules.images import OnMissing, filter_missing, load_rgb
from ctiir.datamodules.records import ImageText, Triplet
from ctiir.datamodules.tasks import ListDataset, RetrievalTask
from ctiir.datamodules.text import TextMode, compose_query_text
from ctiir.datamodules.transforms import Preprocess

log = logging.getLogger(__name__)
R = TypeVar("R")

SPLITS = ("train", "val", "test")
PAIR_COLUMNS = ("image", "text", "split", "id")
TRIPLET_COLUMNS = ("reference", "target", "text", "split")
TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")


class MissingSplitError(DataError, NotImplementedError):
    """A file has no rows of the requested split.

    It is also a ``NotImplementedError`` so that ``CTIIRDataModule.val_dataloader`` treats it like a
    dataset without that split (it then computes the validation loss on a training slice).
    """


# ---------------------------------------------------------------------------------------------- file access
def resolve_data_file(path: str | Path, root: str | Path) -> Path:
    """An annotation file given relative to ``root`` (tried first) or to the working directory, or absolute."""
    candidate = Path(path)
    if candidate.is_absolute():
        if not candidate.is_file():
            raise AnnotationError(f"{candidate}: annotation file not found")
        return candidate
    tried = [Path(root) / candidate, candidate]
    for option in tried:
        if option.is_file():
            return option
    raise AnnotationError(f"{path}: annotation file not found (tried {tried[0]} and {tried[1].resolve()})")


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{path}: not UTF-8 text ({err})") from err
    except OSError as err:
        raise AnnotationError(f"{path}: cannot read ({err})") from err


def read_json_file(path: str | Path) -> Any:
    """``annotations.read_json``, with the two ``json`` failures it lets through (a huge integer literal's
    ``ValueError``, absurd nesting's ``RecursionError``) also turned into an ``AnnotationError``."""
    try:
        return read_json(path)
    except AnnotationError:
        raise
    except (ValueError, RecursionError) as err:
        raise AnnotationError(f"{path}: unreadable JSON ({str(err)[:80]})") from err


def iter_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, row)`` for each record of a JSONL, JSON (array of objects), CSV or TSV file.

    ``where`` locates the row for error messages: ``"FILE line N"`` (JSONL), ``"FILE entry N"`` (JSON, 0-based)
    or ``"FILE row N (line L)"`` (CSV/TSV, data rows counted from 1 after the header).
    """
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise AnnotationError(f"{path}: unsupported file type {suffix!r}; expected one of {', '.join(TABLE_SUFFIXES)}")
    text = _read_text(path)
    if suffix == ".jsonl":
        # split on "\n" only: str.splitlines would also split on U+2028 etc., which JSON strings may hold
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise AnnotationError(f"{where}: invalid or truncated JSON at column {err.colno}: {err.msg}") from err
            except (ValueError, RecursionError) as err:  # a huge integer literal, or absurd nesting
                raise AnnotationError(f"{where}: unreadable JSON ({str(err)[:80]})") from err
            if not isinstance(row, dict):
                raise AnnotationError(f"{where}: expected a JSON object, got {type(row).__name__}")
            yield where, row
    elif suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise AnnotationError(
                f"{path}: invalid or truncated JSON at line {err.lineno} column {err.colno}: {err.msg}"
            ) from err
        except (ValueError, RecursionError) as err:  # a huge integer literal, or absurd nesting
            raise AnnotationError(f"{path}: unreadable JSON ({str(err)[:80]})") from err
        if not isinstance(rows, list):
            raise AnnotationError(f"{path}: expected a JSON array of objects, got {type(rows).__name__}")
        for index, row in enumerate(rows):
            where = f"{path} entry {index}"
            if not isinstance(row, dict):
                raise AnnotationError(f"{where}: expected a JSON object, got {type(row).__name__}")
            yield where, row
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ",", strict=True)
        try:
            header = reader.fieldnames
            if not header:
                raise AnnotationError(f"{path}: empty file (expected a header row)")
            duplicated = sorted({h for h in header if header.count(h) > 1})
            if duplicated:
                raise AnnotationError(f"{path}: duplicate column(s) {duplicated} in the header")
            for number, row in enumerate(reader, start=1):
                where = f"{path} row {number} (line {reader.line_num})"
                if None in row:
                    raise AnnotationError(f"{where}: more values than header columns ({row[None]!r:.60})")
                yield where, {k: v for k, v in row.items() if v is not None}
        except csv.Error as err:
            raise AnnotationError(f"{path} line {reader.line_num}: malformed CSV ({err})") from err


# ---------------------------------------------------------------------------------------------- value checks
def _check_columns(row: dict[str, Any], allowed: Sequence[str], where: str) -> None:
    unknown = sorted(str(k) for k in row if k not in allowed)
    if unknown:
        raise AnnotationError(f"{where}: unknown column(s) {unknown}; expected only {list(allowed)}")


def _string(row: dict[str, Any], key: str, where: str, *, required: bool) -> str | None:
    """``row[key]`` as a non-blank string; ``None`` when absent/null/empty and not ``required``."""
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise AnnotationError(f"{where}: {'missing' if key not in row else 'empty'} {key!r}")
        return None
    if not isinstance(value, str):
        raise AnnotationError(f"{where}: {key!r} must be a string, got {type(value).__name__} {value!r:.60}")
    return value


def check_split(row: dict[str, Any], where: str) -> str:
    """The row's split: ``train`` when absent; anything but train/val/test is an error (a typo is not a split)."""
    value = _string(row, "split", where, required=False)
    if value is None:
        return "train"
    if value not in SPLITS:
        raise AnnotationError(f"{where}: split {value!r} is not one of {list(SPLITS)}")
    return value


def check_image_path(value: str, root: Path, where: str, key: str) -> tuple[Path, str]:
    """(file path, image id) of an image path written relative to ``root`` or absolute.

    A relative path may not contain ``..`` (it must stay inside ``root``). The id is the path as written,
    normalised (``./a//b.jpg`` -> ``a/b.jpg``), so one image written two ways is still one gallery entry.
    """
    if "\x00" in value:
        raise AnnotationError(f"{where}: {key} {value!r:.60} contains a NUL character")
    normalised = value.replace("\\", "/")
    if posixpath.isabs(normalised) or Path(value).is_absolute():
        image_id = posixpath.normpath(normalised)
        return Path(value), image_id
    if ".." in normalised.split("/"):
        raise AnnotationError(f"{where}: {key} {value!r:.80} climbs out of the image root with '..'")
    image_id = posixpath.normpath(normalised)
    if image_id in ("", "."):
        raise AnnotationError(f"{where}: {key} {value!r} is not a file path")
    return root / image_id, image_id


def _captions(row: dict[str, Any], where: str, allow_list: bool) -> tuple[str, ...]:
    value = row.get("text")
    if isinstance(value, list):
        if not allow_list:
            raise AnnotationError(f"{where}: 'text' must be a string")
        if not 1 <= len(value) <= 2:
            raise AnnotationError(f"{where}: 'text' must hold one or two captions, got {len(value)}")
        for i, caption in enumerate(value):
            if not isinstance(caption, str) or isinstance(caption, bool):
                raise AnnotationError(
                    f"{where}: 'text'[{i}] must be a string, got {type(caption).__name__} {caption!r:.60}"
                )
            if not caption.strip():
                raise AnnotationError(f"{where}: 'text'[{i}] is empty")
        return tuple(value)
    text = _string(row, "text", where, required=True)
    assert text is not None
    return (text,)


# ---------------------------------------------------------------------------------------------- readers
def _image(row: dict[str, Any], key: str, root: Path, where: str) -> tuple[Path, str]:
    value = _string(row, key, where, required=True)
    assert value is not None
    return check_image_path(value, root, where, key)


def _read_table(
    path: str | Path,
    root: str | Path,
    split: str | None,
    columns: Sequence[str],
    parse: Callable[[dict[str, Any], str, Path, bool], R],
) -> list[R]:
    """Every row checked (columns, values, split) and parsed; those of ``split`` (or all) returned."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)} or None, got {split!r}")
    file = resolve_data_file(path, root)
    is_json = file.suffix.lower() in (".jsonl", ".json")
    out: list[R] = []
    rows = 0
    for where, row in iter_rows(file):
        rows += 1
        _check_columns(row, columns, where)
        record = parse(row, where, Path(root), is_json)
        if check_split(row, where) == split or split is None:
            out.append(record)
    if rows == 0:
        raise AnnotationError(f"{file}: no rows")
    return out


def _pair(row: dict[str, Any], where: str, root: Path, is_json: bool) -> ImageText:
    image_path, image_id = _image(row, "image", root, where)
    (text,) = _captions(row, where, allow_list=False)
    row_id = _string(row, "id", where, required=False)
    return ImageText(image_path, text, row_id if row_id is not None else image_id, source=where)


def _triplet(row: dict[str, Any], where: str, root: Path, is_json: bool) -> Triplet:
    ref_path, ref_id = _image(row, "reference", root, where)
    tgt_path, tgt_id = _image(row, "target", root, where)
    return Triplet(ref_path, tgt_path, _captions(row, where, allow_list=is_json), ref_id, tgt_id, source=where)


def read_image_text_pairs(path: str | Path, root: str | Path, split: str | None = None) -> list[ImageText]:
    """Image-caption rows of a JSONL/JSON/CSV/TSV file, optionally only those of ``split``.

    ``path`` is relative to ``root`` (tried first) or to the working directory, or absolute. Every row is
    validated, whatever its split: each defect is an ``AnnotationError`` naming the file and the row; a file
    without rows is one too.
    """
    return _read_table(path, root, split, PAIR_COLUMNS, _pair)


def read_triplets(path: str | Path, root: str | Path, split: str | None = None) -> list[Triplet]:
    """Composed-retrieval triplets (``reference``, ``target``, ``text``) of a JSONL/JSON/CSV/TSV file.

    Image ids are the normalised paths as written. Same path rules and errors as ``read_image_text_pairs``.
    """
    return _read_table(path, root, split, TRIPLET_COLUMNS, _triplet)


def read_gallery_file(path: str | Path, root: str | Path) -> list[tuple[str, Path]]:
    """Extra gallery images: a text file with one image path per line (blank lines ignored), as (id, path)."""
    file = resolve_data_file(path, root)
    out: list[tuple[str, Path]] = []
    for number, line in enumerate(_read_text(file).split("\n"), start=1):
        value = line.strip()
        if value:
            image_path, image_id = check_image_path(value, Path(root), f"{file} line {number}", "image")
            out.append((image_id, image_path))
    if not out:
        raise AnnotationError(f"{file}: no image paths")
    return out


def split_records(reader: Callable[..., list[R]], path: str | Path, root: str | Path, split: str) -> list[R]:
    """``reader(path, root, split)``, never empty: a split without rows is a ``MissingSplitError``.

    "test" without rows falls back to the "val" rows, with a warning: like FashionIQ, Shoes and CIRR, whose
    test evaluation runs on the validation annotations, a catalogue with train and val rows can run the
    whole pipeline (which tests each stage at its end).
    """
    records = reader(path, root, split)
    if not records and split == "test":
        records = reader(path, root, "val")
        if records:
            log.warning("%s: no rows with split='test'; evaluating 'test' on its %d 'val' rows", path, len(records))
    if not records:
        raise MissingSplitError(f"{path}: no rows with split={split!r} (rows without a split are 'train')")
    return records


# ---------------------------------------------------------------------------------------------- composed tasks
@dataclass(frozen=True)
class ComposedQuery:
    """One composed query before it becomes tensors. ``target_id`` is ``None`` where targets are withheld."""

    name: str
    reference_id: str
    reference: Path
    text: str | list[str]
    target_id: str | None
    members: tuple[str, ...] = ()
    source: str = ""


def build_composed_task(
    dm: CTIIRDataModule,
    *,
    protocol: str,
    split: str,
    gallery: Sequence[tuple[str, Path]],
    queries: Sequence[ComposedQuery],
    ks: tuple[int, ...],
    headline: tuple[str, ...],
    exclude_reference: bool,
    subset: str | None = None,
    subset_ks: tuple[int, ...] = (),
    limit: bool = True,
) -> RetrievalTask:
    """A ``RetrievalTask`` from gallery ``(id, path)`` entries and composed queries.

    Missing images follow ``dm.on_missing``: an error naming the file, split and entry, or (``"skip"``) the
    gallery item / query is removed, and a query whose target was removed is removed too; both counts are
    logged and kept in ``task.extra``. A target that is not in the gallery at all is an annotation error.
    A query whose reference *is* its target gets ``reference_id = -1``: excluding the reference would remove
    the answer, so such a query keeps it (counted in ``extra["reference_is_target"]``).
    ``limit`` applies ``dm.max_val_queries`` (off for submissions, which need every query).
    """
    tf = dm._require_transforms()[1]
    what = f"{protocol} {split}"
    seen: set[str] = set()
    for name, _ in gallery:
        if name in seen:
            raise DataError(f"{what}: the gallery lists image {name!r} twice")
        seen.add(name)
    kept = filter_missing(
        list(gallery), lambda g: [g[1]], on_missing=dm.on_missing, what=f"{what} gallery", describe=lambda g: g[0]
    )
    removed = {name for name, _ in gallery} - {name for name, _ in kept}
    names = [name for name, _ in kept]
    index = {name: i for i, name in enumerate(names)}

    usable: list[ComposedQuery] = []
    lost_target = 0
    for q in queries:
        for image_id in ((q.target_id,) if q.target_id is not None else ()) + q.members:
            if image_id not in index and image_id not in removed:
                raise DataError(f"{q.source or q.name}: image {image_id!r} of this {what} query is not in the gallery")
        if q.target_id is not None and q.target_id in removed:
            lost_target += 1
            continue
        usable.append(q)
    usable = filter_missing(
        usable,
        lambda q: [q.reference],
        on_missing=dm.on_missing,
        what=f"{what} query references",
        describe=lambda q: q.source or q.name,
    )
    skipped = len(queries) - len(usable)
    if lost_target:
        log.warning("%s: removed %d queries whose target image is missing (on_missing='skip')", what, lost_target)
    if limit and dm.max_val_queries is not None:
        usable = usable[: dm.max_val_queries]

    self_refs = 0
    rows: list[dict[str, Any]] = []
    width = max((len(q.members) for q in usable), default=0)
    for q in usable:
        target = index[q.target_id] if q.target_id is not None else -1
        reference = index.get(q.reference_id, -1)
        if q.target_id is not None and q.reference_id == q.target_id:
            reference, self_refs = -1, self_refs + 1
        row: dict[str, Any] = {"target_id": target, "reference_id": reference}
        if width:
            members = [index[m] for m in q.members if m in index]
            row["member_ids"] = members + [-1] * (width - len(members))
        rows.append(row)

    def make(q: ComposedQuery, i: int) -> dict[str, Any]:
        return {"query_id": i, **rows[i], "image": tf(load_rgb(q.reference, q.source or q.name)), "text": q.text}

    extra = {
        "split": split,
        "skipped_gallery": len(removed),
        "skipped_queries": skipped,
        "reference_is_target": self_refs,
        "references": [q.reference_id for q in usable],
        "members": [q.members for q in usable],
    }
    return RetrievalTask(
        protocol,
        subset,
        dm.gallery_dataset(names, [p for _, p in kept], what),
        ListDataset(usable, make),
        names,
        [q.name for q in usable],
        ks=ks,
        subset_ks=subset_ks,
        exclude_reference=exclude_reference,
        headline=headline,
        extra=extra,
    )


def triplet_queries(triplets: Sequence[Triplet], mode: TextMode = "clip4cir") -> list[ComposedQuery]:
    """Composed queries from triplets (query name = the triplet's source)."""
    return [
        ComposedQuery(
            t.source or f"{t.reference_id}->{t.target_id}",
            t.reference_id,
            t.reference,
            compose_query_text(t.captions, mode),
            t.target_id,
            source=t.source,
        )
        for t in triplets
    ]


# ---------------------------------------------------------------------------------------------- datamodule
class CustomDataModule(CTIIRDataModule):
    """Your own catalogue, for the whole progressive pipeline (Stage I, II and III, and evaluation).

    Args:
        root: the image root; relative paths in the files are relative to it. Relative file arguments are
            looked up under ``root`` first, then in the working directory.
        triplets: composed triplets file (Stage III training, Stage II image->image pairs, evaluation).
        caption_pairs: image-caption file for Stage I (open-domain image-text training).
        descriptions: image-description file for Stage II text->image training.
        gallery: optional text file of extra gallery image paths (one per line), added to the evaluation
            gallery after the references and targets of the split's triplets.
        exclude_reference: remove each query's reference from its ranking (items below move up one place).
        The remaining arguments are ``CTIIRDataModule``'s.

    Evaluation (protocol ``"custom"``): queries = the split's triplets; gallery = the de-duplicated union of
    their references and targets (first-seen order) plus ``gallery``; R@1/5/10/50, headline R@1/R@10/R@50.
    "test" uses the rows marked ``test`` (the ``val`` rows, with a warning, when there are none); a split
    without rows is a ``MissingSplitError``.
    """

    name = "custom"

    def __init__(
        self,
        root: str,
        triplets: str | None = None,
        caption_pairs: str | None = None,
        descriptions: str | None = None,
        gallery: str | None = None,
        exclude_reference: bool = True,
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
        if not (triplets or caption_pairs or descriptions):
            raise ValueError("CustomDataModule needs at least one of triplets, caption_pairs or descriptions")
        self.root = Path(root)
        self.triplets_file = triplets
        self.caption_pairs_file = caption_pairs
        self.descriptions_file = descriptions
        self.gallery_file = gallery
        self.exclude_reference = exclude_reference

    def caption_pairs(self, split: Split) -> list[ImageText]:
        if self.caption_pairs_file is None:
            raise NotImplementedError(
                "CustomDataModule: set caption_pairs (an image-caption JSONL/CSV file) for Stage I"
            )
        return split_records(read_image_text_pairs, self.caption_pairs_file, self.root, split)

    def description_pairs(self, split: Split) -> list[ImageText]:
        if self.descriptions_file is None:
            raise NotImplementedError(
                "CustomDataModule: set descriptions (an image-description JSONL/CSV file) for Stage II"
            )
        return split_records(read_image_text_pairs, self.descriptions_file, self.root, split)

    def triplets(self, split: Split) -> list[Triplet]:
        if self.triplets_file is None:
            raise NotImplementedError("CustomDataModule: set triplets (a reference/target/text JSONL/CSV file)")
        return split_records(read_triplets, self.triplets_file, self.root, split)

    def evaluation_gallery(self, triplets: Sequence[Triplet]) -> list[tuple[str, Path]]:
        """(id, path) of the references and targets of ``triplets`` (first seen first), then the gallery file's."""
        entries: dict[str, Path] = {}
        for t in triplets:
            entries.setdefault(t.reference_id, t.reference)
            entries.setdefault(t.target_id, t.target)
        if self.gallery_file is not None:
            for image_id, path in read_gallery_file(self.gallery_file, self.root):
                entries.setdefault(image_id, path)
        return list(entries.items())

    def composed_tasks(self, split: Split) -> list[RetrievalTask]:
        triplets = self.triplets(split)
        return [
            build_composed_task(
                self,
                protocol="custom",
                split=split,
                gallery=self.evaluation_gallery(triplets),
                queries=triplet_queries(triplets),
                ks=(1, 5, 10, 50),
                headline=("R@1", "R@10", "R@50"),
                exclude_reference=self.exclude_reference,
            )
        ]
