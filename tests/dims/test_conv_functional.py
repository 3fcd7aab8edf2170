"""``F.conv2d`` on a bare weight (depgraph/dims/linear_ops.py, ``conv_rule``): the ``groups`` argument.

timm's ``BlurPool2d`` (resnetblur, densenetblur, TResNet) blurs every channel with
a fixed filter held in a *buffer*, as a depthwise ``F.conv2d`` whose ``groups`` is
``self.channels``. The buffer follows the channels like any bare tensor; the
``groups`` argument must follow too, or the pruned model fails its forward.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import depgraph as tp

from .._checks import build, member, prune_all_groups, prune_and_verify

CONV_OUT = tp.prune_conv_out_channels


class Blur(nn.Module):
    """A depthwise blur with a buffer filter; ``groups`` from an attribute, the input, or a literal."""

    def __init__(self, channels: int, how: str):
        super().__init__()
        self.channels, self.how = channels, how
        k = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("filt", (k[:, None] * k[None, :] / 16).repeat(channels, 1, 1, 1))

    def forward(self, x):
        x = F.pad(x, [1, 1, 1, 1], mode="reflect")
        if self.how == "attribute":
            return F.conv2d(x, self.filt, stride=2, groups=self.channels)
        if self.how == "shape":
            return F.conv2d(x, self.filt[:1].expand(x.shape[1], 1, 3, 3), stride=2, groups=x.shape[1])
        return F.conv2d(x, self.filt, stride=2, groups=8)


class GroupedMix(nn.Module):
    """A grouped ``F.conv2d`` (2 groups) on a parameter of this module, ``groups=self.groups``."""

    def __init__(self):
        super().__init__()
        self.groups = 2
        self.weight = nn.Parameter(torch.randn(6, 4, 1, 1))

    def forward(self, x):
        return F.conv2d(x, self.weight, groups=self.groups)


def _net(blur: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), blur, nn.Conv2d(8, 4, 1))


@pytest.mark.parametrize("how", ["attribute", "shape"])
def test_blur_follows_the_channels(how):
    model = _net(Blur(8, how))
    done = prune_and_verify(model, torch.randn(1, 3, 8, 8), model[0], CONV_OUT, [0, 3, 5])
    blur = model[3]
    assert blur.filt.shape == ((5, 1, 3, 3) if how == "attribute" else (8, 1, 3, 3))
    assert blur.channels == (5 if how == "attribute" else 8)
    assert type(blur.channels) is int
    if how == "attribute":
        assert member(done.groups[0], blur.filt) == [0, 3, 5]


def test_blur_every_group_over_rounds():
    model = _net(Blur(8, "attribute"))
    prune_all_groups(model, torch.randn(1, 3, 8, 8), n_per_group=2, rounds=3)
    assert model[3].channels == model[3].filt.shape[0] == model[0].out_channels == 2


def test_a_literal_groups_freezes():
    model = _net(Blur(8, "literal"))
    DG = build(model, torch.randn(1, 3, 8, 8))
    group = DG.get_pruning_group(model[0], CONV_OUT, [1])
    assert "torch.conv2d in 3: groups=8 is written into the code" in group.blocked_by
    assert not DG.check_pruning_group(group)


def test_grouped_functional_conv_removes_groups_and_positions():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), GroupedMix(), nn.Conv2d(6, 2, 1))
    x = torch.randn(1, 3, 4, 4)
    done = prune_and_verify(model, x, model[0], CONV_OUT, [4, 5, 6, 7])  # the second group, whole
    assert model[1].groups == 1 and model[1].weight.shape == (3, 4, 1, 1)
    assert member(done.groups[0], model[2], out=False) == [3, 4, 5]
    model = nn.Sequential(nn.Conv2d(3, 8, 1), GroupedMix(), nn.Conv2d(6, 2, 1))
    prune_and_verify(model, x, model[0], CONV_OUT, [1])  # position 1 of every group
    assert model[1].groups == 2 and model[1].weight.shape == (6, 3, 1, 1)
