"""Data-aware criteria and bias compensation (depgraph/importance/{calibration,data_aware,compensation}.py).

Hand-computable cases first (a Linear pair whose hidden activations the test
computes itself: scores and statistics must equal the formulas), then groups
of real architectures pruned through ``BasePruner`` and checked with
``tp.verify``, then bias compensation: exact in float64, and rolled back with a
failing prune.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import depgraph as tp
import depgraph.importance as I


def mlp(bias: bool = True) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3, bias=bias)).double().eval()


def data(n: int = 4, *shape: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    shape = shape or (6, 5)
    return [torch.randn(*shape, generator=g, dtype=torch.float64) + 0.5 for _ in range(n)]


def hidden(model: nn.Sequential, batches: list[torch.Tensor]) -> torch.Tensor:
    """The input of the second Linear, all calibration rows stacked: ``(values, 8)``."""
    with torch.no_grad():
        return torch.cat([model[1](model[0](x)) for x in batches])


def full_group(model: nn.Sequential):
    DG = tp.DependencyGraph().build_dependency(model, data(1)[0])
    return DG, DG.get_pruning_group(model[0], tp.prune_linear_out_channels, list(range(8)))


# -- statistics ---------------------------------------------------------------------------------
def test_linear_stats_are_the_moments_of_the_inputs():
    model, batches = mlp(), data()
    stats = I.collect_activation_stats(model, batches)
    h = hidden(model, batches)
    st = stats[model[2]]
    assert st.count == h.shape[0] and st.sum.dtype == torch.float64
    torch.testing.assert_close(st.mean, h.mean(0))
    torch.testing.assert_close(st.var, h.var(0, unbiased=False))
    torch.testing.assert_close(st.norm, h.norm(dim=0))
    torch.testing.assert_close(st.rms, h.norm(dim=0) / h.shape[0] ** 0.5)
    assert torch.equal(st.index, torch.arange(8))


def test_conv_stats_average_over_positions_and_samples():
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 1)).double()
    batches = data(3, 2, 3, 7, 7)
    stats = I.collect_activation_stats(conv, batches, max_batches=2)  # the third batch is not run
    with torch.no_grad():
        x = torch.cat([conv[0](b) for b in batches[:2]])  # (2*2, 4, 5, 5)
    per_channel = x.transpose(0, 1).reshape(4, -1)
    st = stats[conv[1]]
    assert st.count == per_channel.shape[1]
    torch.testing.assert_close(st.mean, per_channel.mean(1))
    torch.testing.assert_close(st.var, per_channel.var(1, unbiased=False))


def test_calibration_restores_modes_and_removes_hooks_even_on_error():
    model = mlp().train()

    def broken(m, batch):
        m(batch)
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        I.collect_activation_stats(model, data(), forward_fn=broken)
    assert all(m.training for m in model.modules())
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_calibration_accepts_dict_batches_and_forward_fn():
    model = mlp()
    pairs = [(x, torch.zeros(len(x))) for x in data()]
    a = I.collect_activation_stats(model, pairs, forward_fn=lambda m, b: m(b[0]))
    b = I.collect_activation_stats(model, data())
    torch.testing.assert_close(a[model[2]].sumsq, b[model[2]].sumsq)

    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 2)

        def forward(self, a, b):
            return self.fc(a * b)

    two, (a, b) = TwoInputs().double(), data(2)
    stats = I.collect_activation_stats(two, [(a, b)])
    torch.testing.assert_close(stats[two.fc].mean, (a * b).mean(0))
    kw = I.collect_activation_stats(two, {"a": a, "b": b})  # one dict: one batch of keyword inputs
    torch.testing.assert_close(kw[two.fc].sum, stats[two.fc].sum)
    with pytest.raises(tp.DepgraphError, match="must be a tensor, a dict of inputs or an iterable"):
        I.collect_activation_stats(model, 3.0)
    with pytest.raises(tp.DepgraphError, match="saw no Linear or convolution input"):
        I.collect_activation_stats(model, [])


# -- criteria on hand-computable cases -----------------------------------------------------------
@pytest.mark.parametrize("p", [1, 2])
def test_activation_weight_scores_equal_the_formula(p):
    model, batches = mlp(), data()
    imp = I.ActivationWeightImportance(p=p, normalizer=None).calibrate(model, batches)
    _, group = full_group(model)
    h = hidden(model, batches)
    want = model[2].weight.detach().norm(p=p, dim=0) * h.norm(dim=0) / h.shape[0] ** 0.5
    torch.testing.assert_close(imp(group), want)


def test_fluctuation_scores_equal_the_formula():
    model, batches = mlp(), data()
    imp = I.FluctuationImportance(normalizer=None).calibrate(model, batches)
    _, group = full_group(model)
    h = hidden(model, batches)
    want = model[2].weight.detach().pow(2).sum(0) * h.var(0, unbiased=False)
    torch.testing.assert_close(imp(group), want)


def test_scores_sum_over_every_consumer_of_a_channel():
    torch.manual_seed(0)

    class Fork(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2), nn.Linear(6, 3)

        def forward(self, x):
            h = torch.relu(self.fc(x))
            return self.a(h), self.b(h)

    model, batches = Fork().double().eval(), data(2, 5, 4)
    imp = I.ActivationWeightImportance(normalizer=None).calibrate(model, batches)
    DG = tp.DependencyGraph().build_dependency(model, batches[0])
    group = DG.get_pruning_group(model.fc, tp.prune_linear_out_channels, list(range(6)))
    h = torch.cat([torch.relu(model.fc(x)) for x in batches]).detach()
    rms = h.norm(dim=0) / h.shape[0] ** 0.5
    want = (model.a.weight.abs().sum(0) + model.b.weight.abs().sum(0)).detach() * rms
    torch.testing.assert_close(imp(group), want)


def test_uncalibrated_criterion_refuses_to_score():
    _, group = full_group(mlp())
    for imp in (I.ActivationWeightImportance(), I.FluctuationImportance()):
        with pytest.raises(tp.DepgraphError, match=r"no calibration statistics; call imp.calibrate"):
            imp(group)


def test_groups_without_statistics_fall_back_to_magnitude():
    model = mlp()
    _, group = full_group(model)
    imp = I.FluctuationImportance(p=2, stats=I.CalibrationStats())
    torch.testing.assert_close(imp(group), I.GroupMagnitudeImportance(p=2, group_reduction="sum")(group))


def test_statistics_stay_valid_after_an_earlier_prune():
    model, batches = mlp(), data()
    imp = I.ActivationWeightImportance(normalizer=None).calibrate(model, batches)
    DG, group = full_group(model)
    before = imp(group)
    DG.get_pruning_group(model[0], tp.prune_linear_out_channels, [1, 4, 6]).prune()
    after = imp(DG.get_pruning_group(model[0], tp.prune_linear_out_channels, list(range(5))))
    torch.testing.assert_close(after, before[[0, 2, 3, 5, 7]])


def test_invalid_options_are_refused_at_construction():
    with pytest.raises(ValueError, match="p must be positive"):
        I.ActivationWeightImportance(p=0)
    with pytest.raises(ValueError, match="normalizer"):
        I.FluctuationImportance(normalizer="median")


def test_registered_by_name():
    assert isinstance(I.create_importance("activation_weight"), I.ActivationWeightImportance)
    assert isinstance(I.create_importance("fluctuation"), I.FluctuationImportance)


# -- real architectures, through BasePruner --------------------------------------------------------
CRITERIA = [I.ActivationWeightImportance, I.FluctuationImportance]


@pytest.mark.parametrize("criterion", CRITERIA, ids=lambda c: c.__name__)
def test_resnet18_half_pruned_with_calibrated_criterion(criterion):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    original = copy.deepcopy(model)
    batches = [torch.randn(2, 3, 32, 32) for _ in range(3)]
    imp = criterion().calibrate(model, batches)
    assert len(imp.stats) == 21  # 20 convolutions and the classifier
    pruner = tp.pruner.BasePruner(model, batches[0], imp, pruning_ratio=0.5, ignored_layers=[model.fc])
    pruner.step()
    assert model.conv1.out_channels == 32 and model.layer4[1].conv1.out_channels == 256
    assert model(batches[0]).shape == (2, 10)
    result = tp.verify(original, model, batches[0])
    assert result.exact, str(result)


def test_resnet18_scores_differ_from_magnitude():
    """The criterion really reads the data: other inputs, other ranking."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 32, 32))
    group = DG.get_pruning_group(model.layer2[0].conv1, tp.prune_conv_out_channels, list(range(128)))
    a = I.ActivationWeightImportance().calibrate(model, torch.randn(2, 3, 32, 32))(group)
    b = I.ActivationWeightImportance().calibrate(model, torch.randn(2, 3, 32, 32) * 3 + 1)(group)
    m = I.GroupMagnitudeImportance()(group)
    assert a.shape == (128,) and not torch.allclose(a, b) and not torch.allclose(a, m)


@pytest.mark.filterwarnings("ignore:depgraph. after this prune")  # config sync; tested in tests/integrations
@pytest.mark.parametrize("criterion", CRITERIA, ids=lambda c: c.__name__)
def test_tiny_llama_half_pruned_with_calibrated_criterion(criterion):
    pytest.importorskip("transformers")
    from tests.integrations._hf import FAMILIES, output_of

    fam = FAMILIES["llama"]
    model, inputs = fam.build(), fam.example_inputs()
    original = copy.deepcopy(model)
    imp = criterion().calibrate(model, [fam.example_inputs(batch=3) for _ in range(2)])
    assert model.model.layers[0].mlp.down_proj in imp.stats
    tp.pruner.BasePruner(model, inputs, imp, pruning_ratio=0.5, ignored_layers=[model.lm_head],
                         output_transform=output_of).step()
    mlp_block = model.model.layers[0].mlp
    assert mlp_block.down_proj.in_features == mlp_block.gate_proj.out_features < 48
    assert output_of(model(**inputs)).shape == output_of(original(**inputs)).shape
    result = tp.verify(original, model, inputs, output_transform=output_of)
    assert result.shapes_match, str(result)
