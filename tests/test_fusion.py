"""The fusion contract, checked on every registered fusion, plus each fusion's own behaviour."""

from __future__ import annotations

import json
from argparse import ArgumentError
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from ctiir.fusion import AdaptiveWeighting, FixedSum, Fusion, Gated, build_fusion, list_fusions
from ctiir.fusion.registry import FUSIONS, register_fusion

D = 8
B = 6


def features(batch: int = B, dim: int = D, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    v, t, g = (F.normalize(torch.randn(batch, dim, generator=gen), dim=-1) for _ in range(3))
    return v, t, g


def make(name: str, embed_dim: int | None = D, seed: int = 0) -> Fusion:
    torch.manual_seed(seed)
    return build_fusion(name, embed_dim=embed_dim, **FUSIONS.test_kwargs(name))


def total_loss(fusion: Fusion, v: torch.Tensor, t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """A retrieval-like loss (in-batch InfoNCE of the query against the targets) plus the fusion's own."""
    q = fusion(v, t)
    loss = F.cross_entropy(q @ g.T / 0.1, torch.arange(len(q)))
    own = fusion.loss(v, t, g)
    return loss if own is None else loss + own


ALL = list_fusions()


def test_the_three_fusions_are_registered() -> None:
    assert {"fixed", "gated", "adaptive"} <= set(ALL)
    assert isinstance(build_fusion("gated", D), Gated)
    with pytest.raises(KeyError, match="known fusions: adaptive, fixed, gated"):
        build_fusion("nope", D)


# -- the contract, for every registered fusion ------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_forward_gives_unit_norm_queries(name: str) -> None:
    fusion = make(name)
    v, t, _ = features()
    q = fusion(v, t)
    assert q.shape == (B, D)
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(B))


@pytest.mark.parametrize("name", ALL)
def test_backward_reaches_every_parameter_with_finite_gradients(name: str) -> None:
    fusion = make(name).train()
    v, t, g = features()
    v.requires_grad_(True)
    t.requires_grad_(True)
    total_loss(fusion, v, t, g).backward()
    for param_name, param in fusion.named_parameters():
        assert param.grad is not None, f"{name}: {param_name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name}: {param_name} has a non-finite gradient"
    grads = [p.grad for p in fusion.parameters()] + [v.grad, t.grad]
    assert all(grad is not None and torch.isfinite(grad).all() for grad in grads)
    assert sum(float(grad.abs().sum()) for grad in grads) > 0


@pytest.mark.parametrize("name", ALL)
def test_bind_later_equals_binding_at_construction(name: str) -> None:
    unbound = make(name, embed_dim=None, seed=3)
    assert not unbound.is_bound and unbound.config["embed_dim"] is None
    v, t, _ = features()
    with pytest.raises(RuntimeError, match="not bound yet"):
        unbound(v, t)
    assert unbound.bind(D) is unbound and unbound.is_bound
    bound_now = make(name, embed_dim=D, seed=3)
    assert unbound.config == bound_now.config
    assert unbound.state_dict().keys() == bound_now.state_dict().keys()
    for key, value in bound_now.state_dict().items():
        torch.testing.assert_close(unbound.state_dict()[key], value, rtol=0, atol=0)


@pytest.mark.parametrize("name", ALL)
def test_rebinding_is_a_noop_for_the_same_size_and_an_error_for_another(name: str) -> None:
    fusion = make(name)
    before = {key: value.clone() for key, value in fusion.state_dict().items()}
    params_before = [id(p) for p in fusion.parameters()]
    assert fusion.bind(D) is fusion
    assert [id(p) for p in fusion.parameters()] == params_before
    assert all(torch.equal(before[key], value) for key, value in fusion.state_dict().items())
    with pytest.raises(ValueError, match=rf"embed_dim={D}.*embed_dim={D + 4}"):
        fusion.bind(D + 4)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("bad", [0, -3, True, 2.0, "8"])
def test_bad_embed_dim_is_refused_by_name(name: str, bad: Any) -> None:
    with pytest.raises(ValueError, match="embed_dim must be a positive int"):
        build_fusion(name, embed_dim=bad, **FUSIONS.test_kwargs(name))


@pytest.mark.parametrize("name", ALL)
def test_wrong_feature_shapes_are_refused_with_the_shapes(name: str) -> None:
    fusion = make(name)
    v, t, g = features()
    with pytest.raises(ValueError, match=r"\(B, 8\).*\(6, 5\)"):
        fusion(v, t[:, :5])
    with pytest.raises(ValueError, match="got image"):
        fusion(v[:3], t)


@pytest.mark.parametrize("name", ALL)
def test_config_round_trip_rebuilds_an_identical_module(name: str) -> None:
    fusion = make(name, seed=1)
    v, t, g = features(seed=1)
    # Train a step so the weights differ from any fresh init and the state dict really has to travel.
    optimiser = torch.optim.SGD(fusion.parameters(), lr=0.5) if list(fusion.parameters()) else None
    if optimiser is not None:
        total_loss(fusion, v, t, g).backward()
        optimiser.step()
    config = json.loads(json.dumps(fusion.config))
    assert config["name"] == name and config["embed_dim"] == D
    torch.manual_seed(99)
    rebuilt = build_fusion(**config)
    assert type(rebuilt) is type(fusion) and rebuilt.config == fusion.config
    rebuilt.load_state_dict(fusion.state_dict())
    fusion.eval()
    rebuilt.eval()
    torch.testing.assert_close(rebuilt(v, t), fusion(v, t), rtol=0, atol=0)
    own, own_rebuilt = fusion.loss(v, t, g), rebuilt.loss(v, t, g)
    assert (own is None) == (own_rebuilt is None)
    if own is not None:
        torch.testing.assert_close(own_rebuilt, own, rtol=0, atol=0)


@pytest.mark.parametrize("name", ALL)
def test_eval_is_deterministic_and_the_seed_fixes_the_init(name: str) -> None:
    fusion = make(name, seed=5).eval()
    v, t, _ = features()
    torch.testing.assert_close(fusion(v, t), fusion(v, t), rtol=0, atol=0)
    again = make(name, seed=5).eval()
    torch.testing.assert_close(again(v, t), fusion(v, t), rtol=0, atol=0)
    if list(fusion.parameters()):
        other = make(name, seed=6)
        assert any(not torch.equal(a, b) for a, b in zip(fusion.parameters(), other.parameters(), strict=True))


@pytest.mark.parametrize("name", ALL)
def test_fuse_returns_the_query_and_per_query_convex_weights(name: str) -> None:
    fusion = make(name).eval()
    v, t, _ = features()
    query, weights = fusion.fuse(v, t)
    torch.testing.assert_close(query, fusion(v, t))  # forward is the query alone
    if weights is None:
        pytest.skip(f"{name} does not weight the modalities")
    assert weights.shape == (B, 2) and not weights.requires_grad
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(B))
    assert ((weights >= 0) & (weights <= 1)).all()


@pytest.mark.parametrize("name", ALL)
def test_the_registry_stamps_its_name_and_a_subclass_does_not_inherit_it(name: str) -> None:
    cls = FUSIONS.get(name)
    assert make(name).registry_name == name

    class Unregistered(cls):  # type: ignore[misc, valid-type]
        pass

    with pytest.raises(LookupError, match="not a registered fusion"):
        _ = Unregistered(D, **FUSIONS.test_kwargs(name)).config
    with pytest.raises(ValueError, match="already registered"):
        register_fusion(f"{name}-again")(cls)


# -- FixedSum -----------------------------------------------------------------------------------------


def test_fixed_sum_is_the_formula() -> None:
    v, t, _ = features()
    fusion = FixedSum(D, alpha=0.3)
    expected = (0.3 * v + 0.7 * t) / (0.3 * v + 0.7 * t).norm(dim=-1, keepdim=True)
    torch.testing.assert_close(fusion(v, t), expected)
    torch.testing.assert_close(fusion.fuse(v, t).weights, torch.tensor([[0.3, 0.7]]).expand(B, 2))
    assert list(fusion.parameters()) == [] and fusion.loss(v, t, v) is None
    torch.testing.assert_close(FixedSum(D, alpha=1.0)(v, t), v)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, "0.5", None])
def test_fixed_sum_refuses_alpha_outside_unit_interval(alpha: Any) -> None:
    with pytest.raises(ValueError, match="alpha"):
        FixedSum(D, alpha=alpha)


# -- Gated --------------------------------------------------------------------------------------------


def test_gated_default_sizes_scale_with_the_features_and_are_capped() -> None:
    assert Gated(16).config == {
        "name": "gated",
        "embed_dim": 16,
        "projection_dim": 64,
        "hidden_dim": 128,
        "dropout": 0.5,
    }
    big = Gated(dropout=0.0)
    assert big.projection_dim is None
    big.bind(1024)
    assert (big.projection_dim, big.hidden_dim) == (2560, 5120)


def test_gated_is_the_gated_residual_of_the_combiner() -> None:
    """With the MLP's output layer zeroed, the query is exactly the gate-weighted sum of v and t."""
    fusion = Gated(D, projection_dim=12, hidden_dim=16, dropout=0.0).eval()
    with torch.no_grad():
        fusion.combiner[-1].weight.zero_()
        fusion.combiner[-1].bias.zero_()
    v, t, _ = features()
    q, weights = fusion.fuse(v, t)
    w_img, w_txt = weights.unbind(dim=-1)
    torch.testing.assert_close(q, F.normalize(w_img[:, None] * v + w_txt[:, None] * t, dim=-1))


@pytest.mark.parametrize("kwargs", [{"projection_dim": 0}, {"hidden_dim": -1}, {"dropout": 1.0}])
def test_gated_refuses_bad_sizes_by_name(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        Gated(D, **kwargs)


# -- AdaptiveWeighting ----------------------------------------------------------------------------------


def test_adaptive_starts_near_equal_weights() -> None:
    torch.manual_seed(0)
    fusion = AdaptiveWeighting(D, interactions=True).eval()
    v, t, _ = features(batch=32)
    torch.testing.assert_close(fusion.weights(v, t), torch.full((32, 2), 0.5), rtol=0, atol=0.02)


def test_adaptive_query_is_the_weighted_sum_of_its_own_weights() -> None:
    torch.manual_seed(0)
    fusion = AdaptiveWeighting(D, dropout=0.0)
    with torch.no_grad():  # move the weights far from (0.5, 0.5) so a swapped modality would show
        fusion.mlp[-1].bias.copy_(torch.tensor([2.0, -1.0]))
    v, t, _ = features()
    w = fusion.weights(v, t)
    assert (w[:, 0] > 0.9).all()
    torch.testing.assert_close(fusion(v, t), F.normalize(w[:, :1] * v + w[:, 1:] * t, dim=-1))
    torch.testing.assert_close(fusion.fuse(v, t).weights, w.detach())


def test_adaptive_soft_targets_and_loss_match_a_hand_computation() -> None:
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[0.0, 1.0], [0.6, 0.8]])
    g = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    fusion = AdaptiveWeighting(2, mode="soft", tau_w=0.5, lambda_w=2.0, dropout=0.0)
    # cos(v, g) = (0.8, 1.0) and cos(t, g) = (0.6, 0.8): a 0.2 lead for the image in both rows.
    p_img = 1.0 / (1.0 + torch.exp(torch.tensor(-0.2 / 0.5)))
    expected = torch.stack([p_img, 1 - p_img]).expand(2, 2)
    torch.testing.assert_close(fusion.targets(v, t, g), expected)
    w = fusion.weights(v, t)
    kl = (expected * (expected.log() - w.log())).sum(dim=-1).mean()
    torch.testing.assert_close(fusion.loss(v, t, g), 2.0 * kl)


def test_adaptive_rank_targets_on_a_crafted_batch() -> None:
    e = torch.eye(4)
    g = e  # query i's target is the basis vector e_i; the batch's targets are the gallery
    v = F.normalize(torch.stack([e[0], e[1] + 2 * e[0], e[2], e[3] + e[2]]), dim=-1)
    t = F.normalize(torch.stack([e[1] + 2 * e[0], e[1], 2 * e[3] + e[2], e[3] + e[2]]), dim=-1)
    # query 0: both rank the target first (tie); query 1: image ranks it 2nd, text 1st -> text;
    # query 2: image 1st, text 2nd -> image; query 3: identical features -> tie.
    expected = torch.tensor([[0.5, 0.5], [0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])
    fusion = AdaptiveWeighting(4, mode="rank", dropout=0.0)
    torch.testing.assert_close(fusion.targets(v, t, g), expected)
    # A one-hot target makes the KL a cross-entropy on the winning modality.
    w = fusion.weights(v, t)
    expected_loss = (
        -(expected * w.log()).sum(dim=-1).mean() + (expected * expected.clamp_min(1e-30).log()).sum(-1).mean()
    )
    torch.testing.assert_close(fusion.loss(v, t, g), expected_loss)


def test_adaptive_implicit_has_no_weight_loss_but_learns_through_the_query() -> None:
    fusion = AdaptiveWeighting(D, mode="implicit", dropout=0.0)
    v, t, g = features()
    assert fusion.loss(v, t, g) is None
    F.cross_entropy(fusion(v, t) @ g.T / 0.1, torch.arange(B)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fusion.mlp[1:].parameters())


def test_adaptive_weight_loss_trains_only_the_head_unless_asked() -> None:
    v, t, g = (x.requires_grad_(True) for x in features())
    AdaptiveWeighting(D, dropout=0.0).loss(v, t, g).backward()
    assert v.grad is None and t.grad is None
    AdaptiveWeighting(D, dropout=0.0, detach_features=False).loss(v, t, g).backward()
    assert v.grad is not None and v.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"mode": "hard"}, "mode"),
        ({"tau_w": 0.0}, "tau_w"),
        ({"lambda_w": -1.0}, "lambda_w"),
        ({"hidden_dim": 0}, "hidden_dim"),
        ({"interactions": 1}, "interactions"),
        ({"dropout": -0.1}, "dropout"),
    ],
)
def test_adaptive_refuses_bad_arguments_by_name(kwargs: dict[str, Any], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        AdaptiveWeighting(D, **kwargs)


def test_adaptive_loss_refuses_targets_of_the_wrong_shape() -> None:
    v, t, g = features()
    with pytest.raises(ValueError, match=r"target embeddings g.*\(6, 8\).*\(5, 8\)"):
        AdaptiveWeighting(D).loss(v, t, g[:5])


def synthetic_triplets(n: int, dim: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Half the queries have their target near the image, half near the text; ``v[:, 0]`` tells which."""
    v = torch.randn(n, dim, generator=gen)
    t = torch.randn(n, dim, generator=gen)
    image_wins = torch.rand(n, generator=gen) < 0.5
    v[:, 0] = torch.where(image_wins, 2.0, -2.0)
    v, t = F.normalize(v, dim=-1), F.normalize(t, dim=-1)
    source = torch.where(image_wins[:, None], v, t)
    g = F.normalize(source + 0.3 * torch.randn(n, dim, generator=gen) / dim**0.5, dim=-1)
    return v, t, g, image_wins


@pytest.mark.parametrize("mode", ["soft", "rank"])
def test_adaptive_learns_which_modality_finds_the_target(mode: str) -> None:
    dim, batch, steps = 16, 64, 300
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    fusion = AdaptiveWeighting(dim, mode=mode, hidden_dim=32, dropout=0.0)
    optimiser = torch.optim.Adam(fusion.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        v, t, g, _ = synthetic_triplets(batch, dim, gen)
        loss = fusion.loss(v, t, g)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.5 * first, f"weight loss did not fall enough: {first:.3f} -> {last:.3f}"

    v, t, _, image_wins = synthetic_triplets(512, dim, torch.Generator().manual_seed(123))
    fusion.eval()
    with torch.no_grad():
        weights = fusion.weights(v, t)  # inference: no target needed
    right = torch.where(image_wins, weights[:, 0], weights[:, 1])
    assert right.mean() > 0.7, f"held-out weight on the right modality is only {right.mean():.3f}"


# -- configuration files ---------------------------------------------------------------------------------


def test_a_class_path_config_instantiates_an_unbound_fusion() -> None:
    """What LightningCLI does with ``fusion: {class_path: ..., init_args: ...}`` before the model exists."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--fusion", type=Fusion)
    config = parser.parse_args(
        ["--fusion", json.dumps({"class_path": "ctiir.fusion.AdaptiveWeighting", "init_args": {"mode": "rank"}})]
    )
    fusion = parser.instantiate_classes(config).fusion
    assert isinstance(fusion, AdaptiveWeighting) and fusion.mode == "rank" and not fusion.is_bound
    fusion.bind(D)
    assert fusion.config["mode"] == "rank" and fusion.config["embed_dim"] == D
    with pytest.raises(ArgumentError, match="mode"):
        parser.parse_args(
            ["--fusion", json.dumps({"class_path": "ctiir.fusion.AdaptiveWeighting", "init_args": {"mode": "x"}})]
        )
