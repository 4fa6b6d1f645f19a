"""``HFTripletDataModule``: Hugging Face datasets with ``Image`` features, offline (``Dataset.from_dict`` and
``save_to_disk``), through the same protocol layer as the file readers; errors name the row and the column."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage
from torchvision import transforms as T

from ctiir.datamodules.errors import AnnotationError, DataError
from ctiir.datamodules.hf import HFTripletDataModule, parse_row_path, row_path
from ctiir.datamodules.tables import MissingSplitError

TF = T.Compose([T.Resize((16, 16)), T.ToTensor()])
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (200, 30, 200), (30, 200, 200),
           (120, 120, 120), (240, 240, 240), (20, 20, 20), (160, 90, 40)]


def picture(i: int) -> PILImage.Image:
    """Image i: its own colour, with a stripe at its own height (all distinct, all decodable)."""
    image = PILImage.new("RGB", (32, 32), COLOURS[i % len(COLOURS)])
    for x in range(32):
        image.putpixel((x, (3 * i) % 32), (255 - i, i, 128))
    return image


TRIPLET_FEATURES = Features({"reference": Image(), "target": Image(), "text": Value("string"), "split": Value("string")})
# (reference, target, text, split): image 2 is the target of two train rows; val rows share images 6 and 7.
ROWS = [
    (0, 2, "make it blue", "train"), (1, 2, "blue please", None), (3, 4, "pinker", "train"), (4, 5, "cyan", "train"),
    (5, 0, "red", "train"), (2, 3, "yellow", "train"), (6, 7, "lighter", "val"), (7, 8, "darker", "val"),
    (8, 6, "grey", "val"), (9, 6, "grey too", "val"),
]


def triplet_dataset(rows=ROWS) -> Dataset:
    return Dataset.from_dict(
        {"reference": [picture(r) for r, *_ in rows], "target": [picture(t) for _, t, *_ in rows],
         "text": [text for *_, text, _ in rows], "split": [split for *_, split in rows]},
        features=TRIPLET_FEATURES,
    )


def datamodule(**kwargs) -> HFTripletDataModule:
    dm = HFTripletDataModule(**kwargs)
    dm.set_transforms(TF, TF)
    return dm


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hf") / "triplets"
    triplet_dataset().save_to_disk(str(folder))
    return folder


# ---------------------------------------------------------------------------------------------- reading
@pytest.mark.parametrize("form", ["dataset", "save_to_disk"])
def test_triplets_records_and_image_identity(saved: Path, form: str) -> None:
    dm = datamodule(triplets=triplet_dataset() if form == "dataset" else str(saved))
    train, val = dm.triplets("train"), dm.triplets("val")
    assert len(train) == 6 and len(val) == 4, "a null split is train"
    assert train[1].source == "triplets dataset row 1" and train[1].captions == ("blue please",)
    # Image 2 is the target of rows 0 and 1 and the reference of row 5: one id, from its bytes.
    assert train[0].target_id == train[1].target_id == train[5].reference_id
    assert len({t.reference_id for t in train} | {t.target_id for t in train}) == 6
    assert parse_row_path(train[0].target) is not None and str(train[0].target) == "hf:triplets/all/0/target"
    # Decoded from the row: the pixels of the image that was put there.
    assert torch.equal(TF(dm.load_image(train[0].target, "")), TF(picture(2)))


def test_the_composed_evaluation_goes_through_the_protocol_layer(saved: Path, caplog: pytest.LogCaptureFixture) -> None:
    dm = datamodule(triplets=str(saved), name="mine")
    [evaluation] = dm.evaluation_sets("val")
    assert evaluation.key == "mine" and len(evaluation.gallery) == 4, "images 6, 7, 8, 9 once each"
    assert len(evaluation.queries) == 4
    assert [q.target_index for q in evaluation.queries] == [1, 2, 0, 0]
    [task] = dm.retrieval_tasks("val", "composed")
    item = task.queries[3]
    assert item["text"] == "grey too" and torch.equal(item["image"], TF(picture(9)))
    assert torch.equal(task.gallery[0]["image"], TF(picture(6)))
    with caplog.at_level(logging.WARNING, logger="ctiir.datamodules.hf"):
        assert len(dm.triplets("test")) == 4, "'test' without rows evaluates the 'val' rows"
    assert any("no rows of split 'test'" in r.getMessage() for r in caplog.records)


def test_a_dataset_dict_gives_the_splits_by_its_keys(tmp_path: Path) -> None:
    whole = triplet_dataset().remove_columns("split")
    DatasetDict({"train": whole.select(range(6)), "validation": whole.select(range(6, 10))}).save_to_disk(str(tmp_path / "dd"))
    dm = datamodule(triplets=str(tmp_path / "dd"))
    assert len(dm.triplets("train")) == 6 and len(dm.triplets("val")) == 4
    assert dm.triplets("val")[0].source == "triplets dataset 'validation' row 0"
    assert str(dm.triplets("val")[0].reference) == "hf:triplets/validation/0/reference"
    assert torch.equal(TF(dm.load_image(dm.triplets("val")[3].reference, "")), TF(picture(9)))


def test_id_columns_and_two_captions(tmp_path: Path) -> None:
    ds = Dataset.from_dict(
        {"reference": [picture(0), picture(1)], "target": [picture(1), picture(0)], "text": [["a", "b"], ["c"]],
         "reference_id": ["r0", "r1"], "target_id": ["t1", "t0"]},
        features=Features({"reference": Image(), "target": Image(), "text": [Value("string")],
                           "reference_id": Value("string"), "target_id": Value("string")}),
    )
    [first, second] = datamodule(triplets=ds).triplets("train")
    assert (first.reference_id, first.target_id, first.captions) == ("r0", "t1", ("a", "b"))
    assert second.captions == ("c",)


def test_image_caption_pairs_for_stages_one_and_two(tmp_path: Path) -> None:
    pairs = Dataset.from_dict(
        {"image": [picture(i) for i in range(6)], "text": [f"image {i}" for i in range(6)],
         "split": ["train", "train", "train", "val", "val", "val"]},
        features=Features({"image": Image(), "text": Value("string"), "split": Value("string")}),
    )
    pairs.save_to_disk(str(tmp_path / "pairs"))
    dm = datamodule(caption_pairs=str(tmp_path / "pairs"), descriptions=pairs)
    assert [p.text for p in dm.caption_pairs("train")] == ["image 0", "image 1", "image 2"]
    assert len(dm.description_pairs("val")) == 3
    t2i, i2t = dm.retrieval_tasks("val", "caption_pairs")
    assert len(t2i.gallery) == 3 and torch.equal(t2i.gallery[2]["image"], TF(picture(5)))
    with pytest.raises(NotImplementedError, match="set triplets"):
        dm.triplets("train")


# ---------------------------------------------------------------------------------------------- errors
def with_column(ds: Dataset, name: str, values: list, feature) -> Dataset:
    return ds.remove_columns(name).add_column(name, values, feature=feature) if name in ds.column_names else ds.add_column(name, values, feature=feature)


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda ds: ds.add_column("spilt", ["val"] * len(ds)), AnnotationError, r"unknown column\(s\) \['spilt'\]"),
        (lambda ds: ds.remove_columns("text"), AnnotationError, r"missing column\(s\) \['text'\]"),
        (lambda ds: with_column(ds, "target", ["a.png"] * len(ds), Value("string")), AnnotationError,
         r"column 'target' is Value\('string'\), not an Image feature; cast it"),
        (lambda ds: with_column(ds, "split", ["train"] * 9 + ["dev"], Value("string")), AnnotationError,
         r"triplets dataset row 9, column 'split': 'dev' is not one of"),
    ],
    ids=["unknown-column", "missing-column", "not-an-image", "bad-split"],
)
def test_bad_tables_are_errors_naming_the_column(change, error, message) -> None:
    with pytest.raises(error, match=message):
        datamodule(triplets=change(triplet_dataset())).triplets("train")


def test_bad_text_names_the_row_and_the_column() -> None:
    rows = [*ROWS[:3], (3, 4, "  ", "train")]
    with pytest.raises(AnnotationError, match=r"triplets dataset row 3, column 'text': empty text"):
        datamodule(triplets=triplet_dataset(rows)).triplets("train")


def empty_target_dataset() -> Dataset:
    """Row 7 (a val row) has no target image."""
    raw = triplet_dataset().cast_column("target", Image(decode=False))
    cells = [None if i == 7 else raw[i]["target"] for i in range(len(raw))]
    return raw.remove_columns("target").add_column("target", cells, feature=Image(decode=False)).cast_column("target", Image())


def test_an_empty_image_cell_follows_on_missing() -> None:
    ds = empty_target_dataset()
    with pytest.raises(DataError, match=r"missing image hf:triplets/all/7/target .*annotation entry triplets dataset row 7"):
        datamodule(triplets=ds).evaluation_sets("val")
    skipping = datamodule(triplets=ds, on_missing="skip")
    [evaluation] = skipping.evaluation_sets("val")
    assert evaluation.skipped_queries == 1 and len(evaluation.queries) == 3


def test_a_corrupt_image_names_the_row_and_the_column() -> None:
    raw = triplet_dataset().cast_column("reference", Image(decode=False))
    cells = [raw[i]["reference"] for i in range(len(raw))]
    cells[2] = {"bytes": b"not a png", "path": None}
    broken = raw.remove_columns("reference").add_column("reference", cells, feature=Image(decode=False))
    dm = datamodule(triplets=broken.cast_column("reference", Image()))
    [task] = dm.retrieval_tasks("val", "composed")  # the val rows are sound
    assert task.queries[0]["text"] == "lighter"
    with pytest.raises(DataError, match=r"unreadable or corrupt image in triplets dataset row 2, column 'reference'"):
        dm.load_image(dm.triplets("train")[2].reference, "")


def test_a_dataset_dict_with_a_split_column_or_an_unknown_key_is_an_error() -> None:
    with pytest.raises(AnnotationError, match="'split' column in a DatasetDict"):
        datamodule(triplets=DatasetDict({"train": triplet_dataset()})).triplets("train")
    with pytest.raises(AnnotationError, match="split 'dev' is not one of"):
        datamodule(triplets=DatasetDict({"dev": triplet_dataset().remove_columns("split")})).triplets("train")


def test_a_missing_split_is_a_missing_split_error() -> None:
    rows = [row for row in ROWS if row[3] != "val"]
    with pytest.raises(MissingSplitError, match="no rows of split 'val'"):
        datamodule(triplets=triplet_dataset(rows)).triplets("val")


def test_an_uncached_hub_id_offline_names_the_id(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"'someone/no-such-dataset'.*HF_DATASETS_OFFLINE"):
        datamodule(triplets="someone/no-such-dataset").triplets("train")


def test_row_paths_round_trip() -> None:
    cell = parse_row_path(row_path("caption_pairs", "validation", 12, "image"))
    assert cell is not None and (cell.table, cell.part, cell.row, cell.column) == ("caption_pairs", "validation", 12, "image")
    assert parse_row_path(Path("/data/images/12.png")) is None


# ---------------------------------------------------------------------------------------------- training
def test_stage_three_trains_on_a_saved_dataset_through_the_cli(saved: Path, tmp_path: Path) -> None:
    """`ctiir fit` with HFTripletDataModule(triplets=<save_to_disk folder>): a few Stage III steps on one
    batch (tiny backbone), the loss falls, and the retrieval evaluation logs the dataset's protocol."""
    from ctiir.cli import main

    code = main([
        "fit", "--model=ctiir.stages.ComposedRetrieval", "--model.backbone=tiny", "--model.fusion=gated",
        "--model.lr_backbone=1e-3", "--model.warmup_steps=0", "--seed_everything=0",
        "--data=ctiir.datamodules.HFTripletDataModule", f"--data.triplets={saved}", "--data.name=mine",
        "--data.batch_size=6", "--data.num_workers=0",
        "--trainer.overfit_batches=1", "--trainer.max_epochs=8", "--trainer.log_every_n_steps=1",
        "--trainer.check_val_every_n_epoch=8", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", "--trainer.enable_checkpointing=false",
        "--trainer.logger=CSVLogger", f"--trainer.logger.init_args.save_dir={tmp_path}",
    ])
    assert code == 0
    [metrics] = list(tmp_path.rglob("metrics.csv"))
    rows = list(csv.DictReader(io.StringIO(metrics.read_text())))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 8 and losses[-1] < 0.7 * losses[0], losses
    recall = [float(r["val/mine/R@10"]) for r in rows if r.get("val/mine/R@10")]
    assert recall, "the composed evaluation on the dataset's val rows was logged"


def test_an_image_cell_becomes_rgb_as_a_file_does(tmp_path: Path) -> None:
    """Transparency composited over white, like ``load_rgb`` does for a file, not whatever the transparent
    pixels store."""
    from ctiir.datamodules.images import load_rgb

    clear = PILImage.new("RGBA", (8, 8), (200, 10, 10, 0))  # fully transparent red
    clear.save(tmp_path / "clear.png")
    rows = [(i, (i + 1) % 4, "text", "train") for i in range(4)]
    table = triplet_dataset(rows).cast_column("reference", Image(decode=False))
    cells = [table[i]["reference"] for i in range(len(table))]
    cells[0] = {"bytes": (tmp_path / "clear.png").read_bytes(), "path": None}
    table = table.remove_columns("reference").add_column("reference", cells, feature=Image(decode=False))
    dm = datamodule(triplets=table.cast_column("reference", Image()))
    from_cell = dm.load_image(dm.triplets("train")[0].reference, "")
    assert from_cell.mode == "RGB" and from_cell.getpixel((0, 0)) == (255, 255, 255)
    assert list(from_cell.getdata()) == list(load_rgb(tmp_path / "clear.png").getdata())
