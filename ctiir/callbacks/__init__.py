"""Lightning callbacks of ctiir."""

from ctiir.callbacks.results import EvaluationResult, ProtocolResult, QueryOutcome, summarise
from ctiir.callbacks.retrieval import RetrievalEvaluation

__all__ = ["EvaluationResult", "ProtocolResult", "QueryOutcome", "RetrievalEvaluation", "summarise"]
