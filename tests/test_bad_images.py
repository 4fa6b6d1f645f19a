"""The bad-input catalogue, images: each case gives a clear error naming the file (and, through a datamodule,
the split and annotation entry), or a documented conversion (docs/robustness.md)."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from ctiir.checkdata.core import decode_error
from ctiir.datamodules.errors import DataError
from ctiir.datamodules.images import ImageError, load_rgb


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares ``width x height`` pixels but holds almost no data: opening it costs nothing, and
    decoding it would need width x height x 3 bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))
    return path


def rgb_png(path: Path, size: int = 32) -> Path:
    Image.new("RGB", (size, size), (10, 200, 30)).save(path)
    return path


# ---------------------------------------------------------------------------------------------- unreadable
def test_a_missing_image_is_an_error_naming_it_and_its_entry(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"missing image: .*nope\.png \(cap\.dress\.val\.json entry 4\)"):
        load_rgb(tmp_path / "nope.png", "cap.dress.val.json entry 4")


def test_an_empty_file_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty image file: .*empty\.png \(val gallery image g1\)"):
        load_rgb(tmp_path / "empty.png", "val gallery image g1")


def test_a_truncated_image_is_an_error_naming_it(tmp_path: Path) -> None:
    full = rgb_png(tmp_path / "full.png", 256)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(full)
    data = full.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"unreadable or corrupt image .*: .*cut\.png"):
        load_rgb(tmp_path / "cut.png")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False, "ctiir never decodes half an image as if it were whole"


def test_a_file_that_is_not_an_image_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("these are not pixels")
    with pytest.raises(ImageError, match=r"not an image \(unknown format\): .*notes\.jpg"):
        load_rgb(tmp_path / "notes.jpg")
    assert issubclass(ImageError, DataError)


# ---------------------------------------------------------------------------------------------- conversions
def test_grayscale_becomes_rgb_with_equal_channels(tmp_path: Path) -> None:
    Image.new("L", (8, 8), 77).save(tmp_path / "g.png")
    img = load_rgb(tmp_path / "g.png")
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (77, 77, 77)


def test_cmyk_becomes_the_rgb_colour_it_prints_as(tmp_path: Path) -> None:
    for cmyk, rgb in (((0, 255, 255, 0), (255, 0, 0)), ((255, 0, 0, 0), (0, 255, 255)), ((0, 0, 0, 255), (0, 0, 0))):
        Image.new("CMYK", (8, 8), cmyk).save(tmp_path / "c.jpg", quality=100)
        got = load_rgb(tmp_path / "c.jpg").getpixel((4, 4))
        assert max(abs(a - b) for a, b in zip(got, rgb, strict=True)) <= 3, (cmyk, got)


def test_transparency_is_composited_over_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # transparent pixels that store black
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (0, 0, 255, 128))
    rgba.save(tmp_path / "a.png")
    img = load_rgb(tmp_path / "a.png")
    assert img.getpixel((0, 0)) == (255, 0, 0)
    assert img.getpixel((5, 5)) == (255, 255, 255), "not the black that convert('RGB') would show"
    assert img.getpixel((1, 0)) == pytest.approx((127, 127, 255), abs=1)
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0, 200, 10, 10])
    palette.putpixel((0, 0), 1)
    palette.save(tmp_path / "p.png", transparency=0)
    img = load_rgb(tmp_path / "p.png")
    assert img.getpixel((0, 0)) == (200, 10, 10) and img.getpixel((3, 3)) == (255, 255, 255)


def test_sixteen_bit_grayscale_is_scaled_to_eight_bits_not_clipped_to_white(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    Image.fromarray(values).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as raw:
        assert raw.mode == "I;16"
        assert raw.convert("RGB").getpixel((2, 0)) == (255, 255, 255), "what Pillow's own conversion gives"
    img = load_rgb(tmp_path / "g16.png")
    assert [img.getpixel((x, 0)) for x in range(4)] == [(0, 0, 0), (1, 1, 1), (128, 128, 128), (255, 255, 255)]
    Image.fromarray(values).save(tmp_path / "g16.tif")  # TIFF, another 16-bit container
    assert load_rgb(tmp_path / "g16.tif").getpixel((2, 0)) == (128, 128, 128)


def test_a_float_image_is_refused_rather_than_guessed(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(ImageError, match=r"floating-point image \(mode F\).*f\.tif"):
        load_rgb(tmp_path / "f.tif")


# ---------------------------------------------------------------------------------------------- size limit
@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a pixel is decoded: a too large image must be refused from its header alone."""

    def decode(self: ImageFile.ImageFile):
        raise AssertionError(f"decoded an image of {self.size}")

    monkeypatch.setattr(ImageFile.ImageFile, "load", decode)


def test_a_decompression_bomb_is_refused_from_its_header_naming_the_file(tmp_path: Path, no_decoding: None) -> None:
    bomb = png_header(tmp_path / "bomb.png", 20000, 20000)
    with pytest.raises(ImageError, match=r"image too large, 400,000,000 pixels, over the limit of 89,478,485 .*"
                       r"PIL\.Image\.MAX_IMAGE_PIXELS.*bomb\.png \(shoes train entry 3\)"):
        load_rgb(bomb, "shoes train entry 3")


def test_an_image_over_the_limit_but_under_pillows_error_is_refused_too(tmp_path: Path, no_decoding: None) -> None:
    big = png_header(tmp_path / "big.png", 10000, 10000)  # 1.1x the limit: Pillow itself would only warn
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(ImageError, match=r"10000 x 10000 = 100,000,000 pixels"):
        load_rgb(big)


def test_the_documented_limit_can_be_raised_or_lowered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = rgb_png(tmp_path / "img.png", 64)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 48 * 48)
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(ImageError, match=r"64 x 64 = 4,096 pixels, over the limit of 2,304"):
        load_rgb(image)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 16 * 16)  # over twice the limit: Pillow refuses at open
    with pytest.raises(ImageError, match=r"image too large, 4,096 pixels, over the limit of 256"):
        load_rgb(image)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert load_rgb(image).size == (64, 64)


# ---------------------------------------------------------------------------------------------- in context
@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ctiir.datamodules.synthetic import generate

    return generate(tmp_path_factory.mktemp("synth") / "data", seed=0, size="tiny")


def test_a_bomb_in_a_dataset_names_file_split_and_entry_in_training_and_evaluation(synth: Path, tmp_path: Path) -> None:
    """The finding: a 20000 x 20000 image stopped a run with PIL's raw error, which named no file."""
    from ctiir.backbones import build_backbone
    from ctiir.datamodules import SyntheticDataModule
    from ctiir.datamodules.request import DataRequest

    root = tmp_path / "data"
    shutil.copytree(synth, root)
    data = SyntheticDataModule(root=str(root), size="tiny", categories=["dress"], generate_if_missing=False)
    data.setup("fit")
    data.serve(DataRequest({"main": "triplets"}, build_backbone("tiny")))
    train = data.triplets("train")[0]
    png_header(Path(train.reference), 20000, 20000)
    dataset = data.training_datasets("train", train=True)["main"]
    with pytest.raises(DataError, match=rf"image too large.*{Path(train.reference).name} \(.*cap\.dress\.train\.json entry 0\)"):
        dataset[0]
    task = data.retrieval_tasks("val", "composed")[0]
    image = task.evaluation.gallery[0]
    png_header(Path(image.path), 20000, 20000)
    with pytest.raises(DataError, match=rf"image too large.*{Path(image.path).name} \(synthetic/dress gallery image {image.id}\)"):
        task.gallery[0]


def test_check_data_reports_what_training_would_refuse_and_passes_what_it_converts(tmp_path: Path) -> None:
    values = np.full((4, 4), 32768, dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert decode_error(tmp_path / "g16.png") is None  # converted correctly now, so not a problem
    png_header(tmp_path / "bomb.png", 20000, 20000)
    assert "image too large" in (decode_error(tmp_path / "bomb.png") or "")
    (tmp_path / "empty.png").write_bytes(b"")
    assert decode_error(tmp_path / "empty.png") == "empty image file"
    assert decode_error(tmp_path / "absent.png") == "missing image"
