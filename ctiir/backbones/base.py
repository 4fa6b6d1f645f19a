"""The contract every backbone meets, whatever library it wraps.

Stages, fusions and the evaluation callback only talk to this interface, so open_clip, transformers CLIP
and the tiny offline model are interchangeable.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision.transforms import InterpolationMode


@dataclass(frozen=True)
class PixelConfig:
    """How a backbone's weights expect their pixels: per-channel ``mean`` and ``std`` (RGB, on [0, 1] values)
    and the ``interpolation`` used to resize (a torchvision ``InterpolationMode`` value: ``"bicubic"``,
    ``"bilinear"``, ...).

    Read from the backbone's own preprocessing config (open_clip's ``PreprocessCfg``, a transformers image
    processor), so that transforms other than the backbone's own, such as CLIP4Cir's TargetPad, feed the
    model the pixels it was trained on: SigLIP's weights expect mean/std 0.5, not OpenAI CLIP's.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    @classmethod
    def of(cls, mean: Sequence[float], std: Sequence[float], interpolation: str, where: str) -> PixelConfig:
        """Checked: three finite means, three positive stds, a torchvision interpolation; errors name ``where``."""
        values = {"mean": tuple(float(v) for v in mean), "std": tuple(float(v) for v in std)}
        for name, got in values.items():
            if len(got) != 3 or not all(math.isfinite(v) for v in got):
                raise ValueError(f"{where}: {name} must be three finite numbers (RGB), got {list(got)}")
        if not all(v > 0 for v in values["std"]):
            raise ValueError(f"{where}: std must be positive, got {list(values['std'])}")
        try:
            InterpolationMode(interpolation)
        except ValueError:
            known = ", ".join(m.value for m in InterpolationMode)
            raise ValueError(f"{where}: unknown interpolation {interpolation!r}; known: {known}") from None
        return cls(values["mean"], values["std"], interpolation)  # type: ignore[arg-type]

    @property
    def interpolation_mode(self) -> InterpolationMode:
        return InterpolationMode(self.interpolation)


class TruncationWarning(UserWarning):
    """A text longer than the backbone's context (``context_length`` tokens) was cut to fit."""


class Backbone(nn.Module):
    """A CLIP-style dual encoder.

    Subclasses set ``embed_dim``, ``image_size``, ``train_transform`` and ``eval_transform`` (PIL image ->
    tensor), ``pixels`` (the :class:`PixelConfig` of those transforms, which other transforms such as
    TargetPad reuse), and ``spec``: a JSON-serialisable dict ``{"name": ..., **kwargs}`` such that
    ``build_backbone(**spec)`` rebuilds the same architecture. ``spec`` never needs the pretrained weights:
    checkpoints carry the state dict, and :meth:`checkpoint_spec` drops the weight source.
    """

    embed_dim: int
    image_size: int
    vocab_size: int
    context_length: int
    train_transform: Callable[[Any], torch.Tensor]
    eval_transform: Callable[[Any], torch.Tensor]
    pixels: PixelConfig
    spec: dict[str, Any]

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Image features of shape (B, embed_dim), not normalised."""
        raise NotImplementedError

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text features of shape (B, embed_dim), not normalised."""
        raise NotImplementedError

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids (B, context_length) on the CPU; the caller moves them to the model's device."""
        raise NotImplementedError

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Trade compute for memory; backbones that cannot do it raise ``NotImplementedError``."""
        raise NotImplementedError(f"{type(self).__name__} does not support gradient checkpointing")

    def checkpoint_spec(self) -> dict[str, Any]:
        """The spec to store in a checkpoint: the architecture, with no weight source to fetch again."""
        spec = dict(self.spec)
        spec["pretrained"] = None
        return spec

    def report_truncated(self, texts: Sequence[str], truncated: Sequence[bool]) -> None:
        """Warn (once per backbone) that texts were cut to the context length: CLIP reads no more, and a caption
        cut silently would look like a model that ignores the end of long captions."""
        cut = [t for t, flag in zip(texts, truncated, strict=True) if flag]
        if not cut or getattr(self, "_truncation_reported", False):
            return
        self._truncation_reported = True
        warnings.warn(
            f"{len(cut)} of {len(texts)} texts are longer than this backbone's context of {self.context_length} tokens "
            f"and were truncated to it, e.g. a text of {len(cut[0])} characters starting {cut[0][:60]!r}; "
            "later truncations are not reported",
            TruncationWarning,
            stacklevel=3,
        )
