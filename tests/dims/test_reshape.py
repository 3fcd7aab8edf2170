"""Shape rules (depgraph/dims/reshape.py): reshapes as block maps, permutes, expand/repeat, shuffles."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import depgraph as tp

from .._checks import member, names_in, prune_all_groups, prune_and_verify

OUT, IN = tp.prune_conv_out_channels, tp.prune_conv_in_channels


class FlattenLinear(nn.Module):
    """(B, 4, 3, 3) -> (B, 36) -> Linear: channel c owns inputs c*9 .. c*9+8."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.fc = nn.Linear(36, 10)

    def forward(self, x):
        y = self.conv(x)
        if self.how == "flatten":
            y = torch.flatten(y, 1)
        elif self.how == "view":
            y = y.view(y.size(0), -1)
        else:
            y = y.reshape(y.shape[0], y.shape[1] * 9)
        return self.fc(y)


@pytest.mark.parametrize("how", ["flatten", "view", "reshape"])
def test_flatten_into_linear_is_a_block_map(how):
    model = FlattenLinear(how)
    done = prune_and_verify(model, torch.randn(2, 3, 3, 3), model.conv[0], OUT, [1, 3])
    assert member(done.groups[0], model.fc, out=False) == [*range(9, 18), *range(27, 36)]
    assert model.fc.in_features == 18


def test_flatten_into_linear_from_one_input_feature():
    """Removing one Linear input would cut a channel's block: it widens to the whole channel."""
    model = FlattenLinear("flatten")
    done = prune_and_verify(model, torch.randn(2, 3, 3, 3), model.fc, tp.prune_linear_in_channels, [20])
    assert member(done.groups[0], model.conv[0], out=True) == [2]
    assert member(done.groups[0], model.fc, out=False) == list(range(18, 27))


class LinearToDeconv(nn.Module):
    """A decoder: Linear -> view(B, 6, 2, 2) -> ConvTranspose2d."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 6 * 2 * 2)
        self.deconv = nn.ConvTranspose2d(6, 3, 4, stride=2, padding=1)

    def forward(self, z):
        return self.deconv(F.relu(self.fc(z)).view(z.shape[0], -1, 2, 2))


def test_linear_view_conv_transpose():
    model = LinearToDeconv()
    done = prune_and_verify(model, torch.randn(3, 5), model.deconv, IN, [1, 4])
    assert member(done.groups[0], model.fc, out=True) == [4, 5, 6, 7, 16, 17, 18, 19]
    assert model.fc.out_features == 16 and model.deconv.in_channels == 4


def test_linear_view_conv_transpose_from_the_linear():
    model = LinearToDeconv()
    done = prune_and_verify(model, torch.randn(3, 5), model.fc, tp.prune_linear_out_channels, [9])
    assert member(done.groups[0], model.fc, out=True) == [8, 9, 10, 11]
    assert member(done.groups[0], model.deconv, out=False) == [2]


def test_linear_view_conv_transpose_all_groups():
    prune_all_groups(LinearToDeconv(), torch.randn(3, 5), n_per_group=2, rounds=2,
                     root_module_types=(nn.Linear, nn.ConvTranspose2d))


def shuffle_by_view(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    # (B, g*k, H, W) -> (B, g, k, H, W) -> (B, k, g, H, W) -> (B, k*g, H, W); out index = j*g + i
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, c, h, w)


class Shuffle(nn.Module):
    """ShuffleNet: a grouped 1x1 conv, a channel shuffle, then a conv mixing the groups."""

    def __init__(self, how: str, groups: int = 2, grouped_before: bool = True, grouped_after: bool = False):
        super().__init__()
        self.how, self.groups = how, groups
        self.a = nn.Sequential(nn.Conv2d(4, 8, 1, groups=groups if grouped_before else 1), nn.BatchNorm2d(8))
        self.b = nn.Conv2d(8, 8, 3, padding=1, groups=groups if grouped_after else 1)
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        y = self.a(x)
        y = F.channel_shuffle(y, self.groups) if self.how == "functional" else shuffle_by_view(y, self.groups)
        return self.head(self.b(y))


@pytest.mark.parametrize("how", ["functional", "view"])
def test_channel_shuffle(how):
    model = Shuffle(how)
    done = prune_and_verify(model, torch.randn(2, 4, 4, 4), model.a[0], OUT, [1])
    group = done.groups[0]
    # a is grouped (2 x 4): channel 1 takes its partner 5 in the other group. The
    # shuffle sends channel i*4 + j to j*2 + i: 1 -> 2 and 5 -> 3.
    assert member(group, model.a[0], out=True) == [1, 5]
    assert member(group, model.b, out=False) == [2, 3]


def test_channel_shuffle_from_the_consumer():
    model = Shuffle("view")
    done = prune_and_verify(model, torch.randn(2, 4, 4, 4), model.b, IN, [6])
    assert member(done.groups[0], model.a[0], out=True) == [3, 7]  # 6 = 3*2 + 0: channel 3, partner 7


@pytest.mark.parametrize("how", ["functional", "view"])
def test_channel_shuffle_all_groups(how):
    prune_all_groups(Shuffle(how), torch.randn(2, 4, 4, 4), n_per_group=1, rounds=3)


def test_functional_channel_shuffle_keeps_its_group_count():
    """With ``F.channel_shuffle(x, 2)`` the group count is an argument: no prune may remove a group."""
    for grouped_before in (True, False):
        model = Shuffle("functional", grouped_before=grouped_before, grouped_after=True)
        prune_all_groups(model, torch.randn(2, 4, 4, 4), n_per_group=1, rounds=3)


def test_view_shuffle_keeps_its_group_count_next_to_a_grouped_conv():
    """The grouped conv after it may lose whole groups, but the shuffle's group count is code."""
    model = Shuffle("view", grouped_before=False, grouped_after=True)
    prune_all_groups(model, torch.randn(2, 4, 4, 4), n_per_group=1, rounds=3)


class ChannelsLast(nn.Module):
    """permute to (B, H, W, C), a Linear over C, transpose back."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 6)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        y = self.fc(self.conv(x).permute(0, 2, 3, 1))  # (B, H, W, C)
        y = y.transpose(1, 3).transpose(2, 3)  # (B, C, H, W)
        return self.head(y.contiguous())


def test_permute_and_transpose():
    model = ChannelsLast()
    done = prune_and_verify(model, torch.randn(2, 3, 4, 5), model.conv, OUT, [1])
    assert names_in(done.groups[0]) == {"conv", "fc"}
    model = ChannelsLast()
    done = prune_and_verify(model, torch.randn(2, 3, 4, 5), model.fc, tp.prune_linear_out_channels, [0, 5])
    assert member(done.groups[0], model.head, out=False) == [0, 5]


class Repeat(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.stem = nn.Conv2d(3, 4, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.stem(x)
        if self.how == "repeat":
            return self.head(y.repeat(1, 2, 1, 1))  # copies at c and c + 4
        if self.how == "tile":
            return self.head(torch.tile(y, (2, 1, 1)))
        return self.head(y.repeat_interleave(2, dim=1))  # copies at 2c and 2c + 1


@pytest.mark.parametrize(("how", "expected"), [("repeat", [1, 5]), ("tile", [1, 5]), ("interleave", [2, 3])])
def test_repeat_removes_every_copy(how, expected):
    model = Repeat(how)
    done = prune_and_verify(model, torch.randn(2, 3, 4, 4), model.stem, OUT, [1])
    assert member(done.groups[0], model.head, out=False) == expected


class Expand(nn.Module):
    """A learned per-channel (1, C, 1, 1) bias expanded to the feature map."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 5, 1)
        self.bias = nn.Parameter(torch.randn(1, 5, 1, 1))
        self.head = nn.Conv2d(5, 2, 1)

    def forward(self, x):
        y = self.stem(x)
        return self.head(y + self.bias.expand(y.shape[0], -1, y.shape[2], y.shape[3]))


def test_expand_carries_the_channel_dim():
    model = Expand()
    prune_and_verify(model, torch.randn(2, 3, 4, 4), model.stem, OUT, [0, 3])
    assert model.bias.shape == (1, 3, 1, 1)


class SqueezeUnsqueeze(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 6, 1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        y = self.conv(x.unsqueeze(-1)[..., 0]).unsqueeze(1)  # (B, 1, 6, L)
        return self.fc(y.squeeze(1).mean(-1))


def test_squeeze_and_unsqueeze():
    model = SqueezeUnsqueeze()
    done = prune_and_verify(model, torch.randn(2, 3, 7), model.conv, OUT, [2])
    assert member(done.groups[0], model.fc, out=False) == [2]


class HeadSplit(nn.Module):
    """(B, T, H*D) -> (B, T, H, D): the head axis and the head-dim axis are separate.

    A size written into the code (3 heads, 4 dims) cannot follow a prune; the one
    the code infers (``-1``) can, so each variant prunes only along its ``-1``.
    """

    def __init__(self, infer: str):
        super().__init__()
        self.infer = infer
        self.proj = nn.Linear(8, 3 * 4)
        self.out = nn.Linear(3 * 4, 8)

    def forward(self, x):
        b, t, _ = x.shape
        shape = (b, t, -1, 4) if self.infer == "heads" else (b, t, 3, -1)
        h = self.proj(x).view(*shape)  # out index = h*4 + d
        return self.out(torch.relu(h).reshape(b, t, -1))


def test_reshape_into_heads_prunes_whole_heads():
    model = HeadSplit("heads")
    done = prune_and_verify(model, torch.randn(2, 5, 8), model.proj, tp.prune_linear_out_channels, [4, 5, 6, 7])
    assert member(done.groups[0], model.out, out=False) == [4, 5, 6, 7]


def test_reshape_into_heads_prunes_the_same_dims_of_every_head():
    model = HeadSplit("head_dim")
    done = prune_and_verify(model, torch.randn(2, 5, 8), model.proj, tp.prune_linear_out_channels, [1])
    assert member(done.groups[0], model.out, out=False) == [1, 5, 9]


class LinearNorm(nn.Module):
    """LeViT's ``bn(x.flatten(0, 1)).reshape_as(x)``: the shape comes from another tensor."""

    def __init__(self, other: bool = False):
        super().__init__()
        self.other = other
        self.linear, self.bn, self.fc = nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)

    def forward(self, x, shape_of=None):
        y = self.linear(x)
        return self.fc(self.bn(y.flatten(0, 1)).reshape_as(y if shape_of is None else shape_of))


def test_reshape_as_a_coupled_tensor_follows():
    model = LinearNorm()
    done = prune_and_verify(model, torch.randn(2, 4, 6), model.linear, tp.prune_linear_out_channels, [2])
    assert member(done.groups[0], model.bn) == [2] and model.fc.in_features == 7


def test_reshape_as_an_uncoupled_tensor_freezes():
    from .._checks import build

    model = LinearNorm()
    DG = build(model, (torch.randn(2, 4, 6), torch.randn(2, 4, 8)))
    group = DG.get_pruning_group(model.linear, tp.prune_linear_out_channels, [2])
    assert any("computed from another tensor's shape" in r for r in group.blocked_by)


class MaxViTAttentionBlock(nn.Module):
    """torchvision MaxViT's attention with its residual: it ends in ``reshape(B, G, P, D)``, D read
    from its *input*, so the residual width and the heads' inner width may only change together."""

    def __init__(self):
        super().__init__()
        from torchvision.models.maxvit import RelativePositionalMultiHeadAttention

        self.proj = nn.Linear(8, 16)
        self.attn = RelativePositionalMultiHeadAttention(feat_dim=16, head_dim=4, max_seq_len=4)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        x = self.proj(x)
        x = x + self.attn(x)
        return self.head(x + self.mlp(x))


def test_reshape_to_a_size_read_from_another_input_keeps_the_heads_with_it():
    from .._checks import build

    model = MaxViTAttentionBlock()
    x = torch.randn(1, 2, 4, 8)
    DG = build(model, x)
    # D follows the residual; the merged (heads x head_dim) dim follows n_heads/head_dim: not the same.
    group = DG.get_pruning_group(model.proj, tp.prune_linear_out_channels, [1])
    assert any("computed from another tensor's shape" in r for r in group.blocked_by), group.details()
    inner = DG.get_pruning_group(model.attn.merge, tp.prune_linear_in_channels, [1])
    assert any("computed from another tensor's shape" in r for r in inner.blocked_by), inner.details()
    done = prune_all_groups(model, x, n_per_group=2, exact=True)
    assert model.mlp[0].out_features == 30 and model.proj.out_features == 16 and model.attn.merge.in_features == 16
    assert done.result.exact
