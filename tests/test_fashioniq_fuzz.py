"""Fuzzing the FashionIQ parsers: any file either parses to valid records or raises ``AnnotationError``.

An independent oracle written from the format's rules says which inputs are valid, so the parsers are also
checked not to reject good entries.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctiir.datamodules.errors import AnnotationError
from ctiir.datamodules.fashioniq import read_fashioniq_captions, read_fashioniq_split

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
good_ids = st.sampled_from(["B00X", "B00Y", "ok_1", "S12AB", "a.b"])
bad_ids = st.sampled_from(["..", "a/b", "c\\d", "x..y", "", " ", "a\x00"]) | st.text(max_size=6) | scalars
ids = st.integers(0, 4).flatmap(lambda k: bad_ids if k == 0 else good_ids)
caption_text = st.sampled_from(["is red", "darker.", "", "  ", "has dots"]) | st.text(max_size=10)
caption_lists = st.integers(0, 4).flatmap(
    lambda k: st.lists(caption_text | scalars, max_size=3) if k == 0 else st.lists(caption_text, min_size=2, max_size=2)
)


@st.composite
def caption_entries(draw: st.DrawFn) -> Any:
    """Mostly entry-shaped objects (each key right, wrong or absent; sometimes extra keys), sometimes anything."""
    if draw(st.integers(0, 19)) == 0:
        return draw(json_values)
    entry: dict[str, Any] = {}
    for key, good in (("candidate", ids), ("target", ids), ("captions", caption_lists)):
        choice = draw(st.integers(0, 9))
        if choice < 8:
            entry[key] = draw(good)
        elif choice == 8:
            entry[key] = draw(json_values)
    if draw(st.integers(0, 4)) == 0:
        entry.update(draw(st.dictionaries(st.text(max_size=5), json_values, max_size=2)))
    return entry


def valid_id(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip()) and not any(s in value for s in ("/", "\\", "..", "\x00"))


def valid_entry(entry: Any, split: str) -> bool:
    if not isinstance(entry, dict) or not valid_id(entry.get("candidate")):
        return False
    if "target" in entry or split != "test":
        if not valid_id(entry.get("target")):
            return False
    caps = entry.get("captions")
    return (
        isinstance(caps, list)
        and len(caps) == 2
        and all(isinstance(c, str) for c in caps)
        and any(c.strip() for c in caps)
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fuzz")
    (path / "captions").mkdir()
    (path / "image_splits").mkdir()
    return path


def put(root: Path, kind: str, split: str, content: bytes) -> None:
    folder, prefix = ("captions", "cap") if kind == "cap" else ("image_splits", "split")
    (root / folder / f"{prefix}.dress.{split}.json").write_bytes(content)


@SETTINGS
@given(data=st.lists(caption_entries(), max_size=4) | json_values, split=st.sampled_from(["train", "val", "test"]))
def test_caption_parser(root: Path, data: Any, split: str) -> None:
    put(root, "cap", split, json.dumps(data).encode())
    expected = isinstance(data, list) and all(valid_entry(e, split) for e in data)
    try:
        records = read_fashioniq_captions(root, "dress", split)
    except AnnotationError as err:
        assert not expected, f"rejected a valid file: {err}"
        assert "cap.dress" in str(err)
        return
    assert expected, "accepted an invalid file"
    assert len(records) == len(data)
    for i, (record, entry) in enumerate(zip(records, data, strict=True)):
        assert record.index == i and record.candidate == entry["candidate"]
        assert record.target == entry.get("target")
        assert record.captions == tuple(entry["captions"])


@SETTINGS
@given(data=st.lists(ids, max_size=6) | json_values, split=st.sampled_from(["train", "val", "test"]))
def test_split_parser(root: Path, data: Any, split: str) -> None:
    put(root, "split", split, json.dumps(data).encode())
    expected = isinstance(data, list) and all(valid_id(v) for v in data) and len(set(data)) == len(data)
    try:
        result = read_fashioniq_split(root, "dress", split)
    except AnnotationError as err:
        assert not expected, f"rejected a valid file: {err}"
        assert "split.dress" in str(err)
        return
    assert expected and result == data


VALID = json.dumps(
    [{"candidate": f"B{i}", "target": f"T{i}", "captions": ["is red", "has dots"]} for i in range(4)], indent=4
).encode()


@SETTINGS
@given(cut=st.integers(0, len(VALID)), junk=st.binary(max_size=6))
def test_truncated_or_corrupted_files(root: Path, cut: int, junk: bytes) -> None:
    put(root, "cap", "val", VALID[:cut] + junk)
    put(root, "split", "val", VALID[:cut] + junk)
    for read in (read_fashioniq_captions, read_fashioniq_split):
        try:
            result = read(root, "dress", "val")
        except AnnotationError:
            continue
        # only a cut that leaves whole JSON (plus harmless whitespace) can parse, and then it is the file itself
        assert read is read_fashioniq_captions and len(result) == 4


@SETTINGS
@given(content=st.binary(max_size=40))
def test_arbitrary_bytes(root: Path, content: bytes) -> None:
    put(root, "cap", "train", content)
    put(root, "split", "train", content)
    for read in (read_fashioniq_captions, read_fashioniq_split):
        try:
            result = read(root, "dress", "train")
        except AnnotationError:
            continue
        assert result == json.loads(content.decode("utf-8"))  # parsed only if it is a valid file
