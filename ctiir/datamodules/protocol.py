"""The evaluation protocol, in one place: what is in the gallery, which queries count, what is excluded.

Every dataset's reader (FashionIQ, Shoes, CIRR, custom catalogues and the synthetic benchmark) turns its own
files into a :class:`ComposedSource`: a :class:`ProtocolSpec` (the metric-key name, the Ks, the headline, whether
the reference is removed from the ranking), a gallery of :class:`GalleryImage` ``(id, path, where it is
listed)`` and a list of :class:`ComposedQuery` records. :func:`build_evaluation` then applies the rules below,
the same for all of them, and returns an :class:`EvaluationSet`: pure data, no image decoded, no transform.
Training (through ``CTIIRDataModule.composed_tasks``), ``ctiir check-data``, the CIRR submission and the tests
all go through it, so a count asserted in a test is the count that training evaluates.

The rules:

- **Gallery.** Either the reader's explicit list (FashionIQ's split file, Shoes' eval names, CIRR's split
  file, a catalogue's images) or, when the reader gives none, the images of the evaluated queries: each
  query's reference, then its target, in first-seen order (FashionIQ's ``val-split`` protocol). An image
  listed twice is an error.
- **Missing images** (``on_missing``). ``"error"``: the first missing image is a ``DataError`` naming the
  file, the protocol and split, and the annotation entry. ``"skip"``: a missing gallery image is removed; a
  query whose target was removed, or whose reference (or, for a derived gallery, target) image is missing,
  is removed; one warning gives both counts. A target or set member that is not in the gallery at all is an
  ``AnnotationError``, whatever ``on_missing`` says: such a query could never be answered.
- **Query limit** (``max_queries``): the first N evaluated queries, after the missing-image rule; a derived
  gallery is built from all of them, so a quick run ranks against the full gallery.
- **Reference exclusion.** A protocol with ``exclude_reference`` removes each query's reference from its
  ranking (the items below move up one place), except where the reference *is* the target: removing it
  would remove the answer, so such a query keeps it (``EvaluationSet.reference_is_target`` counts them).
- **Member sets** (CIRR's ``img_set``): each query's members as gallery positions; Rsubset ranks within them.
- **Repeated queries.** Two queries from different annotation entries with the same reference, target,
  text and members are an ``AnnotationError`` naming both entries (a repeated annotation entry would be scored twice);
  ``ctiir check-data`` reports the same thing as ``duplicate-triplet`` and its filtered copy drops it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ctiir.datamodules.errors import AnnotationError, DataError
from ctiir.datamodules.images import OnMissing, is_file, partition_present
from ctiir.datamodules.records import ImageText

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProtocolSpec:
    """How a task is scored. ``name`` prefixes its metric keys (``val/<name>/<subset>/R@10``)."""

    name: str
    ks: tuple[int, ...]
    headline: tuple[str, ...]
    exclude_reference: bool
    subset_ks: tuple[int, ...] = ()


@dataclass(frozen=True)
class GalleryImage:
    """One gallery image. ``source`` says where the annotations list it (default in messages: the id)."""

    id: str
    path: Path
    source: str = ""


@dataclass(frozen=True)
class ComposedQuery:
    """One composed query as the annotations give it, before any image is checked.

    ``name`` identifies it in results and submissions (unique within a task); ``target_id`` is ``None`` where
    targets are withheld (test servers); ``target`` is the target's file, needed when the gallery is derived
    from the queries; ``members`` is CIRR's image set; ``groups`` are query attributes that results can be
    broken down by (e.g. ``{"scenario": "text-led"}``).
    """

    name: str
    reference_id: str
    reference: Path
    text: str | list[str]
    target_id: str | None
    target: Path | None = None
    members: tuple[str, ...] = ()
    source: str = ""
    groups: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class ComposedSource:
    """What a reader hands the builder for one subset: ``gallery=None`` derives it from the queries."""

    protocol: ProtocolSpec
    subset: str | None
    queries: Sequence[ComposedQuery]
    gallery: Sequence[GalleryImage] | None = None


@dataclass(frozen=True)
class ResolvedQuery:
    """A query with its images as gallery positions.

    ``reference_index`` is the reference's position (``-1``: not in the gallery); ``excluded_index`` is what
    the ranking removes under ``exclude_reference`` (``-1`` where the reference is the target);
    ``target_index`` is ``-1`` where targets are withheld.
    """

    query: ComposedQuery
    target_index: int
    reference_index: int
    excluded_index: int
    member_indices: tuple[int, ...] = ()


@dataclass(frozen=True)
class EvaluationSet:
    """A protocol applied to one subset of one split: what ``RecallAtK`` ranks, as plain data."""

    protocol: ProtocolSpec
    subset: str | None
    split: str
    gallery: tuple[GalleryImage, ...]
    queries: tuple[ResolvedQuery, ...]
    skipped_gallery: int = 0
    skipped_queries: int = 0
    reference_is_target: int = 0

    @property
    def key(self) -> str:
        """The metric-key prefix, e.g. ``fashioniq-original/dress``."""
        return f"{self.protocol.name}/{self.subset}" if self.subset else self.protocol.name

    @property
    def gallery_names(self) -> list[str]:
        return [g.id for g in self.gallery]

    @property
    def query_names(self) -> list[str]:
        return [r.query.name for r in self.queries]

    @property
    def member_width(self) -> int:
        """The widest member set (0 without sets): query items pad ``member_ids`` to it with ``-1``."""
        return max((len(r.member_indices) for r in self.queries), default=0)


def describe(protocol: ProtocolSpec, subset: str | None, split: str) -> str:
    """How messages name a task: ``fashioniq-original dress val``, ``shoes test``."""
    return " ".join(part for part in (protocol.name, subset, split) if part)


def build_evaluation(
    source: ComposedSource,
    split: str,
    *,
    on_missing: OnMissing = "error",
    max_queries: int | None = None,
    is_present: Callable[[Path], bool] = is_file,
    log_skips: bool = True,
) -> EvaluationSet:
    """Apply the protocol rules (module docstring) to one reader's gallery and queries.

    ``is_present`` decides whether an image can be used; ``ctiir check-data`` passes one that also rejects the
    images it found corrupt, so that its "after" counts are the ones training would evaluate (it reports
    the skips itself, hence ``log_skips=False``).
    """
    what = describe(source.protocol, source.subset, split)
    if source.gallery is None and any(q.members for q in source.queries):
        raise ValueError(f"{what}: image sets need an explicit gallery (a derived one holds only references and targets)")
    removed: set[str] = set()
    gallery: list[GalleryImage] | None = None
    listed: set[str] | None = None
    if source.gallery is not None:
        seen: set[str] = set()
        for image in source.gallery:
            if image.id in seen:
                raise DataError(f"{what}: the gallery lists image {image.id!r} twice ({image.source or image.id})")
            seen.add(image.id)
        gallery, _ = partition_present(
            list(source.gallery),
            lambda g: [g.path],
            on_missing=on_missing,
            what=f"{what} gallery",
            describe=lambda g: g.source or g.id,
            is_present=is_present,
        )
        listed = {g.id for g in gallery}
        removed = seen - listed

    seen_queries: dict[tuple[object, ...], ComposedQuery] = {}
    for q in source.queries:
        text = tuple(q.text) if isinstance(q.text, list) else q.text
        key = (q.reference_id, q.target_id, text, q.members)
        if key in seen_queries and seen_queries[key].source != q.source:  # one entry may give two alike queries
            raise AnnotationError(
                f"{q.source or q.name}: this {what} query repeats {seen_queries[key].source or seen_queries[key].name} "
                "(same reference, target and text); remove one (`ctiir check-data --write_filtered` does)"
            )
        seen_queries[key] = q
    candidates: list[ComposedQuery] = []
    lost_target = 0
    for q in source.queries:
        if listed is not None:
            needed = ([("target", q.target_id)] if q.target_id is not None else []) + [
                ("image-set member", m) for m in q.members
            ]
            for role, image_id in needed:
                if image_id not in listed and image_id not in removed:
                    raise AnnotationError(
                        f"{q.source or q.name}: {role} {image_id!r} of this {what} query is not in the gallery"
                    )
            if (q.target_id is not None and q.target_id in removed) or removed.intersection(q.members):
                lost_target += 1  # its answer, or part of the set its subset recall ranks, is gone
                continue
        candidates.append(q)

    def images(q: ComposedQuery) -> list[Path]:
        own = [q.reference]
        if gallery is None and q.target is not None:
            own.append(q.target)  # a derived gallery holds the target only if its file is there
        return own

    usable, _ = partition_present(
        candidates,
        images,
        on_missing=on_missing,
        what=f"{what} queries",
        describe=lambda q: q.source or q.name,
        is_present=is_present,
    )
    if gallery is None:
        gallery = derived_gallery(usable)
    total_queries = len(source.queries)
    skipped_queries = total_queries - len(usable)
    if log_skips and (removed or skipped_queries):
        log.warning(
            "%s: skipped %d of %d gallery images and %d of %d queries with missing images (on_missing='skip')%s",
            what,
            len(removed),
            len(gallery) + len(removed),
            skipped_queries,
            total_queries,
            f"; removed {lost_target} queries whose target (or image-set member) image is missing" if lost_target else "",
        )
    if max_queries is not None:
        usable = usable[:max_queries]

    index = {g.id: i for i, g in enumerate(gallery)}
    resolved: list[ResolvedQuery] = []
    self_targets = 0
    for q in usable:
        target = index[q.target_id] if q.target_id is not None else -1
        reference = index.get(q.reference_id, -1)
        excluded = reference
        if q.target_id is not None and q.reference_id == q.target_id:
            excluded, self_targets = -1, self_targets + 1
        members = tuple(index[m] for m in q.members if m in index)
        resolved.append(ResolvedQuery(q, target, reference, excluded, members))
    return EvaluationSet(
        protocol=source.protocol,
        subset=source.subset,
        split=split,
        gallery=tuple(gallery),
        queries=tuple(resolved),
        skipped_gallery=len(removed),
        skipped_queries=skipped_queries,
        reference_is_target=self_targets,
    )


def derived_gallery(queries: Sequence[ComposedQuery]) -> list[GalleryImage]:
    """The images of ``queries``: each reference, then its target, in first-seen order."""
    seen: dict[str, GalleryImage] = {}
    for q in queries:
        seen.setdefault(q.reference_id, GalleryImage(q.reference_id, q.reference, q.source))
        if q.target_id is not None and q.target is not None:
            seen.setdefault(q.target_id, GalleryImage(q.target_id, q.target, q.source))
    return list(seen.values())


# ---------------------------------------------------------------------------------------------- image <-> text
@dataclass(frozen=True)
class ImageTextSet:
    """text->image and image->text retrieval over image-caption records (Stage I and II's own tasks).

    ``images`` holds one record per image id (its first caption is the image->text gallery's text);
    ``captions`` are the text->image queries, ``targets`` their images' positions in ``images``.
    """

    protocol: str
    split: str
    images: tuple[ImageText, ...]
    captions: tuple[ImageText, ...]
    targets: tuple[int, ...]


IMAGE_TEXT_KS: tuple[int, ...] = (1, 5, 10)
IMAGE_TEXT_HEADLINE: tuple[str, ...] = ("R@1", "R@5", "R@10")


def build_image_text_evaluation(
    records: Sequence[ImageText],
    protocol: str,
    split: str,
    *,
    on_missing: OnMissing = "error",
    max_queries: int | None = None,
    is_present: Callable[[Path], bool] = is_file,
) -> ImageTextSet:
    """One gallery entry per image (its first caption stands for it), every caption a query."""
    usable, skipped = partition_present(
        list(records), lambda r: [r.image], on_missing=on_missing, what=f"{protocol} {split} image-text pairs",
        is_present=is_present,
    )
    if skipped:
        log.warning("%s %s: skipped %d of %d image-text pairs with missing images", protocol, split, skipped, len(records))
    if max_queries is not None:
        usable = usable[:max_queries]
    first: dict[str, ImageText] = {}
    for r in usable:
        first.setdefault(r.image_id, r)
    position = {image_id: i for i, image_id in enumerate(first)}
    return ImageTextSet(
        protocol, split, tuple(first.values()), tuple(usable), tuple(position[r.image_id] for r in usable)
    )

