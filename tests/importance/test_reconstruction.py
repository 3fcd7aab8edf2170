"""Least-squares reconstruction (depgraph/importance/reconstruction.py), in float64.

A removed channel that is a linear combination of kept ones (plus a constant) must cost
nothing: the greedy criterion scores it ~0 and the refit reproduces the output exactly.
"""

from __future__ import annotations

import copy
from math import floor

import pytest
import torch
import torch.nn as nn

import depgraph as tp
import depgraph.importance as I
from depgraph.importance.reconstruction import greedy_removal_costs


class Block(nn.Module):
    """``fc2(relu(fc1(x)))`` whose hidden channels ``dup`` copy channel 0 (fc1 rows duplicated)."""

    def __init__(self, width: int = 6, hidden: int = 10, dup: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        with torch.no_grad():
            for d in dup:
                self.fc1.weight[d] = self.fc1.weight[0]
                self.fc1.bias[d] = self.fc1.bias[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(x)))


def model(dup_a: tuple[int, ...] = (), dup_b: tuple[int, ...] = ()) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(Block(dup=dup_a), Block(dup=dup_b)).double()


def batches(n: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randn(64, 6, generator=g, dtype=torch.float64) + 0.5 for _ in range(n)]


def run(m: nn.Module, xs: list[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([m(x) for x in xs])


def fc2s(m: nn.Module) -> list[nn.Module]:
    return [m[0].fc2, m[1].fc2]


def test_covariance_is_the_second_moment_and_gives_channel_stats() -> None:
    m, xs = model(), batches()
    cov = I.collect_input_covariance(m, xs, layers=fc2s(m))
    h = torch.cat([torch.relu(m[0].fc1(x)) for x in xs]).detach()
    z = torch.cat([h, torch.ones(len(h), 1, dtype=h.dtype)], 1)
    assert torch.allclose(cov.lookup(m[0].fc2), z.T @ z / len(z))
    st, ref = cov.channel_stats()[m[0].fc2], I.collect_activation_stats(m, xs)[m[0].fc2]
    assert torch.allclose(st.mean, ref.mean) and torch.allclose(st.var, ref.var)
    again = I.InputCovariance.from_named(copy.deepcopy(m), cov.named(m))
    assert len(again) == 2 and torch.equal(next(iter(again.values())).gram, cov[m[0].fc2].gram)


def test_covariance_refuses_convolutions() -> None:
    with pytest.raises(tp.DepgraphError, match="nn.Linear"):
        I.collect_input_covariance(nn.Conv2d(1, 1, 1), torch.randn(1, 1, 2, 2), layers=[nn.Conv2d(1, 1, 1)])


def test_greedy_costs_match_a_direct_refit() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 5, generator=g, dtype=torch.float64)
    x = torch.cat([x, x[:, :2] @ torch.randn(2, 3, generator=g, dtype=torch.float64)], 1)  # 3 redundant
    z = torch.cat([x, torch.ones(500, 1, dtype=x.dtype)], 1)
    wb = torch.randn(4, 9, generator=g, dtype=torch.float64)
    costs = greedy_removal_costs(wb, z.T @ z / 500, damping=1e-12, block_size=1)
    ranked = costs.sort().values
    assert float(ranked[2]) < 1e-8 < float(ranked[3])  # three channels are free, the fourth is not
    # removing the 4 cheapest, then refitting by least squares: the error the score promised
    removed = costs.argsort()[:4]
    kept = [i for i in range(9) if i not in removed.tolist()]
    y = z @ wb.T
    fit = torch.linalg.lstsq(z[:, kept], y).solution
    err = (y - z[:, kept] @ fit).pow(2).sum(1).mean() / y.pow(2).sum(1).mean()
    assert float(costs[removed[-1]]) == pytest.approx(float(err), rel=1e-6, abs=1e-12)
    assert torch.all(costs.sort().values.diff() >= 0)  # cumulative: a prefix is what the pruner removes


def test_lstsq_compensation_reproduces_a_redundant_channel_exactly() -> None:
    m, xs = model(dup_a=(1,), dup_b=(1,)), batches()
    ref = run(m, xs)
    cov = I.collect_input_covariance(m, xs, layers=fc2s(m))
    DG = tp.DependencyGraph().build_dependency(m, xs[0])
    I.enable_lstsq_compensation(DG, cov, damping=0.0)
    DG.get_pruning_group(m[0].fc1, tp.prune_linear_out_channels, [1]).prune()
    assert m[0].fc2.in_features == 9
    assert torch.allclose(run(m, xs), ref, atol=1e-9)


def test_lstsq_beats_bias_compensation_on_the_calibration_data() -> None:
    xs = batches()
    errors = {}
    for how in ("none", "bias", "lstsq"):
        m = model()
        ref = run(m, xs)
        extra: dict = {}
        if how == "bias":
            extra = {"bias_compensation": True, "calibration_stats": I.collect_activation_stats(m, xs)}
        elif how == "lstsq":
            extra = {"lstsq_compensation": I.collect_input_covariance(m, xs, layers=fc2s(m))}
        imp = I.FluctuationImportance(stats=I.collect_activation_stats(m, xs))
        tp.pruner.BasePruner(m, xs[0], imp, pruning_ratio=0.4, **extra).step()
        errors[how] = float((run(m, xs) - ref).pow(2).mean())
    assert errors["lstsq"] < errors["bias"] < errors["none"]


def test_reconstruction_importance_global_takes_the_redundant_layer() -> None:
    m, xs = model(dup_a=(1, 2, 3, 4)), batches()
    cov = I.collect_input_covariance(m, xs, layers=fc2s(m))
    imp = I.ReconstructionImportance(cov, damping=1e-10, block_size=1)
    DG = tp.DependencyGraph().build_dependency(m, xs[0])
    scores = imp(DG.get_pruning_group(m[0].fc1, tp.prune_linear_out_channels, list(range(10))))
    ranked = scores.sort().values
    assert float(ranked[3]) < 1e-9 < 1e-6 < float(ranked[4])  # 4 of the 5 copies are free
    ref = run(m, xs)
    tp.pruner.BasePruner(m, xs[0], imp, pruning_ratio=0.2, global_pruning=True, lstsq_compensation=cov).step()
    assert (m[0].fc2.in_features, m[1].fc2.in_features) == (6, 10)  # all 4 copies from block 0, none from 1
    assert torch.allclose(run(m, xs), ref, atol=1e-3)  # the default damping (1e-4) is all that is lost


def test_reconstruction_importance_falls_back_to_magnitude_without_covariance() -> None:
    m, xs = model(), batches()
    imp = I.ReconstructionImportance(I.collect_input_covariance(m, xs, layers=[m[0].fc2]))
    DG = tp.DependencyGraph().build_dependency(m, xs[0])
    group = DG.get_pruning_group(m[1].fc1, tp.prune_linear_out_channels, list(range(10)))
    assert torch.allclose(imp(group), I.GroupMagnitudeImportance(2, "sum", None)(group))


def test_options_refuse_bad_lstsq_compensation() -> None:
    m, xs = model(), batches()
    cov = I.collect_input_covariance(m, xs, layers=fc2s(m))
    imp = I.GroupMagnitudeImportance()
    with pytest.raises(ValueError, match="collect_input_covariance"):
        tp.pruner.BasePruner(m, xs[0], imp, lstsq_compensation=I.collect_activation_stats(m, xs))
    with pytest.raises(ValueError, match="drop bias_compensation"):
        tp.pruner.BasePruner(m, xs[0], imp, lstsq_compensation=cov, bias_compensation=True,
                             calibration_stats=cov.channel_stats())
    with pytest.raises(tp.DepgraphError, match="InputCovariance"):
        I.ReconstructionImportance({})


def test_reconstruction_costs_are_cached_and_follow_a_deepcopy() -> None:
    m, xs = model(), batches()
    imp = I.ReconstructionImportance(I.collect_input_covariance(m, xs, layers=fc2s(m)))
    first = imp.costs(m[0].fc2)
    assert imp.costs(m[0].fc2) is first
    m2, imp2 = copy.deepcopy((m, imp))
    assert torch.equal(imp2.costs(m2[0].fc2), first) and m2[0].fc2 in imp2._cache
    with pytest.raises(tp.DepgraphError, match="no input covariance"):
        imp.costs(m[0].fc1)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:depgraph. after this prune")  # per-layer widths: no config
def test_tiny_llama_global_heads_and_mlp_refit_and_reload(tmp_path) -> None:
    """Whole GQA units and MLP channels ranked over all layers, refit by least squares; per-layer
    widths then differ, so the model goes through tp.save / tp.load (not a config)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                      tie_word_embeddings=True, max_position_embeddings=64)
    make = lambda: transformers.LlamaForCausalLM(config).eval()  # noqa: E731
    model = make()
    fresh = copy.deepcopy(model)
    calib = [{"input_ids": torch.randint(0, 64, (2, 16))} for _ in range(3)]
    layers = model.model.layers
    cov = I.collect_input_covariance(model, calib, layers=[m for x in layers for m in (x.mlp.down_proj, x.self_attn.o_proj)])
    imp = I.ReconstructionImportance(cov)
    tp.pruner.BasePruner(model, calib[0], imp, pruning_ratio=0.4, global_pruning=True, prune_num_heads=True,
                         prune_head_dims=False, head_pruning_ratio=1 / 3, lstsq_compensation=cov,
                         ignored_layers=[model.lm_head, model.model.embed_tokens],
                         output_transform=lambda o: o.logits).step()
    assert sum(x.mlp.down_proj.in_features for x in layers) == floor(3 * 64 * 0.6)  # the pool keeps 60%
    assert sum(x.self_attn.k_proj.out_features // 8 for x in layers) == 4  # 2 of the 6 KV units go
    for x in layers:  # a KV head always leaves with its two query heads
        assert x.self_attn.q_proj.out_features == 2 * x.self_attn.k_proj.out_features
        assert x.self_attn.o_proj.in_features == x.self_attn.q_proj.out_features
    assert all(x.mlp.down_proj.bias is not None for x in layers)  # the refit bias
    tp.save(model, tmp_path / "pruned.pth")
    tp.load(fresh, tmp_path / "pruned.pth")
    ids = calib[0]["input_ids"]
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, fresh(input_ids=ids).logits, atol=1e-5)


def test_the_kept_input_solve_matches_a_direct_solve_and_survives_an_indefinite_matrix():
    from depgraph.importance.reconstruction import _solve_kept

    torch.manual_seed(0)
    x = torch.randn(64, 9, dtype=torch.float64)
    gram = x.T @ x / 64 + 1e-6 * torch.eye(9, dtype=torch.float64)
    rhs = torch.randn(5, 9, dtype=torch.float64)
    torch.testing.assert_close(_solve_kept(rhs, gram), rhs @ torch.linalg.inv(gram), rtol=1e-9, atol=1e-9)
    indefinite = torch.diag(torch.tensor([2.0, -1.0, 3.0], dtype=torch.float64))  # Cholesky refuses it
    got = _solve_kept(rhs[:, :3], indefinite)
    torch.testing.assert_close(got, rhs[:, :3] @ torch.linalg.inv(indefinite), rtol=1e-12, atol=1e-12)
