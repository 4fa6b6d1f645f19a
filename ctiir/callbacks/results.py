"""Evaluation results, kept structured: per protocol, per subset, per metric.

``RetrievalEvaluation`` logs flat keys (``val/fashioniq-original/dress/R@10``) because loggers want scalars;
everything else (the progressive pipeline's tables, the ablation, ``results.json``) reads the structure, so
no one parses a key back. :func:`summarise` is the one place that turns per-task metrics into protocol
averages and headline scores.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ctiir.datamodules.tasks import RetrievalTask

COMPOSED = "composed"


@dataclass
class ProtocolResult:
    """One protocol's metrics: per subset (``None`` for a protocol without subsets), the mean over subsets
    when there are several, and the headline score (the mean of the headline metrics)."""

    protocol: str
    kind: str
    headline: tuple[str, ...]
    subsets: dict[str | None, dict[str, float]]
    average: dict[str, float]
    score: float

    @property
    def summary(self) -> dict[str, float]:
        """The protocol's own numbers: the average over subsets, or the single subset's metrics."""
        return self.average if len(self.subsets) > 1 else next(iter(self.subsets.values()))

    def flat(self) -> dict[str, float]:
        """The logged keys of this protocol (without the ``val/`` or ``test/`` prefix)."""
        out: dict[str, float] = {}
        for subset, metrics in self.subsets.items():
            prefix = f"{self.protocol}/{subset}" if subset else self.protocol
            out.update({f"{prefix}/{name}": value for name, value in metrics.items()})
        out.update({f"{self.protocol}/avg/{name}": value for name, value in self.average.items()})
        out[f"{self.protocol}/score"] = self.score
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "kind": self.kind,
            "headline": list(self.headline),
            "subsets": [{"subset": s, "metrics": m} for s, m in self.subsets.items()],
            "average": self.average,
            "score": self.score,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProtocolResult:
        return cls(
            data["protocol"],
            data["kind"],
            tuple(data["headline"]),
            {entry["subset"]: dict(entry["metrics"]) for entry in data["subsets"]},
            dict(data["average"]),
            float(data["score"]),
        )


@dataclass
class EvaluationResult(Mapping[str, float]):
    """Every protocol evaluated on one split, in evaluation order.

    It reads as a mapping of the logged keys (without prefix) to values, e.g.
    ``result["fashioniq-original/dress/R@10"]`` or ``result["score"]`` (the first protocol's score), and
    keeps the structure in ``protocols``.
    """

    split: str
    protocols: dict[str, ProtocolResult] = field(default_factory=dict)

    @property
    def score(self) -> float:
        return next(iter(self.protocols.values())).score

    def composed(self) -> ProtocolResult | None:
        """The composed-retrieval protocol (the first, if several), else ``None``."""
        return next((p for p in self.protocols.values() if p.kind == COMPOSED), None)

    def flat(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for result in self.protocols.values():
            out.update(result.flat())
        if self.protocols:
            out["score"] = self.score
        return out

    def __getitem__(self, key: str) -> float:
        return self.flat()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.flat())

    def __len__(self) -> int:
        return len(self.flat())

    def to_dict(self) -> dict[str, Any]:
        return {"split": self.split, "protocols": [p.to_dict() for p in self.protocols.values()]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvaluationResult:
        protocols = [ProtocolResult.from_dict(p) for p in data["protocols"]]
        return cls(data["split"], {p.protocol: p for p in protocols})


def summarise(
    tasks: Sequence[RetrievalTask],
    per_task: Mapping[str, Mapping[str, float]],
    split: str = "val",
    kinds: Mapping[str, str] | None = None,
) -> EvaluationResult:
    """Group per-task metrics (``per_task[task.key] = {"R@10": ...}``) by protocol and score each protocol.

    ``average``: the mean over a protocol's subsets, of the metrics they all have (several subsets only);
    ``score``: the mean of the headline metrics (of the averages when several subsets: FashionIQ's mean of
    6; CIRR's (R@5 + Rsubset@1) / 2). ``kinds`` maps a task key to its evaluation kind (default composed).
    """
    groups: dict[str, list[RetrievalTask]] = {}
    for task in tasks:
        groups.setdefault(task.protocol, []).append(task)
    result = EvaluationResult(split)
    for protocol, members in groups.items():
        headline = tuple(members[0].headline)
        for task in members[1:]:
            if tuple(task.headline) != headline:
                raise ValueError(
                    f"protocol {protocol}: subsets disagree on the headline metrics ({members[0].key}: {headline}, "
                    f"{task.key}: {tuple(task.headline)})"
                )
        if not headline:
            raise ValueError(f"protocol {protocol}: task {members[0].key} names no headline metrics")
        subsets = {task.subset: dict(per_task[task.key]) for task in members}
        average: dict[str, float] = {}
        if len(members) > 1:
            values = list(subsets.values())
            common = [m for m in values[0] if all(m in v for v in values[1:])]
            average = {m: sum(v[m] for v in values) / len(values) for m in common}
        summary = average if len(members) > 1 else next(iter(subsets.values()))
        missing = [m for m in headline if m not in summary]
        if missing:
            raise ValueError(
                f"protocol {protocol}: headline metrics {missing} were not computed (computed: {sorted(summary)}); "
                "check the task's ks/subset_ks"
            )
        kind = (kinds or {}).get(members[0].key, COMPOSED)
        score = sum(summary[m] for m in headline) / len(headline)
        result.protocols[protocol] = ProtocolResult(protocol, kind, headline, subsets, average, score)
    return result
