"""Image preprocessing: the backbone's own, or CLIP4Cir's ``TargetPad``.

A datamodule chooses the preprocessing (``preprocess``, ``target_pad_ratio``); the stage it serves records
the choice as a :class:`Preprocessing` in its checkpoint, so that every inference path (evaluation, CIRR
submission, index, search) builds the same transforms from the checkpoint alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision import transforms as T

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Preprocess = Literal["backbone", "targetpad"]
PREPROCESS_MODES: tuple[str, ...] = get_args(Preprocess)


@dataclass(frozen=True)
class Preprocessing:
    """The evaluation preprocessing of a model: ``mode``, the input ``size`` and TargetPad's ratio.

    ``mode="backbone"`` is the backbone's own evaluation transform (its resize, crop and normalisation);
    ``"targetpad"`` is CLIP4Cir's TargetPad at ``target_pad_ratio``, then the same resize, crop, normalise.
    """

    mode: Preprocess
    size: int
    target_pad_ratio: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in PREPROCESS_MODES:
            raise ValueError(f"preprocess must be one of {', '.join(PREPROCESS_MODES)}, got {self.mode!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size <= 0:
            raise ValueError(f"preprocessing size must be a positive int, got {self.size!r}")
        if self.mode == "targetpad":
            ratio = self.target_pad_ratio
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or ratio < 1:
                raise ValueError(f"target_pad_ratio must be a number >= 1, got {ratio!r}")
        elif self.target_pad_ratio is not None:
            raise ValueError("target_pad_ratio only applies to preprocess='targetpad'")

    @classmethod
    def choose(cls, mode: Preprocess, size: int, target_pad_ratio: float) -> Preprocessing:
        """The preprocessing a datamodule's ``preprocess`` / ``target_pad_ratio`` arguments ask for."""
        return cls(mode, size, float(target_pad_ratio) if mode == "targetpad" else None)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "preprocess") -> Preprocessing:
        """Read what :meth:`to_dict` wrote; an unknown or missing key is an error naming ``where``."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected a mapping with mode, size, target_pad_ratio; got {data!r:.80}")
        unknown = sorted(set(data) - {"mode", "size", "target_pad_ratio"})
        if unknown or "mode" not in data or "size" not in data:
            raise ValueError(f"{where}: expected keys mode, size and target_pad_ratio; got {sorted(data)}")
        return cls(data["mode"], data["size"], data.get("target_pad_ratio"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        if self.mode == "targetpad":
            return f"TargetPad (ratio {self.target_pad_ratio:g}, {self.size} px)"
        return f"the backbone's own transforms ({self.size} px)"


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


def targetpad_transform(
    size: int,
    target_ratio: float = 1.25,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    interpolation: T.InterpolationMode = T.InterpolationMode.BICUBIC,
) -> Callable[[Any], torch.Tensor]:
    """TargetPad, then resize / center crop / normalise (CLIP4Cir's preprocessing).

    The defaults are OpenAI CLIP's (what CLIP4Cir used); :func:`build_transforms` passes the backbone's own.
    """
    return T.Compose(
        [
            TargetPad(target_ratio),
            T.Resize(size, interpolation=interpolation),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def build_transforms(backbone: Any, preprocessing: Preprocessing) -> tuple[Callable, Callable]:
    """(train, eval) transforms of ``preprocessing`` for ``backbone``: its own, or TargetPad at its input size.

    TargetPad normalises and resamples as the backbone's own preprocessing does (``backbone.pixels``, a
    ``ctiir.backbones.PixelConfig``): the weights were trained on those pixels, whatever the padding.
    """
    if preprocessing.size != backbone.image_size:
        raise ValueError(
            f"the preprocessing is for {preprocessing.size} px images, but the backbone takes {backbone.image_size} px"
        )
    if preprocessing.mode == "backbone":
        return backbone.train_transform, backbone.eval_transform
    assert preprocessing.target_pad_ratio is not None  # checked by Preprocessing
    pixels = getattr(backbone, "pixels", None)
    if pixels is None:
        raise ValueError(
            f"{type(backbone).__name__} does not say how it normalises its pixels (no `pixels`, a "
            "ctiir.backbones.PixelConfig), so TargetPad cannot match it; set it, or use preprocess='backbone'"
        )
    tf = targetpad_transform(
        backbone.image_size, preprocessing.target_pad_ratio, pixels.mean, pixels.std, pixels.interpolation_mode
    )
    return tf, tf
