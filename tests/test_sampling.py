"""The resumable training order (``ctiir.datamodules.sampling``): order and augmentation derived from
``(seed, epoch, pass)``, and a loader position that a fresh loader continues from exactly."""

from __future__ import annotations

import random
from typing import Any

import torch

from ctiir.datamodules.sampling import Draw, DrawnDataset, EpochSampler, ResumableLoader
from ctiir.datamodules.tasks import collate_retrieval


def make(record: int, index: int, rng: random.Random) -> dict[str, Any]:
    """An item whose content draws from both RNGs, as a random crop and a caption order do."""
    return {"id": record, "crop": float(torch.rand(())), "order": rng.random()}


def loader(n: int = 20, batch_size: int = 4, seed: int = 7, workers: int = 0, replicas: int = 1, rank: int = 0) -> ResumableLoader:
    dataset = DrawnDataset(list(range(n)), make)
    return ResumableLoader(
        dataset, batch_size=batch_size, sampler=EpochSampler(dataset, seed, replicas, rank), drop_last=True,
        collate_fn=collate_retrieval, num_workers=workers, generator=torch.Generator().manual_seed(seed),
    )


def epoch(dl: ResumableLoader, number: int, limit: int | None = None) -> list[dict[str, Any]]:
    dl.sampler.set_epoch(number)
    out = []
    for batch in dl:
        out.append(batch)
        if limit is not None and len(out) == limit:
            break
    return out


def ids(batches: list[dict[str, Any]]) -> list[list[int]]:
    return [b["id"].tolist() for b in batches]


def test_the_order_is_a_function_of_seed_and_epoch_only() -> None:
    a, b = loader(), loader()
    torch.manual_seed(123)  # the process-wide RNG plays no part
    first = epoch(a, 0)
    assert ids(first) == ids(epoch(b, 0))
    assert ids(epoch(a, 1)) != ids(first), "each epoch is shuffled anew"
    assert ids(epoch(loader(seed=8), 0)) != ids(first)
    assert sorted(sum(ids(first), [])) == list(range(20)), "every item once per epoch"


def test_augmentation_randomness_comes_from_the_draw_not_the_global_rng() -> None:
    dataset = DrawnDataset(list(range(5)), make)
    torch.manual_seed(0)
    one = dataset[Draw(3, 42)]
    state = torch.get_rng_state()
    torch.manual_seed(999)
    assert dataset[Draw(3, 42)] == one
    torch.manual_seed(0)
    dataset[Draw(3, 42)]
    assert torch.equal(torch.get_rng_state(), state), "building an item leaves the global RNG where it was"
    assert dataset[Draw(3, 43)] != one and dataset[3]["id"] == 3


def test_a_fresh_loader_continues_mid_epoch_from_the_saved_position() -> None:
    straight = loader()
    epoch(straight, 0)
    expected = epoch(straight, 1)
    interrupted = loader()
    epoch(interrupted, 0)
    done = epoch(interrupted, 1, limit=2)
    state = interrupted.state_dict()
    assert state == {"epoch": 1, "pass": 0, "batches": 2}
    resumed = loader()
    resumed.load_state_dict(state)
    rest = epoch(resumed, 1)
    assert ids(done + rest) == ids(expected)
    assert [b["crop"].tolist() for b in done + rest] == [b["crop"].tolist() for b in expected]
    assert [b["order"].tolist() for b in done + rest] == [b["order"].tolist() for b in expected]


def test_a_position_at_the_end_of_an_epoch_resumes_with_the_next_epoch() -> None:
    straight = loader()
    epoch(straight, 0)
    expected = epoch(straight, 1)
    first = loader()
    epoch(first, 0)
    resumed = loader()
    resumed.load_state_dict(first.state_dict())
    assert ids(epoch(resumed, 1)) == ids(expected)


def test_a_loader_restarted_within_an_epoch_draws_a_new_pass_and_resumes_in_it() -> None:
    """``max_size_cycle`` restarts the shorter loader inside an epoch: each restart is a new pass."""
    straight = loader()
    straight.sampler.set_epoch(0)
    passes = [ids(list(straight)), ids(list(straight))]
    assert passes[0] != passes[1]
    cut = loader()
    cut.sampler.set_epoch(0)
    list(cut)
    partial = []
    for batch in cut:
        partial.append(batch)
        if len(partial) == 3:
            break
    resumed = loader()
    resumed.load_state_dict(cut.state_dict())
    resumed.sampler.set_epoch(0)
    assert ids(partial) + ids(list(resumed)) == passes[1]


def test_worker_processes_build_the_same_items() -> None:
    assert [b["crop"].tolist() for b in epoch(loader(workers=2), 1)] == [b["crop"].tolist() for b in epoch(loader(), 1)]


def test_ranks_get_disjoint_shards_of_one_order() -> None:
    shards = [sum(ids(epoch(loader(n=16, batch_size=2, replicas=2, rank=r), 3)), []) for r in (0, 1)]
    assert not set(shards[0]) & set(shards[1]) and sorted(shards[0] + shards[1]) == list(range(16))


def test_teardown_after_fit_lets_the_persistent_workers_stop(synth_root) -> None:
    """The datamodule keeps its training loaders for ``state_dict``; after ``fit`` it lets them go, so their
    persistent workers stop instead of living as long as the datamodule."""
    import gc
    import multiprocessing as mp

    from ctiir.backbones import build_backbone
    from ctiir.datamodules import SyntheticDataModule
    from ctiir.datamodules.request import DataRequest

    data = SyntheticDataModule(str(synth_root), size="tiny", batch_size=8, num_workers=1)
    data.serve(DataRequest(sources={"main": "triplets"}, backbone=build_backbone("tiny")))
    data.setup("fit")
    train = data.train_dataloader()
    next(iter(train))
    assert mp.active_children(), "a worker serves the pass"
    assert data.state_dict()["train_positions"]
    del train
    gc.collect()
    assert mp.active_children(), "the datamodule still holds the loader (its position is saved with checkpoints)"
    data.teardown("fit")
    gc.collect()
    assert not mp.active_children()
    assert data.state_dict() == {}
