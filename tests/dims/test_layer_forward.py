"""Layers whose subclass overrides ``forward`` (depgraph/dims/linear_ops.py, ``layer_weight``).

A ``Conv2d`` subclass that pads and then calls ``F.conv2d`` on its own weight
(timm's ``Conv2dSame``, EfficientNet TF ports) is not one node of the trace:
its forward is recorded op by op. The recorded convolution on the layer's own
weight must couple exactly as the layer does, groups included, or a depthwise
layer's input and output are pruned apart - the model then fails, or silently
computes something else.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import depgraph as tp
from depgraph.errors import UnsupportedOpError

from .._checks import (
    assert_refused_unchanged,
    build,
    check_result,
    member,
    output_shapes,
    prune_all_groups,
    prune_and_verify,
)
from ..zoo._zoo import randomize_norms

CONV_OUT, CONV_IN = tp.prune_conv_out_channels, tp.prune_conv_in_channels


class SameConv(nn.Conv2d):
    """TF "same" padding: pad by hand, then convolve with padding 0 (timm's ``Conv2dSame``)."""

    def forward(self, x):
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph = max((-(-ih // sh) - 1) * sh + kh - ih, 0)
        pw = max((-(-iw // sw) - 1) * sw + kw - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class SuperConv(nn.Conv2d):
    """A subclass that wraps the parent's forward (the convolution happens in ``Conv2d.forward``)."""

    def forward(self, x):
        return super().forward(F.pad(x, [1, 1, 1, 1]))


class Block(nn.Module):
    """MobileNet-style: pointwise -> depthwise (same-padded, stride 2) -> pointwise (same-padded 3x3), residual-free."""

    def __init__(self, conv: type[nn.Conv2d], bias: bool, kind: str):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 1)
        self.bn1 = nn.BatchNorm2d(16)
        groups = 16 if kind == "depthwise" else (4 if kind == "grouped" else 1)
        pad = {} if conv is SameConv else {"padding": 0}
        self.mid = conv(16, 16, 3, stride=2, groups=groups, bias=bias, **pad)
        self.bn2 = nn.BatchNorm2d(16)
        self.dense = conv(16, 24, 3, bias=bias, **pad)
        self.bn3 = nn.BatchNorm2d(24)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.stem(x)))
        x = torch.relu(self.bn2(self.mid(x)))
        x = torch.relu(self.bn3(self.dense(x)))
        return self.fc(x.mean((2, 3)))


CASES = [(conv, bias, kind) for conv in (SameConv, SuperConv) for bias in (True, False)
         for kind in ("depthwise", "grouped", "dense")]


def _id(case) -> str:
    conv, bias, kind = case
    return f"{conv.__name__}-{kind}-{'bias' if bias else 'nobias'}"


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_every_group_prunes_exactly(case):
    model = Block(*case)
    randomize_norms(model)
    groups = 2 if case[2] == "depthwise" else 3  # a depthwise layer's channels are its input's
    prune_all_groups(model, torch.randn(2, 3, 9, 9), n_per_group=2, rounds=2, ignored_layers=[model.fc],
                     min_groups=groups)


@pytest.mark.parametrize("bias", [True, False])
def test_depthwise_input_and_output_go_together(bias):
    """The group of the conv before a depthwise layer reaches through it (the bug: it stopped at its input)."""
    model = Block(SameConv, bias, "depthwise").eval()
    DG = build(model, torch.randn(1, 3, 9, 9))
    group = DG.get_pruning_group(model.stem, CONV_OUT, [0, 5])
    assert member(group, model.mid, out=False) == [0, 5]
    assert member(group, model.mid, out=True) == [0, 5]
    assert member(group, model.bn2) == [0, 5]
    assert member(group, model.dense, out=False) == [0, 5]


def test_grouped_layer_loses_the_same_positions_in_every_group():
    model = Block(SameConv, True, "grouped").eval()
    DG = build(model, torch.randn(1, 3, 9, 9))
    group = DG.get_pruning_group(model.stem, CONV_OUT, [1])
    assert member(group, model.mid, out=False) == [1, 5, 9, 13]  # local position 1 of each of 4 groups


@pytest.mark.parametrize("kind", ["depthwise", "dense"])
def test_base_pruner_half_is_exact(kind):
    model = Block(SameConv, True, kind).eval()
    randomize_norms(model)
    x = torch.randn(1, 3, 9, 9)
    original, shapes = copy.deepcopy(model), output_shapes(model, x)
    tp.pruner.BasePruner(model, x, tp.importance.GroupMagnitudeImportance(), pruning_ratio=0.5,
                         ignored_layers=[model.fc]).step()
    assert model.mid.out_channels == model.mid.in_channels == 8
    check_result(original, model, x, shapes, exact=True)


def test_functional_conv_with_other_groups_freezes():
    """``F.conv2d`` on a layer's weight with a ``groups`` the layer does not have is not that layer."""

    class Regrouped(nn.Conv2d):
        def forward(self, x):
            return F.conv2d(x.repeat(1, 2, 1, 1), self.weight, self.bias, groups=2 * self.groups)

    model = nn.Sequential(nn.Conv2d(3, 8, 1), Regrouped(8, 8, 1, groups=2), nn.Conv2d(8, 4, 1))
    DG = build(model, torch.randn(1, 3, 4, 4))
    group = DG.get_pruning_group(model[0], CONV_OUT, [0])
    assert any("runs 1.weight with groups=4, the layer has groups=2" in r for r in group.blocked_by), group.blocked_by


# -- the backstop: a prune whose model no longer runs is rolled back -------------------------------


class Scale(nn.Module):
    """A per-channel scale with a user-registered handler."""

    def __init__(self, n: int):
        super().__init__()
        self.scale = nn.Parameter(torch.rand(n) + 0.5)

    def forward(self, x):
        return x * self.scale.view(1, -1, 1, 1)


class ForgetfulScalePruner(tp.pruner.function.BasePruningFunc):
    """A buggy handler: reports the width but never prunes the scale."""

    TARGET_MODULES = (Scale,)

    def prune_out_channels(self, layer, idxs):
        self.check_idxs(layer, idxs, "out")
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer):
        return layer.scale.shape[0]

    get_in_channels = get_out_channels


def test_a_group_whose_model_fails_is_rolled_back_and_not_offered_again():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), Scale(8), nn.Conv2d(8, 4, 1)).eval()
    DG = build(model, torch.randn(1, 3, 4, 4), customized_pruners={Scale: ForgetfulScalePruner()})
    group = DG.get_pruning_group(model[0], CONV_OUT, [1, 2])
    assert DG.check_pruning_group(group)
    assert_refused_unchanged(model, group.prune, UnsupportedOpError,
                             r"breaks the model's forward pass .*restored unchanged", DG)
    assert model(torch.randn(1, 3, 4, 4)).shape == (1, 4, 4, 4)
    assert all(g[0].dep.target.module is not model[0] for g in DG.get_all_groups())


# -- weight standardisation: the layer's weight transformed before the convolution -----------------


class WSConv(nn.Conv2d):
    """Weight standardisation (timm's ``StdConv2d``; ``scaled``: ``ScaledStdConv2d`` with a per-channel gain)."""

    def __init__(self, *args, scaled: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.scaled = scaled
        self.scale = self.weight[0].numel() ** -0.5
        if scaled:
            self.gain = nn.Parameter(torch.rand(self.out_channels, 1, 1, 1) + 0.5)

    def forward(self, x):
        gain = (self.gain * self.scale).view(-1) if self.scaled else None
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, weight=gain,
                         training=True, momentum=0.0, eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class WSNet(nn.Module):
    def __init__(self, scaled: bool, groups: int = 1):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.ws = WSConv(8, 8, 3, padding=1, groups=groups, scaled=scaled)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.ws(torch.relu(self.stem(x)))))


@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("groups", [1, 2, 8])
def test_standardised_outputs_prune_exactly(scaled, groups):
    """Standardisation is per output channel: removing output channels is exact (the gain follows)."""
    model = WSNet(scaled, groups)
    idxs = {1: [1, 6], 2: [1, 5], 8: [3]}[groups]  # depthwise: one channel is one whole group
    done = prune_and_verify(model, torch.randn(1, 3, 6, 6), model.ws, CONV_OUT, idxs)
    assert model.ws.weight.shape[0] == model.ws.out_channels == model.head.in_channels == 8 - len(idxs)
    if scaled:
        assert member(done.groups[0], model.ws.gain) == idxs
        assert model.ws.gain.shape[0] == model.ws.out_channels


@pytest.mark.parametrize("scaled", [False, True])
def test_standardised_inputs_prune_but_not_exactly(scaled):
    """The statistics run over in_channels*k*k: removing inputs is valid but changes them (like a LayerNorm)."""
    model = WSNet(scaled)
    done = prune_and_verify(model, torch.randn(1, 3, 6, 6), model.stem, CONV_OUT, [0, 2], exact=False)
    assert model.ws.in_channels == 6 and model.ws.weight.shape == (8, 6, 3, 3)
    assert any("ws normalises with statistics over dim 2" in r for r in done.result.reasons), done.result.reasons


def test_standardised_every_group_over_rounds():
    model = WSNet(True, 2)
    prune_all_groups(model, torch.randn(1, 3, 6, 6), n_per_group=2, rounds=2, exact=False, min_groups=2)
