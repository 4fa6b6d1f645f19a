"""What ``ctiir check-data`` finds, and how it shows it: problems, count effects, per-file entry counts."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from rich.console import Console
from rich.table import Table

Severity = Literal["error", "warning"]


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

    ``before`` is ``None`` where the file that defines it could not be read at all. ``after`` is what the
    datamodule would use: evaluation counts come from the same protocol builder that training runs.
    """

    split: str
    subset: str
    protocol: str
    what: str
    before: int | None
    after: int


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
    # "split/subset" -> counts of annotation entries: "<what>_before" (in the files) and "<what>_after" (kept)
    entries: dict[str, dict[str, int | None]]
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


def _count(value: int | None) -> str:
    return "unreadable" if value is None else f"{value:,}"


def _short(where: str, report: CheckReport) -> str:
    """A path relative to the annotations root, to keep the table narrow (the JSON keeps full paths)."""
    prefix = report.annotations_root.rstrip("/") + "/"
    return where[len(prefix) :] if where.startswith(prefix) else where


def print_report(report: CheckReport, console: Console, max_rows: int) -> None:
    names = list(dict.fromkeys(k[: -len("_before")] for counts in report.entries.values() for k in counts if k.endswith("_before")))
    summary = Table(title=f"check-data: {report.dataset} at {report.root}")
    for col in ("split", "subset", *(n.replace("_", " ") for n in names), "errors", "warnings", "problems"):
        summary.add_column(col, justify="right" if col in ("errors", "warnings") else "left", overflow="fold")
    for key, counts in report.entries.items():
        split, subset = key.split("/", 1)
        here = [p for p in report.problems if (p.split, p.subset) == (split, subset)]
        kinds = Counter(p.kind for p in here)
        summary.add_row(
            split,
            subset,
            *(f"{_count(counts.get(f'{n}_after'))} / {_count(counts.get(f'{n}_before'))}" for n in names),
            str(sum(p.severity == "error" for p in here)),
            str(sum(p.severity == "warning" for p in here)),
            ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "-",
        )
    console.print(summary)
    console.print("(entries: kept / in the files)")
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
