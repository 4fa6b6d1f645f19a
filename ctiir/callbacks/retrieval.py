"""``RetrievalEvaluation``: ranked-retrieval metrics for every protocol a datamodule offers.

Why a callback and not ``validation_step``: retrieval needs the whole gallery before any query can be
ranked, and the gallery is a different dataset from the validation-loss batches. So at the end of a
validation (or test) epoch this callback encodes each task's gallery and queries itself, ranks with the
exact ``RecallAtK`` metric, and logs protocol-tagged keys (``val/fashioniq-original/dress/R@10``).

Under DDP each rank encodes one ``DistributedSampler`` shard; ``RecallAtK`` gathers the shards and drops
the sampler's padding repeats, so the logged numbers are the exact global ones on every rank. The encoding
shows a progress bar on rank 0 when the trainer shows progress (``ctiir.progress``).

The contract with the module: ``encode_gallery(batch)`` returns (B, D) embeddings; ``encode_query(batch)``
returns a ``ctiir.fusion.Fused`` (the query and, for fusions that weight the modalities, their per-query
weights, whose means are logged as ``w_img`` / ``w_txt``) or a plain (B, D) tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchmetrics.utilities.distributed import gather_all_tensors

from ctiir.callbacks.examples import save_examples
from ctiir.callbacks.results import Breakdown, EvaluationResult, QueryOutcome, summarise
from ctiir.datamodules.tasks import RetrievalTask, collate_retrieval
from ctiir.fusion.base import as_fused
from ctiir.metrics.functional import nonfinite_rows
from ctiir.metrics.recall import QueryRanks, RecallAtK
from ctiir.progress import encoding_progress, trainer_progress

__all__ = ["RetrievalEvaluation", "summarise"]

Prefix = Literal["val", "test"]


class RetrievalEvaluation(L.Callback):
    """Encode, rank and log every retrieval task of the attached datamodule at validation and test end.

    Args:
        kinds: task kinds to evaluate (``"composed"``, ``"caption_pairs"``, ``"descriptions"``); ``None``:
            the module's ``eval_kinds``.
        batch_size: encoding batch size; ``None``: the datamodule's ``eval_batch_size``.
        num_workers: DataLoader workers; ``None``: the datamodule's ``num_workers`` (else 0).
        chunk_size: queries ranked at once (memory ~ ``chunk_size x gallery size`` floats).
        every_n_epochs: during ``fit``, evaluate at the end of every n-th epoch's validation
            (``trainer.validate`` and ``trainer.test`` always evaluate). A checkpoint callback monitoring
            ``val/score`` needs it evaluated at each validation it sees.
        save_examples: for each composed task, draw the N best- and N worst-ranked queries with their top
            ``examples_k`` results into ``<trainer.default_root_dir>/examples/<val|test>/<task>-best.png`` and
            ``-worst.png`` (rewritten at each evaluation, so they show the latest); 0 (default) draws none.
        examples_k: how many results each row of those pictures shows.
        keep_queries: keep every composed query's outcome (target rank, attributes, weights) in
            ``queries[prefix][task key]``, a list of :class:`~ctiir.callbacks.results.QueryOutcome` in the task's
            query order: for paired comparisons and bootstrap intervals over queries.

    After each evaluation, ``results[prefix]`` (``prefix`` = ``"val"`` or ``"test"``) holds an
    ``EvaluationResult``: structured per protocol and subset (``.protocols``, ``.composed()``), and readable
    as a mapping of the logged keys without the prefix (``results["val"]["fashioniq-original/dress/R@10"]``,
    ``results["val"]["score"]``).
    """

    def __init__(
        self,
        kinds: Sequence[str] | None = None,
        batch_size: int | None = None,
        num_workers: int | None = None,
        chunk_size: int = 1024,
        every_n_epochs: int = 1,
        save_examples: int = 0,
        examples_k: int = 5,
        keep_queries: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(kinds, str):
            kinds = (kinds,)
        self.kinds = tuple(kinds) if kinds is not None else None
        for name, value, low in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise ValueError(f"RetrievalEvaluation: {name} must be an int >= {low} or None; got {value!r}")
        for name, value in (("chunk_size", chunk_size), ("every_n_epochs", every_n_epochs), ("examples_k", examples_k)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"RetrievalEvaluation: {name} must be a positive int; got {value!r}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.chunk_size = chunk_size
        self.every_n_epochs = every_n_epochs
        if isinstance(save_examples, bool) or not isinstance(save_examples, int) or save_examples < 0:
            raise ValueError(f"RetrievalEvaluation: save_examples must be an int >= 0; got {save_examples!r}")
        self.save_examples = save_examples
        self.examples_k = examples_k
        self.keep_queries = keep_queries
        self.results: dict[str, EvaluationResult] = {}
        self.queries: dict[str, dict[str, list[QueryOutcome]]] = {}

    # ------------------------------------------------------------------------------------------ hooks
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        fitting = trainer.state.fn == TrainerFn.FITTING  # a standalone trainer.validate() always evaluates
        if fitting and (trainer.current_epoch + 1) % self.every_n_epochs != 0:
            return
        self.evaluate(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.evaluate(trainer, pl_module, "test")

    # ------------------------------------------------------------------------------------------ work
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, prefix: Prefix) -> EvaluationResult:
        """Evaluate every task of the configured kinds, log the metrics (flattened) and return them."""
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "retrieval_tasks"):
            raise RuntimeError(
                "RetrievalEvaluation needs a datamodule with retrieval_tasks(split, kind) attached to the trainer "
                f"(got {type(datamodule).__name__ if datamodule is not None else None})"
            )
        kinds = self.kinds if self.kinds is not None else getattr(pl_module, "eval_kinds", None)
        if not kinds:
            raise RuntimeError(
                f"RetrievalEvaluation: no task kinds: {type(pl_module).__name__} has no eval_kinds and the callback "
                "was given no kinds="
            )
        if isinstance(kinds, str):
            kinds = (kinds,)
        batch_size = self.batch_size or getattr(datamodule, "eval_batch_size", None)
        if not batch_size:
            raise RuntimeError(
                f"RetrievalEvaluation: {type(datamodule).__name__} has no eval_batch_size; pass batch_size= to the callback"
            )
        num_workers = self.num_workers if self.num_workers is not None else getattr(datamodule, "num_workers", 0)

        tasks: list[RetrievalTask] = []
        kind_of: dict[str, str] = {}
        for kind in kinds:
            try:
                found = datamodule.retrieval_tasks(prefix, kind)
            except NotImplementedError as err:
                # e.g. Stage II's description retrieval on a dataset without descriptions: say so, go on.
                rank_zero_warn(f"RetrievalEvaluation: skipped {prefix} tasks of kind {kind!r}: {err}")
                continue
            tasks.extend(found)
            kind_of.update({task.key: kind for task in found})
        if not tasks:
            rank_zero_warn(f"RetrievalEvaluation: the datamodule has no {prefix} tasks of kinds {tuple(kinds)}; nothing logged")
            return EvaluationResult(prefix)
        keys = [task.key for task in tasks]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise ValueError(f"RetrievalEvaluation: several {prefix} tasks share the key(s) {repeated}; keys must be unique")

        if self.keep_queries:
            self.queries[prefix] = {}  # filled by _evaluate_task; a new evaluation replaces the last one's
        was_training = pl_module.training
        pl_module.eval()
        try:
            scored = {
                task.key: self._evaluate_task(trainer, pl_module, task, batch_size, num_workers, prefix) for task in tasks
            }
        finally:
            pl_module.train(was_training)

        per_task = {key: metrics for key, (metrics, _) in scored.items()}
        breakdowns = {key: groups for key, (_, groups) in scored.items() if groups}
        result = summarise(tasks, per_task, prefix, kind_of, breakdowns)
        for key, value in result.flat().items():
            pl_module.log(f"{prefix}/{key}", value, sync_dist=False)
        self.results[prefix] = result
        return result

    def _evaluate_task(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        task: RetrievalTask,
        batch_size: int,
        num_workers: int,
        prefix: Prefix,
    ) -> tuple[dict[str, float], Breakdown]:
        """The task's metrics, and the same metrics per value of each query attribute (``groups``)."""
        _check_not_empty(task)
        device = pl_module.device
        metric = RecallAtK(
            ks=task.ks, subset_ks=task.subset_ks, exclude_reference=task.exclude_reference, chunk_size=self.chunk_size
        ).to(device)
        weights = _WeightMeans(task.key)
        show, host = trainer_progress(trainer)
        gallery = self._loader(trainer, task.gallery, batch_size, num_workers)
        queries = self._loader(trainer, task.queries, batch_size, num_workers)
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            with encoding_progress(f"{task.key} gallery", len(gallery.sampler), enabled=show, host=host) as advance:
                for batch in gallery:
                    ids = batch["gallery_id"]
                    emb = pl_module.encode_gallery(move_data_to_device(batch, device))
                    metric.update_gallery(_checked_embedding(emb, len(ids), task.key, "encode_gallery", ids), ids)
                    advance(len(ids))
            with encoding_progress(f"{task.key} queries", len(queries.sampler), enabled=show, host=host) as advance:
                for batch in queries:
                    ids = batch["query_id"]
                    fused = as_fused(pl_module.encode_query(move_data_to_device(batch, device)))
                    metric.update(
                        _checked_embedding(fused.query, len(ids), task.key, "encode_query", ids),
                        ids,
                        batch["target_id"],
                        batch.get("reference_id"),
                        batch.get("member_ids"),
                    )
                    weights.add(fused.weights, ids)
                    advance(len(ids))
        ranks = metric.query_ranks()
        per_query_weights = weights.per_query(trainer.world_size > 1)
        out = ranks.recall(task.ks, task.subset_ks)
        out.update(_mean_weights(per_query_weights))
        if self.save_examples and trainer.is_global_zero and task.evaluation is not None:
            folder = Path(trainer.default_root_dir) / "examples" / prefix
            save_examples(folder, task.key, task.evaluation, ranks, per_query_weights, self.save_examples, self.examples_k)
        if self.keep_queries and task.evaluation is not None:
            self.queries.setdefault(prefix, {})[task.key] = _outcomes(task, ranks, per_query_weights)
        return out, _breakdown(task, ranks, per_query_weights)

    def _loader(self, trainer: L.Trainer, dataset: Dataset, batch_size: int, num_workers: int) -> DataLoader:
        sampler = None
        if trainer.world_size > 1:
            sampler = DistributedSampler(dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False)
        return DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=num_workers, collate_fn=collate_retrieval
        )


# ---------------------------------------------------------------------------------------------- helpers
def _check_not_empty(task: RetrievalTask) -> None:
    """An empty gallery or query set is an error naming the task (and how many were skipped), not a metric's
    "no queries were added" from deep inside the ranking."""
    evaluation = task.evaluation
    for what, dataset, skipped in (
        ("gallery", task.gallery, evaluation.skipped_gallery if evaluation is not None else 0),
        ("query set", task.queries, evaluation.skipped_queries if evaluation is not None else 0),
    ):
        if len(dataset) == 0:  # type: ignore[arg-type]
            why = f" ({skipped} entries skipped for missing images)" if skipped else ""
            raise ValueError(f"task {task.key} ({task.split or '?'} split): the {what} is empty{why}; nothing to rank")


def _checked_embedding(emb: Any, rows: int, key: str, fn: str, ids: Any = None) -> torch.Tensor:
    if not isinstance(emb, torch.Tensor) or emb.ndim != 2 or emb.shape[0] != rows:
        shape = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
        raise ValueError(f"task {key}: {fn} must return a ({rows}, D) tensor for a batch of {rows}; got {shape}")
    bad = nonfinite_rows(emb)
    if bad:  # a NaN would rank arbitrarily: name the items instead (a diverged model, a bad image)
        which = torch.as_tensor(ids).flatten()[bad].tolist() if ids is not None else bad
        raise ValueError(f"task {key}: {fn} returned NaN or infinite embeddings for ids {which[:10]} of this batch")
    return emb


class _WeightMeans:
    """Mean fusion weights ``(w_img, w_txt)`` of one task's queries, each query counted once (DDP-exact)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.ids: list[torch.Tensor] = []
        self.weights: list[torch.Tensor] = []
        self.unusable: str | None = None

    def add(self, weights: Any, ids: torch.Tensor) -> None:
        if weights is None or self.unusable is not None:
            return
        if not isinstance(weights, torch.Tensor) or weights.shape != (len(ids), 2):
            shape = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
            self.unusable = f"the query weights are {shape}, not ({len(ids)}, 2) for a batch of {len(ids)} queries"
            rank_zero_warn(f"RetrievalEvaluation, task {self.key}: {self.unusable}; w_img/w_txt not logged")
            return
        self.ids.append(torch.as_tensor(ids, device=weights.device).long())
        self.weights.append(weights.detach().float())

    def per_query(self, distributed: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(query ids, weights)`` gathered from every process, each query once; ``None`` without weights."""
        if self.unusable is not None or not self.weights:
            return None
        ids, weights = torch.cat(self.ids), torch.cat(self.weights)
        if distributed:
            ids, weights = torch.cat(gather_all_tensors(ids)), torch.cat(gather_all_tensors(weights))
        _, inverse = torch.unique(ids, return_inverse=True)
        first = torch.full((int(inverse.max()) + 1,), len(ids), dtype=torch.long, device=ids.device)
        first.scatter_reduce_(0, inverse, torch.arange(len(ids), device=ids.device), reduce="amin")
        return ids[first], weights[first]


def _mean_weights(per_query: tuple[torch.Tensor, torch.Tensor] | None, mask: torch.Tensor | None = None) -> dict[str, float]:
    if per_query is None:
        return {}
    weights = per_query[1] if mask is None else per_query[1][mask]
    if weights.shape[0] == 0:
        return {}
    mean = weights.mean(dim=0)
    return {"w_img": float(mean[0]), "w_txt": float(mean[1])}


def _outcomes(
    task: RetrievalTask, ranks: QueryRanks, per_query_weights: tuple[torch.Tensor, torch.Tensor] | None
) -> list[QueryOutcome]:
    """Every query of ``task`` with its ranks, attributes and weights, in the task's query order."""
    queries = task.evaluation.queries  # type: ignore[union-attr]
    weights: dict[int, list[float]] = {}
    if per_query_weights is not None:
        weights = dict(zip(per_query_weights[0].tolist(), per_query_weights[1].tolist(), strict=True))
    subset = ranks.subset_ranks.tolist() if ranks.subset_ranks is not None else None
    found = {}
    for row, (qid, rank) in enumerate(zip(ranks.query_ids.tolist(), ranks.ranks.tolist(), strict=True)):
        w = weights.get(qid)
        found[qid] = QueryOutcome(
            name=queries[qid].query.name,
            rank=int(rank),
            subset_rank=None if subset is None else int(subset[row]),
            groups=dict(queries[qid].query.groups),
            w_img=None if w is None else float(w[0]),
            w_txt=None if w is None else float(w[1]),
        )
    return [found[i] for i in sorted(found)]


def _breakdown(
    task: RetrievalTask, ranks: QueryRanks, per_query_weights: tuple[torch.Tensor, torch.Tensor] | None
) -> Breakdown:
    """Per query attribute (``ComposedQuery.groups``, e.g. ``scenario``) and value: the task's metrics over
    the queries with that value, their count (``queries``) and their mean fusion weights."""
    evaluation = task.evaluation
    if evaluation is None or not any(r.query.groups for r in evaluation.queries):
        return {}
    out: Breakdown = {}
    attributes = sorted({a for r in evaluation.queries for a in r.query.groups})
    for attribute in attributes:
        def labels(ids: torch.Tensor, attribute: str = attribute) -> list[str | None]:
            return [evaluation.queries[i].query.groups.get(attribute) for i in ids.tolist()]

        ranked = labels(ranks.query_ids)
        weighed = labels(per_query_weights[0]) if per_query_weights is not None else []
        for value in sorted({v for v in ranked if v is not None}):
            mask = torch.tensor([v == value for v in ranked], device=ranks.ranks.device)
            metrics = ranks.recall(task.ks, task.subset_ks, mask)
            metrics["queries"] = float(mask.sum())
            if per_query_weights is not None:
                wmask = torch.tensor([v == value for v in weighed], device=per_query_weights[1].device)
                metrics.update(_mean_weights(per_query_weights, wmask))
            out.setdefault(attribute, {})[value] = metrics
    return out
