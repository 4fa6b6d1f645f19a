"""``RecallAtK``: the torchmetrics face of the functional core, exact under DDP.

Every state is a list concatenated across processes (``dist_reduce_fx="cat"``), so each rank can encode
one shard of the queries and of the gallery. ``DistributedSampler`` pads the last batch with repeats of
early samples; ``compute`` therefore de-duplicates queries by query id and the gallery by gallery id
before ranking, so nothing counts twice and the result equals a single-process run. A repeat is dropped
only if it is the same item: the same embedding up to rounding (``REPEAT_TOLERANCE``) and, for a query,
the same target, reference and members. Anything else is an error naming the id, never a silent choice.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from ctiir.metrics.functional import recall_at_k, retrieval_ranks, subset_ranks

__all__ = ["RecallAtK"]


def _check_ks(name: str, ks: Sequence[int], allow_empty: bool) -> tuple[int, ...]:
    ks = tuple(ks)
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"{name} must hold positive ints; got {k!r} in {ks!r}")
    if not ks and not allow_empty:
        raise ValueError(f"{name} is empty: name at least one K")
    return tuple(int(k) for k in ks)


def _ids(name: str, ids: Any, length: int, device: torch.device) -> torch.Tensor:
    ids = torch.as_tensor(ids)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"{name} must be integer ids; got dtype {ids.dtype}")
    if ids.ndim != 1 or ids.shape[0] != length:
        raise ValueError(f"{name} must have shape ({length},), one id per row; got {tuple(ids.shape)}")
    return ids.to(device=device, dtype=torch.long)


class RecallAtK(Metric):
    """Recall@K (and CIRR's Rsubset@K) of composed or single-modality queries against a gallery.

    Feed it with ``update`` (queries) and ``update_gallery`` (gallery items) in any order and any batch
    split; ``compute`` returns ``{"R@1": tensor, ..., "Rsubset@1": tensor, ...}`` in percent.

    Ids are ints. Gallery ids are the gallery positions the datamodule gives; a query's target, reference
    and members are gallery ids. Query ids identify queries, so padding repeats can be recognised. An id
    added twice must come with the same embedding (up to rounding) and, for a query, the same target,
    reference and members; ``compute`` raises ``ValueError`` naming the id otherwise.

    Args:
        ks: the K of R@K.
        subset_ks: the K of Rsubset@K (needs ``member_ids`` in every ``update``); empty: none.
        exclude_reference: remove each query's reference from its ranking (CIRR, Shoes; a switch for
            FashionIQ). Items below it move up one place.
        chunk_size: queries scored at once in ``compute`` (memory ~ ``chunk_size x G`` floats).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    query_emb: list[torch.Tensor]
    query_ids: list[torch.Tensor]
    target_ids: list[torch.Tensor]
    reference_ids: list[torch.Tensor]
    member_ids: list[torch.Tensor]
    gallery_emb: list[torch.Tensor]
    gallery_ids: list[torch.Tensor]

    def __init__(
        self,
        ks: Sequence[int] = (1, 5, 10, 50),
        subset_ks: Sequence[int] = (),
        exclude_reference: bool = False,
        chunk_size: int = 1024,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.ks = _check_ks("ks", ks, allow_empty=False)
        self.subset_ks = _check_ks("subset_ks", subset_ks, allow_empty=True)
        self.exclude_reference = bool(exclude_reference)
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int; got {chunk_size!r}")
        self.chunk_size = chunk_size
        for name in ("query_emb", "query_ids", "target_ids", "reference_ids", "member_ids", "gallery_emb", "gallery_ids"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self._has_members: bool | None = None
        self._num_members: int | None = None

    # ------------------------------------------------------------------------------------------ update
    def update(
        self,
        query_emb: torch.Tensor | None = None,
        query_ids: Any = None,
        target_ids: Any = None,
        reference_ids: Any | None = None,
        member_ids: Any | None = None,
        *,
        gallery_emb: torch.Tensor | None = None,
        gallery_ids: Any = None,
    ) -> None:
        """Add a batch of queries: (B, D) embeddings, their ids, their targets' gallery ids, optionally
        their references' gallery ids (``-1`` = none) and (B, M) member gallery ids (``-1``-padded).

        ``gallery_emb``/``gallery_ids`` add gallery items in the same call (``update_gallery`` is the
        usual way). Both routes go through ``update`` so torchmetrics' bookkeeping (cache invalidation,
        update count) sees every addition.
        """
        if query_emb is None and gallery_emb is None:
            raise ValueError("RecallAtK.update: give query_emb (with query_ids, target_ids) and/or gallery_emb")
        # check everything first, then change state: a rejected call leaves the metric as it was
        gallery = None
        if gallery_emb is not None or gallery_ids is not None:
            gallery = self._checked_gallery(gallery_emb, gallery_ids)
        queries = None
        if query_emb is not None or query_ids is not None or target_ids is not None:
            queries = self._checked_queries(query_emb, query_ids, target_ids, reference_ids, member_ids)
        elif reference_ids is not None or member_ids is not None:
            raise ValueError("RecallAtK.update: reference_ids/member_ids given without query_emb")
        if gallery is not None:
            self.gallery_emb.append(gallery[0])
            self.gallery_ids.append(gallery[1])
        if queries is not None:
            emb, qid, tid, rid, mid = queries
            self._has_members = mid is not None
            if mid is not None:
                self._num_members = mid.shape[1]
                self.member_ids.append(mid)
            self.query_emb.append(emb)
            self.query_ids.append(qid)
            self.target_ids.append(tid)
            self.reference_ids.append(rid)

    def update_gallery(self, gallery_emb: torch.Tensor, gallery_ids: Any) -> None:
        """Add a batch of gallery items: (B, D) embeddings and their gallery ids."""
        self.update(gallery_emb=gallery_emb, gallery_ids=gallery_ids)

    def _checked_gallery(self, gallery_emb: torch.Tensor | None, gallery_ids: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if gallery_emb is None or gallery_ids is None:
            raise ValueError("RecallAtK: gallery_emb and gallery_ids go together")
        if gallery_emb.ndim != 2 or not gallery_emb.is_floating_point():
            raise ValueError(f"gallery_emb must be a float (B, D) tensor; got {gallery_emb.dtype} {tuple(gallery_emb.shape)}")
        gid = _ids("gallery_ids", gallery_ids, gallery_emb.shape[0], self.device)
        return gallery_emb.detach().to(self.device), gid

    def _checked_queries(
        self, query_emb: torch.Tensor | None, query_ids: Any, target_ids: Any, reference_ids: Any, member_ids: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if query_emb is None or query_ids is None or target_ids is None:
            raise ValueError("RecallAtK.update: query_emb, query_ids and target_ids go together")
        if query_emb.ndim != 2 or not query_emb.is_floating_point():
            raise ValueError(f"query_emb must be a float (B, D) tensor; got {query_emb.dtype} {tuple(query_emb.shape)}")
        n, device = query_emb.shape[0], self.device
        qid = _ids("query_ids", query_ids, n, device)
        tid = _ids("target_ids", target_ids, n, device)
        if reference_ids is None:
            rid = torch.full((n,), -1, dtype=torch.long, device=device)
        else:
            rid = _ids("reference_ids", reference_ids, n, device)
        has_members = member_ids is not None
        if self._has_members is not None and has_members != self._has_members:
            raise ValueError(
                "member_ids must be given in every update or in none; "
                f"this batch (query ids {qid[:5].tolist()}...) {'has' if has_members else 'lacks'} them"
            )
        mid = None
        if has_members:
            mid = torch.as_tensor(member_ids)
            if mid.ndim != 2 or mid.shape[0] != n:
                raise ValueError(f"member_ids must be (B, M) with B = {n}; got {tuple(mid.shape)}")
            if self._num_members is not None and mid.shape[1] != self._num_members:
                raise ValueError(
                    f"member_ids width changed from {self._num_members} to {mid.shape[1]}; pad every group to one "
                    "width with -1"
                )
            mid = _ids("member_ids", mid.flatten(), mid.numel(), device).view(mid.shape)
        return query_emb.detach().to(device), qid, tid, rid, mid

    def reset(self) -> None:
        super().reset()
        self._has_members = None
        self._num_members = None

    # ------------------------------------------------------------------------------------------ compute
    def compute(self) -> dict[str, torch.Tensor]:
        ranks = self._query_ranks()
        return {name: torch.tensor(value, dtype=torch.float32, device=self.device) for name, value in ranks.recall(self.ks, self.subset_ks).items()}

    def query_ranks(self) -> QueryRanks:
        """Every query's rank, gathered from all processes and de-duplicated like ``compute``.

        For breakdowns: ``ranks.recall(ks, subset_ks, mask)`` scores any subset of the queries (by their
        ids, ``ranks.query_ids``) exactly as ``compute`` scores them all.
        """
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=True, should_unsync=True):
            return self._query_ranks()

    def _query_ranks(self) -> QueryRanks:
        queries, qid, tid, rid = (_cat(getattr(self, n)) for n in ("query_emb", "query_ids", "target_ids", "reference_ids"))
        gallery, gid = _cat(self.gallery_emb), _cat(self.gallery_ids)
        if queries.numel() == 0 or qid.numel() == 0:
            raise ValueError("RecallAtK.compute: no queries were added (call update first)")
        if gid.numel() == 0:
            raise ValueError("RecallAtK.compute: no gallery items were added (call update_gallery first)")
        members = _cat(self.member_ids) if len(self.member_ids) else None
        if members is not None and members.numel() == 0:
            members = None  # a rank that saw no members contributes an empty placeholder
        if self.subset_ks and members is None:
            raise ValueError(f"subset_ks={self.subset_ks} needs member_ids in update(); none were given")

        keep_q = _first_occurrence(qid)
        _check_consistent(qid, keep_q, {"target id": tid, "reference id": rid, "member ids": members})
        _check_same_embedding("query", qid, keep_q, queries)
        queries, qid, tid, rid = queries[keep_q], qid[keep_q], tid[keep_q], rid[keep_q]
        if members is not None:
            members = members[keep_q]
        keep_g = _first_occurrence(gid)
        _check_same_embedding("gallery", gid, keep_g, gallery)
        gallery, gid = gallery[keep_g], gid[keep_g]
        if queries.shape[1] != gallery.shape[1]:
            raise ValueError(f"query embeddings are {queries.shape[1]}-d but gallery embeddings are {gallery.shape[1]}-d")

        _check_against_target(qid, tid, rid if self.exclude_reference else None, members if self.subset_ks else None)

        order = torch.argsort(gid)
        gallery, gid = gallery[order], gid[order]
        target = _positions(gid, tid, qid, "target id", allow_none=False)
        exclude = _positions(gid, rid, qid, "reference id", allow_none=True) if self.exclude_reference else None

        ranks = retrieval_ranks(queries, gallery, target, exclude, chunk_size=self.chunk_size)
        sranks = None
        if self.subset_ks:
            assert members is not None
            flat = _positions(gid, members.flatten(), qid.repeat_interleave(members.shape[1]), "member id", allow_none=True)
            sranks = subset_ranks(queries, gallery, target, flat.view_as(members), exclude, chunk_size=self.chunk_size)
        return QueryRanks(qid, ranks, sranks, queries, gallery, gid, exclude)


@dataclass(frozen=True)
class QueryRanks:
    """Per-query ranks of the target (0 = first): in the gallery, and within the query's image set.

    It also keeps what was ranked (the de-duplicated query embeddings, the gallery sorted by id, the excluded
    positions), so that a few queries' ranked lists can be shown (:meth:`top`) without encoding again.
    """

    query_ids: torch.Tensor
    ranks: torch.Tensor
    subset_ranks: torch.Tensor | None = None
    queries: torch.Tensor | None = None
    gallery: torch.Tensor | None = None
    gallery_ids: torch.Tensor | None = None
    excluded: torch.Tensor | None = None

    def top(self, rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(gallery ids, scores)`` of the ``k`` best items for the queries at ``rows``, as ranked: the
        excluded reference removed. Ties keep gallery-id order."""
        if self.queries is None or self.gallery is None or self.gallery_ids is None:
            raise ValueError("these ranks keep no embeddings to rank with")
        scores = F.normalize(self.queries[rows].float(), dim=-1) @ F.normalize(self.gallery.float(), dim=-1).T
        if self.excluded is not None:
            excluded = self.excluded[rows]
            has = excluded >= 0
            scores[has.nonzero().flatten(), excluded[has]] = float("-inf")
        k = min(k, scores.shape[1])
        order = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :k]
        return self.gallery_ids[order], scores.gather(1, order)

    def recall(self, ks: Sequence[int], subset_ks: Sequence[int] = (), mask: torch.Tensor | None = None) -> dict[str, float]:
        """``{"R@k": ..., "Rsubset@k": ...}`` in percent, over all queries or those where ``mask`` is true."""
        ranks = self.ranks if mask is None else self.ranks[mask]
        out = {f"R@{k}": value for k, value in recall_at_k(ranks, tuple(ks)).items()}
        if subset_ks and self.subset_ranks is not None:
            sranks = self.subset_ranks if mask is None else self.subset_ranks[mask]
            out.update({f"Rsubset@{k}": value for k, value in recall_at_k(sranks, tuple(subset_ks)).items()})
        return out


# ---------------------------------------------------------------------------------------------- helpers
def _cat(state: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """States are lists before a sync and one tensor after it."""
    if isinstance(state, torch.Tensor):
        return state
    if not state:
        return torch.empty(0)
    return torch.cat(state, dim=0)


def _first_occurrence(ids: torch.Tensor) -> torch.Tensor:
    """Positions of the first occurrence of each distinct id, in order of first occurrence."""
    unique, inverse = torch.unique(ids, return_inverse=True)
    positions = torch.arange(ids.shape[0], device=ids.device)
    first = torch.full((unique.shape[0],), ids.shape[0], dtype=torch.long, device=ids.device)
    first.scatter_reduce_(0, inverse, positions, reduce="amin")
    return first.sort().values


def _first_rows(ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """For every row, the row of its id's first occurrence (``keep`` from :func:`_first_occurrence`)."""
    _, inverse = torch.unique(ids, return_inverse=True)
    first_row = torch.empty_like(inverse)
    first_row[inverse[keep]] = keep
    return first_row[inverse]


def _check_consistent(qid: torch.Tensor, keep: torch.Tensor, fields: dict[str, torch.Tensor | None]) -> None:
    """A repeated query id must carry the same target, reference and members (a padding repeat does)."""
    if keep.shape[0] == qid.shape[0]:
        return
    reference_row = _first_rows(qid, keep)
    for name, values in fields.items():
        if values is None:
            continue
        differs = values != values[reference_row]
        if differs.ndim > 1:
            differs = differs.any(dim=1)
        if differs.any():
            row = int(differs.nonzero()[0])
            raise ValueError(
                f"query id {int(qid[row])} was added twice with different {name}s: "
                f"{values[reference_row[row]].tolist()} and {values[row].tolist()}"
            )


# A repeat is the same item when its normalised embedding lies within this distance of the first one's.
# Why not bit-identical: DistributedSampler's padding repeats are encoded on another rank, in a batch of
# another size, and a batch's size changes the rounding of its matrix products (a Linear layer gives a
# row 4e-7 apart in a batch of 1 and a batch of 8). Different items are far further apart than 0.01.
REPEAT_TOLERANCE = 1e-2


def _check_same_embedding(kind: str, ids: torch.Tensor, keep: torch.Tensor, emb: torch.Tensor) -> None:
    """A repeated id must carry the same embedding (up to rounding): a different one is an error, never
    silently dropped, since only the first would be ranked."""
    if keep.shape[0] == ids.shape[0]:
        return
    reference_row = _first_rows(ids, keep)
    rows = (reference_row != torch.arange(ids.shape[0], device=ids.device)).nonzero().flatten()
    first, repeat = (F.normalize(emb[r].float(), dim=-1) for r in (reference_row[rows], rows))
    distance = (first - repeat).norm(dim=-1)
    bad = (~(distance <= REPEAT_TOLERANCE)).nonzero().flatten()  # "not <=" also catches NaN
    if bad.numel():
        i = int(bad[0])
        raise ValueError(
            f"{kind} id {int(ids[rows[i]])} was added twice with different embeddings (normalised, they are "
            f"{float(distance[i]):.4g} apart; a repeat of the same item, such as DistributedSampler's padding, "
            f"must lie within {REPEAT_TOLERANCE}): give each {kind} item its own id"
        )


def _check_against_target(
    qid: torch.Tensor, tid: torch.Tensor, rid: torch.Tensor | None, members: torch.Tensor | None
) -> None:
    """Errors the functional core would raise by row number, raised here by query id."""
    if rid is not None:
        same = (rid == tid).nonzero().flatten()
        if same.numel():
            row = int(same[0])
            raise ValueError(
                f"query id {int(qid[row])}: its reference id equals its target id ({int(tid[row])}); with "
                "exclude_reference=True the target would be removed from its own ranking"
            )
    if members is not None:
        missing = (~(members == tid[:, None]).any(dim=1)).nonzero().flatten()
        if missing.numel():
            row = int(missing[0])
            raise ValueError(
                f"query id {int(qid[row])}: its target id {int(tid[row])} is not among its member ids {members[row].tolist()}"
            )


def _positions(sorted_ids: torch.Tensor, ids: torch.Tensor, qid: torch.Tensor, what: str, allow_none: bool) -> torch.Tensor:
    """Map gallery ids to positions in the (sorted, de-duplicated) gallery; ``-1`` stays ``-1`` if allowed."""
    none = ids == -1 if allow_none else torch.zeros_like(ids, dtype=torch.bool)
    pos = torch.searchsorted(sorted_ids, ids).clamp(max=sorted_ids.shape[0] - 1)
    found = sorted_ids[pos] == ids
    bad = ~found & ~none
    if bad.any():
        row = int(bad.nonzero()[0])
        raise ValueError(
            f"query id {int(qid[row])}: its {what} {int(ids[row])} is not in the gallery "
            f"({sorted_ids.shape[0]} items, ids {int(sorted_ids[0])}..{int(sorted_ids[-1])})"
        )
    return torch.where(none, torch.full_like(pos, -1), pos)
