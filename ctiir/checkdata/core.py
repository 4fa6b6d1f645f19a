"""The dataset-agnostic core of ``ctiir check-data``: checks, image decoding, the report and the filtered copy.

A ``DatasetCheck`` subclass (registered in ``CHECKS``) reads one dataset's annotations leniently (a bad entry
is a recorded ``Problem``, never a crash) with the same per-entry parsers as the datamodule, and says which
images they need. The evaluation counts after dropping the bad entries come from
``ctiir.datamodules.protocol.build_evaluation``, the builder that training runs, so what check-data
predicts is what a run would evaluate.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from ctiir.checkdata.report import CheckReport, CountEffect, Problem
from ctiir.datamodules.annotations import read_json
from ctiir.datamodules.errors import AnnotationError, DataError
from ctiir.datamodules.images import ImageError, load_rgb
from ctiir.datamodules.protocol import ComposedSource, build_evaluation
from ctiir.io import write_atomic
from ctiir.progress import encoding_progress
from ctiir.registry import Registry

MISSING = Path("<missing image>")  # where ``locate`` points an image that cannot be used: never "present"


class UsageError(ValueError):
    """A bad command line value (an unknown split or subset): exit status 2, not a data problem."""


@dataclass
class ImageUse:
    """An image the annotations need: where it should be, and every (split, subset, entry) that uses it."""

    path: Path | None
    uses: list[tuple[str, str, str]] = field(default_factory=list)
    problem: str | None = None  # set when the file cannot even be located (e.g. found twice)


class DatasetCheck(ABC):
    """One dataset's annotation checks. Subclasses never raise on bad data: they record ``Problem``s."""

    splits: tuple[str, ...] = ()
    subsets: tuple[str, ...] = ("all",)
    subset_name: str = "subset"

    def __init__(
        self, root: Path, annotations_root: Path, image_root: Path, splits: Sequence[str], subsets: Sequence[str]
    ) -> None:
        for split in splits:
            if split not in self.splits:
                raise UsageError(f"unknown split {split!r}; expected {', '.join(self.splits)}")
        for subset in subsets:
            if subset not in self.subsets:
                raise UsageError(f"unknown {self.subset_name} {subset!r}; expected {', '.join(self.subsets)}")
        self.root, self.annotations_root, self.image_root = root, annotations_root, image_root
        self.split_names, self.subset_names = list(splits), list(subsets)
        self.uses: dict[str, ImageUse] = {}

    @abstractmethod
    def scan(self) -> list[Problem]:
        """Parse the annotations: their problems; every image they need goes into ``self.uses`` (see use)."""

    @abstractmethod
    def entries(self, bad_images: set[str]) -> dict[str, dict[str, int | None]]:
        """Per ``"split/subset"``: annotation entry counts ``<what>_before`` and ``<what>_after``."""

    @abstractmethod
    def effects(self, bad_images: set[str]) -> list[CountEffect]:
        """The evaluation and training counts before and after dropping bad entries and bad images."""

    @abstractmethod
    def filtered_files(self, bad_images: set[str]) -> tuple[dict[str, Any], list[str]]:
        """The filtered copy: ``{relative path: JSON value, or a list of lines for .txt}``, and the files it
        cannot write (with why)."""

    @abstractmethod
    def usage_hint(self, filtered: Path) -> str:
        """The datamodule arguments that train on a filtered copy written to ``filtered``."""

    # -- shared helpers ------------------------------------------------------------------------------
    def use(self, image_id: str, locate: Callable[[str], Path | None], split: str, subset: str, where: str) -> None:
        """Record that ``where`` (in ``split``/``subset``) needs image ``image_id``; ``locate`` finds its file
        (``None``: not there) and may raise ``DataError`` for a file it cannot choose (found twice)."""
        if image_id not in self.uses:
            try:
                self.uses[image_id] = ImageUse(locate(image_id))
            except DataError as err:
                self.uses[image_id] = ImageUse(None, problem=str(err))
        self.uses[image_id].uses.append((split, subset, where))

    def locator(self, bad_images: set[str]) -> Callable[[str], Path]:
        """Image id -> its file, or ``MISSING`` for an unusable one (missing, corrupt or ambiguous)."""

        def locate(image_id: str) -> Path:
            use = self.uses.get(image_id)
            if use is None or use.path is None or image_id in bad_images:
                return MISSING / image_id
            return use.path

        return locate

    def evaluation_effects(
        self,
        source: ComposedSource,
        split: str,
        subset: str,
        label: str,
        before: tuple[int | None, int | None],
    ) -> list[CountEffect]:
        """Gallery and query counts of ``source`` as the protocol builder keeps them (``on_missing="skip"``)."""
        evaluation = build_evaluation(
            source, split, on_missing="skip", is_present=lambda p: MISSING not in p.parents, log_skips=False
        )
        return [
            CountEffect(split, subset, label, "gallery", before[0], len(evaluation.gallery)),
            CountEffect(split, subset, label, "queries", before[1], len(evaluation.queries)),
        ]


CHECKS: Registry[DatasetCheck] = Registry("dataset check")


def read_file(path: Path, kind: type, split: str, subset: str, problems: list[Problem]) -> Any | None:
    """A JSON annotation file whose top level is a ``kind`` (list or dict); ``None`` and a recorded
    ``malformed-file`` problem when it is missing, unreadable or of another shape."""
    try:
        data = read_json(path)
        if not isinstance(data, kind):
            raise AnnotationError(f"{path}: expected a JSON {kind.__name__} at the top level, got {type(data).__name__}")
    except AnnotationError as err:
        problems.append(Problem("malformed-file", split, subset, str(path), str(err)))
        return None
    return data


# ---------------------------------------------------------------------------------------------- images
def decode_error(path: Path) -> str | None:
    """Decode an image as training would (``load_rgb``); the reason it cannot be used, or ``None`` if it is fine."""
    try:
        load_rgb(path)
    except ImageError as err:
        return err.reason
    return None


def verify_images(paths: dict[str, Path], workers: int, progress: bool) -> dict[str, str]:
    """Decode every image in a thread pool (PIL releases the GIL while decoding): ``{id: why it is bad}``."""
    ids = list(paths)
    bad: dict[str, str] = {}
    with encoding_progress("decoding images", len(ids), enabled=progress, console=Console(stderr=True)) as advance:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for image_id, error in zip(ids, pool.map(lambda i: decode_error(paths[i]), ids), strict=True):
                if error is not None:
                    bad[image_id] = error
                advance(1)
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
    image_root: str | Path | None = None,
) -> tuple[CheckReport, DatasetCheck, set[str]]:
    """Check one dataset: the report, the checker (for a filtered copy) and the ids of unusable images."""
    root = Path(root)
    ann = Path(annotations_root) if annotations_root is not None else root
    images = Path(image_root) if image_root is not None else root
    for what, folder in (("dataset root", root), ("annotations root", ann), ("image root", images)):
        if not folder.is_dir():
            raise UsageError(f"{what} {folder} is not a folder")
    cls = CHECKS.get(dataset)
    checker = cls(root, ann, images, list(splits or cls.splits), list(subsets or cls.subsets))  # type: ignore[call-arg]
    problems = checker.scan()
    uses = checker.uses
    corrupt = verify_images({i: u.path for i, u in uses.items() if u.path is not None}, workers, progress)
    problems += image_problems(uses, corrupt, str(images))
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


def file_text(relative: str, data: Any) -> str:
    """How a filtered file is written: name lists (.txt) one name a line, everything else as indented JSON."""
    if relative.endswith(".txt"):
        return "".join(f"{line}\n" for line in data)
    return json.dumps(data, indent=4) + "\n"


def write_filtered(out: str | Path, files: dict[str, Any], sources: Sequence[Path]) -> list[Path]:
    """Write the filtered annotation files under ``out``: never inside a source root, never over a file."""
    out = Path(out)
    resolved = out.resolve()
    for source in sources:
        src = source.resolve()
        if resolved == src or src in resolved.parents:
            raise UsageError(f"--write_filtered {out} is inside the source root {source}; choose a folder outside it")
    targets = [out / rel for rel in files]
    existing = [t for t in targets if t.exists()]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise UsageError(
            f"--write_filtered: {existing[0]} already exists{more}; refusing to overwrite, choose an empty folder"
        )
    written = []
    for (relative, data), target in zip(files.items(), targets, strict=True):
        try:
            write_atomic(target, file_text(relative, data), overwrite=False)
        except FileExistsError as err:  # appeared since the check above
            raise UsageError(f"--write-filtered: {err}") from None
        written.append(target)
    return written
