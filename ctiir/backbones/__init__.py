"""Backbone registry: open_clip, transformers CLIP and the tiny offline model behind one interface."""

from ctiir.backbones.base import Backbone, PixelConfig
from ctiir.backbones.registry import build_backbone, list_backbones, register_backbone

# Importing the entries registers them.
from ctiir.backbones import hf_clip, openclip  # noqa: E402,F401  isort: skip

__all__ = ["Backbone", "PixelConfig", "build_backbone", "list_backbones", "register_backbone"]
