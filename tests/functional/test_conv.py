"""Tests for depgraph/functional/conv.py: plain, grouped, depthwise and transposed convs."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from depgraph.errors import HandlerMismatchError, InvalidIndicesError, OverPruningError
from depgraph.functional import (
    ConvPruner,
    DepthwiseConvPruner,
    prune_conv_in_channels,
    prune_conv_out_channels,
    prune_depthwise_conv_in_channels,
    prune_depthwise_conv_out_channels,
)

from ._checks import assert_identity_and_grads, assert_refused, assert_restricts, mark_grads

torch.manual_seed(0)


def _conv(cls: type[nn.Module], cin: int, cout: int, groups: int = 1) -> nn.Module:
    return cls(cin, cout, 3, groups=groups, padding=1).double()


def _input(conv: nn.Module, batch: int = 2) -> torch.Tensor:
    spatial = (5,) * len(conv.kernel_size)
    return torch.randn(batch, conv.in_channels, *spatial, dtype=torch.float64)


def _same_layout(pruned: nn.Module, cls: type[nn.Module], cin: int, cout: int, groups: int) -> None:
    """Attributes, repr and parameter shapes match a conv built at the pruned size."""
    fresh = cls(cin, cout, 3, groups=groups, padding=1).double()
    assert repr(pruned) == repr(fresh)
    assert pruned.weight.shape == fresh.weight.shape
    fresh.load_state_dict(pruned.state_dict())  # strict: same keys and shapes


ALL_CONVS = [nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d]


@pytest.mark.parametrize("cls", ALL_CONVS)
def test_out_channels_are_dropped_from_the_output(cls):
    conv = _conv(cls, 4, 6)
    original, params = copy.deepcopy(conv), mark_grads(conv)
    assert prune_conv_out_channels(conv, [0, 4]) is conv
    _same_layout(conv, cls, 4, 4, 1)
    assert_identity_and_grads(conv, params)
    assert_restricts(original, conv, _input(original), out_dim=1, out_idxs=[0, 4])


@pytest.mark.parametrize("cls", ALL_CONVS)
def test_in_channels_equal_zeroed_inputs(cls):
    conv = _conv(cls, 5, 3)
    original, params = copy.deepcopy(conv), mark_grads(conv)
    prune_conv_in_channels(conv, torch.tensor([3, 1]))
    _same_layout(conv, cls, 3, 3, 1)
    assert_identity_and_grads(conv, params)
    assert_restricts(original, conv, _input(original), in_dim=1, in_idxs=[1, 3])


@pytest.mark.parametrize("order", ["out_first", "in_first"])
def test_grouped_conv_loses_a_whole_group(order):
    conv = _conv(nn.Conv2d, 8, 12, groups=4)  # in blocks of 2, out blocks of 3
    original = copy.deepcopy(conv)
    calls = [(prune_conv_out_channels, [3, 4, 5]), (prune_conv_in_channels, [2, 3])]
    for fn, idxs in calls if order == "out_first" else calls[::-1]:
        fn(conv, idxs)
    _same_layout(conv, nn.Conv2d, 6, 9, 3)
    assert_restricts(original, conv, _input(original), in_dim=1, in_idxs=[2, 3], out_dim=1, out_idxs=[3, 4, 5])


def test_grouped_conv_loses_equal_positions_in_every_group():
    conv = _conv(nn.Conv2d, 8, 12, groups=4)
    original, params = copy.deepcopy(conv), mark_grads(conv)
    out_idxs, in_idxs = [0, 5, 7, 9], [1, 3, 5, 7]  # one row per out block, local 1 of every in block
    prune_conv_out_channels(conv, out_idxs)
    prune_conv_in_channels(conv, in_idxs)
    _same_layout(conv, nn.Conv2d, 4, 8, 4)
    assert_identity_and_grads(conv, params)
    assert_restricts(original, conv, _input(original), in_dim=1, in_idxs=in_idxs, out_dim=1, out_idxs=out_idxs)


def test_grouped_conv_whole_group_plus_equal_positions():
    conv = _conv(nn.Conv2d, 8, 12, groups=4)
    original = copy.deepcopy(conv)
    out_idxs, in_idxs = [0, 1, 2, 4, 7, 10], [0, 1, 3, 5, 7]  # group 0 whole, then 1 per group
    prune_conv_out_channels(conv, out_idxs)
    prune_conv_in_channels(conv, in_idxs)
    _same_layout(conv, nn.Conv2d, 3, 6, 3)
    assert_restricts(original, conv, _input(original), in_dim=1, in_idxs=in_idxs, out_dim=1, out_idxs=out_idxs)


@pytest.mark.parametrize(
    ("fn", "idxs", "match"),
    [
        (prune_conv_out_channels, [0, 1, 2, 3], r"same number.*group 1: 1, group 2: 0"),
        (prune_conv_out_channels, [11], r"same number"),
        (prune_conv_in_channels, [0, 3], r"same local positions.*group 0: \[0\], group 1: \[1\]"),
        (prune_conv_in_channels, [0, 1, 2], r"same local positions"),
    ],
)
def test_uneven_grouped_pruning_is_refused(fn, idxs, match):
    conv = _conv(nn.Conv2d, 8, 12, groups=4)
    assert_refused(fn, conv, idxs, InvalidIndicesError, match)


def test_sides_must_remove_the_same_groups():
    conv = _conv(nn.Conv2d, 8, 12, groups=4)
    prune_conv_out_channels(conv, [3, 4, 5])  # group 1
    assert_refused(prune_conv_in_channels, conv, [2, 3, 4, 5], InvalidIndicesError, "same groups")
    prune_conv_in_channels(conv, [2, 3])
    _same_layout(conv, nn.Conv2d, 6, 9, 3)


def test_depthwise_multiplier_two_via_conv_pruner():
    conv = _conv(nn.Conv2d, 4, 8, groups=4)
    original = copy.deepcopy(conv)
    prune_conv_out_channels(conv, [2, 3])  # the outputs of input channel 1
    prune_conv_in_channels(conv, [1])
    _same_layout(conv, nn.Conv2d, 3, 6, 3)
    assert_restricts(original, conv, _input(original), in_dim=1, in_idxs=[1], out_dim=1, out_idxs=[2, 3])


@pytest.mark.parametrize(
    ("fn", "idxs", "out_idxs", "in_idxs", "sizes"),
    [
        (prune_depthwise_conv_out_channels, [2, 3, 6, 7], [2, 3, 6, 7], [1, 3], (2, 4, 2)),
        (prune_depthwise_conv_in_channels, [0, 2], [0, 1, 4, 5], [0, 2], (2, 4, 2)),
        (prune_depthwise_conv_out_channels, [0, 3, 4, 7], [0, 3, 4, 7], [], (4, 4, 4)),
    ],
)
def test_depthwise_pruner_prunes_both_sides(fn, idxs, out_idxs, in_idxs, sizes):
    conv = _conv(nn.Conv2d, 4, 8, groups=4)
    original, params = copy.deepcopy(conv), mark_grads(conv)
    fn(conv, idxs)
    _same_layout(conv, nn.Conv2d, *sizes)
    assert_identity_and_grads(conv, params)
    assert_restricts(original, conv, _input(original), in_dim=1, in_idxs=in_idxs, out_dim=1, out_idxs=out_idxs)


def test_depthwise_pruner_on_a_transposed_depthwise_conv():
    conv = _conv(nn.ConvTranspose2d, 3, 6, groups=3)
    original = copy.deepcopy(conv)
    prune_depthwise_conv_in_channels(conv, [2])
    _same_layout(conv, nn.ConvTranspose2d, 2, 4, 2)
    assert_restricts(original, conv, _input(original), in_dim=1, in_idxs=[2], out_dim=1, out_idxs=[4, 5])


def test_depthwise_pruner_refuses_uneven_and_non_depthwise():
    conv = _conv(nn.Conv2d, 4, 8, groups=4)
    assert_refused(prune_depthwise_conv_out_channels, conv, [0, 1, 2], InvalidIndicesError, "same number")
    plain = _conv(nn.Conv2d, 4, 8, groups=2)
    assert_refused(prune_depthwise_conv_out_channels, plain, [0], HandlerMismatchError, "not depthwise")


@pytest.mark.parametrize("order", ["out_first", "in_first"])
def test_grouped_conv_transpose_loses_a_whole_group(order):
    conv = _conv(nn.ConvTranspose2d, 8, 12, groups=4)  # weight (8, 3, k, k)
    original = copy.deepcopy(conv)
    calls = [(prune_conv_out_channels, [3, 4, 5]), (prune_conv_in_channels, [2, 3])]
    for fn, idxs in calls if order == "out_first" else calls[::-1]:
        fn(conv, idxs)
    _same_layout(conv, nn.ConvTranspose2d, 6, 9, 3)
    assert_restricts(original, conv, _input(original), in_dim=1, in_idxs=[2, 3], out_dim=1, out_idxs=[3, 4, 5])


def test_grouped_conv_transpose_equal_positions():
    conv = _conv(nn.ConvTranspose2d, 8, 12, groups=4)
    original, params = copy.deepcopy(conv), mark_grads(conv)
    out_idxs, in_idxs = [2, 5, 8, 11], [0, 3, 4, 6]  # local 2 of each out block; 1 row per in block
    prune_conv_out_channels(conv, out_idxs)
    prune_conv_in_channels(conv, in_idxs)
    _same_layout(conv, nn.ConvTranspose2d, 4, 8, 4)
    assert_identity_and_grads(conv, params)
    assert_restricts(original, conv, _input(original), in_dim=1, in_idxs=in_idxs, out_dim=1, out_idxs=out_idxs)
    conv2 = _conv(nn.ConvTranspose2d, 8, 12, groups=4)
    assert_refused(prune_conv_out_channels, conv2, [0, 4], InvalidIndicesError, "same local positions")
    assert_refused(prune_conv_in_channels, conv2, [0, 1, 2], InvalidIndicesError, "same number")


@pytest.mark.parametrize(
    ("fn", "idxs", "exc", "match"),
    [
        (prune_conv_out_channels, [6], InvalidIndicesError, "out of range for the 6 out channels"),
        (prune_conv_in_channels, [4], InvalidIndicesError, "out of range for the 4 in channels"),
        (prune_conv_out_channels, [-1], InvalidIndicesError, "negative pruning index -1"),
        (prune_conv_out_channels, range(6), OverPruningError, "all 6 out channels"),
        (prune_conv_in_channels, [0, 1, 2, 3], OverPruningError, "all 4 in channels"),
        (prune_conv_out_channels, torch.tensor([0.5]), InvalidIndicesError, "must be integers"),
    ],
)
def test_invalid_indices_are_refused(fn, idxs, exc, match):
    assert_refused(fn, _conv(nn.Conv2d, 4, 6), idxs, exc, match)


@pytest.mark.parametrize("fn", [prune_conv_out_channels, prune_conv_in_channels])
def test_wrong_module_type_is_refused(fn):
    assert_refused(fn, nn.Linear(4, 4), [0], HandlerMismatchError, "ConvPruner prunes .* not Linear")


def test_empty_indices_change_nothing():
    conv = _conv(nn.Conv2d, 8, 12, groups=4)
    before = {k: v.clone() for k, v in conv.state_dict().items()}
    assert prune_conv_out_channels(conv, []) is conv
    assert prune_conv_in_channels(conv, torch.empty(0, dtype=torch.long)) is conv
    assert all(torch.equal(v, conv.state_dict()[k]) for k, v in before.items())
    assert (conv.in_channels, conv.out_channels, conv.groups) == (8, 12, 4)


def test_conv_without_bias():
    conv = nn.Conv1d(3, 4, 1, bias=False).double()
    original = copy.deepcopy(conv)
    prune_conv_out_channels(conv, [1])
    assert conv.bias is None and conv.weight.shape == (3, 3, 1)
    assert_restricts(original, conv, _input(original), out_dim=1, out_idxs=[1])


def test_channel_dims_follow_batching():
    h = ConvPruner.INSTANCE
    conv1d = nn.Conv1d(2, 2, 1)
    assert h.in_channel_dim(conv1d, 2) == 0 and h.in_channel_dim(conv1d, 3) == 1
    assert h.out_channel_dim(nn.Conv2d(2, 2, 1), 4) == 1
    assert h.get_out_channels(conv1d) == 2 and h.get_in_channels(conv1d) == 2


def test_depthwise_pruner_is_not_the_registered_handler():
    from depgraph.functional import get_handler

    assert get_handler(nn.Conv2d) is ConvPruner.INSTANCE
    assert isinstance(DepthwiseConvPruner.INSTANCE, DepthwiseConvPruner)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_valid_grouped_pruning_is_exact(data):
    """Random grouped (transposed) convs, random whole groups and equal per-group cuts, either order."""
    g, ib, ob = (data.draw(st.integers(1, 4)) for _ in range(3))
    transposed = data.draw(st.booleans())
    conv = (nn.ConvTranspose1d if transposed else nn.Conv1d)(g * ib, g * ob, 3, groups=g, padding=1).double()
    gone = data.draw(st.sets(st.integers(0, g - 1), max_size=g - 1))
    survivors = [k for k in range(g) if k not in gone]

    def cut(block: int, rows: bool) -> list[int]:
        """Whole removed groups, plus per surviving group: any c rows, or the same c positions."""
        c = data.draw(st.integers(0, block - 1))
        shared = data.draw(st.permutations(range(block)))[:c]
        idxs = [k * block + j for k in gone for j in range(block)]
        for k in survivors:
            own = data.draw(st.permutations(range(block)))[:c] if rows else shared
            idxs += [k * block + j for j in own]
        return idxs

    out_idxs, in_idxs = cut(ob, rows=not transposed), cut(ib, rows=transposed)
    original = copy.deepcopy(conv)
    calls = [(prune_conv_out_channels, out_idxs), (prune_conv_in_channels, in_idxs)]
    for fn, idxs in calls if data.draw(st.booleans()) else calls[::-1]:
        fn(conv, idxs)
    assert conv.groups == len(survivors)
    assert conv.in_channels == g * ib - len(in_idxs) and conv.out_channels == g * ob - len(out_idxs)
    x = torch.randn(2, g * ib, 5, dtype=torch.float64)
    assert_restricts(original, conv, x, in_dim=1, in_idxs=in_idxs, out_dim=1, out_idxs=out_idxs)
