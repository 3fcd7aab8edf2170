"""Pruners on architectures with concatenations, grouped/depthwise/transposed convs, channel shuffle.

Default run: small hand-made nets and mobilenet_v3_small. ``slow``: resnet50,
densenet121, mobilenet_v3_large, resnext50, regnet, shufflenet (zoo models at
64x64 inputs, local and global ranking).
"""

import copy

import pytest
import torch
import torch.nn as nn
import torchvision

import depgraph.importance as I
import depgraph.pruner as P
from tests._checks import check_result, output_shapes
from tests.zoo._zoo import randomize_norms


def prune_verify(model, x, **kwargs):
    model.eval()
    randomize_norms(model)
    original = copy.deepcopy(model)
    shapes = output_shapes(model, x)
    pruner = P.BasePruner(model, x, I.GroupMagnitudeImportance(), **kwargs)
    before = {m: pruner.DG.get_out_channels(m) for m in pruner.initial_widths()}
    pruner.step()
    after = {m: pruner.DG.get_out_channels(m) for m in pruner.initial_widths()}
    check_result(original, model, x, shapes, exact=True)
    return pruner, before, after


class TinyGrouped(nn.Module):
    """A ResNeXt-like block: 1x1 -> grouped 3x3 (4 groups) -> 1x1, plus a depthwise conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.reduce = nn.Conv2d(16, 32, 1)
        self.grouped = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.expand = nn.Conv2d(32, 16, 1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        y = self.expand(self.dw(torch.relu(self.grouped(torch.relu(self.reduce(x))))))
        return self.head((x + y).mean((2, 3)))


def test_grouped_conv_keeps_same_positions_in_every_group():
    model = TinyGrouped()
    pruner, before, after = prune_verify(
        model, torch.randn(1, 3, 8, 8), pruning_ratio=0.5, ignored_layers=[model.head]
    )
    g = model.grouped
    assert g.groups == 4 and g.in_channels == 16 and g.out_channels == 16
    assert g.weight.shape == (16, 4, 3, 3)
    assert model.dw.groups == model.dw.in_channels == model.dw.out_channels == 16


def test_grouped_conv_counts_are_whole_classes():
    model = TinyGrouped()
    # 0.3 of 32 is 9.6: the reduce conv's group can only lose multiples of 4 (one position per group)
    prune_verify(model, torch.randn(1, 3, 8, 8), pruning_ratio=0.3, ignored_layers=[model.head])
    assert model.reduce.out_channels % 4 == 0 and model.grouped.in_channels % 4 == 0


def test_declared_out_channel_groups():
    class Heads(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(8, 12)  # 3 "heads" of 4 the graph cannot see
            self.out = nn.Linear(12, 2)

        def forward(self, x):
            return self.out(torch.relu(self.proj(x)))

    model = Heads()
    x = torch.randn(2, 8)
    pruner, _, _ = prune_verify(
        model, x, pruning_ratio=0.5, out_channel_groups={model.proj: 3}, ignored_layers=[model.out]
    )
    assert model.proj.out_features == 6
    kept = model.proj._depgraph_kept["out"].view(3, 2) % 4
    assert (kept == kept[0]).all()  # the same local positions survive in each head


def test_conv_transpose_net():
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.ConvTranspose2d(16, 8, 2, stride=2),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.ConvTranspose2d(8, 8, 3, padding=1, groups=2),
        nn.ReLU(),
        nn.Conv2d(8, 3, 1),
    )
    _, before, after = prune_verify(
        model,
        torch.randn(1, 3, 16, 16),
        pruning_ratio=0.5,
        root_module_types=[nn.Conv2d, nn.ConvTranspose2d],
        ignored_layers=[model[8]],
    )
    assert model[3].in_channels == 8 and model[3].out_channels == 4
    assert model[6].groups == 2 and model[6].in_channels == 4 and model[6].out_channels == 4


def test_mobilenet_v3_small_local():
    model = torchvision.models.mobilenet_v3_small(weights=None)
    _, before, after = prune_verify(
        model, torch.randn(1, 3, 64, 64), pruning_ratio=0.4, ignored_layers=[model.classifier[-1]]
    )
    assert all(after[m] <= before[m] for m in before) and sum(after.values()) < sum(before.values())


ZOO = [
    "resnet50",
    "densenet121",
    "mobilenet_v3_large",
    "resnext50_32x4d",
    "regnet_x_400mf",
    "shufflenet_v2_x0_5",
]


@pytest.mark.slow
@pytest.mark.parametrize("global_pruning", [False, True], ids=["local", "global"])
@pytest.mark.parametrize("name", ZOO)
def test_zoo(name, global_pruning):
    model = getattr(torchvision.models, name)(weights=None)
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 1000]
    _, before, after = prune_verify(
        model,
        torch.randn(1, 3, 64, 64),
        pruning_ratio=0.5,
        global_pruning=global_pruning,
        ignored_layers=heads,
    )
    assert sum(after.values()) <= 0.55 * sum(before.values())
