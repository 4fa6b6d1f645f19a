"""Evaluation pictures: the best- and worst-ranked queries of a task, as ``ctiir search`` draws results.

A number says how well a model does; the pictures say on what. For each composed task the retrieval callback
(``RetrievalEvaluation(save_examples=N)``) writes two grids: the N queries whose target ranks highest and the
N whose target ranks lowest, each row showing the reference with its text and modality weights, then the top
results with rank, score and id, the target framed in green (or said to be missing from the top).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ctiir.datamodules.images import load_rgb
from ctiir.datamodules.protocol import EvaluationSet
from ctiir.io import atomic_open
from ctiir.metrics.recall import QueryRanks
from ctiir.retrieval.render import Candidate, GridRow, render_grid


def chosen_rows(ranks: QueryRanks, n: int) -> dict[str, torch.Tensor]:
    """Rows of ``ranks`` of the ``n`` best-ranked and the ``n`` worst-ranked queries (ties: by query id)."""
    by_id = torch.argsort(ranks.query_ids, stable=True)
    order = by_id[torch.argsort(ranks.ranks[by_id], stable=True)]
    n = min(n, len(order))
    return {"best": order[:n], "worst": order.flip(0)[:n]}


def example_grids(
    evaluation: EvaluationSet,
    ranks: QueryRanks,
    weights: tuple[torch.Tensor, torch.Tensor] | None,
    n: int,
    k: int,
) -> dict[str, list[GridRow]]:
    """``{"best": rows, "worst": rows}`` of grid rows for ``render_grid``."""
    weight_of = {} if weights is None else {int(i): (float(w[0]), float(w[1])) for i, w in zip(*weights, strict=True)}
    out: dict[str, list[GridRow]] = {}
    for name, rows in chosen_rows(ranks, n).items():
        ids, scores = ranks.top(rows, k)
        grid = []
        for row, top_ids, top_scores in zip(rows.tolist(), ids.tolist(), scores.tolist(), strict=True):
            query_id = int(ranks.query_ids[row])
            resolved = evaluation.queries[query_id]
            query = resolved.query
            candidates = [
                Candidate(evaluation.gallery[g].id, s, r + 1, load_rgb(evaluation.gallery[g].path))
                for r, (g, s) in enumerate(zip(top_ids, top_scores, strict=True))
            ]
            target = evaluation.gallery[resolved.target_index].id if resolved.target_index >= 0 else None
            text = " / ".join(query.text) if isinstance(query.text, list) else query.text
            shown = Path(query.name).name if "/" in query.name else query.name  # an entry, not its whole path
            title = f"{shown}: target rank {int(ranks.ranks[row]) + 1}"
            grid.append(GridRow(load_rgb(query.reference), text, candidates, weight_of.get(query_id), target, title))
        out[name] = grid
    return out


def save_examples(
    folder: Path,
    key: str,
    evaluation: EvaluationSet,
    ranks: QueryRanks,
    weights: tuple[torch.Tensor, torch.Tensor] | None,
    n: int,
    k: int = 5,
) -> list[Path]:
    """Write ``<key>-best.png`` and ``<key>-worst.png`` under ``folder`` (each atomically); their paths."""
    written = []
    for name, rows in example_grids(evaluation, ranks, weights, n, k).items():
        path = folder / f"{key.replace('/', '-')}-{name}.png"
        with atomic_open(path, "wb") as handle:
            render_grid(rows).save(handle, format="PNG")
        written.append(path)
    return written
