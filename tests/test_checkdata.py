"""``ctiir check-data`` on small FashionIQ-layout datasets with planted faults, and on clean ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms as T

from ctiir.checkdata import check_data_main
from ctiir.datamodules.fashioniq import FashionIQDataModule


def entry(candidate: str, target: str | None, c0: str = "is red", c1: str = "darker") -> dict:
    out = {"candidate": candidate, "captions": [c0, c1]}
    if target is not None:
        out["target"] = target
    return out


def write_dataset(root: Path, faults: bool) -> Path:
    """Dress only. With ``faults``: every kind of problem check-data knows, each once (see the tests)."""
    images, captions, splits = root / "images", root / "captions", root / "image_splits"
    for folder in (images, captions, splits):
        folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("g1", "g2", "g3", "g4", "g5", "g6", "t1"):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(images / f"{name}.png")
    Image.new("RGB", (8, 8), (0, 0, 255)).save(images / "j1.jpg")
    (images / "n1.png").write_bytes(b"this is not an image")
    if faults:
        data = (images / "t1.png").read_bytes()
        (images / "t1.png").write_bytes(data[: len(data) // 2])  # a truncated PNG

    def put(folder: Path, name: str, data: object) -> None:
        (folder / name).write_text(json.dumps(data, indent=2))

    put(splits, "split.dress.train.json", ["g5", "g6"])
    put(captions, "cap.dress.train.json", [entry("g5", "g6")])
    put(splits, "split.dress.test.json", ["g1"])
    put(captions, "cap.dress.test.json", [entry("g1", None, "", "is blue")])  # one blank caption: a warning
    if faults:
        put(splits, "split.dress.val.json", ["g1", "g2", "g3", "g4", "m1", "t1", "n1", "j1", "g2"])
        put(
            captions,
            "cap.dress.val.json",
            [
                entry("g1", "g2"),  # 0 fine
                entry("g3", "m1"),  # 1 target image missing
                entry("t1", "g4"),  # 2 candidate image truncated
                entry("g1", "g2"),  # 3 duplicate of 0
                entry("g2", "x9"),  # 4 x9 is not in the split file
                {"candidate": "g3", "captions": ["a", "b"]},  # 5 malformed: no target
                entry("g4", "j1"),  # 6 fine (a JPEG target)
                entry("n1", "g1"),  # 7 candidate is not an image
            ],
        )
    else:
        put(splits, "split.dress.val.json", ["g1", "g2", "g3", "g4", "j1"])
        put(captions, "cap.dress.val.json", [entry("g1", "g2"), entry("g4", "j1"), entry("g3", "g1")])
    return root


def run(*args: str | Path) -> int:
    return check_data_main(
        ["--dataset=fashioniq", "--categories=[dress]", "--progress_bar=false", "--workers=2", *map(str, args)]
    )


def problems_of(report: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for p in report["problems"]:
        out.setdefault(p["kind"], []).append(p)
    return out


def test_finds_every_planted_fault(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_dataset(tmp_path / "data", faults=True)
    assert run("--root", root, "--json", tmp_path / "report.json") == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ok"] is False
    found = problems_of(report)
    where = {kind: sorted(p["where"].split("/")[-1] for p in ps) for kind, ps in found.items()}
    assert where["missing-image"] == ["split.dress.val.json entry 4"]  # m1, first used there
    assert where["corrupt-image"] == ["split.dress.val.json entry 5", "split.dress.val.json entry 6"]  # t1, n1
    assert {p["detail"].split(":")[0].split("/")[-1] for p in found["corrupt-image"]} == {"t1.png", "n1.png"}
    assert where["duplicate-split-id"] == ["split.dress.val.json entry 8"]
    assert where["duplicate-triplet"] == ["cap.dress.val.json entry 3"]
    assert where["absent-id"] == ["cap.dress.val.json entry 4"] and "x9" in found["absent-id"][0]["detail"]
    assert (
        where["malformed-entry"] == ["cap.dress.val.json entry 5"]
        and "'target'" in found["malformed-entry"][0]["detail"]
    )
    assert where["blank-caption"] == ["cap.dress.test.json entry 0"]
    assert found["blank-caption"][0]["severity"] == "warning"
    assert sum(p["severity"] == "error" for p in report["problems"]) == 7  # nothing else is flagged

    effects = {(e["split"], e["protocol"], e["what"]): (e["before"], e["after"]) for e in report["effects"]}
    assert effects[("val", "original", "gallery")] == (9, 5)  # g1 g2 g3 g4 j1
    assert effects[("val", "original", "queries")] == (8, 2)  # entries 0 and 6
    assert effects[("val", "val-split", "gallery")] == (9, 4)  # g1 g2 g4 j1
    assert effects[("val", "val-split", "queries")] == (8, 2)
    assert effects[("train", "training", "triplets")] == (1, 1)
    assert report["entries"]["val/dress"] == {
        "split_ids_before": 9,
        "split_ids_after": 5,
        "caption_entries_before": 8,
        "caption_entries_after": 2,
    }
    out = capsys.readouterr().out
    assert "PROBLEMS FOUND" in out and "missing-image" in out and "val-split" in out


def test_malformed_files_are_reported_not_raised(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "data", faults=False)
    (root / "captions" / "cap.dress.train.json").write_text('[{"candidate": "g5", "tar')
    (root / "image_splits" / "split.dress.test.json").write_text('{"g1": 1}')
    assert run("--root", root, "--json", tmp_path / "r.json") == 1
    found = problems_of(json.loads((tmp_path / "r.json").read_text()))
    messages = sorted(p["detail"] for p in found["malformed-file"])
    assert "cap.dress.train.json: invalid or truncated JSON" in messages[0]
    assert "split.dress.test.json: expected a JSON list" in messages[1]


def test_clean_dataset_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_dataset(tmp_path / "data", faults=False)
    assert run("--root", root, "--json", tmp_path / "r.json") == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["ok"] and [p["kind"] for p in report["problems"]] == ["blank-caption"]  # a warning only
    assert all(e["before"] == e["after"] for e in report["effects"])
    assert report["images_checked"] == 7  # g1-g6 and j1; t1 and n1 are used by no entry
    assert "OK" in capsys.readouterr().out


def test_missing_image_folder_is_reported(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "data", faults=False)
    for image in (root / "images").iterdir():
        image.unlink()
    (root / "images").rmdir()
    assert run("--root", root, "--splits=[val]", "--json", tmp_path / "r.json") == 1
    found = problems_of(json.loads((tmp_path / "r.json").read_text()))
    assert len(found["missing-folder"]) == 1 and len(found["missing-image"]) == 5


def test_write_filtered_copy_passes_and_is_usable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_dataset(tmp_path / "data", faults=True)
    out = tmp_path / "filtered"
    assert run("--root", root, "--write_filtered", out) == 1  # the source still has problems
    assert json.loads((out / "image_splits" / "split.dress.val.json").read_text()) == ["g1", "g2", "g3", "g4", "j1"]
    kept = json.loads((out / "captions" / "cap.dress.val.json").read_text())
    assert kept == [entry("g1", "g2"), entry("g4", "j1")]
    assert "annotations_root" in capsys.readouterr().out
    # the copy, with the original images, is clean apart from the corrupt files no entry uses any more
    assert run("--root", root, "--annotations_root", out) == 0
    dm = FashionIQDataModule(root=str(root), annotations_root=str(out), categories=["dress"])
    dm.set_transforms(T.ToTensor(), T.ToTensor())
    (task,) = dm.composed_tasks("val")
    assert task.gallery_names == ["g1", "g2", "g3", "g4", "j1"] and len(task.queries) == 2
    assert task.queries[1]["target_id"] == 4


def test_write_filtered_refuses_to_overwrite_or_write_into_the_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_dataset(tmp_path / "data", faults=True)
    out = tmp_path / "filtered"
    assert run("--root", root, "--write_filtered", out) == 1
    before = {p: p.read_bytes() for p in out.rglob("*.json")}
    capsys.readouterr()
    assert run("--root", root, "--write_filtered", out) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*.json")} == before
    sources = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert run("--root", root, "--write_filtered", root / "clean") == 2
    assert "inside the source root" in capsys.readouterr().err
    assert not (root / "clean").exists() and {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == sources


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_dataset(tmp_path / "data", faults=False)
    assert run("--root", root, "--categories=[skirt]") == 2
    assert "skirt" in capsys.readouterr().err
    assert run("--root", tmp_path / "nowhere") == 2
    assert check_data_main(["--dataset", "cifar", "--root", str(root)]) == 2


def test_real_annotations(shared_data: Path, tmp_path: Path) -> None:
    """The official val files without images: the counts before filtering are the protocols' own."""
    fiq = shared_data / "fashioniq"
    code = check_data_main(
        [
            "--dataset",
            "fashioniq",
            "--root",
            str(fiq),
            "--splits=[val]",
            "--progress_bar=false",
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    assert code == 1  # no images here
    report = json.loads((tmp_path / "r.json").read_text())
    kinds = {p["kind"] for p in report["problems"]}
    assert kinds == {"missing-folder", "missing-image", "blank-caption"}  # the annotations themselves are sound
    assert sum(p["kind"] == "blank-caption" for p in report["problems"]) == 3  # shirt 1928, toptee 676 and 1076
    before = {(e["subset"], e["protocol"], e["what"]): e["before"] for e in report["effects"]}
    for cat, (gallery, queries) in {"dress": (3817, 2017), "shirt": (6346, 2038), "toptee": (5373, 1961)}.items():
        entries = json.loads((fiq / "captions" / f"cap.{cat}.val.json").read_text())
        union = {i for e in entries for i in (e["candidate"], e["target"])}
        assert before[(cat, "original", "gallery")] == gallery and before[(cat, "original", "queries")] == queries
        assert before[(cat, "val-split", "gallery")] == len(union) and before[(cat, "val-split", "queries")] == queries
    assert all(e["after"] == 0 for e in report["effects"])
