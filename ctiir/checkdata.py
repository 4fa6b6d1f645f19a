"""``ctiir check-data``: find what is wrong with a dataset before a long run trips over it.

A run that dies on image 40,000 of an epoch, or a benchmark number computed on a silently shrunken gallery,
costs more than a scan up front. This command reads every annotation file leniently (a bad entry is a
reported problem, not a crash), decodes every referenced image, and says what the problems do to the
evaluation counts. ``--write-filtered OUT`` writes annotation files without the bad entries, for use with
the original images through the datamodule's ``annotations_root``.

The core is dataset-agnostic: a ``DatasetCheck`` subclass (registered in ``CHECKS``) parses one dataset's
annotations and says which images they need, what the counts are, and what a filtered copy holds; image
decoding, reporting, the JSON report and the filtered copy are shared. FashionIQ is the first one.
"""

from __future__ import annotations

import argparse
import json
import os
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image, UnidentifiedImageError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ctiir.datamodules.annotations import read_json
from ctiir.datamodules.errors import AnnotationError, DataError
from ctiir.datamodules.fashioniq import (
    CATEGORIES,
    SPLITS,
    FashionIQCaption,
    ImageFolder,
    caption_file,
    parse_caption_entry,
    parse_split_entry,
    split_file,
    val_split_gallery,
)
from ctiir.registry import Registry

Severity = Literal["error", "warning"]


class UsageError(ValueError):
    """A bad command line value (an unknown split or subset): exit status 2, not a data problem."""


@dataclass(frozen=True)
class Problem:
    """One finding. ``where`` names the file (and entry); errors make the command fail, warnings do not."""

    kind: str
    split: str
    subset: str
    where: str
    detail: str
    severity: Severity = "error"


@dataclass(frozen=True)
class CountEffect:
    """An evaluation (or training) count as the files give it and after dropping the bad entries.

    ``before`` is ``None`` where the file that defines it could not be read at all.
    """

    split: str
    subset: str
    protocol: str
    what: str
    before: int | None
    after: int


@dataclass
class ImageUse:
    """An image the annotations need: where it should be, and every (split, subset, entry) that uses it."""

    path: Path | None
    uses: list[tuple[str, str, str]] = field(default_factory=list)
    problem: str | None = None  # set when the file cannot even be located (e.g. ambiguous extension)


@dataclass
class CheckReport:
    dataset: str
    root: str
    annotations_root: str
    splits: list[str]
    subsets: list[str]
    images_checked: int
    problems: list[Problem]
    effects: list[CountEffect]
    entries: dict[str, dict[str, int | None]]  # "split/subset" -> counts before/after (dataset-defined keys)
    filtered: dict[str, list[str]] = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        out["problem_counts"] = dict(Counter(p.kind for p in self.problems))
        return out


class DatasetCheck(ABC):
    """One dataset's annotation checks. Subclasses never raise on bad data: they record ``Problem``s."""

    splits: tuple[str, ...] = ()
    subsets: tuple[str, ...] = ()
    subset_name: str = "subset"

    def __init__(self, root: Path, annotations_root: Path, splits: Sequence[str], subsets: Sequence[str]) -> None:
        for split in splits:
            if split not in self.splits:
                raise UsageError(f"unknown split {split!r}; expected {', '.join(self.splits)}")
        for subset in subsets:
            if subset not in self.subsets:
                raise UsageError(f"unknown {self.subset_name} {subset!r}; expected {', '.join(self.subsets)}")
        self.root, self.annotations_root = root, annotations_root
        self.split_names, self.subset_names = list(splits), list(subsets)

    @abstractmethod
    def scan(self) -> tuple[list[Problem], dict[str, ImageUse]]:
        """Parse the annotations: their problems, and every image they need (by id)."""

    @abstractmethod
    def entries(self, bad_images: set[str]) -> dict[str, dict[str, int | None]]:
        """Per ``"split/subset"``: annotation entry counts before and after filtering."""

    @abstractmethod
    def effects(self, bad_images: set[str]) -> list[CountEffect]:
        """The evaluation counts before and after dropping bad entries and the entries using bad images."""

    @abstractmethod
    def filtered_files(self, bad_images: set[str]) -> tuple[dict[str, Any], list[str]]:
        """The filtered copy: ``{relative path: JSON value}``, and the files it cannot write (with why)."""


CHECKS: Registry[DatasetCheck] = Registry("dataset check")


# ---------------------------------------------------------------------------------------------- FashionIQ
@dataclass
class _FiqFiles:
    """What one split/category's two files hold, leniently parsed."""

    split_raw: int | None = None  # entries in the split file (None: unreadable)
    split_ids: list[str] | None = None  # valid, de-duplicated ids (None: unreadable)
    caption_raw: list[Any] | None = None  # the raw caption entries (None: unreadable)
    captions: list[FashionIQCaption] = field(default_factory=list)  # valid, de-duplicated, ids in the split


@CHECKS.register("fashioniq")
class FashionIQCheck(DatasetCheck):
    """FashionIQ: split files, caption files and ``images/<id>.<png|jpg>`` (see ``ctiir.datamodules.fashioniq``)."""

    splits = SPLITS
    subsets = CATEGORIES
    subset_name = "category"

    def __init__(self, root: Path, annotations_root: Path, splits: Sequence[str], subsets: Sequence[str]) -> None:
        super().__init__(root, annotations_root, splits, subsets)
        self.files: dict[tuple[str, str], _FiqFiles] = {}
        self.images = ImageFolder(root / "images")

    def _read_split(self, split: str, cat: str, problems: list[Problem]) -> _FiqFiles:
        state = _FiqFiles()
        path = split_file(self.annotations_root, cat, split)
        try:
            data = read_json(path)
            if not isinstance(data, list):
                raise AnnotationError(f"{path}: expected a JSON list at the top level, got {type(data).__name__}")
        except AnnotationError as err:
            problems.append(Problem("malformed-file", split, cat, str(path), str(err)))
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

    def _read_captions(self, split: str, cat: str, state: _FiqFiles, problems: list[Problem]) -> None:
        path = caption_file(self.annotations_root, cat, split)
        try:
            data = read_json(path)
            if not isinstance(data, list):
                raise AnnotationError(f"{path}: expected a JSON list at the top level, got {type(data).__name__}")
        except AnnotationError as err:
            problems.append(Problem("malformed-file", split, cat, str(path), str(err)))
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
            ids = [x for x in (c.candidate, c.target) if x is not None]
            absent = [x for x in ids if in_split is not None and x not in in_split]
            if absent:
                problems.append(
                    Problem(
                        "absent-id",
                        split,
                        cat,
                        c.source,
                        f"{', '.join(absent)} not in {split_file(self.annotations_root, cat, split).name}",
                    )
                )
                continue
            state.captions.append(c)

    def scan(self) -> tuple[list[Problem], dict[str, ImageUse]]:
        problems: list[Problem] = []
        uses: dict[str, ImageUse] = {}

        def use(image_id: str, split: str, cat: str, where: str) -> None:
            if image_id not in uses:
                try:
                    uses[image_id] = ImageUse(self.images.find(image_id))
                except DataError as err:
                    uses[image_id] = ImageUse(None, problem=str(err))
            uses[image_id].uses.append((split, cat, where))

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
                    use(image_id, split, cat, f"{path} entry {i}")
                for c in state.captions:
                    for image_id in (c.candidate, c.target):
                        if image_id is not None:
                            use(image_id, split, cat, c.source)
        return problems, uses

    @staticmethod
    def _kept(state: _FiqFiles, bad: set[str]) -> tuple[list[str] | None, list[FashionIQCaption]]:
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
        for (split, cat), state in self.files.items():
            ids, captions = self._kept(state, bad_images)
            raw_queries = None if state.caption_raw is None else len(state.caption_raw)
            if split == "train":
                out.append(CountEffect(split, cat, "training", "triplets", raw_queries, len(captions)))
            if split != "val":
                continue
            gallery = set(ids or [])
            answerable = [c for c in captions if c.target in gallery]
            out.append(CountEffect(split, cat, "original", "gallery", state.split_raw, len(gallery)))
            out.append(CountEffect(split, cat, "original", "queries", raw_queries, len(answerable)))
            raw_union: int | None = None
            if state.caption_raw is not None:
                names = [e.get(k) for e in state.caption_raw if isinstance(e, dict) for k in ("candidate", "target")]
                raw_union = len({n for n in names if isinstance(n, str)})
            out.append(CountEffect(split, cat, "val-split", "gallery", raw_union, len(val_split_gallery(captions))))
            out.append(CountEffect(split, cat, "val-split", "queries", raw_queries, len(captions)))
        return out

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


# ---------------------------------------------------------------------------------------------- images
def decode_error(path: Path) -> str | None:
    """Fully decode an image; the reason it cannot be used, or ``None`` if it is fine."""
    try:
        with Image.open(path) as img:
            img.load()
    except FileNotFoundError:
        return "file not found"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return f"{type(err).__name__}: {err}"
    return None


def verify_images(paths: dict[str, Path], workers: int, progress: bool) -> dict[str, str]:
    """Decode every image in a thread pool (PIL releases the GIL while decoding): ``{id: why it is bad}``."""
    ids = list(paths)
    bad: dict[str, str] = {}
    columns = (TextColumn("decoding images"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True, disable=not progress) as bar:
        task = bar.add_task("decode", total=len(ids))
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for image_id, error in zip(ids, pool.map(lambda i: decode_error(paths[i]), ids), strict=True):
                if error is not None:
                    bad[image_id] = error
                bar.advance(task)
    return bad


def image_problems(uses: dict[str, ImageUse], corrupt: dict[str, str], folder: str) -> list[Problem]:
    """One problem per bad image and per split/subset that uses it, located at its first use there."""
    problems: list[Problem] = []
    for image_id, use in uses.items():
        if use.problem is not None:
            kind, detail = "ambiguous-image", use.problem
        elif use.path is None:
            kind, detail = "missing-image", f"no image file for {image_id} in {folder}"
        elif image_id in corrupt:
            kind, detail = "corrupt-image", f"{use.path}: {corrupt[image_id]}"
        else:
            continue
        first: dict[tuple[str, str], str] = {}
        for split, subset, where in use.uses:
            first.setdefault((split, subset), where)
        n = len(use.uses)
        for (split, subset), where in first.items():
            problems.append(
                Problem(kind, split, subset, where, f"{detail} (used by {n} entr{'y' if n == 1 else 'ies'})")
            )
    return problems


# ---------------------------------------------------------------------------------------------- core
def run_check(
    dataset: str,
    root: str | Path,
    annotations_root: str | Path | None = None,
    splits: Sequence[str] | None = None,
    subsets: Sequence[str] | None = None,
    workers: int = 8,
    progress: bool = False,
) -> tuple[CheckReport, DatasetCheck, set[str]]:
    """Check one dataset: the report, the checker (for a filtered copy) and the ids of unusable images."""
    root = Path(root)
    ann = Path(annotations_root) if annotations_root is not None else root
    if not root.is_dir():
        raise UsageError(f"dataset root {root} is not a folder")
    if not ann.is_dir():
        raise UsageError(f"annotations root {ann} is not a folder")
    cls = CHECKS.get(dataset)
    checker = cls(root, ann, list(splits or cls.splits), list(subsets or cls.subsets))  # type: ignore[call-arg]
    problems, uses = checker.scan()
    corrupt = verify_images({i: u.path for i, u in uses.items() if u.path is not None}, workers, progress)
    problems += image_problems(uses, corrupt, str(root / "images"))
    bad = {i for i, u in uses.items() if u.path is None or i in corrupt}
    report = CheckReport(
        dataset=dataset,
        root=str(root),
        annotations_root=str(ann),
        splits=checker.split_names,
        subsets=checker.subset_names,
        images_checked=sum(u.path is not None for u in uses.values()),
        problems=problems,
        effects=checker.effects(bad),
        entries=checker.entries(bad),
    )
    return report, checker, bad


def write_filtered(out: str | Path, files: dict[str, Any], sources: Sequence[Path]) -> list[Path]:
    """Write the filtered annotation files under ``out``: never inside a source root, never over a file."""
    out = Path(out)
    resolved = out.resolve()
    for source in sources:
        src = source.resolve()
        if resolved == src or src in resolved.parents:
            raise UsageError(f"--write-filtered {out} is inside the source root {source}; choose a folder outside it")
    targets = [out / rel for rel in files]
    existing = [t for t in targets if t.exists()]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise UsageError(
            f"--write-filtered: {existing[0]} already exists{more}; refusing to overwrite, choose an empty folder"
        )
    written = []
    for target, data in zip(targets, files.values(), strict=True):
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("x", encoding="utf-8") as handle:
            json.dump(data, handle, indent=4)
            handle.write("\n")
        written.append(target)
    return written


# ---------------------------------------------------------------------------------------------- output
def _count(value: int | None) -> str:
    return "unreadable" if value is None else f"{value:,}"


def _short(where: str, report: CheckReport) -> str:
    """A path relative to the annotations root, to keep the table narrow (the JSON keeps full paths)."""
    prefix = report.annotations_root.rstrip("/") + "/"
    return where[len(prefix) :] if where.startswith(prefix) else where


def print_report(report: CheckReport, console: Console, max_rows: int) -> None:
    summary = Table(title=f"check-data: {report.dataset} at {report.root}")
    for col in ("split", "subset", "split ids", "caption entries", "errors", "warnings", "problems"):
        summary.add_column(col, justify="right" if col in ("errors", "warnings") else "left", overflow="fold")
    for key, counts in report.entries.items():
        split, subset = key.split("/", 1)
        here = [p for p in report.problems if (p.split, p.subset) == (split, subset)]
        kinds = Counter(p.kind for p in here)
        summary.add_row(
            split,
            subset,
            f"{_count(counts['split_ids_after'])} / {_count(counts['split_ids_before'])}",
            f"{_count(counts['caption_entries_after'])} / {_count(counts['caption_entries_before'])}",
            str(sum(p.severity == "error" for p in here)),
            str(sum(p.severity == "warning" for p in here)),
            ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "-",
        )
    console.print(summary)
    console.print("(split ids and caption entries: kept / in the files)")
    if report.effects:
        effects = Table(title="counts before -> after dropping the bad entries")
        for col in ("split", "subset", "protocol", "what", "before", "after", "change"):
            effects.add_column(col)
        for e in report.effects:
            change = "" if e.before is None else f"{e.after - e.before:+,}"
            effects.add_row(e.split, e.subset, e.protocol, e.what, _count(e.before), f"{e.after:,}", change)
        console.print(effects)
    if report.problems:
        table = Table(
            title=f"problems ({len(report.errors)} errors, {len(report.problems) - len(report.errors)} warnings)"
        )
        for col in ("severity", "kind", "split", "subset", "where", "detail"):
            table.add_column(col, overflow="fold")
        for p in report.problems[:max_rows]:
            table.add_row(p.severity, p.kind, p.split, p.subset, _short(p.where, report), p.detail)
        console.print(table)
        if len(report.problems) > max_rows:
            console.print(f"... and {len(report.problems) - max_rows} more (all of them in --json)")
    console.print(
        f"[bold]{'OK' if report.ok else 'PROBLEMS FOUND'}[/bold]: {report.images_checked:,} images decoded, "
        f"{len(report.errors)} errors, {len(report.problems) - len(report.errors)} warnings"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctiir check-data",
        description="Check a dataset's annotations and images; exit 1 if anything is wrong, 0 if clean.",
    )
    parser.add_argument("--dataset", required=True, choices=CHECKS.names())
    parser.add_argument("--root", required=True, help="the dataset folder (images/ and, by default, the annotations)")
    parser.add_argument("--annotations-root", default=None, help="read captions/ and image_splits/ from here instead")
    parser.add_argument("--categories", "--subsets", dest="subsets", nargs="+", default=None, help="default: all")
    parser.add_argument("--splits", nargs="+", default=None, help="default: all (train val test)")
    parser.add_argument(
        "--write-filtered", metavar="OUT", default=None, help="write annotations without the bad entries"
    )
    parser.add_argument("--json", metavar="REPORT", default=None, help="also write the full report as JSON")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="image-decoding threads")
    parser.add_argument("--max-rows", type=int, default=50, help="problems shown in the table (all go to --json)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def check_data_main(argv: list[str] | None = None) -> int:
    """``ctiir check-data``: 0 when clean, 1 when problems were found, 2 on a usage error."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    console, errors = Console(), Console(stderr=True)
    try:
        report, checker, bad = run_check(
            args.dataset,
            args.root,
            args.annotations_root,
            args.splits,
            args.subsets,
            args.workers,
            not args.no_progress,
        )
        if args.write_filtered is not None:
            files, not_written = checker.filtered_files(bad)
            written = write_filtered(args.write_filtered, files, [Path(args.root), checker.annotations_root])
            report.filtered = {"written": [str(p) for p in written], "not_written": not_written}
    except (DataError, UsageError) as err:
        errors.print(f"[red]ctiir check-data:[/red] {err}", highlight=False)
        return 2
    print_report(report, console, args.max_rows)
    if report.filtered:
        console.print(f"filtered copy: {len(report.filtered['written'])} files written under {args.write_filtered}")
        for line in report.filtered["not_written"]:
            console.print(f"  not written: {line}")
        console.print(
            f"use it with: --data.init_args.root {args.root} --data.init_args.annotations_root {args.write_filtered}"
        )
    if args.json is not None:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return 0 if report.ok else 1
