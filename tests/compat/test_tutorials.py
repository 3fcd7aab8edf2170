"""The Torch-Pruning tutorial notebooks' call sequences, run on both libraries and compared.

The notebooks (``tutorials/0 - QuickStart``, ``1 - Customize Your Own Pruners``,
``2 - Exploring Dependency Groups`` in the original repository) prune a
pretrained ResNet-18 at 224x224; here it has random weights and 64x64 inputs.
Each test runs the notebook's calls with ``tp`` bound to ``torch_pruning`` and
then to ``depgraph`` and compares what the notebook prints: widths after every
step, parameter and MAC counts, group members, the error of a half-applied
dependency.
"""

from __future__ import annotations

import copy
from types import ModuleType

import pytest
import torch
import torch.nn as nn
import torchvision

import depgraph

T = pytest.importorskip("torch_pruning")

X = torch.randn(1, 3, 64, 64)


def _resnet18() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    with torch.no_grad():  # distinct BN scales, so the slimming criterion has something to rank
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.1, 1.0)
    return model.eval()


BASE = _resnet18()


def _widths(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] + [model.fc.in_features]


# -- 0 - QuickStart --------------------------------------------------------------------


def _quickstart_low_level(tp: ModuleType) -> list:
    model = copy.deepcopy(BASE)
    DG = tp.DependencyGraph().build_dependency(model, example_inputs=X)
    pruning_group = DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=[2, 6, 9])
    ok = DG.check_pruning_group(pruning_group)
    if ok:
        pruning_group.prune()
    text = str(pruning_group)
    return [ok, _widths(model), "Pruning Group" in text, "conv1" in text, model(X).shape]


def test_quickstart_dependency_graph():
    ours = _quickstart_low_level(depgraph)
    assert ours == _quickstart_low_level(T)
    assert ours[1][:3] == [61, 64, 61]


def test_quickstart_get_all_groups():
    """The notebook prints ``len(list(DG.get_all_groups()))``: the original also offers the group
    rooted at ``fc`` that shrinks the 1000 classes; depgraph keeps model outputs (README). The
    other groups hold the same layers."""
    members = {}
    for tp in (T, depgraph):
        model = copy.deepcopy(BASE)
        names = {id(m): n for n, m in model.named_modules()}
        DG = tp.DependencyGraph().build_dependency(model, example_inputs=X)
        members[tp] = {frozenset(names[id(dep.target.module)] for dep, _ in g if id(dep.target.module) in names)
                       for g in DG.get_all_groups()}
    assert len(members[depgraph]) == len(members[T]) - 1 == 12
    assert members[T] - members[depgraph] == {frozenset({"fc"})}


def _quickstart_pruner(tp: ModuleType) -> list:
    model = copy.deepcopy(BASE)
    example_inputs = X
    imp = tp.importance.MagnitudeImportance(p=2, group_reduction="mean")
    ignored_layers = []
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and m.out_features == 1000:
            ignored_layers.append(m)
    iterative_steps = 5
    pruner = tp.pruner.MagnitudePruner(
        model, example_inputs, global_pruning=False, importance=imp, iterative_steps=iterative_steps,
        ch_sparsity=0.5, ignored_layers=ignored_layers,
    )
    base_macs, base_nparams = tp.utils.count_ops_and_params(model, example_inputs)
    seen = [base_nparams]
    for _ in range(iterative_steps):
        pruner.step()
        macs, nparams = tp.utils.count_ops_and_params(model, example_inputs)
        seen += [_widths(model), nparams, model(example_inputs).shape]
    return seen


@pytest.mark.slow
def test_quickstart_high_level_pruner():
    ours = _quickstart_pruner(depgraph)
    assert ours == _quickstart_pruner(T)
    assert ours[-3][:3] == [32, 32, 32] and ours[-3][-1] == 256  # ResNet18 => ResNet18_Half


# -- 1 - Customize Your Own Pruners ---------------------------------------------------


def _slimming(tp: ModuleType) -> list:
    class MySlimmingPruner(tp.pruner.MetaPruner):
        def regularize(self, model, reg):
            for m in model.modules():
                if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)) and m.affine:
                    m.weight.grad.data.add_(reg * torch.sign(m.weight.data))

    class MySlimmingImportance(tp.importance.Importance):
        def __call__(self, group, **kwargs):
            group_imp = []
            for dep, idxs in group:  # noqa: B007 (the notebook's loop)
                layer = dep.target.module
                prune_fn = dep.handler  # noqa: F841 (read as the notebook does)
                if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)) and layer.affine:
                    group_imp.append(torch.abs(layer.weight.data))
            if len(group_imp) == 0:
                return None  # the group holds no BN: leave it alone
            return torch.stack(group_imp, dim=0).mean(dim=0)

    model = copy.deepcopy(BASE)
    example_inputs = X
    ignored_layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1000]
    iterative_steps = 5
    pruner = MySlimmingPruner(model, example_inputs, global_pruning=False, importance=MySlimmingImportance(),
                              iterative_steps=iterative_steps, ch_sparsity=0.5, ignored_layers=ignored_layers)
    model.zero_grad()
    model(example_inputs).sum().backward()
    pruner.regularize(model, reg=1e-2)  # the notebook's sparse-training call
    seen = [model.bn1.weight.grad.clone()]
    for _ in range(iterative_steps):
        pruner.step()
        seen += [_widths(model), tp.utils.count_ops_and_params(model, example_inputs)[1]]
    seen.append(model(example_inputs).shape)
    return seen


@pytest.mark.slow
def test_customize_your_own_pruners_slimming():
    ours, theirs = _slimming(depgraph), _slimming(T)
    torch.testing.assert_close(ours[0], theirs[0])
    assert ours[1:] == theirs[1:]
    assert ours[-3][:3] == [32, 32, 32]


def test_customize_your_own_pruners_one_step():
    """The same customised pruner and criterion, one step of ratio 0.5: equal widths on both."""

    def one_step(tp: ModuleType) -> list[int]:
        class MySlimmingImportance(tp.importance.Importance):
            def __call__(self, group, **kwargs):
                scores = [dep.target.module.weight.data.abs() for dep, _ in group
                          if isinstance(dep.target.module, nn.BatchNorm2d)]
                return torch.stack(scores).mean(0) if scores else None

        model = copy.deepcopy(BASE)
        pruner = tp.pruner.MetaPruner(model, X, importance=MySlimmingImportance(), pruning_ratio=0.5,
                                      ignored_layers=[model.fc])
        pruner.step()
        return _widths(model)

    ours = one_step(depgraph)
    assert ours == one_step(T) and ours[0] == 32


# -- 2 - Exploring Dependency Groups ----------------------------------------------------


def _exploring(tp: ModuleType) -> list:
    model = copy.deepcopy(BASE)
    DG = tp.DependencyGraph().build_dependency(model, example_inputs=X)
    group = DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=[2, 6, 9])
    seen = [group[0][1], list(group[1][1]), group[1][0].source.module is model.conv1,
            group[1][0].target.module is model.bn1, group[1][0].trigger == tp.prune_conv_out_channels,
            group[1][0].handler == tp.prune_batchnorm_out_channels]
    idx, dep = group[0][1], group[0][0]
    pruned = dep(idx)  # only conv1: the dependency is executed alone
    seen += [pruned is model.conv1, pruned.out_channels]
    with pytest.raises(RuntimeError, match="running_mean should contain 61 elements not 64"):
        model(X)
    model = copy.deepcopy(BASE)
    DG = tp.DependencyGraph().build_dependency(model, example_inputs=X)
    DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=[2, 6, 9]).exec()
    seen += [_widths(model), model(X).shape]
    return seen


def test_exploring_dependency_groups():
    with pytest.warns(UserWarning, match="exec"):
        ours = _exploring(depgraph)
    with pytest.warns(UserWarning, match="exec"):
        theirs = _exploring(T)
    assert ours == theirs
    assert ours[:2] == [[2, 6, 9], [2, 6, 9]] and ours[-2][0] == 61
