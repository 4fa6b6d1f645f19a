"""``check-data`` for FashionIQ: split files, caption files and ``images/<id>.<png|jpg>``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctiir.checkdata.core import CHECKS, DatasetCheck, read_file
from ctiir.checkdata.report import CountEffect, Problem
from ctiir.datamodules.errors import AnnotationError
from ctiir.datamodules.fashioniq import (
    CATEGORIES,
    HEADLINE,
    KS,
    SPLITS,
    FashionIQCaption,
    ImageFolder,
    caption_file,
    fashioniq_source,
    parse_caption_entry,
    parse_split_entry,
    split_file,
)
from ctiir.datamodules.protocol import ProtocolSpec


@dataclass
class FashionIQFiles:
    """What one split/category's two files hold, leniently parsed."""

    split_raw: int | None = None  # entries in the split file (None: unreadable)
    split_ids: list[str] | None = None  # valid, de-duplicated ids (None: unreadable)
    caption_raw: list[Any] | None = None  # the raw caption entries (None: unreadable)
    captions: list[FashionIQCaption] = field(default_factory=list)  # valid, de-duplicated, ids in the split


@CHECKS.register("fashioniq")
class FashionIQCheck(DatasetCheck):
    """FashionIQ (see ``ctiir.datamodules.fashioniq``); the subsets are the categories."""

    splits = SPLITS
    subsets = CATEGORIES
    subset_name = "category"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.files: dict[tuple[str, str], FashionIQFiles] = {}
        self.images = ImageFolder(self.root / "images")

    def _read_split(self, split: str, cat: str, problems: list[Problem]) -> FashionIQFiles:
        state = FashionIQFiles()
        path = split_file(self.annotations_root, cat, split)
        data = read_file(path, list, split, cat, problems)
        if data is None:
            return state
        state.split_raw, seen = len(data), {}
        for i, value in enumerate(data):
            where = f"{path} entry {i}"
            try:
                image_id = parse_split_entry(value, where)
            except AnnotationError as err:
                problems.append(Problem("malformed-entry", split, cat, where, str(err)))
                continue
            if image_id in seen:
                problems.append(
                    Problem("duplicate-split-id", split, cat, where, f"{image_id} duplicates entry {seen[image_id]}")
                )
                continue
            seen[image_id] = i
        state.split_ids = list(seen)
        return state

    def _read_captions(self, split: str, cat: str, state: FashionIQFiles, problems: list[Problem]) -> None:
        path = caption_file(self.annotations_root, cat, split)
        data = read_file(path, list, split, cat, problems)
        if data is None:
            return
        state.caption_raw = data
        in_split = set(state.split_ids) if state.split_ids is not None else None
        seen: dict[tuple[Any, ...], int] = {}
        for i, entry in enumerate(data):
            try:
                c = parse_caption_entry(entry, path, i, split)
            except AnnotationError as err:
                problems.append(Problem("malformed-entry", split, cat, f"{path} entry {i}", str(err)))
                continue
            key = (c.candidate, c.target, c.captions)
            if key in seen:
                problems.append(Problem("duplicate-triplet", split, cat, c.source, f"duplicates entry {seen[key]}"))
                continue
            seen[key] = i
            if any(not text.strip() for text in c.captions):
                problems.append(
                    Problem("blank-caption", split, cat, c.source, "one of the two captions is blank (kept)", "warning")
                )
            absent = [x for x in (c.candidate, c.target) if x is not None and in_split is not None and x not in in_split]
            if absent:
                name = split_file(self.annotations_root, cat, split).name
                problems.append(Problem("absent-id", split, cat, c.source, f"{', '.join(absent)} not in {name}"))
                continue
            state.captions.append(c)

    def scan(self) -> list[Problem]:
        problems: list[Problem] = []
        if not self.images.folder.is_dir():
            problems.append(
                Problem("missing-folder", "*", "*", str(self.images.folder), "no images folder: every image is missing")
            )
        for split in self.split_names:
            for cat in self.subset_names:
                state = self._read_split(split, cat, problems)
                self._read_captions(split, cat, state, problems)
                self.files[(split, cat)] = state
                path = split_file(self.annotations_root, cat, split)
                for i, image_id in enumerate(state.split_ids or []):
                    self.use(image_id, self.images.find, split, cat, f"{path} entry {i}")
                for c in state.captions:
                    for image_id in (c.candidate, c.target):
                        if image_id is not None:
                            self.use(image_id, self.images.find, split, cat, c.source)
        return problems

    @staticmethod
    def _kept(state: FashionIQFiles, bad: set[str]) -> tuple[list[str] | None, list[FashionIQCaption]]:
        ids = None if state.split_ids is None else [i for i in state.split_ids if i not in bad]
        captions = [c for c in state.captions if c.candidate not in bad and c.target not in bad]
        return ids, captions

    def entries(self, bad_images: set[str]) -> dict[str, dict[str, int | None]]:
        out: dict[str, dict[str, int | None]] = {}
        for (split, cat), state in self.files.items():
            ids, captions = self._kept(state, bad_images)
            out[f"{split}/{cat}"] = {
                "split_ids_before": state.split_raw,
                "split_ids_after": None if ids is None else len(ids),
                "caption_entries_before": None if state.caption_raw is None else len(state.caption_raw),
                "caption_entries_after": len(captions),
            }
        return out

    def effects(self, bad_images: set[str]) -> list[CountEffect]:
        out: list[CountEffect] = []
        locate = self.locator(bad_images)
        for (split, cat), state in self.files.items():
            raw_queries = None if state.caption_raw is None else len(state.caption_raw)
            if split == "train":
                _, captions = self._kept(state, bad_images)
                out.append(CountEffect(split, cat, "training", "triplets", raw_queries, len(captions)))
            if split != "val":
                continue
            for protocol in ("original", "val-split"):
                spec = ProtocolSpec(f"fashioniq-{protocol}", KS, HEADLINE, exclude_reference=False)
                if protocol == "original":
                    if state.split_ids is None:  # the gallery file is unreadable: nothing can be evaluated
                        out += [CountEffect(split, cat, protocol, w, None, 0) for w in ("gallery", "queries")]
                        continue
                    before = (state.split_raw, raw_queries)
                else:
                    before = (self._raw_union(state), raw_queries)
                source = fashioniq_source(
                    spec,
                    cat,
                    state.captions,
                    locate,
                    "clip4cir",
                    split_ids=state.split_ids if protocol == "original" else None,
                )
                out += self.evaluation_effects(source, split, cat, protocol, before)
        return out

    @staticmethod
    def _raw_union(state: FashionIQFiles) -> int | None:
        """The val-split gallery as the raw caption file gives it: its distinct candidate and target names."""
        if state.caption_raw is None:
            return None
        names = [e.get(k) for e in state.caption_raw if isinstance(e, dict) for k in ("candidate", "target")]
        return len({n for n in names if isinstance(n, str)})

    def filtered_files(self, bad_images: set[str]) -> tuple[dict[str, Any], list[str]]:
        files: dict[str, Any] = {}
        not_written: list[str] = []
        for (split, cat), state in self.files.items():
            ids, captions = self._kept(state, bad_images)
            s_rel = f"image_splits/split.{cat}.{split}.json"
            c_rel = f"captions/cap.{cat}.{split}.json"
            if ids is None:
                not_written.append(f"{s_rel}: the source file is unreadable; fix it by hand")
            else:
                files[s_rel] = ids
            if state.caption_raw is None:
                not_written.append(f"{c_rel}: the source file is unreadable; fix it by hand")
            else:
                files[c_rel] = [state.caption_raw[c.index] for c in captions]
        return files, not_written

    def usage_hint(self, filtered: Path) -> str:
        """How to train on a filtered copy written to ``filtered``."""
        return f"--data.init_args.root {self.root} --data.init_args.annotations_root {filtered}"
