"""``register_fusion`` / ``build_fusion`` / ``list_fusions``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ctiir.fusion.base import REGISTRY_NAME_ATTR, Fusion
from ctiir.registry import Registry

FUSIONS: Registry[Fusion] = Registry("fusion")
F = TypeVar("F", bound=type[Fusion])


def register_fusion(name: str, *, test_kwargs: dict[str, Any] | None = None) -> Callable[[F], F]:
    """Register a ``Fusion`` subclass under ``name`` and stamp the name on it (``Fusion.registry_name``).

    A class is registered once: a second name for the same class is an error, since its config could not
    say which one rebuilds it.
    """

    def decorator(cls: F) -> F:
        stamped = cls.__dict__.get(REGISTRY_NAME_ATTR)
        if stamped is not None and stamped != name:
            raise ValueError(f"{cls.__name__} is already registered as fusion {stamped!r}; cannot also be {name!r}")
        FUSIONS.register(name, test_kwargs=test_kwargs)(cls)
        setattr(cls, REGISTRY_NAME_ATTR, name)
        return cls

    return decorator


def build_fusion(name: str, embed_dim: int | None = None, **kwargs: Any) -> Fusion:
    """Build a registered fusion. An unknown name raises ``KeyError`` listing the known ones."""
    return FUSIONS.get(name)(embed_dim=embed_dim, **kwargs)


def list_fusions() -> list[str]:
    return FUSIONS.names()
