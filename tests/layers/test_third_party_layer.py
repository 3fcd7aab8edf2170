"""Adding a layer is one file: a third-party layer, its handler and its spec, all here.

``GatedDense`` keeps its weight as ``(2, in, out)`` (value and gate maps side by
side), a layout no built-in handler knows. One ``@register_layer`` gives depgraph
its handler, channel layout and MAC rule; the dimension rule is derived from the
handler's channel dims. The test then prunes it inside a model through
``BasePruner``, proves the result exact with ``tp.verify``, counts MACs and
round-trips the pruned model through ``tp.state_dict`` / ``tp.load_state_dict``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import depgraph as tp
from depgraph.functional import BasePruningFunc, keep_index, prune_tensor
from depgraph.importance import ChannelSlice
from depgraph.layers import LayerSpec, get_layer_spec, register_layer, restoring_layers


class GatedDense(nn.Module):
    """``y = (x @ W[0]) * sigmoid(x @ W[1]) + b``; weight ``(2, in, out)``, channels last."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.n_in, self.n_out = n_in, n_out
        self.weight = nn.Parameter(torch.randn(2, n_in, n_out) / n_in**0.5)
        self.bias = nn.Parameter(torch.randn(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = x @ self.weight[0], x @ self.weight[1]
        return value * torch.sigmoid(gate) + self.bias


class GatedDensePruner(BasePruningFunc):
    """Output channel ``o`` owns ``weight[:, :, o]`` and ``bias[o]``; input ``i`` owns ``weight[:, i, :]``."""

    TARGET_MODULES = (GatedDense,)
    names = ("gated_dense",)

    def prune_out_channels(self, layer: GatedDense, idxs) -> GatedDense:
        idxs = self.check_idxs(layer, idxs, "out")
        keep = keep_index(layer.n_out, idxs)
        prune_tensor(layer.weight, 2, keep)
        prune_tensor(layer.bias, 0, keep)
        layer.n_out = len(keep)
        return layer

    def prune_in_channels(self, layer: GatedDense, idxs) -> GatedDense:
        idxs = self.check_idxs(layer, idxs, "in")
        keep = keep_index(layer.n_in, idxs)
        prune_tensor(layer.weight, 1, keep)
        layer.n_in = len(keep)
        return layer

    def get_out_channels(self, layer: GatedDense) -> int:
        return layer.n_out

    def get_in_channels(self, layer: GatedDense) -> int:
        return layer.n_in

    def in_channel_dim(self, layer: GatedDense, ndim: int) -> int:
        return ndim - 1

    def out_channel_dim(self, layer: GatedDense, ndim: int) -> int:
        return ndim - 1


class GatedDenseSpec(LayerSpec):
    handler = GatedDensePruner()

    def channel_slices(self, layer: GatedDense, side: str) -> list[ChannelSlice]:
        if side == "in":
            return [ChannelSlice(layer.weight, 1)]
        return [ChannelSlice(layer.weight, 2), ChannelSlice(layer.bias, 0, is_bias=True)]

    def count_macs(self, layer: GatedDense, inputs: tuple, output: torch.Tensor) -> int:
        rows = output.numel() // layer.n_out
        return 2 * rows * layer.n_in * layer.n_out + 2 * output.numel()  # two maps; gate product + bias


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.act = nn.GELU()
        self.gated = GatedDense(16, 12)
        self.fc2 = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.gated(self.act(self.fc1(x))))


@pytest.fixture
def gated_registered():
    with restoring_layers():
        register_layer(GatedDense)(GatedDenseSpec)
        yield
    with pytest.raises(tp.UnknownModuleError, match="no layer spec is registered for GatedDense; known types: .*Linear"):
        get_layer_spec(GatedDense)


def test_a_registered_layer_prunes_verifies_counts_and_reloads(gated_registered):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8)
    model, original = Net(), Net()
    original.load_state_dict(model.state_dict())
    macs_before, _, layer_macs, _ = tp.utils.count_ops_and_params(model, x, layer_wise=True)
    assert layer_macs[model.gated] == 2 * 5 * 16 * 12 + 2 * 5 * 12

    pruner = tp.pruner.BasePruner(
        model, x, tp.importance.GroupMagnitudeImportance(), pruning_ratio=0.25,
        root_module_types=(nn.Linear, GatedDense),
    )
    pruner.step()
    assert (model.gated.n_in, model.gated.n_out) == (12, 9)
    assert model.gated.weight.shape == (2, 12, 9) and model.fc1.out_features == 12 and model.fc2.in_features == 9
    result = tp.verify(original, model, x)
    assert result.exact, result

    macs_after, _, layer_macs, _ = tp.utils.count_ops_and_params(model, x, layer_wise=True)
    assert layer_macs[model.gated] == 2 * 5 * 12 * 9 + 2 * 5 * 9 and macs_after < macs_before

    fresh = Net()
    tp.load_state_dict(fresh, tp.state_dict(model))
    assert (fresh.gated.n_in, fresh.gated.n_out) == (12, 9)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def test_magnitude_scores_read_the_spec_layout(gated_registered):
    """The criterion sees the layer's own layout: output channel ``o`` is ``weight[:, :, o]`` and ``bias[o]``."""
    model = Net()
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(2, 8))
    group = DG.get_pruning_group(model.gated, GatedDenseSpec.handler.prune_out_channels, [0, 1])
    imp = tp.importance.GroupMagnitudeImportance(
        p=1, normalizer=None, group_reduction="first", target_types=(GatedDense,)
    )
    scores = imp(group)
    expected = model.gated.weight.detach().abs().sum(dim=(0, 1))[[0, 1]]  # scores of the group's idxs
    torch.testing.assert_close(scores, expected)


def test_without_a_spec_the_layer_is_traced_through():
    """Unregistered (outside the fixture), the layer is no node of its own: the trace looks inside it."""
    model = Net()
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(2, 8))
    assert model.gated not in DG.module2node


def test_replacing_a_spec_warns_at_the_caller(gated_registered):
    with pytest.warns(UserWarning, match="replacing the layer spec for GatedDense") as record:
        register_layer(GatedDense)(GatedDenseSpec)
    assert record[0].filename == __file__
