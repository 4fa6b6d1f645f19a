"""Readers for annotation tables: one record per row, in JSONL, JSON (an array of objects), CSV or TSV.

Two row kinds (paths relative to ``root``, or absolute):

- image-text pairs (Stage I captions, Stage II product descriptions): columns ``image``, ``text``, optional
  ``split`` (``train`` / ``val`` / ``test``; a row without one is ``train``) and optional ``id`` (default:
  the image path as written, normalised);
- triplets (Stage III and the composed evaluation): columns ``reference``, ``target``, ``text`` (a string;
  in JSON files also a list of one or two strings, combined like FashionIQ's two captions), optional
  ``split``.

The readers are strict because such tables are usually hand-made: an unknown column (a typo such as
``spilt`` would otherwise put every row in ``train``), a missing or empty value, a non-string value or a
path that climbs out of ``root`` with ``..`` is an ``AnnotationError`` naming the file and the row. They use
the standard library's ``json`` and ``csv`` parsers directly (not ``datasets``) so that every error can
name its line, nothing is cached next to the user's data and CSV values keep their text (``007.jpg`` stays
``007.jpg``). Custom catalogues use them, and so do the Stage I/II text files of FashionIQ, Shoes and CIRR.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import posixpath
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ctiir.datamodules.errors import AnnotationError, DataError
from ctiir.datamodules.records import ImageText, Triplet

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
