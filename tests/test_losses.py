"""ContrastiveLoss: a plain nn.Module, tested without Lightning against a hand-written reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ctiir.losses import ContrastiveLoss, ids_to_tensor


def reference_infonce(q, k, ids, scale, offset=0):
    """Per-query log-softmax over keys, dropping same-id keys other than the positive."""
    losses = []
    for i in range(q.shape[0]):
        pos = offset + i
        keep = [j for j in range(k.shape[0]) if j == pos or ids[j] != ids[pos]]
        logits = scale * torch.stack([q[i] @ k[j] for j in keep])
        losses.append(-F.log_softmax(logits, 0)[keep.index(pos)])
    return torch.stack(losses).mean()


def unit(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_matches_reference_with_false_negative_masking():
    q, k = unit(6, 8, 0), unit(6, 8, 1)
    ids = torch.tensor([1, 2, 1, 3, 4, 2])
    loss = ContrastiveLoss(init_logit_scale=math.log(10.0))
    got = loss(q, k, ids)
    want = reference_infonce(q, k, ids, 10.0)
    assert torch.allclose(got, want, atol=1e-5)
    unmasked = reference_infonce(q, k, torch.arange(6), 10.0)
    assert not torch.allclose(got, unmasked, atol=1e-4), "masking must change the loss when ids repeat"


def test_local_rows_against_global_keys_equal_the_full_batch_loss():
    """What a rank computes (its rows, all keys, its offset) averages to the single-process loss."""
    q, k = unit(8, 4, 2), unit(8, 4, 3)
    ids = torch.tensor([0, 1, 2, 3, 0, 5, 6, 7])
    loss = ContrastiveLoss(init_logit_scale=math.log(5.0))
    full = loss(q, k, ids)
    halves = [loss(q[:4], k, ids, offset=0), loss(q[4:], k, ids, offset=4)]
    assert torch.allclose(full, sum(halves) / 2, atol=1e-6)


def test_symmetric_adds_the_reverse_direction():
    q, k = unit(5, 4, 4), unit(5, 4, 5)
    ids = torch.arange(5)
    loss = ContrastiveLoss(init_logit_scale=0.0)
    sym = loss(q, k, ids, symmetric=True, queries_all=q, query_ids_all=ids)
    want = (reference_infonce(q, k, ids, 1.0) + reference_infonce(k, q, ids, 1.0)) / 2
    assert torch.allclose(sym, want, atol=1e-5)


def test_logit_scale_is_learnable_and_clamped():
    loss = ContrastiveLoss(init_logit_scale=10.0)
    assert loss.scale().item() == pytest.approx(100.0)
    q, k = unit(4, 4, 6), unit(4, 4, 7)
    loss2 = ContrastiveLoss()
    loss2(q, k).backward()
    assert loss2.logit_scale.grad is not None and torch.isfinite(loss2.logit_scale.grad)
    frozen = ContrastiveLoss(learnable=False)
    assert not frozen.logit_scale.requires_grad


def test_training_the_loss_aligns_pairs():
    """A real behaviour check: optimising embeddings under the loss makes the positives rank first."""
    torch.manual_seed(0)
    q = torch.randn(16, 8, requires_grad=True)
    k = torch.randn(16, 8, requires_grad=True)
    loss_fn = ContrastiveLoss()
    opt = torch.optim.Adam([q, k, *loss_fn.parameters()], lr=0.05)
    first = None
    for _ in range(100):
        loss = loss_fn(F.normalize(q, dim=-1), F.normalize(k, dim=-1))
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 4
    top1 = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).T).argmax(1)
    assert (top1 == torch.arange(16)).float().mean() > 0.9


def test_bad_shapes_and_offsets_are_clear_errors():
    loss = ContrastiveLoss()
    with pytest.raises(ValueError, match="must be"):
        loss(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(ValueError, match="offset"):
        loss(torch.randn(3, 4), torch.randn(4, 4), offset=2)
    with pytest.raises(ValueError, match="queries_all"):
        loss(torch.randn(3, 4), torch.randn(3, 4), symmetric=True)


def test_ids_to_tensor_is_stable_for_strings():
    a = ids_to_tensor(["B00X", "B00Y", "B00X"])
    assert a[0] == a[2] and a[0] != a[1]
    assert torch.equal(a, ids_to_tensor(["B00X", "B00Y", "B00X"]))
    assert (a >= 0).all()
