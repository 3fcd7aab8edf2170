"""Tests for depgraph/functional/prelu.py."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from depgraph.errors import HandlerMismatchError, InvalidIndicesError, OverPruningError
from depgraph.functional import PReLUPruner, prune_prelu_in_channels, prune_prelu_out_channels

from ._checks import assert_identity_and_grads, assert_refused, assert_restricts, mark_grads


def _prelu(n: int) -> nn.PReLU:
    torch.manual_seed(0)
    act = nn.PReLU(n).double()
    with torch.no_grad():
        act.weight.uniform_(-1, 1)
    return act


@pytest.mark.parametrize("fn", [prune_prelu_out_channels, prune_prelu_in_channels])
def test_per_channel_slopes_are_pruned(fn):
    act = _prelu(4)
    original, params = copy.deepcopy(act), mark_grads(act)
    assert fn(act, [1, 2]) is act
    assert act.num_parameters == 2 and repr(act) == repr(nn.PReLU(2))
    assert_identity_and_grads(act, params)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    assert_restricts(original, act, x, in_dim=1, in_idxs=[1, 2], out_dim=1, out_idxs=[1, 2])


def test_shared_slope_is_element_wise_and_left_alone():
    act = _prelu(1)
    assert PReLUPruner.INSTANCE.get_out_channels(act) is None
    assert PReLUPruner.INSTANCE.get_in_channels(act) is None
    weight = act.weight
    assert prune_prelu_out_channels(act, [0, 7, 100]) is act
    assert act.weight is weight and act.weight.shape == (1,) and act.num_parameters == 1


@pytest.mark.parametrize(
    ("n", "idxs", "exc", "match"),
    [
        (4, [4], InvalidIndicesError, "out of range for the 4 out channels"),
        (4, [-1], InvalidIndicesError, "negative"),
        (1, [-1], InvalidIndicesError, "negative"),
        (4, range(4), OverPruningError, "all 4"),
    ],
)
def test_invalid_indices_are_refused(n, idxs, exc, match):
    assert_refused(prune_prelu_out_channels, _prelu(n), idxs, exc, match)


def test_wrong_module_type_is_refused():
    assert_refused(prune_prelu_out_channels, nn.Linear(2, 2), [0], HandlerMismatchError, "PReLUPruner")
