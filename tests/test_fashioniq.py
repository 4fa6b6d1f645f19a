"""FashionIQ: parsing and both protocols on the real annotation files, the datamodule on placeholder images,
and a small hand-made dataset that needs no shared data."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T

from ctiir.datamodules.errors import AnnotationError, DataError
from ctiir.datamodules.fashioniq import (
    CATEGORIES,
    FashionIQDataModule,
    read_fashioniq_captions,
    read_fashioniq_split,
)
from ctiir.datamodules.protocol import EvaluationSet
from ctiir.datamodules.tasks import collate_retrieval

OFFICIAL = {"dress": (3817, 2017), "shirt": (6346, 2038), "toptee": (5373, 1961)}
TF = T.Compose([T.Resize((8, 8)), T.ToTensor()])


def raw(root: Path, kind: str, cat: str, split: str) -> list:
    folder, prefix = ("captions", "cap") if kind == "cap" else ("image_splits", "split")
    return json.loads((root / folder / f"{prefix}.{cat}.{split}.json").read_text())


# ---------------------------------------------------------------------------------------------- real files
@pytest.fixture(scope="module")
def fiq(shared_data: Path) -> Path:
    return shared_data / "fashioniq"


def link_images(folder: Path, ids: set[str], source: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        os.link(source, folder / f"{image_id}.png")


def used_ids(fiq: Path, cat: str, splits: tuple[str, ...]) -> set[str]:
    ids: set[str] = set()
    for split in splits:
        ids.update(raw(fiq, "split", cat, split))
        for e in raw(fiq, "cap", cat, split):
            ids.update(v for k, v in e.items() if k in ("candidate", "target"))
    return ids


def dress_ids(fiq: Path, splits: tuple[str, ...]) -> set[str]:
    return used_ids(fiq, "dress", splits)


@pytest.fixture(scope="module")
def placeholder(fiq: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real annotations with one tiny PNG hard-linked under every id that the val files of every category
    (and the dress train files) use: the datamodule's own evaluation path then runs on the official files."""
    root = tmp_path_factory.mktemp("fiq-images")
    png = root / "placeholder.png"
    Image.new("RGB", (12, 20), (200, 30, 60)).save(png)
    ids = dress_ids(fiq, ("train",)).union(*(used_ids(fiq, cat, ("val",)) for cat in CATEGORIES))
    link_images(root / "images", ids, png)
    return root


def evaluations(placeholder: Path, fiq: Path, **kwargs) -> dict[str, EvaluationSet]:
    """The val evaluation sets per category, exactly as training builds them (no transforms needed)."""
    dm = FashionIQDataModule(root=str(placeholder), annotations_root=str(fiq), **kwargs)
    return {ev.subset: ev for ev in dm.evaluation_sets("val")}


@pytest.mark.parametrize("cat", CATEGORIES)
def test_real_original_protocol_counts(placeholder: Path, fiq: Path, cat: str) -> None:
    ev = evaluations(placeholder, fiq, categories=[cat])[cat]
    assert (len(ev.gallery), len(ev.queries)) == OFFICIAL[cat]
    assert ev.gallery_names == raw(fiq, "split", cat, "val")  # every id, in file order
    assert ev.key == f"fashioniq-original/{cat}" and ev.skipped_gallery == ev.skipped_queries == 0


@pytest.mark.parametrize("cat", CATEGORIES)
def test_real_val_split_gallery_is_the_union(placeholder: Path, fiq: Path, cat: str) -> None:
    ev = evaluations(placeholder, fiq, categories=[cat], protocol="val-split")[cat]
    entries = raw(fiq, "cap", cat, "val")
    assert len(ev.queries) == OFFICIAL[cat][1]
    expected = list(dict.fromkeys(i for e in entries for i in (e["candidate"], e["target"])))
    gallery = ev.gallery_names
    assert gallery == expected
    assert len(set(gallery)) == len(gallery)
    assert all(r.reference_index >= 0 and r.target_index >= 0 for r in ev.queries)
    # a strict sub-gallery of the original one
    assert set(gallery) < set(raw(fiq, "split", cat, "val"))


@pytest.mark.parametrize("cat", CATEGORIES)
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_real_files_parse(fiq: Path, cat: str, split: str) -> None:
    ids = read_fashioniq_split(fiq, cat, split)
    captions = read_fashioniq_captions(fiq, cat, split)
    assert len(ids) == len(raw(fiq, "split", cat, split))
    assert len(captions) == len(raw(fiq, "cap", cat, split))
    assert all(len(c.captions) == 2 for c in captions)
    if split == "test":
        assert all(c.target is None for c in captions)  # withheld
    else:
        assert all(c.target is not None for c in captions)


def test_real_text_modes(placeholder: Path, fiq: Path) -> None:
    clip = evaluations(placeholder, fiq, categories=["dress"])["dress"]
    entries = raw(fiq, "cap", "dress", "val")
    assert tuple(entries[0]["captions"]) == ("is shiny and silver with shorter sleeves", "fit and flare")
    assert len(clip.queries) == len(entries)
    assert clip.queries[0].query.text == "Is shiny and silver with shorter sleeves and fit and flare"
    average = evaluations(placeholder, fiq, categories=["dress"], query_text="average")["dress"]
    assert average.queries[0].query.text == [
        "Is shiny and silver with shorter sleeves and fit and flare",
        "Fit and flare and is shiny and silver with shorter sleeves",
    ]
    two = evaluations(placeholder, fiq, categories=["dress"], query_text="two-queries")["dress"]
    gallery = two.gallery_names
    assert len(two.queries) == 2 * len(entries)
    assert len(set(two.query_names)) == len(two.queries)
    for a, b, c, entry in zip(two.queries[0::2], two.queries[1::2], clip.queries, entries, strict=True):
        c0, c1 = entry["captions"]
        assert a.query.text == c.query.text
        assert b.query.text == f"{c1.strip('.?, ').capitalize()} and {c0.strip('.?, ')}"  # CLIP4Cir's, swapped
        assert a.target_index == b.target_index == c.target_index
        assert a.reference_index == b.reference_index == c.reference_index
        assert gallery[a.target_index] == entries[int(a.query.name.split("#")[1])]["target"]


def test_real_blank_caption_entry_is_kept_verbatim(placeholder: Path, fiq: Path) -> None:
    """cap.shirt.val.json entry 1928 has a blank first caption; the official count includes it."""
    captions = read_fashioniq_captions(fiq, "shirt", "val")
    entry = captions[1928]
    assert entry.captions[0] == "" and entry.captions[1].strip()
    query = evaluations(placeholder, fiq, categories=["shirt"])["shirt"].queries[1928].query
    assert query.name == "cap.shirt.val.json#1928"
    assert query.text == " and " + entry.captions[1].strip(".?, ")  # CLIP4Cir's concatenation, unchanged


@pytest.mark.parametrize("protocol", ["original", "val-split"])
def test_real_reference_positions(placeholder: Path, fiq: Path, protocol: str) -> None:
    ev = evaluations(placeholder, fiq, categories=["toptee"], protocol=protocol)["toptee"]
    gallery = ev.gallery_names
    for r in ev.queries:
        assert gallery[r.reference_index] == r.query.reference_id
        assert r.reference_index != r.target_index and r.excluded_index == r.reference_index


# ---------------------------------------------------------------------------------------------- placeholder images
def dress_module(root: Path, fiq: Path, **kwargs) -> FashionIQDataModule:
    dm = FashionIQDataModule(root=str(root), annotations_root=str(fiq), categories=["dress"], batch_size=4, **kwargs)
    dm.set_transforms(TF, TF)
    return dm


def test_datamodule_tasks_on_real_annotations(placeholder: Path, fiq: Path) -> None:
    dm = dress_module(placeholder, fiq)
    (task,) = dm.composed_tasks("val")
    assert task.key == "fashioniq-original/dress"
    assert (len(task.gallery), len(task.queries)) == OFFICIAL["dress"]
    assert task.ks == (1, 5, 10, 50) and task.headline == ("R@10", "R@50")
    assert task.exclude_reference is False
    entries = raw(fiq, "cap", "dress", "val")
    item = task.queries[5]
    assert item["image"].shape == (3, 8, 8)
    assert task.gallery_names[item["target_id"]] == entries[5]["target"]
    assert task.gallery_names[item["reference_id"]] == entries[5]["candidate"]
    assert isinstance(item["text"], str)
    assert task.gallery[0]["image"].shape == (3, 8, 8) and task.gallery[0]["gallery_id"] == 0
    (test_task,) = dm.composed_tasks("test")  # test == the val files
    assert test_task.gallery_names == task.gallery_names and len(test_task.queries) == len(task.queries)


def test_datamodule_modes_and_reference_switch(placeholder: Path, fiq: Path) -> None:
    (base,) = dress_module(placeholder, fiq).composed_tasks("val")
    (two,) = dress_module(placeholder, fiq, query_text="two-queries", exclude_reference=True).composed_tasks("val")
    assert len(two.queries) == 2 * len(base.queries)
    assert len(set(two.query_names)) == len(two.query_names)
    assert two.exclude_reference is True
    assert [two.evaluation.queries[2 * i].reference_index for i in range(50)] == [
        base.evaluation.queries[i].reference_index for i in range(50)
    ]
    (avg,) = dress_module(placeholder, fiq, query_text="average").composed_tasks("val")
    batch = collate_retrieval([avg.queries[i] for i in range(3)])
    assert [len(t) for t in batch["text"]] == [2, 2, 2]
    (vs,) = dress_module(placeholder, fiq, protocol="val-split", max_val_queries=10).composed_tasks("val")
    assert vs.key == "fashioniq-val-split/dress" and len(vs.queries) == 10
    assert len(vs.gallery) == len(
        dict.fromkeys(i for e in raw(fiq, "cap", "dress", "val") for i in (e["candidate"], e["target"]))
    )


def test_datamodule_training_batch(placeholder: Path, fiq: Path) -> None:
    dm = dress_module(placeholder, fiq)
    triplets = dm.triplets("train")
    assert len(triplets) == len(raw(fiq, "cap", "dress", "train"))
    assert {t.category for t in triplets} == {"dress"}
    ds = dm.triplet_dataset(triplets, "train", train=True)
    batch = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate_retrieval)))
    assert batch["reference"].shape == (4, 3, 8, 8) and batch["target"].shape == (4, 3, 8, 8)
    assert len(batch["text"]) == 4 and all(isinstance(t, str) and " and " in t for t in batch["text"])
    assert batch["target_id"] == [t.target_id for t in triplets[:4]]
    assert len(dm.image_pairs("val")) == len(raw(fiq, "cap", "dress", "val"))


@pytest.fixture()
def val_only(fiq: Path, tmp_path: Path) -> tuple[Path, str, int]:
    """Dress val images with one gallery image removed: the root, the removed id and its split entry."""
    png = tmp_path / "placeholder.png"
    Image.new("RGB", (10, 10)).save(png)
    ids = dress_ids(fiq, ("val",))
    split = raw(fiq, "split", "dress", "val")
    entries = raw(fiq, "cap", "dress", "val")
    used = [e["target"] for e in entries]
    position = next(i for i, x in enumerate(split) if x in used)  # a gallery id that is also a target
    link_images(tmp_path / "images", ids - {split[position]}, png)
    return tmp_path, split[position], position


def test_missing_gallery_image_is_an_error_naming_it(val_only: tuple[Path, str, int], fiq: Path) -> None:
    root, missing, position = val_only
    with pytest.raises(DataError) as err:
        dress_module(root, fiq).composed_tasks("val")
    message = str(err.value)
    assert missing in message and "val" in message and f"split.dress.val.json entry {position}" in message


def test_missing_query_image_is_an_error_naming_the_entry(val_only: tuple[Path, str, int], fiq: Path) -> None:
    root, missing, _ = val_only
    entries = raw(fiq, "cap", "dress", "val")
    first = next(i for i, e in enumerate(entries) if missing in (e["candidate"], e["target"]))
    with pytest.raises(DataError, match=rf"{missing}.*val.*cap\.dress\.val\.json entry {first}\b"):
        dress_module(root, fiq, protocol="val-split").composed_tasks("val")


def test_missing_training_image_is_an_error_naming_the_entry(val_only: tuple[Path, str, int], fiq: Path) -> None:
    root, missing, _ = val_only
    dm = dress_module(root, fiq)
    entries = raw(fiq, "cap", "dress", "val")
    first = next(i for i, e in enumerate(entries) if missing in (e["candidate"], e["target"]))
    with pytest.raises(DataError, match=rf"{missing}.*val triplets.*cap\.dress\.val\.json entry {first}\b"):
        dm.triplet_dataset(dm.triplets("val"), "val", train=False)


@pytest.mark.parametrize("protocol", ["original", "val-split"])
def test_on_missing_skip_logs_counts(
    val_only: tuple[Path, str, int], fiq: Path, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    root, missing, _ = val_only
    entries = raw(fiq, "cap", "dress", "val")
    affected = sum(missing in (e["candidate"], e["target"]) for e in entries)
    assert affected >= 1
    with caplog.at_level(logging.WARNING):
        (task,) = dress_module(root, fiq, protocol=protocol, on_missing="skip").composed_tasks("val")
    assert len(task.queries) == len(entries) - affected
    assert missing not in task.gallery_names
    gallery_dropped = 1 if protocol == "original" else 0
    assert f"skipped {gallery_dropped} of" in caplog.text and f"{affected} of {len(entries)} queries" in caplog.text
    if protocol == "original":
        assert len(task.gallery) == OFFICIAL["dress"][0] - 1


# ---------------------------------------------------------------------------------------------- hand-made data
COLORS = {
    "a1": (255, 0, 0),
    "a2": (0, 255, 0),
    "a3": (0, 0, 255),
    "a4": (255, 255, 0),
    "b1": (0, 255, 255),
    "b2": (255, 0, 255),
}


def write_small(root: Path) -> Path:
    """Two categories; a*: dress (a3 is a JPEG), b*: shirt; a4 is a val candidate absent from the val split."""
    (root / "images").mkdir(parents=True)
    (root / "captions").mkdir()
    (root / "image_splits").mkdir()
    for name, color in COLORS.items():
        ext = "jpg" if name == "a3" else "png"
        Image.new("RGB", (6, 4), color).save(root / "images" / f"{name}.{ext}")

    def put(kind: str, cat: str, split: str, data: object) -> None:
        folder, prefix = ("captions", "cap") if kind == "cap" else ("image_splits", "split")
        (root / folder / f"{prefix}.{cat}.{split}.json").write_text(json.dumps(data))

    for split in ("train", "val", "test"):
        put("split", "dress", split, ["a1", "a2", "a3"])
        put("split", "shirt", split, ["b1", "b2"])
    put("cap", "dress", "train", [{"candidate": "a1", "target": "a2", "captions": ["is green", "has no red"]}] * 2)
    put("cap", "shirt", "train", [{"candidate": "b1", "target": "b2", "captions": ["is pink.", "brighter"]}])
    put(
        "cap",
        "dress",
        "val",
        [
            {"candidate": "a2", "target": "a3", "captions": ["is blue", "darker"]},
            {"candidate": "a4", "target": "a1", "captions": ["is red", "not yellow"]},
        ],
    )
    put("cap", "shirt", "val", [{"candidate": "b2", "target": "b1", "captions": ["is cyan", "lighter"]}])
    put("cap", "dress", "test", [{"candidate": "a1", "captions": ["x", "y"]}])
    put("cap", "shirt", "test", [{"candidate": "b1", "captions": ["x", "y"]}])
    return root


def small_module(root: Path, **kwargs) -> FashionIQDataModule:
    kwargs.setdefault("categories", ["dress", "shirt"])
    dm = FashionIQDataModule(root=str(root), batch_size=2, **kwargs)
    dm.set_transforms(T.ToTensor(), T.ToTensor())
    return dm


def color_of(image: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(round(float(v) * 255)) for v in image[:, 1, 1])


def test_small_dataset_tasks(tmp_path: Path) -> None:
    root = write_small(tmp_path)
    dress, shirt = small_module(root, categories=["dress", "shirt"], exclude_reference=True).composed_tasks("val")
    assert (dress.key, shirt.key) == ("fashioniq-original/dress", "fashioniq-original/shirt")
    assert dress.gallery_names == ["a1", "a2", "a3"] and dress.exclude_reference
    first, second = dress.queries[0], dress.queries[1]
    assert (first["target_id"], first["reference_id"]) == (2, 1)
    assert (second["target_id"], second["reference_id"]) == (0, -1)  # a4 is not in the gallery
    assert first["text"] == "Is blue and darker"
    assert color_of(first["image"]) == COLORS["a2"] and color_of(second["image"]) == COLORS["a4"]
    assert [color_of(dress.gallery[i]["image"]) for i in range(2)] == [COLORS["a1"], COLORS["a2"]]
    r, g, b = color_of(dress.gallery[2]["image"])  # the JPEG: blue, up to compression error
    assert b > 230 and r < 25 and g < 25
    (vs, _) = small_module(root, categories=["dress", "shirt"], protocol="val-split").composed_tasks("val")
    assert vs.gallery_names == ["a2", "a3", "a4", "a1"]  # first-seen order, candidate before target
    assert vs.queries[1]["reference_id"] == 2


def test_small_dataset_triplets(tmp_path: Path) -> None:
    root = write_small(tmp_path)
    triplets = small_module(root).triplets("train")
    assert [(t.category, t.reference_id, t.target_id) for t in triplets] == [
        ("dress", "a1", "a2"),
        ("dress", "a1", "a2"),
        ("shirt", "b1", "b2"),
    ]
    assert triplets[0].source.endswith("cap.dress.train.json entry 0")
    assert triplets[0].reference == root / "images" / "a1.png"
    assert small_module(root, categories=["shirt"]).triplets("val")[0].target_id == "b1"
    assert [t.target_id for t in small_module(root).triplets("test")] == ["a3", "a1", "b1"]  # test == val


def test_small_dataset_annotations_root(tmp_path: Path) -> None:
    root = write_small(tmp_path / "data")
    ann = tmp_path / "clean"
    (ann / "captions").mkdir(parents=True)
    (ann / "image_splits").mkdir()
    (ann / "image_splits" / "split.dress.val.json").write_text('["a1", "a3"]')
    (ann / "captions" / "cap.dress.val.json").write_text(
        '[{"candidate": "a1", "target": "a3", "captions": ["x", "y"]}]'
    )
    (task,) = small_module(root, categories=["dress"], annotations_root=str(ann)).composed_tasks("val")
    assert task.gallery_names == ["a1", "a3"] and task.queries[0]["target_id"] == 1


def test_target_absent_from_the_gallery_is_an_error(tmp_path: Path) -> None:
    root = write_small(tmp_path)
    (root / "image_splits" / "split.dress.val.json").write_text('["a1", "a2"]')
    with pytest.raises(AnnotationError, match=r"cap\.dress\.val\.json entry 0: target 'a3'.*not in the gallery"):
        small_module(root, categories=["dress"]).composed_tasks("val")


def test_ambiguous_extension_is_an_error(tmp_path: Path) -> None:
    root = write_small(tmp_path)
    Image.new("RGB", (2, 2)).save(root / "images" / "a1.jpg")
    with pytest.raises(DataError, match=r"'a1' is ambiguous: .*a1\.jpg, .*a1\.png"):
        small_module(root, categories=["dress"]).composed_tasks("val")


def test_text_pair_sources_say_which_argument_to_set(tmp_path: Path) -> None:
    dm = small_module(write_small(tmp_path))
    with pytest.raises(NotImplementedError, match="descriptions="):
        dm.description_pairs("train")
    with pytest.raises(NotImplementedError, match="caption_pairs="):
        dm.caption_pairs("train")


def test_text_pair_sources_read_jsonl(tmp_path: Path) -> None:
    root = write_small(tmp_path)
    rows = [
        {"image": "images/a1.png", "text": "a red dress", "split": "train"},
        {"image": "images/b1.png", "text": "a cyan shirt", "split": "val"},
    ]
    (root / "desc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = small_module(root, descriptions="desc.jsonl", caption_pairs=str(root / "desc.jsonl"))
    assert [(p.text, p.image) for p in dm.description_pairs("train")] == [("a red dress", root / "images" / "a1.png")]
    assert [p.text for p in dm.caption_pairs("test")] == ["a cyan shirt"]  # test == val


def test_bad_arguments(tmp_path: Path) -> None:
    root = str(write_small(tmp_path))
    for kwargs, pattern in [
        ({"categories": ["skirt"]}, "skirt"),
        ({"categories": []}, "empty"),
        ({"categories": ["dress", "dress"]}, "twice"),
        ({"protocol": "vals"}, "vals"),
        ({"query_text": "both"}, "both"),
        ({"on_missing": "ignore"}, "ignore"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            FashionIQDataModule(root=root, **kwargs)
    with pytest.raises(ValueError, match="val files"):
        small_module(tmp_path).composed_tasks("train")


def test_lightningcli_friendly_signature(tmp_path: Path) -> None:
    """As LightningCLI builds it: a subclass of CTIIRDataModule by class_path, every argument typed."""
    from jsonargparse import ArgumentError, ArgumentParser

    from ctiir.datamodules.base import CTIIRDataModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(CTIIRDataModule, "data")
    init = {"root": str(tmp_path), "categories": ["shirt", "toptee"], "protocol": "val-split", "batch_size": 8}
    cfg = parser.parse_args(
        ["--data", json.dumps({"class_path": "ctiir.datamodules.fashioniq.FashionIQDataModule", "init_args": init})]
    )
    dm = parser.instantiate(cfg).data
    assert isinstance(dm, FashionIQDataModule)
    assert (dm.categories, dm.protocol, dm.batch_size, dm.query_text) == (
        ("shirt", "toptee"),
        "val-split",
        8,
        "clip4cir",
    )
    bad = {
        "class_path": "ctiir.datamodules.fashioniq.FashionIQDataModule",
        "init_args": {"root": "x", "protocol": "nope"},
    }
    with pytest.raises(ArgumentError, match="nope"):  # rejected by the Literal annotation, before __init__
        parser.parse_args(["--data", json.dumps(bad)])


def test_reads_the_synthetic_benchmark_unchanged(tmp_path: Path) -> None:
    synthetic = pytest.importorskip("ctiir.datamodules.synthetic")
    root = synthetic.generate(tmp_path / "synth", seed=0, size="tiny")
    dm = small_module(
        root, categories=CATEGORIES, descriptions="stage2/descriptions.jsonl", caption_pairs="stage1/pairs.jsonl"
    )
    tasks = dm.composed_tasks("val")
    assert [t.subset for t in tasks] == list(CATEGORIES)
    for t in tasks:
        assert len(t.queries) == len(raw(root, "cap", t.subset, "val")) > 0
        assert t.queries[0]["image"].shape[0] == 3
    assert len(dm.triplets("train")) == sum(len(raw(root, "cap", c, "train")) for c in CATEGORIES)
    assert dm.description_pairs("train") and dm.caption_pairs("train")
