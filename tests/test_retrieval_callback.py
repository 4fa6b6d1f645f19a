"""``RetrievalEvaluation`` with a tiny fake stage and datamodule: logged values equal the functional core."""

from __future__ import annotations

import json
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ctiir.callbacks import RetrievalEvaluation
from ctiir.callbacks.results import EvaluationResult, summarise
from ctiir.datamodules.tasks import ListDataset, RetrievalTask, collate_retrieval
from ctiir.fusion import Fused, as_fused
from ctiir.metrics import recall_at_k, retrieval_ranks, subset_ranks

VOCAB = ["red", "longer", "no sleeves", "darker", "with logo", "plain", "shorter"]
DIM = 6


class Fusion(nn.Module):
    """Adaptive weights from [v, t], returned with the query as ctiir's fusions do."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Linear(2 * DIM, 2)

    def forward(self, v: torch.Tensor, t: torch.Tensor) -> Fused:
        w = self.mlp(torch.cat([v, t], dim=1)).softmax(dim=1)
        return Fused(F.normalize(w[:, :1] * v + w[:, 1:] * t, dim=1), w)


class FakeStage(L.LightningModule):
    """Fixed random linear encoders; records the mode it encodes in and the device of its inputs."""

    eval_kinds = ("composed",)

    def __init__(self, with_fusion: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.image = nn.Linear(12, DIM)
        self.text = nn.Embedding(len(VOCAB), DIM)
        self.fusion = Fusion() if with_fusion else None
        self.dummy = nn.Parameter(torch.zeros(1))
        self.encode_modes: list[bool] = []
        self.training_after_eval: list[bool] = []
        self.evaluations = 0

    def encode_gallery(self, batch: dict[str, Any]) -> torch.Tensor:
        assert batch["image"].device == self.device
        self.encode_modes.append(self.training)
        return F.normalize(self.image(batch["image"].flatten(1)), dim=1)

    def encode_query(self, batch: dict[str, Any]) -> torch.Tensor | Fused:
        self.encode_modes.append(self.training)
        v = F.normalize(self.image(batch["image"].flatten(1)), dim=1)
        t = F.normalize(self.text(torch.tensor([VOCAB.index(x) for x in batch["text"]], device=self.device)), dim=1)
        if self.fusion is None:
            return F.normalize(v + t, dim=1)
        return self.fusion(v, t)

    # a minimal training/validation loop around the callback
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return (self.dummy * batch[0].sum()).sum() ** 2

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        return None

    def test_step(self, batch: Any, batch_idx: int) -> None:
        return None

    def on_validation_epoch_start(self) -> None:
        self.train()  # a stage that leaves train mode on: the callback must put it back as it found it

    def on_validation_epoch_end(self) -> None:  # runs after the callbacks' hook
        self.training_after_eval.append(self.training)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([self.dummy], lr=0.1)


def make_task(protocol: str, subset: str | None, seed: int, cirr: bool = False, **kwargs: Any) -> RetrievalTask:
    g = torch.Generator().manual_seed(seed)
    size, num_queries = 9, 11
    images = torch.randn(size, 3, 2, 2, generator=g)
    target = torch.randint(0, size, (num_queries,), generator=g)
    reference = (target + torch.randint(1, size, (num_queries,), generator=g)) % size
    texts = [VOCAB[int(i)] for i in torch.randint(0, len(VOCAB), (num_queries,), generator=g)]

    def query(i: int, _: int) -> dict[str, Any]:
        item = {
            "query_id": i,
            "target_id": int(target[i]),
            "reference_id": int(reference[i]),
            "image": images[int(reference[i])],
            "text": texts[i],
        }
        if cirr:
            rest = [j for j in range(size) if j not in (int(target[i]), int(reference[i]))]
            item["member_ids"] = [int(reference[i]), int(target[i]), *rest[i % 3 : i % 3 + 3], -1]
        return item

    return RetrievalTask(
        protocol=protocol,
        subset=subset,
        gallery=ListDataset(list(range(size)), lambda r, i: {"gallery_id": r, "image": images[r]}),
        queries=ListDataset(list(range(num_queries)), query),
        gallery_names=[f"img{i}" for i in range(size)],
        query_names=[f"q{i}" for i in range(num_queries)],
        **kwargs,
    )


class FakeData(L.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        self.eval_batch_size = 3
        self.num_workers = 0
        self.requests: list[tuple[str, str]] = []
        self.tasks = {
            "composed": [
                make_task("toy-a", "x", 1, ks=(1, 5), headline=("R@1", "R@5")),
                make_task("toy-a", "y", 2, ks=(1, 5), headline=("R@1", "R@5")),
                make_task(
                    "toy-b", None, 3, cirr=True, ks=(1, 2), subset_ks=(1, 2), exclude_reference=True,
                    headline=("R@2", "Rsubset@1"),
                ),
            ],
            "caption_pairs": [make_task("toy-c", None, 4, ks=(1, 3), headline=("R@3",))],
        }

    def retrieval_tasks(self, split: str, kind: str) -> list[RetrievalTask]:
        self.requests.append((split, kind))
        return self.tasks[kind]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.ones(4, 2)), batch_size=2)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.ones(2, 2)), batch_size=2)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


def trainer(callback: RetrievalEvaluation, **kwargs: Any) -> L.Trainer:
    options = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(callbacks=[callback], **{**options, **kwargs})


def expected_values(model: FakeStage, tasks: list[RetrievalTask]) -> dict[str, float]:
    """The same numbers computed directly: encode everything at once, rank with the functional core."""
    out: dict[str, float] = {}
    model.eval()
    with torch.no_grad():
        for task in tasks:
            gallery = collate_retrieval([task.gallery[i] for i in range(len(task.gallery))])
            queries = collate_retrieval([task.queries[i] for i in range(len(task.queries))])
            g, (q, weights) = model.encode_gallery(gallery), as_fused(model.encode_query(queries))
            exclude = queries["reference_id"] if task.exclude_reference else None
            ranks = retrieval_ranks(q, g, queries["target_id"], exclude)
            out.update({f"{task.key}/R@{k}": v for k, v in recall_at_k(ranks, task.ks).items()})
            if task.subset_ks:
                sranks = subset_ranks(q, g, queries["target_id"], queries["member_ids"], exclude)
                out.update({f"{task.key}/Rsubset@{k}": v for k, v in recall_at_k(sranks, task.subset_ks).items()})
            if weights is not None:
                w = weights.mean(0)
                out[f"{task.key}/w_img"], out[f"{task.key}/w_txt"] = float(w[0]), float(w[1])
    return out


def test_validate_logs_protocol_keys_equal_to_the_functional_core() -> None:
    model, data, callback = FakeStage(), FakeData(), RetrievalEvaluation(every_n_epochs=3)  # validate: always
    logged = trainer(callback).validate(model, datamodule=data)[0]
    want = expected_values(model, data.tasks["composed"])
    a = [want[f"toy-a/{s}/{m}"] for s in ("x", "y") for m in ("R@1", "R@5")]
    want["toy-a/avg/R@1"], want["toy-a/avg/R@5"] = (a[0] + a[2]) / 2, (a[1] + a[3]) / 2
    want["toy-a/avg/w_img"] = (want["toy-a/x/w_img"] + want["toy-a/y/w_img"]) / 2
    want["toy-a/avg/w_txt"] = (want["toy-a/x/w_txt"] + want["toy-a/y/w_txt"]) / 2
    want["toy-a/score"] = (want["toy-a/avg/R@1"] + want["toy-a/avg/R@5"]) / 2
    want["toy-b/score"] = (want["toy-b/R@2"] + want["toy-b/Rsubset@1"]) / 2
    want["score"] = want["toy-a/score"]

    assert data.requests == [("val", "composed")]
    assert set(callback.results["val"]) == set(want)
    assert callback.results["val"] == pytest.approx(want, abs=1e-5)
    assert {k.removeprefix("val/"): v for k, v in logged.items()} == pytest.approx(want, abs=1e-4)
    assert "val/toy-a/x/R@5" in logged and "val/toy-b/Rsubset@2" in logged and "val/score" in logged
    assert len({round(v, 3) for k, v in want.items() if "/R" in k}) > 3  # the problem is not degenerate
    assert model.encode_modes and not any(model.encode_modes)  # encoded in eval mode
    assert model.training_after_eval == [True]  # and the module's own mode restored


def test_test_split_and_kinds_override() -> None:
    model, data = FakeStage(with_fusion=False), FakeData()
    callback = RetrievalEvaluation(kinds=("caption_pairs",), batch_size=4)
    logged = trainer(callback).test(model, datamodule=data)[0]
    want = expected_values(model, data.tasks["caption_pairs"])
    assert data.requests == [("test", "caption_pairs")]
    assert set(logged) == {"test/toy-c/R@1", "test/toy-c/R@3", "test/toy-c/score", "test/score"}  # no weights
    assert logged["test/toy-c/R@3"] == pytest.approx(want["toy-c/R@3"], abs=1e-4)
    assert logged["test/score"] == pytest.approx(want["toy-c/R@3"], abs=1e-4)
    assert callback.results["test"]["score"] == pytest.approx(want["toy-c/R@3"], abs=1e-5)


def test_fit_skips_sanity_check_and_honours_every_n_epochs() -> None:
    model, data = FakeStage(), FakeData()
    callback = RetrievalEvaluation(every_n_epochs=2)
    trainer(callback, max_epochs=3, num_sanity_val_steps=1, limit_train_batches=1).fit(model, datamodule=data)
    # 3 validation epochs plus a sanity check: the callback evaluated only after epoch 2
    assert model.training_after_eval == [True, True, True, True]
    assert data.requests == [("val", "composed")]
    assert callback.results["val"]["score"] == pytest.approx(callback.results["val"]["toy-a/score"])


def test_summarise_fashioniq_and_cirr_scores() -> None:
    def task(protocol: str, subset: str | None, headline: tuple[str, ...]) -> RetrievalTask:
        return RetrievalTask(protocol, subset, ListDataset([], dict), ListDataset([], dict), [], [], headline=headline)

    fiq = [task("fashioniq-original", c, ("R@10", "R@50")) for c in ("dress", "shirt", "toptee")]
    cirr = [task("cirr", None, ("R@5", "Rsubset@1"))]
    per_task = {
        "fashioniq-original/dress": {"R@10": 29.0, "R@50": 53.94},
        "fashioniq-original/shirt": {"R@10": 35.43, "R@50": 58.88},
        "fashioniq-original/toptee": {"R@10": 39.16, "R@50": 64.56},
        "cirr": {"R@1": 40.0, "R@5": 70.0, "Rsubset@1": 80.0},
    }
    out = summarise(fiq + cirr, per_task)
    assert out["fashioniq-original/avg/R@10"] == pytest.approx((29.0 + 35.43 + 39.16) / 3)
    assert out["fashioniq-original/avg/R@50"] == pytest.approx((53.94 + 58.88 + 64.56) / 3)
    assert out["fashioniq-original/score"] == pytest.approx(46.828333, abs=1e-5)  # the paper's "mean" 46.83
    assert out["cirr/score"] == 75.0
    assert "cirr/avg/R@5" not in out  # one subset: no average
    assert out["score"] == out["fashioniq-original/score"]
    # the same numbers, structured: read without parsing a key, and through JSON and back
    fashion = out.protocols["fashioniq-original"]
    assert fashion.subsets["dress"]["R@10"] == 29.0 and fashion.average["R@10"] == out["fashioniq-original/avg/R@10"]
    assert out.composed() is fashion and out.protocols["cirr"].summary == per_task["cirr"]
    assert EvaluationResult.from_dict(json.loads(json.dumps(out.to_dict()))) == out
    with pytest.raises(ValueError, match=r"protocol cirr: headline metrics \['R@50'\] were not computed"):
        summarise([task("cirr", None, ("R@50",))], {"cirr": per_task["cirr"]})
    with pytest.raises(ValueError, match="subsets disagree on the headline"):
        summarise([fiq[0], task("fashioniq-original", "shirt", ("R@10",))], per_task)


def test_configuration_errors() -> None:
    with pytest.raises(ValueError, match="every_n_epochs must be a positive int"):
        RetrievalEvaluation(every_n_epochs=0)
    model = FakeStage()
    with pytest.raises(RuntimeError, match="needs a datamodule with retrieval_tasks"):
        trainer(RetrievalEvaluation()).validate(model, dataloaders=FakeData().val_dataloader())
    data = FakeData()
    data.tasks["composed"] = [data.tasks["composed"][0], data.tasks["composed"][0]]
    with pytest.raises(ValueError, match=r"share the key\(s\) \['toy-a/x'\]"):
        trainer(RetrievalEvaluation()).validate(model, datamodule=data)
