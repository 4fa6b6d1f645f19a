"""Exact top-k search: a chunked matmul plus ``torch.topk``, on the gallery's own device.

Why chunked: scoring Q queries against a gallery of N at once needs a (Q, N) score matrix; a batch of 64
queries against 10M items would be 2.5 GB. Scoring ``chunk_rows`` gallery rows at a time and merging each
chunk's top-k into a running top-k keeps the temporaries at about ``max_chunk_bytes`` whatever N is.

A float16 gallery is scored by a float16 matmul (the queries are cast down, the scores returned as float32),
never by upcasting the gallery: converting float16 to float32 is slow on CPUs without native float16 support
(unit vectors hold many float16 subnormals) and would read and write the gallery again, while the matmul
reads it once. Scores then carry float16 rounding (about 5e-4 near 1), the same for one query and a batch.
"""

from __future__ import annotations

import torch

DEFAULT_CHUNK_BYTES = 32 << 20


def chunk_rows(num_queries: int, dim: int, gallery_dtype: torch.dtype, max_chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Gallery rows per chunk so that the chunk's scores (in the gallery's dtype, then as float32) fit
    ``max_chunk_bytes``; at least 1024 rows, so a chunk's matmul is never too small to be efficient."""
    itemsize = torch.empty((), dtype=gallery_dtype).element_size()
    per_row = (itemsize + 4) * num_queries
    return max(1024, max_chunk_bytes // max(per_row, 1))


@torch.no_grad()
def exact_topk(
    queries: torch.Tensor, gallery: torch.Tensor, k: int, max_chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores (Q, k), rows (Q, k))`` of the ``k`` highest dot products per query, best first.

    ``queries`` (Q, D) are moved to the gallery's device; ``k`` is capped at the gallery size.
    """
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"queries must be (Q, D) and gallery (N, D); got {tuple(queries.shape)} and {tuple(gallery.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = gallery.shape[0]
    k = min(k, n)
    q = queries.to(gallery.device, gallery.dtype)
    step = chunk_rows(q.shape[0], q.shape[1], gallery.dtype, max_chunk_bytes)
    best_scores: torch.Tensor | None = None
    best_rows: torch.Tensor | None = None
    for start in range(0, n, step):
        chunk = gallery[start : start + step]
        scores = (q @ chunk.T).float()
        top_scores, top_rows = scores.topk(min(k, scores.shape[1]), dim=1)
        top_rows += start
        if best_scores is None:
            best_scores, best_rows = top_scores, top_rows
            continue
        merged_scores = torch.cat([best_scores, top_scores], dim=1)
        merged_rows = torch.cat([best_rows, top_rows], dim=1)
        best_scores, order = merged_scores.topk(k, dim=1)
        best_rows = merged_rows.gather(1, order)
    if best_scores is None:
        empty = torch.empty(q.shape[0], 0)
        return empty, empty.long()
    return best_scores, best_rows
