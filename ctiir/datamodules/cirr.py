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
and the real test split goes to the evaluation server through ``submission_evaluation`` and
``ctiir.submission.predict_cirr_submission``.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctiir.datamodules.annotations import check_image_id, read_json, require
from ctiir.datamodules.base import CTIIRDataModule, Split
from ctiir.datamodules.errors import AnnotationError
from ctiir.datamodules.protocol import (
    ComposedQuery,
    ComposedSource,
    EvaluationSet,
    GalleryImage,
    ProtocolSpec,
    build_evaluation,
)
from ctiir.datamodules.records import Triplet

log = logging.getLogger(__name__)

# The release names its test split "test1"; "test" is accepted too.
FILE_SPLITS: dict[str, tuple[str, ...]] = {"train": ("train",), "val": ("val",), "test": ("test1", "test")}
PROTOCOL = ProtocolSpec("cirr", ks=(1, 5, 10, 50), headline=("R@5", "Rsubset@1"), exclude_reference=True, subset_ks=(1, 2, 3))


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


def file_candidates(annotations_root: Path, folder: str, stem: str, split: str) -> list[Path]:
    """The names a split's file may have (``test1`` or ``test``), in the order they are looked for."""
    if split not in FILE_SPLITS:
        raise ValueError(f"CIRR split must be one of {list(FILE_SPLITS)}, got {split!r}")
    return [annotations_root / folder / f"{stem}.rc2.{name}.json" for name in FILE_SPLITS[split]]


def _file(annotations_root: Path, folder: str, stem: str, split: str) -> Path:
    options = file_candidates(annotations_root, folder, stem, split)
    for path in options:
        if path.is_file():
            return path
    raise AnnotationError(f"CIRR {split} annotation file not found: {' or '.join(str(p) for p in options)}")


def split_path(annotations_root: str | Path, split: str) -> Path:
    """``image_splits/split.rc2.{split}.json`` (``test1`` or ``test`` for the test split)."""
    return _file(Path(annotations_root), "image_splits", "split", split)


def captions_path(annotations_root: str | Path, split: str) -> Path:
    """``captions/cap.rc2.{split}.json`` (``test1`` or ``test`` for the test split)."""
    return _file(Path(annotations_root), "captions", "cap", split)


def parse_split_entry(name: Any, rel: Any, where: str) -> str:
    """One split-file entry: a valid image name and a path inside the image root; returns the normalised path."""
    check_image_id(name, where, key="image name")
    if isinstance(rel, bool) or not isinstance(rel, str) or not rel.strip():
        raise AnnotationError(f"{where}: the image path must be a non-empty string, got {rel!r:.60}")
    normalised = rel.replace("\\", "/")
    if "\x00" in rel or posixpath.isabs(normalised) or ".." in normalised.split("/"):
        raise AnnotationError(f"{where}: image path {rel!r:.80} must stay inside the image root (no '..', not absolute)")
    if posixpath.normpath(normalised) in ("", "."):
        raise AnnotationError(f"{where}: image path {rel!r} is not a file path")
    return posixpath.normpath(normalised)


def read_cirr_split(annotations_root: str | Path, split: str) -> dict[str, str]:
    """``image_splits/split.rc2.{split}.json``: image name -> image path relative to the image root."""
    path = split_path(annotations_root, split)
    data = read_json(path)
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected a JSON object of name -> path, got {type(data).__name__}")
    if not data:
        raise AnnotationError(f"{path}: no images")
    return {name: parse_split_entry(name, rel, f"{path} entry {name!r:.60}") for name, rel in data.items()}


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


def parse_cirr_entry(entry: Any, where: str, split: str) -> CirrQuery:
    """One caption entry, checked on its own: types, names, ``target_hard`` among the members.

    ``target_hard`` is required except in the test split; ``target_soft``, when present, must be an object.
    A blank caption is kept (the official test split has one, pairid 27098, and the server needs every
    pairid); readers warn about it and ``ctiir check-data`` reports it.
    """
    pairid = require(entry, "pairid", int, where)
    reference = check_image_id(require(entry, "reference", str, where), where, "reference")
    caption = require(entry, "caption", str, where)
    target: str | None = None
    if split != "test" or "target_hard" in entry:
        target = check_image_id(require(entry, "target_hard", str, where), where, "target_hard")
    if "target_soft" in entry and not isinstance(entry["target_soft"], dict):
        raise AnnotationError(f"{where}: target_soft must be an object, got {type(entry['target_soft']).__name__}")
    members, set_id = _members(entry, where)
    if target is not None and target not in members:
        raise AnnotationError(f"{where}: target_hard {target!r} is not among img_set.members")
    return CirrQuery(pairid, reference, target, caption, members, set_id, where)


def read_cirr_captions(annotations_root: str | Path, split: str) -> list[CirrQuery]:
    """``captions/cap.rc2.{split}.json``, validated entry by entry, with unique pairids.

    Blank captions are kept with a warning (see :func:`parse_cirr_entry`).
    """
    path = captions_path(annotations_root, split)
    data = read_json(path)
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: expected a JSON array of entries, got {type(data).__name__}")
    if not data:
        raise AnnotationError(f"{path}: no entries")
    seen: dict[int, int] = {}
    out: list[CirrQuery] = []
    for i, entry in enumerate(data):
        query = parse_cirr_entry(entry, f"{path} entry {i}", split)
        if query.pairid in seen:
            raise AnnotationError(f"{query.source}: pairid {query.pairid} repeats entry {seen[query.pairid]}")
        seen[query.pairid] = i
        if not query.caption.strip():
            log.warning("%s: the caption of pairid %d is blank; the query is kept (text-free)", query.source, query.pairid)
        out.append(query)
    return out


def absent_names(query: CirrQuery, gallery: Mapping[str, str]) -> list[tuple[str, str]]:
    """``(role, name)`` of the query's reference, target and members that the split file lacks."""
    roles = [("reference", query.reference)] + ([("target_hard", query.target)] if query.target is not None else [])
    roles += [("img_set member", m) for m in query.members]
    return [(role, name) for role, name in roles if name not in gallery]


def cirr_protocol(annotations_root: str | Path, split: str) -> tuple[dict[str, str], list[CirrQuery]]:
    """(gallery: name -> relative path, queries) of a split, cross-checked: every reference, target and
    member of a query is a key of the split file."""
    gallery = read_cirr_split(annotations_root, split)
    queries = read_cirr_captions(annotations_root, split)
    for q in queries:
        for role, name in absent_names(q, gallery):
            raise AnnotationError(f"{q.source}: {role} {name!r} is not in the {split} split file (pairid {q.pairid})")
    return gallery, queries


def cirr_source(
    gallery: Mapping[str, str], queries: Sequence[CirrQuery], locate: Callable[[str], Path], split_file: str = ""
) -> ComposedSource:
    """The evaluation of one split: the gallery is every split-file entry, each caption entry a query named by
    its pairid, with its image set. ``locate`` maps an image name to its file."""
    images = [GalleryImage(name, locate(name), f"{split_file} entry {name!r}") for name in gallery]
    composed = [
        ComposedQuery(
            str(q.pairid),
            q.reference,
            locate(q.reference),
            q.caption,
            q.target,
            locate(q.target) if q.target is not None else None,
            q.members,
            q.source,
        )
        for q in queries
    ]
    return ComposedSource(PROTOCOL, None, composed, images)


class CIRRDataModule(CTIIRDataModule):
    """CIRR for Stage III (train split) and its evaluation (val split; the test split for submissions).

    Args:
        root: dataset root.
        annotations_root: folder holding ``captions/`` and ``image_splits/`` (default: ``root``).
        image_root: what the split files' paths are relative to (default: ``root``; ``.../img_raw`` for
            the official release).
        caption_pairs: optional image-caption JSONL/CSV file for Stage I (see ``ctiir.datamodules.tables``;
            paths in it are relative to ``root``).
        descriptions: optional image-description JSONL/CSV file for Stage II text->image.
        **kwargs: ``CTIIRDataModule``'s arguments.
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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
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

    def split_source(self, split: str) -> ComposedSource:
        gallery, queries = self.protocol(split)
        where = str(split_path(self.annotations_root, split))
        return cirr_source(gallery, queries, lambda name: self.image_root / gallery[name], where)

    def composed_sources(self, split: Split) -> list[ComposedSource]:
        """The val split's source, for "val" and "test" alike (test targets are withheld)."""
        if split not in ("val", "test"):
            raise ValueError(f"CIRR evaluates the val split: split must be 'val' or 'test', got {split!r}")
        return [self.split_source("val")]

    def submission_evaluation(self, split: str = "test") -> EvaluationSet:
        """Every query of ``split`` (default the test split) with its gallery, for a server submission.

        No query limit applies. Query names are the pairids; ``target_index`` is ``-1`` where targets are
        withheld.
        """
        return build_evaluation(self.split_source(split), split, on_missing=self.on_missing)
