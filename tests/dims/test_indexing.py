"""Indexing rules (depgraph/dims/indexing.py): getitem/setitem, narrow/select, strided slices.

Each net is pruned through the rule under test and proven exact with
``depgraph.verify``; a slice or selection written into the code must freeze
the dim it cuts.
"""

from __future__ import annotations

import torch
import torch.nn as nn

import depgraph as tp

from .._checks import assert_refused_unchanged, build, member, prune_and_verify
from .test_concat import cbr

OUT, IN = tp.prune_conv_out_channels, tp.prune_conv_in_channels
LIN_OUT, LIN_IN = tp.prune_linear_out_channels, tp.prune_linear_in_channels


class Slicing(nn.Module):
    """getitem: spatial crops, steps, ellipsis and None keep the channel dim whole."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 6)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        y = self.stem(x)
        y = y[:, :, 1:, ::2] + y[..., :-1, 1::2]
        return self.head(y[:, None][:, 0])


def test_getitem_on_spatial_dims():
    model = Slicing()
    done = prune_and_verify(model, torch.randn(1, 3, 7, 8), model.stem[0], OUT, [2, 3])
    assert member(done.groups[0], model.head, out=False) == [2, 3]


class ChannelSlice(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.stem(x)[:, :4])


def test_getitem_slicing_channels_freezes_them():
    """``x[:, :4]`` is written in the code: pruning the sliced channels cannot follow it."""
    model = ChannelSlice()
    x = torch.randn(1, 3, 4, 4)
    DG = build(model, x)
    assert list(DG.get_all_groups()) == []
    group = DG.get_pruning_group(model.stem, OUT, [5])
    assert not DG.check_pruning_group(group)
    assert_refused_unchanged(model, group.prune, tp.UnsupportedOpError, r"Tensor.__getitem__", DG)


class Selects(nn.Module):
    """flip/roll/select/index_select over spatial dims leave channels whole."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 6)
        self.head = nn.Conv1d(6, 2, 1)

    def forward(self, x):
        y = torch.flip(self.stem(x), dims=[3]) + torch.roll(self.stem(x), 1, dims=2)
        y = y.index_select(3, torch.tensor([0, 2])).select(2, 1)  # (B, C, 2)
        return self.head(y + y.narrow(2, 0, 1))


def test_selecting_spatial_positions_keeps_channels():
    model = Selects()
    done = prune_and_verify(model, torch.randn(1, 3, 4, 4), model.stem[0], OUT, [1, 2])
    assert member(done.groups[0], model.head, out=False) == [1, 2]


def test_narrowing_the_channel_dim_freezes_it():
    class Narrow(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 6, 1)

        def forward(self, x):
            return self.stem(x).narrow(1, 0, 4).sum()

    model = Narrow()
    DG = build(model, torch.randn(1, 3, 2, 2))
    group = DG.get_pruning_group(model.stem, OUT, [5])
    assert any("Tensor.narrow" in r for r in group.blocked_by)


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


class InterleavedRope(nn.Module):
    """GPT-J / timm ``rot``: pairs (2i, 2i+1) rotate together, read with ``x[..., ::2]`` and ``x[..., 1::2]``."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.out = nn.Linear(8, 3)
        self.register_buffer("cos", torch.rand(8))

    def forward(self, x):
        h = self.fc(x)
        rot = torch.stack([-h[..., 1::2], h[..., ::2]], -1).reshape(h.shape)
        return self.out(h * self.cos + rot)


def test_strided_slices_remove_whole_blocks():
    model = InterleavedRope()
    done = prune_and_verify(model, torch.randn(2, 5, 4), model.out, tp.prune_linear_in_channels, [5])
    assert member(done.groups[0], model.fc, out=True) == [4, 5]  # the pair of position 5
    assert model.cos.shape == (6,)


def test_a_strided_slice_of_part_of_the_dim_freezes():
    class Part(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.out = nn.Linear(4, 8), nn.Linear(3, 2)

        def forward(self, x):
            return self.out(self.fc(x)[..., 1:7:2])

    model = Part()
    group = build(model, torch.randn(2, 4)).get_pruning_group(model.fc, tp.prune_linear_out_channels, [0])
    assert any("Tensor.__getitem__" in r for r in group.blocked_by)
