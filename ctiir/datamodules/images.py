"""Image loading with errors that say which file, split and annotation entry is at fault."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, TypeVar

from PIL import Image, UnidentifiedImageError

from ctiir.datamodules.errors import DataError

log = logging.getLogger(__name__)

OnMissing = Literal["error", "skip"]
R = TypeVar("R")


def load_rgb(path: str | Path, context: str = "") -> Image.Image:
    """Open an image as RGB. A missing, unreadable or corrupt file raises ``DataError`` naming it."""
    where = f" ({context})" if context else ""
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except FileNotFoundError as err:
        raise DataError(f"missing image {path}{where}") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"unreadable or corrupt image {path}{where}: {err}") from err


def is_file(path: Path) -> bool:
    """The default presence test: a regular file exists at ``path``."""
    return Path(path).is_file()


def missing_image_error(path: Path, what: str, entry: str) -> DataError:
    """The one message for a missing image: the file, what it belongs to and the annotation entry."""
    return DataError(
        f"missing image {path} in {what}, annotation entry {entry}; "
        "fix the data (see `ctiir check-data`) or pass on_missing='skip'"
    )


def partition_present(
    records: Sequence[R],
    paths: Callable[[R], Sequence[Path]],
    *,
    on_missing: OnMissing,
    what: str,
    describe: Callable[[R], str] = lambda r: getattr(r, "source", "") or repr(r),
    is_present: Callable[[Path], bool] = is_file,
) -> tuple[list[R], int]:
    """``(records whose images are all present, how many were dropped)``.

    ``on_missing="error"`` raises on the first record with a missing image, naming the file, ``what`` (e.g.
    ``"fashioniq dress val queries"``) and the annotation entry; ``"skip"`` drops such records. The caller
    reports the count, so that nothing is dropped silently.
    """
    if on_missing not in ("error", "skip"):
        raise ValueError(f"on_missing must be 'error' or 'skip', got {on_missing!r}")
    kept: list[R] = []
    for record in records:
        missing = [p for p in paths(record) if not is_present(Path(p))]
        if not missing:
            kept.append(record)
        elif on_missing == "error":
            raise missing_image_error(missing[0], what, describe(record))
    return kept, len(records) - len(kept)


def filter_missing(
    records: Sequence[R],
    paths: Callable[[R], Sequence[Path]],
    *,
    on_missing: OnMissing,
    what: str,
    describe: Callable[[R], str] = lambda r: getattr(r, "source", "") or repr(r),
    is_present: Callable[[Path], bool] = is_file,
) -> list[R]:
    """``partition_present`` for training records, logging how many were skipped."""
    kept, skipped = partition_present(
        records, paths, on_missing=on_missing, what=what, describe=describe, is_present=is_present
    )
    if skipped:
        log.warning("%s: skipped %d of %d entries with missing images (on_missing='skip')", what, skipped, len(records))
    return kept
