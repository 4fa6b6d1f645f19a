"""The contract every backbone meets, whatever library it wraps.

Stages, fusions and the evaluation callback only talk to this interface, so open_clip, transformers CLIP
and the tiny offline model are interchangeable.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn


class TruncationWarning(UserWarning):
    """A text longer than the backbone's context (``context_length`` tokens) was cut to fit."""


class Backbone(nn.Module):
    """A CLIP-style dual encoder.

    Subclasses set ``embed_dim``, ``image_size``, ``train_transform`` and ``eval_transform`` (PIL image ->
    tensor), and ``spec``: a JSON-serialisable dict ``{"name": ..., **kwargs}`` such that
    ``build_backbone(**spec)`` rebuilds the same architecture. ``spec`` never needs the pretrained weights:
    checkpoints carry the state dict, and :meth:`checkpoint_spec` drops the weight source.
    """

    embed_dim: int
    image_size: int
    vocab_size: int
    context_length: int
    train_transform: Callable[[Any], torch.Tensor]
    eval_transform: Callable[[Any], torch.Tensor]
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
