"""The contrastive (InfoNCE, "batch-based classification") loss, as a plain ``nn.Module``.

It knows nothing of Lightning or DDP: the caller passes the local queries and the keys of the *global*
batch (gathered across ranks with gradients), plus the offset of its local rows in that global batch.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def ids_to_tensor(ids: Sequence[str] | Sequence[int] | torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """Item ids (strings or ints) as int64, so they can be gathered across ranks and compared.

    Strings are hashed with a stable 63-bit hash (Python's ``hash`` differs between processes).
    """
    if isinstance(ids, torch.Tensor):
        return ids.to(device=device, dtype=torch.long)
    values = [
        int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little") >> 1
        if not isinstance(i, int)
        else i
        for i in ids
    ]
    return torch.tensor(values, dtype=torch.long, device=device)


class ContrastiveLoss(nn.Module):
    """InfoNCE with a learnable CLIP-style logit scale and false-negative masking.

    ``forward(queries, keys, query_key_ids, key_ids, offset)`` scores the local queries (B, D) against all
    keys (N, D), both L2-normalised, where the positive of local query ``i`` is key ``offset + i``. Keys
    other than the positive that share the positive's id (the same target image twice in a batch) are
    masked out rather than treated as negatives. With ``symmetric=True`` the key->query direction is added
    (CLIP's image<->text loss); then ``queries_all`` (N, D) must be given for the reverse direction.
    """

    def __init__(self, init_logit_scale: float = math.log(1 / 0.07), learnable: bool = True, max_logit_scale: float = math.log(100)) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)), requires_grad=learnable)
        self.max_logit_scale = max_logit_scale

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=self.max_logit_scale).exp()

    def _one_direction(self, q: torch.Tensor, k: torch.Tensor, pos_ids: torch.Tensor, key_ids: torch.Tensor, offset: int) -> torch.Tensor:
        logits = self.scale() * q.float() @ k.float().T
        labels = torch.arange(q.shape[0], device=q.device) + offset
        same = pos_ids[:, None] == key_ids[None, :]
        same[torch.arange(q.shape[0], device=q.device), labels] = False
        logits = logits.masked_fill(same, float("-inf"))
        return F.cross_entropy(logits, labels)

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        key_ids: torch.Tensor | None = None,
        offset: int = 0,
        symmetric: bool = False,
        queries_all: torch.Tensor | None = None,
        query_ids_all: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if queries.ndim != 2 or keys.ndim != 2 or queries.shape[1] != keys.shape[1]:
            raise ValueError(f"queries {tuple(queries.shape)} and keys {tuple(keys.shape)} must be (B, D) and (N, D)")
        if offset < 0 or offset + queries.shape[0] > keys.shape[0]:
            raise ValueError(f"offset {offset} + {queries.shape[0]} local queries exceeds {keys.shape[0]} keys")
        if key_ids is None:
            key_ids = torch.arange(keys.shape[0], device=keys.device)
        local = slice(offset, offset + queries.shape[0])
        loss = self._one_direction(queries, keys, key_ids[local], key_ids, offset)
        if not symmetric:
            return loss
        if queries_all is None:
            raise ValueError("symmetric=True needs queries_all (the global batch of queries)")
        if query_ids_all is None:
            query_ids_all = torch.arange(queries_all.shape[0], device=queries_all.device)
        reverse = self._one_direction(keys[local], queries_all, query_ids_all[local], query_ids_all, offset)
        return (loss + reverse) / 2
