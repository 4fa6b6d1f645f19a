"""Exact, memory-bounded Recall@K for ranked retrieval: a functional core and a DDP-safe torchmetrics Metric."""

from ctiir.metrics.functional import recall_at_k, retrieval_ranks, subset_ranks
from ctiir.metrics.recall import RecallAtK

__all__ = ["RecallAtK", "recall_at_k", "retrieval_ranks", "subset_ranks"]
