"""Evaluation tasks: what a datamodule hands the ``RetrievalEvaluation`` callback.

A ``RetrievalTask`` is one ranked-retrieval protocol on one subset (e.g. FashionIQ ``original`` on
``dress``). Gallery and query items are dicts, so one collate function and one callback serve composed
(image + text) queries, text->image and image->text alike.

Gallery items: ``{"gallery_id": int, "image": Tensor}`` or ``{"gallery_id": int, "text": str}``.
Query items:   ``{"query_id": int, "target_id": int, "reference_id": int}`` plus ``"image"`` and/or
``"text"`` (a string, or a list of strings whose fused query embeddings are averaged), and for CIRR
``"member_ids"`` (gallery ids of the query's image set, ``-1``-padded).
``reference_id`` is what the ranking removes under ``exclude_reference``: ``-1`` where the reference is not
in the gallery, or is the target.

Composed tasks are built from an ``EvaluationSet`` (``ctiir.datamodules.protocol``), kept as
``task.evaluation``: the typed record of the protocol's gallery, resolved queries and skip counts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

if TYPE_CHECKING:
    from ctiir.datamodules.protocol import EvaluationSet


@dataclass
class RetrievalTask:
    """One ranked-retrieval task: the datasets to encode and how to score them.

    ``split`` is the split it evaluates, and ``evaluation`` the protocol's typed record (composed tasks).
    """

    protocol: str
    subset: str | None
    gallery: Dataset
    queries: Dataset
    gallery_names: list[str]
    query_names: list[str]
    ks: tuple[int, ...] = (1, 5, 10, 50)
    subset_ks: tuple[int, ...] = ()
    exclude_reference: bool = False
    headline: tuple[str, ...] = ("R@10", "R@50")
    split: str | None = None
    evaluation: EvaluationSet | None = None

    @property
    def key(self) -> str:
        """The metric-key prefix, e.g. ``fashioniq-original/dress``."""
        return f"{self.protocol}/{self.subset}" if self.subset else self.protocol


def collate_retrieval(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors and ints; keep texts (strings or lists of strings) as Python lists."""
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if key in ("text", "texts") or isinstance(values[0], str):
            out[key] = list(values)
        elif key == "member_ids":
            out[key] = torch.as_tensor([list(v) for v in values], dtype=torch.long)
        else:
            out[key] = default_collate(values)
    return out


class ListDataset(Dataset):
    """Items built on access by ``make(i)`` from a list of records: lazy image loading, no copies."""

    def __init__(self, records: Sequence[Any], make: Callable[[Any, int], dict[str, Any]]) -> None:
        self.records = records
        self.make = make

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.make(self.records[index], index)
