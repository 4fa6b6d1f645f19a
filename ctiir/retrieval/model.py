"""What the retrieval tools need from a trained stage, in one place.

The stage API is changing under this package (``encode_query`` will return ``ctiir.fusion.Fused``, the
evaluation transform moves from the backbone to the module, the preprocessing will be recorded in the
checkpoint). Every lookup goes through the helpers here, so that change is invisible to the rest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ctiir.retrieval.errors import RetrievalError

_HASH_BLOCK = 1 << 22


def load_stage(ckpt: str | Path, device: str | torch.device = "cpu") -> Any:
    """Any ctiir stage checkpoint, rebuilt from its hyperparameters, in eval mode on ``device``."""
    from ctiir.stages.base import CTIIRStage

    path = Path(ckpt)
    if not path.is_file():
        raise RetrievalError(f"checkpoint {path} not found")
    try:
        module = CTIIRStage.load_from_checkpoint(str(path), map_location=torch.device(device))
    except (KeyError, TypeError, RuntimeError, ValueError) as err:
        raise RetrievalError(f"checkpoint {path} could not be loaded as a ctiir stage: {err}") from err
    return module.eval()


def eval_transform(module: Any) -> Callable[[Any], torch.Tensor]:
    """The image transform every inference path uses: the module's own (from the checkpoint's recorded
    preprocessing) where it has one, else its backbone's."""
    transform = getattr(module, "eval_transform", None)
    if transform is None:
        transform = module.backbone.eval_transform
    return transform


def preprocessing_record(module: Any) -> dict[str, Any] | None:
    """The checkpoint's preprocessing as a JSON-able dict for the manifest, or ``None`` where not recorded."""
    preprocessing = getattr(module, "preprocessing", None)
    if preprocessing is None:
        return None
    if hasattr(preprocessing, "to_dict"):
        return dict(preprocessing.to_dict())
    return dict(preprocessing)


def backbone_spec(module: Any) -> dict[str, Any]:
    return dict(module.hparams["backbone"])


def embed_dim(module: Any) -> int:
    return int(module.backbone.embed_dim)


def query_embeddings(module: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(queries (B, D), weights (B, 2) or None)`` from ``module.encode_query``, whichever form it returns.

    Today ``encode_query`` returns a tensor and the fusion keeps its weights in ``fusion.last_weights``;
    later it returns ``Fused(query, weights)``. Weights exist only for image+text queries.
    """
    fusion = getattr(module, "fusion", None)
    if fusion is not None and hasattr(fusion, "last_weights"):
        fusion.last_weights = None  # never report an earlier call's weights
    out = module.encode_query(batch)
    if isinstance(out, torch.Tensor):
        weights = getattr(fusion, "last_weights", None) if ("image" in batch and "text" in batch) else None
        query = out
    else:
        query, weights = out[0], out[1]
    if weights is not None:
        weights = weights.detach().float()
        if weights.shape != (query.shape[0], 2):
            weights = None  # a fusion that does not weight the two modalities per query
    return query.detach().float(), weights


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
