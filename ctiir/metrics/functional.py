"""Exact Recall@K for ranked retrieval with one target per query, in bounded memory.

Why not ``torchmetrics.retrieval``: it stores all Q x G scores, sorts every row, and (since v1.8) ignores
targets whose score is at most 0, while cosine scores can be negative. Here a query's rank is computed
without sorting: it is the number of gallery items scoring at least as high as the target (the target
itself aside), evaluated chunk by chunk so memory stays at ``chunk_size x G`` whatever the gallery size.

Semantics (see PAPER.md, "Evaluation protocols"):

- Scores are dot products of L2-normalised embeddings (cosine), computed in float32 whatever the input
  dtype, so bf16/fp16 embeddings rank the same way on every device.
- Ties count against the target: every other item with the target's score ranks above it. This is the
  pessimistic, order-independent choice; a full sort would break ties arbitrarily.
- ``exclude_index`` removes one gallery item from a query's ranking (CIRR removes the reference): items
  ranked below it move up one place. It is not "pushed to the end".
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F

__all__ = ["recall_at_k", "retrieval_ranks", "subset_ranks"]


# ---------------------------------------------------------------------------------------------- checks
def _check_embeddings(queries: torch.Tensor, gallery: torch.Tensor) -> None:
    if queries.ndim != 2:
        raise ValueError(f"queries must be (Q, D); got shape {tuple(queries.shape)}")
    if gallery.ndim != 2:
        raise ValueError(f"gallery must be (G, D); got shape {tuple(gallery.shape)}")
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"queries and gallery differ in embedding size: queries {tuple(queries.shape)}, gallery {tuple(gallery.shape)}"
        )
    if gallery.shape[0] == 0:
        raise ValueError("the gallery is empty: nothing to rank")
    if queries.device != gallery.device:
        raise ValueError(f"queries are on {queries.device} but the gallery is on {gallery.device}; move them together")
    if not queries.is_floating_point() or not gallery.is_floating_point():
        raise TypeError(f"embeddings must be floating point; got queries {queries.dtype}, gallery {gallery.dtype}")


def _check_index(name: str, index: torch.Tensor, num_queries: int, size: int, allow_none: bool) -> torch.Tensor:
    """Validate a per-query gallery index; ``-1`` means "none" where ``allow_none``."""
    index = torch.as_tensor(index).cpu()
    if index.dtype == torch.bool or index.is_floating_point() or index.is_complex():
        raise TypeError(f"{name} must hold integer gallery indices; got dtype {index.dtype}")
    if index.ndim != 1 or index.shape[0] != num_queries:
        raise ValueError(f"{name} must have shape ({num_queries},), one entry per query; got {tuple(index.shape)}")
    low = -1 if allow_none else 0
    bad = ((index < low) | (index >= size)).nonzero().flatten()
    if bad.numel():
        q = int(bad[0])
        allowed = f"-1 (none) or 0..{size - 1}" if allow_none else f"0..{size - 1}"
        raise IndexError(f"{name}[{q}] = {int(index[q])} is out of range for a gallery of {size} items (allowed: {allowed})")
    return index.long()


def _check_exclude(exclude_index: torch.Tensor | None, target_index: torch.Tensor, size: int) -> torch.Tensor | None:
    if exclude_index is None:
        return None
    exclude_index = _check_index("exclude_index", exclude_index, target_index.shape[0], size, allow_none=True)
    clash = (exclude_index == target_index).nonzero().flatten()
    if clash.numel():
        q = int(clash[0])
        raise ValueError(
            f"query {q}: exclude_index equals its target_index ({int(target_index[q])}); a query's target cannot be "
            "excluded from its own ranking (is the reference the same image as the target?)"
        )
    return exclude_index


def _check_chunk_size(chunk_size: int) -> None:
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int; got {chunk_size!r}")


@contextlib.contextmanager
def _exact_float32(device: torch.device) -> Iterator[None]:
    """Score in true float32: no autocast (bf16 products) and no TF32/bf16 matmul shortcuts, which a
    training setup may have switched on globally (``torch.set_float32_matmul_precision("high")``)."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _normalised(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)


class _ScoredGallery:
    """The normalised gallery, with every copy of a vector read from one representative column.

    Why: a matrix product may round the same dot product differently in different columns (GEMV and GEMM
    tiles accumulate in different orders), so two copies of one gallery vector could score a hair apart
    and a tie with the target would be counted or not depending on where the copy sits. Scoring each
    distinct vector once gives identical items identical scores by construction, so ranks do not depend
    on gallery order or chunking. (Copies keep their columns, unread, to spare a G x D copy.)
    """

    def __init__(self, gallery: torch.Tensor) -> None:
        normalised = _normalised(gallery).add_(0.0)  # adding 0.0 turns -0.0 into 0.0: equal values, equal bits
        self.columns_t = normalised.t()  # (D, G); a copy's own column is scored but counts for nothing
        self.inverse, self.counts = _distinct_rows(normalised)  # position -> representative; items per column

    def column(self, index: torch.Tensor) -> torch.Tensor:
        return index if self.inverse is None else self.inverse[index]

    def scores(self, queries: torch.Tensor) -> torch.Tensor:
        """(c, G) float32 cosine scores of a chunk of queries against every gallery column."""
        return _normalised(queries) @ self.columns_t

    def count_at_least(self, scores: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        """Per row, how many gallery items score at least ``threshold``, each copy judged by its representative."""
        mask = scores >= threshold
        if self.counts is None:
            return mask.sum(dim=1)
        return torch.where(mask, self.counts, 0).sum(dim=1)


def _distinct_rows(x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(inverse, counts)``: each row's representative (the first row equal to it) and, per row, how many
    rows it represents (0 for a non-first copy); ``(None, None)`` when no row repeats.

    ``torch.unique(dim=0)`` sorts whole rows (over a second for 50k x 512 on one CPU core), so only rows
    that share their first two values (compared bit for bit: copies share every value) go through it;
    for real embeddings that is none or a handful.
    """
    bits = x[:, :2].contiguous().view(torch.int32).long() & 0xFFFFFFFF
    key = bits[:, 0] << 32 | bits[:, 1] if x.shape[1] > 1 else bits[:, 0]
    _, key_inverse, key_counts = torch.unique(key, return_inverse=True, return_counts=True)
    rows = (key_counts[key_inverse] > 1).nonzero().flatten()
    if rows.numel() == 0:
        return None, None
    distinct, sub_inverse = torch.unique(x[rows], dim=0, return_inverse=True)
    if distinct.shape[0] == rows.shape[0]:
        return None, None
    first = torch.full((distinct.shape[0],), x.shape[0], dtype=torch.long, device=x.device)
    first.scatter_reduce_(0, sub_inverse, rows, reduce="amin")
    inverse = torch.arange(x.shape[0], device=x.device)
    inverse[rows] = first[sub_inverse]
    counts = torch.zeros(x.shape[0], dtype=torch.int32, device=x.device)
    counts.index_add_(0, inverse, torch.ones_like(inverse, dtype=torch.int32))
    return inverse, counts


def _check_finite(name: str, x: torch.Tensor) -> None:
    finite = torch.isfinite(x).all(dim=1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0])
        raise ValueError(f"{name} row {row} holds NaN or infinite values")


# ---------------------------------------------------------------------------------------------- ranks
@torch.no_grad()
def retrieval_ranks(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    target_index: torch.Tensor,
    exclude_index: torch.Tensor | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """The 0-based rank of each query's target among the gallery.

    Args:
        queries: (Q, D) query embeddings (normalised here; any float dtype).
        gallery: (G, D) gallery embeddings, on the same device as ``queries``.
        target_index: (Q,) the gallery position of each query's target.
        exclude_index: (Q,) a gallery position to remove from each query's ranking, ``-1`` for none.
        chunk_size: queries scored at once; peak extra memory is about ``chunk_size x G`` floats.

    Returns:
        (Q,) LongTensor on the queries' device: how many (non-excluded) gallery items score at least as
        high as the target, the target itself not counted. Rank 0 is a hit at R@1.
    """
    _check_embeddings(queries, gallery)
    _check_chunk_size(chunk_size)
    num_queries, size = queries.shape[0], gallery.shape[0]
    device = queries.device
    target_index = _check_index("target_index", target_index, num_queries, size, allow_none=False)
    exclude_index = _check_exclude(exclude_index, target_index, size)
    _check_finite("queries", queries)
    _check_finite("gallery", gallery)

    with _exact_float32(device):
        return _ranks(queries, gallery, target_index.to(device), exclude_index, chunk_size)


def _ranks(
    queries: torch.Tensor, gallery: torch.Tensor, target_index: torch.Tensor, exclude_index: torch.Tensor | None, chunk_size: int
) -> torch.Tensor:
    num_queries, device = queries.shape[0], queries.device
    scored = _ScoredGallery(gallery)
    target_col = scored.column(target_index)
    exclude_col = None
    if exclude_index is not None:
        exclude_index = exclude_index.to(device)
        exclude_col = torch.where(exclude_index >= 0, scored.column(exclude_index.clamp(min=0)), -1)
    ranks = torch.empty(num_queries, dtype=torch.long, device=device)
    for start in range(0, num_queries, chunk_size):
        stop = min(start + chunk_size, num_queries)
        scores = scored.scores(queries[start:stop])  # (c, G) float32
        target_score = scores.gather(1, target_col[start:stop, None])  # from the same matrix as the rest
        # ">=" counts the target itself (subtracted) and every tie (which ranks above the target).
        rank = scored.count_at_least(scores, target_score) - 1
        if exclude_col is not None:
            excluded = exclude_col[start:stop, None]
            above = (excluded >= 0) & (scores.gather(1, excluded.clamp(min=0)) >= target_score)
            rank -= above.squeeze(1).long()
        ranks[start:stop] = rank
    return ranks


@torch.no_grad()
def subset_ranks(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    target_index: torch.Tensor,
    member_index: torch.Tensor,
    exclude_index: torch.Tensor | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """The 0-based rank of each query's target within its own group of gallery items (CIRR's Rsubset).

    Scores come from the same per-chunk product as :func:`retrieval_ranks` (so a member scores exactly as
    it does in the full ranking); CIRR galleries are small, so the extra work is negligible.

    Args:
        queries, gallery, target_index: as in :func:`retrieval_ranks`.
        member_index: (Q, M) gallery positions of each query's group, padded with ``-1``. The target must
            be a member; a member may appear only once.
        exclude_index: (Q,) an item to remove from the group (CIRR: the reference), ``-1`` for none. An
            excluded item that is not a member changes nothing.
        chunk_size: queries scored at once.

    Returns:
        (Q,) LongTensor: how many other (non-excluded) members score at least as high as the target.
    """
    _check_embeddings(queries, gallery)
    _check_chunk_size(chunk_size)
    num_queries, size = queries.shape[0], gallery.shape[0]
    device = queries.device
    target_index = _check_index("target_index", target_index, num_queries, size, allow_none=False)
    exclude_index = _check_exclude(exclude_index, target_index, size)
    members = _check_members(torch.as_tensor(member_index), target_index, num_queries, size)
    _check_finite("queries", queries)
    _check_finite("gallery", gallery)

    if exclude_index is not None:
        exclude_index = exclude_index.to(device)
    with _exact_float32(device):
        return _subset_ranks(queries, gallery, target_index.to(device), members.to(device), exclude_index, chunk_size)


def _subset_ranks(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    target_index: torch.Tensor,
    members: torch.Tensor,
    exclude_index: torch.Tensor | None,
    chunk_size: int,
) -> torch.Tensor:
    num_queries, device = queries.shape[0], queries.device
    scored = _ScoredGallery(gallery)
    valid = members >= 0
    if exclude_index is not None:
        valid &= members != exclude_index[:, None]
    others = valid & (members != target_index[:, None])
    member_col = scored.column(members.clamp(min=0))
    target_col = scored.column(target_index)
    ranks = torch.empty(num_queries, dtype=torch.long, device=device)
    for start in range(0, num_queries, chunk_size):
        stop = min(start + chunk_size, num_queries)
        scores = scored.scores(queries[start:stop])
        target_score = scores.gather(1, target_col[start:stop, None])
        member_score = scores.gather(1, member_col[start:stop])
        ranks[start:stop] = ((member_score >= target_score) & others[start:stop]).sum(dim=1)
    return ranks


def _check_members(members: torch.Tensor, target_index: torch.Tensor, num_queries: int, size: int) -> torch.Tensor:
    if members.is_floating_point() or members.dtype == torch.bool:
        raise TypeError(f"member_index must hold integer gallery indices; got dtype {members.dtype}")
    if members.ndim != 2 or members.shape[0] != num_queries:
        raise ValueError(f"member_index must have shape ({num_queries}, M); got {tuple(members.shape)}")
    members = members.long().cpu()
    bad = ((members < -1) | (members >= size)).nonzero()
    if bad.numel():
        q, m = (int(v) for v in bad[0])
        raise IndexError(
            f"member_index[{q}, {m}] = {int(members[q, m])} is out of range for a gallery of {size} items "
            f"(allowed: -1 (padding) or 0..{size - 1})"
        )
    missing = ~(members == target_index[:, None]).any(dim=1)
    if missing.any():
        q = int(missing.nonzero()[0])
        raise ValueError(f"query {q}: its target (gallery index {int(target_index[q])}) is not among its members")
    ordered = members.sort(dim=1).values
    repeated = ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any(dim=1)
    if repeated.any():
        q = int(repeated.nonzero()[0])
        raise ValueError(f"query {q}: member_index lists a gallery item twice: {members[q].tolist()}")
    return members


# ---------------------------------------------------------------------------------------------- recall
def recall_at_k(ranks: torch.Tensor, ks: Iterable[int]) -> dict[int, float]:
    """Recall@K in percent: 100 x the fraction of queries whose 0-based rank is below K."""
    ranks = torch.as_tensor(ranks)
    if ranks.ndim != 1 or ranks.numel() == 0:
        raise ValueError(f"ranks must be a non-empty 1-D tensor; got shape {tuple(ranks.shape)}")
    if ranks.is_floating_point() or ranks.dtype == torch.bool:
        raise TypeError(f"ranks must be integers; got dtype {ranks.dtype}")
    out: dict[int, float] = {}
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"every k must be a positive int; got {k!r}")
        out[int(k)] = 100.0 * (ranks < k).double().mean().item()
    if not out:
        raise ValueError("ks is empty: name at least one K")
    return out
