"""Strict readers for annotation files: every defect is an ``AnnotationError`` naming the file and entry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ctiir.datamodules.errors import AnnotationError


def read_json(path: str | Path) -> Any:
    """Load a JSON file; a missing, unreadable or truncated file is an error that names it."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found")
    try:
        with path.open("rb") as handle:
            return json.loads(handle.read().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{path}: not UTF-8 text ({err})") from err
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path}: invalid or truncated JSON at line {err.lineno} column {err.colno}: {err.msg}") from err
    except (ValueError, RecursionError) as err:  # e.g. an integer of thousands of digits, absurd nesting
        raise AnnotationError(f"{path}: unreadable JSON ({type(err).__name__}: {str(err)[:200]})") from err


def require(entry: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``entry[key]``, checked to exist and to be of ``kind``. ``where`` is e.g. ``"cap.dress.val.json entry 12"``."""
    if not isinstance(entry, dict):
        raise AnnotationError(f"{where}: expected an object, got {type(entry).__name__}")
    if key not in entry:
        raise AnnotationError(f"{where}: missing key {key!r}")
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise AnnotationError(f"{where}: key {key!r} must be {names}, got {type(value).__name__} {value!r:.60}")
    return value


def check_image_id(value: Any, where: str, key: str = "id") -> str:
    """An image id must be a non-empty string that cannot escape the image folder."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise AnnotationError(f"{where}: {key} must be a string, got {type(value).__name__} {value!r:.60}")
    if not value.strip():
        raise AnnotationError(f"{where}: {key} is empty")
    if "/" in value or "\\" in value or ".." in value or "\x00" in value:
        raise AnnotationError(f"{where}: {key} {value!r} contains a path separator or '..'")
    return value


def check_caption(value: Any, where: str, key: str = "caption") -> str:
    """A caption must be a string with some non-blank text."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise AnnotationError(f"{where}: {key} must be a string, got {type(value).__name__} {value!r:.60}")
    if not value.strip():
        raise AnnotationError(f"{where}: {key} is empty")
    return value
