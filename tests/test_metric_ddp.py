"""``RecallAtK`` across 2 CPU processes (gloo) equals the single-process result.

The processes are spawned (never an in-process DDP under pytest) and rendezvous over an explicit TCP
address, so MASTER_*/RANK variables of the calling environment play no part.
"""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler

from ctiir.metrics import RecallAtK

NUM_QUERIES, GALLERY_SIZE, DIM, WORLD = 37, 23, 8, 2  # odd sizes: the sampler pads one rank
OPTIONS = dict(ks=(1, 5, 10), subset_ks=(1, 2), exclude_reference=True, chunk_size=5)


def problem() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    gallery = torch.randn(GALLERY_SIZE, DIM, generator=g)
    gallery[3] = gallery[17]  # a copy in the gallery: ties must survive the sharding too
    queries = torch.randn(NUM_QUERIES, DIM, generator=g)
    target = torch.randint(0, GALLERY_SIZE, (NUM_QUERIES,), generator=g)
    reference = (target + torch.randint(1, GALLERY_SIZE, (NUM_QUERIES,), generator=g)) % GALLERY_SIZE
    members = torch.full((NUM_QUERIES, 4), -1)
    for i in range(NUM_QUERIES):
        rest = [int(j) for j in torch.randperm(GALLERY_SIZE, generator=g) if int(j) not in (int(target[i]), int(reference[i]))]
        members[i, :3] = torch.tensor([int(reference[i]), rest[0], int(target[i])])
    return {
        "gallery": gallery,
        "gallery_ids": torch.arange(GALLERY_SIZE) * 2 + 1,  # ids are not positions
        "queries": queries,
        "query_ids": torch.arange(NUM_QUERIES) + 500,
        "target": target,
        "reference": reference,
        "members": members,
    }


def feed(metric: RecallAtK, p: dict[str, torch.Tensor], query_rows: list[int], gallery_rows: list[int], batch: int) -> None:
    ids = p["gallery_ids"]
    for start in range(0, len(gallery_rows), batch):
        rows = torch.tensor(gallery_rows[start : start + batch])
        metric.update_gallery(p["gallery"][rows], ids[rows])
    for start in range(0, len(query_rows), batch):
        rows = torch.tensor(query_rows[start : start + batch])
        members = torch.where(p["members"][rows] >= 0, ids[p["members"][rows].clamp(min=0)], -1)
        metric.update(p["queries"][rows], p["query_ids"][rows], ids[p["target"][rows]], ids[p["reference"][rows]], members)


def worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=120)
    )
    try:
        p = problem()
        # queries: exactly what DistributedSampler(shuffle=False) gives each rank, padding repeats included
        query_rows = list(DistributedSampler(range(NUM_QUERIES), num_replicas=WORLD, rank=rank, shuffle=False))
        # gallery: uneven shards (15 and 8 items) that overlap by two repeated items
        gallery_rows = list(range(0, 15)) if rank == 0 else [*range(15, GALLERY_SIZE), 0, 7]
        metric = RecallAtK(**OPTIONS)
        feed(metric, p, query_rows, gallery_rows, batch=4 if rank == 0 else 6)  # different batch splits per rank
        result = {k: float(v) for k, v in metric.compute().items()}
        torch.save({"result": result, "query_rows": query_rows}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_two_process_recall_equals_single_process(tmp_path: Path) -> None:
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    outputs = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    p = problem()
    single = RecallAtK(**OPTIONS)
    feed(single, p, list(range(NUM_QUERIES)), list(range(GALLERY_SIZE)), batch=NUM_QUERIES)
    expected = {k: float(v) for k, v in single.compute().items()}

    # the sampler really padded (one query twice) and each rank saw only part of the data
    all_rows = outputs[0]["query_rows"] + outputs[1]["query_rows"]
    assert len(all_rows) == NUM_QUERIES + 1 and len(set(all_rows)) == NUM_QUERIES
    for out in outputs:
        assert out["result"] == pytest.approx(expected, abs=1e-4)
    assert set(expected) == {"R@1", "R@5", "R@10", "Rsubset@1", "Rsubset@2"}
    # a rank alone would be wrong: its shard misses most of the gallery
    alone = RecallAtK(**OPTIONS)
    with pytest.raises(ValueError, match="not in the gallery"):
        feed(alone, p, outputs[0]["query_rows"], list(range(0, 15)), batch=4)
        alone.compute()


def rounded_again(x: torch.Tensor, seed: int) -> torch.Tensor:
    """``x`` as another batch shape could round it: a few float32 ulps apart, not bit-identical."""
    return x * (1 + 1e-6 * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)))


def noisy_worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=120)
    )
    try:
        p = problem()
        ids = p["gallery_ids"]
        query_rows = list(DistributedSampler(range(NUM_QUERIES), num_replicas=WORLD, rank=rank, shuffle=False))
        padded = query_rows[-1] if rank == WORLD - 1 else None  # the sampler's repeat ends the last rank's shard
        gallery_rows = list(range(0, 15)) if rank == 0 else [*range(15, GALLERY_SIZE), 0, 7]
        # the padding repeat and the overlapping gallery items are encoded again on this rank, in another
        # batch: equal up to rounding, not bit for bit, as in a real DDP evaluation
        queries = p["queries"].clone()
        gallery = p["gallery"].clone()
        if padded is not None:
            queries[padded] = rounded_again(queries[padded], seed=1)
            gallery[[0, 7]] = rounded_again(gallery[[0, 7]], seed=2)
        metric = RecallAtK(**OPTIONS)
        feed(metric, dict(p, queries=queries, gallery=gallery), query_rows, gallery_rows, batch=5)
        result = {k: float(v) for k, v in metric.compute().items()}
        changed = padded is not None and not torch.equal(queries[padded], p["queries"][padded])

        # a gallery id that comes back with another item's embedding is an error on every rank
        clash = RecallAtK(**OPTIONS)
        feed(clash, p, query_rows, gallery_rows, batch=5)
        if rank == 1:
            clash.update_gallery(p["gallery"][6:7], ids[5:6])
        try:
            clash.compute()
            error = ""
        except ValueError as err:
            error = str(err)
        torch.save({"result": result, "changed": changed, "error": error}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_padding_repeats_equal_up_to_rounding_are_dropped_and_a_clash_is_an_error(tmp_path: Path) -> None:
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    mp.spawn(noisy_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    outputs = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    p = problem()
    single = RecallAtK(**OPTIONS)
    feed(single, p, list(range(NUM_QUERIES)), list(range(GALLERY_SIZE)), batch=NUM_QUERIES)
    expected = {k: float(v) for k, v in single.compute().items()}
    assert outputs[WORLD - 1]["changed"], "the padding repeat really differed from the original in its last bits"
    for out in outputs:
        assert out["result"] == pytest.approx(expected, abs=1e-4)  # dropped silently: the single-process result
        assert f"gallery id {int(p['gallery_ids'][5])} was added twice with different embeddings" in out["error"]
