"""The contract of a fusion: how a reference image and a modification text become one query.

A fusion may be created before the embedding size is known: LightningCLI instantiates a ``class_path``
fusion before the model (and so before the backbone), so every fusion takes ``embed_dim: int | None = None``
first and creates its layers only in :meth:`Fusion.bind`. The stage calls ``bind`` once the backbone is
known; binding twice to the same size is a no-op, to another size an error.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn


def check_positive_int(value: Any, name: str) -> int:
    """``value`` as an int > 0, else a ``ValueError`` naming the argument (bools are refused: ``True == 1``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_dropout(value: Any, name: str = "dropout") -> float:
    """A dropout probability in [0, 1); 1 would zero every activation."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be a float in [0, 1), got {value!r}")
    return float(value)


class Fusion(nn.Module):
    """Combines L2-normalised image and text features into an L2-normalised query.

    ``forward(v, t)`` gets ``v`` and ``t`` of shape (B, D), both already L2-normalised, and returns the
    L2-normalised query (B, D). ``loss(v, t, g)`` is the fusion's own training loss given the normalised
    target embeddings ``g`` (or ``None`` when it has none); the stage adds it to the retrieval loss.
    ``last_weights`` holds the latest per-query ``(w_img, w_txt)`` as a detached (B, 2) tensor for fusions
    that weight the modalities, else ``None``. ``config`` is a JSON-serialisable ``{"name": ..., **kwargs}``
    such that ``build_fusion(**config)`` rebuilds it.

    Writing a subclass: call ``super().__init__()`` first, store every ``__init__`` argument as an attribute
    of the same name (``config`` reads them back), end ``__init__`` with ``self._bind_if_given(embed_dim)``,
    and create the layers in :meth:`_build`. Register it with ``@register_fusion(name, test_kwargs=...)``;
    the test-suite then checks it against this contract without further work.
    """

    last_weights: torch.Tensor | None = None

    def __init__(self) -> None:
        super().__init__()
        self.embed_dim: int | None = None

    # -- binding -------------------------------------------------------------------------------------

    @property
    def is_bound(self) -> bool:
        return self.embed_dim is not None

    def bind(self, embed_dim: int) -> Fusion:
        """Create the layers for features of size ``embed_dim``; returns ``self`` so calls can chain.

        A no-op when already bound to ``embed_dim``; a ``ValueError`` naming both sizes when bound to another,
        because silently rebuilding would throw away trained (or checkpoint-loaded) weights.
        """
        embed_dim = check_positive_int(embed_dim, "embed_dim")
        if self.embed_dim is not None:
            if self.embed_dim != embed_dim:
                raise ValueError(
                    f"{type(self).__name__} is already bound to embed_dim={self.embed_dim} and cannot be "
                    f"re-bound to embed_dim={embed_dim}; build a new fusion for the other backbone"
                )
            return self
        self._build(embed_dim)
        self.embed_dim = embed_dim
        return self

    def _bind_if_given(self, embed_dim: int | None) -> None:
        """The last line of a subclass ``__init__``: bind now when the size is already known."""
        if embed_dim is not None:
            self.bind(embed_dim)

    def _build(self, embed_dim: int) -> None:
        """Create the layers for features of size ``embed_dim`` (called once, by :meth:`bind`)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _build(embed_dim)")

    # -- config --------------------------------------------------------------------------------------

    @property
    def registry_name(self) -> str:
        """The name this class is registered under (looked up, so it cannot drift from the decorator)."""
        from ctiir.fusion.registry import FUSIONS  # the registry imports this module

        names = [name for name in FUSIONS.names() if FUSIONS.get(name) is type(self)]
        if len(names) != 1:
            found = ", ".join(names) if names else "none"
            raise LookupError(
                f"{type(self).__name__} must be registered under exactly one fusion name to have a config "
                f"(found: {found}); decorate it with @register_fusion(name)"
            )
        return names[0]

    @property
    def config(self) -> dict[str, Any]:
        """``{"name": ..., "embed_dim": ..., **init kwargs}``; ``build_fusion(**config)`` rebuilds the module.

        Read from the attributes named like the ``__init__`` arguments, so hyperparameters resolved at bind
        time (e.g. a default hidden size) are stored resolved and a checkpoint does not depend on how a later
        version computes defaults.
        """
        config: dict[str, Any] = {"name": self.registry_name, "embed_dim": self.embed_dim}
        for param in list(inspect.signature(type(self).__init__).parameters.values())[1:]:
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise TypeError(
                    f"{type(self).__name__}.__init__ must not take *{param.name}: config lists every argument"
                )
            if param.name == "embed_dim":
                continue
            if not hasattr(self, param.name):
                raise AttributeError(
                    f"{type(self).__name__} does not store its __init__ argument {param.name!r} as an attribute "
                    "of the same name, so its config cannot be written"
                )
            config[param.name] = getattr(self, param.name)
        return config

    # -- the contract --------------------------------------------------------------------------------

    def check_features(self, v: torch.Tensor, t: torch.Tensor) -> None:
        """Fail early, naming the shapes, instead of deep inside a matmul."""
        if self.embed_dim is None:
            raise RuntimeError(f"{type(self).__name__} is not bound yet: call bind(embed_dim) before forward")
        if v.ndim != 2 or v.shape != t.shape or v.shape[1] != self.embed_dim:
            raise ValueError(
                f"{type(self).__name__} expects image and text features of shape (B, {self.embed_dim}); "
                f"got image {tuple(v.shape)} and text {tuple(t.shape)}"
            )

    def check_targets(self, v: torch.Tensor, g: torch.Tensor) -> None:
        if g.shape != v.shape:
            raise ValueError(
                f"{type(self).__name__}.loss expects target embeddings g of the queries' shape {tuple(v.shape)}; "
                f"got {tuple(g.shape)}"
            )

    def forward(self, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The L2-normalised query (B, D) from normalised image ``v`` and text ``t`` features (B, D)."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward(v, t)")

    def loss(self, v: torch.Tensor, t: torch.Tensor, g: torch.Tensor) -> torch.Tensor | None:
        """The fusion's own loss given normalised targets ``g`` (B, D); ``None`` when it has none."""
        return None

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}"
