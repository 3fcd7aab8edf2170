"""Elementwise, broadcast and spatial rules (depgraph/dims/elementwise.py) on hand-built nets."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import depgraph as tp

from .._checks import assert_refused_unchanged, build, member, names_in, prune_all_groups, prune_and_verify

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


class Spatial(nn.Module):
    """Pooling, adaptive pooling, interpolation and padding change H, W only."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d((3, 3))
        self.mid = nn.Conv2d(6, 6, 1)
        self.head = nn.Conv2d(6, 4, 3)

    def forward(self, x):
        y = self.pool(self.stem(x))
        y = F.interpolate(y, scale_factor=2, mode="nearest") + F.interpolate(y, size=(6, 6), mode="bilinear")
        y = F.max_pool2d(self.mid(y), 2) + F.adaptive_max_pool2d(y, 3) + F.avg_pool2d(y, 2)
        return self.head(F.pad(y, (1, 1, 2, 0)) + F.pad(y, (1, 1, 1, 1), mode="reflect"))


def test_pooling_interpolate_pad():
    model = Spatial()
    done = prune_and_verify(model, torch.randn(2, 3, 8, 8), model.stem[0], OUT, [0, 2, 5])
    group = done.groups[0]
    assert member(group, model.mid, out=True) == [0, 2, 5]
    assert member(group, model.head, out=False) == [0, 2, 5]


def test_pooling_interpolate_pad_all_groups():
    prune_all_groups(Spatial(), torch.randn(2, 3, 8, 8), n_per_group=2, rounds=2)


class PadChannels(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(F.pad(self.stem(x), (0, 0, 0, 0, 1, 1)))


def test_padding_the_channel_dim_freezes_it():
    model = PadChannels()
    DG = build(model, torch.randn(1, 3, 4, 4))
    group = DG.get_pruning_group(model.stem, OUT, [0])
    assert not DG.check_pruning_group(group)
    assert_refused_unchanged(model, group.prune, tp.UnsupportedOpError, "F.pad", DG)


class PixelShuffle(nn.Module):
    def __init__(self, unshuffle: bool):
        super().__init__()
        self.unshuffle = unshuffle
        if unshuffle:  # (3, 8, 8) -> (12, 4, 4)
            self.stem, self.head = nn.Conv2d(3, 3, 1), nn.Conv2d(12, 5, 1)
        else:  # (12, 4, 4) -> (3, 8, 8)
            self.stem, self.head = nn.Conv2d(3, 12, 1), nn.Conv2d(3, 5, 1)

    def forward(self, x):
        y = self.stem(x)
        return self.head(F.pixel_unshuffle(y, 2) if self.unshuffle else F.pixel_shuffle(y, 2))


def test_pixel_shuffle_removes_whole_blocks_of_r_squared():
    model = PixelShuffle(unshuffle=False)
    done = prune_and_verify(model, torch.randn(2, 3, 4, 4), model.head, IN, [1])
    assert member(done.groups[0], model.stem, out=True) == [4, 5, 6, 7]


def test_pixel_shuffle_widens_a_single_channel_to_its_block():
    model = PixelShuffle(unshuffle=False)
    done = prune_and_verify(model, torch.randn(2, 3, 4, 4), model.stem, OUT, [9])
    assert member(done.groups[0], model.stem, out=True) == [8, 9, 10, 11]
    assert member(done.groups[0], model.head, out=False) == [2]


def test_pixel_unshuffle():
    model = PixelShuffle(unshuffle=True)
    done = prune_and_verify(model, torch.randn(2, 3, 8, 8), model.stem, OUT, [1])
    assert member(done.groups[0], model.head, out=False) == [4, 5, 6, 7]


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


class SetItem(nn.Module):
    """``y[:, :, 0] = z`` writes a row: the channels of y and z are the same channels."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 1)
        self.b = nn.Conv2d(3, 6, 1)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        y = self.a(x)
        y[:, :, 0] = self.b(x)[:, :, 1]
        return self.head(y)


def test_setitem_couples_the_written_value():
    model = SetItem()
    done = prune_and_verify(model, torch.randn(1, 3, 4, 4), model.a, OUT, [2])
    assert member(done.groups[0], model.b, out=True) == [2]


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
