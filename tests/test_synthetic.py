"""The synthetic benchmark generator: determinism, the FashionIQ format, output safety, and task difficulty.

The difficulty tests use attribute-level oracles, not models: the captions are parsed with a keyword table
written here (independently of the generator's phrase table), and gallery items are scored by how many
attributes they share with what each oracle knows.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from ctiir.datamodules import synthetic
from ctiir.datamodules.errors import DataError
from ctiir.datamodules.synthetic import (
    CATEGORIES,
    META_FILE,
    SCENARIOS,
    SIZES,
    SyntheticOutputError,
    attribute_values,
    format_scenarios,
    generate,
    parse_scenarios,
    query_scenarios,
    read_metadata,
    render_garment,
    scenario_counts,
    synth_main,
)

ID_RE = re.compile(r"^S[0-9A-Z]{9}$")

# What a caption phrase means, per attribute value. Written from the caption style, not from the generator.
KEYWORDS: dict[str, dict[str, str]] = {
    "color": {
        c: rf"\b{c}\b"
        for c in ("red", "blue", "green", "yellow", "black", "white", "pink", "purple", "orange", "brown", "gray", "navy")
    },
    "pattern": {
        "solid": r"solid colored|\bplain\b|no pattern",
        "striped": r"horizontal",
        "vertical-striped": r"vertical",
        "dotted": r"polka|\bdotted\b",
        "checked": r"\bcheck|plaid",
    },
    "sleeves": {
        "sleeveless": r"sleeveless|no sleeves|without sleeves",
        "short": r"short sleeve",
        "long": r"long sleeve",
        "three-quarter": r"three-quarter|elbow",
    },
    "length": {
        "mini": r"\bmini\b",
        "knee": r"\bknee\b",
        "maxi": r"\bmaxi\b",
        "cropped": r"\bcropped\b",
        "hip": r"\bhip\b",
        "tunic": r"\btunic\b",
    },
    "neckline": {
        "v-neck": r"\bv[- ]neck",
        "crew": r"crew neck|round neck",
        "collar": r"collar",
        "turtleneck": r"turtleneck|high neck",
    },
    "fit": {"fitted": r"fitted|tight|form fitting", "straight": r"straight", "loose": r"loose|flowy"},
}


def parse_caption(text: str) -> dict[str, str]:
    """The attribute values a caption states; a caption naming two values of one attribute is a test failure."""
    stated: dict[str, str] = {}
    for attr, table in KEYWORDS.items():
        hits = [value for value, pattern in table.items() if re.search(pattern, text)]
        assert len(hits) <= 1, f"caption {text!r} is ambiguous about {attr}: {hits}"
        if hits:
            stated[attr] = hits[0]
    return stated


def sha256_tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def load(root: Path, name: str):
    return json.loads((root / name).read_text(encoding="utf-8"))


def tree_digest(root: Path) -> str:
    """One SHA-256 over every file's relative path and content hash, in path order."""
    lines = "".join(f"{name} {digest}\n" for name, digest in sha256_tree(root).items())
    return hashlib.sha256(lines.encode()).hexdigest()


# Digests of the files the first version of the generator wrote (commit 9cc252e), recorded before the
# scenarios and the extended vocabulary were added: those must not change a byte of the existing benchmarks.
FIRST_VERSION_DIGESTS = {
    ("tiny", "tree"): "0851f9128583c4ecc6daeab163e1af9a861f87df4130539cd35b48ef9608ae8d",
    ("default", "tree"): "004a921d4317106ebc19fcfee2f2b7b04d042722a2022722eba6d20a2d61b523",
    ("default", "synthetic.json"): "07b47fe5e5ab9c8b55557297c9bdf49f109166366dac357ba14d04f473279d9b",
    ("large", "synthetic.json"): "e5ae881033945ada3ef8207b7a33b2d8998d39bad69ba8f16392e96de91e94a9",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("synth") / "tiny", seed=0, size="tiny")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("synth") / "mixed", seed=0, size="tiny", scenarios="mixed")


# --------------------------------------------------------------------------------------------- determinism
def test_existing_benchmarks_are_byte_identical_to_the_first_version(tiny: Path) -> None:
    assert tree_digest(tiny) == FIRST_VERSION_DIGESTS[("tiny", "tree")]
    for size in ("default", "large"):
        text = json.dumps(synthetic._build(0, size), separators=(",", ":"))  # synthetic.json without its newline
        assert hashlib.sha256(text.encode()).hexdigest() == FIRST_VERSION_DIGESTS[(size, "synthetic.json")]


@pytest.mark.slow
def test_default_benchmark_files_are_byte_identical_to_the_first_version(tmp_path: Path) -> None:
    root = generate(tmp_path / "default", seed=0, size="default", scenarios="edit")
    assert tree_digest(root) == FIRST_VERSION_DIGESTS[("default", "tree")]


def test_same_seed_is_byte_identical_and_another_seed_differs(tiny: Path, tmp_path: Path) -> None:
    again = generate(tmp_path / "again", seed=0, size="tiny")
    other = generate(tmp_path / "other", seed=1, size="tiny")
    first, second, third = sha256_tree(tiny), sha256_tree(again), sha256_tree(other)
    assert len(first) > 100
    assert first == second
    assert set(first) != set(third)  # other ids
    assert (tiny / "stage1/pairs.jsonl").read_bytes() != (other / "stage1/pairs.jsonl").read_bytes()


# --------------------------------------------------------------------------------------------- format
def test_fashioniq_layout_keys_types_and_images(tiny: Path) -> None:
    meta = load(tiny, META_FILE)
    all_ids: dict[str, str] = {}
    for cat in CATEGORIES:
        split_ids: dict[str, list[str]] = {}
        for split in ("train", "val", "test"):
            ids = load(tiny, f"image_splits/split.{cat}.{split}.json")
            assert isinstance(ids, list) and ids and all(isinstance(i, str) and ID_RE.match(i) for i in ids)
            assert len(set(ids)) == len(ids)
            split_ids[split] = ids
            for i in ids:
                assert i not in all_ids, f"id {i} in {cat}/{split} and {all_ids[i]}"
                all_ids[i] = f"{cat}/{split}"
            entries = load(tiny, f"captions/cap.{cat}.{split}.json")
            assert isinstance(entries, list) and entries
            for n, e in enumerate(entries):
                expected_keys = {"candidate", "captions"} | ({"target"} if split != "test" else set())
                assert set(e) == expected_keys, f"cap.{cat}.{split}.json entry {n}: keys {sorted(e)}"
                caps = e["captions"]
                assert isinstance(caps, list) and len(caps) == 2 and all(isinstance(c, str) and c.strip() for c in caps)
                assert caps[0] != caps[1]
                members = [e["candidate"]] + ([e["target"]] if "target" in e else [])
                assert all(m in set(ids) for m in members), f"cap.{cat}.{split}.json entry {n} not in its split"
                assert e.get("target") != e["candidate"]
        val = load(tiny, f"captions/cap.{cat}.val.json")
        referenced = {e["candidate"] for e in val} | {e["target"] for e in val}
        assert len(split_ids["val"]) > len(referenced), "the val gallery holds no distractors"
    for image_id in all_ids:
        with Image.open(tiny / "images" / f"{image_id}.png") as img:
            assert img.format == "PNG" and img.mode == "RGB" and img.size == (64, 64)
    assert set(all_ids) == set(meta["garments"])
    assert {p.stem for p in (tiny / "images").iterdir()} == set(all_ids)


def test_jsonl_text_pairs(tiny: Path) -> None:
    meta = load(tiny, META_FILE)
    for name, expected in (
        ("stage1/pairs.jsonl", len(meta["scenes"])),
        ("stage2/descriptions.jsonl", len(meta["garments"])),
    ):
        rows = [json.loads(line) for line in (tiny / name).read_text(encoding="utf-8").splitlines()]
        assert len(rows) == expected
        for row in rows:
            assert set(row) == {"image", "text", "split"} and row["split"] in ("train", "val", "test")
            assert isinstance(row["text"], str) and row["text"].strip()
            with Image.open(tiny / row["image"]) as img:
                assert img.size == (64, 64) and img.mode == "RGB"
    scenes = [json.loads(line) for line in (tiny / "stage1/pairs.jsonl").read_text().splitlines()]
    counts = {s: sum(r["split"] == s for r in scenes) for s in ("train", "val")}
    assert counts == {"train": SIZES["tiny"].stage1_train, "val": SIZES["tiny"].stage1_val}
    # Stage I shares the colour and pattern vocabulary with the garments, and names each shape.
    for row in scenes:
        shapes = meta["scenes"][row["image"]]["shapes"]
        for s in shapes:
            assert s["color"] in row["text"] and s["shape"] in row["text"] and s["position"] in row["text"]
    # Stage II descriptions state every attribute of their garment.
    for row in (json.loads(line) for line in (tiny / "stage2/descriptions.jsonl").read_text().splitlines()):
        garment = meta["garments"][Path(row["image"]).stem]
        assert row["split"] == garment["split"]
        for attr, value in garment["attributes"].items():
            hits = [v for v, pattern in KEYWORDS[attr].items() if re.search(pattern, row["text"])]
            if attr == "pattern" and value == "solid":
                hits = ["solid"] if re.search(r"\bsolid\b|\bplain\b", row["text"]) else hits
            assert hits == [value], f"description {row['text']!r}: {attr}={value}, parsed {hits}"


def test_metadata_matches_files_and_captions_state_the_changes(tiny: Path) -> None:
    meta = load(tiny, META_FILE)
    assert (meta["seed"], meta["size"]) == (0, "tiny") and isinstance(meta["version"], int)
    for cat in CATEGORIES:
        for split in ("train", "val", "test"):
            recorded = meta["triplets"][cat][split]
            on_disk = load(tiny, f"captions/cap.{cat}.{split}.json")
            assert len(recorded) == len(on_disk)
            for t, e in zip(recorded, on_disk, strict=True):
                assert t["candidate"] == e["candidate"] and t["captions"] == e["captions"]
                ref = meta["garments"][t["candidate"]]["attributes"]
                tgt = meta["garments"][t["target"]]["attributes"]
                changed = {a: v for a, v in tgt.items() if ref[a] != v}
                assert 2 <= len(changed) <= 3 and changed == t["changes"]
                parsed = [parse_caption(c) for c in t["captions"]]
                assert all(parsed), f"a caption states nothing: {t['captions']}"
                assert not set(parsed[0]) & set(parsed[1]), f"captions repeat an attribute: {t['captions']}"
                assert {**parsed[0], **parsed[1]} == changed, f"{t['captions']} vs {changed}"
                assert [sorted(p) for p in parsed] == [sorted(c) for c in t["caption_changes"]]


def test_eval_gallery_tuples_unique_and_hold_near_duplicates(tiny: Path) -> None:
    meta = load(tiny, META_FILE)
    g = meta["garments"]
    for cat in CATEGORIES:
        ids = load(tiny, f"image_splits/split.{cat}.val.json")
        tuples = [tuple(sorted(g[i]["attributes"].items())) for i in ids]
        assert len(set(tuples)) == len(tuples)
        near_target = 0
        for t in meta["triplets"][cat]["val"]:
            target = g[t["target"]]["attributes"]
            near_target += any(
                sum(g[i]["attributes"][a] != v for a, v in target.items()) == 1 for i in ids if i != t["target"]
            )
        assert near_target == len(meta["triplets"][cat]["val"]), f"{cat}: a val target has no one-attribute neighbour"
        for name, values in attribute_values(cat).items():
            assert {g[i]["attributes"][name] for i in ids} <= set(values)


# --------------------------------------------------------------------------------------------- difficulty
def oracle_recall_at_1(root: Path, oracle: str, exclude_reference: bool) -> float:
    """Mean expected R@1 (ties broken uniformly at random) of an attribute oracle over all val queries.

    - ``composed``: the reference's attributes with the captions' stated changes applied;
    - ``text``: only the attributes the captions state;
    - ``image``: the reference's attributes;
    - ``sum``: the reference's and the stated attributes both count (a fixed-sum fusion's analogue).
    """
    meta = load(root, META_FILE)
    g = meta["garments"]
    hits, total = 0.0, 0
    for cat in CATEGORIES:
        gallery = load(root, f"image_splits/split.{cat}.val.json")
        for e in load(root, f"captions/cap.{cat}.val.json"):
            ref = g[e["candidate"]]["attributes"]
            stated: dict[str, str] = {}
            for caption in e["captions"]:
                stated.update(parse_caption(caption))
            composed = {**ref, **stated}

            def score(attrs: dict[str, str], ref=ref, stated=stated, composed=composed) -> int:
                same = lambda want: sum(attrs[a] == v for a, v in want.items())  # noqa: E731
                return {
                    "composed": same(composed),
                    "text": same(stated),
                    "image": same(ref),
                    "sum": same(ref) + same(stated),
                }[oracle]

            scores = {i: score(g[i]["attributes"]) for i in gallery if not (exclude_reference and i == e["candidate"])}
            best = max(scores.values())
            tied = [i for i, s in scores.items() if s == best]
            hits += (e["target"] in tied) / len(tied)
            total += 1
    return 100.0 * hits / total


@pytest.mark.parametrize("exclude_reference", [False, True])
def test_composed_oracle_solves_it_but_single_modality_oracles_do_not(tiny: Path, exclude_reference: bool) -> None:
    r = {o: oracle_recall_at_1(tiny, o, exclude_reference) for o in ("composed", "text", "image", "sum")}
    print(
        f"oracle R@1 (tiny, exclude_reference={exclude_reference}): " + ", ".join(f"{k}={v:.1f}" for k, v in r.items())
    )
    assert r["composed"] > 80
    assert r["text"] < 35
    assert r["image"] < 35
    assert r["sum"] < r["composed"] - 30  # adding image and text evidence is not enough: changes must replace


# --------------------------------------------------------------------------------------------- scenarios
def test_scenario_specs() -> None:
    third = 1 / 3
    assert parse_scenarios("edit") == {"edit": 1.0}
    assert parse_scenarios("image-led") == {"image-led": 1.0}
    assert parse_scenarios("mixed") == {"edit": third, "text-led": third, "image-led": third}
    assert parse_scenarios("image-led=0.3, edit=0.4,text-led=0.3") == {"edit": 0.4, "text-led": 0.3, "image-led": 0.3}
    assert parse_scenarios({"edit": 0.5, "text-led": 0.5, "image-led": 0}) == {"edit": 0.5, "text-led": 0.5}
    for bad, message in (
        ("edits", "neither a scenario"),
        ("edit=0.5,text=0.5", r"unknown scenario\(s\) \['text'\]"),
        ("edit=0.5,text-led=0.4", "must sum to 1"),
        ("edit=1.5,text-led=-0.5", ">= 0"),
        ("edit=half", "not a number"),
        ("edit=0.5,edit=0.5", "given twice"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_scenarios(bad)
    # What messages and metadata show is a spelling that reads back as the same mix.
    for spec, spelled in (("edit", "edit"), ("mixed", "mixed"), ("edit=0.4,text-led=0.3,image-led=0.3", None), ({"edit": 1 / 7, "image-led": 6 / 7}, None)):
        mix = parse_scenarios(spec)
        assert parse_scenarios(format_scenarios(mix)) == pytest.approx(mix, abs=1e-11)
        assert spelled is None or format_scenarios(mix) == spelled
    assert scenario_counts(100, parse_scenarios("mixed")) == {"edit": 34, "text-led": 33, "image-led": 33}
    assert scenario_counts(7, {"edit": 0.4, "text-led": 0.3, "image-led": 0.3}) == {"edit": 3, "text-led": 2, "image-led": 2}


def test_edit_only_scenarios_write_the_default_files(tiny: Path, tmp_path: Path) -> None:
    explicit = generate(tmp_path / "edit", seed=0, size="tiny", scenarios="edit=1.0")
    assert sha256_tree(explicit) == sha256_tree(tiny)
    meta = load(tiny, META_FILE)
    assert "scenarios" not in meta and all("scenario" not in t for t in meta["triplets"]["dress"]["val"])
    assert query_scenarios(meta, "dress", "val") == ["edit"] * SIZES["tiny"].val_queries


def test_each_triplet_follows_its_scenario(mixed: Path) -> None:
    """Parsed with this file's own keyword table: what each caption states, against the garments' attributes."""
    meta = load(mixed, META_FILE)
    assert meta["scenarios"] == parse_scenarios("mixed")
    g = meta["garments"]
    for cat in CATEGORIES:
        for split in ("train", "val", "test"):
            recorded = meta["triplets"][cat][split]
            labels = query_scenarios(meta, cat, split)
            assert labels == [t["scenario"] for t in recorded]
            assert [e["candidate"] for e in load(mixed, f"captions/cap.{cat}.{split}.json")] == [t["candidate"] for t in recorded]
            counts = {name: labels.count(name) for name in SCENARIOS}
            assert counts == scenario_counts(len(labels), parse_scenarios("mixed")), (cat, split, counts)
            for t in recorded:
                ref, tgt = g[t["candidate"]]["attributes"], g[t["target"]]["attributes"]
                changed = {a: v for a, v in tgt.items() if ref[a] != v}
                parsed = [parse_caption(c) for c in t["captions"]]
                stated = {**parsed[0], **parsed[1]}
                assert changed == t["changes"] and stated == t["stated"], t
                assert all(tgt[a] == v for a, v in stated.items()), f"a caption contradicts the target: {t}"
                if t["scenario"] == "edit":
                    assert 2 <= len(changed) <= 3 and stated == changed and not set(parsed[0]) & set(parsed[1])
                elif t["scenario"] == "text-led":
                    assert len(stated) >= 5 and len(changed) >= 4 and set(changed) <= set(stated), t
                    assert not set(parsed[0]) & set(parsed[1])
                else:
                    assert len(changed) == 1 and parsed[0] == parsed[1] == changed, t
                    assert t["captions"][0] != t["captions"][1]


def oracle_recall(root: Path, oracle: str, k: int) -> dict[str, float]:
    """Per scenario, R@k of an attribute oracle over the val queries, every tie ranked above the target."""
    meta = load(root, META_FILE)
    g = meta["garments"]
    hits: dict[str, list[bool]] = {}
    for cat in CATEGORIES:
        gallery = load(root, f"image_splits/split.{cat}.val.json")
        entries = load(root, f"captions/cap.{cat}.val.json")
        for e, scenario in zip(entries, query_scenarios(meta, cat, "val"), strict=True):
            ref = g[e["candidate"]]["attributes"]
            stated = {**parse_caption(e["captions"][0]), **parse_caption(e["captions"][1])}
            want = {"text": stated, "image": ref, "composed": {**ref, **stated}}[oracle]
            score = {i: sum(g[i]["attributes"][a] == v for a, v in want.items()) for i in gallery}
            above = sum(s >= score[e["target"]] for i, s in score.items() if i != e["target"])
            hits.setdefault(scenario, []).append(above < k)
    return {scenario: 100.0 * sum(h) / len(h) for scenario, h in hits.items()}


def test_scenarios_need_the_modality_they_are_named_for(mixed: Path) -> None:
    r = {oracle: oracle_recall(mixed, oracle, k=10) for oracle in ("text", "image", "composed")}
    r1 = {oracle: oracle_recall(mixed, oracle, k=1) for oracle in ("text", "image", "composed")}
    print({o: {s: round(v) for s, v in d.items()} for o, d in r.items()}, r1)
    assert all(r1["composed"][s] == 100 for s in SCENARIOS), "reference + stated changes identify every target"
    assert r["text"]["text-led"] >= r["image"]["text-led"] + 50
    assert r["image"]["image-led"] >= r["text"]["image-led"] + 50
    assert max(r1["text"]["edit"], r1["image"]["edit"]) <= 10, "an edit needs both modalities"


def test_extended_vocabulary_fits_a_thousand_queries_per_category() -> None:
    size = SIZES["ablation"]
    assert size.val_queries >= 1000 and size.vocabulary == "extended"
    for cat in CATEGORIES:
        base, extended = attribute_values(cat), attribute_values(cat, "extended")
        assert all(set(base[a]) <= set(extended[a]) for a in base)
        capacity = 1
        for values in extended.values():
            capacity *= len(values)
        assert capacity >= 6 * size.val_queries
    rng = __import__("random").Random(0)
    attrs = {"color": "navy", "pattern": "dotted", "sleeves": "three-quarter", "length": "knee", "neckline": "collar", "fit": "loose"}
    long_sleeved = render_garment("dress", {**attrs, "sleeves": "long"}, __import__("random").Random(0))
    assert render_garment("dress", attrs, rng).tobytes() != long_sleeved.tobytes()
    with pytest.raises(ValueError, match="unknown attribute vocabulary"):
        attribute_values("dress", "huge")


def test_another_scenario_mix_needs_overwrite(mixed: Path, tmp_path: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in mixed.rglob("*") if p.is_file()}
    assert generate(mixed, seed=0, size="tiny", scenarios="mixed") == mixed
    assert {p: p.stat().st_mtime_ns for p in mixed.rglob("*") if p.is_file()} == before
    with pytest.raises(SyntheticOutputError, match=r"with seed=0, size='tiny', scenarios=mixed, version=\d+, not seed=0, size='tiny', version"):
        generate(mixed, seed=0, size="tiny")
    assert read_metadata(mixed)["scenarios"] == parse_scenarios("mixed")
    with pytest.raises(FileNotFoundError, match="no synthetic dataset"):
        read_metadata(tmp_path)


def test_overwrite_replaces_a_dataset_of_another_scenario_mix(tmp_path: Path) -> None:
    """``--overwrite`` checks the old files against the generator's own list for the mix they were written
    with (the edit-only list would call most of a mixed dataset's files foreign and refuse)."""
    root = generate(tmp_path / "d", seed=0, size="tiny", scenarios="mixed")
    generate(root, seed=0, size="tiny", overwrite=True)
    assert "scenarios" not in read_metadata(root)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == sorted(
        p.relative_to(tmp_path / "edit").as_posix() for p in generate(tmp_path / "edit", seed=0, size="tiny").rglob("*") if p.is_file()
    )
    generate(root, seed=0, size="tiny", scenarios="mixed", overwrite=True)
    assert read_metadata(root)["scenarios"] == parse_scenarios("mixed")


# --------------------------------------------------------------------------------------------- output safety
def test_existing_identical_dataset_returns_quickly_untouched(tiny: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in tiny.rglob("*") if p.is_file()}
    assert generate(tiny, seed=0, size="tiny") == tiny
    assert generate(tiny, seed=0, size="tiny", overwrite=True) == tiny
    assert {p: p.stat().st_mtime_ns for p in tiny.rglob("*") if p.is_file()} == before


def test_refuses_foreign_directory_even_with_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(SyntheticOutputError, match=r"not empty.*synthetic\.json"):
            generate(out, seed=0, size="tiny", overwrite=overwrite)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(SyntheticOutputError, match="not a directory"):
        generate(a_file, size="tiny")
    assert issubclass(SyntheticOutputError, DataError)


def test_other_synthetic_dataset_needs_overwrite_and_foreign_files_block_it(tmp_path: Path) -> None:
    out = generate(tmp_path / "ds", seed=0, size="tiny")
    before = sha256_tree(out)
    with pytest.raises(SyntheticOutputError, match=r"seed=0.*not seed=1.*overwrite"):
        generate(out, seed=1, size="tiny")
    assert sha256_tree(out) == before
    (out / "images" / "mine.png").write_bytes(b"user data")
    with pytest.raises(SyntheticOutputError, match=r"not part of.*images/mine\.png"):
        generate(out, seed=1, size="tiny", overwrite=True)
    assert (out / "images" / "mine.png").read_bytes() == b"user data"
    (out / "images" / "mine.png").unlink()
    generate(out, seed=1, size="tiny", overwrite=True)
    assert load(out, META_FILE)["seed"] == 1
    assert sha256_tree(out) == sha256_tree(generate(tmp_path / "fresh1", seed=1, size="tiny"))
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_a_dataset_of_a_redefined_size_is_not_reused(tmp_path: Path) -> None:
    out = generate(tmp_path / "ds", seed=0, size="tiny")
    meta = load(out, META_FILE)
    meta["size_params"]["train_triplets"] += 1  # as if "tiny" had been written by a version with other counts
    (out / META_FILE).write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(SyntheticOutputError, match=r"size 'tiny' was written with other parameters.*overwrite"):
        generate(out, seed=0, size="tiny")
    generate(out, seed=0, size="tiny", overwrite=True)
    assert load(out, META_FILE)["size_params"]["train_triplets"] == SIZES["tiny"].train_triplets


def test_damaged_dataset_is_reported_and_regenerated_only_on_request(tmp_path: Path) -> None:
    out = generate(tmp_path / "ds", seed=0, size="tiny")
    victim = next((out / "images").iterdir())
    victim.unlink()
    with pytest.raises(SyntheticOutputError, match=r"incomplete.*1 files missing.*overwrite"):
        generate(out, seed=0, size="tiny")
    generate(out, seed=0, size="tiny", overwrite=True)
    assert victim.is_file()
    (out / META_FILE).write_text("{not json")
    with pytest.raises(SyntheticOutputError, match=r"synthetic\.json: unreadable"):
        generate(out, seed=0, size="tiny", overwrite=True)


def test_empty_existing_directory_is_used(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    assert generate(out, seed=0, size="tiny") == out
    assert (out / META_FILE).is_file() and (out / "captions" / "cap.dress.val.json").is_file()


def test_failure_mid_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = generate(tmp_path / "old", seed=0, size="tiny")
    before = sha256_tree(old)

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synthetic, "render_scene", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        generate(tmp_path / "new", seed=0, size="tiny")
    with pytest.raises(RuntimeError, match="disk full"):
        generate(old, seed=1, size="tiny", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["old"]  # no partial output, no temporary directory
    assert sha256_tree(old) == before  # the dataset that was to be replaced is intact


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown synthetic size 'huge'"):
        generate("/nonexistent-never-written", size="huge")
    with pytest.raises(TypeError, match="seed must be an int"):
        generate("/nonexistent-never-written", seed="3", size="tiny")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- CLI
def test_cli_writes_dataset_and_reports_conflicts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert synth_main(["--out", str(out), "--seed=3", "--size=tiny", "--progress_bar=false"]) == 0
    meta = load(out, META_FILE)
    assert (meta["seed"], meta["size"]) == (3, "tiny")
    assert str(out) in capsys.readouterr().out
    assert synth_main(["--out", str(out), "--seed=4", "--size=tiny", "--progress_bar=false"]) == 2
    assert "--overwrite=true" in capsys.readouterr().err
    assert synth_main(["--out", str(out), "--seed=4", "--size=tiny", "--progress_bar=false", "--overwrite=true"]) == 0
    assert load(out, META_FILE)["seed"] == 4
    assert synth_main(["--out", str(out), "--size=enormous"]) == 2
    assert "enormous" in capsys.readouterr().err
    mixed_out = tmp_path / "mixed"
    assert synth_main(["--out", str(mixed_out), "--size=tiny", "--progress_bar=false", "--scenarios=edit=0.5,image-led=0.5"]) == 0
    assert "scenarios=edit=0.5,image-led=0.5" in capsys.readouterr().out
    assert load(mixed_out, META_FILE)["scenarios"] == {"edit": 0.5, "image-led": 0.5}
    assert synth_main(["--out", str(tmp_path / "bad"), "--scenarios=edit=0.5"]) == 2
    assert "--scenarios: scenario proportions must sum to 1" in capsys.readouterr().err


def test_datamodule_asking_for_another_scenario_mix_says_how_to_go_on(tiny: Path) -> None:
    from ctiir.datamodules import SyntheticDataModule

    before = {p: p.stat().st_mtime_ns for p in tiny.rglob("*") if p.is_file()}
    dm = SyntheticDataModule(str(tiny), size="tiny", scenarios="mixed")
    with pytest.raises(SyntheticOutputError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert f"{tiny} holds the synthetic benchmark with seed=0, size='tiny', but" in message
    assert "asks for scenarios='mixed'" in message and "--data.init_args.scenarios=edit" in message
    assert f"ctiir synth --out {tiny} --seed 0 --size tiny --scenarios=mixed --overwrite=true" in message
    assert {p: p.stat().st_mtime_ns for p in tiny.rglob("*") if p.is_file()} == before
