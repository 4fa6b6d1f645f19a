"""``RecallAtK`` (torchmetrics) equals the functional core, whatever the batching, order and padding."""

from __future__ import annotations

import pytest
import torch

from ctiir.metrics import RecallAtK, recall_at_k, retrieval_ranks, subset_ranks


def make_problem(seed: int = 0, num_queries: int = 30, size: int = 25, dim: int = 6) -> dict[str, torch.Tensor]:
    """A CIRR-like problem with gallery ids that are not 0..G-1, references and 4-member groups."""
    g = torch.Generator().manual_seed(seed)
    gallery = torch.randn(size, dim, generator=g)
    gallery_ids = torch.randperm(1000, generator=g)[:size] + 7  # arbitrary distinct ids
    queries = torch.randn(num_queries, dim, generator=g)
    target_pos = torch.randint(0, size, (num_queries,), generator=g)
    ref_pos = (target_pos + torch.randint(1, size, (num_queries,), generator=g)) % size  # never the target
    members = torch.full((num_queries, 5), -1)
    for i in range(num_queries):
        others = [int(j) for j in torch.randperm(size, generator=g) if int(j) not in (int(target_pos[i]), int(ref_pos[i]))]
        group = [int(target_pos[i]), int(ref_pos[i]), *others[:2]]
        members[i, :4] = torch.tensor(group)[torch.randperm(4, generator=g)]
    return {
        "gallery": gallery,
        "gallery_ids": gallery_ids,
        "queries": queries,
        "query_ids": torch.arange(num_queries) * 3 + 100,
        "target_pos": target_pos,
        "ref_pos": ref_pos,
        "member_pos": members,
    }


def ids_of(p: dict[str, torch.Tensor], positions: torch.Tensor) -> torch.Tensor:
    return torch.where(positions >= 0, p["gallery_ids"][positions.clamp(min=0)], positions)


def expected(p: dict[str, torch.Tensor], ks, subset_ks=(), exclude=False) -> dict[str, float]:
    ex = p["ref_pos"] if exclude else None
    out = {f"R@{k}": v for k, v in recall_at_k(retrieval_ranks(p["queries"], p["gallery"], p["target_pos"], ex), ks).items()}
    if subset_ks:
        sr = subset_ranks(p["queries"], p["gallery"], p["target_pos"], p["member_pos"], ex)
        out.update({f"Rsubset@{k}": v for k, v in recall_at_k(sr, subset_ks).items()})
    return out


def feed(metric: RecallAtK, p: dict[str, torch.Tensor], query_rows, gallery_rows, batch: int, members: bool = True) -> None:
    """Gallery and query batches interleaved, in the given row orders (which may repeat rows)."""
    query_rows, gallery_rows = torch.as_tensor(query_rows), torch.as_tensor(gallery_rows)
    for start in range(0, max(len(query_rows), len(gallery_rows)), batch):
        g = gallery_rows[start : start + batch]
        if len(g):
            metric.update_gallery(p["gallery"][g], p["gallery_ids"][g])
        q = query_rows[start : start + batch]
        if len(q):
            metric.update(
                p["queries"][q],
                p["query_ids"][q],
                ids_of(p, p["target_pos"][q]),
                ids_of(p, p["ref_pos"][q]),
                ids_of(p, p["member_pos"][q]) if members else None,
            )


def as_floats(result: dict[str, torch.Tensor]) -> dict[str, float]:
    assert all(isinstance(v, torch.Tensor) and v.dtype == torch.float32 and v.ndim == 0 for v in result.values())
    return {k: float(v) for k, v in result.items()}


@pytest.mark.parametrize("exclude", [False, True])
def test_equals_functional(exclude: bool) -> None:
    p = make_problem()
    metric = RecallAtK(ks=(1, 3, 10), subset_ks=(1, 2), exclude_reference=exclude, chunk_size=4)
    feed(metric, p, range(30), range(25), batch=7)
    got = as_floats(metric.compute())
    want = expected(p, (1, 3, 10), (1, 2), exclude)
    assert got == pytest.approx(want, abs=1e-4)
    assert set(got) == {"R@1", "R@3", "R@10", "Rsubset@1", "Rsubset@2"}
    assert len({round(v, 3) for v in got.values()}) > 2  # not a degenerate all-0 / all-100 problem


def test_exclusion_changes_the_result() -> None:
    p = make_problem(seed=1)
    scores = torch.nn.functional.normalize(p["queries"], dim=1) @ torch.nn.functional.normalize(p["gallery"], dim=1).t()
    scores[torch.arange(30), p["target_pos"]] = -2
    p["ref_pos"] = scores.argmax(1)  # each reference is the best-scoring non-target: it sits above the target
    results = []
    for exclude in (False, True):
        metric = RecallAtK(ks=(1, 5), exclude_reference=exclude)
        feed(metric, p, range(30), range(25), batch=30, members=False)
        results.append(as_floats(metric.compute()))
    assert results[0]["R@1"] == 0.0  # the reference always outranks the target when it stays in the ranking
    assert results[1] == pytest.approx(expected(p, (1, 5), exclude=True), abs=1e-4)
    assert results[1]["R@1"] > 0.0 and results[1]["R@5"] >= results[0]["R@5"]


def test_padding_repeats_and_order_do_not_count_twice() -> None:
    p = make_problem(seed=2)
    clean = RecallAtK(ks=(1, 5, 10), subset_ks=(1,), exclude_reference=True)
    feed(clean, p, range(30), range(25), batch=30)
    g = torch.Generator().manual_seed(3)
    # DistributedSampler-style padding repeats the first items; here also random repeats and a shuffled order
    query_rows = torch.cat([torch.randperm(30, generator=g), torch.arange(5), torch.randint(0, 30, (10,), generator=g)])
    gallery_rows = torch.cat([torch.randperm(25, generator=g), torch.arange(3), torch.randint(0, 25, (9,), generator=g)])
    padded = RecallAtK(ks=(1, 5, 10), subset_ks=(1,), exclude_reference=True)
    feed(padded, p, query_rows, gallery_rows, batch=4)
    assert as_floats(padded.compute()) == pytest.approx(as_floats(clean.compute()), abs=1e-5)
    # counting the repeats would change the result: the de-duplication is what keeps it exact
    counted = recall_at_k(
        retrieval_ranks(p["queries"][query_rows], p["gallery"], p["target_pos"][query_rows], p["ref_pos"][query_rows]),
        (1, 5, 10),
    )
    assert {f"R@{k}": v for k, v in counted.items()} != pytest.approx(as_floats(clean.compute()), abs=1e-5)


def test_half_precision_embeddings() -> None:
    p = make_problem(seed=4)
    metric = RecallAtK(ks=(1, 5))
    p16 = dict(p, queries=p["queries"].bfloat16(), gallery=p["gallery"].bfloat16())
    feed(metric, p16, range(30), range(25), batch=8, members=False)
    want = expected(dict(p, queries=p16["queries"].float(), gallery=p16["gallery"].float()), (1, 5))
    assert as_floats(metric.compute()) == pytest.approx(want, abs=1e-4)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_compute_sees_later_gallery_updates_and_reset() -> None:
    p = make_problem(seed=5)
    metric = RecallAtK(ks=(5,))
    feed(metric, p, range(30), range(25), batch=30, members=False)
    first = as_floats(metric.compute())
    assert first["R@5"] > 0.0
    # five copies of every query vector: each query now has 5 items scoring 1.0 above its target
    metric.update_gallery(p["queries"].repeat(5, 1), torch.arange(150) + 5000)
    second = as_floats(metric.compute())  # not a stale cached value
    assert second["R@5"] == 0.0
    metric.reset()
    with pytest.raises(ValueError, match="no queries were added"):
        metric.compute()


def test_errors_name_the_query_id() -> None:
    p = make_problem(seed=6)
    metric = RecallAtK(ks=(1,))
    feed(metric, p, range(5), range(25), batch=5, members=False)
    metric.update(p["queries"][:1], torch.tensor([999]), torch.tensor([123456]))
    with pytest.raises(ValueError, match="query id 999: its target id 123456 is not in the gallery"):
        metric.compute()

    metric = RecallAtK(ks=(1,), exclude_reference=True)
    feed(metric, p, range(5), range(25), batch=5, members=False)
    metric.update(p["queries"][:1], torch.tensor([998]), p["gallery_ids"][:1], torch.tensor([424242]))
    with pytest.raises(ValueError, match="query id 998: its reference id 424242 is not in the gallery"):
        metric.compute()

    metric = RecallAtK(ks=(1,))
    feed(metric, p, range(5), range(25), batch=5, members=False)
    metric.update(p["queries"][:1], p["query_ids"][:1], p["gallery_ids"][3:4])  # same query id, new target
    with pytest.raises(ValueError, match=f"query id {int(p['query_ids'][0])} was added twice with different target ids"):
        metric.compute()


def test_reference_and_member_errors_name_the_query_id() -> None:
    p = make_problem(seed=8)
    metric = RecallAtK(ks=(1,), exclude_reference=True)
    feed(metric, p, range(5), range(25), batch=5, members=False)
    metric.update(p["queries"][:1], torch.tensor([777]), p["gallery_ids"][2:3], p["gallery_ids"][2:3])
    with pytest.raises(ValueError, match="query id 777: its reference id equals its target id"):
        metric.compute()
    metric = RecallAtK(ks=(1,), subset_ks=(1,))
    feed(metric, p, range(5), range(25), batch=5)
    members = torch.tensor([list(p["gallery_ids"][5:9]) + [-1]])
    metric.update(p["queries"][:1], torch.tensor([778]), p["gallery_ids"][2:3], None, members)
    with pytest.raises(ValueError, match="query id 778: its target id .* is not among its member ids"):
        metric.compute()


def test_update_errors() -> None:
    p = make_problem(seed=7)
    with pytest.raises(ValueError, match="subset_ks must hold positive ints"):
        RecallAtK(subset_ks=(0,))
    with pytest.raises(ValueError, match="ks is empty"):
        RecallAtK(ks=())
    metric = RecallAtK(ks=(1,), subset_ks=(1,))
    with pytest.raises(ValueError, match=r"query_ids must have shape \(3,\)"):
        metric.update(p["queries"][:3], p["query_ids"][:2], p["gallery_ids"][:3])
    with pytest.raises(TypeError, match="target_ids must be integer ids"):
        metric.update(p["queries"][:3], p["query_ids"][:3], torch.zeros(3))
    metric.update(p["queries"][:2], p["query_ids"][:2], p["gallery_ids"][:2], member_ids=p["gallery_ids"][:4].view(2, 2))
    with pytest.raises(ValueError, match="member_ids must be given in every update or in none"):
        metric.update(p["queries"][2:4], p["query_ids"][2:4], p["gallery_ids"][2:4])
    with pytest.raises(ValueError, match="member_ids width changed from 2 to 3"):
        metric.update(p["queries"][2:4], p["query_ids"][2:4], p["gallery_ids"][2:4], member_ids=torch.zeros(2, 3, dtype=torch.long))
    assert len(metric.query_ids) == 1  # rejected batches left no trace
    with pytest.raises(ValueError, match="no gallery items were added"):
        metric.compute()

    no_members = RecallAtK(ks=(1,), subset_ks=(1,))
    feed(no_members, p, range(5), range(25), batch=5, members=False)
    with pytest.raises(ValueError, match="needs member_ids"):
        no_members.compute()


# ---------------------------------------------------------------------------------------------- repeated ids
def test_a_repeated_id_with_another_embedding_is_an_error() -> None:
    p = make_problem(seed=9)
    qid0, gid3 = int(p["query_ids"][0]), int(p["gallery_ids"][3])

    metric = RecallAtK(ks=(1,))
    feed(metric, p, range(5), range(25), batch=5, members=False)
    # query 0's id, target and reference, but query 1's embedding
    metric.update(p["queries"][1:2], p["query_ids"][:1], ids_of(p, p["target_pos"][:1]), ids_of(p, p["ref_pos"][:1]))
    with pytest.raises(ValueError, match=f"query id {qid0} was added twice with different embeddings"):
        metric.compute()

    metric = RecallAtK(ks=(1,))
    feed(metric, p, range(5), range(25), batch=5, members=False)
    metric.update_gallery(p["gallery"][4:5], p["gallery_ids"][3:4])  # gallery item 3's id, item 4's embedding
    with pytest.raises(ValueError, match=f"gallery id {gid3} was added twice with different embeddings"):
        metric.compute()

    metric = RecallAtK(ks=(1,))
    feed(metric, p, range(5), range(25), batch=5, members=False)
    metric.update_gallery(torch.full((1, 6), float("nan")), p["gallery_ids"][3:4])  # a NaN repeat is not the same item
    with pytest.raises(ValueError, match=f"gallery id {gid3} was added twice with different embeddings .* nan apart"):
        metric.compute()


def test_repeats_within_rounding_are_dropped_and_the_tolerance_is_a_real_bound() -> None:
    p = make_problem(seed=10)
    clean = RecallAtK(ks=(1, 5, 10), exclude_reference=True)
    feed(clean, p, range(30), range(25), batch=30, members=False)
    want = as_floats(clean.compute())

    def with_repeat_at(distance: float) -> RecallAtK:
        """Every item fed once, then query 0 and gallery item 0 again, ``distance`` away once normalised."""
        metric = RecallAtK(ks=(1, 5, 10), exclude_reference=True)
        feed(metric, p, range(30), range(25), batch=8, members=False)
        for kind, emb in (("query", p["queries"][0]), ("gallery", p["gallery"][0])):
            unit = torch.nn.functional.normalize(emb, dim=0)
            other = torch.nn.functional.normalize(torch.randn(6, generator=torch.Generator().manual_seed(1)), dim=0)
            side = torch.nn.functional.normalize(other - (other @ unit) * unit, dim=0)  # orthogonal to the item
            repeat = (unit + distance * side) * 3.0  # a different scale: only the direction is compared
            if kind == "query":
                metric.update(repeat[None], p["query_ids"][:1], ids_of(p, p["target_pos"][:1]), ids_of(p, p["ref_pos"][:1]))
            else:
                metric.update_gallery(repeat[None], p["gallery_ids"][:1])
        return metric

    # within rounding (a batch of another size): dropped silently, the result is the clean one
    assert as_floats(with_repeat_at(1e-6).compute()) == pytest.approx(want, abs=1e-6)
    assert as_floats(with_repeat_at(0.005).compute()) == pytest.approx(want, abs=1e-6)
    # beyond the tolerance: an error naming the id (the query is checked first)
    with pytest.raises(ValueError, match=f"query id {int(p['query_ids'][0])} was added twice with different embeddings"):
        with_repeat_at(0.02).compute()
