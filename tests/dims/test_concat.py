"""Joining and splitting rules (depgraph/dims/concat.py) on hand-built nets.

Each net is pruned through the rule under test and proven exact with
``depgraph.verify``; where the rule fixes *which* indices a consumer loses
(offsets of a cat, copies of a repeated tensor), the test spells them out.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import depgraph as tp

from .._checks import assert_refused_unchanged, build, member, names_in, prune_all_groups, prune_and_verify

OUT, IN = tp.prune_conv_out_channels, tp.prune_conv_in_channels


def cbr(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2), nn.BatchNorm2d(cout), nn.ReLU())


class NestedCat(nn.Module):
    """cat(cat(a, b), c, cat(a, b)): b's channels sit at 4.. and again at 4+9+6.."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = cbr(3, 4), cbr(3, 5), cbr(3, 6)
        self.head = nn.Conv2d(4 + 5 + 6 + 4 + 5, 7, 1)

    def forward(self, x):
        ab = torch.cat([self.a(x), self.b(x)], dim=1)
        return self.head(torch.cat([ab, self.c(x), ab], dim=1))


def test_nested_concat_shifts_by_every_preceding_piece():
    model = NestedCat()
    x = torch.randn(2, 3, 8, 8)
    done = prune_and_verify(model, x, model.b[0], OUT, [1, 3])
    group = done.groups[0]
    assert names_in(group) == {"b.0", "b.1", "head"}
    assert member(group, model.head, out=False) == [4 + 1, 4 + 3, 15 + 4 + 1, 15 + 4 + 3]
    assert model.head.in_channels == 24 - 4


def test_nested_concat_from_the_consumer_side():
    """Removing head inputs owned by c reaches only c (the other pieces keep their channels)."""
    model = NestedCat()
    done = prune_and_verify(model, torch.randn(2, 3, 8, 8), model.head, IN, [9, 10])
    assert names_in(done.groups[0]) == {"head", "c.0", "c.1"}
    assert member(done.groups[0], model.c[0], out=True) == [0, 1]


SPLITS = {
    "chunk": lambda x: x.chunk(2, dim=1),
    "tensor_split": lambda x: torch.tensor_split(x, 2, dim=1),
    "split": lambda x: torch.split(x, 4, dim=1),
    "split_sizes": lambda x: x.split([4, 4], 1),
}


class SplitCatResidual(nn.Module):
    """Split into halves, transform one, cat back and add the input (a residual)."""

    def __init__(self, how: str = "chunk"):
        super().__init__()
        self.split = SPLITS[how]
        self.stem = cbr(3, 8)
        self.branch = cbr(4, 4)
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        x = self.stem(x)
        a, b = self.split(x)
        return self.head(torch.cat([a, self.branch(b)], dim=1) + x)


@pytest.mark.parametrize("how", ["chunk", "tensor_split"])
def test_split_cat_residual(how):
    model = SplitCatResidual(how)
    done = prune_and_verify(model, torch.randn(2, 3, 8, 8), model.stem[0], OUT, [1])
    group = done.groups[0]
    # The halves are recomputed from the tensor: both lose position 1.
    assert member(group, model.stem[0], out=True) == [1, 5]
    assert member(group, model.branch[0], out=False) == [1]
    assert member(group, model.branch[0], out=True) == [1]
    assert member(group, model.head, out=False) == [1, 5]


def test_split_cat_residual_all_groups():
    done = prune_all_groups(SplitCatResidual(), torch.randn(2, 3, 8, 8), n_per_group=2, rounds=2)
    assert done.model.stem[0].out_channels < 8 and done.model.branch[0].out_channels < 4


@pytest.mark.parametrize("how", ["split", "split_sizes"])
def test_split_sizes_are_code_and_freeze(how):
    """``split(4)`` of 6 channels would give pieces of 4 and 2: the split dim must not shrink."""
    model = SplitCatResidual(how)
    DG = build(model, torch.randn(1, 3, 4, 4))
    assert list(DG.get_all_groups()) == []  # every channel passes through the split or the residual
    group = DG.get_pruning_group(model.stem[0], OUT, [1])
    assert not DG.check_pruning_group(group)
    assert_refused_unchanged(model, group.prune, tp.UnsupportedOpError, "split sizes are fixed in the code", DG)


def test_uneven_chunks_freeze():
    class Uneven(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 7, 1)

        def forward(self, x):
            a, b = self.stem(x).chunk(2, dim=1)  # 4 and 3
            return a[:, :3] * b

    model = Uneven()
    DG = build(model, torch.randn(1, 3, 4, 4))
    group = DG.get_pruning_group(model.stem, OUT, [0])
    assert any("uneven chunks" in r for r in group.blocked_by)
    assert_refused_unchanged(model, group.prune, tp.UnsupportedOpError, "uneven chunks", DG)


class CatTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 4)
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        x = self.stem(x)
        return self.head(torch.cat([x, x], dim=1))


def test_cat_of_the_same_tensor_twice():
    model = CatTwice()
    done = prune_and_verify(model, torch.randn(2, 3, 6, 6), model.stem[0], OUT, [2])
    assert member(done.groups[0], model.head, out=False) == [2, 6]


def test_cat_twice_from_one_copy_removes_both():
    """Removing head input 6 (the second copy of channel 2) must remove channel 2 everywhere."""
    model = CatTwice()
    done = prune_and_verify(model, torch.randn(2, 3, 6, 6), model.head, IN, [6])
    assert member(done.groups[0], model.head, out=False) == [2, 6]
    assert member(done.groups[0], model.stem[0], out=True) == [2]


class SpatialCat(nn.Module):
    """cat on H: the channels of both pieces are the same channels of the result."""

    def __init__(self):
        super().__init__()
        self.a, self.b = cbr(3, 6), cbr(3, 6)
        self.head = nn.Conv2d(6, 4, 3)

    def forward(self, x):
        return self.head(torch.cat([self.a(x), self.b(x[:, :, :4])], dim=2))


def test_cat_on_a_spatial_dim_couples_channels_identically():
    model = SpatialCat()
    done = prune_and_verify(model, torch.randn(2, 3, 8, 8), model.a[0], OUT, [0, 5])
    group = done.groups[0]
    assert member(group, model.b[0], out=True) == [0, 5]
    assert member(group, model.head, out=False) == [0, 5]


class Stack(nn.Module):
    def __init__(self, flatten: bool):
        super().__init__()
        self.flatten = flatten
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 1)
        self.head = nn.Conv2d(8 if flatten else 4, 5, 1)

    def forward(self, x):
        s = torch.stack([self.a(x), self.b(x)], dim=1)  # (B, 2, 4, H, W)
        return self.head(s.flatten(1, 2) if self.flatten else s.sum(1))


@pytest.mark.parametrize("flatten", [False, True], ids=["sum", "flatten"])
def test_stack(flatten):
    model = Stack(flatten)
    done = prune_and_verify(model, torch.randn(2, 3, 5, 5), model.a, OUT, [1])
    group = done.groups[0]
    assert member(group, model.b, out=True) == [1]
    assert member(group, model.head, out=False) == ([1, 5] if flatten else [1])


class ChunkGate(nn.Module):
    """GLU-style: chunk(2) then a * sigmoid(b)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        a, b = self.stem(x).chunk(2, dim=1)
        return self.head(a * torch.sigmoid(b))


def test_chunk_removes_the_same_position_in_every_piece():
    model = ChunkGate()
    done = prune_and_verify(model, torch.randn(2, 3, 4, 4), model.head, IN, [3])
    assert member(done.groups[0], model.stem, out=True) == [3, 7]
    prune_all_groups(ChunkGate(), torch.randn(2, 3, 4, 4), n_per_group=1, rounds=2)


class UnbindRows(nn.Module):
    """unbind over H (not channels), reverse the rows, stack them back."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 6)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        rows = self.stem(x).unbind(dim=2)
        return self.head(torch.stack(rows[::-1], dim=2))


def test_unbind_over_a_spatial_dim_keeps_channels_prunable():
    model = UnbindRows()
    done = prune_and_verify(model, torch.randn(1, 3, 5, 5), model.stem[0], OUT, [0, 4])
    assert member(done.groups[0], model.head, out=False) == [0, 4]


class UnequalSplit(nn.Module):
    """LeViT: ``view(B, N, H, -1).split([self.key_dim, self.key_dim, self.val_dim], dim=3)``."""

    def __init__(self, literal_v: bool = False):
        super().__init__()
        self.literal_v = literal_v
        self.num_heads, self.key_dim, self.val_dim = 2, 3, 5
        self.qkv = nn.Linear(6, 2 * (3 + 3 + 5))
        self.proj = nn.Linear(2 * 5, 6)

    def forward(self, x):
        b, n, _ = x.shape
        sizes = [self.key_dim, self.key_dim, 5 if self.literal_v else self.val_dim]
        q, k, v = self.qkv(x).view(b, n, self.num_heads, -1).split(sizes, dim=3)  # (B, N, H, 3 | 3 | 5)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        y = (q @ k.transpose(-1, -2) * 0.5).softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, n, -1))


def test_split_pieces_sized_by_attributes_follow_them():
    model = UnequalSplit()
    done = prune_and_verify(model, torch.randn(2, 4, 6), model.proj, tp.prune_linear_in_channels, [1])
    assert member(done.groups[0], model.qkv, out=True) == [7, 18]  # value dim 1 of both heads
    assert (model.val_dim, model.key_dim) == (4, 3)
    done = prune_and_verify(model, torch.randn(2, 4, 6), model.qkv, tp.prune_linear_out_channels, [0])
    assert member(done.groups[0], model.qkv, out=True) == [0, 3, 10, 13]  # q and k share self.key_dim
    assert (model.val_dim, model.key_dim) == (4, 2)


def test_a_literal_split_size_freezes_the_split_dim():
    """With one size written into the code the per-head dim cannot shrink: a removal takes whole heads."""
    model = UnequalSplit(literal_v=True)
    done = prune_and_verify(model, torch.randn(2, 4, 6), model.qkv, tp.prune_linear_out_channels, [0])
    assert member(done.groups[0], model.qkv, out=True) == list(range(11))
    assert (model.num_heads, model.key_dim, model.val_dim) == (1, 3, 5)


# -- NASNet-style cells ---------------------------------------------------------------------


class SameDepthwise(nn.Conv2d):
    """TF "same" padding by hand, then ``F.conv2d`` on the layer's own weight (timm's ``Conv2dSame``)."""

    def forward(self, x):
        pad = self.kernel_size[0] - 1
        x = nn.functional.pad(x, [pad // 2, pad - pad // 2, pad // 2, pad - pad // 2])
        return nn.functional.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class Separable(nn.Module):
    """NASNet's ``BranchSeparables`` with the original port's ``'specific'`` path: pad one more
    row and column with ``ZeroPad2d``, convolve, then slice them off again (``x[:, :, 1:, 1:]``)."""

    def __init__(self, cin: int, cout: int, stride: int, specific: bool):
        super().__init__()
        self.specific = specific
        self.pad = nn.ZeroPad2d((1, 0, 1, 0))
        self.dw = SameDepthwise(cin, cin, 3, stride=stride, groups=cin, bias=False)
        self.pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        x = torch.relu(x)
        if self.specific:
            x = self.dw(self.pad(x))[:, :, 1:, 1:].contiguous()
        else:
            x = self.dw(x)
        return self.bn(self.pw(x))


class CellStem(nn.Module):
    """timm NASNet's ``cell_stem_1`` reduced to its mechanism.

    The right input goes two ways: a strided avg-pool path and one shifted by a
    negative ``ZeroPad2d((-1, 1, -1, 1))`` (crop the first row and column, pad the
    last); each path's 1x1 conv gives half the channels and a BatchNorm runs over
    their concatenation. Separable branches (padded and sliced, same-padded
    depthwise) and pooling branches are summed pairwise, and the cell concatenates
    the sums, so every channel index shifts by the pieces before it.
    """

    def __init__(self, c: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(3, 2 * c, 3, stride=2, padding=1)
        self.conv_1x1 = nn.Sequential(nn.ReLU(), nn.Conv2d(2 * c, c, 1, stride=2, bias=False), nn.BatchNorm2d(c))
        self.path_1 = nn.Sequential(nn.AvgPool2d(1, stride=2, count_include_pad=False), nn.Conv2d(2 * c, c // 2, 1, bias=False))
        self.path_2 = nn.Sequential(nn.ZeroPad2d((-1, 1, -1, 1)), nn.AvgPool2d(1, stride=2, count_include_pad=False),
                                    nn.Conv2d(2 * c, c // 2, 1, bias=False))
        self.final_path_bn = nn.BatchNorm2d(c)
        self.left_0 = Separable(c, c, 2, specific=True)
        self.right_0 = Separable(c, c, 2, specific=False)
        self.left_1 = nn.MaxPool2d(3, 2, padding=1)
        self.right_1 = Separable(c, c, 2, specific=True)
        self.right_2 = nn.AvgPool2d(3, 1, padding=1, count_include_pad=False)
        self.left_3 = Separable(c, c, 1, specific=False)
        self.head = nn.Linear(3 * c, 5)

    def forward(self, x):
        x = self.stem(x)
        left = self.conv_1x1(x)
        r = torch.relu(x)
        right = self.final_path_bn(torch.cat([self.path_1(r), self.path_2(r)], 1))
        c0 = self.left_0(left) + self.right_0(right)
        c1 = self.left_1(left) + self.right_1(right)
        c2 = self.right_2(c0) + c1
        c3 = self.left_3(c0) + nn.functional.max_pool2d(right, 3, 2, padding=1)
        out = torch.cat([c1, c2, c3], 1)
        return self.head(out.mean((2, 3)))


def test_nasnet_cell_every_group_prunes_exactly():
    """Padded and sliced branches, the negative-pad path and the cells' concatenations all map:
    every group prunes (the original failed part-way in ``cell_stem_1.comb_iter...``) and stays exact."""
    torch.manual_seed(0)
    model = CellStem()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 1.5)
            m.running_mean.normal_(0, 0.1)
    done = prune_all_groups(model, torch.randn(2, 3, 32, 32), n_per_group=2, rounds=2,
                            ignored_layers=[model.head], min_groups=3)
    # The concatenation of the two path convs shifts path_2's channels by path_1's width.
    assert model.path_1[1].out_channels + model.path_2[2].out_channels == model.final_path_bn.num_features
    # c1 and c2 follow the left input (c2 = pool(c0) + c1), c3 the right one.
    assert model.head.in_features == 2 * model.right_1.bn.num_features + model.left_3.bn.num_features
    assert max(len(g) for g in done.groups) > 12  # the cell-wide group reaches every branch
