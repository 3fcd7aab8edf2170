"""Elementwise and broadcast rules (depgraph/dims/elementwise.py) on hand-built nets."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import depgraph as tp

from .._checks import build, member, names_in, prune_and_verify

OUT, IN = tp.prune_conv_out_channels, tp.prune_conv_in_channels


class MaskMultiply(nn.Module):
    """A 1-channel mask broadcast over C feature channels (spatial attention)."""

    def __init__(self):
        super().__init__()
        self.feat = nn.Conv2d(3, 8, 3, padding=1)
        self.mask = nn.Conv2d(3, 1, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.feat(x) * torch.sigmoid(self.mask(x)))


def test_broadcast_mask_does_not_couple_channels():
    model = MaskMultiply()
    done = prune_and_verify(model, torch.randn(2, 3, 6, 6), model.feat, OUT, [0, 3])
    assert names_in(done.groups[0]) == {"feat", "head"}  # not "mask": it broadcasts
    assert model.mask.out_channels == 1


def test_one_channel_mask_is_not_a_group():
    model = MaskMultiply()
    DG = build(model, torch.randn(2, 3, 6, 6))
    roots = [g[0].dep.target.module for g in DG.get_all_groups()]
    assert model.mask not in roots and model.feat in roots


class ChannelGate(nn.Module):
    """Squeeze-and-excitation: a (B, C, 1, 1) gate broadcast over H, W couples C."""

    def __init__(self):
        super().__init__()
        self.feat = nn.Conv2d(3, 8, 3, padding=1)
        self.reduce = nn.Conv2d(8, 2, 1)
        self.expand = nn.Conv2d(2, 8, 1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        f = self.feat(x)
        g = torch.sigmoid(self.expand(F.relu(self.reduce(F.adaptive_avg_pool2d(f, 1)))))
        return self.head(f * g.expand_as(f))


def test_channel_gate_couples_expand_with_features():
    model = ChannelGate()
    done = prune_and_verify(model, torch.randn(2, 3, 6, 6), model.feat, OUT, [1, 6])
    group = done.groups[0]
    assert member(group, model.expand, out=True) == [1, 6]
    assert member(group, model.reduce, out=False) == [1, 6]
    assert "reduce" in names_in(group) and member(group, model.head, out=False) == [1, 6]


class InPlace(nn.Module):
    """``relu(inplace=True)``, ``add_``, ``+=`` and ``mul_`` create new versions of a value."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 1)
        self.c = nn.Conv2d(3, 6, 1)
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        y = self.act(self.a(x))
        y.add_(self.b(x))
        y += self.c(x)
        y.mul_(0.5)
        F.relu(y, inplace=True)
        return self.head(y)


def test_inplace_ops():
    model = InPlace()
    done = prune_and_verify(model, torch.randn(2, 3, 5, 5), model.a, OUT, [1, 4])
    group = done.groups[0]
    assert names_in(group) == {"a", "b", "c", "head"}
    assert member(group, model.c, out=True) == [1, 4]


class FunctionalPReLU(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 1)
        self.slope = nn.Parameter(torch.rand(n))
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.head(F.prelu(self.stem(x), self.slope))


@pytest.mark.parametrize("n", [1, 6], ids=["shared", "per-channel"])
def test_functional_prelu_weight_follows_channels(n):
    model = FunctionalPReLU(n)
    prune_and_verify(model, torch.randn(1, 3, 4, 4), model.stem, OUT, [0, 5])
    assert model.slope.shape == ((1,) if n == 1 else (4,))
