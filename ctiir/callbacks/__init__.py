"""Lightning callbacks of ctiir."""

from ctiir.callbacks.retrieval import RetrievalEvaluation

__all__ = ["RetrievalEvaluation"]
