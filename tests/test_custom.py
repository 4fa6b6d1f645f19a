"""Custom catalogue files: JSONL / JSON / CSV readers, their errors, and ``CustomDataModule``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from ctiir.datamodules.custom import CustomDataModule
from ctiir.datamodules.errors import AnnotationError, DataError
from ctiir.datamodules.tables import MissingSplitError, read_gallery_file, read_image_text_pairs, read_triplets

TF = T.Compose([T.Resize((8, 8)), T.ToTensor()])


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def placeholder_images(root: Path, names: list[str]) -> None:
    """One tiny PNG, linked under every name (datamodules only need the files to exist and decode)."""
    source = root / ".placeholder.png"
    if not source.exists():
        root.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (200, 10, 10)).save(source)
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.symlink_to(source)


# ---------------------------------------------------------------------------------------------- readers
def test_jsonl_pairs_with_splits_ids_and_paths(tmp_path: Path) -> None:
    file = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"image": "a/1.jpg", "text": "red dress"},
            {"image": "./a//2.jpg", "text": "blue shirt", "split": "val"},
            {"image": "3.jpg", "text": "green top", "split": "train", "id": "sku-3"},
            {"image": "/abs/4.jpg", "text": "hat", "split": "test"},
        ],
    )
    everything = read_image_text_pairs(file, tmp_path)
    assert [r.image_id for r in everything] == ["a/1.jpg", "a/2.jpg", "sku-3", "/abs/4.jpg"]
    assert everything[0].image == tmp_path / "a/1.jpg"
    assert everything[3].image == Path("/abs/4.jpg")
    assert [r.text for r in read_image_text_pairs(file, tmp_path, "train")] == ["red dress", "green top"]
    assert [r.image_id for r in read_image_text_pairs(file, tmp_path, "val")] == ["a/2.jpg"]
    assert [r.image_id for r in read_image_text_pairs(file, tmp_path, "test")] == ["/abs/4.jpg"]
    assert everything[1].source == f"{file} line 2"


def test_csv_keeps_text_and_handles_quoting(tmp_path: Path) -> None:
    file = tmp_path / "pairs.csv"
    file.write_text('image,text,split,id\n007.jpg,123,,\n"x,y.jpg","two\nlines\u2028!",val,007\n')
    rows = read_image_text_pairs(file, tmp_path)
    assert [(r.image_id, r.text) for r in rows] == [("007.jpg", "123"), ("007", "two\nlines\u2028!")]
    assert [r.image_id for r in read_image_text_pairs(file, tmp_path, "val")] == ["007"]
    assert read_image_text_pairs(file, tmp_path, "train")[0].source == f"{file} row 1 (line 2)"


def test_json_array_and_tsv_and_file_lookup_relative_to_root(tmp_path: Path) -> None:
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "pairs.json").write_text(json.dumps([{"image": "a.jpg", "text": "x"}]))
    (tmp_path / "ann" / "pairs.tsv").write_text("image\ttext\nb.jpg\ty, z\n")
    assert read_image_text_pairs("ann/pairs.json", tmp_path)[0].image_id == "a.jpg"
    assert read_image_text_pairs("ann/pairs.tsv", tmp_path)[0].text == "y, z"
    with pytest.raises(AnnotationError, match="nope.jsonl: annotation file not found"):
        read_image_text_pairs("nope.jsonl", tmp_path)


def test_triplets_jsonl_lists_and_csv_strings(tmp_path: Path) -> None:
    file = write_jsonl(
        tmp_path / "t.jsonl",
        [
            {"reference": "r.jpg", "target": "t.jpg", "text": ["is red", "has long sleeves"]},
            {"reference": "r.jpg", "target": "u.jpg", "text": "is blue", "split": "val"},
        ],
    )
    train = read_triplets(file, tmp_path, "train")
    assert len(train) == 1 and train[0].captions == ("is red", "has long sleeves")
    assert (train[0].reference_id, train[0].target_id) == ("r.jpg", "t.jpg")
    assert train[0].target == tmp_path / "t.jpg"
    assert read_triplets(file, tmp_path, "val")[0].captions == ("is blue",)
    csv_file = tmp_path / "t.csv"
    csv_file.write_text("reference,target,text,split\nr.jpg,t.jpg,is red,test\n")
    assert read_triplets(csv_file, tmp_path, "test")[0].captions == ("is red",)


BAD_PAIRS = [
    ("missing.jsonl", '{"image": "a.jpg"}\n', r"line 1: missing 'text'"),
    ("empty.jsonl", '{"image": "a.jpg", "text": "ok"}\n{"image": "b.jpg", "text": "  "}\n', r"line 2: empty 'text'"),
    ("nonstr.jsonl", '{"image": "a.jpg", "text": 5}\n', r"line 1: 'text' must be a string, got int"),
    ("nonstr_image.jsonl", '{"image": ["a.jpg"], "text": "x"}\n', r"line 1: 'image' must be a string"),
    ("nonstr_id.jsonl", '{"image": "a.jpg", "text": "x", "id": 3}\n', r"line 1: 'id' must be a string"),
    ("list_text.jsonl", '{"image": "a.jpg", "text": ["x"]}\n', r"line 1: 'text' must be a string"),
    ("traversal.jsonl", '{"image": "../../etc/passwd", "text": "x"}\n', r"line 1: image .* climbs out"),
    ("nul.jsonl", '{"image": "a\\u0000.jpg", "text": "x"}\n', r"line 1: image .* NUL"),
    ("split.jsonl", '{"image": "a.jpg", "text": "x", "split": "vall"}\n', r"line 1: split 'vall' is not one of"),
    ("unknown.jsonl", '{"image": "a.jpg", "text": "x", "spilt": "val"}\n', r"line 1: unknown column\(s\) \['spilt'\]"),
    ("trunc.jsonl", '{"image": "a.jpg", "text": "x"}\n{"image": "b.j', r"line 2: invalid or truncated JSON"),
    ("array.jsonl", "[1, 2]\n", r"line 1: expected a JSON object, got list"),
    ("bigint.jsonl", '{"image": "a.jpg", "text": ' + "9" * 5000 + "}\n", r"line 1: unreadable JSON"),
    ("deep.json", "[" * 100_000, r"deep.json: unreadable JSON"),
    ("u2028.jsonl", '{"image": "a.jpg", "text": "x\u2028y"}\n{"image": "b.jpg"}\n', r"line 2: missing 'text'"),
    ("nothing.jsonl", "\n\n", r"nothing.jsonl: no rows"),
    ("obj.json", '{"image": "a.jpg"}', r"obj.json: expected a JSON array"),
    ("entry.json", '[{"image": "a.jpg", "text": "x"}, 3]', r"entry.json entry 1: expected a JSON object"),
    ("cols.csv", "image,caption\na.jpg,x\n", r"cols.csv row 1 \(line 2\): unknown column\(s\) \['caption'\]"),
    ("emptycell.csv", "image,text\na.jpg,x\nb.jpg,\n", r"emptycell.csv row 2 \(line 3\): empty 'text'"),
    ("extra.csv", "image,text\na.jpg,x,y\n", r"extra.csv row 1 \(line 2\): more values than header"),
    ("short.csv", "image,text\na.jpg\n", r"short.csv row 1 \(line 2\): missing 'text'"),
    ("dupcol.csv", "image,text,text\na.jpg,x,y\n", r"dupcol.csv: duplicate column"),
    ("blank.csv", "", r"blank.csv: empty file"),
    ("pairs.txt", "a.jpg x\n", r"pairs.txt: unsupported file type"),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_PAIRS, ids=[b[0] for b in BAD_PAIRS])
def test_pair_errors_name_file_and_row(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(AnnotationError, match=message) as info:
        read_image_text_pairs(path, tmp_path)
    assert str(path) in str(info.value)


def test_not_utf8_is_an_annotation_error(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("image,text\na.jpg,caf\xe9\n".encode("latin-1"))
    with pytest.raises(AnnotationError, match="latin.csv: not UTF-8"):
        read_image_text_pairs(path, tmp_path)


BAD_TRIPLETS = [
    ('{"reference": "r.jpg", "text": "x"}', r"line 1: missing 'target'"),
    ('{"reference": "r.jpg", "target": "t.jpg", "text": []}', r"line 1: 'text' must hold one or two captions, got 0"),
    ('{"reference": "r.jpg", "target": "t.jpg", "text": ["a", "b", "c"]}', r"line 1: 'text' must hold one or two"),
    ('{"reference": "r.jpg", "target": "t.jpg", "text": ["a", 1]}', r"line 1: 'text'\[1\] must be a string"),
    ('{"reference": "r.jpg", "target": "t.jpg", "text": ["a", " "]}', r"line 1: 'text'\[1\] is empty"),
    ('{"reference": "x/../../r.jpg", "target": "t.jpg", "text": "a"}', r"line 1: reference .* climbs out"),
    ('{"reference": "r.jpg", "target": ".", "text": "a"}', r"line 1: target '.' is not a file path"),
    ('{"reference": "r.jpg", "target": "t.jpg", "text": "a", "image": "i.jpg"}', r"line 1: unknown column"),
]


@pytest.mark.parametrize(("line", "message"), BAD_TRIPLETS)
def test_triplet_errors_name_file_and_row(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"reference": "r.jpg", "target": "t.jpg", "text": "ok"}\n' + line + "\n")
    with pytest.raises(AnnotationError, match=message.replace("line 1", "line 2")) as info:
        read_triplets(path, tmp_path)
    assert str(path) in str(info.value)


def test_gallery_file(tmp_path: Path) -> None:
    (tmp_path / "g.txt").write_text("a.jpg\n\n./b.jpg\n")
    assert read_gallery_file("g.txt", tmp_path) == [("a.jpg", tmp_path / "a.jpg"), ("b.jpg", tmp_path / "b.jpg")]
    (tmp_path / "bad.txt").write_text("a.jpg\n../b.jpg\n")
    with pytest.raises(AnnotationError, match=r"bad.txt line 2: image '../b.jpg' climbs out"):
        read_gallery_file("bad.txt", tmp_path)


# ---------------------------------------------------------------------------------------------- datamodule
def make_catalogue(tmp_path: Path) -> Path:
    write_jsonl(
        tmp_path / "triplets.jsonl",
        [
            {"reference": "img/r1.jpg", "target": "img/t1.jpg", "text": "is red"},
            {"reference": "img/r2.jpg", "target": "img/t1.jpg", "text": ["is red", "no sleeves"]},
            {"reference": "img/r1.jpg", "target": "img/t2.jpg", "text": "is blue", "split": "val"},
            {"reference": "img/t2.jpg", "target": "img/r3.jpg", "text": "is green", "split": "val"},
            {"reference": "img/r3.jpg", "target": "img/r3.jpg", "text": "the same", "split": "val"},
        ],
    )
    write_jsonl(
        tmp_path / "captions.jsonl",
        [{"image": "img/r1.jpg", "text": "a red dress"}, {"image": "img/t1.jpg", "text": "a red top"}],
    )
    (tmp_path / "extra.txt").write_text("img/x1.jpg\nimg/r1.jpg\n")
    placeholder_images(tmp_path, [f"img/{n}.jpg" for n in ("r1", "r2", "r3", "t1", "t2", "x1")])
    return tmp_path


def test_composed_task_gallery_queries_and_reference(tmp_path: Path) -> None:
    root = make_catalogue(tmp_path)
    dm = CustomDataModule(str(root), triplets="triplets.jsonl", gallery="extra.txt", batch_size=2)
    dm.set_transforms(TF, TF)
    (task,) = dm.composed_tasks("val")
    assert task.protocol == "custom" and task.key == "custom"
    assert task.gallery_names == ["img/r1.jpg", "img/t2.jpg", "img/r3.jpg", "img/x1.jpg"]
    assert task.ks == (1, 5, 10, 50) and task.headline == ("R@1", "R@10", "R@50")
    assert task.exclude_reference is True
    items = [task.queries[i] for i in range(len(task.queries))]
    assert [(q["reference_id"], q["target_id"]) for q in items] == [(0, 1), (1, 2), (-1, 2)]
    assert task.evaluation.reference_is_target == 1
    assert items[0]["text"] == "is blue" and items[0]["image"].shape == (3, 8, 8)
    assert task.gallery[3]["gallery_id"] == 3
    train = dm.triplets("train")
    assert [t.captions for t in train] == [("is red",), ("is red", "no sleeves")]
    assert len(dm.image_pairs("train")) == 2
    with pytest.raises(NotImplementedError, match="set caption_pairs"):
        dm.caption_pairs("train")


def test_test_split_falls_back_to_val_and_missing_splits_are_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_catalogue(tmp_path)
    dm = CustomDataModule(str(root), triplets="triplets.jsonl", descriptions="captions.jsonl")
    dm.set_transforms(TF, TF)
    with caplog.at_level(logging.WARNING):
        (task,) = dm.composed_tasks("test")
    assert "no rows with split='test'; evaluating 'test' on its 3 'val' rows" in caplog.text
    assert task.query_names == dm.composed_tasks("val")[0].query_names
    with pytest.raises(MissingSplitError, match=r"captions.jsonl: no rows with split='val'"):
        dm.description_pairs("val")
    with pytest.raises(MissingSplitError, match=r"captions.jsonl: no rows with split='test'"):
        dm.retrieval_tasks("test", "descriptions")


def test_training_datasets_and_missing_split_falls_back(tmp_path: Path) -> None:
    root = make_catalogue(tmp_path)
    dm = CustomDataModule(str(root), triplets="triplets.jsonl", descriptions="captions.jsonl", batch_size=2)
    dm.set_transforms(TF, TF)
    ds = dm.triplet_dataset(dm.triplets("train"), "train", train=True)
    item = ds[1]
    assert item["reference"].shape == (3, 8, 8) and item["target_id"] == "img/t1.jpg"
    assert item["text"] in ("Is red and no sleeves", "No sleeves and is red")
    assert len(dm.description_pairs("train")) == 2
    # no "val" descriptions: a MissingSplitError is a NotImplementedError, which the base class treats as
    # "no such split" (the validation loss then runs on a training slice)
    with pytest.raises(NotImplementedError):
        dm.description_pairs("val")


def test_missing_images_error_or_skip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_catalogue(tmp_path)
    (root / "img" / "t2.jpg").unlink()
    dm = CustomDataModule(str(root), triplets="triplets.jsonl")
    dm.set_transforms(TF, TF)
    with pytest.raises(DataError, match=r"missing image .*t2.jpg in custom val gallery, annotation entry img/t2.jpg"):
        dm.composed_tasks("val")
    skip = CustomDataModule(str(root), triplets="triplets.jsonl", on_missing="skip")
    skip.set_transforms(TF, TF)
    with caplog.at_level(logging.WARNING):
        (task,) = skip.composed_tasks("val")
    # t2 was the first query's target and the second query's reference: both queries go, and are counted
    assert task.gallery_names == ["img/r1.jpg", "img/r3.jpg"]
    assert len(task.queries) == 1 and task.evaluation.skipped_queries == 2 and task.evaluation.skipped_gallery == 1
    assert "skipped 1 of 3" in caplog.text and "removed 1 queries whose target" in caplog.text


def test_max_val_queries_and_constructor_checks(tmp_path: Path) -> None:
    root = make_catalogue(tmp_path)
    dm = CustomDataModule(str(root), triplets="triplets.jsonl", max_val_queries=2)
    dm.set_transforms(TF, TF)
    assert len(dm.composed_tasks("val")[0].queries) == 2
    with pytest.raises(ValueError, match="needs at least one of"):
        CustomDataModule(str(root))


def test_query_batch_collates(tmp_path: Path) -> None:
    from torch.utils.data import DataLoader

    from ctiir.datamodules.tasks import collate_retrieval

    root = make_catalogue(tmp_path)
    dm = CustomDataModule(str(root), triplets="triplets.jsonl")
    dm.set_transforms(TF, TF)
    (task,) = dm.composed_tasks("val")
    batch = next(iter(DataLoader(task.queries, batch_size=3, collate_fn=collate_retrieval)))
    assert batch["image"].shape == (3, 3, 8, 8)
    assert torch.equal(batch["reference_id"], torch.tensor([0, 1, -1]))
    assert batch["text"] == ["is blue", "is green", "the same"]


def test_stage_three_trains_and_evaluates_on_a_catalogue(tmp_path: Path) -> None:
    """Through Lightning: the tiny backbone trains on custom triplets and the retrieval callback scores the
    "custom" protocol, whose score is the mean of its headline metrics."""
    import lightning as L

    from ctiir.callbacks import RetrievalEvaluation
    from ctiir.stages import ComposedRetrieval

    colours = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}
    rows = []
    for colour, rgb in colours.items():
        for shape, box in (("square", (8, 8, 24, 24)), ("bar", (2, 12, 30, 20))):
            image = Image.new("RGB", (32, 32))
            image.paste(rgb, box)
            (tmp_path / "img").mkdir(exist_ok=True)
            image.save(tmp_path / "img" / f"{colour}-{shape}.png")
    for i, (a, b) in enumerate((a, b) for a in colours for b in colours if a != b):
        for shape in ("square", "bar"):
            split = "val" if (i + (shape == "bar")) % 3 == 0 else "train"
            rows.append(
                {
                    "reference": f"img/{a}-{shape}.png",
                    "target": f"img/{b}-{shape}.png",
                    "text": f"make it {b}",
                    "split": split,
                }
            )
    write_jsonl(tmp_path / "triplets.jsonl", rows)
    dm = CustomDataModule(str(tmp_path), triplets="triplets.jsonl", batch_size=4)
    model = ComposedRetrieval(backbone="tiny", eval_kinds=("composed",))
    evaluation = RetrievalEvaluation()
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[evaluation],
    )
    trainer.fit(model, datamodule=dm)
    results = evaluation.results["val"]
    assert {"custom/R@1", "custom/R@5", "custom/R@10", "custom/R@50", "custom/score"} <= set(results)
    assert results["custom/R@50"] == 100.0  # a gallery of 6 images
    assert results["custom/score"] == pytest.approx((results["custom/R@1"] + results["custom/R@10"] + 100.0) / 3)


def test_the_docs_catalogue_config_runs_all_three_stages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """docs/data-shoes-cirr-custom.md's `my-catalogue.yaml` (tiny backbone, one epoch a stage): Stage I on the
    caption pairs, Stage II on the descriptions and image pairs, Stage III on the triplets, each from the last."""
    import csv
    import json

    import torch

    from ctiir.pipeline import print_summary, progressive_main

    colours = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (220, 220, 20)}
    (tmp_path / "img").mkdir()
    for colour, rgb in colours.items():
        for shape, box in (("square", (8, 8, 24, 24)), ("bar", (2, 12, 30, 20))):
            image = Image.new("RGB", (32, 32))
            image.paste(rgb, box)
            image.save(tmp_path / "img" / f"{colour}-{shape}.png")
    names = [(c, s) for c in colours for s in ("square", "bar")]
    split = {n: "val" if i % 4 == 3 else "train" for i, n in enumerate(names)}
    write_jsonl(tmp_path / "triplets.jsonl", [
        {"reference": f"img/{a}-{s}.png", "target": f"img/{b}-{s}.png", "text": f"make it {b}", "split": split[(b, s)]}
        for a in colours for b in colours for s in ("square", "bar") if a != b
    ])  # fmt: skip
    write_jsonl(tmp_path / "captions.jsonl", [
        {"image": f"img/{c}-{s}.png", "text": f"a {c} {s}", "split": split[(c, s)]} for c, s in names
    ])  # fmt: skip
    with open(tmp_path / "descriptions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "text", "split"])
        writer.writerows([f"img/{c}-{s}.png", f"{c} {s} top", split[(c, s)]] for c, s in names)
    (tmp_path / "all_images.txt").write_text("".join(f"img/{c}-{s}.png\n" for c, s in names))
    run_dir = tmp_path / "runs" / "my-catalogue"
    config = tmp_path / "my-catalogue.yaml"
    config.write_text(f"""
run_dir: {run_dir}
backbone: tiny
progress_bar: false
data:
  class_path: ctiir.datamodules.custom.CustomDataModule
  init_args:
    root: {tmp_path}
    triplets: triplets.jsonl
    caption_pairs: captions.jsonl
    descriptions: descriptions.csv
    gallery: all_images.txt
    batch_size: 8
trainer: {{accelerator: cpu, devices: 1}}
stages:
  I:   {{max_epochs: 1}}
  II:  {{max_epochs: 1, model: {{tasks: [t2i, i2i]}}}}
  III: {{max_epochs: 1, model: {{fusion: adaptive}}}}
""")
    assert progressive_main(["--config", str(config)]) == 0
    stages = json.loads((run_dir / "results.json").read_text())["stages"]
    assert [stages[n]["fusion"] for n in ("I", "II", "III")] == ["fixed", "fixed", "adaptive"]
    for before, after in (("I", "II"), ("II", "III")):
        hp = torch.load(stages[after]["checkpoint"], map_location="cpu", weights_only=False)["hyper_parameters"]
        assert hp["initialized_from"] == stages[before]["checkpoint"]
    for name in ("I", "II", "III"):
        assert 0.0 <= stages[name]["metrics"]["custom/R@10"] <= 100.0, name  # every stage scored the composed task
    # A one-subset protocol: the tables show its own numbers where a multi-subset one shows averages.
    r10 = stages["III"]["metrics"]["custom/R@10"]
    row = next(line for line in (run_dir / "results.md").read_text().splitlines() if line.startswith("| III (adaptive) |"))
    assert row.split(" | ")[1] == f"{r10:.2f}"
    capsys.readouterr()
    print_summary(json.loads((run_dir / "results.json").read_text()))
    printed = next(line for line in capsys.readouterr().out.splitlines() if "adaptive" in line)
    assert f"{r10:.2f}" in printed
