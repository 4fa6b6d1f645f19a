"""The contract of a fusion: how a reference image and a modification text become one query.

A fusion may be created before the embedding size is known: LightningCLI instantiates a ``class_path``
fusion before the model (and so before the backbone), so every fusion takes ``embed_dim: int | None = None``
first and creates its layers only in :meth:`Fusion.bind`. The stage calls ``bind`` once the backbone is
known; binding twice to the same size is a no-op, to another size an error.
"""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

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


REGISTRY_NAME_ATTR = "_fusion_registry_name"


class Fused(NamedTuple):
    """A fused query: ``query`` (B, D), L2-normalised, and the modality ``weights`` (B, 2) or ``None``.

    ``weights[:, 0]`` is the image's share and ``weights[:, 1]`` the text's (rows sum to 1), detached: they
    describe the query, they are not trained through this value.
    """

    query: torch.Tensor
    weights: torch.Tensor | None


def as_fused(value: Any) -> Fused:
    """A query encoder's output as a ``Fused``: ctiir stages return one, a plain (B, D) tensor has no weights."""
    if isinstance(value, Fused):
        return value
    if isinstance(value, torch.Tensor):
        return Fused(value, None)
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], torch.Tensor):
        return Fused(value[0], value[1])
    raise TypeError(f"a query encoder must return a (B, D) tensor or a Fused(query, weights); got {type(value).__name__}")


class Fusion(nn.Module):
    """Combines L2-normalised image and text features into an L2-normalised query.

    :meth:`fuse` is the one method to implement: it gets ``v`` and ``t`` of shape (B, D), both already
    L2-normalised, and returns a :class:`Fused` with the L2-normalised query (B, D) and, for fusions that
    weight the modalities, the per-query ``(w_img, w_txt)`` (else ``None``). ``forward(v, t)`` returns the
    query alone, for users who only want that. ``loss(v, t, g)`` is the fusion's own training loss given the
    normalised target embeddings ``g`` (or ``None`` when it has none); the stage adds it to the retrieval
    loss. ``config`` is a JSON-serialisable ``{"name": ..., **kwargs}`` such that ``build_fusion(**config)``
    rebuilds it.

    Writing a subclass: call ``super().__init__()`` first, store every ``__init__`` argument as an attribute
    of the same name (``config`` reads them back), end ``__init__`` with ``self._bind_if_given(embed_dim)``,
    and create the layers in :meth:`_build`. Register it with ``@register_fusion(name, test_kwargs=...)``,
    which also stamps the name on the class; the test-suite then checks it against this contract without
    further work.
    """

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
        """The name ``@register_fusion`` stamped on this very class (a subclass does not inherit it: its
        config would otherwise rebuild the parent class)."""
        name = type(self).__dict__.get(REGISTRY_NAME_ATTR)
        if name is None:
            raise LookupError(
                f"{type(self).__name__} is not a registered fusion, so it has no config; decorate it with "
                "@register_fusion(name)"
            )
        return name

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

    def fuse(self, v: torch.Tensor, t: torch.Tensor) -> Fused:
        """The query (B, D) and modality weights (B, 2) or ``None``, from normalised ``v`` and ``t`` (B, D)."""
        raise NotImplementedError(f"{type(self).__name__} must implement fuse(v, t)")

    def forward(self, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The L2-normalised query (B, D) alone."""
        return self.fuse(v, t).query

    def loss(self, v: torch.Tensor, t: torch.Tensor, g: torch.Tensor) -> torch.Tensor | None:
        """The fusion's own loss given normalised targets ``g`` (B, D); ``None`` when it has none."""
        return None

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}"
