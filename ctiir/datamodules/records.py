"""Plain records that every datamodule produces from its annotation files.

A datamodule's job is to turn a dataset's own files into these records (with validation and clear errors);
``CTIIRDataModule`` turns records into tensors and loaders the same way for every dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ImageText:
    """An image with a caption: Stage I pairs and Stage II text->image pairs. ``source`` locates it."""

    image: Path
    text: str
    image_id: str
    source: str = ""


@dataclass(frozen=True)
class ImagePair:
    """Two related images: Stage II image->image pairs (a triplet with its text dropped)."""

    a: Path
    b: Path
    a_id: str
    b_id: str
    source: str = ""


@dataclass(frozen=True)
class Triplet:
    """A composed-retrieval training triplet. ``captions`` holds one or more relative captions."""

    reference: Path
    target: Path
    captions: tuple[str, ...]
    reference_id: str
    target_id: str
    category: str | None = None
    source: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)
