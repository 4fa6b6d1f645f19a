"""CIRR: parsing and cross-checks, the datamodule's tasks on the real val sample, and the R@K / Rsubset
semantics (reference removed, not kept) against a brute-force implementation written here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from ctiir.datamodules.cirr import CIRRDataModule, cirr_protocol, read_cirr_captions, read_cirr_split
from ctiir.datamodules.errors import AnnotationError
from ctiir.metrics.functional import retrieval_ranks, subset_ranks
from ctiir.metrics.recall import RecallAtK

TF = T.Compose([T.Resize((8, 8)), T.ToTensor()])


def placeholder_images(image_root: Path, split_map: dict[str, str]) -> None:
    """One tiny PNG linked at every path a split file names."""
    image_root.mkdir(parents=True, exist_ok=True)
    source = image_root / "placeholder.png"
    Image.new("RGB", (4, 4), (0, 120, 0)).save(source)
    for rel in split_map.values():
        path = image_root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(source)


def write_cirr(root: Path, split: str, entries: list, split_map: dict) -> Path:
    (root / "captions").mkdir(parents=True, exist_ok=True)
    (root / "image_splits").mkdir(parents=True, exist_ok=True)
    (root / "captions" / f"cap.rc2.{split}.json").write_text(json.dumps(entries))
    (root / "image_splits" / f"split.rc2.{split}.json").write_text(json.dumps(split_map))
    return root


def synthetic_split(prefix: str, n_sets: int, with_targets: bool = True) -> tuple[list, dict]:
    """``n_sets`` image sets of 6 images, one query per image (reference = member i, target = member i+1)."""
    split_map: dict[str, str] = {}
    entries = []
    for s in range(n_sets):
        members = [f"{prefix}-{s}-{m}-img0" for m in range(6)]
        split_map.update({m: f"./{prefix}/{m}.png" for m in members})
        for i in range(6):
            entry = {
                "pairid": s * 10 + i,
                "reference": members[i],
                "caption": f"make it number {(i + 1) % 6}",
                "img_set": {"id": s, "members": members, "reference_rank": i},
            }
            if with_targets:
                entry["target_hard"] = members[(i + 1) % 6]
                entry["target_soft"] = {members[(i + 1) % 6]: 1.0}
            entries.append(entry)
    return entries, split_map


# ---------------------------------------------------------------------------------------------- real sample
@pytest.fixture(scope="module")
def sample(shared_data: Path) -> Path:
    return shared_data / "cirr-sample"


def test_sample_protocol(sample: Path) -> None:
    gallery, queries = cirr_protocol(sample, "val")
    raw = json.loads((sample / "captions" / "cap.rc2.val.json").read_text())
    assert len(queries) == 50 and len({q.set_id for q in queries}) == 6
    assert list(gallery) == list(json.loads((sample / "image_splits" / "split.rc2.val.json").read_text()))
    assert [q.pairid for q in queries] == [e["pairid"] for e in raw]
    assert all(len(q.members) == 6 and q.reference in q.members and q.target in q.members for q in queries)


@pytest.fixture()
def sample_module(sample: Path, tmp_path: Path) -> CIRRDataModule:
    placeholder_images(tmp_path / "img_raw", read_cirr_split(sample, "val"))
    dm = CIRRDataModule(str(tmp_path), annotations_root=str(sample), image_root=str(tmp_path / "img_raw"))
    dm.set_transforms(TF, TF)
    return dm


def test_sample_task(sample: Path, sample_module: CIRRDataModule) -> None:
    (task,) = sample_module.composed_tasks("val")
    split_map = read_cirr_split(sample, "val")
    raw = json.loads((sample / "captions" / "cap.rc2.val.json").read_text())
    assert task.protocol == "cirr" and task.exclude_reference is True
    assert task.ks == (1, 5, 10, 50) and task.subset_ks == (1, 2, 3) and task.headline == ("R@5", "Rsubset@1")
    assert task.gallery_names == list(split_map) and len(task.queries) == 50
    assert task.query_names == [str(e["pairid"]) for e in raw]
    position = {n: i for i, n in enumerate(task.gallery_names)}
    for i, entry in enumerate(raw):
        item = task.queries[i]
        assert item["query_id"] == i and item["text"] == entry["caption"]
        assert item["reference_id"] == position[entry["reference"]]
        assert item["target_id"] == position[entry["target_hard"]]
        assert item["member_ids"] == [position[m] for m in entry["img_set"]["members"]]
    # test targets are withheld: "test" evaluates the val files
    assert sample_module.composed_tasks("test")[0].query_names == task.query_names


def brute_force(scores: dict[tuple[int, str], float], raw: list, gallery: list[str], remove: bool) -> tuple[list, list]:
    """Per-query rank of the target in the full gallery and within the image set, by sorting names."""
    ranks, subset = [], []
    for i, entry in enumerate(raw):
        ref, target = entry["reference"], entry["target_hard"]
        ranked = sorted(gallery, key=lambda n, i=i: -scores[i, n])
        if remove:
            ranked.remove(ref)  # removed: everything below it moves up one place
        ranks.append(ranked.index(target))
        group = sorted(entry["img_set"]["members"], key=lambda n, i=i: -scores[i, n])
        if remove:
            group.remove(ref)
        subset.append(group.index(target))
    return ranks, subset


def recall(ranks: list[int], k: int) -> float:
    return 100.0 * sum(r < k for r in ranks) / len(ranks)


def test_sample_semantics_against_brute_force(sample: Path, sample_module: CIRRDataModule) -> None:
    (task,) = sample_module.composed_tasks("val")
    raw = json.loads((sample / "captions" / "cap.rc2.val.json").read_text())
    names = task.gallery_names
    # a fake encoder, keyed by image name and query: each query lies near its reference (which therefore
    # outranks the target unless it is removed) and, more loosely, near its target
    gen = torch.Generator().manual_seed(0)
    image = {n: torch.randn(16, generator=gen) for n in names}
    gallery_emb = torch.nn.functional.normalize(torch.stack([image[n] for n in names]), dim=-1)
    query_emb = torch.nn.functional.normalize(
        torch.stack(
            [
                2.0 * image[e["reference"]] + 1.0 * image[e["target_hard"]] + 1.2 * torch.randn(16, generator=gen)
                for e in raw
            ]
        ),
        dim=-1,
    )
    scores = {(i, n): float(query_emb[i] @ gallery_emb[j]) for i in range(len(raw)) for j, n in enumerate(names)}
    expected_ranks, expected_subset = brute_force(scores, raw, names, remove=True)

    items = [task.queries[i] for i in range(len(task.queries))]
    targets = torch.tensor([q["target_id"] for q in items])
    references = torch.tensor([q["reference_id"] for q in items])
    members = torch.tensor([q["member_ids"] for q in items])
    assert retrieval_ranks(query_emb, gallery_emb, targets, references).tolist() == expected_ranks
    assert subset_ranks(query_emb, gallery_emb, targets, members, references).tolist() == expected_subset

    metric = RecallAtK(ks=task.ks, subset_ks=task.subset_ks, exclude_reference=task.exclude_reference)
    metric.update_gallery(gallery_emb, torch.arange(len(names)))
    metric.update(query_emb, torch.tensor([q["query_id"] for q in items]), targets, references, members)
    result = {k: float(v) for k, v in metric.compute().items()}
    for k in task.ks:
        assert result[f"R@{k}"] == pytest.approx(recall(expected_ranks, k))
    for k in task.subset_ks:
        assert result[f"Rsubset@{k}"] == pytest.approx(recall(expected_subset, k))
    # the check can tell: keeping the reference in the ranking gives other numbers
    kept_ranks, kept_subset = brute_force(scores, raw, names, remove=False)
    assert recall(kept_ranks, 1) < result["R@1"] and recall(kept_subset, 1) < result["Rsubset@1"]
    # removed, so a target just below its reference moves up exactly one place
    assert sum(k - 1 == r for k, r in zip(kept_ranks, expected_ranks, strict=True)) > 0


# ---------------------------------------------------------------------------------------------- synthetic
def test_train_triplets_and_test_split_without_targets(tmp_path: Path) -> None:
    entries, split_map = synthetic_split("train", 2)
    write_cirr(tmp_path, "train", entries, split_map)
    test_entries, test_map = synthetic_split("test1", 9, with_targets=False)
    write_cirr(tmp_path, "test1", test_entries, test_map)
    placeholder_images(tmp_path, {**split_map, **test_map})
    dm = CIRRDataModule(str(tmp_path))
    dm.set_transforms(TF, TF)
    triplets = dm.triplets("train")
    assert len(triplets) == 12 and triplets[0].captions == ("make it number 1",)
    assert triplets[0].reference == tmp_path / "train" / "train-0-0-img0.png"
    assert triplets[0].target_id == "train-0-1-img0" and triplets[0].extra["pairid"] == 0
    assert len(dm.image_pairs("train")) == 12
    with pytest.raises(NotImplementedError, match="caption_pairs"):
        dm.caption_pairs("train")
    with pytest.raises(NotImplementedError, match="withheld"):
        dm.triplets("test")
    queries = read_cirr_captions(tmp_path, "test")
    assert len(queries) == 54 and all(q.target is None for q in queries)
    task = dm.composed_task(dm.submission_evaluation())
    assert len(task.gallery_names) == 54 and task.queries[0]["target_id"] == -1
    assert task.queries[0]["reference_id"] == 0 and task.queries[0]["member_ids"] == list(range(6))
    # without val files the evaluation says which file is missing
    with pytest.raises(AnnotationError, match=r"CIRR val annotation file not found: .*split.rc2.val.json"):
        dm.composed_tasks("val")


def test_stage_one_and_two_files(tmp_path: Path) -> None:
    entries, split_map = synthetic_split("train", 1)
    write_cirr(tmp_path, "train", entries, split_map)
    (tmp_path / "captions.jsonl").write_text('{"image": "train/train-0-0-img0.png", "text": "two dogs"}\n')
    dm = CIRRDataModule(str(tmp_path), caption_pairs="captions.jsonl", descriptions="captions.jsonl")
    assert [p.text for p in dm.caption_pairs("train")] == ["two dogs"]
    assert dm.description_pairs("train")[0].image == tmp_path / "train/train-0-0-img0.png"


def _entry(**changes) -> dict:
    entries, _ = synthetic_split("dev", 1)
    entry = dict(entries[0])
    entry.update(changes)
    return {k: v for k, v in entry.items() if v is not None}


MEMBERS = [f"dev-0-{m}-img0" for m in range(6)]
BAD_CAPTIONS = [
    ([_entry(target_hard="dev-9-9-img0")], r"entry 0: target_hard 'dev-9-9-img0' is not among img_set.members"),
    ([_entry(), _entry()], r"entry 1: pairid 0 repeats entry 0"),
    ([_entry(pairid="7")], r"entry 0: key 'pairid' must be int"),
    ([_entry(pairid=True)], r"entry 0: key 'pairid' must be int"),
    ([{k: v for k, v in _entry().items() if k != "target_hard"}], r"entry 0: missing key 'target_hard'"),
    ([_entry(caption=3)], r"entry 0: key 'caption' must be str"),
    ([_entry(reference="../x")], r"entry 0: reference '../x' contains a path separator"),
    ([_entry(target_soft=[1])], r"entry 0: target_soft must be an object"),
    ([_entry(img_set={"id": 0, "members": []})], r"entry 0: img_set.members is empty"),
    ([_entry(img_set={"id": 0, "members": MEMBERS + MEMBERS[:1]})], r"entry 0: img_set.members lists an image twice"),
    ([_entry(img_set={"members": MEMBERS})], r"entry 0 img_set: missing key 'id'"),
    ([_entry(img_set=[1])], r"entry 0: key 'img_set' must be dict"),
    ({"a": 1}, r"cap.rc2.val.json: expected a JSON array"),
    ([], r"cap.rc2.val.json: no entries"),
]


@pytest.mark.parametrize(("entries", "message"), BAD_CAPTIONS)
def test_caption_errors_name_file_and_entry(tmp_path: Path, entries, message: str) -> None:
    _, split_map = synthetic_split("dev", 1)
    write_cirr(tmp_path, "val", entries, split_map)
    with pytest.raises(AnnotationError, match=message) as info:
        read_cirr_captions(tmp_path, "val")
    assert "cap.rc2.val.json" in str(info.value)


def test_a_blank_caption_is_kept_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The official test split has one entry whose caption is a single space (pairid 27098); the server needs
    every pairid, so the query is kept, as FashionIQ's blank captions are, and a warning names it."""
    entries, split_map = synthetic_split("test1", 1, with_targets=False)
    entries[2]["caption"] = " "
    write_cirr(tmp_path, "test1", entries, split_map)
    placeholder_images(tmp_path, split_map)
    with caplog.at_level("WARNING"):
        queries = read_cirr_captions(tmp_path, "test")
    assert [q.caption for q in queries][2] == " " and len(queries) == 6
    assert "cap.rc2.test1.json entry 2" in caplog.text and "pairid 2" in caplog.text and "blank" in caplog.text
    dm = CIRRDataModule(str(tmp_path))
    evaluation = dm.submission_evaluation()
    assert evaluation.query_names == [str(e["pairid"]) for e in entries]


BAD_SPLITS = [
    ({"dev-0-0-img0": "../../etc/passwd"}, r"must stay inside the image root"),
    ({"dev-0-0-img0": "/abs/x.png"}, r"must stay inside the image root"),
    ({"dev-0-0-img0": 3}, r"the image path must be a non-empty string"),
    ({"dev-0-0-img0": ""}, r"the image path must be a non-empty string"),
    ({"a/b": "./dev/x.png"}, r"image name 'a/b' contains a path separator"),
    ([], r"expected a JSON object of name -> path"),
    ({}, r"no images"),
]


@pytest.mark.parametrize(("split_map", "message"), BAD_SPLITS)
def test_split_errors_name_file_and_entry(tmp_path: Path, split_map, message: str) -> None:
    write_cirr(tmp_path, "val", [_entry()], split_map)
    with pytest.raises(AnnotationError, match=message) as info:
        read_cirr_split(tmp_path, "val")
    assert "split.rc2.val.json" in str(info.value)


def test_cross_checks_and_missing_files(tmp_path: Path) -> None:
    _, split_map = synthetic_split("dev", 1)
    del split_map["dev-0-3-img0"]
    write_cirr(tmp_path, "val", [_entry()], split_map)
    with pytest.raises(AnnotationError, match=r"entry 0: img_set member 'dev-0-3-img0' is not in the val split file"):
        cirr_protocol(tmp_path, "val")
    with pytest.raises(AnnotationError, match=r"cap.rc2.test1.json or .*cap.rc2.test.json"):
        read_cirr_captions(tmp_path, "test")
    (tmp_path / "captions" / "cap.rc2.val.json").write_text('[{"pairid": 1, "refer')
    with pytest.raises(AnnotationError, match=r"cap.rc2.val.json: invalid or truncated JSON"):
        read_cirr_captions(tmp_path, "val")
