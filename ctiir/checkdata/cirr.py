"""``check-data`` for CIRR: per split, the caption file, the split file and the images it names.

The val split is the evaluation protocol (gallery = every split-file image); the test split goes to the
evaluation server, which needs every query, so anything dropped there is an error for a submission; the
train split's training triplets need their reference and target images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctiir.checkdata.core import CHECKS, DatasetCheck, read_file
from ctiir.checkdata.report import CountEffect, Problem
from ctiir.datamodules.cirr import (
    CirrQuery,
    absent_names,
    cirr_source,
    file_candidates,
    parse_cirr_entry,
    parse_split_entry,
)
from ctiir.datamodules.errors import AnnotationError

SUBSET = "all"


@dataclass
class CIRRFiles:
    """One split's two files, leniently parsed."""

    split_path: Path
    captions_path: Path
    split_raw: dict[str, Any] | None = None
    gallery: dict[str, str] | None = None  # valid entries: name -> normalised relative path
    caption_raw: list[Any] | None = None
    queries: list[CirrQuery] = field(default_factory=list)  # valid, unique pairids, names in the split file
    rows: list[int] = field(default_factory=list)  # each kept query's entry in the raw file


def _existing(annotations_root: Path, folder: str, stem: str, split: str) -> Path:
    """The split's file as the datamodule finds it (``test1`` or ``test``); the first name if none exists."""
    options = file_candidates(annotations_root, folder, stem, split)
    return next((p for p in options if p.is_file()), options[0])


@CHECKS.register("cirr")
class CIRRCheck(DatasetCheck):
    """CIRR (see ``ctiir.datamodules.cirr``); the split files' paths are relative to the image root."""

    splits = ("train", "val", "test")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.files: dict[str, CIRRFiles] = {}

    def _read(self, split: str, problems: list[Problem]) -> CIRRFiles:
        state = CIRRFiles(
            _existing(self.annotations_root, "image_splits", "split", split),
            _existing(self.annotations_root, "captions", "cap", split),
        )
        state.split_raw = read_file(state.split_path, dict, split, SUBSET, problems)
        if state.split_raw is not None:
            state.gallery = {}
            for name, rel in state.split_raw.items():
                where = f"{state.split_path} entry {name!r:.60}"
                try:
                    state.gallery[name] = parse_split_entry(name, rel, where)
                except AnnotationError as err:
                    problems.append(Problem("malformed-entry", split, SUBSET, where, str(err)))
        state.caption_raw = read_file(state.captions_path, list, split, SUBSET, problems)
        seen: dict[int, int] = {}
        for i, entry in enumerate(state.caption_raw or []):
            where = f"{state.captions_path} entry {i}"
            try:
                query = parse_cirr_entry(entry, where, split)
            except AnnotationError as err:
                problems.append(Problem("malformed-entry", split, SUBSET, where, str(err)))
                continue
            if query.pairid in seen:
                problems.append(
                    Problem("duplicate-pairid", split, SUBSET, where, f"pairid {query.pairid} repeats entry {seen[query.pairid]}")
                )
                continue
            seen[query.pairid] = i
            if not query.caption.strip():
                problems.append(
                    Problem("blank-caption", split, SUBSET, where, f"pairid {query.pairid}: the caption is blank (kept)", "warning")
                )
            if state.gallery is not None:
                absent = absent_names(query, state.gallery)
                if absent:
                    names = ", ".join(f"{role} {name!r}" for role, name in absent)
                    problems.append(Problem("absent-id", split, SUBSET, where, f"{names} not in {state.split_path.name}"))
                    continue
            state.queries.append(query)
            state.rows.append(i)
        return state

    def scan(self) -> list[Problem]:
        problems: list[Problem] = []
        if not self.image_root.is_dir():
            problems.append(Problem("missing-folder", "*", "*", str(self.image_root), "no image root: every image is missing"))
        for split in self.split_names:
            state = self._read(split, problems)
            self.files[split] = state
            gallery = state.gallery or {}

            def locate(name: str, gallery: dict[str, str] = gallery) -> Path | None:
                path = self.image_root / gallery[name]
                return path if path.is_file() else None

            if split != "train":  # the evaluation ranks the whole split file
                for name in gallery:
                    self.use(name, locate, split, SUBSET, f"{state.split_path} entry {name!r}")
            for q in state.queries:
                for name in [q.reference] + ([q.target] if q.target is not None else []):
                    self.use(name, locate, split, SUBSET, q.source)
        return problems

    def _usable(self, q: CirrQuery, bad: set[str]) -> bool:
        """Whether the query survives the bad images: its reference, target and image set must all be good
        (the protocol builder drops a query whose set lost a member, so the filtered copy does too)."""
        return q.reference not in bad and (q.target is None or q.target not in bad) and not bad.intersection(q.members)

    def entries(self, bad_images: set[str]) -> dict[str, dict[str, int | None]]:
        out: dict[str, dict[str, int | None]] = {}
        for split, state in self.files.items():
            gallery = state.gallery
            out[f"{split}/{SUBSET}"] = {
                "split_entries_before": None if state.split_raw is None else len(state.split_raw),
                "split_entries_after": None if gallery is None else sum(n not in bad_images for n in gallery),
                "caption_entries_before": None if state.caption_raw is None else len(state.caption_raw),
                "caption_entries_after": sum(self._usable(q, bad_images) for q in state.queries),
            }
        return out

    def effects(self, bad_images: set[str]) -> list[CountEffect]:
        out: list[CountEffect] = []
        for split, state in self.files.items():
            raw_queries = None if state.caption_raw is None else len(state.caption_raw)
            if split == "train":
                after = sum(self._usable(q, bad_images) for q in state.queries)
                out.append(CountEffect(split, SUBSET, "training", "triplets", raw_queries, after))
                continue
            label = "cirr" if split == "val" else "cirr-submission"
            if state.gallery is None:
                out += [CountEffect(split, SUBSET, label, w, None, 0) for w in ("gallery", "queries")]
                continue
            source = cirr_source(state.gallery, state.queries, self.locator(bad_images), str(state.split_path))
            before = (len(state.split_raw or {}), raw_queries)
            out += self.evaluation_effects(source, split, SUBSET, label, before)
        return out

    def filtered_files(self, bad_images: set[str]) -> tuple[dict[str, Any], list[str]]:
        files: dict[str, Any] = {}
        not_written: list[str] = []
        for state in self.files.values():
            s_rel = f"image_splits/{state.split_path.name}"
            c_rel = f"captions/{state.captions_path.name}"
            if state.split_raw is None or state.gallery is None:
                not_written.append(f"{s_rel}: the source file is unreadable; fix it by hand")
            else:
                files[s_rel] = {n: state.split_raw[n] for n in state.gallery if n not in bad_images}
            if state.caption_raw is None:
                not_written.append(f"{c_rel}: the source file is unreadable; fix it by hand")
            else:
                files[c_rel] = [
                    state.caption_raw[i] for i, q in zip(state.rows, state.queries, strict=True) if self._usable(q, bad_images)
                ]
        return files, not_written

    def usage_hint(self, filtered: Path) -> str:
        return (
            f"--data.init_args.root {self.root} --data.init_args.image_root {self.image_root} "
            f"--data.init_args.annotations_root {filtered}"
        )
