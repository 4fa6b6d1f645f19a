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


def filter_missing(
    records: Sequence[R],
    paths: Callable[[R], Sequence[Path]],
    *,
    on_missing: OnMissing,
    what: str,
    describe: Callable[[R], str] = lambda r: getattr(r, "source", "") or repr(r),
) -> list[R]:
    """Check that every image a record needs exists.

    ``on_missing="error"`` (the default everywhere) raises on the first record with a missing image, naming
    the file, ``what`` (e.g. ``"fashioniq dress val queries"``) and the annotation entry.
    ``on_missing="skip"`` drops such records and logs how many, so nothing is dropped silently.
    """
    if on_missing not in ("error", "skip"):
        raise ValueError(f"on_missing must be 'error' or 'skip', got {on_missing!r}")
    kept: list[R] = []
    skipped = 0
    for record in records:
        missing = [p for p in paths(record) if not Path(p).is_file()]
        if not missing:
            kept.append(record)
            continue
        if on_missing == "error":
            raise DataError(
                f"missing image {missing[0]} in {what}, annotation entry {describe(record)}; "
                "fix the data (see `ctiir check-data`) or pass on_missing='skip'"
            )
        skipped += 1
    if skipped:
        log.warning("%s: skipped %d of %d entries with missing images (on_missing='skip')", what, skipped, len(records))
    return kept
