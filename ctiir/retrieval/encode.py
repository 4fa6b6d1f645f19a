"""Encoding a gallery through Lightning ``predict``, so one command runs on a CPU, a GPU or many nodes.

Each rank encodes its ``DistributedSampler`` share and a ``ShardWriter`` writes what it gets to shard files
(every ``rows_per_shard`` rows, so memory stays bounded); at the end the shards are merged into one matrix in
gallery order. The sampler's padding repeats are dropped by gallery row, and a row that no shard holds is an
error, never a silent gap. Multi-node runs need the shard folder on a file system all nodes share.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, RichProgressBar
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset

from ctiir.datamodules.tasks import collate_retrieval
from ctiir.retrieval.errors import RetrievalError


class ShardWriter(BasePredictionWriter):
    """Writes ``{gallery_id, embedding}`` predictions (and the batch's unreadable-image errors) to shards."""

    def __init__(self, folder: str | Path, rows_per_shard: int = 65536) -> None:
        super().__init__(write_interval="batch")
        self.folder = Path(folder)
        self.rows_per_shard = rows_per_shard
        self._reset()

    def _reset(self) -> None:
        self._ids: list[torch.Tensor] = []
        self._emb: list[torch.Tensor] = []
        self._errors: dict[int, str] = {}
        self._rows = 0
        self._shards = 0

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.folder.exists():
            shutil.rmtree(self.folder)
        trainer.strategy.barrier("ctiir-shards-cleared")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._reset()

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        ids = torch.as_tensor(prediction["gallery_id"]).long().cpu()
        emb = prediction["embedding"]
        if not isinstance(emb, torch.Tensor) or emb.ndim != 2 or emb.shape[0] != ids.numel():
            raise RetrievalError(f"predict_step must return a ({ids.numel()}, D) embedding for a batch of {ids.numel()}")
        for row, error in zip(ids.tolist(), batch.get("error", [""] * ids.numel()), strict=True):
            if error:
                self._errors[row] = error
        self._ids.append(ids)
        self._emb.append(emb.detach().float().cpu())
        self._rows += ids.numel()
        if self._rows >= self.rows_per_shard:
            self._flush(trainer.global_rank)

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(trainer.global_rank)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.strategy.barrier("ctiir-shards-written")

    def _flush(self, rank: int) -> None:
        if not self._ids and not self._errors:
            return
        dim = self._emb[0].shape[1] if self._emb else 0
        tensors = {
            "gallery_id": torch.cat(self._ids) if self._ids else torch.empty(0, dtype=torch.long),
            "embedding": torch.cat(self._emb) if self._emb else torch.empty(0, dim),
        }
        path = self.folder / f"rank{rank:05d}-{self._shards:05d}.safetensors"
        save_file(tensors, str(path), metadata={"errors": json.dumps({str(k): v for k, v in self._errors.items()})})
        self._shards += 1
        self._ids, self._emb, self._errors, self._rows = [], [], {}, 0


def merge_shards(folder: str | Path, count: int) -> tuple[torch.Tensor, dict[int, str]]:
    """``(embeddings (count, D) float32, {row: error})`` from every shard; rows of failed images are zero."""
    shards = sorted(Path(folder).glob("rank*.safetensors"))
    if not shards and count:
        raise RetrievalError(f"no embedding shards in {folder}: the encoding wrote nothing")
    embeddings: torch.Tensor | None = None
    seen = torch.zeros(count, dtype=torch.bool)
    errors: dict[int, str] = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as handle:
            meta = handle.metadata() or {}
        errors.update({int(k): v for k, v in json.loads(meta.get("errors", "{}")).items()})
        tensors = load_file(str(shard))
        ids, emb = tensors["gallery_id"], tensors["embedding"]
        if ids.numel() == 0:
            continue
        if int(ids.min()) < 0 or int(ids.max()) >= count:
            raise RetrievalError(f"{shard}: gallery rows outside 0..{count - 1}")
        if embeddings is None:
            embeddings = torch.zeros(count, emb.shape[1])
        embeddings[ids] = emb  # DistributedSampler's padding repeats write the same row twice, identically
        seen[ids] = True
    if count and not bool(seen.all()):
        missing = torch.nonzero(~seen).flatten()[:5].tolist()
        raise RetrievalError(f"{int((~seen).sum())} gallery rows were not encoded by any rank (e.g. rows {missing})")
    if embeddings is None:
        embeddings = torch.zeros(0, 0)
    return embeddings, errors


def encode_dataset(
    module: L.LightningModule,
    dataset: Dataset,
    shard_dir: str | Path,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    trainer_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, dict[int, str]] | None:
    """Encode ``dataset`` with ``trainer.predict``; on rank 0 the merged ``(embeddings, errors)``, elsewhere ``None``."""
    callbacks: list[L.Callback] = [ShardWriter(shard_dir)]
    if progress:
        callbacks.append(RichProgressBar())
    kwargs = {"accelerator": "auto", "devices": 1, "logger": False, "enable_checkpointing": False, "enable_model_summary": False}
    kwargs.update(trainer_kwargs or {})
    trainer = L.Trainer(callbacks=callbacks, enable_progress_bar=progress, **kwargs)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_retrieval)
    trainer.predict(module, dataloaders=loader, return_predictions=False)
    if not trainer.is_global_zero:
        return None
    try:
        return merge_shards(shard_dir, len(dataset))
    finally:
        shutil.rmtree(shard_dir, ignore_errors=True)
