"""The protocol builder's rules, one by one, on hand-made sources (the dataset tests run it on real files)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ctiir.datamodules.errors import AnnotationError, DataError
from ctiir.datamodules.protocol import ComposedQuery, ComposedSource, GalleryImage, ProtocolSpec, build_evaluation

SPEC = ProtocolSpec("toy", ks=(1, 5), headline=("R@1",), exclude_reference=True, subset_ks=(1,))


@pytest.fixture()
def images(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name in "abcdefg":
        path = tmp_path / f"{name}.png"
        path.write_bytes(b"present")  # the builder only checks presence; decoding is the datasets' job
        out[name] = path
    return out


def query(images: dict[str, Path], ref: str, target: str | None, text: str = "x", source: str = "", **kw) -> ComposedQuery:
    name = kw.pop("name", f"{ref}->{target}:{text}")
    return ComposedQuery(name, ref, images[ref], text, target, images[target] if target else None, source=source or name, **kw)


def gallery(images: dict[str, Path], names: str) -> list[GalleryImage]:
    return [GalleryImage(n, images[n], f"list entry {i}") for i, n in enumerate(names)]


def test_positions_exclusion_and_members(images: dict[str, Path]) -> None:
    queries = [
        query(images, "a", "b", members=("a", "b", "c")),
        query(images, "d", "d"),  # its reference is its target: not excluded
        query(images, "g", "c"),  # reference outside the gallery
    ]
    ev = build_evaluation(ComposedSource(SPEC, "s", queries, gallery(images, "abcd")), "val")
    assert ev.key == "toy/s" and ev.gallery_names == list("abcd")
    assert [(r.target_index, r.reference_index, r.excluded_index) for r in ev.queries] == [(1, 0, 0), (3, 3, -1), (2, -1, -1)]
    assert ev.queries[0].member_indices == (0, 1, 2) and ev.member_width == 3 and ev.reference_is_target == 1


def test_a_derived_gallery_is_the_queries_images_in_first_seen_order(images: dict[str, Path]) -> None:
    queries = [query(images, "c", "a"), query(images, "b", "c"), query(images, "a", "e")]
    ev = build_evaluation(ComposedSource(SPEC, None, queries), "val", max_queries=1)
    assert ev.gallery_names == ["c", "a", "b", "e"], "reference, then target; built before the query limit"
    assert len(ev.queries) == 1


def test_annotation_errors(images: dict[str, Path]) -> None:
    with pytest.raises(DataError, match=r"toy val: the gallery lists image 'a' twice"):
        build_evaluation(ComposedSource(SPEC, None, [], gallery(images, "aba")), "val")
    with pytest.raises(AnnotationError, match=r"q1: target 'e' of this toy val query is not in the gallery"):
        build_evaluation(ComposedSource(SPEC, None, [query(images, "a", "e", name="q1")], gallery(images, "ab")), "val")
    with pytest.raises(AnnotationError, match=r"image-set member 'f'"):
        source = ComposedSource(SPEC, None, [query(images, "a", "b", members=("a", "f"))], gallery(images, "ab"))
        build_evaluation(source, "val")


def test_a_repeated_entry_is_an_error_but_one_entry_may_give_alike_queries(images: dict[str, Path]) -> None:
    twice = [query(images, "a", "b", source="file entry 0"), query(images, "a", "b", source="file entry 3")]
    with pytest.raises(AnnotationError, match=r"file entry 3: this toy val query repeats file entry 0"):
        build_evaluation(ComposedSource(SPEC, None, twice, gallery(images, "ab")), "val")
    swapped = [query(images, "a", "b", source="e0", name="n"), query(images, "a", "b", source="e0", name="n/swapped")]
    assert len(build_evaluation(ComposedSource(SPEC, None, swapped, gallery(images, "ab")), "val").queries) == 2


def test_missing_images_error_names_the_entry_or_skip_counts(images: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    images["c"].unlink()
    queries = [
        query(images, "a", "b", members=("a", "b")),
        query(images, "b", "c"),  # its target is gone
        query(images, "a", "d", members=("a", "c", "d")),  # a member is gone
        query(images, "c", "a"),  # its reference is gone
    ]
    source = ComposedSource(SPEC, None, queries, gallery(images, "abcd"))
    with pytest.raises(DataError, match=r"missing image .*c\.png in toy val gallery, annotation entry list entry 2"):
        build_evaluation(source, "val")
    with caplog.at_level(logging.WARNING):
        ev = build_evaluation(source, "val", on_missing="skip")
    assert ev.gallery_names == ["a", "b", "d"] and [r.query.name for r in ev.queries] == [queries[0].name]
    assert (ev.skipped_gallery, ev.skipped_queries) == (1, 3)
    assert "skipped 1 of 4 gallery images and 3 of 4 queries" in caplog.text and "removed 2 queries whose target" in caplog.text
    plain = [query(images, q.reference_id, q.target_id) for q in queries]  # image sets need an explicit gallery
    derived = build_evaluation(ComposedSource(SPEC, None, plain), "val", on_missing="skip", log_skips=False)
    assert derived.gallery_names == ["a", "b", "d"] and derived.skipped_gallery == 0 and len(derived.queries) == 2
    with pytest.raises(ValueError, match="image sets need an explicit gallery"):
        build_evaluation(ComposedSource(SPEC, None, queries), "val", on_missing="skip")
