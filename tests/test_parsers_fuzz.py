"""Fuzzing the Shoes, CIRR and custom parsers: whatever the files hold (arbitrary JSON, near-valid entries,
truncations, raw bytes), they parse to valid records or raise ``AnnotationError``, never another exception."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ctiir.datamodules.cirr import cirr_protocol, read_cirr_captions, read_cirr_split
from ctiir.datamodules.errors import AnnotationError
from ctiir.datamodules.shoes import read_shoes
from ctiir.datamodules.tables import read_image_text_pairs, read_triplets

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
names = st.sampled_from(["a.jpg", "b.jpg", "c.jpg", "d.jpg", "", "../e.jpg", "x/y.jpg"]) | text
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text
words = st.sampled_from(["is red", "has laces", "x"])
captions_text = st.sampled_from([True, True, True, False]).flatmap(lambda p: words if p else text)
json_values = st.recursive(
    scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(text, c, max_size=4), max_leaves=8
)


def near(keys: dict | st.SearchStrategy) -> st.SearchStrategy:
    """Entries built from plausible values (a dict of value strategies, or a strategy of whole entries): as
    they are (often valid), with one key dropped, or with one key's value replaced by arbitrary JSON."""
    plausible = st.fixed_dictionaries(keys) if isinstance(keys, dict) else keys

    def mutate(entry: dict) -> st.SearchStrategy:
        if not entry:
            return st.just(entry)
        key = st.sampled_from(sorted(entry))
        dropped = key.map(lambda k: {n: v for n, v in entry.items() if n != k})
        replaced = st.tuples(key, json_values).map(lambda kv: {**entry, kv[0]: kv[1]})
        return dropped | replaced

    return mostly(plausible, plausible.flatmap(mutate))


def mostly(plausible: st.SearchStrategy, *others: st.SearchStrategy) -> st.SearchStrategy:
    """``plausible`` three times in four, else one of ``others`` (so the parsers' success paths run too)."""
    return st.sampled_from([True, True, True, False]).flatmap(lambda p: plausible if p else st.one_of(*others))


def truncations(valid: str) -> st.SearchStrategy:
    return st.integers(0, len(valid)).map(lambda n: valid[:n])


def parses_or_annotation_error(fn, *args):
    try:
        return fn(*args)
    except AnnotationError:
        return None


# ---------------------------------------------------------------------------------------------- Shoes
pool = st.sampled_from(["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
shoes_triplet = near({"ImageName": pool, "ReferenceImageName": pool, "RelativeCaption": captions_text})
shoes_caption = near({"ImageName": pool, "Caption": captions_text})
VALID_SHOES_TRIPLETS = json.dumps(
    [{"ImageName": "b.jpg", "ReferenceImageName": "a.jpg", "RelativeCaption": "is red"}] * 3
)


@FUZZ
@given(
    triplets=mostly(
        st.lists(shoes_triplet, max_size=3).map(json.dumps),
        json_values.map(json.dumps),
        truncations(VALID_SHOES_TRIPLETS),
    ),
    captions=mostly(
        st.lists(shoes_caption, max_size=2).map(json.dumps), truncations('[{"ImageName": "a.jpg", "Caption": "x"}]')
    ),
    train=mostly(st.just("a.jpg\nb.jpg\n"), st.lists(names, max_size=4).map("\n".join), st.binary(max_size=20)),
    evals=mostly(st.just("c.jpg\nd.jpg"), st.lists(names, max_size=4).map("\n".join)),
)
def test_shoes(tmp_path: Path, triplets: str, captions: str, train, evals: str) -> None:
    (tmp_path / "relative_captions_shoes.json").write_text(triplets)
    (tmp_path / "captions_shoes.json").write_text(captions)
    path = tmp_path / "train_im_names.txt"
    path.write_bytes(train) if isinstance(train, bytes) else path.write_text(train)
    (tmp_path / "eval_im_names.txt").write_text(evals)
    ann = parses_or_annotation_error(read_shoes, tmp_path)
    event("parsed" if ann is not None else "AnnotationError")
    if ann is not None:
        assert not set(ann.train_names) & set(ann.eval_names)
        assert all(t.caption.strip() and t.reference in ann.train_names + ann.eval_names for t in ann.triplets)


# ---------------------------------------------------------------------------------------------- CIRR
@st.composite
def cirr_entries(draw) -> dict:
    """A consistent entry: reference and target among the members; img_set and target_soft mutated too."""
    members = draw(st.permutations(["a.jpg", "b.jpg", "c.jpg", "d.jpg"]))[: draw(st.integers(2, 4))]
    return {
        "pairid": draw(st.integers(0, 50)),
        "reference": members[0],
        "target_hard": members[1],
        "target_soft": {members[1]: 1.0},
        "caption": draw(captions_text),
        "img_set": draw(near(st.just({"id": 0, "members": members}))),
    }


cirr_entry = near(cirr_entries())
split_file = mostly(
    st.just({n: f"./dev/{n}" for n in ("a.jpg", "b.jpg", "c.jpg", "d.jpg")}),
    st.dictionaries(names, names.map(lambda n: f"./dev/{n}") | json_values, max_size=5),
)
VALID_CAPTIONS = json.dumps(
    [
        {
            "pairid": 1,
            "reference": "a.jpg",
            "target_hard": "b.jpg",
            "caption": "x",
            "img_set": {"id": 0, "members": ["a.jpg", "b.jpg"]},
        }
    ]
)


@FUZZ
@given(
    split=st.sampled_from(["val", "test"]),
    captions=mostly(
        st.lists(cirr_entry, min_size=1, max_size=3).map(json.dumps),
        json_values.map(json.dumps),
        truncations(VALID_CAPTIONS),
    ),
    images=mostly(
        split_file.map(json.dumps),
        json_values.map(json.dumps),
        truncations('{"a.jpg": "./dev/a.png", "b.jpg": "./b.png"}'),
    ),
)
def test_cirr(tmp_path: Path, split: str, captions: str, images: str) -> None:
    name = "test1" if split == "test" else split
    (tmp_path / "captions").mkdir(exist_ok=True)
    (tmp_path / "image_splits").mkdir(exist_ok=True)
    (tmp_path / "captions" / f"cap.rc2.{name}.json").write_text(captions)
    (tmp_path / "image_splits" / f"split.rc2.{name}.json").write_text(images)
    parses_or_annotation_error(read_cirr_split, tmp_path, split)
    parses_or_annotation_error(read_cirr_captions, tmp_path, split)
    result = parses_or_annotation_error(cirr_protocol, tmp_path, split)
    event("parsed" if result is not None else "AnnotationError")
    if result is not None:
        gallery, queries = result
        for q in queries:
            assert q.reference in gallery and all(m in gallery for m in q.members)
            assert q.target is None or q.target in q.members


# ---------------------------------------------------------------------------------------------- custom
splits = mostly(st.sampled_from(["train", "val", "test", ""]), st.sampled_from(["dev", "Train"]))
pair_row = near({"image": names, "text": captions_text, "split": splits, "id": text}) | near(
    {"image": pool, "text": captions_text}
)
triplet_row = near(
    {"reference": pool, "target": names, "text": captions_text | st.lists(captions_text, max_size=3), "split": splits}
)
VALID_JSONL = '{"image": "a.jpg", "text": "x"}\n{"image": "b.jpg", "text": "y", "split": "val"}\n'
VALID_CSV = 'image,text,split\na.jpg,"x, y",train\nb.jpg,z,val\n'


@FUZZ
@given(
    suffix=st.sampled_from([".jsonl", ".json", ".csv"]),
    rows=mostly(
        st.lists(pair_row, min_size=1, max_size=4) | st.lists(triplet_row, min_size=1, max_size=4),
        st.lists(json_values, max_size=3),
    ),
    raw=st.booleans().flatmap(
        lambda use_rows: (
            st.none() if use_rows else text | truncations(VALID_JSONL) | truncations(VALID_CSV) | st.binary(max_size=30)
        )
    ),
    split=st.sampled_from([None, "train", "val"]),
)
def test_custom(tmp_path: Path, suffix: str, rows: list, raw, split) -> None:
    path = tmp_path / f"rows{suffix}"
    if isinstance(raw, bytes):
        path.write_bytes(raw)
    elif raw is not None:
        path.write_text(raw)
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        path.write_text(
            "\n".join(
                ",".join(json.dumps(v) if not isinstance(v, str) else v for v in r.values())
                if isinstance(r, dict)
                else str(r)
                for r in rows
            )
        )
    for reader in (read_image_text_pairs, read_triplets):
        records = parses_or_annotation_error(reader, path, tmp_path, split)
        event(f"{reader.__name__}: {'parsed' if records is not None else 'AnnotationError'}")
        for record in records or ():
            assert ".." not in Path(getattr(record, "image", getattr(record, "reference", ""))).parts


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_every_truncation_of_a_valid_file(tmp_path: Path, suffix: str) -> None:
    """Exhaustively: each prefix of a valid file is either a valid (shorter) file or an AnnotationError."""
    valid = VALID_JSONL if suffix == ".jsonl" else VALID_CSV
    path = tmp_path / f"rows{suffix}"
    outcomes = set()
    for n in range(len(valid) + 1):
        path.write_text(valid[:n])
        records = parses_or_annotation_error(read_image_text_pairs, path, tmp_path)
        outcomes.add("error" if records is None else len(records))
    assert outcomes >= {"error", 2}


PATHOLOGICAL = ["9" * 5000, "[" * 100_000, '[{"ImageName": ' + "1" * 4400 + "}]"]


@pytest.mark.parametrize("content", PATHOLOGICAL, ids=["huge-int", "deep-nesting", "huge-int-in-entry"])
def test_pathological_json_is_an_annotation_error(tmp_path: Path, content: str) -> None:
    """``json`` raises ValueError / RecursionError (not JSONDecodeError) for these; every parser converts."""
    for name in ("train_im_names.txt", "eval_im_names.txt"):
        (tmp_path / name).write_text("a.jpg\n" if name.startswith("train") else "b.jpg\n")
    (tmp_path / "captions_shoes.json").write_text("[]")
    (tmp_path / "relative_captions_shoes.json").write_text(content)
    with pytest.raises(AnnotationError, match="unreadable JSON"):
        read_shoes(tmp_path)
    for folder, stem in (("captions", "cap"), ("image_splits", "split")):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / f"{stem}.rc2.val.json").write_text(content)
    with pytest.raises(AnnotationError, match="unreadable JSON"):
        read_cirr_captions(tmp_path, "val")
    with pytest.raises(AnnotationError, match="unreadable JSON"):
        read_cirr_split(tmp_path, "val")
    for suffix in (".json", ".jsonl"):
        (tmp_path / f"rows{suffix}").write_text(content)
        with pytest.raises(AnnotationError, match="unreadable JSON"):
            read_triplets(tmp_path / f"rows{suffix}", tmp_path)
