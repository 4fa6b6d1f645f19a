"""``TargetPad`` against CLIP4Cir's definition, with the expected sizes and paddings worked out by hand.

CLIP4Cir (Baldrati et al.): with ``w, h`` the size and ``r`` the target ratio, an image with
``max(w, h) / min(w, h) < r`` is returned as it is; otherwise ``s = max(w, h) / r``,
``hp = max(int((s - w) / 2), 0)``, ``vp = max(int((s - h) / 2), 0)`` and the image gets ``hp`` zero columns
left and right and ``vp`` zero rows top and bottom.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ctiir.datamodules.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    Preprocessing,
    TargetPad,
    build_transforms,
    targetpad_transform,
)

WHITE = (255, 255, 255)


def white(w: int, h: int) -> Image.Image:
    return Image.new("RGB", (w, h), WHITE)


# (w, h, ratio) -> (output w, output h, hp, vp), computed by hand from the definition above
CASES = [
    ((100, 100, 1.25), (100, 100, 0, 0)),  # square: ratio 1 < 1.25, unchanged
    ((120, 100, 1.25), (120, 100, 0, 0)),  # 1.2 < 1.25, unchanged
    ((125, 100, 1.25), (125, 100, 0, 0)),  # exactly 1.25: padded by int((100 - 125) / 2) -> 0, and 0 rows
    ((200, 100, 1.25), (200, 160, 0, 30)),  # s = 160: vp = int(60 / 2) = 30
    ((201, 100, 1.25), (201, 160, 0, 30)),  # s = 160.8: vp = int(30.4) = 30
    ((100, 300, 1.25), (240, 300, 70, 0)),  # tall: s = 240, hp = int(140 / 2) = 70
    ((90, 301, 1.25), (240, 301, 75, 0)),  # s = 240.8: hp = int(150.8 / 2) = int(75.4) = 75, so 90 + 2 * 75
    ((200, 100, 1.0), (200, 200, 0, 50)),  # ratio 1 pads every non-square image to a square
    ((300, 100, 1.5), (300, 200, 0, 50)),  # s = 200: vp = int(100 / 2) = 50
    ((130, 100, 1.5), (130, 100, 0, 0)),  # 1.3 < 1.5, unchanged
]


@pytest.mark.parametrize(("given", "expected"), CASES)
def test_targetpad_matches_clip4cir(given: tuple[int, int, float], expected: tuple[int, int, int, int]) -> None:
    w, h, ratio = given
    out_w, out_h, hp, vp = expected
    padded = TargetPad(ratio)(white(w, h))
    assert padded.size == (out_w, out_h)
    pixels = np.asarray(padded)
    assert (pixels[vp : vp + h, hp : hp + w] == 255).all()  # the image, unmoved inside the padding
    assert (pixels[:vp] == 0).all() and (pixels[vp + h :] == 0).all()  # zero rows
    assert (pixels[:, :hp] == 0).all() and (pixels[:, hp + w :] == 0).all()  # zero columns
    assert pixels.sum() == 255 * 3 * w * h  # nothing else is non-zero


def test_targetpad_brings_wide_images_to_the_ratio() -> None:
    for w, h in [(400, 100), (100, 400), (333, 101), (1000, 799)]:
        padded = TargetPad(1.25)(white(w, h))
        pw, ph = padded.size
        assert max(pw, ph) / min(pw, ph) == pytest.approx(1.25, abs=0.02)


def test_targetpad_rejects_a_ratio_below_one() -> None:
    with pytest.raises(ValueError, match="0.9"):
        TargetPad(0.9)


@pytest.mark.parametrize("size", [(200, 100), (100, 300), (64, 64), (7, 50)])
def test_targetpad_transform_shape_and_padding_value(size: tuple[int, int]) -> None:
    tf = targetpad_transform(32)
    out = tf(white(*size))
    assert isinstance(out, torch.Tensor) and out.shape == (3, 32, 32)
    mean, std = torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD)
    w, h = size
    if max(w, h) / min(w, h) >= 1.25 and w > h:
        # the top row lies in the zero padding (after resize and center crop): normalised black
        assert torch.allclose(out[:, 0, 16], -mean / std, atol=1e-4)
    assert torch.allclose(out[:, 16, 16], (1 - mean) / std, atol=1e-2)  # the centre is the white image


# ---------------------------------------------------------------------------------------------- the backbone's pixels
def picture(w: int, h: int) -> Image.Image:
    """A non-uniform image, so that normalisation and resampling both show in the output."""
    g = torch.Generator().manual_seed(w * 1000 + h)
    return Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy())


SIGLIP_LIKE = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear"}


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("tiny", {}),
        ("tiny", {"preprocess_cfg": SIGLIP_LIKE}),
        ("hf-clip", {"preprocess_cfg": {"mean": [0.4, 0.45, 0.5], "std": [0.2, 0.25, 0.3], "interpolation": "bilinear"}}),
    ],
    ids=["tiny-openai", "tiny-siglip-like", "hf-clip-custom"],
)
def test_targetpad_normalises_and_resamples_as_the_backbone_does(name: str, kwargs: dict) -> None:
    """On an image TargetPad leaves alone (closer to square than the ratio), TargetPad's pipeline is the
    backbone's own evaluation transform: the same resize filter, crop and mean/std."""
    from ctiir.backbones import build_backbone
    from ctiir.backbones.registry import BACKBONES

    if name == "hf-clip":
        kwargs = {**BACKBONES.test_kwargs("hf-clip"), **kwargs}
    backbone = build_backbone(name, **kwargs)
    size = backbone.image_size
    train, evaluation = build_transforms(backbone, Preprocessing("targetpad", size, 1.25))
    image = picture(size + 13, size + 7)  # not square, not padded, and resized by the backbone
    own = backbone.eval_transform(image)
    assert torch.allclose(evaluation(image), own, atol=1e-5)
    expected = kwargs.get("preprocess_cfg", {"mean": CLIP_MEAN, "std": CLIP_STD, "interpolation": "bicubic"})
    assert backbone.pixels.mean == pytest.approx(expected["mean"]) and backbone.pixels.std == pytest.approx(expected["std"])
    assert backbone.pixels.interpolation == expected["interpolation"]
    # A padded image: the padding is black in the backbone's normalisation.
    padded = evaluation(picture(3 * size, size))
    black = -torch.tensor(backbone.pixels.mean) / torch.tensor(backbone.pixels.std)
    assert torch.allclose(padded[:, 0, size // 2], black, atol=1e-4)


def test_targetpad_needs_a_backbone_that_says_how_it_normalises() -> None:
    class Bare:
        image_size = 32

    with pytest.raises(ValueError, match="Bare does not say how it normalises"):
        build_transforms(Bare(), Preprocessing("targetpad", 32, 1.25))


def test_pixel_config_checks_its_values() -> None:
    from ctiir.backbones import PixelConfig

    assert PixelConfig.of([0.5] * 3, [0.5] * 3, "bilinear", "here").interpolation_mode.value == "bilinear"
    with pytest.raises(ValueError, match="here: std must be positive"):
        PixelConfig.of([0.5] * 3, [0.5, 0.0, 0.5], "bicubic", "here")
    with pytest.raises(ValueError, match="here: mean must be three"):
        PixelConfig.of([0.5] * 4, [0.5] * 3, "bicubic", "here")
    with pytest.raises(ValueError, match="here: unknown interpolation 'cubic'"):
        PixelConfig.of([0.5] * 3, [0.5] * 3, "cubic", "here")
