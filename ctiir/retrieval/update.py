"""``--update`` planning: which images to encode again, which embeddings to keep, which to drop.

An image is re-encoded when it is new or when its size or mtime changed; an image no longer on disk is
dropped. Comparing size and mtime (not contents) keeps an update of a large unchanged gallery to one
``stat`` per file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ctiir.retrieval.scan import GalleryFile
from ctiir.retrieval.storage import GalleryIndex


@dataclass
class UpdatePlan:
    """``keep[new_row] = old_row`` for unchanged images; ``encode``: new rows to encode."""

    keep: dict[int, int] = field(default_factory=dict)
    encode: list[int] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{len(self.keep)} unchanged, {len(self.added)} new, {len(self.changed)} changed, "
            f"{len(self.dropped)} deleted"
        )


def plan_update(old: GalleryIndex | None, files: list[GalleryFile]) -> UpdatePlan:
    """Compare the files on disk now with what ``old`` was built from (``None``: encode everything)."""
    plan = UpdatePlan()
    previous: dict[str, tuple[int, str, int, int]] = {}
    if old is not None:
        src = old.sources
        previous = {gid: (row, src.paths[row], src.size[row], src.mtime_ns[row]) for row, gid in enumerate(old.ids)}
    current = {f.id for f in files}
    for new_row, f in enumerate(files):
        before = previous.get(f.id)
        if before is None:
            plan.added.append(f.id)
            plan.encode.append(new_row)
        elif before[1:] != (f.path, f.size, f.mtime_ns):
            plan.changed.append(f.id)
            plan.encode.append(new_row)
        else:
            plan.keep[new_row] = before[0]
    plan.dropped = [gid for gid in previous if gid not in current]
    return plan
