"""``register_backbone`` / ``build_backbone`` / ``list_backbones``.

Names may carry an argument after a colon: ``openclip:ViT-B-32`` calls the ``openclip`` factory with
``config="ViT-B-32"``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ctiir.backbones.base import Backbone
from ctiir.registry import Registry

BACKBONES: Registry[Backbone] = Registry("backbone")


def register_backbone(
    name: str, *, test_kwargs: dict[str, Any] | None = None
) -> Callable[[Callable[..., Backbone]], Callable[..., Backbone]]:
    """Decorator: register a factory ``f(**kwargs) -> Backbone`` (or ``f(config, **kwargs)`` for ``name:config``)."""
    return BACKBONES.register(name, test_kwargs=test_kwargs)


def split_name(name: str) -> tuple[str, str | None]:
    """``"openclip:ViT-B-32"`` -> ``("openclip", "ViT-B-32")``; ``"tiny"`` -> ``("tiny", None)``."""
    base, sep, arg = name.partition(":")
    return base, (arg if sep else None)


def build_backbone(name: str, **kwargs: Any) -> Backbone:
    """Build a registered backbone. An unknown name raises ``KeyError`` listing the known ones."""
    base, arg = split_name(name)
    factory = BACKBONES.get(base)
    if arg is not None:
        kwargs["config"] = arg
    return factory(**kwargs)


def list_backbones() -> list[str]:
    return BACKBONES.names()
