"""Shoes: the parser on the real annotation files (counts), its checks, and the datamodule's protocol."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image
from torchvision import transforms as T

from ctiir.datamodules.errors import AnnotationError, DataError
from ctiir.datamodules.shoes import ShoesDataModule, read_shoes

TF = T.Compose([T.Resize((8, 8)), T.ToTensor()])

# With the official files: 10,751 triplets, of which 1,761 have an eval reference (the test queries) and
# 8,990 a train reference; 3,600 single-image captions (3,000 train images, 600 eval images).
N_TRIPLETS, N_QUERIES, N_TRAIN, N_GALLERY = 10_751, 1_761, 8_990, 4_658


def placeholder_tree(root: Path, names: list[str]) -> None:
    """One tiny PNG linked under every name, nested like the Attribute Discovery folders."""
    root.mkdir(parents=True, exist_ok=True)
    source = root / "placeholder.bin"
    Image.new("RGB", (4, 4), (10, 10, 200)).save(source, format="PNG")
    for category in {name.rsplit("_", 1)[0].removeprefix("img_") for name in names}:
        (root / category / "0").mkdir(parents=True, exist_ok=True)
    for name in names:
        os.symlink(source, root / name.rsplit("_", 1)[0].removeprefix("img_") / "0" / name)


@pytest.fixture(scope="module")
def real(shared_data: Path):
    return read_shoes(shared_data / "shoes")


def test_real_counts(real) -> None:
    assert len(real.triplets) == N_TRIPLETS
    assert len(real.train_names) == 10_000 and len(real.eval_names) == N_GALLERY
    queries, train = real.split_triplets("test"), real.split_triplets("train")
    assert len(queries) == N_QUERIES and real.split_triplets("val") == queries
    assert len(train) == N_TRAIN and len(queries) + len(train) == N_TRIPLETS
    evals = set(real.eval_names)
    assert all(t.reference in evals and t.target in evals for t in queries)
    assert not any(t.reference in evals for t in train)
    # Stage II text->image pairs: captions of train images for "train", of eval images for "val"
    assert len(real.split_captions("train")) == 3_000 and len(real.split_captions("val")) == 600
    # one evaluation triplet names its reference as its target
    assert sum(t.reference == t.target for t in queries) == 1


def test_real_datamodule_protocol(shared_data: Path, tmp_path: Path, real) -> None:
    placeholder_tree(tmp_path, real.train_names + real.eval_names)
    dm = ShoesDataModule(str(tmp_path), annotations_root=str(shared_data / "shoes"))
    dm.set_transforms(TF, TF)
    (task,) = dm.composed_tasks("test")
    assert task.protocol == "shoes" and task.exclude_reference is True
    assert task.ks == (1, 10, 50) and task.headline == ("R@1", "R@10", "R@50")
    assert task.gallery_names == real.eval_names and len(task.queries) == N_QUERIES
    position = {n: i for i, n in enumerate(task.gallery_names)}
    items = [task.queries[i] for i in (0, 1, len(task.queries) - 1)]
    chosen = [real.split_triplets("test")[i] for i in (0, 1, len(task.queries) - 1)]
    for item, triplet in zip(items, chosen, strict=True):
        assert item["target_id"] == position[triplet.target]
        assert item["reference_id"] == (-1 if triplet.reference == triplet.target else position[triplet.reference])
        assert item["text"] == triplet.caption and item["image"].shape == (3, 8, 8)
    assert task.evaluation.reference_is_target == 1
    assert dm.composed_tasks("val")[0].query_names == task.query_names
    # Stage II and III sources
    assert len(dm.description_pairs("train")) == 3_000 and len(dm.description_pairs("val")) == 600
    pairs = dm.image_pairs("train")
    assert len(pairs) == N_TRAIN and all(p.a.is_file() and p.b.is_file() for p in pairs)
    assert len(dm.triplets("train")) == N_TRAIN and len(dm.triplets("val")) == N_QUERIES


# ---------------------------------------------------------------------------------------------- small files
def write_shoes(root: Path, triplets: list, captions: list, train: list[str], evals: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "relative_captions_shoes.json").write_text(json.dumps(triplets))
    (root / "captions_shoes.json").write_text(json.dumps(captions))
    (root / "train_im_names.txt").write_text("\n".join(train) + "\n")
    (root / "eval_im_names.txt").write_text("\n".join(evals) + "\n")
    return root


def trip(target: str, reference: str, caption: str = "is darker") -> dict:
    return {"ImageName": target, "ReferenceImageName": reference, "RelativeCaption": caption}


TRAIN = ["img_womens_boots_1.jpg", "img_womens_boots_2.jpg"]
EVAL = ["img_womens_flats_1.jpg", "img_womens_flats_2.jpg", "img_womens_flats_3.jpg"]
GOOD = [trip(TRAIN[1], TRAIN[0]), trip(EVAL[1], EVAL[0]), trip(EVAL[0], EVAL[2], "is lighter")]


def test_small_dataset_module(tmp_path: Path) -> None:
    ann = write_shoes(tmp_path / "ann", GOOD, [{"ImageName": EVAL[0], "Caption": "black flats"}], TRAIN, EVAL)
    placeholder_tree(tmp_path / "images", TRAIN + EVAL)
    dm = ShoesDataModule(str(tmp_path / "images"), annotations_root=str(ann))
    dm.set_transforms(TF, TF)
    (task,) = dm.composed_tasks("val")
    items = [task.queries[i] for i in range(len(task.queries))]
    assert [(q["reference_id"], q["target_id"]) for q in items] == [(0, 1), (2, 0)]
    assert [t.target_id for t in dm.triplets("train")] == [TRAIN[1]]
    assert [p.image_id for p in dm.description_pairs("val")] == [EVAL[0]]
    assert dm.description_pairs("train") == []
    with pytest.raises(ValueError, match="split must be 'val' or 'test'"):
        dm.composed_tasks("train")
    with pytest.raises(NotImplementedError, match="set caption_pairs"):
        dm.caption_pairs("train")
    (tmp_path / "images" / "open.jsonl").write_text(
        '{"image": "womens_boots/0/img_womens_boots_1.jpg", "text": "a boot"}\n'
    )
    stage_one = ShoesDataModule(str(tmp_path / "images"), annotations_root=str(ann), caption_pairs="open.jsonl")
    assert [p.image.is_file() for p in stage_one.caption_pairs("train")] == [True]


def test_name_found_twice_is_an_error_naming_both(tmp_path: Path) -> None:
    ann = write_shoes(tmp_path / "ann", GOOD, [], TRAIN, EVAL)
    placeholder_tree(tmp_path / "images", TRAIN + EVAL)
    copy = tmp_path / "images" / "extra" / EVAL[0]
    copy.parent.mkdir()
    copy.symlink_to(tmp_path / "images" / "placeholder.bin")
    dm = ShoesDataModule(str(tmp_path / "images"), annotations_root=str(ann))
    with pytest.raises(DataError, match=rf"{EVAL[0]}' is found twice") as info:
        dm.triplets("val")
    assert str(copy) in str(info.value) and str(tmp_path / "images" / "womens_flats" / "0" / EVAL[0]) in str(info.value)


def test_missing_image_names_the_entry(tmp_path: Path) -> None:
    ann = write_shoes(tmp_path / "ann", GOOD, [], TRAIN, EVAL)
    placeholder_tree(tmp_path / "images", TRAIN + EVAL[:2])
    dm = ShoesDataModule(str(tmp_path / "images"), annotations_root=str(ann))
    dm.set_transforms(TF, TF)
    with pytest.raises(DataError, match=rf"missing image .*{EVAL[2]} in shoes test gallery"):
        dm.composed_tasks("test")
    skip = ShoesDataModule(str(tmp_path / "images"), annotations_root=str(ann), on_missing="skip")
    skip.set_transforms(TF, TF)
    (task,) = skip.composed_tasks("test")
    assert len(task.queries) == 1 and task.evaluation.skipped_queries == 1


BAD = [
    (
        "relative_captions_shoes.json",
        [trip(EVAL[1], "img_x.jpg")],
        r"entry 0: ReferenceImageName 'img_x.jpg' is in neither",
    ),
    ("relative_captions_shoes.json", [trip(TRAIN[0], EVAL[0])], r"entry 0: evaluation triplet's target .* not in eval"),
    ("relative_captions_shoes.json", [trip(EVAL[1], EVAL[0], "")], r"entry 0: RelativeCaption is empty"),
    ("relative_captions_shoes.json", [GOOD[0], {"ImageName": EVAL[1]}], r"entry 1: missing key 'ReferenceImageName'"),
    ("relative_captions_shoes.json", [trip("a/../b.jpg", EVAL[0])], r"entry 0: ImageName .* path separator"),
    ("relative_captions_shoes.json", {"a": 1}, r"relative_captions_shoes.json: expected a JSON array"),
    (
        "captions_shoes.json",
        [{"ImageName": EVAL[0], "Caption": 3}],
        r"captions_shoes.json entry 0: key 'Caption' must be str",
    ),
    (
        "captions_shoes.json",
        [{"ImageName": "img_y.jpg", "Caption": "x"}],
        r"entry 0: ImageName 'img_y.jpg' is in neither",
    ),
]


@pytest.mark.parametrize(("file", "content", "message"), BAD)
def test_annotation_errors_name_file_and_entry(tmp_path: Path, file: str, content, message: str) -> None:
    root = write_shoes(tmp_path, GOOD, [], TRAIN, EVAL)
    (root / file).write_text(json.dumps(content))
    with pytest.raises(AnnotationError, match=message) as info:
        read_shoes(root)
    assert file in str(info.value)


def test_name_list_errors(tmp_path: Path) -> None:
    root = write_shoes(tmp_path / "a", GOOD, [], TRAIN + [TRAIN[0]], EVAL)
    with pytest.raises(AnnotationError, match=r"train_im_names.txt line 3: .* repeats line 1"):
        read_shoes(root)
    root = write_shoes(tmp_path / "b", GOOD, [], TRAIN + [EVAL[0]], EVAL)
    with pytest.raises(AnnotationError, match=r"train_im_names.txt and .*eval_im_names.txt share 1 names"):
        read_shoes(root)
    root = write_shoes(tmp_path / "c", GOOD, [], TRAIN, EVAL)
    (root / "eval_im_names.txt").unlink()
    with pytest.raises(AnnotationError, match=r"eval_im_names.txt: annotation file not found"):
        read_shoes(root)
    (root / "eval_im_names.txt").write_text("\n\n")
    with pytest.raises(AnnotationError, match=r"eval_im_names.txt: no image names"):
        read_shoes(root)
