"""Bias compensation (depgraph/importance/compensation.py), in float64 so equalities are exact.

A compensated prune must compute exactly what the original computes with the
removed channels replaced by their calibration mean; hence the consumer's
output mean over the calibration data is unchanged. A prune that fails must
leave the bias as it was (the compensation is part of the transaction).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import depgraph as tp
import depgraph.importance as I


def batches(shape: tuple[int, ...], n: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(*shape, generator=g, dtype=torch.float64) + 0.3 for _ in range(n)]


def outputs(model: nn.Module, xs: list[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x) for x in xs])


def channel_mean(out: torch.Tensor) -> torch.Tensor:
    """Mean of each output channel over samples and positions."""
    return out.transpose(0, 1).reshape(out.shape[1], -1).mean(1)


def with_means(original: nn.Module, consumer: str, pruned: nn.Module, stats: I.CalibrationStats) -> nn.Module:
    """``original`` whose ``consumer`` sees each removed input channel replaced by its mean."""
    ref = copy.deepcopy(original)
    layer = ref.get_submodule(consumer)
    kept = pruned.get_submodule(consumer).__dict__["_depgraph_kept"]["in"]
    st = stats[pruned.get_submodule(consumer)]  # keyed by the calibrated (now pruned) layer
    removed = torch.ones(st.index.numel(), dtype=torch.bool)
    removed[kept] = False
    dim = -1 if isinstance(layer, nn.Linear) else 1

    def hook(module, args):
        x = args[0].clone()
        idx = removed.nonzero().flatten()
        if dim == -1:
            x[..., idx] = st.mean[idx]
        else:
            x[:, idx] = st.mean[idx].view(-1, *([1] * (x.dim() - 2)))
        return (x,)

    layer.register_forward_pre_hook(hook)
    return ref


def mlp(bias: bool) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3, bias=bias)).double().eval()


def conv_net(kernel: int, groups: int = 1) -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, kernel, groups=groups)
    ).double()
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
        net[1].bias.uniform_(-0.5, 0.5)
    return net.eval()


@pytest.mark.parametrize("bias", [True, False], ids=["with_bias", "no_bias"])
def test_linear_consumer_mean_preserved_exactly(bias):
    model, xs = mlp(bias), batches((6, 5))
    original = copy.deepcopy(model)
    imp = I.FluctuationImportance().calibrate(model, xs)
    pruner = tp.pruner.BasePruner(model, xs[0], imp, pruning_ratio=0.5, ignored_layers=[model[2]],
                                  bias_compensation=True)
    pruner.step()
    assert model[2].in_features == 4
    assert isinstance(model[2].bias, nn.Parameter) and model[2].bias.dtype == torch.float64
    assert "bias=True" in repr(model[2]) and "2.bias" in dict(model.named_parameters())
    torch.testing.assert_close(outputs(model, xs).mean(0), outputs(original, xs).mean(0))
    reference = with_means(original, "2", model, imp.stats)
    torch.testing.assert_close(outputs(model, xs), outputs(reference, xs))


def test_without_compensation_the_mean_moves():
    model, xs = mlp(True), batches((6, 5))
    original = copy.deepcopy(model)
    imp = I.FluctuationImportance().calibrate(model, xs)
    tp.pruner.BasePruner(model, xs[0], imp, pruning_ratio=0.5, ignored_layers=[model[2]]).step()
    assert not torch.allclose(outputs(model, xs).mean(0), outputs(original, xs).mean(0))


def test_conv_bn_relu_conv_mean_preserved_exactly():
    model, xs = conv_net(kernel=1), batches((2, 3, 6, 6))
    original = copy.deepcopy(model)
    imp = I.ActivationWeightImportance().calibrate(model, xs)
    tp.pruner.BasePruner(model, xs[0], imp, pruning_ratio=0.5, ignored_layers=[model[3]],
                         bias_compensation=True).step()
    assert model[3].in_channels == 4 and model[1].num_features == 4
    torch.testing.assert_close(channel_mean(outputs(model, xs)), channel_mean(outputs(original, xs)))


@pytest.mark.parametrize("groups", [1, 2])
def test_kxk_conv_consumer_equals_channels_replaced_by_their_mean(groups):
    """Without padding every window lies inside the input, so the kernel sum times the mean is exact."""
    model, xs = conv_net(kernel=3, groups=groups), batches((2, 3, 7, 7))
    original = copy.deepcopy(model)
    stats = I.collect_activation_stats(model, xs)
    DG = tp.DependencyGraph().build_dependency(model, xs[0])
    I.enable_bias_compensation(DG, stats)
    idxs = [0, 3] if groups == 2 else [0, 3, 5, 6]  # grouped: [0, 3] grows to [0, 3, 4, 7] (both blocks)
    DG.get_pruning_group(model[0], tp.prune_conv_out_channels, idxs).prune()
    assert model[3].in_channels == 4
    reference = with_means(original, "3", model, stats)
    torch.testing.assert_close(outputs(model, xs), outputs(reference, xs))


def test_iterative_steps_translate_statistics_to_original_channels():
    model, xs = mlp(True), batches((6, 5))
    original = copy.deepcopy(model)
    imp = I.FluctuationImportance().calibrate(model, xs)
    pruner = tp.pruner.BasePruner(model, xs[0], imp, pruning_ratio=0.75, iterative_steps=3,
                                  ignored_layers=[model[2]], bias_compensation=True)
    for _ in range(3):
        pruner.step()
    assert model[2].in_features == 2
    reference = with_means(original, "2", model, imp.stats)
    torch.testing.assert_close(outputs(model, xs), outputs(reference, xs))


def test_function_before_prune_matches_the_pruner_option():
    model, xs = mlp(False), batches((6, 5))
    twin = copy.deepcopy(model)
    stats = I.collect_activation_stats(model, xs)
    DG = tp.DependencyGraph().build_dependency(model, xs[0])
    group = DG.get_pruning_group(model[0], tp.prune_linear_out_channels, [1, 2, 7])
    assert tp.compensate_bias(group, stats) == [model[2]]
    group.prune()
    DG2 = tp.DependencyGraph().build_dependency(twin, xs[0])
    I.enable_bias_compensation(DG2, I.collect_activation_stats(twin, xs))
    DG2.get_pruning_group(twin[0], tp.prune_linear_out_channels, [1, 2, 7]).prune()
    torch.testing.assert_close(model[2].bias, twin[2].bias)


@pytest.mark.parametrize("bias", [True, False], ids=["with_bias", "no_bias"])
def test_failed_prune_rolls_the_bias_back(bias):
    model, xs = mlp(bias), batches((6, 5))
    before = copy.deepcopy(model.state_dict())
    stats = I.collect_activation_stats(model, xs)
    DG = tp.DependencyGraph().build_dependency(model, xs[0])
    hook = I.enable_bias_compensation(DG, stats)

    def fail(graph, plan):
        if plan is not None:
            raise RuntimeError("refused after the handlers ran")

    DG.register_prune_hook(fail, when="after")
    with pytest.raises(tp.DepgraphError, match="refused after the handlers ran"):
        DG.get_pruning_group(model[0], tp.prune_linear_out_channels, [0, 1]).prune()
    assert (model[2].bias is None) == (not bias)
    assert model[2].in_features == 8
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)

    hook.detach()
    assert hook not in DG.prune_hooks("before")


def test_compensation_that_cannot_run_refuses_the_prune_unchanged():
    model, xs = mlp(False), batches((6, 5))
    before = copy.deepcopy(model.state_dict())
    DG = tp.DependencyGraph().build_dependency(model, xs[0])
    I.enable_bias_compensation(DG, lambda: None)  # e.g. a pruner whose criterion lost its statistics
    group = DG.get_pruning_group(model[0], tp.prune_linear_out_channels, [0, 1])
    with pytest.raises(tp.DepgraphError, match="bias compensation has no calibration statistics"):
        group.prune()
    assert model[2].bias is None and model[0].out_features == 8
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    for h in DG.prune_hooks("before"):
        h.detach()
    group.prune()  # refused by the hook only: nothing was frozen
    assert model[0].out_features == 6


def test_refusals_name_the_problem():
    model, xs = mlp(True), batches((6, 5))
    with pytest.raises(ValueError, match="bias_compensation=True needs calibration statistics"):
        tp.pruner.BasePruner(model, xs[0], I.GroupMagnitudeImportance(), bias_compensation=True)
    with pytest.raises(ValueError, match="bias_compensation=True needs calibration statistics"):
        tp.pruner.BasePruner(model, xs[0], I.FluctuationImportance(), bias_compensation=True)
    stats = I.collect_activation_stats(model, xs)
    with pytest.raises(ValueError, match="cannot be combined with soft_pruning"):
        tp.pruner.BasePruner(model, xs[0], I.GroupMagnitudeImportance(), bias_compensation=True,
                             calibration_stats=stats, soft_pruning=True)
    with pytest.raises(tp.OptionError, match="calibration_stats is only read by bias compensation"):
        tp.pruner.BasePruner(model, xs[0], I.GroupMagnitudeImportance(), calibration_stats=stats)
    with pytest.raises(tp.OptionError, match="calibration_stats: BiasMean.stats. needs statistics from"):
        tp.pruner.BasePruner(model, xs[0], I.GroupMagnitudeImportance(), bias_compensation=True,
                             calibration_stats={})
    with pytest.raises(tp.OptionTypeError, match=r"BiasMean\(stats\) needs statistics"):
        I.BiasMean({})
    DG = tp.DependencyGraph().build_dependency(model, xs[0])
    group = DG.get_pruning_group(model[0], tp.prune_linear_out_channels, [0])
    with pytest.raises(tp.DepgraphError, match="compensate_bias needs CalibrationStats"):
        tp.compensate_bias(group, {})


def test_magnitude_criterion_with_given_statistics():
    model, xs = mlp(True), batches((6, 5))
    original = copy.deepcopy(model)
    stats = I.collect_activation_stats(model, xs)
    tp.pruner.BasePruner(model, xs[0], I.GroupMagnitudeImportance(), pruning_ratio=0.5,
                         ignored_layers=[model[2]], bias_compensation=True, calibration_stats=stats).step()
    torch.testing.assert_close(outputs(model, xs).mean(0), outputs(original, xs).mean(0))


def test_created_bias_survives_tp_save_and_load(tmp_path):
    model, xs = mlp(False), batches((6, 5))
    imp = I.FluctuationImportance().calibrate(model, xs)
    tp.pruner.BasePruner(model, xs[0], imp, pruning_ratio=0.5, ignored_layers=[model[2]],
                         bias_compensation=True).step()
    tp.save(model, tmp_path / "pruned.pth")
    fresh = tp.load(mlp(False), tmp_path / "pruned.pth")
    assert fresh[2].bias is not None and "bias=True" in repr(fresh[2])
    torch.testing.assert_close(outputs(fresh, xs), outputs(model, xs))


def test_interactive_step_compensates_the_groups_the_caller_prunes():
    model, xs = mlp(True), batches((6, 5))
    original = copy.deepcopy(model)
    imp = I.ActivationWeightImportance().calibrate(model, xs)
    pruner = tp.pruner.BasePruner(model, xs[0], imp, pruning_ratio=0.5, ignored_layers=[model[2]],
                                  bias_compensation=True)
    for group in pruner.step(interactive=True):
        group.prune()
    assert model[2].in_features == 4
    torch.testing.assert_close(outputs(model, xs).mean(0), outputs(original, xs).mean(0))
