"""Image loading with errors that say which file, split and annotation entry is at fault.

``load_rgb`` is the one place where an image file becomes the RGB picture every transform sees; training,
evaluation, the CIRR submission and ``ctiir check-data`` all go through it, so what check-data passes is
what a run can read. Conversions (docs/robustness.md lists them with the reasons):

- 16-bit grayscale (Pillow modes ``I;16*``, and ``I``, which Pillow uses for 16-bit PNG and TIFF files) is
  scaled to 8 bits (``round(v / 257)``): Pillow's own ``convert("RGB")`` clips it, turning it all white.
  Values outside 0..65535 (a 32-bit ``I`` image) are clipped to that range.
- 32-bit float images (mode ``F``) have no agreed value range: an error, rather than a guess.
- Images with transparency (``RGBA``, ``LA``, ``PA``, a palette with a transparent colour) are composited
  over white, as a viewer shows them; ``convert("RGB")`` would expose whatever colour the transparent pixels
  happen to store (often black).
- Everything else (``L``, ``1``, ``P``, ``CMYK``, ``YCbCr``, ...) goes through Pillow's ``convert("RGB")``;
  CMYK uses Pillow's formula ``R = (255 - C)(255 - K) / 255`` and ignores an embedded ICC profile.

Size limit: an image of more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (Pillow's default, 89,478,485, about
9459 x 9459) is refused before it is decoded, naming the file and its size; Pillow itself only warns up to
twice that and fails beyond. Raise the limit with ``PIL.Image.MAX_IMAGE_PIXELS = N`` (``None``: no limit)
in the process that loads images, before training starts.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from ctiir.datamodules.errors import DataError

log = logging.getLogger(__name__)

OnMissing = Literal["error", "skip"]
R = TypeVar("R")

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
TRANSPARENT_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class ImageError(DataError):
    """An image that cannot be used: ``path`` and ``reason`` (the message adds where it is used)."""

    def __init__(self, path: str | Path, reason: str, context: str = "") -> None:
        self.path, self.reason = Path(path), reason
        where = f" ({context})" if context else ""
        super().__init__(f"{reason}: {path}{where}")


def _too_large(pixels: int, size: str = "") -> str | None:
    """Why an image of ``pixels`` pixels (``size``: "W x H") is refused, or ``None`` within the limit."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None or pixels <= limit:
        return None
    return (
        f"image too large, {size + ' = ' if size else ''}{pixels:,} pixels, over the limit of {int(limit):,} "
        "(raise it with PIL.Image.MAX_IMAGE_PIXELS = N; see docs/robustness.md)"
    )


def _bomb_pixels(err: Exception) -> int:
    """The pixel count in Pillow's ``DecompressionBombError`` ("Image size (N pixels) exceeds ..."), else 0."""
    found = re.search(r"\((\d+) pixels\)", str(err))
    return int(found.group(1)) if found else 0


def refusal(img: Image.Image) -> str | None:
    """Why ``img`` (opened, not yet decoded) is refused: over the pixel limit, or a mode ctiir does not
    convert; ``None`` to go on. Read from the header, so nothing is decoded first."""
    return _too_large(img.size[0] * img.size[1], f"{img.size[0]} x {img.size[1]}") or unsupported(img)


def bomb_refusal(err: Exception) -> str:
    """The refusal for Pillow's ``DecompressionBombError`` (over twice the limit, raised at open)."""
    return _too_large(_bomb_pixels(err)) or f"image too large ({err})"


def unsupported(img: Image.Image) -> str | None:
    """Why ctiir will not convert ``img`` (its mode), or ``None``."""
    if img.mode == "F":
        return "32-bit floating-point image (mode F): its value range is unknown, so it is not guessed; save it as 8-bit"
    return None


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB (see the module docstring for each mode); ``ValueError`` for a mode it cannot read."""
    reason = unsupported(img)
    if reason is not None:
        raise ValueError(reason)
    if img.mode in SIXTEEN_BIT_MODES:
        values = np.clip(np.asarray(img, dtype=np.float64), 0, 65535)
        return Image.fromarray(np.rint(values / 257.0).astype(np.uint8), mode="L").convert("RGB")
    if img.mode in TRANSPARENT_MODES or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def load_rgb(path: str | Path, context: str = "") -> Image.Image:
    """Open an image as RGB. A missing, empty, truncated, corrupt, unreadable or too large file raises
    ``ImageError`` (a ``DataError``) naming it and ``context`` (the split and annotation entry)."""
    try:
        with Image.open(path) as img:
            reason = refusal(img)
            if reason is not None:
                raise ImageError(path, reason, context)
            img.load()
            return to_rgb(img)
    except ImageError:
        raise
    except FileNotFoundError as err:
        raise ImageError(path, "missing image", context) from err
    except Image.DecompressionBombError as err:  # over twice the limit: Pillow refuses at open
        raise ImageError(path, bomb_refusal(err), context) from err
    except UnidentifiedImageError as err:
        empty = Path(path).is_file() and Path(path).stat().st_size == 0
        raise ImageError(path, "empty image file" if empty else "not an image (unknown format)", context) from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(path, f"unreadable or corrupt image ({type(err).__name__}: {err})", context) from err


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
