"""A small named registry, in the style of timm's model registry.

Backbones and fusions are both looked up by name; one class serves both so that an unknown name gives the
same kind of error everywhere (it lists the names that are known).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a name to a factory. ``test_kwargs`` lets the test-suite build a small instance of each entry."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}
        self._test_kwargs: dict[str, dict[str, Any]] = {}

    def register(
        self, name: str, *, test_kwargs: dict[str, Any] | None = None
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories and self._factories[name] is not factory:
                raise ValueError(f"{self.kind} {name!r} is already registered by {self._factories[name]!r}")
            self._factories[name] = factory
            self._test_kwargs[name] = dict(test_kwargs or {})
            return factory

        return decorator

    def names(self) -> list[str]:
        return sorted(self._factories)

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._factories[name]
        except KeyError:
            known = ", ".join(self.names()) or "(none)"
            raise KeyError(f"unknown {self.kind} {name!r}; known {self.kind}s: {known}") from None

    def test_kwargs(self, name: str) -> dict[str, Any]:
        self.get(name)
        return dict(self._test_kwargs[name])

    def __contains__(self, name: object) -> bool:
        return name in self._factories
