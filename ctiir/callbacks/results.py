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
# attribute -> value -> metric -> number, e.g. {"scenario": {"text-led": {"R@10": 61.0, "queries": 33.0}}}
Breakdown = dict[str, dict[str, dict[str, float]]]
COUNT = "queries"  # the one breakdown metric that is summed, not averaged, over subsets


@dataclass
class ProtocolResult:
    """One protocol's metrics: per subset (``None`` for a protocol without subsets), the mean over subsets
    when there are several, and the headline score (the mean of the headline metrics).

    ``breakdown`` holds, per subset, the metrics per value of each query attribute (``Breakdown``), and
    ``breakdown_average`` their mean over the subsets that have the value (query counts are summed).
    """

    protocol: str
    kind: str
    headline: tuple[str, ...]
    subsets: dict[str | None, dict[str, float]]
    average: dict[str, float]
    score: float
    breakdown: dict[str | None, Breakdown] = field(default_factory=dict)
    breakdown_average: Breakdown = field(default_factory=dict)

    @property
    def breakdown_summary(self) -> Breakdown:
        """The protocol's own breakdown: the average over subsets, or the single subset's."""
        if len(self.subsets) > 1:
            return self.breakdown_average
        return next(iter(self.breakdown.values()), {})

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
        for subset, breakdown in self.breakdown.items():
            out.update(_flat_breakdown(f"{self.protocol}/{subset}" if subset else self.protocol, breakdown))
        out.update(_flat_breakdown(f"{self.protocol}/avg", self.breakdown_average))
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
            "breakdown": [{"subset": s, "groups": b} for s, b in self.breakdown.items()],
            "breakdown_average": self.breakdown_average,
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
            {entry["subset"]: entry["groups"] for entry in data.get("breakdown", [])},
            dict(data.get("breakdown_average", {})),
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


@dataclass(frozen=True)
class QueryOutcome:
    """One evaluated query: where its target ranked (0 = first), its attributes and its fusion weights.

    What paired comparisons and bootstrap intervals need (two models on the same queries), and what a
    results table averages away. ``subset_rank`` is the rank within CIRR's image set, where there is one.
    """

    name: str
    rank: int
    subset_rank: int | None = None
    groups: Mapping[str, str] = field(default_factory=dict)
    w_img: float | None = None
    w_txt: float | None = None


def _flat_breakdown(prefix: str, breakdown: Breakdown) -> dict[str, float]:
    """``<prefix>/<attribute>=<value>/<metric>`` keys, e.g. ``synthetic/dress/scenario=text-led/R@10``."""
    return {
        f"{prefix}/{attribute}={value}/{name}": number
        for attribute, values in breakdown.items()
        for value, metrics in values.items()
        for name, number in metrics.items()
    }


def _average_breakdowns(breakdowns: Sequence[Breakdown]) -> Breakdown:
    """The mean over subsets of each attribute value's metrics (over the subsets that have the value)."""
    out: Breakdown = {}
    attributes = dict.fromkeys(a for b in breakdowns for a in b)
    for attribute in attributes:
        values = dict.fromkeys(v for b in breakdowns for v in b.get(attribute, {}))
        for value in values:
            present = [b[attribute][value] for b in breakdowns if value in b.get(attribute, {})]
            names = [m for m in present[0] if all(m in p for p in present[1:])]
            out.setdefault(attribute, {})[value] = {
                m: sum(p[m] for p in present) / (1 if m == COUNT else len(present)) for m in names
            }
    return out


def summarise(
    tasks: Sequence[RetrievalTask],
    per_task: Mapping[str, Mapping[str, float]],
    split: str = "val",
    kinds: Mapping[str, str] | None = None,
    breakdowns: Mapping[str, Breakdown] | None = None,
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
        breakdown = {t.subset: dict((breakdowns or {})[t.key]) for t in members if (breakdowns or {}).get(t.key)}
        breakdown_average = _average_breakdowns(list(breakdown.values())) if len(members) > 1 else {}
        result.protocols[protocol] = ProtocolResult(
            protocol, kind, headline, subsets, average, score, breakdown, breakdown_average
        )
    return result
