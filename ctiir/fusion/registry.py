"""``register_fusion`` / ``build_fusion`` / ``list_fusions``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ctiir.fusion.base import Fusion
from ctiir.registry import Registry

FUSIONS: Registry[Fusion] = Registry("fusion")


def register_fusion(
    name: str, *, test_kwargs: dict[str, Any] | None = None
) -> Callable[[Callable[..., Fusion]], Callable[..., Fusion]]:
    return FUSIONS.register(name, test_kwargs=test_kwargs)


def build_fusion(name: str, embed_dim: int | None = None, **kwargs: Any) -> Fusion:
    """Build a registered fusion. An unknown name raises ``KeyError`` listing the known ones."""
    return FUSIONS.get(name)(embed_dim=embed_dim, **kwargs)


def list_fusions() -> list[str]:
    return FUSIONS.names()
