"""Tests for depgraph/functional/norm.py: BatchNorm and InstanceNorm."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from depgraph.errors import HandlerMismatchError, InvalidIndicesError, OverPruningError
from depgraph.functional import (
    BatchNormPruner,
    BatchnormPruner,
    InstanceNormPruner,
    prune_batchnorm_in_channels,
    prune_batchnorm_out_channels,
    prune_instancenorm_out_channels,
)

from ._checks import assert_identity_and_grads, assert_refused, assert_restricts, mark_grads


def _trained(norm: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """Give the norm non-trivial affine params and running stats, then freeze it in eval."""
    torch.manual_seed(0)
    norm = norm.double()
    with torch.no_grad():
        for p in norm.parameters():
            p.copy_(torch.randn_like(p))
    norm.train()
    for _ in range(3):
        norm(torch.randn(*shape, dtype=torch.float64) * 3 + 1)
    return norm.eval()


@pytest.mark.parametrize(
    ("cls", "shape"),
    [(nn.BatchNorm1d, (4, 6)), (nn.BatchNorm1d, (4, 6, 5)), (nn.BatchNorm2d, (2, 6, 3, 3)), (nn.BatchNorm3d, (2, 6, 2, 2, 2))],
)
@pytest.mark.parametrize("fn", [prune_batchnorm_out_channels, prune_batchnorm_in_channels])
def test_batchnorm_keeps_the_other_channels_exactly(cls, shape, fn):
    bn = _trained(cls(6), shape)
    original, params = copy.deepcopy(bn), mark_grads(bn)
    assert fn(bn, [0, 4]) is bn
    assert bn.num_features == 4
    for name in ("weight", "bias", "running_mean", "running_var"):
        assert getattr(bn, name).shape == (4,), name
    assert bn.num_batches_tracked == original.num_batches_tracked
    assert repr(bn) == repr(cls(4))
    assert_identity_and_grads(bn, params)
    x = torch.randn(*shape, dtype=torch.float64)
    assert_restricts(original, bn, x, in_dim=1, in_idxs=[0, 4], out_dim=1, out_idxs=[0, 4])


@pytest.mark.parametrize(("affine", "track"), [(False, True), (True, False), (False, False)])
def test_batchnorm_variants_without_some_tensors(affine, track):
    bn = nn.BatchNorm2d(3, affine=affine, track_running_stats=track)
    prune_batchnorm_out_channels(bn, [1])
    assert bn.num_features == 2
    assert repr(bn) == repr(nn.BatchNorm2d(2, affine=affine, track_running_stats=track))
    assert bn(torch.randn(2, 2, 3, 3)).shape == (2, 2, 3, 3)


@pytest.mark.parametrize("affine", [True, False])
def test_instancenorm_in_eval_with_running_stats(affine):
    norm = _trained(nn.InstanceNorm1d(5, affine=affine, track_running_stats=True), (2, 5, 7))
    original = copy.deepcopy(norm)
    prune_instancenorm_out_channels(norm, [2])
    assert norm.num_features == 4 and norm.running_mean.shape == (4,)
    assert repr(norm) == repr(nn.InstanceNorm1d(4, affine=affine, track_running_stats=True))
    x = torch.randn(2, 5, 7, dtype=torch.float64)
    assert_restricts(original, norm, x, in_dim=1, in_idxs=[2], out_dim=1, out_idxs=[2])


def test_instancenorm_unbatched_channel_dim():
    h = InstanceNormPruner.INSTANCE
    assert h.in_channel_dim(nn.InstanceNorm2d(3), 3) == 0
    assert h.out_channel_dim(nn.InstanceNorm2d(3), 4) == 1
    norm = nn.InstanceNorm2d(3, affine=True)
    prune_instancenorm_out_channels(norm, [0])
    assert norm(torch.randn(2, 4, 4)).shape == (2, 4, 4)


@pytest.mark.parametrize(
    ("idxs", "exc", "match"),
    [
        ([6], InvalidIndicesError, "out of range for the 6 out channels of BatchNorm2d"),
        ([-1, 0], InvalidIndicesError, "negative"),
        (range(6), OverPruningError, "all 6"),
    ],
)
def test_invalid_indices_are_refused(idxs, exc, match):
    assert_refused(prune_batchnorm_out_channels, _trained(nn.BatchNorm2d(6), (2, 6, 2, 2)), idxs, exc, match)


def test_wrong_module_type_is_refused():
    assert_refused(prune_batchnorm_out_channels, nn.InstanceNorm2d(3), [0], HandlerMismatchError, "BatchNormPruner")
    assert_refused(prune_instancenorm_out_channels, nn.BatchNorm2d(3), [0], HandlerMismatchError, "not BatchNorm2d")


def test_legacy_class_spelling():
    assert BatchnormPruner is BatchNormPruner
