"""A group's prune is a transaction (depgraph/dependency/transaction.py).

When a handler fails part-way - after other members were pruned, or in the
middle of its own layer - the model must come back bit-identical: the same
``state_dict``, the same parameter objects with the same ``.grad``, the same
module attributes; the graph must not record the prune and must stay usable.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import depgraph as tp
from depgraph.functional import BasePruningFunc, keep_index, prune_tensor
from depgraph.functional import norm as norm_handlers

from .._checks import assert_refused_unchanged, build, check_result, output_shapes

torchvision = pytest.importorskip("torchvision")


class Scale(nn.Module):
    """A custom per-channel affine layer."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n
        self.weight = nn.Parameter(torch.rand(n) + 0.5)
        self.bias = nn.Parameter(torch.randn(n))

    def forward(self, x):
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class ScalePruner(BasePruningFunc):
    TARGET_MODULES = (Scale,)
    fail = False

    def prune_out_channels(self, layer, idxs):
        idxs = self.check_idxs(layer, idxs, "out")
        keep = keep_index(layer.n, idxs)
        prune_tensor(layer.weight, 0, keep)
        layer.n = keep.numel()
        if self.fail:  # half-way: the weight and n are pruned, the bias is not
            raise RuntimeError("disk full")
        prune_tensor(layer.bias, 0, keep)
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer):
        return layer.n

    get_in_channels = get_out_channels


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.scale = Scale(6)
        self.conv2 = nn.Conv2d(6, 4, 1)
        self.conv3 = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.conv3(torch.relu(self.conv2(self.scale(self.bn(self.conv1(x))))))


def with_grads(model: nn.Module) -> nn.Module:
    model(torch.randn(2, 3, 4, 4)).sum().backward()
    return model.eval()


def test_custom_handler_failing_half_way_restores_everything():
    model = with_grads(Net())
    pruner = ScalePruner()
    x = torch.randn(2, 3, 4, 4)
    DG = build(model, x, customized_pruners={Scale: pruner})
    group = DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, [1, 4])
    assert {dep.target.name for dep, _ in group} == {"conv1", "bn", "scale", "conv2"}
    pruner.fail = True
    info = assert_refused_unchanged(model, group.prune, tp.DepgraphError,
                                    r"failed at scale \(RuntimeError: disk full\); the model was restored", DG)
    assert isinstance(info.value.__cause__, RuntimeError)
    # The graph is still usable: the same group prunes once the handler works.
    pruner.fail = False
    shapes = output_shapes(model, x)
    DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, [1, 4]).prune()
    DG.get_pruning_group(model.conv2, tp.prune_conv_out_channels, [0]).prune()
    assert model.scale.n == model.scale.bias.numel() == 4 and model.conv3.in_channels == 3
    assert DG.pruning_history() == [["conv1", True, [1, 4]], ["conv2", True, [0]]]
    assert output_shapes(model, x) == shapes


def test_builtin_handler_failing_mid_layer_restores_resnet(monkeypatch):
    """BatchNorm handlers fail after pruning the weight: the seed group of ResNet-18 rolls back."""
    model = with_grads(torchvision.models.resnet18())
    x = torch.randn(1, 3, 32, 32)
    DG = build(model, x)
    group = DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, [2, 6, 9])
    calls = []
    real = norm_handlers.prune_tensor

    def flaky(t, dim, keep):
        calls.append(t.shape)
        if len(calls) == 4:  # the second BatchNorm, after its weight (and the first BN entirely)
            raise MemoryError("out of memory")
        return real(t, dim, keep)

    monkeypatch.setattr(norm_handlers, "prune_tensor", flaky)
    assert_refused_unchanged(model, group.prune, tp.DepgraphError,
                             r"group rooted at conv1 .*failed at .*bn\d \(MemoryError: out of memory\)", DG)
    assert len(calls) == 4
    monkeypatch.setattr(norm_handlers, "prune_tensor", real)
    original = copy.deepcopy(model)
    shapes = output_shapes(model, x)
    group.prune()
    assert model.conv1.out_channels == 61 and model.bn1.weight.grad.shape == (61,)
    check_result(original, model, x, shapes)


def test_refused_group_changes_nothing_even_after_earlier_prunes():
    model = Net()
    x = torch.randn(2, 3, 4, 4)
    DG = build(model, x, customized_pruners={Scale: ScalePruner()})
    DG.get_pruning_group(model.conv2, tp.prune_conv_out_channels, [3]).prune()
    group = DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, range(6))
    assert_refused_unchanged(model, group.prune, tp.OverPruningError, "conv1 would lose all 6 channels", DG)
    assert DG.pruning_history() == [["conv2", True, [3]]]
