"""Which images a gallery holds: a folder scanned recursively, or a datamodule's gallery files.

Both give ``GalleryFile`` records (the id, the file, its size and mtime), so the index, ``--update`` and the
image server treat them alike.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from ctiir.datamodules.errors import DataError
from ctiir.datamodules.images import load_rgb
from ctiir.retrieval.errors import RetrievalError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


@dataclass(frozen=True)
class GalleryFile:
    """One gallery item: its id, its file relative to the gallery root, and the file's size and mtime."""

    id: str
    path: str
    size: int
    mtime_ns: int


def stat_file(root: Path, rel: str, gallery_id: str) -> GalleryFile:
    st = (root / rel).stat()
    return GalleryFile(gallery_id, rel, int(st.st_size), int(st.st_mtime_ns))


def scan_folder(root: str | Path) -> list[GalleryFile]:
    """Every jpg/jpeg/png/webp below ``root`` (recursively, hidden folders skipped), sorted by path.

    The id of an image is its path relative to ``root`` with ``/`` separators, the same on every OS.
    """
    root = Path(root)
    if not root.is_dir():
        raise RetrievalError(f"--images: {root} is not a folder")
    found: list[GalleryFile] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith(".") or not name.lower().endswith(IMAGE_SUFFIXES):
                continue
            rel = (Path(folder) / name).relative_to(root).as_posix()
            found.append(stat_file(root, rel, rel))
    found.sort(key=lambda f: f.path)
    return found


def dataset_files(data: Any, task_key: str | None = None) -> tuple[Path, list[GalleryFile]]:
    """``(root, files)`` of a datamodule's composed test galleries (all tasks', or the one named ``task_key``).

    Read from the evaluation protocol (``data.evaluation_sets("test")``: the same galleries that evaluation
    ranks, no image decoded). The ids are the dataset's gallery names (e.g. FashionIQ's ASINs). A name that
    two tasks map to different files is an error, since one id must mean one image.
    """
    evaluations = data.evaluation_sets("test", limit=False)
    if task_key is not None:
        keys = [ev.key for ev in evaluations]
        evaluations = [ev for ev in evaluations if ev.key == task_key]
        if not evaluations:
            raise RetrievalError(f"--task: {task_key!r} is not one of the dataset's test tasks {keys}")
    by_name: dict[str, Path] = {}
    for evaluation in evaluations:
        for image in evaluation.gallery:
            path = Path(image.path).resolve()
            if by_name.setdefault(image.id, path) != path:
                raise RetrievalError(f"gallery id {image.id!r} names two files: {by_name[image.id]} and {path}")
    if not by_name:
        raise RetrievalError("the dataset's test galleries are empty")
    root = Path(os.path.commonpath([str(p.parent) for p in by_name.values()]))
    files = [stat_file(root, p.relative_to(root).as_posix(), name) for name, p in by_name.items() if p.is_file()]
    missing = [str(p) for p in by_name.values() if not p.is_file()]
    if missing:
        raise RetrievalError(f"{len(missing)} gallery images of the dataset are missing, e.g. {missing[0]} (see `ctiir check-data`)")
    return root, files


class ImageFiles(Dataset):
    """``{"gallery_id": row, "image": tensor, "error": ""}`` per file; an unreadable file gives a blank image
    and its error message instead of stopping the whole encoding (the caller reports or refuses them)."""

    def __init__(self, root: Path, files: Sequence[GalleryFile], transform: Callable[[Any], torch.Tensor]) -> None:
        self.root = Path(root)
        self.files = list(files)
        self.transform = transform
        self._blank: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.files)

    def blank(self) -> torch.Tensor:
        if self._blank is None:
            self._blank = torch.zeros_like(self.transform(Image.new("RGB", (32, 32))))
        return self._blank

    def __getitem__(self, row: int) -> dict[str, Any]:
        path = self.root / self.files[row].path
        try:
            image = self.transform(load_rgb(path))
            error = ""
        except DataError as err:
            image, error = self.blank(), str(err)
        return {"gallery_id": row, "image": image, "error": error}
