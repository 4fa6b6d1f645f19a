"""What the retrieval tools need from a trained stage, in one place: loading it, its evaluation transform
(built from the preprocessing its checkpoint records), and its query embeddings with the fusion's weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ctiir.fusion.base import as_fused
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
    """The image transform every inference path uses: the stage's, built from its checkpoint's preprocessing
    (the backbone's own transforms where the checkpoint records none)."""
    return module.eval_transform


def preprocessing_record(module: Any) -> dict[str, Any] | None:
    """The checkpoint's preprocessing as a JSON-able dict for the manifest, or ``None`` where not recorded."""
    preprocessing = module.preprocessing
    return None if preprocessing is None else dict(preprocessing.to_dict())


def backbone_spec(module: Any) -> dict[str, Any]:
    return dict(module.hparams["backbone"])


def embed_dim(module: Any) -> int:
    return int(module.backbone.embed_dim)


def query_embeddings(module: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(queries (B, D), weights (B, 2) or None)`` from ``module.encode_query`` (a ``Fused``, or a plain
    tensor for modules of one's own). Weights exist only for image+text queries through a weighting fusion."""
    query, weights = as_fused(module.encode_query(batch))
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
