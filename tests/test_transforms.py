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

from ctiir.datamodules.transforms import CLIP_MEAN, CLIP_STD, TargetPad, targetpad_transform

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
