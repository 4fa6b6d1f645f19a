"""Exact Recall@K for ranked retrieval with one target per query, in bounded memory.

Why not ``torchmetrics.retrieval``: it stores all Q x G scores, sorts every row, and (since v1.8) ignores
targets whose score is at most 0, while cosine scores can be negative. Here a query's rank is computed
without sorting: it is the number of gallery items scoring at least as high as the target (the target
itself aside), counted block by block (``chunk_size`` queries x at most 16384 gallery items), so memory
stays flat whatever the gallery size, and the time stays close to the matrix product's alone.

Semantics (see PAPER.md, "Evaluation protocols"):

- Scores are dot products of L2-normalised embeddings (cosine), computed in float32 whatever the input
  dtype, so bf16/fp16 embeddings rank the same way on every device.
- Ties count against the target: every other item with the target's score ranks above it. This is the
  pessimistic, order-independent choice; a full sort would break ties arbitrarily.
- Identical gallery vectors count as one item scored once (times the number of copies), and the target's
  score stands in its own column: a tie between copies never depends on where they sit in the gallery or
  on how the work is split into blocks.
- ``exclude_index`` removes one gallery item from a query's ranking (CIRR removes the reference): items
  ranked below it move up one place. It is not "pushed to the end".
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Callable, Iterable, Iterator

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


def _pair_scores(queries: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Score normalised queries (c, D) against their own normalised rows (c, D) or (c, M, D), pair by pair.

    Why not a matrix product: a product's rounding can depend on where a column sits in the kernel's
    blocks; an elementwise product reduced over D treats every pair alike, so one vector scores the same
    wherever it comes from (the target in :func:`retrieval_ranks`, a member in :func:`subset_ranks`).
    """
    if rows.ndim == 3:
        queries = queries[:, None, :]
    return (queries * rows).sum(dim=-1)


# Gallery items scored at once: 64 MiB of scores with 1024 queries. Narrower blocks slow the product
# down (MKL on this project's CPU: 2048 columns ran 1.4x slower than whole rows, 16384 within 5%).
_GALLERY_TILE = 16384


class _TiledGallery:
    """The gallery, normalised one tile at a time, with every copy of a vector folded into one column.

    Why tiles: a score block is ``chunk_size x tile`` whatever the gallery size, so memory stays flat as
    the gallery grows (no normalised G x D copy, no chunk x G score rows).

    Why folding: a matrix product may round the same dot product differently in different columns (GEMV
    and GEMM tiles accumulate in different orders), so two copies of one vector could score a hair apart
    and a tie would be counted or not depending on where the copy sits. Each distinct vector is therefore
    counted once, from its first column, with the number of items it stands for; its other columns count
    for nothing (they are scored, but that is cheaper than gathering the distinct columns).
    """

    def __init__(self, gallery: torch.Tensor) -> None:
        self.raw, self.tile, self.size = gallery, _GALLERY_TILE, gallery.shape[0]
        self._cached: torch.Tensor | None = None
        # a random projection of each normalised row: an elementwise product summed per row treats every
        # row alike, so copies get equal keys wherever they sit; distinct rows share one by chance only
        weights = torch.randn(gallery.shape[1], generator=torch.Generator().manual_seed(0)).to(gallery.device)
        keys = torch.empty(self.size, device=gallery.device)
        for start, rows in self.tiles(check=True):
            keys[start : start + rows.shape[0]] = (rows * weights).sum(dim=1)
        self.inverse, counts = _distinct_rows(keys, lambda index: _normalised(self.raw[index]))
        if counts is None:
            self.special = self.extra = None
        else:  # columns that count other than once: first copies (count - 1 more), later copies (count 0)
            self.special = (counts != 1).nonzero().flatten()
            self.extra = counts[self.special] - 1

    def column(self, index: torch.Tensor) -> torch.Tensor:
        """The column that stands for each gallery position (its first copy)."""
        return index if self.inverse is None else self.inverse[index]

    def tiles(self, check: bool = False) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, normalised rows)`` tile by tile (``check``: refuse NaN or infinite values); a gallery
        of one tile is normalised once."""
        if self._cached is not None:
            yield 0, self._cached
            return
        for start in range(0, self.size, self.tile):
            rows = self.raw[start : start + self.tile]
            if check:
                _check_finite("gallery", rows, offset=start)
            rows = _normalised(rows)
            if self.size <= self.tile:
                self._cached = rows
            yield start, rows

    def count(self, at_least: torch.Tensor, start: int) -> torch.Tensor:
        """Per row of a 0/1 block (columns ``start..``), how many gallery items it stands for."""
        total = at_least.sum(dim=1).long()  # float32 sums of at most 16384 ones are exact
        if self.special is not None:
            bounds = torch.tensor([start, start + at_least.shape[1]], device=self.special.device)
            lo, hi = torch.searchsorted(self.special, bounds).tolist()
            if hi > lo:
                columns = self.special[lo:hi] - start
                total += (at_least[:, columns].long() * self.extra[lo:hi]).sum(dim=1)
        return total


def _distinct_rows(
    keys: torch.Tensor, rows_of: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(inverse, counts)``: each row's representative (the first row equal to it) and, per row, how many
    rows it represents (0 for a non-first copy); ``(None, None)`` when no row repeats.

    ``torch.unique(dim=0)`` sorts whole rows (over a second for 50k x 512 on one CPU core), so only rows
    whose key (a random projection of the whole row) repeats go through it; for real embeddings that is
    none or a handful. ``rows_of(index)`` gives those rows, normalised.
    """
    size = keys.shape[0]
    _, key_inverse, key_counts = torch.unique(keys, return_inverse=True, return_counts=True)
    rows = (key_counts[key_inverse] > 1).nonzero().flatten()
    if rows.numel() == 0:
        return None, None
    distinct, sub_inverse = torch.unique(rows_of(rows), dim=0, return_inverse=True)
    if distinct.shape[0] == rows.shape[0]:
        return None, None
    first = torch.full((distinct.shape[0],), size, dtype=torch.long, device=keys.device)
    first.scatter_reduce_(0, sub_inverse, rows, reduce="amin")
    inverse = torch.arange(size, device=keys.device)
    inverse[rows] = first[sub_inverse]
    counts = torch.zeros(size, dtype=torch.long, device=keys.device)
    counts.index_add_(0, inverse, torch.ones_like(inverse))
    return inverse, counts


def nonfinite_rows(embeddings: torch.Tensor, chunk_rows: int = 65536) -> list[int]:
    """The rows of ``embeddings`` that hold a NaN or an infinity (an empty list when all are finite): the one
    check that the metric, the evaluation callback, the CIRR submission and the index all use.

    Why it matters: a ranking puts NaN above (``topk``) or anywhere among (sorts, comparisons) the numbers, so
    one NaN gallery row or query gives confident nonsense, never an error.
    Scanned by chunks, with a float32 sum per chunk as the fast path (a NaN or an infinity makes the sum
    non-finite), so a large index is read once and no (N, D) temporary is made.
    """
    bad: list[int] = []
    for start in range(0, embeddings.shape[0], chunk_rows):
        chunk = embeddings[start : start + chunk_rows]
        if bool(torch.isfinite(chunk.sum(dtype=torch.float32))):
            continue
        rows = (~torch.isfinite(chunk)).any(dim=1).nonzero().flatten()  # the sum may also overflow: look row by row
        bad.extend(int(r) + start for r in rows)
    return bad


def _check_finite(name: str, x: torch.Tensor, offset: int = 0) -> None:
    """Refuse NaN or infinite values, naming the first bad row."""
    bad = nonfinite_rows(x)
    if bad:
        raise ValueError(f"{name} row {offset + bad[0]} holds NaN or infinite values")


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
        chunk_size: queries scored at once. Scores are held for ``chunk_size`` queries against at most
            16384 gallery items at a time, so peak extra memory is about ``chunk_size x min(G, 16384)``
            floats (64 MiB at the default) plus the normalised queries, whatever the gallery size.

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
    _check_finite("queries", queries)  # the gallery is checked tile by tile, as it is normalised

    with _exact_float32(device):
        return _ranks(queries, gallery, target_index.to(device), exclude_index, chunk_size)


def _ranks(
    queries: torch.Tensor, gallery: torch.Tensor, target_index: torch.Tensor, exclude_index: torch.Tensor | None, chunk_size: int
) -> torch.Tensor:
    """Count, block by block, the gallery items scoring at least the target's score.

    The target's score is computed once per query, pair by pair (:func:`_pair_scores`), and written into
    its own column of the block that holds it, so the target and its copies always count as ties whatever
    the product's rounding in that column. The count compares into the score block itself and sums
    floats: a boolean mask summed as integers (torch first casts it to int64) cost over a third of the
    product's time at 4k x 50k, and was most of what made this function slower than faiss.
    """
    num_queries, device = queries.shape[0], queries.device
    scored = _TiledGallery(gallery)
    normalised = _normalised(queries)
    target_col = scored.column(target_index)
    target_score = torch.empty(num_queries, device=device)
    for start in range(0, num_queries, chunk_size):
        stop = min(start + chunk_size, num_queries)
        target_score[start:stop] = _pair_scores(normalised[start:stop], _normalised(gallery[target_col[start:stop]]))
    exclude_col = None
    if exclude_index is not None:
        exclude_index = exclude_index.to(device)
        exclude_col = torch.where(exclude_index >= 0, scored.column(exclude_index.clamp(min=0)), -1)

    counts = torch.zeros(num_queries, dtype=torch.long, device=device)
    buffer = torch.empty(min(chunk_size, num_queries) * min(scored.tile, scored.size), device=device)
    for tile_start, rows in scored.tiles():
        tile_stop = tile_start + rows.shape[0]
        for start in range(0, num_queries, chunk_size):
            stop = min(start + chunk_size, num_queries)
            block = buffer[: (stop - start) * rows.shape[0]].view(stop - start, rows.shape[0])
            torch.mm(normalised[start:stop], rows.t(), out=block)
            own = start + _in_tile(target_col[start:stop], tile_start, tile_stop)  # query numbers
            block[own - start, target_col[own] - tile_start] = target_score[own]
            # ">=" counts the target itself (subtracted below) and every tie (which ranks above the target)
            torch.ge(block, target_score[start:stop, None], out=block)
            counts[start:stop] += scored.count(block, tile_start)
            if exclude_col is not None:  # an excluded item at or above the target moves it up one place
                hit = start + _in_tile(exclude_col[start:stop], tile_start, tile_stop)
                counts[hit] -= block[hit - start, exclude_col[hit] - tile_start].long()
    return counts - 1


def _in_tile(columns: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows whose column lies in ``[start, stop)`` (``-1`` = none never does)."""
    return ((columns >= start) & (columns < stop)).nonzero().flatten()


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

    Only the target and the members are scored, pair by pair (:func:`_pair_scores`, the routine that
    scores the target in :func:`retrieval_ranks`), so a member that is a copy of the target ties with it.

    Args:
        queries, gallery, target_index: as in :func:`retrieval_ranks`.
        member_index: (Q, M) gallery positions of each query's group, padded with ``-1``. The target must
            be a member; a member may appear only once.
        exclude_index: (Q,) an item to remove from the group (CIRR: the reference), ``-1`` for none. An
            excluded item that is not a member changes nothing.
        chunk_size: queries scored at once (memory: ``chunk_size x (M + 1) x D`` floats).

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
    valid = members >= 0
    if exclude_index is not None:
        valid &= members != exclude_index[:, None]
    others = valid & (members != target_index[:, None])
    scored = torch.cat([target_index[:, None], members.clamp(min=0)], dim=1)  # (Q, 1 + M) gallery positions
    ranks = torch.empty(num_queries, dtype=torch.long, device=device)
    for start in range(0, num_queries, chunk_size):
        stop = min(start + chunk_size, num_queries)
        scores = _pair_scores(_normalised(queries[start:stop]), _normalised(gallery[scored[start:stop]]))
        target_score, member_score = scores[:, :1], scores[:, 1:]
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
