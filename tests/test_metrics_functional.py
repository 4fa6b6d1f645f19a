"""The functional Recall@K core against independent references: a full sort written here, and torchmetrics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torchmetrics.retrieval import RetrievalRecall

from ctiir.metrics import functional
from ctiir.metrics.functional import recall_at_k, retrieval_ranks, subset_ranks


# ---------------------------------------------------------------------------------------------- data
def quantised(n: int, generator: torch.Generator, dim: int = 16) -> torch.Tensor:
    """Rows of +-1 in 16 dimensions: norm 4 exactly, so normalised scores are exact multiples of 1/16 and
    ties between *different* rows are frequent and exact whatever the summation order."""
    return torch.randint(0, 2, (n, dim), generator=generator).float() * 2 - 1


def make_data(
    kind: str, num_queries: int, size: int, seed: int, duplicates: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if kind == "quantised":
        queries, gallery = quantised(num_queries, g), quantised(size, g)
    else:
        queries, gallery = torch.randn(num_queries, 8, generator=g), torch.randn(size, 8, generator=g)
    if duplicates:  # exact copies of gallery rows, placed at random positions: ties with the copied item
        src = torch.randint(0, size, (duplicates,), generator=g)
        gallery = torch.cat([gallery, gallery[src]])
        gallery = gallery[torch.randperm(gallery.shape[0], generator=g)]
    target = torch.randint(0, gallery.shape[0], (num_queries,), generator=g)
    return queries, gallery, target


def random_exclude(target: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """One excluded item per query (never the target), some queries with none (-1)."""
    g = torch.Generator().manual_seed(seed)
    exclude = torch.randint(0, size, target.shape, generator=g)
    exclude = torch.where(exclude == target, (exclude + 1) % size, exclude)
    none = torch.rand(target.shape, generator=g) < 0.25
    return torch.where(none, torch.full_like(exclude, -1), exclude)


def score_matrix(queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """Cosine scores pair by pair in float64 (an elementwise product summed per pair, no matrix kernel), so
    identical gallery rows get identical scores and ties in the data are ties here."""
    q = F.normalize(queries.float(), dim=-1).double()
    g = F.normalize(gallery.float(), dim=-1).double()
    return (q[:, None, :] * g[None, :, :]).sum(-1)


def brute_force_ranks(queries, gallery, target, exclude=None) -> torch.Tensor:
    """Reference semantics by a full sort: order by score, ties broken *against* the target (it goes after
    every equal item), drop the excluded item from the list, then read off the target's position."""
    scores = score_matrix(queries, gallery).tolist()
    ranks = []
    for i, row in enumerate(scores):
        t = int(target[i])
        order = sorted(range(len(row)), key=lambda j, row=row, t=t: (-row[j], j == t))
        if exclude is not None and int(exclude[i]) >= 0:
            order.remove(int(exclude[i]))
        ranks.append(order.index(t))
    return torch.tensor(ranks)


def brute_force_subset_ranks(queries, gallery, target, members, exclude=None) -> torch.Tensor:
    scores = score_matrix(queries, gallery).tolist()
    ranks = []
    for i, row in enumerate(scores):
        t = int(target[i])
        group = [int(m) for m in members[i] if int(m) >= 0]
        if exclude is not None and int(exclude[i]) >= 0 and int(exclude[i]) in group:
            group.remove(int(exclude[i]))
        order = sorted(group, key=lambda j, row=row, t=t: (-row[j], j == t))
        ranks.append(order.index(t))
    return torch.tensor(ranks)


# ---------------------------------------------------------------------------------------------- against a full sort
@pytest.mark.parametrize("kind", ["quantised", "normal"])
@pytest.mark.parametrize("with_exclude", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 7, 1024])
def test_ranks_match_full_sort(kind: str, with_exclude: bool, chunk_size: int) -> None:
    queries, gallery, target = make_data(kind, num_queries=40, size=60, seed=3, duplicates=15)
    exclude = random_exclude(target, gallery.shape[0], seed=4) if with_exclude else None
    ranks = retrieval_ranks(queries, gallery, target, exclude, chunk_size=chunk_size)
    expected = brute_force_ranks(queries, gallery, target, exclude)
    assert ranks.dtype == torch.long
    assert torch.equal(ranks, expected)
    if kind == "quantised":  # the data really has ties between different items, so the tie rule was exercised
        scores = score_matrix(queries, gallery)
        tied = (scores == scores.gather(1, target[:, None])).sum(1) > 1
        assert tied.sum() > 10


def test_ties_count_against_the_target() -> None:
    gallery = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])  # items 0, 1 and 3 all score 1
    queries = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    ranks = retrieval_ranks(queries, gallery, torch.tensor([1, 2]))
    assert ranks.tolist() == [2, 3]  # two equal items rank above item 1; all three above item 2


@pytest.mark.parametrize("chunk_size", [1, 5])
def test_copies_of_the_target_tie_with_it_whatever_the_kernel(chunk_size: int) -> None:
    # Every item has a copy and every target is a copy. A one-row product (GEMV) rounds copies apart when
    # they sit at different offsets within the kernel's column blocks (37 is not a multiple of the block).
    g = torch.Generator().manual_seed(12)
    base = torch.randn(37, 64, generator=g)
    gallery = torch.cat([base, base])
    queries = torch.randn(300, 64, generator=g)
    target = torch.randint(37, 74, (300,), generator=g)
    ranks = retrieval_ranks(queries, gallery, target, chunk_size=chunk_size)
    assert torch.equal(ranks, brute_force_ranks(queries, gallery, target))
    assert (ranks % 2 == 1).all()  # the copy (and each copy pair above) ranks above the target: odd ranks


def test_exclusion_moves_items_below_up_one_place() -> None:
    # Scores for the query (direction (1, 0)): item 0: 1.0, item 1: 0.8, item 2: 0.6, item 3: 0.0
    gallery = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    queries = torch.tensor([[1.0, 0.0]] * 4)
    target = torch.tensor([2, 2, 2, 3])
    no_exclusion = retrieval_ranks(queries, gallery, target)
    assert no_exclusion.tolist() == [2, 2, 2, 3]
    excluded = retrieval_ranks(queries, gallery, target, torch.tensor([0, 3, -1, 1]))
    # excluding an item above the target lifts it one place; one below (or none) changes nothing
    assert excluded.tolist() == [1, 2, 2, 2]


def test_half_precision_inputs_rank_in_float32() -> None:
    queries, gallery, target = make_data("normal", 30, 50, seed=5)
    q16, g16 = queries.bfloat16(), gallery.to(torch.float16)
    ranks = retrieval_ranks(q16, g16, target)
    assert torch.equal(ranks, brute_force_ranks(q16.float(), g16.float(), target))


def test_autocast_and_fast_matmul_settings_do_not_leak_in() -> None:
    g = torch.Generator().manual_seed(13)
    # tight clusters: neighbours score within ~1e-4 of each other, far below bf16's resolution near 1.0
    gallery = torch.randn(30, 8, generator=g)[torch.randint(0, 30, (300,), generator=g)] + 0.01 * torch.randn(300, 8, generator=g)
    target = torch.randint(0, 300, (200,), generator=g)
    queries = gallery[target] + 0.02 * torch.randn(200, 8, generator=g)
    members = torch.stack([target, (target + 1) % 300, (target + 2) % 300], dim=1)
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ranks = retrieval_ranks(queries, gallery, target)
            sranks = subset_ranks(queries, gallery, target, members)
            bf16_scores = F.normalize(queries, dim=-1) @ F.normalize(gallery, dim=-1).t()
        assert torch.get_float32_matmul_precision() == "medium"  # the caller's setting is restored
    finally:
        torch.set_float32_matmul_precision(previous)
    # compare where float32 can resolve the order: no other item within 1e-6 of the target's score
    scores = score_matrix(queries, gallery)
    gap = (scores - scores.gather(1, target[:, None])).abs()
    gap[torch.arange(200), target] = 1.0
    clear = gap.min(dim=1).values > 1e-6
    assert clear.sum() > 150
    assert torch.equal(ranks[clear], brute_force_ranks(queries, gallery, target)[clear])
    assert torch.equal(sranks[clear], brute_force_subset_ranks(queries, gallery, target, members)[clear])
    # and bf16 products really would have ranked differently: the check above can fail
    assert bf16_scores.dtype == torch.bfloat16
    bf16_ranks = (bf16_scores >= bf16_scores.gather(1, target[:, None])).sum(1) - 1
    assert not torch.equal(bf16_ranks[clear], ranks[clear])


def test_subset_ranks_match_full_sort() -> None:
    queries, gallery, target = make_data("quantised", num_queries=50, size=40, seed=6, duplicates=10)
    g = torch.Generator().manual_seed(7)
    size = gallery.shape[0]
    members = torch.full((50, 6), -1)
    exclude = torch.full((50,), -1)
    for i in range(50):
        count = int(torch.randint(2, 7, (1,), generator=g))  # groups of 2..6, -1-padded to width 6
        others = [int(j) for j in torch.randperm(size, generator=g) if int(j) != int(target[i])][: count - 1]
        group = others + [int(target[i])]
        group = [group[j] for j in torch.randperm(len(group), generator=g).tolist()]
        members[i, : len(group)] = torch.tensor(group)
        if i % 3 == 0:
            exclude[i] = others[0]  # the reference: a member
        elif i % 3 == 1:
            exclude[i] = next(j for j in range(size) if j not in group)  # not a member: no effect
    for chunk_size in (1, 4, 1024):
        ranks = subset_ranks(queries, gallery, target, members, exclude, chunk_size=chunk_size)
        assert torch.equal(ranks, brute_force_subset_ranks(queries, gallery, target, members, exclude))
    assert torch.equal(
        subset_ranks(queries, gallery, target, members), brute_force_subset_ranks(queries, gallery, target, members)
    )


def test_subset_rank_cirr_example() -> None:
    # Six members including the reference (item 0, scoring highest); target item 2 is third before removal.
    gallery = torch.eye(8)[:6]  # one-hot items: item j scores the query's j-th entry
    query = torch.tensor([[6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0, 0.0]])
    members = torch.tensor([[0, 1, 2, 3, 4, 5]])
    assert subset_ranks(query, gallery, torch.tensor([2]), members).tolist() == [2]
    assert subset_ranks(query, gallery, torch.tensor([2]), members, torch.tensor([0])).tolist() == [1]
    assert recall_at_k(subset_ranks(query, gallery, torch.tensor([2]), members, torch.tensor([0])), [1, 2, 3]) == {
        1: 0.0,
        2: 100.0,
        3: 100.0,
    }


# ---------------------------------------------------------------------------------------------- against torchmetrics
@pytest.mark.parametrize("k", [1, 5, 10, 50])
def test_recall_matches_torchmetrics_on_shifted_scores(k: int) -> None:
    queries, gallery, target = make_data("normal", num_queries=64, size=200, seed=8)
    ours = recall_at_k(retrieval_ranks(queries, gallery, target, chunk_size=16), [k])[k]
    # torchmetrics >= 1.8 ignores targets scoring <= 0: shift cosines into (1, 3). No ties in this data.
    scores = score_matrix(queries, gallery) + 2
    relevant = torch.zeros_like(scores, dtype=torch.bool)
    relevant[torch.arange(64), target] = True
    indexes = torch.arange(64)[:, None].expand_as(scores)
    reference = RetrievalRecall(top_k=k)
    reference.update(scores.flatten(), relevant.flatten(), indexes.flatten())
    assert ours == pytest.approx(100 * float(reference.compute()), abs=1e-6)
    if k == 50:  # the comparison is not between two trivial 0s or 100s
        assert 0 < ours < 100


def test_recall_at_k_values() -> None:
    ranks = torch.tensor([0, 1, 5, 10])
    assert recall_at_k(ranks, (1, 5, 10, 11)) == {1: 25.0, 5: 50.0, 10: 75.0, 11: 100.0}


# ---------------------------------------------------------------------------------------------- properties
tie_data = st.tuples(st.integers(1, 25), st.integers(2, 40), st.integers(0, 2**31 - 1), st.booleans())


@settings(max_examples=40, deadline=None)
@given(tie_data, st.lists(st.integers(1, 60), min_size=2, max_size=6))
def test_recall_is_monotone_in_k(data, ks) -> None:
    num_queries, size, seed, quant = data
    queries, gallery, target = make_data("quantised" if quant else "normal", num_queries, size, seed)
    values = recall_at_k(retrieval_ranks(queries, gallery, target), sorted(set(ks)))
    ordered = [values[k] for k in sorted(values)]
    assert ordered == sorted(ordered)
    assert all(0.0 <= v <= 100.0 for v in ordered)
    if max(values) >= size:
        assert values[max(values)] == 100.0


@settings(max_examples=40, deadline=None)
@given(tie_data, st.integers(1, 30), st.booleans())
def test_ranks_do_not_depend_on_chunk_size(data, chunk_size, with_exclude) -> None:
    num_queries, size, seed, quant = data
    queries, gallery, target = make_data("quantised" if quant else "normal", num_queries, size, seed)
    exclude = random_exclude(target, size, seed + 1) if with_exclude else None
    whole = retrieval_ranks(queries, gallery, target, exclude, chunk_size=10_000)
    assert torch.equal(retrieval_ranks(queries, gallery, target, exclude, chunk_size=chunk_size), whole)


@settings(max_examples=40, deadline=None)
@given(tie_data, st.booleans())
def test_ranks_do_not_depend_on_gallery_order(data, with_exclude) -> None:
    num_queries, size, seed, quant = data
    queries, gallery, target = make_data("quantised" if quant else "normal", num_queries, size, seed, duplicates=3)
    size = gallery.shape[0]
    exclude = random_exclude(target, size, seed + 1) if with_exclude else None
    perm = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    position = torch.empty_like(perm)
    position[perm] = torch.arange(size)  # item j of the original gallery is at position[j] after permuting
    permuted_exclude = None if exclude is None else torch.where(exclude >= 0, position[exclude.clamp(min=0)], exclude)
    ranks = retrieval_ranks(queries, gallery, target, exclude)
    assert torch.equal(retrieval_ranks(queries, gallery[perm], position[target], permuted_exclude), ranks)


# ---------------------------------------------------------------------------------------------- errors
def test_errors_name_the_fault() -> None:
    queries, gallery, target = make_data("normal", 4, 6, seed=9)
    with pytest.raises(ValueError, match="embedding size"):
        retrieval_ranks(queries, torch.randn(6, 5), target)
    with pytest.raises(ValueError, match=r"queries must be \(Q, D\)"):
        retrieval_ranks(queries[0], gallery, target)
    with pytest.raises(ValueError, match=r"target_index must have shape \(4,\)"):
        retrieval_ranks(queries, gallery, target[:3])
    with pytest.raises(IndexError, match=r"target_index\[2\] = 6 is out of range"):
        retrieval_ranks(queries, gallery, torch.tensor([0, 1, 6, 2]))
    with pytest.raises(IndexError, match=r"exclude_index\[1\] = -2"):
        retrieval_ranks(queries, gallery, target, torch.tensor([-1, -2, -1, -1]))
    clash = torch.full((4,), -1)
    clash[3] = target[3]
    with pytest.raises(ValueError, match="query 3: exclude_index equals its target_index"):
        retrieval_ranks(queries, gallery, target, clash)
    with pytest.raises(ValueError, match="chunk_size"):
        retrieval_ranks(queries, gallery, target, chunk_size=0)
    with pytest.raises(ValueError, match="gallery is empty"):
        retrieval_ranks(queries, gallery[:0], target)
    with pytest.raises(TypeError, match="integer"):
        retrieval_ranks(queries, gallery, target.float())
    with pytest.raises(ValueError, match="non-empty"):
        recall_at_k(torch.tensor([], dtype=torch.long), [1])
    with pytest.raises(ValueError, match="positive int; got 0"):
        recall_at_k(torch.tensor([0, 1]), [1, 0])


def test_subset_errors_name_the_query() -> None:
    queries, gallery, _ = make_data("normal", 2, 6, seed=10)
    target = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"query 1: its target \(gallery index 1\) is not among its members"):
        subset_ranks(queries, gallery, target, torch.tensor([[0, 2, -1], [0, 2, 3]]))
    with pytest.raises(ValueError, match="query 0: member_index lists a gallery item twice"):
        subset_ranks(queries, gallery, target, torch.tensor([[0, 2, 2], [1, 2, -1]]))
    with pytest.raises(IndexError, match=r"member_index\[1, 2\] = 9"):
        subset_ranks(queries, gallery, target, torch.tensor([[0, 2, -1], [1, 2, 9]]))
    with pytest.raises(ValueError, match=r"member_index must have shape \(2, M\)"):
        subset_ranks(queries, gallery, target, torch.tensor([0, 1]))


# ---------------------------------------------------------------------------------------------- gallery tiles
@pytest.mark.parametrize("kind", ["quantised", "normal"])
@pytest.mark.parametrize("chunk_size", [1, 6, 1024])
def test_ranks_match_full_sort_across_gallery_tiles(monkeypatch: pytest.MonkeyPatch, kind: str, chunk_size: int) -> None:
    # Tiles of 7 items: targets, their copies and excluded items fall in different tiles from each other.
    monkeypatch.setattr(functional, "_GALLERY_TILE", 7)
    queries, gallery, target = make_data(kind, num_queries=40, size=60, seed=14, duplicates=20)
    exclude = random_exclude(target, gallery.shape[0], seed=15)
    for ex in (None, exclude):
        ranks = retrieval_ranks(queries, gallery, target, ex, chunk_size=chunk_size)
        assert torch.equal(ranks, brute_force_ranks(queries, gallery, target, ex))
    # the case is not trivial: some target has a copy in another tile, so its tie crosses tiles
    copies = (gallery[None] == gallery[target][:, None]).all(-1)
    tiles = torch.arange(gallery.shape[0]) // 7
    assert ((copies.sum(1) > 1) & (copies & (tiles[None] != tiles[target][:, None])).any(1)).any()


def test_non_finite_rows_are_named_in_any_tile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(functional, "_GALLERY_TILE", 7)
    queries, gallery, target = make_data("normal", 5, 30, seed=16)
    bad = gallery.clone()
    bad[20, 3] = float("nan")
    with pytest.raises(ValueError, match="gallery row 20 holds NaN or infinite values"):
        retrieval_ranks(queries, bad, target)
    bad = queries.clone()
    bad[4, 0] = float("inf")
    with pytest.raises(ValueError, match="queries row 4 holds NaN or infinite values"):
        retrieval_ranks(bad, gallery, target)
    # huge but finite values overflow a row sum, which only screens: they are not refused
    huge = gallery.clone()
    huge[11] = 3e38
    assert retrieval_ranks(queries, huge, target).shape == (5,)
