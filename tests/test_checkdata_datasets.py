"""``ctiir check-data`` on Shoes and CIRR: planted faults, the real annotation files, and agreement with the
datamodule (the filtered copy evaluates to the counts that check-data predicted)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from ctiir.checkdata import check_data_main
from ctiir.datamodules.cirr import CIRRDataModule
from ctiir.datamodules.shoes import ShoesDataModule
from tests.test_cirr import placeholder_images, synthetic_split, write_cirr
from tests.test_shoes import placeholder_tree, trip, write_shoes


def run(dataset: str, *args: str | Path) -> int:
    return check_data_main([f"--dataset={dataset}", "--progress_bar=false", "--workers=2", *map(str, args)])


def report_of(path: Path) -> tuple[dict, dict[str, list[dict]], dict[tuple[str, str, str], tuple]]:
    report = json.loads(path.read_text())
    kinds: dict[str, list[dict]] = {}
    for p in report["problems"]:
        kinds.setdefault(p["kind"], []).append(p)
    effects = {(e["split"], e["protocol"], e["what"]): (e["before"], e["after"]) for e in report["effects"]}
    return report, kinds, effects


def corrupt(path: Path) -> None:
    path.unlink()
    path.write_bytes(b"not an image")


# ---------------------------------------------------------------------------------------------- Shoes
TRAIN = ["img_womens_boots_1.jpg", "img_womens_boots_2.jpg"]
EVAL = [f"img_womens_flats_{i}.jpg" for i in range(1, 6)]


def shoes_with_faults(tmp_path: Path) -> tuple[Path, Path]:
    f1, f2, f3, f4, f5 = EVAL
    triplets = [
        trip(f2, f1),  # 0 fine
        trip(f3, f2),  # 1 fine
        trip(f4, f3),  # 2 target image missing
        trip(f1, f5),  # 3 reference image corrupt
        trip(f2, f1),  # 4 duplicate of 0
        {"ImageName": f1},  # 5 malformed
        trip(f1, "img_x.jpg"),  # 6 reference in neither list
        trip(TRAIN[1], TRAIN[0]),  # 7 a training triplet
    ]
    captions = [{"ImageName": f1, "Caption": "black flats"}, {"ImageName": TRAIN[0], "Caption": "a boot"}]
    ann = write_shoes(tmp_path / "ann", triplets, captions, TRAIN, EVAL + [f2])  # f2 listed twice
    images = tmp_path / "images"
    placeholder_tree(images, TRAIN + EVAL)
    (images / "womens_flats" / "0" / f4).unlink()
    corrupt(images / "womens_flats" / "0" / f5)
    return ann, images


def test_shoes_planted_faults_and_the_filtered_copy_agree_with_the_datamodule(tmp_path: Path) -> None:
    ann, images = shoes_with_faults(tmp_path)
    out = tmp_path / "filtered"
    code = run("shoes", "--root", images, "--annotations_root", ann, "--json", tmp_path / "r.json", "--write_filtered", out)
    assert code == 1
    report, kinds, effects = report_of(tmp_path / "r.json")
    where = {k: sorted(p["where"].split("/")[-1] for p in ps) for k, ps in kinds.items()}
    assert where["duplicate-name"] == ["eval_im_names.txt line 6"]
    assert where["duplicate-triplet"] == ["relative_captions_shoes.json entry 4"]
    assert where["malformed-entry"] == ["relative_captions_shoes.json entry 5"]
    assert where["absent-id"] == ["relative_captions_shoes.json entry 6"]
    assert [p["detail"].split(" ")[4] for p in kinds["missing-image"]] == [EVAL[3]]
    assert EVAL[4] in kinds["corrupt-image"][0]["detail"]
    assert sum(p["severity"] == "error" for p in report["problems"]) == 6  # nothing else is flagged
    assert effects[("eval", "shoes", "gallery")] == (6, 3)  # lines; then f1 f2 f3
    assert effects[("eval", "shoes", "queries")] == (5, 2)  # entries 0-4; then 0 and 1
    assert effects[("train", "training", "triplets")] == (1, 1)
    # The filtered copy is clean and the datamodule evaluates exactly what check-data predicted.
    assert run("shoes", "--root", images, "--annotations_root", out) == 0
    dm = ShoesDataModule(str(images), annotations_root=str(out))
    (evaluation,) = dm.evaluation_sets("test")
    assert (len(evaluation.gallery), len(evaluation.queries)) == (3, 2)


def test_shoes_real_annotations(shared_data: Path, tmp_path: Path) -> None:
    """The official files without images: the counts before filtering are the protocol's own."""
    shoes = shared_data / "shoes"
    empty = tmp_path / "no-images"
    empty.mkdir()
    assert run("shoes", "--root", empty, "--annotations_root", shoes, "--json", tmp_path / "r.json") == 1
    report, kinds, effects = report_of(tmp_path / "r.json")
    assert set(kinds) == {"missing-image"}  # the annotations themselves are sound
    assert effects[("eval", "shoes", "gallery")] == (4_658, 0)
    assert effects[("eval", "shoes", "queries")] == (1_761, 0)
    assert effects[("train", "training", "triplets")] == (8_990, 0)


# ---------------------------------------------------------------------------------------------- CIRR
def cirr_with_faults(tmp_path: Path) -> Path:
    entries, split_map = synthetic_split("dev", 2)  # 2 image sets of 6, one query per image
    entries[1]["caption"] = " "  # blank: a warning, the query is kept
    entries[4]["reference"] = "dev-9-9-img0"  # not in the split file
    entries.append(dict(entries[0]))  # a repeated pairid
    write_cirr(tmp_path, "val", entries, split_map)
    placeholder_images(tmp_path, split_map)
    (tmp_path / "dev" / "dev-1-2-img0.png").unlink()  # a missing image of set 1
    corrupt(tmp_path / "dev" / "dev-1-4-img0.png")  # a corrupt one
    return tmp_path


def test_cirr_planted_faults_and_the_filtered_copy_agree_with_the_datamodule(tmp_path: Path) -> None:
    root = cirr_with_faults(tmp_path / "data")
    out = tmp_path / "filtered"
    code = run("cirr", "--root", root, "--splits=[val]", "--json", tmp_path / "r.json", "--write_filtered", out)
    assert code == 1
    report, kinds, effects = report_of(tmp_path / "r.json")
    where = {k: sorted(p["where"].split("/")[-1] for p in ps) for k, ps in kinds.items()}
    assert where["blank-caption"] == ["cap.rc2.val.json entry 1"] and kinds["blank-caption"][0]["severity"] == "warning"
    assert where["absent-id"] == ["cap.rc2.val.json entry 4"]
    assert where["duplicate-pairid"] == ["cap.rc2.val.json entry 12"]
    assert len(kinds["missing-image"]) == 1 and len(kinds["corrupt-image"]) == 1
    assert sum(p["severity"] == "error" for p in report["problems"]) == 4
    assert effects[("val", "cirr", "gallery")] == (12, 10)
    # 13 entries; 11 valid and unique; set 1's queries all lose a member image: 5 of set 0 remain
    assert effects[("val", "cirr", "queries")] == (13, 5)
    assert run("cirr", "--root", root, "--annotations_root", out, "--splits=[val]") == 0
    (evaluation,) = CIRRDataModule(str(root), annotations_root=str(out)).evaluation_sets("val")
    assert (len(evaluation.gallery), len(evaluation.queries)) == (10, 5)


def test_cirr_sample_is_clean_with_its_images(shared_data: Path, tmp_path: Path) -> None:
    sample = shared_data / "cirr-sample"
    split_map = json.loads((sample / "image_splits" / "split.rc2.val.json").read_text())
    placeholder_images(tmp_path / "img_raw", split_map)
    args = ["--root", tmp_path, "--annotations_root", sample, "--image_root", tmp_path / "img_raw", "--splits=[val]"]
    assert run("cirr", *args, "--json", tmp_path / "r.json") == 0
    report, kinds, effects = report_of(tmp_path / "r.json")
    assert kinds == {} and effects[("val", "cirr", "gallery")] == (35, 35)
    assert effects[("val", "cirr", "queries")] == (50, 50)


def test_json_report_is_never_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = cirr_with_faults(tmp_path / "data")
    (tmp_path / "r.json").write_text("keep me")
    assert run("cirr", "--root", root, "--splits=[val]", "--json", tmp_path / "r.json") == 2
    assert "refusing to overwrite" in capsys.readouterr().err and (tmp_path / "r.json").read_text() == "keep me"
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_a_decoded_image_is_needed_not_just_a_file(tmp_path: Path) -> None:
    """A placeholder that exists but is not an image is a corrupt image, not a present one."""
    root = cirr_with_faults(tmp_path / "data")
    Image.new("RGB", (2, 2)).save(root / "dev" / "dev-1-4-img0.png")  # repair the corrupt one
    run("cirr", "--root", root, "--splits=[val]", "--json", tmp_path / "r.json")
    _, kinds, _ = report_of(tmp_path / "r.json")
    assert "corrupt-image" not in kinds and len(kinds["missing-image"]) == 1
