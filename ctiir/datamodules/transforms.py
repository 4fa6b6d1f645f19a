"""Image preprocessing: the backbone's own, or CLIP4Cir's ``TargetPad``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision import transforms as T

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Preprocess = Literal["backbone", "targetpad"]


class TargetPad:
    """CLIP4Cir's TargetPad: pad an image whose aspect ratio is at least ``target_ratio`` to that ratio.

    Images closer to square are returned unchanged; wider or taller ones get symmetric zero padding on
    their short side so that ``max(w, h) / min(w, h)`` becomes ``target_ratio``. A later center crop then
    keeps the whole garment instead of cutting its ends.
    """

    def __init__(self, target_ratio: float = 1.25) -> None:
        if target_ratio < 1:
            raise ValueError(f"target_ratio must be >= 1, got {target_ratio}")
        self.target_ratio = target_ratio

    def __call__(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        if max(w, h) / min(w, h) < self.target_ratio:
            return image
        scaled = max(w, h) / self.target_ratio
        hp = max(int((scaled - w) / 2), 0)
        vp = max(int((scaled - h) / 2), 0)
        return TF.pad(image, [hp, vp, hp, vp], fill=0, padding_mode="constant")

    def __repr__(self) -> str:
        return f"TargetPad(target_ratio={self.target_ratio})"


def targetpad_transform(size: int, target_ratio: float = 1.25, mean=CLIP_MEAN, std=CLIP_STD) -> Callable[[Any], torch.Tensor]:
    """TargetPad, then CLIP's resize / center crop / normalise (CLIP4Cir's preprocessing)."""
    return T.Compose(
        [
            TargetPad(target_ratio),
            T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def resolve_transforms(backbone: Any, preprocess: Preprocess, target_pad_ratio: float) -> tuple[Callable, Callable]:
    """(train, eval) transforms for ``backbone``: its own, or TargetPad at its input size."""
    if preprocess == "backbone":
        return backbone.train_transform, backbone.eval_transform
    if preprocess == "targetpad":
        tf = targetpad_transform(backbone.image_size, target_pad_ratio)
        return tf, tf
    raise ValueError(f"preprocess must be 'backbone' or 'targetpad', got {preprocess!r}")
