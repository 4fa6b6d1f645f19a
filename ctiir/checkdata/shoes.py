"""``check-data`` for Shoes: the two name lists, the relative captions, the single-image captions, the images.

Splits: ``train`` (training triplets: reference in ``train_im_names.txt``; captions of train images) and
``eval`` (the gallery of ``eval_im_names.txt``, the evaluation triplets, captions of eval images). The four
files serve both splits, so a filtered copy drops only the bad entries of the checked splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ctiir.checkdata.core import CHECKS, DatasetCheck, read_file
from ctiir.checkdata.report import CountEffect, Problem
from ctiir.datamodules.annotations import check_image_id
from ctiir.datamodules.errors import AnnotationError, DataError
from ctiir.datamodules.shoes import (
    CAPTIONS_FILE,
    EVAL_NAMES_FILE,
    TRAIN_NAMES_FILE,
    TRIPLETS_FILE,
    ShoesAnnotations,
    ShoesTriplet,
    find_image,
    index_images,
    name_lines,
    parse_caption,
    parse_triplet,
    shoes_source,
    triplet_membership,
)

SUBSET = "all"


@CHECKS.register("shoes")
class ShoesCheck(DatasetCheck):
    """Shoes (see ``ctiir.datamodules.shoes``); images are found by file name anywhere under the root."""

    splits = ("train", "eval")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.names: dict[str, list[str] | None] = {}  # list file -> valid, de-duplicated names (None: unreadable)
        self.raw_names: dict[str, int | None] = {}
        self.triplets: list[ShoesTriplet] = []  # valid, de-duplicated, in the lists
        self.triplet_rows: list[int] = []  # each kept triplet's entry in the raw file
        self.triplet_raw: list[Any] | None = None
        self.captions: list[tuple[str, str, str]] = []
        self.caption_rows: list[int] = []
        self.caption_raw: list[Any] | None = None
        self.index: dict[str, list[Path]] = {}
        self.split_of: dict[str, str] = {}

    # -- reading -------------------------------------------------------------------------------------
    def _read_names(self, file: str, split: str, problems: list[Problem]) -> None:
        path = self.annotations_root / file
        try:
            lines = name_lines(path)
        except AnnotationError as err:
            problems.append(Problem("malformed-file", split, SUBSET, str(path), str(err)))
            self.names[file], self.raw_names[file] = None, None
            return
        seen: dict[str, int] = {}
        for number, name in lines:
            where = f"{path} line {number}"
            try:
                check_image_id(name, where, key="image name")
            except AnnotationError as err:
                problems.append(Problem("malformed-entry", split, SUBSET, where, str(err)))
                continue
            if name in seen:
                problems.append(Problem("duplicate-name", split, SUBSET, where, f"{name!r} repeats line {seen[name]}"))
                continue
            seen[name] = number
        self.names[file], self.raw_names[file] = list(seen), len(lines)

    def _split_of(self, name: Any) -> str | None:
        """The split an image name belongs to (``None``: neither list; not a name at all)."""
        return self.split_of.get(name) if isinstance(name, str) else None

    def scan(self) -> list[Problem]:
        problems: list[Problem] = []
        self._read_names(TRAIN_NAMES_FILE, "train", problems)
        self._read_names(EVAL_NAMES_FILE, "eval", problems)
        train, evals = self.names[TRAIN_NAMES_FILE] or [], self.names[EVAL_NAMES_FILE] or []
        shared = set(train) & set(evals)
        for name in sorted(shared):
            problems.append(
                Problem("shared-name", "eval", SUBSET, str(self.annotations_root / EVAL_NAMES_FILE),
                        f"{name!r} is in both {TRAIN_NAMES_FILE} and {EVAL_NAMES_FILE} (dropped from both)")
            )
        for file in (TRAIN_NAMES_FILE, EVAL_NAMES_FILE):
            if self.names[file] is not None:
                self.names[file] = [n for n in self.names[file] if n not in shared]  # type: ignore[union-attr]
        train_set, eval_set = set(self.names[TRAIN_NAMES_FILE] or ()), set(self.names[EVAL_NAMES_FILE] or ())
        self.split_of = {**dict.fromkeys(train_set, "train"), **dict.fromkeys(eval_set, "eval")}

        path = self.annotations_root / TRIPLETS_FILE
        self.triplet_raw = read_file(path, list, "eval", SUBSET, problems)
        seen: dict[tuple[str, str, str], int] = {}
        for i, entry in enumerate(self.triplet_raw or []):
            where = f"{path} entry {i}"
            split = self._split_of(entry.get("ReferenceImageName")) if isinstance(entry, dict) else None
            try:
                triplet = parse_triplet(entry, where)
            except AnnotationError as err:
                problems.append(Problem("malformed-entry", split or "eval", SUBSET, where, str(err)))
                continue
            problem = triplet_membership(triplet, train_set, eval_set)
            if problem is not None:
                problems.append(Problem("absent-id", split or "eval", SUBSET, where, problem))
                continue
            key = (triplet.reference, triplet.target, triplet.caption)
            if key in seen:
                problems.append(Problem("duplicate-triplet", split or "eval", SUBSET, where, f"duplicates entry {seen[key]}"))
                continue
            seen[key] = i
            self.triplets.append(triplet)
            self.triplet_rows.append(i)

        path = self.annotations_root / CAPTIONS_FILE
        self.caption_raw = read_file(path, list, "train", SUBSET, problems)
        for i, entry in enumerate(self.caption_raw or []):
            where = f"{path} entry {i}"
            try:
                name, caption, _ = parse_caption(entry, where)
            except AnnotationError as err:
                problems.append(Problem("malformed-entry", "train", SUBSET, where, str(err)))
                continue
            if name not in train_set and name not in eval_set:
                problems.append(Problem("absent-id", "train", SUBSET, where,
                                        f"ImageName {name!r} is in neither {TRAIN_NAMES_FILE} nor {EVAL_NAMES_FILE}"))
                continue
            self.captions.append((name, caption, where))
            self.caption_rows.append(i)

        try:
            self.index = index_images(self.image_root)
        except DataError as err:
            problems.append(Problem("missing-folder", "*", "*", str(self.image_root), f"{err}: every image is missing"))
        eval_path = self.annotations_root / EVAL_NAMES_FILE
        if "eval" in self.split_names:
            for name in self.names[EVAL_NAMES_FILE] or []:
                self.use(name, self.find, "eval", SUBSET, f"{eval_path} name {name}")
        for t in self.triplets:
            split = self._split_of(t.reference)
            if split in self.split_names:
                for name in (t.reference, t.target):
                    self.use(name, self.find, split, SUBSET, t.source)  # type: ignore[arg-type]
        for name, _, where in self.captions:
            split = "train" if name in train_set else "eval"
            if split in self.split_names:
                self.use(name, self.find, split, SUBSET, where)
        return problems

    def find(self, name: str) -> Path | None:
        return find_image(self.index, name, self.image_root)

    # -- counts --------------------------------------------------------------------------------------
    def _usable(self, names: Sequence[str], bad: set[str]) -> bool:
        return not any(n in bad for n in names)

    def _annotations(self) -> ShoesAnnotations:
        """The checked entries as the datamodule reads them, bad images left in for the builder to drop."""
        return ShoesAnnotations(
            self.triplets, self.names[TRAIN_NAMES_FILE] or [], self.names[EVAL_NAMES_FILE] or [], self.captions
        )

    def entries(self, bad_images: set[str]) -> dict[str, dict[str, int | None]]:
        out: dict[str, dict[str, int | None]] = {}
        for split, file in (("train", TRAIN_NAMES_FILE), ("eval", EVAL_NAMES_FILE)):
            if split not in self.split_names:
                continue
            names = self.names[file]
            kept_names = None if names is None else [n for n in names if split == "train" or n not in bad_images]
            triplets = [t for t in self.triplets if self._split_of(t.reference) == split]
            captions = [c for c in self.captions if self._split_of(c[0]) == split]
            raw_triplets = [e for e in self.triplet_raw or [] if isinstance(e, dict) and self._split_of(e.get("ReferenceImageName")) == split]
            out[f"{split}/{SUBSET}"] = {
                "names_before": self.raw_names[file],
                "names_after": None if kept_names is None else len(kept_names),
                "triplets_before": None if self.triplet_raw is None else len(raw_triplets),
                "triplets_after": sum(self._usable((t.reference, t.target), bad_images) for t in triplets),
                "captions_before": None if self.caption_raw is None else sum(
                    isinstance(e, dict) and self._split_of(e.get("ImageName")) == split for e in self.caption_raw
                ),
                "captions_after": sum(self._usable((c[0],), bad_images) for c in captions),
            }
        return out

    def effects(self, bad_images: set[str]) -> list[CountEffect]:
        counts = self.entries(bad_images)
        out: list[CountEffect] = []
        if "train" in self.split_names:
            c = counts[f"train/{SUBSET}"]
            out.append(CountEffect("train", SUBSET, "training", "triplets", c["triplets_before"], c["triplets_after"] or 0))
        if "eval" in self.split_names:
            c = counts[f"eval/{SUBSET}"]
            source = shoes_source(self._annotations(), self.locator(bad_images))
            out += self.evaluation_effects(source, "eval", SUBSET, "shoes", (c["names_before"], c["triplets_before"]))
        return out

    def filtered_files(self, bad_images: set[str]) -> tuple[dict[str, Any], list[str]]:
        files: dict[str, Any] = {}
        not_written: list[str] = []
        checked = set(self.split_names)
        for split, file in (("train", TRAIN_NAMES_FILE), ("eval", EVAL_NAMES_FILE)):
            names = self.names[file]
            if names is None:
                not_written.append(f"{file}: the source file is unreadable; fix it by hand")
            else:
                files[file] = [n for n in names if split not in checked or n not in bad_images]
        kept: list[tuple[str, list[Any] | None, list[tuple[int, tuple[str, ...]]]]] = [
            (TRIPLETS_FILE, self.triplet_raw, [(i, (t.reference, t.target)) for i, t in zip(self.triplet_rows, self.triplets, strict=True)]),
            (CAPTIONS_FILE, self.caption_raw, [(i, (c[0],)) for i, c in zip(self.caption_rows, self.captions, strict=True)]),
        ]
        for file, raw, rows in kept:
            if raw is None:
                not_written.append(f"{file}: the source file is unreadable; fix it by hand")
                continue
            files[file] = [
                raw[i] for i, names in rows if self._split_of(names[0]) not in checked or self._usable(names, bad_images)
            ]
        return files, not_written

    def usage_hint(self, filtered: Path) -> str:
        return f"--data.init_args.root {self.image_root} --data.init_args.annotations_root {filtered}"
