"""CIRR (Liu et al. 2021, "Image Retrieval on Real-life Images with Pre-trained Vision-and-Language Models").

Annotation files, under ``annotations_root`` (default ``root``), in the official layout:

- ``captions/cap.rc2.{split}.json``: ``[{"pairid", "reference", "target_hard", "target_soft", "caption",
  "img_set": {"id", "members"}}, ...]``; the test split (``test1`` in the release) has no targets;
- ``image_splits/split.rc2.{split}.json``: ``{name: relative image path}``, relative to ``image_root``
  (default ``root``; the official release keeps images under ``img_raw/``, so point ``image_root`` there).

Protocol (key ``"cirr"``): the gallery is every key of the split file; R@1/5/10/50 on ``target_hard`` with the
reference *removed* from the ranking (items below it move up one place); Rsubset@1/2/3 within the query's
``img_set.members`` (6 images; the reference, one of them, is removed the same way, leaving 5); query items
carry ``member_ids``, the members' gallery positions (``-1``-padded). The headline score is
(R@5 + Rsubset@1) / 2, the leaderboard average. Test targets are withheld: "test" evaluates the val files,
and the real test split goes to the evaluation server through ``submission_task`` and
``ctiir.submission.predict_cirr_submission``.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctiir.datamodules.annotations import check_caption, check_image_id, require
from ctiir.datamodules.base import CTIIRDataModule, Split
from ctiir.datamodules.custom import (
    ComposedQuery,
    build_composed_task,
    read_image_text_pairs,
    read_json_file,
    split_records,
)
from ctiir.datamodules.errors import AnnotationError
from ctiir.datamodules.images import OnMissing
from ctiir.datamodules.records import ImageText, Triplet
from ctiir.datamodules.tasks import RetrievalTask
from ctiir.datamodules.text import TextMode
from ctiir.datamodules.transforms import Preprocess

# The release names its test split "test1"; "test" is accepted too.
FILE_SPLITS: dict[str, tuple[str, ...]] = {"train": ("train",), "val": ("val",), "test": ("test1", "test")}


@dataclass(frozen=True)
class CirrQuery:
    """One caption entry. ``target`` is ``None`` in the test split (withheld)."""

    pairid: int
    reference: str
    target: str | None
    caption: str
    members: tuple[str, ...]
    set_id: int
    source: str


def _file(annotations_root: Path, folder: str, stem: str, split: str) -> Path:
    if split not in FILE_SPLITS:
        raise ValueError(f"CIRR split must be one of {list(FILE_SPLITS)}, got {split!r}")
    options = [annotations_root / folder / f"{stem}.rc2.{name}.json" for name in FILE_SPLITS[split]]
    for path in options:
        if path.is_file():
            return path
    raise AnnotationError(f"CIRR {split} annotation file not found: {' or '.join(str(p) for p in options)}")


def read_cirr_split(annotations_root: str | Path, split: str) -> dict[str, str]:
    """``image_splits/split.rc2.{split}.json``: image name -> image path relative to the image root."""
    path = _file(Path(annotations_root), "image_splits", "split", split)
    data = read_json_file(path)
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected a JSON object of name -> path, got {type(data).__name__}")
    if not data:
        raise AnnotationError(f"{path}: no images")
    out: dict[str, str] = {}
    for name, rel in data.items():
        where = f"{path} entry {name!r:.60}"
        check_image_id(name, where, key="image name")
        if isinstance(rel, bool) or not isinstance(rel, str) or not rel.strip():
            raise AnnotationError(f"{where}: the image path must be a non-empty string, got {rel!r:.60}")
        normalised = rel.replace("\\", "/")
        if "\x00" in rel or posixpath.isabs(normalised) or ".." in normalised.split("/"):
            raise AnnotationError(
                f"{where}: image path {rel!r:.80} must stay inside the image root (no '..', not absolute)"
            )
        if posixpath.normpath(normalised) in ("", "."):
            raise AnnotationError(f"{where}: image path {rel!r} is not a file path")
        out[name] = posixpath.normpath(normalised)
    return out


def _members(entry: Any, where: str) -> tuple[tuple[str, ...], int]:
    img_set = require(entry, "img_set", dict, where)
    set_id = require(img_set, "id", int, f"{where} img_set")
    members = require(img_set, "members", list, f"{where} img_set")
    if not members:
        raise AnnotationError(f"{where}: img_set.members is empty")
    names = tuple(check_image_id(m, where, key="img_set.members entry") for m in members)
    if len(set(names)) != len(names):
        raise AnnotationError(f"{where}: img_set.members lists an image twice: {list(names)}")
    return names, set_id


def read_cirr_captions(annotations_root: str | Path, split: str) -> list[CirrQuery]:
    """``captions/cap.rc2.{split}.json``, validated: types, unique pairids, targets among the members.

    ``target_hard`` is required except in the test split; ``target_soft``, when present, must be an object.
    """
    path = _file(Path(annotations_root), "captions", "cap", split)
    data = read_json_file(path)
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: expected a JSON array of entries, got {type(data).__name__}")
    if not data:
        raise AnnotationError(f"{path}: no entries")
    seen: dict[int, int] = {}
    out: list[CirrQuery] = []
    for i, entry in enumerate(data):
        where = f"{path} entry {i}"
        pairid = require(entry, "pairid", int, where)
        if pairid in seen:
            raise AnnotationError(f"{where}: pairid {pairid} repeats entry {seen[pairid]}")
        seen[pairid] = i
        reference = check_image_id(require(entry, "reference", str, where), where, "reference")
        caption = check_caption(require(entry, "caption", str, where), where)
        target: str | None = None
        if split != "test" or "target_hard" in entry:
            target = check_image_id(require(entry, "target_hard", str, where), where, "target_hard")
        if "target_soft" in entry and not isinstance(entry["target_soft"], dict):
            raise AnnotationError(f"{where}: target_soft must be an object, got {type(entry['target_soft']).__name__}")
        members, set_id = _members(entry, where)
        if target is not None and target not in members:
            raise AnnotationError(f"{where}: target_hard {target!r} is not among img_set.members")
        out.append(CirrQuery(pairid, reference, target, caption, members, set_id, where))
    return out


def cirr_protocol(annotations_root: str | Path, split: str) -> tuple[dict[str, str], list[CirrQuery]]:
    """(gallery: name -> relative path, queries) of a split, cross-checked: every reference, target and
    member of a query is a key of the split file."""
    gallery = read_cirr_split(annotations_root, split)
    queries = read_cirr_captions(annotations_root, split)
    for q in queries:
        for role, name in [("reference", q.reference), ("target_hard", q.target)] + [
            ("img_set member", m) for m in q.members
        ]:
            if name is not None and name not in gallery:
                raise AnnotationError(
                    f"{q.source}: {role} {name!r} is not in the {split} split file (pairid {q.pairid})"
                )
    return gallery, queries


class CIRRDataModule(CTIIRDataModule):
    """CIRR for Stage III (train split) and its evaluation (val split; the test split for submissions).

    Args:
        root: dataset root.
        annotations_root: folder holding ``captions/`` and ``image_splits/`` (default: ``root``).
        image_root: what the split files' paths are relative to (default: ``root``; ``.../img_raw`` for
            the official release).
        caption_pairs: optional image-caption JSONL/CSV file for Stage I (see ``ctiir.datamodules.custom``;
            paths in it are relative to ``root``).
        descriptions: optional image-description JSONL/CSV file for Stage II text->image.
        The remaining arguments are ``CTIIRDataModule``'s.
    Stage II image->image pairs are the training triplets with the text dropped (the base default).
    """

    name = "cirr"

    def __init__(
        self,
        root: str,
        annotations_root: str | None = None,
        image_root: str | None = None,
        caption_pairs: str | None = None,
        descriptions: str | None = None,
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
        self.root = Path(root)
        self.annotations_root = Path(annotations_root) if annotations_root is not None else self.root
        self.image_root = Path(image_root) if image_root is not None else self.root
        self.caption_pairs_file = caption_pairs
        self.descriptions_file = descriptions
        self._protocols: dict[str, tuple[dict[str, str], list[CirrQuery]]] = {}

    def protocol(self, split: str) -> tuple[dict[str, str], list[CirrQuery]]:
        """The split's gallery and queries, read and cross-checked once."""
        if split not in self._protocols:
            self._protocols[split] = cirr_protocol(self.annotations_root, split)
        return self._protocols[split]

    # ------------------------------------------------------------------ sources
    def caption_pairs(self, split: Split) -> list[ImageText]:
        if self.caption_pairs_file is None:
            raise NotImplementedError(
                "CIRRDataModule has no Stage I pairs: set caption_pairs (an image-caption JSONL/CSV)"
            )
        return split_records(read_image_text_pairs, self.caption_pairs_file, self.root, split)

    def description_pairs(self, split: Split) -> list[ImageText]:
        if self.descriptions_file is None:
            raise NotImplementedError(
                "CIRRDataModule has no Stage II descriptions: set descriptions (a JSONL/CSV file)"
            )
        return split_records(read_image_text_pairs, self.descriptions_file, self.root, split)

    def triplets(self, split: Split) -> list[Triplet]:
        if split == "test":
            raise NotImplementedError("CIRR test targets are withheld: there are no test triplets")
        gallery, queries = self.protocol(split)
        return [
            Triplet(
                self.image_root / gallery[q.reference],
                self.image_root / gallery[q.target],
                (q.caption,),
                q.reference,
                q.target,
                source=q.source,
                extra={"pairid": q.pairid, "members": q.members},
            )
            for q in queries
            if q.target is not None
        ]

    def _task(self, split: str, limit: bool) -> RetrievalTask:
        gallery, queries = self.protocol(split)
        return build_composed_task(
            self,
            protocol="cirr",
            split=split,
            gallery=[(name, self.image_root / rel) for name, rel in gallery.items()],
            queries=[
                ComposedQuery(
                    str(q.pairid),
                    q.reference,
                    self.image_root / gallery[q.reference],
                    q.caption,
                    q.target,
                    q.members,
                    q.source,
                )
                for q in queries
            ],
            ks=(1, 5, 10, 50),
            subset_ks=(1, 2, 3),
            headline=("R@5", "Rsubset@1"),
            exclude_reference=True,
            limit=limit,
        )

    def composed_tasks(self, split: Split) -> list[RetrievalTask]:
        """The val split's task, for "val" and "test" alike (test targets are withheld)."""
        if split not in ("val", "test"):
            raise ValueError(f"CIRR evaluates the val split: split must be 'val' or 'test', got {split!r}")
        return [self._task("val", limit=True)]

    def submission_task(self, split: str = "test") -> RetrievalTask:
        """Every query of ``split`` (default the test split) with its gallery, for a server submission.

        Query names are the pairids; ``target_id`` is ``-1`` where targets are withheld; ``extra`` holds the
        reference and member names per query (for the submission schema check).
        """
        return self._task(split, limit=False)
