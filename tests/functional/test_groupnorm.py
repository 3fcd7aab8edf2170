"""Tests for depgraph/functional/groupnorm.py."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from depgraph.errors import HandlerMismatchError, InvalidIndicesError, OverPruningError
from depgraph.functional import GroupNormPruner, prune_groupnorm_in_channels, prune_groupnorm_out_channels

from ._checks import assert_identity_and_grads, assert_refused, assert_restricts, keep_of, mark_grads


def _gn(groups: int = 3, channels: int = 6, affine: bool = True) -> nn.GroupNorm:
    torch.manual_seed(0)
    gn = nn.GroupNorm(groups, channels, affine=affine).double()
    if affine:
        with torch.no_grad():
            gn.weight.normal_()
            gn.bias.normal_()
    return gn


def _x(channels: int = 6) -> torch.Tensor:
    return torch.randn(2, channels, 4, 4, dtype=torch.float64)


@pytest.mark.parametrize("fn", [prune_groupnorm_out_channels, prune_groupnorm_in_channels])
def test_removing_a_whole_group_is_exact(fn):
    gn = _gn()
    original, params = copy.deepcopy(gn), mark_grads(gn)
    assert fn(gn, [2, 3]) is gn
    assert (gn.num_groups, gn.num_channels) == (2, 4)
    assert repr(gn) == repr(nn.GroupNorm(2, 4))
    assert_identity_and_grads(gn, params)
    # Statistics are per group, so the surviving groups see exactly the same values.
    assert_restricts(original, gn, _x(), in_dim=1, in_idxs=[2, 3], out_dim=1, out_idxs=[2, 3])


@pytest.mark.parametrize(
    ("idxs", "groups", "channels"),
    [([0, 2, 4], 3, 3), ([0, 1, 2, 4], 2, 2), ([1, 3, 5], 3, 3)],
)
def test_same_positions_in_every_group(idxs, groups, channels):
    gn = _gn()
    original = copy.deepcopy(gn)
    prune_groupnorm_out_channels(gn, idxs)
    assert (gn.num_groups, gn.num_channels) == (groups, channels)
    keep = keep_of(6, idxs)
    reference = nn.GroupNorm(groups, channels).double()
    with torch.no_grad():
        reference.weight.copy_(original.weight[keep])
        reference.bias.copy_(original.bias[keep])
        x = _x()[:, keep]
        torch.testing.assert_close(gn(x), reference(x))


def test_without_affine_params():
    gn = _gn(affine=False)
    prune_groupnorm_out_channels(gn, [0, 1])
    assert (gn.num_groups, gn.num_channels) == (2, 4) and gn.weight is None
    assert gn(_x(4)).shape == (2, 4, 4, 4)


@pytest.mark.parametrize(
    ("idxs", "exc", "match"),
    [
        ([0, 3], InvalidIndicesError, r"same local positions.*group 0: \[0\], group 1: \[1\], group 2: \[\]"),
        ([0], InvalidIndicesError, "same local positions"),
        ([6], InvalidIndicesError, "out of range"),
        ([-1], InvalidIndicesError, "negative"),
        (range(6), OverPruningError, "all 6"),
    ],
)
def test_refused_calls_change_nothing(idxs, exc, match):
    assert_refused(prune_groupnorm_out_channels, _gn(), idxs, exc, match)


def test_wrong_module_type_is_refused():
    assert_refused(prune_groupnorm_out_channels, nn.BatchNorm2d(4), [0], HandlerMismatchError, "GroupNormPruner")


def test_mixes_channels():
    assert GroupNormPruner.INSTANCE.mixes_channels
