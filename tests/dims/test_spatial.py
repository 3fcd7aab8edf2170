"""Spatial rules (depgraph/dims/spatial.py): pooling, interpolation, padding, pixel shuffle."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import depgraph as tp

from .._checks import assert_refused_unchanged, build, member, prune_all_groups, prune_and_verify

OUT, IN = tp.prune_conv_out_channels, tp.prune_conv_in_channels
LIN_OUT, LIN_IN = tp.prune_linear_out_channels, tp.prune_linear_in_channels


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
